"""What the run area shows, folded from the trainer's events: progress, loss and LR series, samples,
checkpoints and messages. Pure functions over plain data (no gradio), so they are tested alone.

``RunView`` is what one browser session remembers about the run it watches: the byte offset it has read
``events.jsonl`` up to, and the series accumulated so far. ``read_new_events`` advances it.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from trainer.events import EVENTS_FILE, max_norm_words, read_events

MAX_PLOT_POINTS = 600
MOVING_AVERAGE_LABEL = "moving average"


@dataclass
class RunView:
    """One session's picture of one run."""

    run_dir: str | None = None
    offset: int = 0
    plan: dict = field(default_factory=dict)
    phase: str = ""
    last_step: dict = field(default_factory=dict)
    losses: list[tuple[int, float | None, float | None]] = field(default_factory=list)
    lrs: list[tuple[int, str, float]] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)  # (image path, caption)
    checkpoints: list[dict] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    finished: dict | None = None


def resolve_path(run_dir: str | Path, path: str) -> str:
    """Event paths are absolute or relative to the run folder."""
    candidate = Path(path)
    return str(candidate if candidate.is_absolute() else Path(run_dir) / candidate)


def apply_event(view: RunView, event: dict) -> None:
    """Fold one event into ``view`` (events of unknown type are ignored, as the contract allows)."""
    kind = event.get("type")
    if kind == "started":
        view.plan = event.get("plan") or {}
    elif kind == "status":
        view.phase = str(event.get("phase", ""))
    elif kind == "step":
        _apply_step(view, event)
    elif kind == "sample":
        for image in event.get("images") or []:
            asked = " (Sample now)" if event.get("requested") else ""
            caption = f"step {event.get('step')}{asked} — {image.get('prompt', '')}"
            view.samples.append((resolve_path(view.run_dir or ".", image.get("path", "")), caption))
    elif kind == "checkpoint":
        view.checkpoints.append({**event, "path": resolve_path(view.run_dir or ".", str(event.get("path", "")))})
    elif kind in ("warning", "error"):
        where = f"{event['setting']}: " if event.get("setting") else ""
        view.messages.append((kind, where + str(event.get("message", ""))))
    elif kind == "finished":
        view.finished = event


def _apply_step(view: RunView, event: dict) -> None:
    view.last_step = event
    view.phase = "training"
    step = int(event.get("step", 0))
    view.losses.append((step, _finite(event.get("loss")), _finite(event.get("loss_avg"))))
    for group, value in (event.get("lr") or {}).items():
        if _finite(value) is not None:
            view.lrs.append((step, str(group), float(value)))


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_new_events(view: RunView) -> int:
    """Read the events written since ``view.offset`` into ``view``; returns how many arrived."""
    if not view.run_dir:
        return 0
    events, view.offset = read_events(Path(view.run_dir) / EVENTS_FILE, view.offset)
    for event in events:
        apply_event(view, event)
    return len(events)


def thin(points: list, max_points: int = MAX_PLOT_POINTS) -> list:
    """Every k-th point (k = ⌈n ÷ max_points⌉) plus the last, so a long run stays light to draw."""
    if len(points) <= max_points:
        return list(points)
    stride = math.ceil(len(points) / max_points)
    kept = points[::stride]
    return kept if kept[-1] is points[-1] else kept + [points[-1]]


def loss_rows(view: RunView) -> list[dict]:
    """Rows {step, loss, series} for the loss plot: the raw loss and its moving average."""
    rows = []
    for step, loss, average in thin(view.losses):
        if loss is not None:
            rows.append({"step": step, "loss": loss, "series": "loss"})
        if average is not None:
            rows.append({"step": step, "loss": average, "series": MOVING_AVERAGE_LABEL})
    return rows


def lr_rows(view: RunView) -> list[dict]:
    """Rows {step, lr, group}: one line per parameter group."""
    groups: dict[str, list] = {}
    for step, group, value in view.lrs:
        groups.setdefault(group, []).append((step, value))
    return [{"step": s, "lr": v, "group": g} for g, points in groups.items() for s, v in thin(points)]


def plan_lr_rows(plan: dict) -> list[dict]:
    """Rows {step, lr, group} from a plan's ``lr_curve`` ({group: [[step, lr], …]} or {group: [lr, …]})."""
    rows = []
    for group, curve in (plan.get("lr_curve") or {}).items():
        for index, point in enumerate(curve):
            step, value = (point[0], point[1]) if isinstance(point, (list, tuple)) else (index + 1, point)
            rows.append({"step": step, "lr": value, "group": group})
    return rows


