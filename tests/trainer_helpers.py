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
