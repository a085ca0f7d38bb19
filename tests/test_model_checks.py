"""Issue 6: a corrupt file, a file of another kind (a LoRA, a VAE) or an unknown architecture as the base
model is refused before anything starts, naming the setting, by the checks the page, ``validate`` and
``train`` share; ``v2`` on a model that is not SD2.x and a wrong ``vae`` file likewise."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from trainer.spec import check_job, job_from_values, read_job_toml

from .trainer_helpers import events_of, of_type, run_trainer, write_job


def _write(path, tensors):
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, demo_dir):
    out = tmp_path_factory.mktemp("bad_models")
    good = (demo_dir / "model.safetensors").read_bytes()
    (out / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (out / "empty.safetensors").write_bytes(b"")
    (out / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + bytes(64))
    _write(out / "lora.safetensors", {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
                                      "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(4.0)})
    _write(out / "vae.safetensors", {"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_out.weight": torch.zeros(1)})
    _write(out / "other.safetensors", {"transformer.blocks.0.weight": torch.zeros(2)})
    (out / "model.bin.txt").write_text("hello")
    return out


def _problems(demo_dir, tmp_path, **values):
    job = job_from_values({**read_job_toml(demo_dir / "job.toml"), **values})
    return {p.setting: p.message for p in check_job(job) if p.level == "error"}


@pytest.mark.parametrize("name, words", [
    ("truncated.safetensors", "truncated"),
    ("empty.safetensors", "empty or truncated"),
    ("garbage.safetensors", "not a valid .safetensors"),
    ("lora.safetensors", "a LoRA file, not a base model"),
    ("vae.safetensors", "a VAE file, not a base model"),
    ("other.safetensors", "unknown parameter names"),
    ("model.bin.txt", "expected .safetensors, .ckpt or a folder"),
])
def test_a_file_that_is_not_a_base_model_is_refused_naming_the_setting(bad_models, demo_dir, tmp_path, name, words):
    problems = _problems(demo_dir, tmp_path, pretrained_model_name_or_path=str(bad_models / name))
    assert words in problems["pretrained_model_name_or_path"]
    assert name in problems["pretrained_model_name_or_path"]


def test_the_demo_single_file_and_folder_pass(demo_dir, tmp_path):
    assert _problems(demo_dir, tmp_path) == {}
    assert _problems(demo_dir, tmp_path, pretrained_model_name_or_path=str(demo_dir / "model")) == {}


def test_v2_on_an_sd1_model_and_a_lora_as_vae_are_refused(bad_models, demo_dir, tmp_path):
    assert "Stable Diffusion 1.x" in _problems(demo_dir, tmp_path, v2=True)["v2"]
    assert "LoRA" in _problems(demo_dir, tmp_path, vae=str(bad_models / "lora.safetensors"))["vae"]
    assert "does not exist" in _problems(demo_dir, tmp_path, vae=str(tmp_path / "missing.safetensors"))["vae"]
    assert _problems(demo_dir, tmp_path, vae=str(bad_models / "vae.safetensors")) == {}
    assert _problems(demo_dir, tmp_path, vae=str(demo_dir / "model")) == {}  # a diffusers folder's own VAE


def test_cli_validate_and_train_refuse_a_lora_as_base_model(bad_models, demo_dir, tmp_path):
    job = write_job(demo_dir, tmp_path / "job.toml", pretrained_model_name_or_path=str(bad_models / "lora.safetensors"),
                    output_dir=str(tmp_path / "out"))
    checked = run_trainer("validate", job)
    assert checked.returncode != 0 and "pretrained_model_name_or_path" in checked.stdout
    trained = run_trainer("train", job, "--run-dir", tmp_path / "run")
    assert trained.returncode == 2, trained.stderr[-2000:]
    errors = of_type(events_of(tmp_path / "run"), "error")
    assert errors and errors[0]["setting"] == "pretrained_model_name_or_path"
    assert "LoRA" in errors[0]["message"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
