"""One training step broken into its parts (data, text encoder, UNet forward, backward, optimizer, events),
on the full-size SD1.5-shaped model, for each variant asked for, measured side by side in one run.

Each variant runs in its own ``nice -n 10`` subprocess with one thread (so one's memory and caches do not
help another); variants alternate over ``--rounds`` so a change in the machine's load hits them alike.
Variants: ``fp32`` (mixed_precision "no", the UNet laid out channels-last on CPU), ``fp32-nchw`` (the default
layout: the behaviour before), ``bf16`` (bf16 weights on CPU), ``bf16-fp32w`` (bf16 autocast over fp32 frozen
weights: the behaviour before), each with the text encoder trained (``te``) or its outputs cached (``unet``).
Run: ``.venv/bin/python bench/bench_step_parts.py --model /tmp/sd15-random --variants fp32:te,fp32-nchw:te``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PARTS = ("data", "text encoder", "UNet forward", "backward", "optimizer", "events")


def child(model: str, variant: str, steps: int, work: Path, size: int = 64) -> dict:
    """Runs in the subprocess: build the session and time ``steps`` steps part by part (the first is warm-up)."""
    import torch

    from bench.sd15_runs import build_images, job_values
    from trainer import session as session_module
    from trainer.events import EventWriter
    from trainer.loop import autocast, batch_latents, optimizer_step, processed_captions
    from trainer.loss import add_noise, prediction_target, training_loss
    from trainer.noise import sample_timesteps, training_noise
    from trainer.precision import PrecisionChoice, choose_for_machine
    from trainer.spec import job_from_values

    precision_name, part = variant.split(":")
    if precision_name == "bf16-fp32w":  # the behaviour before: frozen weights kept fp32 on CPU
        def fp32_weights(*args, **kwargs) -> PrecisionChoice:
            choice = choose_for_machine(*args, **kwargs)
            return PrecisionChoice(torch.float32, choice.adapter_dtype, choice.autocast_dtype, choice.use_grad_scaler,
                                   choice.warnings)
        session_module.choose_for_machine = fp32_weights
    if precision_name in ("bf16-fp32w", "fp32-nchw"):  # the behaviour before: the default layout
        session_module.unet_memory_format = lambda *args: torch.contiguous_format
    data = build_images(work / "data", 8, size)
    values = job_values(Path(model), data, work / "out", size,
                        mixed_precision="no" if precision_name.startswith("fp32") else "bf16",
                        text_encoder_lr=5e-5 if part == "te" else 0.0)
    job = job_from_values(values)
    with EventWriter(work / "events.jsonl") as events:
        session = session_module.build_session(job, work, events)
        session_module.cache_latents(session, events)
        totals = dict.fromkeys(PARTS, 0.0)
        batches = iter(session.data.epoch(1))
        for step in range(steps + 1):
            marks = [time.perf_counter()]
            batch = next(batches)
            latents = batch_latents(session, batch)
            noise = training_noise(latents, session.noise_generator)
            timesteps = sample_timesteps(latents.shape[0], session.noise_generator)
            noisy = add_noise(latents, noise, timesteps, session.alphas_cumprod)
            marks.append(time.perf_counter())
            with torch.set_grad_enabled(session.train_text_encoder), autocast(session):
                states, _ = session.text_conditioning(processed_captions(session, batch, 1, step))
            marks.append(time.perf_counter())
            dtype = session.precision.weight_dtype
            with autocast(session):
                prediction = session.base.unet(noisy.to(dtype), timesteps, states.to(dtype)).sample
            target = prediction_target(latents, noise, timesteps, session.alphas_cumprod, False)
            loss = training_loss(prediction, target, timesteps, session.alphas_cumprod)
            marks.append(time.perf_counter())
            loss.backward()
            marks.append(time.perf_counter())
            lrs = optimizer_step(session, None)
            marks.append(time.perf_counter())
            events.emit("step", step=step + 1, epoch=1, loss=loss.item(), lr=lrs)
            marks.append(time.perf_counter())
            if step:  # the first step allocates the optimizer state and warms the caches
                for name, begin, end in zip(PARTS, marks, marks[1:]):
                    totals[name] += end - begin
    return {name: value / steps for name, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/tmp/sd15-random")
    parser.add_argument("--variants", default="fp32:te,fp32:unet,bf16-fp32w:te,bf16:te,bf16-fp32w:unet,bf16:unet")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child[0], args.steps, Path(args.child[1]), args.size)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    results: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for variant in args.variants.split(","):
            with tempfile.TemporaryDirectory() as temp:
                done = subprocess.run(["nice", "-n", "10", sys.executable, __file__, "--model", args.model, "--steps",
                                       str(args.steps), "--size", str(args.size), "--child", variant, temp], env=env, capture_output=True,
                                      text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            results.setdefault(variant, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(variant, json.dumps(results[variant][-1]), file=sys.stderr, flush=True)
    print("| variant | " + " | ".join(PARTS) + " | s/step |")
    print("|---|" + "---|" * (len(PARTS) + 1))
    for variant, runs in results.items():
        means = {name: sum(r[name] for r in runs) / len(runs) for name in PARTS}
        print(f"| {variant} | " + " | ".join(f"{means[n]:.3f}" for n in PARTS) + f" | {sum(means.values()):.2f} |")


if __name__ == "__main__":
    main()
