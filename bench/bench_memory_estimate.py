"""The memory estimate against the measured peak resident memory, on the full-size SD1.5-shaped model.

Each case trains in its own ``nice -n 10`` subprocess with one thread (2 optimizer steps on random images:
the peak comes at the second step, once the optimizer holds its state); the estimate is the one the trainer
wrote in its ``started`` plan (made in that process, before loading), the measured peak its ``ru_maxrss``
from the ``finished`` event. Run: ``.venv/bin/python bench/bench_memory_estimate.py [--model FOLDER]``
(the model is built with random weights when the folder does not exist: about 4 GB on disk).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sd15_runs import build_images, job_values, run_trainer  # noqa: E402

# (size, batch, gradient checkpointing, text encoder trained)
CASES = [(64, 1, False, True), (64, 1, True, True), (64, 1, False, False), (64, 2, False, True),
         (128, 1, False, True), (128, 1, True, True), (128, 1, False, False), (128, 2, True, False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/tmp/sd15-random")
    parser.add_argument("--cases", default="all", help="comma-separated case numbers (1-based) or all")
    args = parser.parse_args()
    model = Path(args.model)
    if not model.exists():
        from bench.common import build_sd15_random

        build_sd15_random(model)
    chosen = range(len(CASES)) if args.cases == "all" else [int(c) - 1 for c in args.cases.split(",")]
    print("| px | batch | grad. ckpt | text encoder | estimate | measured peak RSS | error | phase |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as temp:
        for index in chosen:
            size, batch, checkpointing, text = CASES[index]
            root = Path(temp) / f"case{index}"
            data = build_images(root / "data", 2 * batch, size, seed=index)
            values = job_values(model, data, root / "out", size, train_batch_size=batch,
                                gradient_checkpointing=checkpointing, text_encoder_lr=5e-5 if text else 0.0)
            figures = run_trainer(values, root)
            estimate, measured = figures["estimate"]["peak_bytes"], figures["measured_peak"]
            print(f"| {size} | {batch} | {'on' if checkpointing else 'off'} | {'trained' if text else 'cached'} "
                  f"| {estimate / 2**30:.2f} GiB | {measured / 2**30:.2f} GiB | {(estimate - measured) / measured:+.1%} "
                  f"| {figures['estimate']['phase']} |", flush=True)


if __name__ == "__main__":
    main()
