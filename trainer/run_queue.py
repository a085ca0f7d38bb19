"""The queue of runs, kept on disk under the runs folder so the app, a restarted app and
``python -m trainer queue`` all see (and drain) the same one.

    RUNS/queue/order.json             {"order": [job ids in queue order], "next_number": N}
    RUNS/queue/options.json           {"stop_on_failure": bool, "paused": bool, "paused_reason": str}
    RUNS/queue/0003-my_lora/job.toml  the job, validated when added and again at its turn
    RUNS/queue/0003-my_lora/state.json {"state": "queued" | "started" | "refused", "run_dir", "message", ...}

A job is started at most once: ``advance`` records ``started`` and the run folder in ``state.json`` (written
atomically) before it launches the trainer, all under ``runs_lock``, which every launcher holds. What became
of a started job is never stored: ``trainer.run_status`` reads it from the run folder and the OS each time,
so a trainer that died shows as failed and the queue moves on. Plain Python: no torch, no gradio.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.run_status import (
    JOB_FILE, active_run, launch_trainer, new_run_dir, run_folder_name, run_status, runs_lock,
)

QUEUE_DIR = "queue"
ORDER_FILE = "order.json"
OPTIONS_FILE = "options.json"
STATE_FILE = "state.json"
QUEUE_MARK = "queue_job"  # in a run folder: the id of the queued job it ran
DIFF_KEYS_SHOWN = 4


class QueueError(Exception):
    """A queue operation that cannot be done (unknown job, a job that already started…), in words."""


@dataclass(frozen=True)
class QueueEntry:
    """One job as the queue shows it; ``status`` comes from the run folder once the job has started."""

    job_id: str
    position: int
    name: str
    status: str  # queued, running, completed, stopped, failed
    detail: str
    run_dir: str
    diff: str
    log_tail: str = ""

    @property
    def started(self) -> bool:
        return self.status != "queued"


def queue_dir(runs_dir: Path) -> Path:
    return Path(runs_dir) / QUEUE_DIR


def _read_json(path: Path, default: dict) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dict(default)
    return data if isinstance(data, dict) else dict(default)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


def _order(runs_dir: Path) -> dict:
    data = _read_json(queue_dir(runs_dir) / ORDER_FILE, {"order": [], "next_number": 1})
    data["order"] = [j for j in data.get("order", []) if (queue_dir(runs_dir) / j / JOB_FILE).is_file()]
    return data


def read_options(runs_dir: Path) -> dict:
    return {"stop_on_failure": False, "paused": False, "paused_reason": "",
            **_read_json(queue_dir(runs_dir) / OPTIONS_FILE, {})}


def set_options(runs_dir: Path, **changes: Any) -> dict:
    """Change ``stop_on_failure`` / ``paused``; resuming clears the reason for the pause."""
    with runs_lock(runs_dir):
        options = {**read_options(runs_dir), **changes}
        if not options["paused"]:
            options["paused_reason"] = ""
        _write_json(queue_dir(runs_dir) / OPTIONS_FILE, options)
        return options


def job_state(runs_dir: Path, job_id: str) -> dict:
    return _read_json(queue_dir(runs_dir) / job_id / STATE_FILE, {"state": "queued"})


def job_values(runs_dir: Path, job_id: str) -> dict:
    from trainer.spec import read_job_toml

    values = read_job_toml(queue_dir(runs_dir) / job_id / JOB_FILE)
    values.pop("spec_version", None)
    return values


def _validated(values: dict):
    """The job for ``values`` checked exactly as Start checks it; JobError listing the errors otherwise."""
    from trainer.spec import JobError, validate_values

    job, problems = validate_values(values, for_training=True)
    errors = [p for p in problems if p.level == "error"]
    if job is None or errors:
        raise JobError(errors or problems)
    return job


def add_job(runs_dir: Path, values: dict) -> str:
    """Validate ``values`` (as Start does) and put them at the end of the queue; returns the job's id."""
    from trainer.spec import write_job_toml

    values = {k: v for k, v in values.items() if k != "spec_version"}
    _validated(values)
    with runs_lock(runs_dir):
        order = _order(runs_dir)
        number = max(int(order.get("next_number", 1)), 1)
        name = run_folder_name(str(values.get("output_name") or "job"), 0).split("-", 2)[2]
        job_id = f"{number:04d}-{name}"
        write_job_toml(values, queue_dir(runs_dir) / job_id / JOB_FILE)
        _write_json(queue_dir(runs_dir) / job_id / STATE_FILE, {"state": "queued", "added": time.time()})
        _write_json(queue_dir(runs_dir) / ORDER_FILE,
                    {"order": [*order["order"], job_id], "next_number": number + 1})
    return job_id


