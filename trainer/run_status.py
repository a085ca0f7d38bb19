"""The one checker of where a run stands, from its folder and the OS — never from a record kept elsewhere.

A run folder ``RUNS/<stamp>-<name>/`` holds ``job.toml``, ``pid`` (the trainer's pid and its process start
time), ``trainer.log`` and ``events.jsonl``. ``run_status`` reads the ``finished`` event (through
``trainer.events``) and asks the OS whether the recorded process still runs; a trainer that is gone without
saying it finished (killed, crashed, machine rebooted) is a failure, reported with its log tail. The page's
run area, its Runs list, the queue (in the app and on the command line) all ask this one function.

Plain Python (no torch, no gradio). ``launch_trainer`` starts ``python -m trainer train`` in its own process
group and writes the pid file; ``runs_lock`` is the lock every launcher holds while it decides and starts,
so two app processes, or the app and ``python -m trainer queue run``, never start two runs at once.
"""
from __future__ import annotations

import fcntl
import signal
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from trainer.events import EVENTS_FILE, find_event

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOG_FILE = "trainer.log"
PID_FILE = "pid"
PIDS_FILE = "trainer_pids"  # a multi-process run's trainer processes on this machine, main first
STOPS_FILE = "stop_requests"
JOB_FILE = "job.toml"
LOCK_FILE = ".runs.lock"
STARTUP_GRACE_S = 20.0
FAILED_STATES = ("failed", "killed", "died")


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands: ``running``, ``completed``, ``stopped``, ``failed``, ``killed`` or ``died``.

    ``killed`` (a second Stop) and ``died`` (the process ended without a ``finished`` event) are failures:
    ``outcome`` folds them into ``failed`` for lists; ``log_tail`` holds the log's last lines for a failure."""

    state: str
    detail: str = ""
    log_tail: str = ""

    @property
    def alive(self) -> bool:
        return self.state == "running"

    @property
    def outcome(self) -> str:
        return "failed" if self.state in FAILED_STATES else self.state


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None where unknown."""
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_pid(run_dir: Path, pid: int) -> None:
    """``pid`` and its start time, so a pid the OS later gives to another process is not taken for ours."""
    started = process_start_time(pid) or ""
    tmp = Path(run_dir) / (PID_FILE + ".tmp")
    tmp.write_text(f"{pid} {started}".strip())
    tmp.replace(Path(run_dir) / PID_FILE)


def read_pid_record(run_dir: Path) -> tuple[int | None, str | None]:
    try:
        parts = (Path(run_dir) / PID_FILE).read_text().split()
        return int(parts[0]), (parts[1] if len(parts) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None, None


def read_pid(run_dir: Path) -> int | None:
    return read_pid_record(run_dir)[0]


def pid_alive(pid: int | None, run_dir: Path | None = None, start_time: str | None = None) -> bool:
    """True if ``pid`` runs and, where /proc tells, is the trainer of ``run_dir`` started at ``start_time``
    (a reused pid is not); a zombie has finished."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            if start_time and process_start_time(pid) != start_time:
                return False
            if run_dir is not None:
                return str(Path(run_dir)) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return False
    return True


def trainer_alive(run_dir: Path) -> bool:
    pid, started = read_pid_record(run_dir)
    return pid_alive(pid, run_dir, started)


def finished_event(run_dir: Path) -> dict | None:
    """The run's ``finished`` event, if it wrote one (the last one wins)."""
    return find_event(Path(run_dir) / EVENTS_FILE, "finished", last=True)


def has_started(run_dir: Path, head_bytes: int = 1 << 16) -> bool:
    """Whether the trainer wrote its ``started`` event (among the first lines: only warnings come before)."""
    return find_event(Path(run_dir) / EVENTS_FILE, "started", head_bytes=head_bytes) is not None


