"""Issue 2 acceptance, through the real CLI on the built-in demo: events, samples, the LoRA file loaded
by diffusers, real learning, a graceful stop, and bad jobs refused."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.trainer_helpers import ROOT, events_of, of_type, run_trainer, start_trainer, trainer_env, write_job
from trainer.events import read_events
from trainer.spec import read_job_toml

KEY_PATTERN = re.compile(r"^lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """The demo trained for 20 steps (80 samples ÷ batch 4, one epoch), sampling every 10 steps."""
    work = tmp_path_factory.mktemp("run20")
    job = write_job(demo_dir, work / "job.toml", epoch=1, train_batch_size=4, sample_every_n_steps=10,
                    output_dir=str(work / "out"), save_every_n_epochs=0)
    result = run_trainer("train", job, "--run-dir", work / "run")
    assert result.returncode == 0, result.stdout + result.stderr
    return work, events_of(work / "run")


def test_twenty_steps_stream_complete_events(trained):
    work, events = trained
    assert events[0]["type"] == "status" and all("time" in e for e in events)
    started = of_type(events, "started")[0]["plan"]
    assert started["total_steps"] == 20 and started["steps_per_epoch"] == 20
    steps = of_type(events, "step")
    assert [e["step"] for e in steps] == list(range(1, 21))
    for event in steps:
        assert math.isfinite(event["loss"]) and math.isfinite(event["loss_avg"])
        assert set(event["lr"]) == {"unet", "text_encoder"}
        assert all(lr >= 0 for lr in event["lr"].values())
    samples = of_type(events, "sample")
    assert [e["step"] for e in samples] == [10, 20]
    for image in samples[0]["images"]:
        path = Path(image["path"])
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [image["prompt"] for image in samples[0]["images"]] == [
        "a zqx circle on a blue background", "a red square on a yellow background"]  # with and without the trigger
    finished = of_type(events, "finished")[-1]
    assert finished["status"] == "completed"
    assert finished["outputs"] == [str(work / "out" / "demo_lora.safetensors")]


def test_live_lr_follows_the_planned_curve(trained):
    _, events = trained
    curve = dict((int(s), lr) for s, lr in of_type(events, "started")[0]["plan"]["lr_curve"]["unet"])
    for event in of_type(events, "step"):
        assert event["lr"]["unet"] == pytest.approx(curve[event["step"]], rel=1e-6)


def _adapted_layers(pipe) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for part in (pipe.unet, pipe.text_encoder) for m in part.modules())


def _tiny_pipeline(demo_dir):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(demo_dir / "model", local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)


def _image(pipe) -> torch.Tensor:
    out = pipe("shapes, red circle", num_inference_steps=3, height=64, width=64, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    return out.images


def test_lora_file_loads_in_diffusers_with_every_module_placed(trained, demo_dir):
    from safetensors import safe_open

    path = trained[0] / "out" / "demo_lora.safetensors"
    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert keys and all(KEY_PATTERN.match(k) for k in keys), [k for k in keys if not KEY_PATTERN.match(k)][:3]
    modules = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in keys}
    assert len(keys) == 3 * len(modules)
    assert any(m.startswith("lora_te_text_model_encoder_layers_") for m in modules)
    assert metadata["ss_network_module"] == "networks.lora" and metadata["ss_network_dim"] == "8"
    assert metadata["ss_steps"] == "20" and metadata["ss_base_model_version"] == "sd_v1"
    assert json.loads(metadata["lora_loom.job"])["train_batch_size"] == 4
    base = (demo_dir / "model.safetensors").read_bytes()  # the base model's hashes, for tools that group by model
    assert metadata["ss_sd_model_name"] == "model.safetensors"
    assert metadata["ss_new_sd_model_hash"] == hashlib.sha256(base).hexdigest()
    assert metadata["ss_sd_model_hash"] == hashlib.sha256(base[0x100000:0x110000]).hexdigest()[:8]

    pipe = _tiny_pipeline(demo_dir)
    before = _image(pipe)
    pipe.load_lora_weights(str(path))
    assert _adapted_layers(pipe) == len(modules)
    assert not torch.allclose(before, _image(pipe), atol=1e-4)


def _denoising_loss(pipe, demo_dir) -> float:
    """Mean MSE of the noise prediction on the demo images at fixed noise, timesteps and captions."""
    import numpy as np
    from PIL import Image

    from trainer.loss import add_noise, sd_alphas_cumprod
    from trainer.text_encoding import encode_captions

    generator = torch.Generator().manual_seed(1234)
    alphas = sd_alphas_cumprod()
    paths = sorted((demo_dir / "data" / "10_shapes").glob("*.png"))
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                          for p in paths]).float() / 127.5 - 1
    captions = [p.with_suffix(".txt").read_text().strip() for p in paths]
    losses = []
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * 0.18215
        states = encode_captions(pipe.tokenizer, pipe.text_encoder, captions)
        for _ in range(4):
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(0, 1000, (len(paths),), generator=generator)
            prediction = pipe.unet(add_noise(latents, noise, timesteps, alphas), timesteps, states).sample
            losses.append(torch.nn.functional.mse_loss(prediction, noise).item())
    return sum(losses) / len(losses)


def test_learning_is_real(trained, demo_dir):
    pipe = _tiny_pipeline(demo_dir)
    before = _denoising_loss(pipe, demo_dir)
    pipe.load_lora_weights(str(trained[0] / "out" / "demo_lora.safetensors"))
    after = _denoising_loss(pipe, demo_dir)
    assert after < before * 0.99, (before, after)


def _wait_for(process, events_file: Path, kind: str, timeout: float = 120) -> dict:
    """The first event of ``kind`` in the run's events, waiting for it while the trainer runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = of_type(read_events(events_file)[0], kind) if events_file.exists() else []
        if found:
            return found[0]
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.2)
    raise AssertionError(f"no {kind} event within {timeout} s")


