"""Acceptance (issue 6): single file → detected family → 10 training steps through the CLI → a LoRA with
kohya names that diffusers loads into the matching pipeline, every module placed, changing its output."""
import re

import pytest
import torch
from safetensors import safe_open

from trainer.models.detect import inspect_model

from .trainer_helpers import train_ten_steps

KEY_PATTERN = re.compile(r"^lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _adapted_layers(pipe) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for part in (pipe.unet, pipe.text_encoder) for m in part.modules())


def _image(pipe) -> torch.Tensor:
    return pipe("shapes, red circle", num_inference_steps=3, height=64, width=64, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_train_on_a_single_file_and_load_the_lora_in_diffusers(family, tmp_path, demo_dir, sd2_demo_dir):
    from diffusers import StableDiffusionPipeline

    demo = demo_dir if family == "sd1" else sd2_demo_dir
    info = inspect_model(demo / "model.safetensors")
    assert (info.kind, info.family, info.v_prediction) == ("checkpoint", family, family == "sd2")
    train_ten_steps(demo, tmp_path)

    lora = tmp_path / "out" / "demo_lora.safetensors"
    with safe_open(str(lora), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert keys and all(KEY_PATTERN.match(k) for k in keys), [k for k in keys if not KEY_PATTERN.match(k)][:3]
    modules = {k.split(".")[0] for k in keys}
    assert any(m.startswith("lora_te_text_model_encoder_layers_") for m in modules)
    assert metadata["ss_v2"] == str(family == "sd2")
    assert metadata["modelspec.prediction_type"] == ("v" if family == "sd2" else "epsilon")

    pipe = StableDiffusionPipeline.from_pretrained(demo / "model", local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    before = _image(pipe)
    pipe.load_lora_weights(str(lora))
    assert _adapted_layers(pipe) == len(modules)
    assert not torch.allclose(before, _image(pipe), atol=1e-4)