def stop_requests(run_dir: Path) -> int:
    try:
        return int((Path(run_dir) / STOPS_FILE).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def just_started(run_dir: Path, now: float | None = None) -> bool:
    """A run folder with no event yet whose job file is younger than STARTUP_GRACE_S: too early to call the
    trainer dead (until it has exec'd, its /proc entry still shows the launcher), so it counts as starting;
    one that really dies at once is reported when the grace time is over."""
    run_dir = Path(run_dir)
    if (run_dir / EVENTS_FILE).exists():
        return False
    try:
        written = (run_dir / JOB_FILE).stat().st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - written < STARTUP_GRACE_S


def is_active(run_dir: Path, now: float | None = None) -> bool:
    """Cheap: whether the run is (or is about to be) training — pid first, events only when it lives."""
    if trainer_alive(run_dir):
        return finished_event(run_dir) is None
    return just_started(run_dir, now)


def run_status(run_dir: Path, now: float | None = None) -> RunStatus:
    """The state of a run, from its folder and the OS (pid liveness), never from memory."""
    run_dir = Path(run_dir)
    finished = finished_event(run_dir)
    if finished is not None:
        state = str(finished.get("status", "completed"))
        reason = str(finished.get("reason", "") or "")
        if state == "failed":
            error = find_event(run_dir / EVENTS_FILE, "error", last=True)
            if error:
                where = f"{error['setting']}: " if error.get("setting") else ""
                reason = f"{reason}: {where}{error.get('message', '')}" if reason else where + str(error.get("message"))
            return RunStatus(state, reason, tail_text(run_dir / LOG_FILE))
        return RunStatus(state, reason)
    if trainer_alive(run_dir):
        return RunStatus("running")
    if just_started(run_dir, now):
        return RunStatus("running", "starting")
    if finished_event(run_dir) is not None:  # its last words arrived while we looked at the process
        return run_status(run_dir, now)
    tail = tail_text(run_dir / LOG_FILE)
    if stop_requests(run_dir) >= 2:
        return RunStatus("killed", "the trainer was killed by a second Stop before it could save", tail)
    return RunStatus("died", "the trainer process ended without a 'finished' event (killed, crashed or the "
                             "machine restarted); see the log tail", tail)


def tail_text(path: Path, max_lines: int = 40, max_bytes: int = 16384) -> str:
    """The last ``max_lines`` lines of a text file ("" if it does not exist)."""
    try:
        with Path(path).open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line was probably cut
    return "\n".join(lines[-max_lines:])


def list_runs(runs_dir: Path) -> list[Path]:
    """Run folders (those holding a job file), newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [p for p in runs_dir.iterdir() if p.is_dir() and (p / JOB_FILE).is_file()]
    return sorted(runs, key=lambda p: p.name, reverse=True)


def active_run(runs_dir: Path) -> Path | None:
    """The run still in progress under ``runs_dir`` (started by any process), if any."""
    for run_dir in list_runs(runs_dir):
        if is_active(run_dir):
            return run_dir
    return None


def run_folder_name(output_name: str, when: float) -> str:
    """``<YYYYmmdd-HHMMSS>-<output_name>`` with characters unsafe in a file name replaced by ``_``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", output_name or "run").strip("._") or "run"
    return f"{stamp}-{safe}"


def new_run_dir(runs_dir: Path, output_name: str) -> Path:
    """A fresh, empty run folder under ``runs_dir`` named after the time and ``output_name``."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = run_folder_name(output_name, time.time())
    candidate, counter = runs_dir / base, 2
    while candidate.exists():
        candidate, counter = runs_dir / f"{base}-{counter}", counter + 1
    candidate.mkdir()
    return candidate


@contextmanager
def runs_lock(runs_dir: Path) -> Iterator[None]:
    """An exclusive lock on the runs folder, held while deciding whether to start a run and starting it."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    with (runs_dir / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_trainer_command() -> list[str]:
    return [sys.executable, "-m", "trainer"]


def launch_trainer(run_dir: Path, job_path: Path, command: list[str] | None = None,
                   secrets: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m trainer train JOB --run-dir RUN`` (under ``accelerate launch`` when the job asks for several
    processes: ``trainer.launch``) in its own process group, its output in the log, and the pid file written
    at once."""
    from trainer.launch import train_command
    from trainer.spec import load_job

    env = dict(os.environ, PYTHONUNBUFFERED="1", **(secrets or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    full = train_command(load_job(job_path), command or default_trainer_command(), job_path, run_dir)
    with (Path(run_dir) / LOG_FILE).open("ab") as log:
        process = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
    write_pid(Path(run_dir), process.pid)
    return process


def trainer_pids(run_dir: Path) -> list[int]:
    """The trainer processes of a multi-process run on this machine, main first ([] for one process)."""
    try:
        return [int(word) for word in (Path(run_dir) / PIDS_FILE).read_text().split()]
    except (OSError, ValueError):
        return []


def signal_run(run_dir: Path, signum: int) -> bool:
    """Send ``signum`` to the run's process group; False when its trainer is not alive. A first Stop (SIGINT)
    of a multi-process run goes to each trainer process, not to the launcher (which would pass a second
    SIGINT on and kill them before they save)."""
    pid, started = read_pid_record(run_dir)
    if not pid_alive(pid, run_dir, started):
        return False
    workers = trainer_pids(run_dir) if signum == signal.SIGINT else []
    try:
        if workers:
            for worker in workers:
                _signal_quietly(worker, signum)
        else:
            os.killpg(os.getpgid(pid), signum)  # type: ignore[arg-type]
    except ProcessLookupError:
        return False
    return True


def _signal_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # already gone
