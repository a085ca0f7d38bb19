"""Jobs for the queue tests: tiny real runs on the demo (two steps, a sample at each) and long ones (to kill or
stop mid-way), plus a stand-in trainer for the engine's own tests (it obeys ``train JOB --run-dir DIR``)."""
from __future__ import annotations

import sys
import textwrap
import tomllib
from pathlib import Path

from tests.effects_runs import small_dataset

TINY_PROMPT = "shapes, red circle --w 64 --h 64 --s 2 --d 1"


def tiny_values(demo_dir: Path, work: Path, name: str, **overrides) -> dict:
    """The demo job cut to 2 steps (2 images, batch 2, 2 epochs), a sample of one prompt at each step."""
    values = tomllib.loads((Path(demo_dir) / "job.toml").read_text(encoding="utf-8"))
    values.pop("spec_version", None)
    data = Path(work) / "data-tiny"
    if not data.exists() and "train_data_dir" not in overrides:
        small_dataset(demo_dir, data, repeats=1, images=2)
    values.update(output_name=name, train_data_dir=str(data), output_dir=str(Path(work) / "out"),
                  logging_dir=str(Path(work) / "logs"), epoch=2, train_batch_size=2, save_every_n_epochs=0,
                  sample_every_n_steps=1, sample_every_n_epochs=0, sample_prompts=TINY_PROMPT,
                  num_cpu_threads_per_process=1)
    values.update(overrides)
    return values


def long_values(demo_dir: Path, work: Path, name: str, **overrides) -> dict:
    """The demo job at 50 epochs (2000 steps): still training when a test kills or stops it."""
    return tiny_values(demo_dir, work, name, train_data_dir=str(Path(demo_dir) / "data"), epoch=50,
                       sample_every_n_steps=0, **overrides)


# A stand-in trainer: reads output_name and epoch from the job; writes started, `epoch` steps 0.05 s apart and
# finished (completed, or failed for a name holding "fail"); a name holding "hang" steps until SIGINT,
# which ends it with finished/stopped.
STANDIN = textwrap.dedent('''
    import json, os, signal, sys, time, tomllib
    job = tomllib.load(open(sys.argv[sys.argv.index("train") + 1], "rb"))
    run_dir = sys.argv[sys.argv.index("--run-dir") + 1]
    events = open(os.path.join(run_dir, "events.jsonl"), "a")
    def emit(**event):
        event["time"] = time.time()
        events.write(json.dumps(event) + "\\n"); events.flush()
    def on_sigint(signum, frame):
        emit(type="finished", status="stopped", outputs=[])
        sys.exit(0)
    signal.signal(signal.SIGINT, on_sigint)
    name, steps = job["output_name"], int(job.get("epoch", 1))
    print(f"stand-in training {name}", flush=True)
    emit(type="started", plan={"total_steps": steps})
    step = 0
    while step < steps or "hang" in name:
        step += 1
        emit(type="step", step=step, epoch=1, loss=1.0 / step, loss_avg=1.0, lr={"unet": 1e-4})
        time.sleep(0.05)
    if "fail" in name:
        print("stand-in: something broke", flush=True)
        emit(type="error", message="something broke", setting=None)
        emit(type="finished", status="failed", outputs=[], reason="error")
        sys.exit(1)
    emit(type="finished", status="completed", outputs=[])
''')


def standin_command(folder: Path) -> list[str]:
    script = Path(folder) / "standin_trainer.py"
    script.write_text(STANDIN)
    return [sys.executable, str(script)]
