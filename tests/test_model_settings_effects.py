"""The model settings in a real run: ``v_parameterization`` changes the training target and what the file
says about it, ``vae`` replaces the VAE that makes the latents (and is named in the metadata), ``v2`` on an
SD2.x model is accepted and on an SD1.x model refused before anything trains."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from tests.effects_runs import read_lora, run_demo, run_in_session
from trainer.models.tiny import tiny_vae_config


def test_v_parameterization_trains_the_velocity_target(demo_dir, tmp_path):
    plain = run_demo(demo_dir, tmp_path / "plain", save_precision="float")
    velocity = run_in_session(demo_dir, tmp_path / "v", v_parameterization=True, save_precision="float")
    assert velocity.status == "completed"
    assert velocity.session.base.v_prediction
    assert velocity.session.base.noise_scheduler.config.prediction_type == "v_prediction"
    assert velocity.losses != plain.losses  # same seed and noise, another target
    metadata = read_lora(velocity.final_file)[1]
    assert metadata["modelspec.prediction_type"] == "v" and metadata["ss_base_model_version"] == "sd_v1"


def test_a_separate_vae_makes_the_latents_and_is_named(demo_dir, tmp_path):
    torch.manual_seed(123)
    other = tmp_path / "other_vae"
    AutoencoderKL(**tiny_vae_config()).save_pretrained(other)
    plain = run_demo(demo_dir, tmp_path / "plain")
    swapped = run_in_session(demo_dir, tmp_path / "swapped", vae=str(other))
    assert swapped.status == "completed"
    assert swapped.session.base.vae_path == other
    assert torch.equal(next(swapped.session.base.vae.parameters()).cpu(),
                       next(AutoencoderKL.from_pretrained(other).parameters()))
    assert swapped.losses != plain.losses  # other latents
    assert read_lora(swapped.final_file)[1]["ss_vae_name"] == "other_vae"


def test_v2_is_accepted_on_sd2_and_refused_on_sd1(demo_dir, sd2_demo_dir, tmp_path):
    sd2 = run_demo(demo_dir, tmp_path / "sd2", v2=True, pretrained_model_name_or_path=str(sd2_demo_dir / "model.safetensors"))
    assert sd2.status == "completed" and read_lora(sd2.final_file)[1]["ss_v2"] == "True"
    sd1 = run_demo(demo_dir, tmp_path / "sd1", v2=True)
    assert sd1.status == "failed" and not sd1.steps
    assert [e["setting"] for e in sd1.of("error")] == ["v2"]


def test_a_vae_that_cannot_be_loaded_is_blamed_on_vae(demo_dir, tmp_path):
    """A VAE folder whose weights are missing passes the header checks but fails to load: the error names vae."""
    broken = tmp_path / "broken_vae"
    AutoencoderKL(**tiny_vae_config()).save_pretrained(broken)
    next(broken.glob("*.safetensors")).unlink()
    run = run_demo(demo_dir, tmp_path / "run", vae=str(broken))
    assert run.status == "failed" and not run.steps
    assert [e["setting"] for e in run.of("error")] == ["vae"]