def test_sample_now_save_now_then_sigint_stops_gracefully_with_a_loadable_lora(demo_dir, tmp_path):
    """The page's Sample now (SIGUSR1) and Save now (SIGUSR2) reach the real trainer between steps, with no
    sample or save point in the plan; then Stop (SIGINT) ends the run with the LoRA saved."""
    job = write_job(demo_dir, tmp_path / "job.toml", epoch=200, sample_every_n_steps=0, save_every_n_epochs=0,
                    output_dir=str(tmp_path / "out"))
    process = start_trainer("train", job, "--run-dir", tmp_path / "run")
    events_file = tmp_path / "run" / "events.jsonl"
    _wait_for(process, events_file, "step")
    os.kill(process.pid, signal.SIGUSR1)
    drawn = _wait_for(process, events_file, "sample")
    assert drawn["requested"] and len(drawn["images"]) == 2  # the demo's two prompts
    os.kill(process.pid, signal.SIGUSR2)
    saved = _wait_for(process, events_file, "checkpoint")
    assert (saved["kind"], saved["requested"]) == ("step", True)
    assert Path(saved["path"]).name == f"{read_job_toml(job)['output_name']}-step{saved['step']:08d}.safetensors"
    os.killpg(process.pid, signal.SIGINT)
    step_at_stop = of_type(read_events(events_file)[0], "step")[-1]["step"]
    process.wait(timeout=60)  # a guard against a hang, not a timing
    assert process.returncode == 0
    events = events_of(tmp_path / "run")
    finished = of_type(events, "finished")[-1]
    assert finished["status"] == "stopped"
    lora = Path(finished["outputs"][-1])
    pipe = _tiny_pipeline(demo_dir)
    pipe.load_lora_weights(str(lora))
    assert _adapted_layers(pipe) > 0
    last_step = of_type(events, "step")[-1]["step"]
    assert of_type(events, "checkpoint")[-1]["step"] == last_step < 200 * 40
    assert last_step <= step_at_stop + 2  # the step under way when Stop came, then the save: nothing more
    assert Path(saved["path"]).is_file() and Path(saved["path"]) != lora  # the Save now file stays beside it


