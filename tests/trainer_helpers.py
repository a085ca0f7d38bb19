"""Helpers for tests that run the real trainer as a subprocess on the demo."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

from trainer.events import read_events

ROOT = Path(__file__).resolve().parents[1]


def trainer_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "offline"), str(ROOT)]))  # network off there too
    return env


def write_job(demo_dir: Path, target: Path, **overrides) -> Path:
    """The demo's job with some settings changed, written to ``target``."""
    values = tomllib.loads((demo_dir / "job.toml").read_text(encoding="utf-8"))
    values.update(overrides)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(tomli_w.dumps(values), encoding="utf-8")
    return target


def run_trainer(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, env=trainer_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_trainer(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, env=trainer_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def events_of(run_dir: Path) -> list[dict]:
    events, _ = read_events(Path(run_dir) / "events.jsonl")
    return events


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def train_ten_steps(demo_dir: Path, work: Path) -> list[dict]:
    """The demo's job at batch 8 for one epoch (10 steps, a sample at step 10) through the CLI; returns its
    events after checking the run completed every step and drew a sample that is not flat."""
    import numpy as np
    from PIL import Image

    job = write_job(demo_dir, work / "job.toml", train_batch_size=8, epoch=1, sample_every_n_steps=10,
                    output_dir=str(work / "out"))
    result = run_trainer("train", job, "--run-dir", work / "run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    events = events_of(work / "run")
    assert [e["step"] for e in of_type(events, "step")] == list(range(1, 11))
    sample = Path(of_type(events, "sample")[0]["images"][0]["path"])
    pixels = np.asarray(Image.open(sample if sample.is_absolute() else work / "run" / sample))
    assert pixels.std() > 1.0  # a sampler that mixed up its target (v vs noise) gives flat noise or black
    return events
