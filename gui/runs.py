"""The run manager: starts the trainer as a subprocess, stops it, and finds runs again after a reload.

Plain Python (no gradio), so it is tested on its own; where a run stands is decided by the one checker,
``trainer.run_status`` (re-exported here). A run is a folder ``RUNS/<YYYYmmdd-HHMMSS>-<name>/``
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
import signal
import subprocess
from pathlib import Path

from trainer.run_status import (  # noqa: F401  (re-exported: the page and the tests import them from here)
    JOB_FILE,
    LOG_FILE,
    PID_FILE,
    PROJECT_ROOT,
    STARTUP_GRACE_S,
    STOPS_FILE,
    RunStatus,
    active_run,
    default_trainer_command,
    finished_event,
    has_started,
    just_started,
    launch_trainer,
    new_run_dir,
    run_folder_name,
    list_runs,
    pid_alive,
    read_pid,
    read_pid_record,
    run_status,
    runs_lock,
    signal_run,
    stop_requests,
    tail_text,
    trainer_alive,
    trainer_pids,
)


class RunError(Exception):
    """A run that cannot be started or stopped, with a message for the page."""


class RunManager:
    """Starts, stops and lists training runs under ``runs_dir``; at most one runs at a time (the queue's runs
    included: every launcher holds ``runs_lock`` while it checks and starts)."""

    def __init__(self, runs_dir: str | Path, trainer_command: list[str] | None = None):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.trainer_command = list(trainer_command or default_trainer_command())
        self._process: subprocess.Popen | None = None

    def list_runs(self) -> list[Path]:
        """Run folders, newest first."""
        return list_runs(self.runs_dir)

    def active_run(self) -> Path | None:
        """The run still in progress (started by this process or another one), if any."""
        self._reap()
        return active_run(self.runs_dir)

    def start(self, values: dict, secrets: dict[str, str] | None = None) -> Path:
        """Write ``job.toml`` from ``values`` into a new run folder and launch the trainer on it.

        Raises RunError when a run is already going, JobError (trainer.spec) when the values are invalid.
        ``secrets`` become environment variables of the trainer (never written to a file).
        """
        from trainer.spec import job_from_values, write_job_toml

        job_from_values(values)  # refuse bad values before any folder is made
        with runs_lock(self.runs_dir):
            busy = self.active_run()
            if busy is not None:
                raise RunError(f"A run is already in progress ({busy.name}); stop it before starting another.")
            run_dir = new_run_dir(self.runs_dir, str(values.get("output_name") or "run"))
            job_path = write_job_toml(values, run_dir / JOB_FILE)
            self._process = launch_trainer(run_dir, job_path, self.trainer_command, secrets or {})
        return run_dir

    def stop(self, run_dir: Path | None = None) -> str:
        """Stop the active run: SIGINT to its process group first, SIGKILL on the second call.

        Returns what was done: ``"interrupted"``, ``"killed"`` or ``"nothing to stop"``.
        """
        run_dir = Path(run_dir) if run_dir else self.active_run()
        if run_dir is None or not trainer_alive(run_dir):
            return "nothing to stop"
        count = stop_requests(run_dir) + 1
        (run_dir / STOPS_FILE).write_text(str(count))
        if not signal_run(run_dir, signal.SIGINT if count == 1 else signal.SIGKILL):
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
        if not trainer_alive(run_dir) or pid is None:
            return False
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
