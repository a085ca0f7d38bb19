"""Issue 3 acceptance through the CLI: a mixed-size dataset trains with buckets and the plan's step count is
the number of ``step`` events; a second run reuses the latent disk cache (no VAE encode) and a changed
resolution rebuilds it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from .trainer_helpers import events_of, of_type, run_trainer, write_job

SIZES = {"portrait": (72, 180), "landscape": (200, 80), "square": (120, 120), "tiny": (24, 24),
         "huge": (1600, 1200)}
TRAINED = len(SIZES) - 1  # all but "tiny", smaller than one bucket step
BUCKETS = dict(enable_bucket=True, max_resolution="128,128", min_bucket_reso=64, max_bucket_reso=256,
               bucket_reso_steps=64, train_batch_size=2, epoch=2, sample_every_n_steps=0, save_every_n_epochs=0)


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed") / "img"
    folder = root / "3_shape"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (width, height) in SIZES.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"shape, {name} picture", encoding="utf-8")
    return root


def _train(demo_dir, work, data, with_plan=True, **values):
    """(the CLI's plan, or None without ``with_plan``; the events of a training run) for the mixed data."""
    job = write_job(demo_dir, work / "job.toml", train_data_dir=str(data), output_dir=str(work / "out"),
                    logging_dir=str(work / "logs"), **{**BUCKETS, **values})
    plan = run_trainer("plan", job) if with_plan else None
    assert plan is None or plan.returncode == 0, plan.stdout + plan.stderr
    trained = run_trainer("train", job, "--run-dir", work / "run")
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    return plan and json.loads(plan.stdout), events_of(work / "run")


def test_mixed_sizes_train_in_buckets_and_the_plan_counts_every_step(demo_dir, mixed_data, tmp_path):
    plan, events = _train(demo_dir, tmp_path, mixed_data)
    buckets = {tuple(b["resolution"]): b["samples"] for b in plan["dataset"]["buckets"]}
    assert len(buckets) >= 3 and all(w * h <= 128 * 128 for w, h in buckets)
    assert any(w > h for w, h in buckets) and any(w < h for w, h in buckets)
    per_epoch = sum(-(-samples // 2) for samples in buckets.values())  # Σ ⌈images × repeats ÷ batch⌉
    assert sum(buckets.values()) == 3 * TRAINED  # the tiny image is skipped, with a warning
    assert plan["steps_per_epoch"] == per_epoch and plan["total_steps"] == 2 * per_epoch
    steps = of_type(events, "step")
    assert [e["step"] for e in steps] == list(range(1, plan["total_steps"] + 1))
    assert of_type(events, "finished")[-1]["status"] == "completed"
    warnings = " ".join(e["message"] for e in of_type(events, "warning"))
    assert "tiny.png" in warnings and "smaller than one bucket step" in warnings


def _cache_counts(events):
    done = [e for e in of_type(events, "status") if e.get("phase") == "caching latents" and "encoded" in e]
    assert len(done) == 1
    return done[0]["encoded"], done[0]["reused"]


def test_latent_disk_cache_is_reused_and_rebuilt_when_the_resolution_changes(demo_dir, mixed_data, tmp_path):
    cached = dict(cache_latents=True, cache_latents_to_disk=True, epoch=1, bucket_no_upscale=False, with_plan=False)
    everything = len(SIZES)  # upscaling allowed: the tiny image trains too
    _, first = _train(demo_dir, tmp_path / "first", mixed_data, **cached)
    assert _cache_counts(first) == (everything, 0)
    files = sorted(p.name for p in (mixed_data / "3_shape").glob("*.npz"))
    assert len(files) == everything
    _, second = _train(demo_dir, tmp_path / "second", mixed_data, **cached)
    assert _cache_counts(second) == (0, everything)  # no VAE encode at all
    _, third = _train(demo_dir, tmp_path / "third", mixed_data, **{**cached, "max_resolution": "192,192"})
    assert _cache_counts(third) == (everything, 0)  # every bucket changed: every latent is encoded again