@pytest.mark.parametrize("override, setting", [
    ({"network_alpha": "abc"}, "network_alpha"),
    ({"train_batch_size": 0}, "train_batch_size"),
    ({"learning_rat": 0.1}, "learning_rat"),
])
def test_bad_jobs_are_refused_by_validate_and_train(demo_dir, tmp_path, override, setting):
    job = write_job(demo_dir, tmp_path / "job.toml", output_dir=str(tmp_path / "out"), **override)
    checked = run_trainer("validate", job)
    assert checked.returncode == 2
    assert checked.stdout.splitlines()[0].startswith(f"error: {setting}: ")
    trained = run_trainer("train", job, "--run-dir", tmp_path / "run")
    assert trained.returncode == 2
    events = events_of(tmp_path / "run")
    assert [e["setting"] for e in of_type(events, "error")] == [setting]
    assert of_type(events, "finished")[-1]["status"] == "failed"
    assert not of_type(events, "step") and not (tmp_path / "out").exists()


def test_validate_accepts_the_demo_and_plan_matches_the_folders(demo_dir):
    checked = run_trainer("validate", demo_dir / "job.toml")
    assert checked.returncode == 0 and "ok:" in checked.stdout
    planned = run_trainer("plan", demo_dir / "job.toml")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    images = len(list((demo_dir / "data" / "10_shapes").glob("*.png")))
    assert plan["steps_per_epoch"] == math.ceil(images * 10 / 2)
    assert plan["total_steps"] == plan["steps_per_epoch"] * 5
    assert plan["warmup_steps"] == int(plan["total_steps"] * 0.10)
    assert plan["sample_steps"] == list(range(25, plan["total_steps"] + 1, 25))
    assert plan["save_epochs"] == [1, 2, 3, 4]
    assert plan["warnings"] == []


def test_the_plan_warns_about_schedule_settings_the_scheduler_does_not_read(demo_dir, tmp_path):
    from gui.plan_panel import plan_markdown

    job = write_job(demo_dir, tmp_path / "job.toml", lr_scheduler="cosine", lr_scheduler_num_cycles=3)
    planned = run_trainer("plan", job)
    assert planned.returncode == 0, planned.stderr
    warnings = json.loads(planned.stdout)["warnings"]
    assert [w["setting"] for w in warnings] == ["lr_scheduler_num_cycles"]
    assert "cosine ignores it" in warnings[0]["message"]
    assert "`lr_scheduler_num_cycles` is read only by cosine_with_restarts" in plan_markdown({"warnings": warnings})


@pytest.mark.parametrize("block_lr, imports_diffusers", [(False, False), (True, True)])
def test_a_plain_plan_leaves_diffusers_unimported(demo_dir, block_lr, imports_diffusers):
    """The page asks for a plan after every settled edit: a plain one must not pay for importing diffusers
    (seconds on a slow machine); only the block-LR preview, which reads the UNet's layout, needs it."""
    code = ("import sys; from trainer.plan import make_plan; from trainer.spec import job_from_values, read_job_toml;"
            f"values = read_job_toml({str(demo_dir / 'job.toml')!r}); values.pop('spec_version', None);"
            f"values.update(down_lr_weight='sine' if {block_lr} else '');"
            "plan = make_plan(job_from_values(values));"
            "print(sorted(plan['lr_curve'])[:2], 'diffusers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=trainer_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    groups, imported = done.stdout.strip().rsplit(" ", 1)
    assert imported == str(imports_diffusers)
    assert ("unet_IN" in groups) == block_lr  # the block groups come from the layout diffusers builds
