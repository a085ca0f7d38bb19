"""The run manager: starts the trainer as a subprocess, stops it, and finds runs again after a reload.

Plain Python (no gradio), so it is tested on its own. A run is a folder ``RUNS/<YYYYmmdd-HHMMSS>-<name>/``
holding ``job.toml``, ``pid``, ``trainer.log`` (the trainer's stdout and stderr) and the trainer's
``events.jsonl``. Everything the page shows is read back from that folder, so a page reload or a GUI
restart re-attaches to a run that is still going and shows finished runs again.

Stopping follows the architecture: the first Stop sends SIGINT to the trainer's process group (it ends the
step, saves and emits ``finished: stopped``); a second Stop sends SIGKILL. Sample now and Save now send the
trainer's own process SIGUSR1 / SIGUSR2 (``trainer.run.REQUEST_SIGNALS``), once it has said ``started``.

A job with several processes starts through ``accelerate launch`` (``trainer.launch``); ``pid`` is then the
launcher's, and the trainer processes of this machine are listed in ``trainer_pids`` (main first) once they
have met. The first Stop goes to those processes alone (the launcher would pass a SIGINT on to them a second
time, and kill them 30 s later), Sample now / Save now to the main one; a second Stop kills the whole group.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.events import EVENTS_FILE, find_event
from trainer.launch import train_command

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOG_FILE = "trainer.log"
PID_FILE = "pid"
STOPS_FILE = "stop_requests"
JOB_FILE = "job.toml"
STARTUP_GRACE_S = 20.0


class RunError(Exception):
    """A run that cannot be started or stopped, with a message for the page."""


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands: ``running``, ``completed``, ``stopped``, ``failed``, ``killed`` or ``died``."""

    state: str
    detail: str = ""

    @property
    def alive(self) -> bool:
        return self.state == "running"


def default_trainer_command() -> list[str]:
    return [sys.executable, "-m", "trainer"]


