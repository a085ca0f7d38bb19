"""Acceptance of the LyCORIS types: each trains 5 steps on the tiny SD1 and SDXL models with a finite loss, and
its saved file, loaded through LyCORIS onto a fresh copy of the base model, gives the trained model's UNet
output. The runs go through the session API (what ``python -m trainer train`` runs, the trained model kept for
the comparison); one run per family goes through the CLI itself."""
import math
import re
import tomllib
from pathlib import Path

import pytest
import torch

from trainer.models.loading import load_base_model
from trainer.network import read_lora_file

from .effects_runs import run_in_session, small_dataset
from .lycoris_reload import fixed_unet_output, load_with_lycoris
from .test_network_lycoris import NEW_TYPES, SUFFIXES
from .trainer_helpers import events_of, of_type, run_trainer, write_job

FIVE_STEPS = dict(train_batch_size=1, epoch=1, network_dim=4, network_alpha=2.0, conv_dim=4, conv_alpha=1.0,
                  save_precision="float", save_every_n_epochs=0, sample_every_n_epochs=0, sample_every_n_steps=0,
                  num_cpu_threads_per_process=1)
KEY = {"sd1": r"^lora_(unet|te)_[a-z0-9_]+\.", "sdxl": r"^lora_(unet_(input_blocks|middle_block|output_blocks)|te1|te2)_"
       r"[a-z0-9_]+\."}


def five_step_file(lora_type: str, suffix: str, family: str, demo: Path, tmp_path: Path):
    """Five steps of ``lora_type`` on the UNet alone (what is compared; the text encoders' modules are covered
    in process and by the CLI runs), with a finite loss; every saved key names a module of ``demo``'s family
    and ends in ``suffix``. Returns the run, its tensors and metadata."""
    data = small_dataset(demo, tmp_path / "data", images=5)
    run = run_in_session(demo, tmp_path, train_data_dir=str(data), LoRA_type=lora_type, text_encoder_lr=0.0,
                         **FIVE_STEPS)
    assert run.status == "completed" and len(run.losses) == 5
    assert all(math.isfinite(loss) for loss in run.losses)
    tensors, metadata = read_lora_file(run.final_file)
    pattern = re.compile(KEY[family] + suffix + "$")
    assert all(pattern.match(k) for k in tensors), [k for k in tensors if not pattern.match(k)][:3]
    return run, tensors, metadata


def cli_five_steps(lora_type: str, demo: Path, tmp_path: Path, extra: dict):
    """Five steps of ``lora_type`` with the options ``extra`` through ``python -m trainer train``, text
    encoders included, with a finite loss. Returns the job file, the step events, the saved tensors and
    metadata."""
    data = small_dataset(demo, tmp_path / "data", images=5)
    job = write_job(demo, tmp_path / "job.toml", train_data_dir=str(data), output_dir=str(tmp_path / "out"),
                    logging_dir=str(tmp_path / "logs"), LoRA_type=lora_type, **FIVE_STEPS, **extra)
    result = run_trainer("train", job, "--run-dir", tmp_path / "run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    steps = of_type(events_of(tmp_path / "run"), "step")
    assert len(steps) == 5 and all(math.isfinite(s["loss"]) for s in steps)
    tensors, metadata = read_lora_file(next((tmp_path / "out").glob("*.safetensors")))
    return job, steps, tensors, metadata


def _reload_matches(run, tensors) -> None:
    trained = fixed_unet_output(run.session.base.unet)
    fresh = load_base_model(run.session.job.model.pretrained_model_name_or_path)
    untouched = fixed_unet_output(fresh.unet)
    assert (trained - untouched).abs().max() > 1e-5  # five steps changed the model
    load_with_lycoris(tensors, fresh.unet, fresh.text_encoders)
    assert torch.allclose(fixed_unet_output(fresh.unet), trained, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("lora_type", NEW_TYPES)
def test_each_lycoris_type_trains_five_steps_and_reloads_through_lycoris(lora_type, family, demo_dir,
                                                                         sdxl_demo_dir, tmp_path):
    demo = demo_dir if family == "sd1" else sdxl_demo_dir
    run, tensors, metadata = five_step_file(lora_type, SUFFIXES[lora_type], family, demo, tmp_path)
    assert metadata["ss_network_module"] == "lycoris.kohya"
    _reload_matches(run, tensors)


@pytest.mark.parametrize("family, lora_type, extra", [
    ("sd1", "LoCon", {"dora_wd": True, "scale_weight_norms": 0.01}),
    ("sdxl", "LyCORIS/LoKr", {"dora_wd": True, "module_dropout": 0.2, "rank_dropout": 0.2}),
])
def test_cli_runs_dora_and_the_regularizers(family, lora_type, extra, demo_dir, sdxl_demo_dir, tmp_path):
    """Through ``python -m trainer train``: DoRA's magnitudes are saved and reload; the max-norm statistics
    are in the step events and every module's norm is within the limit in the saved file."""
    job, steps, tensors, _ = cli_five_steps(lora_type, Path(demo_dir if family == "sd1" else sdxl_demo_dir),
                                           tmp_path, extra)
    assert any(k.endswith(".dora_scale") for k in tensors)
    fresh = load_base_model(tomllib.loads(job.read_text())["pretrained_model_name_or_path"])
    before = fixed_unet_output(fresh.unet)
    modules = load_with_lycoris(tensors, fresh.unet, fresh.text_encoders)
    assert (fixed_unet_output(fresh.unet) - before).abs().max() > 0
    if "scale_weight_norms" in extra:
        assert all({"keys_scaled", "average_key_norm", "max_key_norm"} <= s.keys() for s in steps)
        assert max(s["max_key_norm"] for s in steps) <= 0.01 + 1e-6
        with torch.no_grad():  # DoRA: the norm of the adapter's ΔW (before the magnitude) is the one limited
            norms = [float(m.make_weight().norm() * m.scale) for m in modules]
        assert max(norms) <= 0.01 + 1e-5
