"""Two real trainer processes on the CPU (gloo), started the way the page starts them: ``accelerate launch
--multi_gpu --num_processes 2`` around ``python -m trainer train`` (trainer.launch). Each run is the small
demo (8 images, batch 1: 4 steps of 2 × 1 images), so the whole file costs a few two-process runs.

What they show: one events stream and one set of files; each process trained on a different half of every
global batch; one update over two processes equals one process's update on the same global batch with the
same noise (the gradients are averaged); Stop reaches both and saves once; a killed process ends the run
with an error naming it; a state saved by two processes resumes exactly with two.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import tomli_w

from trainer.distributed import process_seed
from trainer.events import read_events
from trainer.launch import train_command
from trainer.spec import job_from_values

from .effects_runs import demo_values, read_lora
from .trainer_helpers import ROOT, trainer_env

EXACT = dict(train_batch_size=1, epoch=1, optimizer="SGDNesterov", max_grad_norm=0.0, lr_scheduler="cosine",
             lr_warmup=0.0, save_every_n_steps=1, save_state=True, save_precision="float")
LONG = dict(train_batch_size=1, epoch=40, save_every_n_steps=0)  # long enough to stop or kill while it trains


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_process_values(demo_dir: Path, work: Path, **overrides) -> dict:
    return demo_values(demo_dir, work, num_processes=2, main_process_port=free_port(), **overrides)


def launch(values: dict, work: Path, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """The launcher (accelerate launch) on ``values``, as its own process group; (process, run folder)."""
    job_path, run_dir = work / "job.toml", work / "run"
    job_path.write_text(tomli_w.dumps(values), encoding="utf-8")
    command = train_command(job_from_values(values), [sys.executable, "-m", "trainer"], job_path, run_dir)
    log = (work / "launcher.log").open("wb")
    process = subprocess.Popen(command, cwd=ROOT, env={**trainer_env(), **(env or {})}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    return process, run_dir


def finish(process: subprocess.Popen, work: Path, timeout: float = 600) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail("the two-process run did not end:\n" + (work / "launcher.log").read_text()[-3000:])


def events_of(run_dir: Path) -> list[dict]:
    return read_events(run_dir / "events.jsonl")[0]


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def trainer_pids(run_dir: Path) -> list[int]:
    try:
        return [int(w) for w in (run_dir / "trainer_pids").read_text().split()]
    except (OSError, ValueError):
        return []


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture(scope="module")
def two(demo_dir, tmp_path_factory):
    """The demo trained by two processes: 4 steps, a LoRA file and a state after each of steps 1–3."""
    work = tmp_path_factory.mktemp("two")
    values = two_process_values(demo_dir, work, **EXACT)
    process, run_dir = launch(values, work, {"LORA_LOOM_BATCH_TRACE": str(work / "trace")})
    code = finish(process, work)
    assert code == 0, (work / "launcher.log").read_text()[-3000:]
    return values, work, run_dir


def test_two_processes_train_the_demo_into_one_events_stream_and_one_set_of_files(two):
    values, work, run_dir = two
    events = events_of(run_dir)
    assert [e["type"] for e in events].count("started") == 1
    assert [(e["status"]) for e in of(events, "finished")] == ["completed"]
    plan = of(events, "started")[0]["plan"]
    assert (plan["num_processes"], plan["batches_per_epoch"], plan["steps_per_epoch"], plan["global_batch_size"]) == (2, 8, 4, 2)
    assert [e["step"] for e in of(events, "step")] == [1, 2, 3, 4]
    assert sorted(p.name for p in run_dir.glob("*.jsonl")) == ["events.jsonl"]
    out = Path(values["output_dir"])
    name = values["output_name"]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"{name}.safetensors", f"{name}-state"] + [f"{name}-step{s:08d}.safetensors" for s in (1, 2, 3)]
                           + [f"{name}-step{s:08d}-state" for s in (1, 2, 3)])
    assert len([e for e in of(events, "checkpoint") if e["kind"] == "final"]) == 1
    tensors, metadata = read_lora(out / f"{name}.safetensors")
    assert metadata["ss_total_batch_size"] == "2" and tensors


def test_each_process_trained_on_a_different_half_of_every_global_batch(two):
    values, work, _ = two
    traces = {rank: [json.loads(line) for line in (work / "trace" / f"batches-{rank}.jsonl").read_text().splitlines()]
              for rank in (0, 1)}
    assert traces[0][0]["pid"] != traces[1][0]["pid"]  # two processes really ran
    assert [t["index"] for t in traces[0]] == [t["index"] for t in traces[1]] == [0, 1, 2, 3]
    seen = []
    for first, second in zip(traces[0], traces[1]):
        assert not set(first["images"]) & set(second["images"])
        seen += first["images"] + second["images"]
    assert sorted(seen) == sorted(str(p) for p in Path(values["train_data_dir"]).rglob("*.png"))


def test_one_update_over_two_processes_equals_one_process_on_the_same_global_batch(two, tmp_path):
    """The reference: one process, the same first global batch (the two halves the processes took), each
    half with the noise its process drew, the loss averaged, one optimizer step."""
    from trainer.events import EventWriter
    from trainer.loop import batch_loss, optimizer_step
    from trainer.session import build_session, cache_latents

    values, work, _ = two
    job = job_from_values({**values, "num_processes": 1, "output_dir": str(tmp_path / "out")})
    with EventWriter(tmp_path / "events.jsonl") as events:
        session = build_session(job, tmp_path, events)
        cache_latents(session, events)
    torch.set_num_threads(1)
    slots = session.data.batch_slots(1)
    main_noise = session.noise_generator.get_state()
    other_noise = torch.Generator().manual_seed(process_seed(session.seed, 1)).get_state()
    before = session.network.kohya_state_dict()
    for slot, noise in ((slots[0], main_noise), (slots[1], other_noise)):
        session.noise_generator.set_state(noise)
        (batch_loss(session, session.data.load_batch(1, slot), 1, 0) / 2).backward()
    optimizer_step(session, None)
    expected = session.network.kohya_state_dict()
    got, _ = read_lora(Path(values["output_dir"]) / f"{values['output_name']}-step00000001.safetensors")
    change = max((expected[k] - before[k]).abs().max().item() for k in expected)
    error = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert change > 1e-6  # the step did change the LoRA
    assert error < 1e-3 * change, f"two processes moved the LoRA differently: {error} vs a change of {change}"


def test_a_state_saved_by_two_processes_resumes_exactly_with_two(two, tmp_path):
    values, work, run_dir = two
    full = {e["step"]: e for e in of(events_of(run_dir), "step")}
    state = Path(values["output_dir"]) / f"{values['output_name']}-step00000002-state"
    resumed_values = {**values, "resume": str(state), "output_dir": str(tmp_path / "out"), "main_process_port": free_port()}
    process, resumed_dir = launch(resumed_values, tmp_path)
    assert finish(process, tmp_path) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    steps = of(events_of(resumed_dir), "step")
    assert [e["step"] for e in steps] == [3, 4]
    for event in steps:
        assert event["loss"] == pytest.approx(full[event["step"]]["loss"], rel=1e-5, abs=1e-7)
        assert event["lr"] == pytest.approx(full[event["step"]]["lr"], rel=1e-9)


def test_stop_reaches_both_processes_which_save_once_and_exit(demo_dir, tmp_path):
    from gui.runs import RunManager, run_status

    from trainer.network import read_lora_file

    values = two_process_values(demo_dir, tmp_path, **LONG)
    manager = RunManager(tmp_path / "runs", trainer_command=[sys.executable, "-m", "trainer"])
    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = trainer_env()["PYTHONPATH"]  # the offline guard, as the other runs have it
    try:
        run_dir = manager.start(values)
    finally:
        os.environ.pop("PYTHONPATH") if old_path is None else os.environ.update(PYTHONPATH=old_path)
    try:
        wait_for(lambda: of(events_of(run_dir), "step"), 600, "the first step")
        pids = trainer_pids(run_dir)
        assert len(pids) == 2
        assert manager.stop() == "interrupted"
        waited = wait_for(lambda: all(gone(pid) for pid in pids), 10, "both processes to exit after Stop")
        assert manager.wait(timeout=20) == 0
        events = events_of(run_dir)
        assert of(events, "finished")[-1]["status"] == "stopped" and run_status(run_dir).state == "stopped"
        finals = [e for e in of(events, "checkpoint") if e["kind"] == "final"]
        assert len(finals) == 1 and of(events, "finished")[-1]["outputs"] == [finals[0]["path"]]
        assert [p.name for p in Path(values["output_dir"]).iterdir()] == [f"{values['output_name']}.safetensors"]
        tensors, _ = read_lora_file(finals[0]["path"])
        assert tensors and finals[0]["step"] < of(events, "started")[0]["plan"]["total_steps"]
        print(f"both processes exited {waited:.1f} s after Stop")
    finally:
        _kill_group(run_dir)


@pytest.mark.parametrize("victim", [1, 0], ids=["other", "main"])
def test_a_killed_process_ends_the_run_failed_with_a_message_naming_it(demo_dir, tmp_path, victim):
    values = two_process_values(demo_dir, tmp_path, **LONG)
    process, run_dir = launch(values, tmp_path)
    try:
        wait_for(lambda: of(events_of(run_dir), "step"), 600, "the first step")
        pids = trainer_pids(run_dir)
        os.kill(pids[victim], signal.SIGKILL)
        waited = wait_for(lambda: of(events_of(run_dir), "finished"), 30, "the run to end after a process was killed")
        events = events_of(run_dir)
        assert [e["status"] for e in of(events, "finished")] == ["failed"]
        message = of(events, "error")[-1]["message"]
        assert f"process {victim} of 2 (pid {pids[victim]})" in message and "ended unexpectedly" in message
        assert finish(process, tmp_path, timeout=40) != 0  # the launcher ends too: nothing hangs
        assert all(gone(pid) for pid in pids)
        print(f"killed process {victim}: the run ended {waited:.1f} s later: {message}")
    finally:
        _kill_group(run_dir, process)


def _kill_group(run_dir: Path, process: subprocess.Popen | None = None) -> None:
    pid = process.pid if process is not None else int((run_dir / "pid").read_text().split()[0])
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process is not None:
        process.wait()