def add_job_file(runs_dir: Path, path: str | Path) -> str:
    from trainer.spec import read_job_toml

    return add_job(runs_dir, read_job_toml(path))


def resolve_job(runs_dir: Path, ref: str | int) -> str:
    """A job id from its position (1-based, as ``list`` shows it) or its id."""
    order = _order(runs_dir)["order"]
    text = str(ref).strip()
    if text.isdigit() and 1 <= int(text) <= len(order):
        return order[int(text) - 1]
    if text in order:
        return text
    raise QueueError(f"no queued job {text!r} (positions 1–{len(order)})")


def _not_started(runs_dir: Path, job_id: str, doing: str) -> None:
    if job_state(runs_dir, job_id).get("state") != "queued":
        raise QueueError(f"job {job_id} has already had its turn; only jobs still waiting can be {doing}")


def move_job(runs_dir: Path, ref: str | int, position: int) -> list[str]:
    """Move a waiting job to ``position`` (1-based, clamped); returns the new order."""
    with runs_lock(runs_dir):
        job_id = resolve_job(runs_dir, ref)
        _not_started(runs_dir, job_id, "moved")
        order = _order(runs_dir)
        ids = [j for j in order["order"] if j != job_id]
        ids.insert(min(max(int(position), 1), len(ids) + 1) - 1, job_id)
        _write_json(queue_dir(runs_dir) / ORDER_FILE, {**order, "order": ids})
        return ids


def remove_job(runs_dir: Path, ref: str | int) -> str:
    """Take a job out of the queue (its run folder, if it ran, stays in the history); not while it runs."""
    with runs_lock(runs_dir):
        job_id = resolve_job(runs_dir, ref)
        state = job_state(runs_dir, job_id)
        if state.get("state") == "started" and run_status(Path(state.get("run_dir", ""))).alive:
            raise QueueError(f"job {job_id} is running; stop it first")
        order = _order(runs_dir)
        _write_json(queue_dir(runs_dir) / ORDER_FILE, {**order, "order": [j for j in order["order"] if j != job_id]})
        shutil.rmtree(queue_dir(runs_dir) / job_id, ignore_errors=True)
        return job_id


def replace_job(runs_dir: Path, ref: str | int, values: dict) -> str:
    """Edit a waiting job: its settings become ``values`` (validated as Start does)."""
    from trainer.spec import write_job_toml

    values = {k: v for k, v in values.items() if k != "spec_version"}
    _validated(values)
    with runs_lock(runs_dir):
        job_id = resolve_job(runs_dir, ref)
        _not_started(runs_dir, job_id, "edited")
        write_job_toml(values, queue_dir(runs_dir) / job_id / JOB_FILE)
        return job_id


def diff_summary(before: dict | None, after: dict) -> str:
    """``network_dim 8→16, learning_rate 0.001→0.0005`` — the settings that differ from the job before."""
    if before is None:
        return "first in the queue"
    keys = [k for k in after if k != "spec_version" and before.get(k) != after.get(k)]
    keys += [k for k in before if k not in after and k != "spec_version"]
    if not keys:
        return "same settings as the job before"
    shown = [f"{k} {_short(before.get(k))}→{_short(after.get(k))}" for k in keys[:DIFF_KEYS_SHOWN]]
    more = f" (+{len(keys) - DIFF_KEYS_SHOWN} more)" if len(keys) > DIFF_KEYS_SHOWN else ""
    return ", ".join(shown) + more


def _short(value: Any) -> str:
    text = "—" if value in (None, "") else str(value)
    return text if len(text) <= 24 else "…" + text[-23:]


def list_jobs(runs_dir: Path) -> list[QueueEntry]:
    """Every job in queue order, with where it stands (from its run folder once it has started)."""
    entries, previous = [], None
    for position, job_id in enumerate(_order(runs_dir)["order"], start=1):
        try:
            values = job_values(runs_dir, job_id)
        except Exception:  # noqa: BLE001 — a damaged job file is shown, not fatal to the list
            values = {}
        state = job_state(runs_dir, job_id)
        status, detail, run_dir, tail = "queued", "", "", ""
        if state.get("state") == "refused":
            status, detail = "failed", str(state.get("message", ""))
        elif state.get("state") == "started":
            run_dir = str(state.get("run_dir", ""))
            found = run_status(Path(run_dir))
            status, detail, tail = found.outcome, found.detail, found.log_tail
        entries.append(QueueEntry(job_id, position, str(values.get("output_name", job_id)), status, detail,
                                  run_dir, diff_summary(previous, values), tail))
        previous = values
    return entries


@dataclass
class Launched:
    job_id: str
    run_dir: Path
    process: subprocess.Popen


def advance(runs_dir: Path, trainer_command: list[str] | None = None) -> Launched | None:
    """Start the next waiting job if nothing runs and the queue is not paused; None when nothing started.

    A job whose settings no longer pass the checks at its turn (its image folder was deleted, say) is
    refused with the checks' message and the next one is tried. With ``stop_on_failure`` a job that failed
    or was stopped pauses the queue (once)."""
    runs_dir = Path(runs_dir).expanduser().resolve()
    with runs_lock(runs_dir):
        if active_run(runs_dir) is not None:
            return None
        options = read_options(runs_dir)
        if not options["paused"]:
            _note_endings(runs_dir, options)
        while not read_options(runs_dir)["paused"]:
            job_id = _next_waiting(runs_dir)
            if job_id is None:
                return None
            refusal = _check_at_turn(runs_dir, job_id)
            if refusal:
                _write_json(queue_dir(runs_dir) / job_id / STATE_FILE,
                            {**job_state(runs_dir, job_id), "state": "refused", "message": refusal,
                             "ended": time.time()})
                _note_endings(runs_dir, read_options(runs_dir))
                continue
            return _launch(runs_dir, job_id, trainer_command)
    return None


def _next_waiting(runs_dir: Path) -> str | None:
    for job_id in _order(runs_dir)["order"]:
        if job_state(runs_dir, job_id).get("state") == "queued":
            return job_id
    return None


def _check_at_turn(runs_dir: Path, job_id: str) -> str:
    from trainer.spec import JobError

    try:
        _validated(job_values(runs_dir, job_id))
    except JobError as error:
        return "; ".join((f"{p.setting}: " if p.setting else "") + p.message for p in error.problems)
    return ""


def _note_endings(runs_dir: Path, options: dict) -> None:
    """Mark jobs that ended since the last look; pause the queue for a failed/stopped one if asked to."""
    for job_id in _order(runs_dir)["order"]:
        state = job_state(runs_dir, job_id)
        if state.get("state") == "queued" or state.get("noted"):
            continue
        outcome = "failed" if state.get("state") == "refused" else run_status(Path(state.get("run_dir", ""))).outcome
        if outcome == "running":
            continue
        _write_json(queue_dir(runs_dir) / job_id / STATE_FILE, {**state, "noted": True})
        if outcome in ("failed", "stopped") and options["stop_on_failure"] and not options["paused"]:
            options = {**options, "paused": True, "paused_reason": f"job {job_id} {outcome}"}
            _write_json(queue_dir(runs_dir) / OPTIONS_FILE, options)


def _launch(runs_dir: Path, job_id: str, trainer_command: list[str] | None) -> Launched:
    values = job_values(runs_dir, job_id)
    run_dir = new_run_dir(runs_dir, str(values.get("output_name") or job_id))
    shutil.copyfile(queue_dir(runs_dir) / job_id / JOB_FILE, run_dir / JOB_FILE)
    (run_dir / QUEUE_MARK).write_text(job_id)
    _write_json(queue_dir(runs_dir) / job_id / STATE_FILE,
                {**job_state(runs_dir, job_id), "state": "started", "run_dir": str(run_dir), "started": time.time()})
    process = launch_trainer(run_dir, run_dir / JOB_FILE, trainer_command)
    return Launched(job_id, run_dir, process)


def waiting_count(runs_dir: Path) -> int:
    return sum(1 for j in _order(runs_dir)["order"] if job_state(runs_dir, j).get("state") == "queued")
