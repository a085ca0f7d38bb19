"""The Runs history: one summary per run folder, loss and LR curves of several runs overlaid, and their samples
for the same prompt and step side by side. Pure functions over the run folders (no gradio): the events are read
through ``trainer.events``, where a run stands through ``trainer.run_status`` (the one checker).
"""
from __future__ import annotations

import html
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from gui.run_view import RunView, format_duration, read_new_events, thin
from trainer.run_status import JOB_FILE, list_runs, run_status  # noqa: F401  (list_runs: for the panel)


@dataclass(frozen=True)
class RunSummary:
    name: str
    run_dir: str
    status: str
    detail: str = ""
    started: str = "—"
    duration: str = "—"
    steps: str = "—"
    final_loss: float | None = None
    smoothed_loss: float | None = None
    lora_type: str = ""
    rank: str = ""
    lr: str = ""
    optimizer: str = ""
    files: list[str] = field(default_factory=list)


def load_view(run_dir: Path) -> RunView:
    view = RunView(run_dir=str(run_dir))
    read_new_events(view)
    return view


def _job(run_dir: Path) -> dict:
    from trainer.spec import JobError, read_job_toml

    try:
        return read_job_toml(Path(run_dir) / JOB_FILE)
    except JobError:
        return {}


def _times(run_dir: Path) -> tuple[float | None, float | None]:
    """(first event time, last event time) of the run."""
    from trainer.events import EVENTS_FILE, read_events

    events, _ = read_events(Path(run_dir) / EVENTS_FILE)
    stamps = [e["time"] for e in events if isinstance(e.get("time"), (int, float))]
    return (min(stamps), max(stamps)) if stamps else (None, None)


def lora_files(view: RunView) -> list[str]:
    """The LoRA files a run wrote: its final outputs, then the intermediate checkpoints (no state folders)."""
    from gui.run_view import resolve_path

    files = [resolve_path(view.run_dir or ".", p) for p in (view.finished or {}).get("outputs") or []]
    for checkpoint in view.checkpoints:
        if checkpoint.get("kind") != "state" and checkpoint["path"] not in files:
            files.append(checkpoint["path"])
    return files


def summarize(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    view, job, status = load_view(run_dir), _job(run_dir), run_status(run_dir)
    first, last = _times(run_dir)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(first)) if first else "—"
    total = view.plan.get("total_steps")
    step = view.last_step.get("step")
    lr = job.get("unet_lr") or job.get("learning_rate")
    return RunSummary(
        name=run_dir.name, run_dir=str(run_dir), status=status.outcome, detail=status.detail, started=started,
        duration=format_duration(last - first) if first and last else "—",
        steps=f"{step or 0} / {total}" if total else str(step or 0),
        final_loss=view.losses[-1][1] if view.losses else None,
        smoothed_loss=view.losses[-1][2] if view.losses else None,
        lora_type=str(job.get("LoRA_type", "")), rank=str(job.get("network_dim", "")),
        lr=str(lr if lr not in (None, "") else ""), optimizer=str(job.get("optimizer", "")),
        files=lora_files(view),
    )


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def history_html(summaries: list[RunSummary]) -> str:
    """The Runs table: one row per run, newest first, with a ``data-status`` per row for tools and tests."""
    if not summaries:
        return "<p class='loom-history-empty'>No runs yet.</p>"
    head = ("<tr><th>Run</th><th>Status</th><th>Started</th><th>Duration</th><th>Steps</th><th>Loss</th>"
            "<th>Smoothed</th><th>LoRA type</th><th>Rank</th><th>LR</th><th>Optimizer</th><th>LoRA files</th></tr>")
    rows = []
    for s in summaries:
        files = "<br>".join(html.escape(Path(f).name) for f in s.files) or "—"
        status = html.escape(s.status) + (f"<br><small>{html.escape(s.detail)}</small>" if s.detail else "")
        cells = [html.escape(s.name), status, s.started, s.duration, s.steps, _number(s.final_loss),
                 _number(s.smoothed_loss), html.escape(s.lora_type), s.rank, html.escape(s.lr),
                 html.escape(s.optimizer), files]
        rows.append(f"<tr data-run='{html.escape(s.name)}' data-status='{html.escape(s.status)}'>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table class='loom-history'>{head}{''.join(rows)}</table>"


def overlay_loss_rows(views: list[RunView]) -> list[dict]:
    """Rows {step, loss, run}: one series per run (its moving average where the trainer gave one)."""
    rows = []
    for view in views:
        name = Path(view.run_dir or "").name
        for step, loss, average in thin(view.losses):
            value = average if average is not None else loss
            if value is not None:
                rows.append({"step": step, "loss": value, "run": name})
    return rows


def overlay_lr_rows(views: list[RunView]) -> list[dict]:
    """Rows {step, lr, run}: one series per run and parameter group (``run`` alone for the UNet)."""
    rows: list[dict] = []
    for view in views:
        name = Path(view.run_dir or "").name
        groups: dict[str, list] = {}
        for step, group, value in view.lrs:
            groups.setdefault(group, []).append((step, value))
        for group, points in groups.items():
            series = name if group == "unet" else f"{name} · {group}"
            rows.extend({"step": s, "lr": v, "run": series} for s, v in thin(points))
    return rows


def samples_by_key(view: RunView) -> dict[tuple[int, str], str]:
    """{(step, prompt): image path} from a view's sample events (a later image for the same key wins)."""
    found = {}
    for path, caption in view.samples:
        head, _, prompt = caption.partition(" — ")
        step = head.split()[1] if head.startswith("step ") and len(head.split()) > 1 else ""
        if step.isdigit():
            found[(int(step), prompt)] = path
    return found


def common_sample_steps(views: list[RunView]) -> list[int]:
    """The steps at which every run drew samples for at least one prompt they share."""
    keys = [set(samples_by_key(v)) for v in views]
    if not keys:
        return []
    shared = set.intersection(*keys)
    return sorted({step for step, _ in shared})


def side_by_side(views: list[RunView], step: int | None = None) -> list[tuple[str, str]]:
    """(image, caption) pairs: for each prompt all runs sampled at ``step`` (default the last shared step),
    the runs' images one after another, so the same prompt at the same step sits side by side."""
    steps = common_sample_steps(views)
    if not steps:
        return []
    step = step if step in steps else steps[-1]
    per_run = [samples_by_key(v) for v in views]
    prompts = sorted({p for s, p in set.intersection(*[set(k) for k in per_run]) if s == step})
    pairs = []
    for prompt in prompts:
        for view, found in zip(views, per_run):
            pairs.append((found[(step, prompt)], f"{Path(view.run_dir or '').name} — step {step} — {prompt}"))
    return pairs


def delete_run(run_dir: Path, runs_dir: Path) -> list[str]:
    """Delete a finished run's folder and the LoRA files it wrote; what was deleted. Never a running run,
    never a folder outside ``runs_dir``."""
    run_dir, runs_dir = Path(run_dir).resolve(), Path(runs_dir).resolve()
    if run_dir.parent != runs_dir or not (run_dir / JOB_FILE).is_file():
        raise ValueError(f"{run_dir} is not a run folder of {runs_dir}")
    if run_status(run_dir).alive:
        raise ValueError(f"{run_dir.name} is still running; stop it first")
    deleted = []
    for path in lora_files(load_view(run_dir)):
        file = Path(path)
        if file.is_file() and file.suffix in (".safetensors", ".ckpt", ".pt"):
            file.unlink()
            deleted.append(str(file))
    shutil.rmtree(run_dir)
    deleted.append(str(run_dir))
    return deleted
