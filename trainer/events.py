"""The event stream: JSON lines appended to ``events.jsonl`` and flushed as they happen.

The GUI, the tests and other tools read it incrementally from a byte offset, so a page reload or a GUI
restart can re-attach to a running job. Every event has ``type`` and ``time`` (Unix seconds).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, TextIO


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
    """Appends events to a file; optionally echoes a readable line to a text stream (the trainer's log)."""

    def __init__(self, path: str | Path, echo: TextIO | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")
        self._echo = echo
        self.listeners: list = []  # callables receiving each event (e.g. the TensorBoard tracker)

    def emit(self, type_: str, **fields: Any) -> dict:
        event = {"type": type_, "time": round(time.time(), 3), **_clean(fields)}
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
        self._handle.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def describe(event: dict) -> str:
    """One human line per event, for the trainer's log."""
    kind = event.get("type")
    if kind == "step":
        lrs = " ".join(f"lr/{k}={v:.3g}" for k, v in (event.get("lr") or {}).items())
        loss = event.get("loss")
        return (f"step {event.get('step')} epoch {event.get('epoch')} loss={loss if loss is None else round(loss, 5)}"
                f" avg={event.get('loss_avg') and round(event['loss_avg'], 5)} {lrs}")
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
    events = []
    consumed = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        consumed += len(line)
        text = line.strip()
        if text:
            try:
                events.append(json.loads(text))
            except json.JSONDecodeError:
                continue  # a foreign line; never stop reading because of one
    return events, offset + consumed
