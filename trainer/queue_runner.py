"""Drives the on-disk queue (``trainer.run_queue``): the app runs one ``QueueRunner`` in a thread, and
``python -m trainer queue run`` runs one in the foreground. Several may run at once (two apps, an app and the
CLI): each start is decided under the runs folder's lock, so a job still starts once and one run at a time.

On shutdown (the app's SIGTERM, the CLI's Ctrl-C) the runner stops the queued run in progress — SIGINT, so the
trainer saves and says ``stopped``; SIGKILL if it has not ended within the grace time — and never restarts
it: a restarted app carries on with the next job.
"""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

from trainer import run_queue
from trainer.run_status import STOPS_FILE, active_run, run_status, signal_run, stop_requests

TICK_S = 0.5
STOP_GRACE_S = 30.0


class QueueRunner:
    """Starts the next queued job whenever nothing runs; reaps the trainers it started."""

    def __init__(self, runs_dir: str | Path, trainer_command: list[str] | None = None):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.trainer_command = trainer_command
        self.children: list[subprocess.Popen] = []
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> run_queue.Launched | None:
        self.children = [c for c in self.children if c.poll() is None]
        launched = run_queue.advance(self.runs_dir, self.trainer_command)
        if launched is not None:
            self.children.append(launched.process)
        return launched

    def busy(self) -> bool:
        """A run is in progress, or a queued job still waits (and the queue is not paused)."""
        if active_run(self.runs_dir) is not None:
            return True
        return run_queue.waiting_count(self.runs_dir) > 0 and not run_queue.read_options(self.runs_dir)["paused"]

    def queued_run_in_progress(self) -> Path | None:
        run_dir = active_run(self.runs_dir)
        return run_dir if run_dir is not None and (run_dir / run_queue.QUEUE_MARK).is_file() else None

    def stop_current(self, grace_s: float = STOP_GRACE_S) -> Path | None:
        """Stop the queued run in progress (SIGINT, then SIGKILL after ``grace_s``); the run folder or None."""
        run_dir = self.queued_run_in_progress()
        if run_dir is None:
            return None
        (run_dir / STOPS_FILE).write_text(str(stop_requests(run_dir) + 1))
        signal_run(run_dir, signal.SIGINT)
        deadline = time.monotonic() + grace_s
        while run_status(run_dir).alive and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.2)
        if run_status(run_dir).alive:
            (run_dir / STOPS_FILE).write_text(str(stop_requests(run_dir) + 1))
            signal_run(run_dir, signal.SIGKILL)
        self._reap(wait=2.0)
        return run_dir

    def _reap(self, wait: float = 0.0) -> None:
        for child in self.children:
            try:
                child.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        self.children = [c for c in self.children if c.poll() is None]

    # ----- in the app: a thread ---------------------------------------------------------------------
    def start_thread(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="loom-queue", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._halt.is_set():
            try:
                self.tick()
            except Exception as error:  # noqa: BLE001 — the runner must outlive one bad tick
                print(f"queue: {error}", flush=True)
            self._halt.wait(TICK_S)

    def shutdown(self, grace_s: float = STOP_GRACE_S) -> Path | None:
        """Stop ticking, then stop the queued run in progress (it is not started again)."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self.stop_current(grace_s)
