"""The on-disk queue and the one run checker, without a browser.

The engine's bookkeeping is driven with a stand-in trainer (seconds); the real ``python -m trainer`` runs in
the CLI test (queue run, Ctrl-C, a job whose folder vanished) and in tests/test_queue_app.py (the app).
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.effects_runs import small_dataset
from tests.process_helpers import kill_runs, wait_for
from tests.queue_helpers import standin_command, tiny_values
from trainer import run_queue
from trainer.queue_runner import QueueRunner
from trainer.run_status import (
    JOB_FILE, process_start_time, read_pid_record, run_status, trainer_alive, write_pid,
)
from trainer.spec import JobError


@pytest.fixture()
def runs(tmp_path):
    runs_dir = (tmp_path / "runs").resolve()
    yield runs_dir
    kill_runs(runs_dir)


def drain(runner: QueueRunner, timeout: float = 60.0) -> None:
    def settled() -> bool:
        runner.tick()
        return not runner.busy()

    wait_for(settled, timeout=timeout, interval=0.1)


def run_dirs_by_job(runs_dir: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for mark in runs_dir.glob(f"*/{run_queue.QUEUE_MARK}"):
        found.setdefault(mark.read_text(), []).append(mark.parent.name)
    return found


def test_add_list_move_edit_remove_and_what_differs(runs, demo_dir, tmp_path):
    first = run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, "a", network_dim=4))
    second = run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, "b", network_dim=16, learning_rate=5e-4))
    third = run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, "c", network_dim=16, learning_rate=5e-4))
    assert (first, second, third) == ("0001-a", "0002-b", "0003-c")
    entries = run_queue.list_jobs(runs)
    assert [(e.position, e.name, e.status) for e in entries] == [(1, "a", "queued"), (2, "b", "queued"),
                                                                   (3, "c", "queued")]
    assert entries[0].diff == "first in the queue"
    assert entries[1].diff == "output_name a→b, network_dim 4→16, learning_rate 0.001→0.0005"
    assert entries[2].diff == "output_name b→c"
    assert run_queue.move_job(runs, 3, 1) == [third, first, second]
    run_queue.replace_job(runs, "0001-a", tiny_values(demo_dir, tmp_path, "a", network_dim=32))
    assert run_queue.job_values(runs, first)["network_dim"] == 32
    with pytest.raises(JobError) as caught:
        run_queue.replace_job(runs, first, tiny_values(demo_dir, tmp_path, "a", network_dim=0))
    assert [p.setting for p in caught.value.problems] == ["network_dim"]
    assert run_queue.remove_job(runs, 2) == first  # position 2 is now "a"
    assert [e.job_id for e in run_queue.list_jobs(runs)] == [third, second]
    assert not (runs / "queue" / first).exists()
    with pytest.raises(run_queue.QueueError, match="no queued job"):
        run_queue.move_job(runs, 7, 1)


def test_add_validates_as_start_does(runs, demo_dir, tmp_path):
    with pytest.raises(JobError) as caught:
        run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, "bad", train_batch_size=0))
    assert [p.setting for p in caught.value.problems] == ["train_batch_size"]
    with pytest.raises(JobError) as caught:
        run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, "gone", train_data_dir=str(tmp_path / "nowhere")))
    assert [p.setting for p in caught.value.problems] == ["train_data_dir"]
    assert run_queue.list_jobs(runs) == []


def test_jobs_run_in_order_once_each_with_two_runners(runs, demo_dir, tmp_path):
    """Two drivers (two app processes, or an app and the CLI) tick at once: each job starts exactly once,
    one at a time, in queue order; the stand-in fails one job and the queue goes on."""
    command = standin_command(tmp_path)
    ids = [run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, name, epoch=3))
           for name in ("one", "two_fail", "three", "four")]
    runners = [QueueRunner(runs, command), QueueRunner(runs, command)]
    overlaps = []

    def drive(runner: QueueRunner) -> None:
        for _ in range(400):
            runner.tick()
            running = [e for e in run_queue.list_jobs(runs) if e.status == "running"]
            if len(running) > 1:
                overlaps.append(running)
            if not runner.busy():
                return

    threads = [threading.Thread(target=drive, args=(r,)) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not overlaps
    assert {job: len(dirs) for job, dirs in run_dirs_by_job(runs).items()} == {job: 1 for job in ids}
    started = sorted(run_dirs_by_job(runs).items(), key=lambda item: run_queue.job_state(runs, item[0])["started"])
    assert [job for job, _ in started] == ids
    assert [e.status for e in run_queue.list_jobs(runs)] == ["completed", "failed", "completed", "completed"]
    failed = run_queue.list_jobs(runs)[1]
    assert "something broke" in failed.detail and "stand-in: something broke" in failed.log_tail


def test_a_folder_gone_before_its_turn_fails_naming_train_data_dir_and_the_queue_goes_on(runs, demo_dir, tmp_path):
    command = standin_command(tmp_path)
    doomed = tiny_values(demo_dir, tmp_path, "doomed",
                         train_data_dir=str(small_dataset(demo_dir, tmp_path / "doomed_data", images=2)))
    run_queue.add_job(runs, doomed)
    run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, "after"))
    shutil.rmtree(doomed["train_data_dir"])
    drain(QueueRunner(runs, command))
    doomed_entry, after = run_queue.list_jobs(runs)
    assert doomed_entry.status == "failed" and doomed_entry.detail.startswith("train_data_dir:")
    assert "does not exist" in doomed_entry.detail
    assert after.status == "completed"
    assert list(run_dirs_by_job(runs)) == ["0002-after"]  # the refused job never made a run


def test_stop_on_failure_pauses_until_resumed(runs, demo_dir, tmp_path):
    command = standin_command(tmp_path)
    run_queue.set_options(runs, stop_on_failure=True)
    for name in ("breaks_fail", "next"):
        run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, name))
    runner = QueueRunner(runs, command)
    drain(runner)
    assert [e.status for e in run_queue.list_jobs(runs)] == ["failed", "queued"]
    options = run_queue.read_options(runs)
    assert options["paused"] and "0001-breaks_fail failed" in options["paused_reason"]
    run_queue.set_options(runs, paused=False)
    drain(runner)
    assert [e.status for e in run_queue.list_jobs(runs)] == ["failed", "completed"]
    assert not run_queue.read_options(runs)["paused"]  # the failure already paused once: it does not again


def test_a_stopped_job_does_not_stop_the_queue_and_shutdown_never_restarts_it(runs, demo_dir, tmp_path):
    command = standin_command(tmp_path)
    run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, "hang"))
    run_queue.add_job(runs, tiny_values(demo_dir, tmp_path, "then"))
    runner = QueueRunner(runs, command)
    launched = wait_for(runner.tick)
    wait_for(lambda: run_status(launched.run_dir).alive and (launched.run_dir / "events.jsonl").exists())
    assert runner.shutdown(grace_s=10) == launched.run_dir
    assert run_status(launched.run_dir).state == "stopped"
    second = QueueRunner(runs, command)  # a restarted app
    drain(second)
    assert [e.status for e in run_queue.list_jobs(runs)] == ["stopped", "completed"]
    assert {job: len(dirs) for job, dirs in run_dirs_by_job(runs).items()} == {"0001-hang": 1, "0002-then": 1}


def test_pid_file_holds_the_start_time_and_a_reused_pid_is_not_the_trainer(tmp_path):
    run_dir = tmp_path / "20260101-000000-x"
    run_dir.mkdir()
    (run_dir / JOB_FILE).write_text("")
    write_pid(run_dir, os.getpid())
    pid, started = read_pid_record(run_dir)
    assert pid == os.getpid() and started == process_start_time(os.getpid()) and started
    assert not trainer_alive(run_dir)  # alive, but this process's command line does not name the run folder
    (run_dir / "pid").write_text(f"{os.getpid()} 1")  # the same pid, another start time: another process
    assert not trainer_alive(run_dir)
    (run_dir / "events.jsonl").write_text('{"type": "started", "time": 1, "plan": {}}\n')
    (run_dir / "trainer.log").write_text("loading…\nSegmentation fault\n")
    status = run_status(run_dir)
    assert (status.state, status.outcome) == ("died", "failed")
    assert status.log_tail.endswith("Segmentation fault")


def test_cli_queues_drains_and_ctrl_c_stops_the_real_trainer(tmp_path, demo_dir):
    """``python -m trainer queue``: add (refusing a bad job by its setting), list, run with the real trainer,
    Ctrl-C stops the job in progress (saved, 'stopped') and leaves the next waiting; a second run finishes it."""
    import signal
    import subprocess
    import sys

    from tests.queue_helpers import long_values
    from tests.trainer_helpers import ROOT, run_trainer, trainer_env
    from trainer.events import read_events
    from trainer.spec import write_job_toml

    runs = tmp_path / "runs"
    long_job = write_job_toml(long_values(demo_dir, tmp_path, "long"), tmp_path / "long.toml")
    tiny_job = write_job_toml(tiny_values(demo_dir, tmp_path, "tiny", network_dim=4), tmp_path / "tiny.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_job.read_text().replace("train_batch_size = 2", "train_batch_size = 0"))
    refused = run_trainer("queue", "add", bad, "--runs-dir", runs)
    assert refused.returncode == 2 and "train_batch_size" in refused.stderr
    for job in (long_job, tiny_job):
        assert run_trainer("queue", "add", job, "--runs-dir", runs).returncode == 0
    listed = run_trainer("queue", "list", "--runs-dir", runs).stdout.splitlines()
    assert listed[0].split()[:3] == ["1", "queued", "0001-long"]
    assert listed[1].split()[:3] == ["2", "queued", "0002-tiny"] and "network_dim 8→4" in listed[1]
    drainer = subprocess.Popen([sys.executable, "-m", "trainer", "queue", "run", "--runs-dir", str(runs)], cwd=ROOT,
                               env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        def stepping() -> bool:
            entry = run_queue.list_jobs(runs)[0]
            events = read_events(Path(entry.run_dir) / "events.jsonl")[0] if entry.run_dir else []
            return any(e["type"] == "step" for e in events)

        wait_for(stepping, timeout=240, interval=0.5)
        drainer.send_signal(signal.SIGINT)
        out, _ = drainer.communicate(timeout=120)
    finally:
        if drainer.poll() is None:
            drainer.kill()
        kill_runs(runs)
    assert drainer.returncode == 0, out
    assert "0001-long: stopped" in out
    assert [e.status for e in run_queue.list_jobs(runs)] == ["stopped", "queued"]
    finished = run_trainer("queue", "run", "--runs-dir", runs, timeout=400)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "0002-tiny: completed" in finished.stdout
    assert [e.status for e in run_queue.list_jobs(runs)] == ["stopped", "completed"]
    assert (tmp_path / "out" / "tiny.safetensors").is_file() and (tmp_path / "out" / "long.safetensors").is_file()
    assert {job: len(dirs) for job, dirs in run_dirs_by_job(runs).items()} == {"0001-long": 1, "0002-tiny": 1}