def run_folder_name(output_name: str, when: float) -> str:
    """``<YYYYmmdd-HHMMSS>-<output_name>`` with characters unsafe in a file name replaced by ``_``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", output_name or "run").strip("._") or "run"
    return f"{stamp}-{safe}"


def read_pid(run_dir: Path) -> int | None:
    try:
        return int((Path(run_dir) / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None, run_dir: Path | None = None) -> bool:
    """True if ``pid`` runs and, where /proc tells, is the trainer of ``run_dir`` (a reused pid is not)."""
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
                return False  # a zombie has finished; only its exit status is left
            if run_dir is not None:
                return str(Path(run_dir)) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return False
    return True


def trainer_pids(run_dir: Path) -> list[int]:
    """The trainer processes of a multi-process run on this machine, main first ([] for one process)."""
    from trainer.distributed import PIDS_FILE

    try:
        return [int(word) for word in (Path(run_dir) / PIDS_FILE).read_text().split()]
    except (OSError, ValueError):
        return []


def _signal_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # already gone


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
    """A run folder whose trainer has written no event yet and whose job file is younger than
    STARTUP_GRACE_S: too early to call the trainer dead (its pid may not be readable yet), so it counts
    as starting; a trainer that really dies at once is reported when the grace time is over."""
    if (Path(run_dir) / EVENTS_FILE).exists():
        return False
    try:
        written = (Path(run_dir) / JOB_FILE).stat().st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - written < STARTUP_GRACE_S


def run_status(run_dir: Path, now: float | None = None) -> RunStatus:
    """The state of a run, from its folder and the OS (pid liveness), never from memory."""
    run_dir = Path(run_dir)
    finished = finished_event(run_dir)
    if finished is not None:
        return RunStatus(str(finished.get("status", "completed")), str(finished.get("reason", "") or ""))
    if pid_alive(read_pid(run_dir), run_dir):
        return RunStatus("running")
    if stop_requests(run_dir) >= 2:
        return RunStatus("killed", "the trainer was killed by a second Stop before it could save")
    if just_started(run_dir, now):
        return RunStatus("running", "starting")
    return RunStatus("died", "the trainer process ended without a 'finished' event; see the log below")


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


class RunManager:
    """Starts, stops and lists training runs under ``runs_dir``; at most one runs at a time."""

    def __init__(self, runs_dir: str | Path, trainer_command: list[str] | None = None):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.trainer_command = list(trainer_command or default_trainer_command())
        self._process: subprocess.Popen | None = None

    def list_runs(self) -> list[Path]:
        """Run folders, newest first."""
        if not self.runs_dir.is_dir():
            return []
        runs = [p for p in self.runs_dir.iterdir() if p.is_dir() and (p / JOB_FILE).is_file()]
        return sorted(runs, key=lambda p: p.name, reverse=True)

    def active_run(self) -> Path | None:
        """The run still in progress (started by this process or an earlier one), if any."""
        self._reap()
        for run_dir in self.list_runs():
            if pid_alive(read_pid(run_dir), run_dir) and finished_event(run_dir) is None:
                return run_dir
        return None

    def start(self, values: dict, secrets: dict[str, str] | None = None) -> Path:
        """Write ``job.toml`` from ``values`` into a new run folder and launch the trainer on it.

        Raises RunError when a run is already going, JobError (trainer.spec) when the values are invalid.
        ``secrets`` become environment variables of the trainer (never written to a file).
        """
        from trainer.spec import job_from_values, write_job_toml

        busy = self.active_run()
        if busy is not None:
            raise RunError(f"A run is already in progress ({busy.name}); stop it before starting another.")
        job = job_from_values(values)  # refuse bad values before any folder is made
        run_dir = self._new_run_dir(str(values.get("output_name") or "run"))
        job_path = write_job_toml(values, run_dir / JOB_FILE)
        self._launch(run_dir, train_command(job, self.trainer_command, job_path, run_dir), secrets or {})
        return run_dir

    def _new_run_dir(self, output_name: str) -> Path:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        base = run_folder_name(output_name, time.time())
        candidate, counter = self.runs_dir / base, 2
        while candidate.exists():
            candidate, counter = self.runs_dir / f"{base}-{counter}", counter + 1
        candidate.mkdir()
        return candidate

    def _launch(self, run_dir: Path, command: list[str], secrets: dict[str, str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **secrets)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        with (run_dir / LOG_FILE).open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env,
            )
        (run_dir / PID_FILE).write_text(str(self._process.pid))

    def stop(self, run_dir: Path | None = None) -> str:
        """Stop the active run: SIGINT to its process group first, SIGKILL on the second call.

        Returns what was done: ``"interrupted"``, ``"killed"`` or ``"nothing to stop"``.
        """
        run_dir = Path(run_dir) if run_dir else self.active_run()
        if run_dir is None:
            return "nothing to stop"
        pid = read_pid(run_dir)
        if not pid_alive(pid, run_dir):
            return "nothing to stop"
        assert pid is not None  # pid_alive says so
        count = stop_requests(run_dir) + 1
        (run_dir / STOPS_FILE).write_text(str(count))
        workers = trainer_pids(run_dir)
        try:
            if count == 1 and workers:
                for worker in workers:
                    _signal_quietly(worker, signal.SIGINT)
            else:
                os.killpg(os.getpgid(pid), signal.SIGINT if count == 1 else signal.SIGKILL)
        except ProcessLookupError:
            return "nothing to stop"
        return "interrupted" if count == 1 else "killed"

    def request(self, run_dir: Path | None, what: str) -> bool:
        """Ask the running trainer for samples (``what="sample"``) or a LoRA file (``"save"``) after its current
        step. False when no run of ours is training yet (before ``started`` the trainer has no handler)."""
        from trainer.run import REQUEST_SIGNALS

        run_dir = Path(run_dir) if run_dir else self.active_run()
        number = REQUEST_SIGNALS.get(what)
        if run_dir is None or number is None or not has_started(run_dir) or finished_event(run_dir) is not None:
            return False
        pid = read_pid(run_dir)
        if not pid_alive(pid, run_dir):
            return False
        assert pid is not None  # pid_alive says so
        workers = trainer_pids(run_dir)
        if workers:
            pid = workers[0]  # the main trainer process, not the launcher
        try:
            os.kill(pid, number)  # the trainer alone: its data-loader workers have no handler for these
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout: float) -> int | None:
        """Wait for the process this manager started; its exit code, or None if it is still running."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _reap(self) -> None:
        """Collect our finished child so it does not linger as a zombie."""
        if self._process is not None and self._process.poll() is not None:
            self._process = None
