"""The run manager and the run view, without a browser: real subprocesses, real files.

Most tests drive a tiny stand-in trainer (a Python script written here) so stopping and process groups
are checked in seconds; one test runs the real ``python -m trainer train`` on the demo and stops it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.process_helpers import wait_for

from gui.run_view import (
    RunView,
    format_duration,
    loss_rows,
    lr_rows,
    plan_lr_rows,
    progress_html,
    read_new_events,
    thin,
)
from gui.runs import (
    STARTUP_GRACE_S, RunError, RunManager, pid_alive, read_pid, run_folder_name, run_status, tail_text,
)
from trainer.spec import JobError

# A stand-in trainer: writes a started event and one step per 0.05 s; on SIGINT it writes
# finished/stopped and exits, unless IGNORE_SIGINT is set. It also starts a grandchild (a sleeper) in
# its process group, whose pid it records, so a test can check that Stop reaches the whole group.
CHILD = textwrap.dedent('''
    import json, os, signal, subprocess, sys, time
    run_dir = sys.argv[sys.argv.index("--run-dir") + 1]
    events = open(os.path.join(run_dir, "events.jsonl"), "a")
    def emit(**event):
        event["time"] = time.time()
        events.write(json.dumps(event) + "\\n"); events.flush()
    def on_sigint(signum, frame):
        emit(type="finished", status="stopped", outputs=["out/lora.safetensors"])
        sys.exit(0)
    if os.environ.get("IGNORE_SIGINT"):  # before anything slow, as the real trainer does (issue 16)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, on_sigint)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open(os.path.join(run_dir, "grandchild"), "w").write(str(sleeper.pid))
    print("stand-in trainer running", flush=True)
    emit(type="started", plan={"total_steps": 1000})
    if os.environ.get("DIE_AT_ONCE"):
        sys.exit(3)
    step = 0
    while True:
        step += 1
        emit(type="step", step=step, epoch=1, loss=1.0 / step, loss_avg=1.0, lr={"unet": 1e-4})
        time.sleep(0.05)
''')


@pytest.fixture()
def standin(tmp_path):
    script = tmp_path / "standin_trainer.py"
    script.write_text(CHILD)
    return [sys.executable, str(script)]


def demo_like_values(tmp_path: Path) -> dict:
    return {"output_name": "my lora 1", "train_data_dir": str(tmp_path), "output_dir": str(tmp_path / "out")}


def events_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_run_folder_name_is_timestamp_and_safe_name():
    when = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    assert run_folder_name("my lora/1", when) == "20260304-050607-my_lora_1"
    assert run_folder_name("", when) == "20260304-050607-run"


def test_start_writes_job_launches_in_own_group_and_first_stop_interrupts(tmp_path, standin):
    manager = RunManager(tmp_path / "runs", trainer_command=standin)
    run_dir = manager.start(demo_like_values(tmp_path))
    try:
        assert run_dir.parent == (tmp_path / "runs").resolve()
        assert run_dir.name.endswith("-my_lora_1")
        assert 'output_name = "my lora 1"' in (run_dir / "job.toml").read_text()
        pid = read_pid(run_dir)
        assert os.getpgid(pid) == pid  # start_new_session: the trainer leads its own process group
        wait_for(lambda: (run_dir / "grandchild").is_file() and any(e["type"] == "step" for e in events_of(run_dir)))
        assert manager.active_run() == run_dir
        assert run_status(run_dir).state == "running"
        with pytest.raises(RunError, match="already in progress"):
            manager.start(demo_like_values(tmp_path))
        assert manager.stop() == "interrupted"
        assert manager.wait(timeout=10) == 0
        assert run_status(run_dir).state == "stopped"
        assert manager.active_run() is None
        grandchild = int((run_dir / "grandchild").read_text())
        wait_for(lambda: not pid_alive(grandchild))  # SIGINT reached the whole group
        assert "stand-in trainer running" in (run_dir / "trainer.log").read_text()
    finally:
        _cleanup(run_dir)


def test_second_stop_kills_a_trainer_that_ignores_sigint(tmp_path, standin, monkeypatch):
    monkeypatch.setenv("IGNORE_SIGINT", "1")
    manager = RunManager(tmp_path / "runs", trainer_command=standin)
    run_dir = manager.start(demo_like_values(tmp_path))
    try:
        wait_for(lambda: (run_dir / "grandchild").is_file())
        assert manager.stop() == "interrupted"
        assert manager.wait(timeout=0.5) is None  # it ignored SIGINT and keeps going
        assert manager.stop() == "killed"
        assert manager.wait(timeout=10) == -signal.SIGKILL
        grandchild = int((run_dir / "grandchild").read_text())
        wait_for(lambda: not pid_alive(grandchild))
        assert run_status(run_dir).state == "killed"
        assert manager.stop() == "nothing to stop"
    finally:
        _cleanup(run_dir)


def test_a_new_manager_reattaches_to_a_running_trainer(tmp_path, standin):
    """A GUI restart: a fresh RunManager finds the run from its folder and can stop it."""
    first = RunManager(tmp_path / "runs", trainer_command=standin)
    run_dir = first.start(demo_like_values(tmp_path))
    try:
        wait_for(lambda: (run_dir / "events.jsonl").is_file())
        second = RunManager(tmp_path / "runs", trainer_command=standin)
        assert second.active_run() == run_dir
        assert second.list_runs() == [run_dir]
        assert second.stop() == "interrupted"
        first.wait(timeout=10)
        assert run_status(run_dir).state == "stopped"
    finally:
        _cleanup(run_dir)


def test_trainer_that_exits_without_finished_event_is_reported_dead(tmp_path, standin, monkeypatch):
    monkeypatch.setenv("DIE_AT_ONCE", "1")
    manager = RunManager(tmp_path / "runs", trainer_command=standin)
    run_dir = manager.start(demo_like_values(tmp_path))
    assert manager.wait(timeout=15) == 3
    if not (run_dir / "events.jsonl").exists():  # no word from it yet: still "starting" for a grace time
        assert run_status(run_dir).state == "running"
    status = run_status(run_dir, now=time.time() + STARTUP_GRACE_S + 1)
    assert status.state == "died"
    assert "without a 'finished' event" in status.detail
    assert manager.active_run() is None
    _cleanup(run_dir)


def test_requests_wait_for_the_started_event(tmp_path, standin):
    """Before ``started`` the trainer may not have its SIGUSR1/2 handlers yet (their default ends the process),
    so Sample now / Save now send nothing; nor to a run whose trainer is gone, nor for an unknown request.
    The real trainer receiving one is tested in test_real_trainer_starts_and_stops_gracefully."""
    from gui.runs import has_started

    run_dir = tmp_path / "runs" / "starting"
    run_dir.mkdir(parents=True)
    (run_dir / "job.toml").write_text("")
    (run_dir / "events.jsonl").write_text('{"type": "warning", "message": "say started"}\n{"type": "sta')
    manager = RunManager(tmp_path / "runs", standin)
    assert not has_started(run_dir) and not manager.request(run_dir, "sample")
    with (run_dir / "events.jsonl").open("a") as handle:
        handle.write('rted", "plan": {}}\n')
    assert has_started(run_dir)
    assert not manager.request(run_dir, "sample")  # started, but no trainer process of this run is alive
    assert not manager.request(run_dir, "dance")


def test_invalid_values_start_nothing(tmp_path, standin):
    manager = RunManager(tmp_path / "runs", trainer_command=standin)
    with pytest.raises(JobError) as caught:
        manager.start({**demo_like_values(tmp_path), "train_batch_size": 0})
    assert [p.setting for p in caught.value.problems] == ["train_batch_size"]
    assert manager.list_runs() == []
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_view_reads_from_offset_and_leaves_a_partial_line_for_later(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    events = run_dir / "events.jsonl"
    lines = [
        {"type": "started", "time": 0, "plan": {"total_steps": 4}},
        {"type": "step", "time": 1, "step": 1, "epoch": 1, "loss": 0.5, "loss_avg": 0.5,
         "lr": {"unet": 1e-4, "text_encoder": 5e-5}, "it_per_s": 2.0, "eta_s": 1.5},
    ]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    partial = json.dumps({"type": "step", "time": 2, "step": 2, "epoch": 1, "loss": 0.3, "loss_avg": 0.4,
                          "lr": {"unet": 2e-4, "text_encoder": 1e-4}})
    with events.open("a") as handle:
        handle.write(partial[:20])
    view = RunView(run_dir=str(run_dir))
    assert read_new_events(view) == 2
    offset_after_two = view.offset
    assert offset_after_two == len("".join(json.dumps(e) + "\n" for e in lines).encode())
    assert read_new_events(view) == 0 and view.offset == offset_after_two
    with events.open("a") as handle:
        handle.write(partial[20:] + "\n")
        handle.write(json.dumps({"type": "sample", "time": 3, "step": 2,
                                 "images": [{"path": "samples/a.png", "prompt": "a red circle"}]}) + "\n")
        handle.write(json.dumps({"type": "warning", "time": 3, "message": "slow disk", "setting": "output_dir"}) + "\n")
    assert read_new_events(view) == 3
    assert [(s, l, a) for s, l, a in view.losses] == [(1, 0.5, 0.5), (2, 0.3, 0.4)]
    assert loss_rows(view) == [
        {"step": 1, "loss": 0.5, "series": "loss"}, {"step": 1, "loss": 0.5, "series": "moving average"},
        {"step": 2, "loss": 0.3, "series": "loss"}, {"step": 2, "loss": 0.4, "series": "moving average"},
    ]
    assert sorted((r["group"], r["step"], r["lr"]) for r in lr_rows(view)) == [
        ("text_encoder", 1, 5e-5), ("text_encoder", 2, 1e-4), ("unet", 1, 1e-4), ("unet", 2, 2e-4)]
    assert view.samples == [(str(run_dir / "samples/a.png"), "step 2 — a red circle")]
    assert view.messages == [("warning", "output_dir: slow disk")]
    html = progress_html(view, "running")
    assert "step 2 of 4" in html and "50%" in html


def test_pure_helpers_hand_worked():
    assert format_duration(3725) == "1h 02m 05s"
    assert format_duration(65) == "1m 05s"
    assert format_duration(None) == "—"
    points = list(range(1001))
    kept = thin(points, max_points=100)  # stride ⌈1001 ÷ 100⌉ = 11 → 0, 11, …, 990, then the last (1000)
    assert kept[:3] == [0, 11, 22] and kept[-2:] == [990, 1000] and len(kept) == 92
    assert plan_lr_rows({"lr_curve": {"unet": [[1, 0.0], [2, 1e-4]]}}) == [
        {"step": 1, "lr": 0.0, "group": "unet"}, {"step": 2, "lr": 1e-4, "group": "unet"}]


def test_tail_text_keeps_the_last_lines(tmp_path):
    log = tmp_path / "trainer.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_text(log, max_lines=3) == "line 97\nline 98\nline 99"
    assert tail_text(tmp_path / "missing.log") == ""


def test_real_trainer_starts_and_stops_gracefully(tmp_path, demo_dir):
    """The real ``python -m trainer train`` on the demo: steps arrive, Stop saves and says 'stopped'."""
    from trainer.spec import read_job_toml

    values = {**read_job_toml(demo_dir / "job.toml"), "output_dir": str(tmp_path / "out"), "epoch": 50}
    values.pop("spec_version", None)
    manager = RunManager(tmp_path / "runs")
    run_dir = manager.start(values)
    try:
        view = RunView(run_dir=str(run_dir))
        wait_for(lambda: read_new_events(view) >= 0 and len(view.losses) >= 2, timeout=120, interval=0.2)
        assert view.plan["total_steps"] == 50 * view.plan["steps_per_epoch"]
        assert manager.request(None, "save")  # Save now: a step file after the current step
        saved = wait_for(lambda: read_new_events(view) >= 0 and [c for c in view.checkpoints if c.get("requested")],
                         timeout=60, interval=0.2)
        assert saved[0]["kind"] == "step" and Path(saved[0]["path"]).is_file()
        assert manager.stop() == "interrupted"
        assert manager.wait(timeout=60) == 0
        read_new_events(view)
        assert view.finished["status"] == "stopped"
        assert run_status(run_dir).state == "stopped"
        outputs = view.finished["outputs"]
        assert outputs and all(Path(p).is_file() and p.endswith(".safetensors") for p in outputs)
        assert not manager.request(run_dir, "sample")  # the run is over: nothing is sent
    finally:
        _cleanup(run_dir)


def _cleanup(run_dir: Path) -> None:
    """Never leave a stray process behind, whatever the test did."""
    for name in ("pid", "grandchild"):
        try:
            pid = int((run_dir / name).read_text().split()[0])
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass
