"""Family and kind detection from names and shapes, torch-free, on real files written here."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.models.detect import ModelFileError, inspect_model, main
from trainer.models.loading import save_as_single_file
from trainer.models.tiny import build_tiny_sd2


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("detect")
    sd2_dir = build_tiny_sd2(out / "sd2", v_prediction=False)
    paths = {"sd1": save_as_single_file(tiny_model_dir, out / "sd1.safetensors"),
             "sd2": save_as_single_file(sd2_dir, out / "sd2.safetensors"), "sd2_dir": sd2_dir}
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, str(out / "lora.safetensors"))
    save_file({"encoder.down.0.block.0.conv1.weight": torch.zeros(1), "decoder.conv_out.weight": torch.zeros(1),
               "quant_conv.weight": torch.zeros(1)}, str(out / "vae.safetensors"))
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(out / "unet_only.safetensors"))
    paths.update({name: out / f"{name}.safetensors" for name in ("lora", "vae", "unet_only")})
    return paths


def test_families_of_single_files_and_folders(files, tiny_model_dir):
    for family in ("sd1", "sd2"):
        info = inspect_model(files[family])
        assert (info.kind, info.family, info.trainable) == ("checkpoint", family, True)
    assert inspect_model(files["sd1"]).summary().startswith("Stable Diffusion 1.x (single file)")
    assert inspect_model(tiny_model_dir).family == "sd1"
    folder = inspect_model(files["sd2_dir"])
    assert (folder.kind, folder.family, folder.v_prediction) == ("diffusers_folder", "sd2", False)


def test_lora_vae_and_unknown_files_are_named_for_what_they_are(files):
    assert inspect_model(files["lora"]).kind == "lora"
    assert "a LoRA file, not a base model" in inspect_model(files["lora"]).summary()
    assert inspect_model(files["vae"]).kind == "vae"
    unknown = inspect_model(files["unet_only"])
    assert (unknown.kind, unknown.trainable) == ("unknown", False)
    assert "no text encoder" in unknown.summary()


def test_corrupt_and_truncated_files_raise_a_clear_error(files, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 20) + b"{not json at all....")
    with pytest.raises(ModelFileError, match="garbage.safetensors is not a valid .safetensors file"):
        inspect_model(garbage)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(files["sd1"].read_bytes()[:100_000])
    with pytest.raises(ModelFileError, match="truncated.*interrupted download"):
        inspect_model(truncated)
    with pytest.raises(ModelFileError, match="does not exist"):
        inspect_model(tmp_path / "missing.safetensors")


def test_prediction_type_from_metadata_and_the_sd2_768_v_heuristic(files, tmp_path):
    assert inspect_model(files["sd2"]).v_prediction is False  # our writer records "epsilon"
    norm_key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    tensors = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "cond_stage_model.model.token_embedding.weight": torch.zeros(1),
               norm_key: torch.tensor([0.2, -0.2, 0.2, -0.2])}  # population std 0.2 > 0.09
    save_file(tensors, str(tmp_path / "wide.safetensors"))
    wide = inspect_model(tmp_path / "wide.safetensors")
    assert (wide.family, wide.v_prediction, wide.suggest_v_parameterization) == ("sd2", None, True)
    assert "v-prediction suggested" in wide.summary()
    tensors[norm_key] = torch.tensor([0.05, -0.05, 0.05, -0.05])  # std 0.05: an epsilon model
    save_file(tensors, str(tmp_path / "narrow.safetensors"))
    assert inspect_model(tmp_path / "narrow.safetensors").suggest_v_parameterization is False
    save_file(tensors, str(tmp_path / "v2-1_768-ema.safetensors"))
    assert inspect_model(tmp_path / "v2-1_768-ema.safetensors").suggest_v_parameterization is True


def test_detection_does_not_import_torch(files):
    code = ("import sys; from trainer.models.detect import inspect_model; "
            f"print(inspect_model({str(files['sd2'])!r}).family); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.stdout.split() == ["sd2", "False"]


def test_command_line_prints_json(files, capsys):
    assert main([str(files["sd1"])]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "sd1"
    assert main([str(files["sd1"]) + ".missing"]) == 1
    assert "does not exist" in json.loads(capsys.readouterr().out)["error"]
