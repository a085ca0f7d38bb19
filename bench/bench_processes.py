"""Steps per second and peak memory per process with one and with two training processes (issue 11).

Both runs are the built-in demo (tiny SD1.x-shaped model, 8 shapes images × 10 repeats at 64 px, batch 2,
one epoch, no samples, no intermediate files), started exactly as the page starts them
(``trainer.launch.train_command``): one process is ``python -m trainer train``; two processes are
``accelerate launch --multi_gpu --num_processes 2`` around it (gloo on this CPU machine). With two processes
each step trains 2 × 2 images, so an epoch has half the steps; images per second is the fairer comparison.

Measured: the time from launch to the first step event (start-up: Python, torch, model load, latent cache,
and for two processes the launcher and the process group), steps/s and images/s over the steps after the
first two (from the step events' times), and the peak resident memory (``VmHWM``) of each trainer process,
read from /proc every 0.2 s while it runs (the launcher's own memory is not counted).

Run: ``nice -n 10 .venv/bin/python bench/bench_processes.py`` (a few minutes on 2 CPU cores). Writes
``bench/results/processes.txt`` and ``.json``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.events import read_events  # noqa: E402
from trainer.launch import train_command  # noqa: E402
from trainer.spec import job_from_values  # noqa: E402

WARMUP_STEPS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def trainer_pids(run_dir: Path, launcher: int, processes: int) -> list[int]:
    if processes == 1:
        return [launcher]
    try:
        return [int(w) for w in (run_dir / "trainer_pids").read_text().split()]
    except (OSError, ValueError):
        return []


def run(values: dict, work: Path, processes: int) -> dict:
    values = {**values, "num_processes": processes, "main_process_port": free_port() if processes > 1 else 0}
    job_path, run_dir = work / f"job-{processes}.toml", work / f"run-{processes}"
    job_path.write_text(tomli_w.dumps(values), encoding="utf-8")
    command = train_command(job_from_values(values), [sys.executable, "-m", "trainer"], job_path, run_dir)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    started = time.time()
    with (work / f"log-{processes}.txt").open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        peaks: dict[int, float] = {}
        while process.poll() is None:
            for pid in trainer_pids(run_dir, process.pid, processes):
                value = vm_hwm_mib(pid)
                if value is not None:
                    peaks[pid] = max(peaks.get(pid, 0.0), value)
            time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n" + (work / f"log-{processes}.txt").read_text()[-3000:])
    events = read_events(run_dir / "events.jsonl")[0]
    steps = [e for e in events if e["type"] == "step"]
    timed = steps[WARMUP_STEPS:]
    seconds = timed[-1]["time"] - steps[WARMUP_STEPS - 1]["time"]
    images_per_step = values["train_batch_size"] * processes
    return {"processes": processes, "steps": len(steps), "startup_s": round(steps[0]["time"] - started, 1),
            "steps_per_s": round(len(timed) / seconds, 3), "images_per_s": round(len(timed) * images_per_step / seconds, 2),
            "peak_rss_mib_per_process": [round(peaks[p], 1) for p in sorted(peaks)], "last_loss": steps[-1]["loss"]}


def main() -> None:
    from trainer.models.demo import build_demo

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_demo(work / "demo")
        values = tomllib.loads((work / "demo" / "job.toml").read_text(encoding="utf-8"))
        values.update(epoch=1, sample_every_n_steps=0, sample_every_n_epochs=0, save_every_n_epochs=0,
                      output_dir=str(work / "out"), logging_dir=str(work / "logs"), num_cpu_threads_per_process=1)
        results = [run(values, work, n) for n in (1, 2)]
    one, two = results
    lines = [f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)",
             "processes  steps  start-up s  steps/s  images/s  peak RSS per process (MiB)"]
    for r in results:
        lines.append(f"{r['processes']:>9}  {r['steps']:>5}  {r['startup_s']:>10}  {r['steps_per_s']:>7}  "
                     f"{r['images_per_s']:>8}  {', '.join(map(str, r['peak_rss_mib_per_process']))}")
    lines.append(f"two processes / one: images/s ×{two['images_per_s'] / one['images_per_s']:.2f}, "
                 f"steps/s ×{two['steps_per_s'] / one['steps_per_s']:.2f}")
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "processes.txt").write_text(text + "\n", encoding="utf-8")
    (out / "processes.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
