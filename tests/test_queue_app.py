"""The app drives the queue by itself (no page open), with the real trainer: a trainer killed with SIGKILL shows
as failed with its log tail within 5 s and the next job starts; SIGTERM to the app while a job trains stops
that job, and the restarted app reports it stopped (never running), runs the next one, and runs nothing twice.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.queue_helpers import long_values, tiny_values
from tests.process_helpers import kill_runs, start_app, stop_app, wait_for
from trainer import run_queue
from trainer.events import read_events
from trainer.spec import write_job_toml

def stepping(runs: Path, position: int) -> bool:
    entry = run_queue.list_jobs(runs)[position - 1]
    if entry.status != "running":
        return False
    return any(e["type"] == "step" for e in read_events(Path(entry.run_dir) / "events.jsonl")[0])


def runs_per_job(runs: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for mark in runs.glob(f"*/{run_queue.QUEUE_MARK}"):
        found[mark.read_text()] = found.get(mark.read_text(), 0) + 1
    return found


def test_killed_trainer_fails_fast_and_an_app_restart_carries_on(tmp_path, demo_dir):
    runs = (tmp_path / "runs").resolve()
    job = write_job_toml(tiny_values(demo_dir, tmp_path, "form"), tmp_path / "job.toml")
    ids = [run_queue.add_job(runs, long_values(demo_dir, tmp_path, "first")),
           run_queue.add_job(runs, long_values(demo_dir, tmp_path, "second")),
           run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, "third"))]
    app, _ = start_app(job, tmp_path, runs)
    try:
        wait_for(lambda: stepping(runs, 1), timeout=240, interval=0.5)
        first_dir = Path(run_queue.list_jobs(runs)[0].run_dir)
        os.kill(int((first_dir / "pid").read_text().split()[0]), signal.SIGKILL)
        killed_at = time.monotonic()
        first = wait_for(lambda: (e := run_queue.list_jobs(runs)[0]).status == "failed" and e, timeout=5, interval=0.1)
        assert time.monotonic() - killed_at < 5
        assert "without a 'finished' event" in first.detail and "step" in first.log_tail
        wait_for(lambda: stepping(runs, 2), timeout=240, interval=0.5)  # the second started by itself
        os.kill(app.pid, signal.SIGTERM)
        app.wait(timeout=60)
        second = run_queue.list_jobs(runs)[1]
        assert second.status in ("stopped", "failed")
        assert run_queue.list_jobs(runs)[2].status == "queued"
        app, _ = start_app(job, tmp_path, runs)
        wait_for(lambda: run_queue.list_jobs(runs)[2].status == "completed", timeout=400, interval=0.5)
        statuses = [e.status for e in run_queue.list_jobs(runs)]
        assert statuses == ["failed", second.status, "completed"]
        assert runs_per_job(runs) == {job_id: 1 for job_id in ids}
        assert (tmp_path / "out" / "third.safetensors").is_file()
    finally:
        if app.poll() is None:
            stop_app(app)
        kill_runs(runs)
