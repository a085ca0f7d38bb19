"""The launch settings and the pieces of a multi-process run that are checked without starting one: the
schema and validation, the plan's arithmetic, the launch command, the kohya_ss import, the batch shares,
naming a process that has gone, and the watchdog. The runs with two real processes are in
tests/test_multiprocess.py."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.distributed import (Peer, SingleProcess, Watchdog, batch_tracer, launch_env, lost_message,
                                 process_seed)
from trainer.events import EventWriter
from trainer.kohya import import_kohya_config
from trainer.launch import train_command
from trainer.plan import global_batch_size, schedule, schedule_for_job
from trainer.spec import JobError, check_job, job_from_values

FIXTURE = Path(__file__).parent / "fixtures" / "kohya" / "multi-gpu-sd15.json"
TRAINER = ["/py", "-m", "trainer"]


def job(**values):
    return job_from_values(values)


def problems_of(**values):
    return {(p.setting, p.level) for p in check_job(job(**values))}


# ---------------------------------------------------------------- schema, validation, import


def test_launch_settings_default_to_one_process_and_refuse_bad_values():
    plain = job()
    assert (plain.launch.num_processes, plain.launch.num_machines, plain.launch.multi_gpu, plain.launch.gpu_ids,
            plain.launch.main_process_port, plain.launch.dynamo_backend) == (1, 1, False, "", 0, "no")
    for bad in ({"num_processes": 0}, {"gpu_ids": "0,x"}, {"gpu_ids": "1,1"}, {"main_process_port": 70000},
                {"dynamo_backend": "fast"}, {"extra_accelerate_launch_args": "--a 'b"},
                {"extra_accelerate_launch_args": "machine_rank 1"}):
        with pytest.raises(JobError) as caught:
            job(**bad)
        assert [p.setting for p in caught.value.problems] == list(bad)


def test_processes_machines_and_gpu_ids_must_fit_together():
    assert ("num_processes", "error") in problems_of(num_processes=1, num_machines=2)
    assert ("gpu_ids", "error") in problems_of(num_processes=2, gpu_ids="0")
    assert ("gpu_ids", "error") not in problems_of(num_processes=4, num_machines=2, gpu_ids="0,1")
    assert ("main_process_port", "warning") in problems_of(main_process_port=29600)
    assert not {s for s, _ in problems_of(num_processes=2, gpu_ids="0,1", main_process_port=29600)} & {
        "num_processes", "gpu_ids", "main_process_port"}


def test_a_kohya_config_for_two_gpus_imports_with_its_launch_settings():
    result = import_kohya_config(FIXTURE)
    values = result.values
    assert (values["multi_gpu"], values["num_processes"], values["gpu_ids"]) == (True, 2, "0,1")
    assert (values["main_process_port"], values["dynamo_backend"], values["dynamo_mode"]) == (29512, "inductor", "max-autotune")
    assert values["dynamo_use_dynamic"] is True and values["extra_accelerate_launch_args"] == "--same_network"
    launch_keys = {"num_processes", "num_machines", "multi_gpu", "gpu_ids", "main_process_port", "dynamo_backend"}
    assert not launch_keys & {u.key for u in result.unmapped}
    assert job_from_values(values).launch.num_processes == 2


# ---------------------------------------------------------------- the plan


def test_steps_per_epoch_follow_sd_scripts_with_processes_and_accumulation():
    # sd-scripts: ceil(len(dataloader) / num_processes / gradient_accumulation_steps)
    assert schedule(batches_per_epoch=10, epoch=1).steps_per_epoch == 10
    assert schedule(batches_per_epoch=10, epoch=1, num_processes=2).steps_per_epoch == 5
    assert schedule(batches_per_epoch=9, epoch=2, num_processes=2).steps_per_epoch == 5
    assert schedule(batches_per_epoch=10, epoch=3, num_processes=2, gradient_accumulation_steps=2).total_steps == 9
    assert schedule(batches_per_epoch=10, epoch=1, num_processes=4, gradient_accumulation_steps=3).steps_per_epoch == 1


def test_the_plan_shows_processes_and_the_global_batch(demo_dir):
    from trainer.plan import make_plan

    values = dict(__import__("tomllib").loads((demo_dir / "job.toml").read_text()))
    one = make_plan(job_from_values(values))
    two = make_plan(job_from_values({**values, "num_processes": 2, "gradient_accumulation_steps": 3}))
    assert (one["num_processes"], one["global_batch_size"]) == (1, values["train_batch_size"])
    assert (two["num_processes"], two["global_batch_size"]) == (2, values["train_batch_size"] * 2 * 3)
    assert two["steps_per_epoch"] == -(-one["batches_per_epoch"] // 6)
    assert global_batch_size(job(train_batch_size=4, num_processes=8), 8) == 32
    assert schedule_for_job(job(num_processes=2), 10, num_processes=1).steps_per_epoch == 10  # what runs wins


# ---------------------------------------------------------------- the launch command


def test_one_process_starts_the_trainer_as_before():
    assert train_command(job(), TRAINER, "j.toml", "r") == ["/py", "-m", "trainer", "train", "j.toml", "--run-dir", "r"]


def test_processes_start_through_accelerate_launch_with_the_settings():
    command = train_command(job(num_processes=2, gpu_ids="0, 1", main_process_port=29600,
                                extra_accelerate_launch_args="--same_network --max_restarts 0"), TRAINER, "j.toml", "r")
    assert command[:3] == ["/py", "-m", "accelerate.commands.launch"]
    flags = command[3:command.index("trainer") - 1]

    def flag(name):
        return flags[flags.index(name) + 1]

    assert (flag("--num_processes"), flag("--num_machines"), flag("--gpu_ids"), flag("--main_process_port")) == (
        "2", "1", "0,1", "29600")
    assert "--multi_gpu" in flags and "--cpu" not in flags  # --cpu would run one process
    assert flags[-3:] == ["--same_network", "--max_restarts", "0"]
    assert command[-6:] == ["-m", "trainer", "train", "j.toml", "--run-dir", "r"]
    assert "--gpu_ids" not in train_command(job(num_processes=2), TRAINER, "j", "r")
    assert "--main_process_port" not in train_command(job(num_processes=2), TRAINER, "j", "r")


def test_multi_gpu_or_several_machines_alone_also_use_the_launcher():
    assert "--multi_gpu" in train_command(job(multi_gpu=True), TRAINER, "j", "r")
    machines = train_command(job(num_processes=2, num_machines=2, extra_accelerate_launch_args="--machine_rank 1"),
                             TRAINER, "j", "r")
    assert machines[machines.index("--num_machines") + 1] == "2" and "--machine_rank" in machines


def test_a_stand_in_trainer_script_is_launched_as_a_script():
    command = train_command(job(num_processes=2), ["python", "standin.py"], "j", "r")
    assert command[-5:] == ["standin.py", "train", "j", "--run-dir", "r"]


# ---------------------------------------------------------------- the pieces of a run


def test_launch_environment_and_process_seeds():
    assert launch_env({}) == launch_env({"WORLD_SIZE": "1"})
    env = launch_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert (env.world_size, env.rank, env.is_main) == (2, 1, False)
    assert process_seed(42, 0) == 42  # the main process draws what one process would
    assert len({process_seed(42, r) for r in range(8)}) == 8


def test_one_process_changes_nothing():
    single = SingleProcess()
    items = list(range(5))
    assert single.shard(items) == items and single.local_batches(5) == 5
    assert single.mean(1.5) == 1.5 and single.agree(False, True, False) == (False, True, False)
    assert single.gather("x") == ["x"] and single.world_size == 1 and single.is_main


def test_each_process_takes_whole_batches_as_accelerate_shares_them():
    from accelerate.data_loader import BatchSamplerShard

    from trainer.distributed import _ShardList

    def share(items, n, r):
        return list(BatchSamplerShard(_ShardList(items), n, r, split_batches=False, even_batches=True))

    slots = [f"b{i}" for i in range(5)]
    assert share(slots, 2, 0) == ["b0", "b2", "b4"] and share(slots, 2, 1) == ["b1", "b3", "b0"]
    for n in (2, 3):
        shares = [share(slots, n, r) for r in range(n)]
        assert {len(s) for s in shares} == {-(-5 // n)}  # every process the same number of steps
        for k in range(len(shares[0])):  # global batch k: a different batch on each process
            assert len({s[k] for s in shares}) == n or k == len(shares[0]) - 1


def test_events_without_a_file_are_checked_and_dropped(tmp_path):
    writer = EventWriter(None)
    assert writer.emit("warning", message="m", setting=None)["type"] == "warning"
    with pytest.raises(ValueError):
        writer.emit("nonsense")
    writer.close()
    assert not list(tmp_path.iterdir())


def test_the_batch_trace_records_each_process_batches(tmp_path, monkeypatch):
    assert batch_tracer(0) is None
    monkeypatch.setenv("LORA_LOOM_BATCH_TRACE", str(tmp_path))
    record = batch_tracer(1)
    assert record is not None
    record(1, 0, ["a.png"])
    assert '"images": ["a.png"]' in (tmp_path / "batches-1.jsonl").read_text()


@pytest.fixture
def sleeper():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def peers_with(process) -> list[Peer]:
    import os
    import socket

    return [Peer(0, socket.gethostname(), os.getpid()), Peer(1, socket.gethostname(), process.pid)]


def test_a_process_that_has_gone_is_named(tmp_path, sleeper):
    peers = peers_with(sleeper)
    assert lost_message(peers, 0, tmp_path, RuntimeError("Connection reset by peer"), wait_s=0).startswith(
        "lost the connection to the other processes of this 2-process run")
    sleeper.kill()
    sleeper.wait()
    message = lost_message(peers, 0, tmp_path, wait_s=0)
    assert message.startswith(f"process 1 of 2 (pid {sleeper.pid}) ended unexpectedly")
    (tmp_path / "process-1-error.txt").write_text("CUDA out of memory")
    assert "process 1 of 2" in lost_message(peers, 0, tmp_path, wait_s=0)
    assert "failed: CUDA out of memory" in lost_message(peers, 0, tmp_path, wait_s=0)


def test_the_watchdog_reports_a_process_that_dies_while_this_one_waits(sleeper):
    lost: list = []
    watchdog = Watchdog(peers_with(sleeper), 0, lost.append, interval_s=0.1, grace_s=0.3).start()
    try:
        time.sleep(0.5)
        assert lost == []  # alive: nothing to say
        sleeper.kill()
        sleeper.wait()
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p.rank for p in lost[0]] == [1]
    finally:
        watchdog.stop()


def test_a_stopped_watchdog_says_nothing(sleeper):
    lost: list = []
    watchdog = Watchdog(peers_with(sleeper), 0, lost.append, interval_s=0.1, grace_s=0.5).start()
    sleeper.kill()
    sleeper.wait()
    time.sleep(0.3)  # seen, within its grace time the run ends by itself
    watchdog.stop()
    time.sleep(0.6)
    assert lost == []


def test_the_fp16_grad_scaler_is_saved_in_the_state_and_restored(demo_dir, tmp_path):
    """fp16 needs a GPU, so the scaler is put on a CPU session by hand; the state code is the real one."""
    import torch

    from trainer.saving import Saver

    from .effects_runs import run_in_session

    run = run_in_session(demo_dir, tmp_path / "a", stop_after=1)
    session = run.session
    saved = {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}
    session.scaler = torch.amp.GradScaler("cpu")
    session.scaler.load_state_dict(saved)
    with EventWriter(None) as events:
        saver = Saver(session, events)
        saver.save_state(tmp_path / "state", step=1, epoch=1, batches_done=1)
        session.scaler = torch.amp.GradScaler("cpu")
        assert session.scaler.state_dict()["scale"] != 512.0
        saver.load_state(tmp_path / "state")
    assert session.scaler.state_dict() == saved
    assert json.loads((tmp_path / "state" / "train_state.json").read_text())["num_processes"] == 1


def test_the_page_plan_names_the_processes_and_the_global_batch_only_when_there_are_several():
    from gui.plan_panel import plan_markdown

    plan = schedule(batches_per_epoch=10, epoch=1, num_processes=2).__dict__
    text = plan_markdown({**plan, "global_batch_size": 4})
    assert "Processes (each takes whole batches) | 2" in text and "| 4" in text and "Steps per epoch | 5" in text
    assert "Processes" not in plan_markdown({**schedule(batches_per_epoch=10, epoch=1).__dict__, "global_batch_size": 1})


def test_dynamo_settings_compile_the_unet_with_their_backend_mode_fullgraph_and_dynamic(monkeypatch):
    from types import SimpleNamespace

    import torch

    from trainer.session import compile_unet

    layer = torch.nn.Linear(3, 2)
    base = SimpleNamespace(unet=layer)
    compile_unet(job(), base)
    assert base.unet is layer  # "no": not compiled
    compile_unet(job(dynamo_backend="eager"), base)  # really compiled (eager: no compiler needed on a CPU)
    x = torch.randn(4, 3)
    assert isinstance(base.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert torch.allclose(base.unet(x), layer(x))
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.update(kwargs) or model)
    compile_unet(job(dynamo_backend="inductor", dynamo_mode="max-autotune", dynamo_use_fullgraph=True,
                     dynamo_use_dynamic=True), SimpleNamespace(unet=layer))
    assert seen == {"backend": "inductor", "mode": "max-autotune", "fullgraph": True, "dynamic": True}
