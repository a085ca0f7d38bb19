"""Kill -9 at seeded random points of a run that saves at every step, then resume, until the run is done.

    python -m tests.kill_harness WORK_DIR [--kills 3] [--seed 16] [--demo DEMO_DIR]

One process imports the trainer once and forks each run (the child runs ``python -m trainer train``'s code,
so a run starts in a fraction of a second). A kill comes after a random number of this run's checkpoint
events plus a random delay of up to 60 ms, so it lands in steps, in LoRA writes and in state writes. After
every kill, each ``.safetensors`` file and each state folder left in the output folder must load; the next
run resumes from the newest state (an epoch-end, step or final one) and must remove the temporaries the
killed one left. The last run is not killed: its LoRA must equal, to 1e-6, that of an uninterrupted run.
The report (``WORK_DIR/report.json``) lists the kills, what they left, and every problem found.
``tests/test_kill.py`` runs a few kills in CI; ``bench/bench_kill.py`` a longer loop.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # forked children: no OpenMP pool in the parent to inherit

import tomli_w  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_NAME = "killed"
KILL_DELAY_S = 0.06
RUN_TIMEOUT_S = 300
# Three epochs of 4 steps; a LoRA file and a state after every step and at the end of epochs 1 and 2.
JOB = dict(epoch=3, train_batch_size=2, save_every_n_steps=1, save_every_n_epochs=1, save_state=True,
           sample_every_n_steps=0, sample_every_n_epochs=0, mixed_precision="no", save_precision="float",
           lr_scheduler="cosine", lr_warmup=25, num_cpu_threads_per_process=1, output_name=OUTPUT_NAME)


def prepare(work: Path, demo: Path | None = None) -> dict:
    """The demo (``demo``, or built once into ``work/demo``) with 8 of its images at 1 repeat; returns the
    job's values."""
    import tomllib

    from trainer.models.demo import build_demo

    demo = demo or work / "demo"
    if not (demo / "job.toml").is_file():
        build_demo(demo)
    data = work / "data" / "1_shapes"
    data.mkdir(parents=True, exist_ok=True)
    for png in sorted((demo / "data" / "10_shapes").glob("*.png"))[:8]:
        shutil.copyfile(png, data / png.name)
        shutil.copyfile(png.with_suffix(".txt"), data / f"{png.stem}.txt")
    values = tomllib.loads((demo / "job.toml").read_text(encoding="utf-8"))
    values.update(JOB, train_data_dir=str(work / "data"), logging_dir=str(work / "logs"))
    return values


