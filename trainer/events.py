"""The event stream: JSON lines appended to ``events.jsonl`` and flushed as they happen.

The GUI, the tests and other tools read it incrementally from a byte offset, so a page reload or a GUI
restart can re-attach to a running job. Every event has ``type`` and ``time`` (Unix seconds). The types and
their fields are declared once, in ``EVENT_TYPES``; the writer refuses anything else, and ``docs/events.md``
describes them for people (a test keeps the two in step).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

EVENTS_FILE = "events.jsonl"  # in the run folder


@dataclass(frozen=True)
class EventType:
    """One kind of event: the fields it always carries and those it may carry."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


EVENT_TYPES: dict[str, EventType] = {
    # the plan: dataset, steps per epoch, total_steps, epochs, warmup, save and sample points, seed, LR curve
    "started": EventType(("plan",)),
    # what the trainer is doing now; notes and progress counters ride along
    "status": EventType(("phase",), ("step", "note", "done", "total", "encoded", "reused")),
    # one optimizer step: its loss, one learning rate per parameter group, the running average and speed
    # with scale_weight_norms also sd-scripts' max-norm statistics: keys scaled, average and largest norm
    "step": EventType(("step", "epoch", "loss", "lr"),
                      ("loss_avg", "it_per_s", "eta_s", "keys_scaled", "average_key_norm", "max_key_norm")),
    # sample images drawn at a step; ``requested`` when the page asked for them (Sample now)
    "sample": EventType(("step", "epoch", "images"), ("requested",)),
    # a file or state folder written; ``requested`` when the page asked for it (Save now)
    "checkpoint": EventType(("step", "epoch", "path", "kind"), ("requested",)),
    # something a person can act on; ``setting`` names the setting to blame when there is one
    "warning": EventType(("message", "setting")),
    "error": EventType(("message", "setting")),
    # the last event of every run; ``memory``: the measured peak beside the plan's estimate
    "finished": EventType(("status", "outputs"), ("reason", "setting", "memory")),
}
STATUS_PHASES = ("scanning data", "loading model", "caching latents", "training", "sampling", "saving", "stopping")
CHECKPOINT_KINDS = ("epoch", "step", "final", "state")
FINISHED_STATUSES = ("completed", "stopped", "failed")


def check_event(type_: str, fields: dict[str, Any]) -> None:
    """Raise ValueError for an event the contract does not declare (a bug in the trainer, never input)."""
    spec = EVENT_TYPES.get(type_)
    if spec is None:
        raise ValueError(f"unknown event type {type_!r}")
    missing = [name for name in spec.required if name not in fields]
    unknown = [name for name in fields if name not in spec.required and name not in spec.optional]
    if missing or unknown:
        raise ValueError(f"{type_} event: missing {missing}, undeclared {unknown}")
    if type_ == "status" and fields["phase"] not in STATUS_PHASES:
        raise ValueError(f"unknown status phase {fields['phase']!r}")
    if type_ == "checkpoint" and fields["kind"] not in CHECKPOINT_KINDS:
        raise ValueError(f"unknown checkpoint kind {fields['kind']!r}")
    if type_ == "finished" and fields["status"] not in FINISHED_STATUSES:
        raise ValueError(f"unknown finished status {fields['status']!r}")


def _clean(value: Any) -> Any:
    """JSON has no NaN/Infinity: send them as null so every line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class EventWriter:
    """Appends events to a file; optionally echoes a readable line to a text stream (the trainer's log).

    Without a path (the processes of a multi-process run other than the main one) events are checked and
    dropped: one process writes the run's events."""

    def __init__(self, path: str | Path | None, echo: TextIO | None = None):
        self.path = Path(path) if path is not None else None
        self._handle: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self._echo = echo
        self.listeners: list = []  # callables receiving each event (e.g. the TensorBoard tracker)

    def emit(self, type_: str, **fields: Any) -> dict:
        check_event(type_, fields)
        event = {"type": type_, "time": round(time.time(), 3), **_clean(fields)}
        if self._handle is None:
            return event
        self._handle.write(json.dumps(event, ensure_ascii=False) + "\n")
        self._handle.flush()
        for listener in self.listeners:
            listener(event)
        if self._echo is not None:
            self._echo.write(describe(event) + "\n")
            self._echo.flush()
        return event

    def status(self, phase: str, **fields: Any) -> dict:
        return self.emit("status", phase=phase, **fields)

    def warning(self, message: str, setting: str | None = None) -> dict:
        return self.emit("warning", message=message, setting=setting)

    def error(self, message: str, setting: str | None = None) -> dict:
        return self.emit("error", message=message, setting=setting)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def max_norm_words(event: dict) -> str:
    """" max-norm: 3 keys scaled, avg norm 0.41, max 1" for a step event that has the statistics, else ""."""
    if event.get("keys_scaled") is None:
        return ""
    return (f" max-norm: {event['keys_scaled']} keys scaled, avg norm {event.get('average_key_norm', 0):.3g},"
            f" max {event.get('max_key_norm', 0):.3g}")


def describe(event: dict) -> str:
    """One human line per event, for the trainer's log."""
    kind = event.get("type")
    if kind == "step":
        lrs = " ".join(f"lr/{k}={v:.3g}" for k, v in (event.get("lr") or {}).items())
        loss = event.get("loss")
        return (f"step {event.get('step')} epoch {event.get('epoch')} loss={loss if loss is None else round(loss, 5)}"
                f" avg={event.get('loss_avg') and round(event['loss_avg'], 5)} {lrs}" + max_norm_words(event))
    if kind in ("warning", "error"):
        where = f"{event['setting']}: " if event.get("setting") else ""
        return f"{kind.upper()}: {where}{event.get('message')}"
    if kind == "status":
        return f"[{event.get('phase')}]"
    if kind == "started":
        plan = event.get("plan") or {}
        return f"started: {plan.get('total_steps')} steps over {plan.get('epochs')} epochs"
    if kind == "checkpoint":
        return f"saved {event.get('kind')} checkpoint at step {event.get('step')}: {event.get('path')}"
    if kind == "sample":
        return f"samples at step {event.get('step')}: " + ", ".join(i["path"] for i in event.get("images", []))
    if kind == "finished":
        return f"finished: {event.get('status')} {event.get('outputs')}"
    return json.dumps(event)


def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Events after byte ``offset`` and the offset to continue from. A partial last line is left for later."""
    path = Path(path)
    if not path.exists():
        return [], offset
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]  # a partial last line is left for the next read
    return _parse_lines(complete), offset + len(complete)


def _parse_lines(data: bytes) -> list[dict]:
    events = []
    for line in data.splitlines():
        text = line.strip()
        if text:
            try:
                events.append(json.loads(text))
            except json.JSONDecodeError:
                continue  # a foreign line; never stop reading because of one
    return events


def find_event(path: str | Path, type_: str, *, last: bool = False, head_bytes: int | None = None) -> dict | None:
    """The first (or, with ``last``, the last) complete event of ``type_`` in an events file; None when there
    is none. ``head_bytes`` limits the search to the start of the file (``started`` comes early)."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    path = Path(path)
    if not path.is_file():
        return None
    events, _ = read_events(path) if head_bytes is None else _read_head(path, head_bytes)
    found = None
    for event in events:
        if isinstance(event, dict) and event.get("type") == type_:
            if not last:
                return event
            found = event
    return found


def _read_head(path: Path, head_bytes: int) -> tuple[list[dict], int]:
    with path.open("rb") as handle:
        data = handle.read(head_bytes)
    complete = data[: data.rfind(b"\n") + 1]
    return _parse_lines(complete), len(complete)