def format_duration(seconds) -> str:
    """``3725`` → ``1h 02m 05s``; ``None`` → ``—``."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def headline(view: RunView, state: str) -> str:
    """One line saying where the run stands, e.g. 'Stopped by you at step 12 of 40.'"""
    total = view.plan.get("total_steps")
    step = view.last_step.get("step", 0)
    where = f"step {step} of {total}" if total else f"step {step}"
    words = {
        "running": f"Running ({view.phase or 'starting'}), {where}.",
        "completed": f"Completed: {where}.",
        "stopped": f"Stopped by you at {where}.",
        "failed": f"Failed at {where}.",
        "killed": f"Failed: killed at {where} (second Stop); the last step was not saved.",
        "died": f"Failed: the trainer died at {where} without finishing; its log is below.",
    }
    return words.get(state, f"{state}: {where}.")


def progress_html(view: RunView, state: str) -> str:
    """The progress bar with step/total, percent, speed and ETA, as HTML."""
    if not view.run_dir:
        return "<div class='loom-progress idle'>No run yet. Press Start to train.</div>"
    total = view.plan.get("total_steps") or 0
    step = int(view.last_step.get("step", 0) or 0)
    fraction = min(1.0, step / total) if total else 0.0
    if state == "completed":
        fraction = 1.0
    speed = view.last_step.get("it_per_s")
    eta = view.last_step.get("eta_s") if state == "running" else None
    details = [f"{step} / {total or '?'} steps", f"{fraction:.0%}"]
    if isinstance(speed, (int, float)):
        details.append(f"{speed:.2f} it/s")
    if state == "running":
        details.append(f"ETA {format_duration(eta)}")
    if view.last_step.get("keys_scaled") is not None:  # scale_weight_norms: what the max-norm step did
        details.append(max_norm_words(view.last_step).strip())
    text = html.escape(headline(view, state))
    return (
        f"<div class='loom-progress {html.escape(state)}' data-state='{html.escape(state)}'>"
        f"<div class='loom-headline'>{text}</div>"
        f"<div class='loom-bar'><div class='loom-fill' style='width:{fraction * 100:.1f}%'></div></div>"
        f"<div class='loom-details'>{html.escape(' · '.join(details))}</div></div>"
    )


def outputs_markdown(view: RunView) -> str:
    """The LoRA files the run wrote: the final outputs, then intermediate checkpoints."""
    finals = list((view.finished or {}).get("outputs") or [])
    lines = [f"- **{resolve_path(view.run_dir or '.', p)}**{_size(resolve_path(view.run_dir or '.', p))}"
             for p in finals]
    finals_resolved = {resolve_path(view.run_dir or ".", p) for p in finals}
    for checkpoint in view.checkpoints:
        if checkpoint["path"] not in finals_resolved:
            kind = "Save now" if checkpoint.get("requested") else checkpoint.get("kind", "")
            lines.append(f"- {checkpoint['path']} ({kind}, step {checkpoint.get('step')})"
                         f"{_size(checkpoint['path'])}")
    memory = memory_line((view.finished or {}).get("memory"))
    text = ("### LoRA files\n" + "\n".join(lines)) if lines else ""
    return text + ("\n\n" + memory if memory and text else memory or "")


def memory_line(memory: dict | None) -> str:
    """'Peak memory: 4.48 GiB measured, 4.67 GiB estimated before the start.' from a ``finished`` event."""
    if not memory or not isinstance(memory.get("measured_peak_bytes"), (int, float)):
        return ""
    kind = "GPU memory" if memory.get("device") == "cuda" else "RAM"
    text = f"Peak {kind}: {memory['measured_peak_bytes'] / 2**30:.2f} GiB measured"
    estimate = memory.get("estimated_peak_bytes")
    if isinstance(estimate, (int, float)):
        text += f", {estimate / 2**30:.2f} GiB estimated before the start"
    return text + "."


def _size(path: str) -> str:
    try:
        size = Path(path).stat().st_size
    except OSError:
        return " (missing)"
    return f" — {size / 1e6:.2f} MB" if size >= 1e5 else f" — {size / 1e3:.1f} kB"


def messages_markdown(messages: list[tuple[str, str]]) -> str:
    """Warnings and errors, errors first."""
    ordered = [m for m in messages if m[0] == "error"] + [m for m in messages if m[0] != "error"]
    icons = {"error": "❌", "warning": "⚠️", "info": "ℹ️"}
    return "\n".join(f"- {icons.get(level, '•')} {text}" for level, text in ordered)