def start_run(values: dict, run_dir: Path) -> int:
    """Fork a child that trains ``values`` as ``python -m trainer train`` does; returns its pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    job = run_dir / "job-in.toml"
    job.write_text(tomli_w.dumps(values), encoding="utf-8")
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code
        code = 1
        try:
            log = os.open(run_dir / "trainer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(log, 1)
            os.dup2(log, 2)
            from trainer.cli import main

            code = main(["train", str(job), "--run-dir", str(run_dir)])
        finally:
            os._exit(code)
    return pid


def checkpoints(run_dir: Path) -> int:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return 0
    return path.read_text(encoding="utf-8").count('"type": "checkpoint"')


def wait_exit(pid: int, timeout: float = RUN_TIMEOUT_S) -> int | None:
    """The exit code (None: killed or timed out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def kill_at(pid: int, run_dir: Path, after_checkpoints: int, delay: float) -> str:
    """SIGKILL once the run has reported ``after_checkpoints`` checkpoints, ``delay`` s later; what happened."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while checkpoints(run_dir) < after_checkpoints:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return f"exited {os.waitstatus_to_exitcode(status)} before the kill"
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "killed"


def verify_outputs(out: Path) -> list[str]:
    """Every LoRA file and state folder in ``out`` loads; returns what does not."""
    import torch
    from safetensors import safe_open

    problems = []
    for path in sorted(out.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():
                    if not torch.isfinite(handle.get_tensor(key)).all():
                        problems.append(f"{path.name}: {key} is not finite")
        except Exception as error:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"{path.name} does not load: {error}")
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and p.name.endswith("-state")):
        try:
            info = json.loads((folder / "train_state.json").read_text(encoding="utf-8"))
            assert {"step", "epoch", "batches_done_in_epoch"} <= set(info)
            with safe_open(str(folder / "network.safetensors"), "pt") as handle:
                list(handle.keys())
            torch.load(folder / "state.pt", weights_only=True)
        except Exception as error:  # noqa: BLE001
            problems.append(f"{folder.name} does not load: {type(error).__name__}: {error}")
    return problems


def newest_state(out: Path) -> Path | None:
    """The state folder furthest into the run (the final one wins a tie: it is written last)."""
    best, best_key = None, None
    for folder in out.glob(f"{OUTPUT_NAME}*-state"):
        info = json.loads((folder / "train_state.json").read_text(encoding="utf-8"))
        key = (info["step"], info["batches_done_in_epoch"], folder.name == f"{OUTPUT_NAME}-state")
        if best_key is None or key > best_key:
            best, best_key = folder, key
    return best


def max_difference(first: Path, second: Path) -> float:
    from safetensors import safe_open

    with safe_open(str(first), "pt") as a, safe_open(str(second), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        return max((a.get_tensor(k) - b.get_tensor(k)).abs().max().item() for k in a.keys())


def run_harness(work: Path, kills: int, seed: int, demo: Path | None = None) -> dict:
    from trainer.saving import stale_temporaries

    work.mkdir(parents=True, exist_ok=True)
    values = prepare(work, demo)
    rng = random.Random(seed)
    reference_out = work / "reference"
    reference = start_run({**values, "output_dir": str(reference_out)}, work / "runs" / "reference")
    report = {"seed": seed, "kills": [], "problems": [], "reference_exit": wait_exit(reference)}
    out = work / "out"
    for index in range(kills):
        state = newest_state(out) if out.exists() else None
        run_values = {**values, "output_dir": str(out), "resume": str(state) if state else ""}
        run_dir = work / "runs" / f"kill{index:03d}"
        target, delay = rng.randint(1, 4), rng.uniform(0, KILL_DELAY_S)
        outcome = kill_at(start_run(run_values, run_dir), run_dir, target, delay)
        left = [p.name for p in stale_temporaries(out, OUTPUT_NAME)] if out.exists() else []
        found = verify_outputs(out) if out.exists() else []
        report["kills"].append({"resumed_from": state.name if state else None, "after_checkpoints": target,
                                "delay_s": round(delay, 4), "outcome": outcome, "temporaries_left": left,
                                "files": len(list(out.glob("*.safetensors"))) if out.exists() else 0})
        report["problems"] += [f"after kill {index}: {problem}" for problem in found]
    state = newest_state(out) if out.exists() else None
    final_dir = work / "runs" / "final"
    final = start_run({**values, "output_dir": str(out), "resume": str(state) if state else ""}, final_dir)
    report["final_exit"] = wait_exit(final)
    report["final_resumed_from"] = state.name if state else None
    report["temporaries_after_final"] = [p.name for p in stale_temporaries(out, OUTPUT_NAME)]
    report["problems"] += [f"after the final run: {p}" for p in verify_outputs(out)]
    final_file, reference_file = out / f"{OUTPUT_NAME}.safetensors", reference_out / f"{OUTPUT_NAME}.safetensors"
    if final_file.exists() and reference_file.exists():
        report["max_difference"] = max_difference(final_file, reference_file)
    else:
        report["problems"].append("the final or the reference LoRA is missing")
    report["temporaries_seen"] = sum(len(k["temporaries_left"]) for k in report["kills"])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--demo", type=Path, default=None, help="a built demo to use (default: build one)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    started = time.monotonic()
    report = run_harness(args.work.resolve(), args.kills, args.seed, args.demo)
    report["seconds"] = round(time.monotonic() - started, 1)
    (args.work / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
