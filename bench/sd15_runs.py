"""Training runs of the full-size SD1.5-shaped model for the benchmarks: a small random dataset, a job file,
the trainer as a subprocess (its own process, so its peak memory is its own), and the figures read back
from its events: the plan's memory estimate, the measured peak, seconds per step and launch → first step.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.spec import defaults, write_job_toml  # noqa: E402


def build_images(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` random ``size``² PNGs with captions in ``folder/1_thing`` (one repeat); returns ``folder``."""
    target = folder / "1_thing"
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(target / f"{index:03d}.png")
        (target / f"{index:03d}.txt").write_text(f"thing, picture number {index}", encoding="utf-8")
    return folder


def job_values(model: Path, data: Path, out: Path, size: int, **overrides) -> dict:
    """The issue's setting: rank 8, AdamW, fp32, cached latents, SDPA, one thread; ``overrides`` on top."""
    values = {
        **defaults(),
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "logging_dir": str(out / "logs"), "output_name": "bench", "caption_extension": ".txt",
        "max_resolution": f"{size},{size}", "min_bucket_reso": 64, "max_bucket_reso": max(size, 128),
        "train_batch_size": 1, "epoch": 1, "learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5,
        "network_dim": 8, "network_alpha": 8, "optimizer": "AdamW", "mixed_precision": "no", "xformers": False,
        "cache_latents": True, "num_cpu_threads_per_process": 1, "seed": 1, "save_every_n_epochs": 0,
        "sample_every_n_steps": 0, "sample_prompts": "", "lr_warmup": 0,
    }
    values.update(overrides)
    return values


def run_trainer(values: dict, folder: Path, timeout: float = 1800) -> dict:
    """Train ``values`` in a fresh ``nice -n 10`` subprocess with one thread; the run's figures."""
    folder.mkdir(parents=True, exist_ok=True)
    job = write_job_toml(values, folder / "job.toml")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    started = time.time()
    done = subprocess.run(["nice", "-n", "10", sys.executable, "-m", "trainer", "train", str(job), "--run-dir",
                           str(folder / "run")], env=env, capture_output=True, text=True, timeout=timeout)
    events = [json.loads(line) for line in (folder / "run" / "events.jsonl").read_text().splitlines() if line.strip()]
    finished = next((e for e in events if e["type"] == "finished"), None)
    if done.returncode != 0 or finished is None or finished.get("status") != "completed":
        raise RuntimeError(f"the trainer failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    steps = [e for e in events if e["type"] == "step"]
    times = [e["time"] for e in steps]
    plan = next(e for e in events if e["type"] == "started")["plan"]
    training = next(e["time"] for e in events if e["type"] == "status" and e["phase"] == "training")
    return {
        "estimate": plan.get("memory"),
        "measured_peak": finished["memory"]["measured_peak_bytes"],
        "s_per_step": (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None,
        "first_step_s": times[0] - training if times else None,
        "launch_to_first_step_s": times[0] - started if times else None,
        "wall_s": time.time() - started,
    }
