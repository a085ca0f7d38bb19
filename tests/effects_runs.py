"""Helpers for the settings-effect and resume tests: short in-process runs of the real trainer on the demo.

``demo_values`` is the demo's job shrunk to a few steps (batch 8 → 10 steps per epoch, no samples, no
intermediate saves, outputs under the test's folder). ``run_demo`` runs it through ``run_training`` (what
``python -m trainer train`` calls); ``run_in_session`` uses the session API, keeps the session for
inspection and can stop the run (``RunRequests``) after a given step. Both return a ``Run`` holding the events
and the output folder.
"""
from __future__ import annotations

import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from trainer.events import EventWriter, read_events
from trainer.spec import job_from_values

SHORT_RUN = dict(epoch=1, train_batch_size=2, sample_every_n_steps=0, sample_every_n_epochs=0,
                 save_every_n_epochs=0, num_cpu_threads_per_process=1)
STEPS_PER_EPOCH = 4  # 8 demo images × 1 repeat ÷ batch 2


def small_dataset(demo_dir: Path, target: Path, repeats: int = 1, images: int = 8, name: str = "shapes") -> Path:
    """A kohya-layout folder ``target/{repeats}_{name}`` holding the first ``images`` demo images and captions."""
    source = Path(demo_dir) / "data" / "10_shapes"
    folder = Path(target) / f"{repeats}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for png in sorted(source.glob("*.png"))[:images]:
        shutil.copyfile(png, folder / png.name)
        shutil.copyfile(png.with_suffix(".txt"), folder / f"{png.stem}.txt")
    return Path(target)


def demo_values(demo_dir: Path, work: Path, **overrides) -> dict:
    """The demo job as a dict, shortened to 4 steps an epoch on a small copy of the demo's images (unless
    ``train_data_dir`` is given), with its outputs under ``work``; ``overrides`` win."""
    values = tomllib.loads((Path(demo_dir) / "job.toml").read_text(encoding="utf-8"))
    values.update(SHORT_RUN, output_dir=str(Path(work) / "out"), logging_dir=str(Path(work) / "logs"))
    if "train_data_dir" not in overrides:
        values["train_data_dir"] = str(small_dataset(demo_dir, Path(work) / "data"))
    values.update(overrides)
    return values


@dataclass
class Run:
    status: str
    events: list[dict]
    run_dir: Path
    output_dir: Path
    output_name: str
    session: object = None  # the Session, for runs made through the session API

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def steps(self) -> list[dict]:
        return self.of("step")

    @property
    def losses(self) -> list[float]:
        return [e["loss"] for e in self.steps]

    @property
    def plan(self) -> dict:
        return self.of("started")[0]["plan"]

    @property
    def final_file(self) -> Path:
        return self.output_dir / f"{self.output_name}.safetensors"

    def warnings_for(self, setting: str) -> list[str]:
        return [e["message"] for e in self.of("warning") if e.get("setting") == setting]

    def output_files(self) -> list[str]:
        return sorted(p.name for p in self.output_dir.iterdir()) if self.output_dir.exists() else []


def _run_dir(work: Path) -> Path:
    run_dir = Path(work) / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _finish(job, run_dir: Path, status: str) -> Run:
    torch.set_num_threads(1)  # a run sets the thread count from its job; the tests keep one thread
    events, _ = read_events(run_dir / "events.jsonl")
    return Run(status, events, run_dir, Path(job.saving.output_dir), job.saving.output_name)


def run_demo(demo_dir: Path, work: Path, listeners=(), echo=None, **overrides) -> Run:
    """Train the shortened demo job (with ``overrides``) in-process through ``run_training``; ``echo`` is a
    text stream that receives the trainer's log lines."""
    from trainer.run import run_training

    job = job_from_values(demo_values(demo_dir, work, **overrides))
    run_dir = _run_dir(work)
    with EventWriter(run_dir / "events.jsonl", echo=echo) as events:
        events.listeners.extend(listeners)
        status = run_training(job, run_dir, events)
    return _finish(job, run_dir, status)


def run_in_session(demo_dir: Path, work: Path, stop_after: int | None = None, listeners=(), ask_at=None,
                   **overrides) -> Run:
    """Train through the session API (build_session, cache_latents, Saver, train) and request a stop, as
    SIGINT does, once step ``stop_after`` is done; ``ask_at`` {step: "sample" | "save"} makes the requests
    SIGUSR1 / SIGUSR2 make, during that step. The returned Run keeps the session for inspection."""
    from trainer.loop import train
    from trainer.run import RunRequests
    from trainer.saving import Saver
    from trainer.session import build_session, cache_latents

    job = job_from_values(demo_values(demo_dir, work, **overrides))
    run_dir = _run_dir(work)
    requests = RunRequests()

    def stop_at(event: dict) -> None:
        if stop_after is not None and event["type"] == "step" and event["step"] >= stop_after:
            requests.stop = True
        if event["type"] == "step" and event["step"] in (ask_at or {}):
            setattr(requests, ask_at[event["step"]], True)

    with EventWriter(run_dir / "events.jsonl") as events:
        events.listeners.extend([stop_at, *listeners])
        session = build_session(job, run_dir, events)
        cache_latents(session, events)
        saver = Saver(session, events)
        status = train(session, events, requests, saver)
        events.emit("finished", status=status, outputs=saver.outputs)
    run = _finish(job, run_dir, status)
    run.session = session
    return run


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors file."""
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}


def module_names(tensors: dict) -> set[str]:
    """The kohya module names in a LoRA file (``lora_unet_…`` / ``lora_te_…``)."""
    return {key.split(".", 1)[0] for key in tensors}


def max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max((first[k].float() - second[k].float()).abs().max().item() for k in first)
