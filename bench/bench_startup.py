"""Startup figures on an existing demo: ``python app.py`` until the page is served, and a training launch until
its first step is done (the trainer CLI on the demo's job, as the page's Start runs it).

"Served" means the page's HTML answers 200 and the app's config (the form) is in it. The trainer's figure is
from the process's start to the ``time`` of the first ``step`` event; also the time to ``started``. Both run
``--rounds`` times under ``nice -n 10`` with one thread; the median is printed. Run:
``.venv/bin/python bench/bench_startup.py [--demo-dir DIR]`` (the demo is built there when missing).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
           GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def page_seconds(demo_dir: Path, runs: Path, timeout: float = 120) -> float:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(["nice", "-n", "10", sys.executable, "app.py", "--port", str(port), "--demo-dir",
                                str(demo_dir), "--runs-dir", str(runs)], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    if answer.status == 200 and b"pretrained_model_name_or_path" in answer.read():
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the page was not served in time")
    finally:
        process.terminate()
        process.wait(timeout=30)


def first_step_seconds(demo_dir: Path, work: Path) -> tuple[float, float]:
    import tomllib

    import tomli_w

    values = tomllib.loads((demo_dir / "job.toml").read_text(encoding="utf-8"))
    values.update(epoch=1, sample_every_n_steps=0, save_every_n_epochs=0, output_dir=str(work / "out"))
    job = work / "job.toml"
    work.mkdir(parents=True, exist_ok=True)
    job.write_text(tomli_w.dumps(values), encoding="utf-8")
    process_start = time.time()
    process = subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "trainer", "train", str(job), "--run-dir",
                                str(work / "run")], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    events_file = work / "run" / "events.jsonl"
    try:
        while True:
            if events_file.exists():
                events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
                step = next((e for e in events if e["type"] == "step"), None)
                if step:
                    started = next(e for e in events if e["type"] == "started")
                    return started["time"] - process_start, step["time"] - process_start
            if process.poll() is not None:
                raise RuntimeError("the trainer ended before its first step")
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default=str(ROOT / "demo"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    demo_dir = Path(args.demo_dir)
    if not (demo_dir / "job.toml").exists():
        subprocess.run([sys.executable, "-m", "trainer", "demo", str(demo_dir)], cwd=ROOT, env=ENV, check=True)
    pages, starts, steps = [], [], []
    with tempfile.TemporaryDirectory() as temp:
        for index in range(args.rounds):
            pages.append(page_seconds(demo_dir, Path(temp) / f"runs{index}"))
            started, step = first_step_seconds(demo_dir, Path(temp) / f"train{index}")
            starts.append(started)
            steps.append(step)
    print(f"python app.py → page served: {statistics.median(pages):.1f} s (all: {', '.join(f'{p:.1f}' for p in pages)})")
    print(f"launch → started: {statistics.median(starts):.1f} s; launch → first step done: "
          f"{statistics.median(steps):.1f} s (all: {', '.join(f'{s:.1f}' for s in steps)})")


if __name__ == "__main__":
    main()
