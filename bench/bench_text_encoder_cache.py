"""Steps per second and peak memory with and without the text-embedding cache (issue 5, "Speed").

When the text encoder is not trained (``text_encoder_lr = 0``) the trainer encodes each distinct caption
once and reuses its states (``trainer.text_encoding.TextEmbeddingCache``). This benchmark trains the same
job both ways, on two models, each configuration in its own subprocess so peak memory is its own:

* ``demo``: the built-in demo (tiny SD1.x-shaped model, 8 shapes images at 64 px, batch 2);
* ``sd15``: a full-size SD1.5-shaped model with random weights (``bench.common.build_sd15_random``),
  on the demo's images and captions at 64 px, batch 2.

What is compared. Both runs go through the trainer's own code: ``build_session``, ``cache_latents``,
``Saver`` and ``trainer.loop.train`` (what ``trainer.run.run_training`` calls), on a job made by
``trainer.spec.job_from_values`` from the demo's settings with ``text_encoder_lr = 0`` and no sampling.
*cache*: the session as built (its ``text_cache`` is used). *no cache*: the same session with
``session.text_cache = None``, so every step tokenizes and runs the text encoder (the loop already does
that under ``torch.no_grad`` because the text encoder is not trained). For the cached run the cache is
filled with the dataset's captions before training, so the timed steps show a run's steady state (a
real run sees each caption again every epoch); this fill is reported apart (``fill s``).

Measured: steps/s over the timed steps (from the step event that ends the warm-up steps to the last
one: model load, latent caching and the first step are excluded), the text encoder's share of a step
(forward hooks), its forward passes in the timed steps, peak RSS of the whole process (``ru_maxrss``,
taken before training) and during training (``VmHWM`` after resetting it through
``/proc/self/clear_refs``), and the loss of the last step (the two ways should agree).

Run: ``.venv/bin/python bench/bench_text_encoder_cache.py`` (about 5–8 minutes on 2 CPU cores; it needs
~4.5 GB of RAM and ~4.2 GB of temporary disk for the SD1.5-shaped model). ``--skip-sd15`` runs only the
demo; ``--model-dir DIR`` builds the SD1.5-shaped model there once and reuses it on later runs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULT_PREFIX = "RESULT "
MIB = 2**20


# ---- one configuration, in a child process ------------------------------------------------------

def bench_job(demo_dir: Path, model_dir: Path, work_dir: Path):
    """The demo's job on ``model_dir`` with a frozen text encoder, no sampling and no epoch saves."""
    from trainer.models.demo import demo_job_values
    from trainer.spec import job_from_values

    values = demo_job_values(demo_dir)
    values.update(pretrained_model_name_or_path=str(model_dir), output_dir=str(work_dir / "output"),
                  logging_dir=str(work_dir / "logs"), text_encoder_lr=0.0, sample_prompts="",
                  sample_every_n_steps=0, save_every_n_epochs=0, num_cpu_threads_per_process=1)
    return job_from_values(values)


def fill_cache(session) -> int:
    """Encode every caption of the dataset into the session's cache, processed as the loop processes it;
    returns how many distinct captions that was. Only for jobs whose captions do not change from draw to
    draw (no shuffle, no dropout), as this benchmark's job."""
    from trainer.data.captions import process_caption

    job = session.job
    if job.captions.shuffle_caption or job.captions.caption_dropout_rate or job.captions.caption_dropout_every_n_epochs:
        raise ValueError("fill_cache needs fixed captions: turn off shuffle_caption and caption dropout")
    captions = sorted({process_caption(image.caption, shuffle=False, keep_tokens=job.captions.keep_tokens,
                                       dropout_rate=0.0, dropout_every_n_epochs=0, epoch=1,
                                       rng=random.Random(0), weighted=job.captions.weighted_captions)
                       for image in session.data.plan.images})
    session.text_states(captions)
    return len(captions)


class TextEncoderMeter:
    """Forward hooks on the text encoder: passes (sequences encoded) and seconds spent, while ``on``."""

    def __init__(self, text_encoder):
        self.on = False
        self.sequences = 0
        self.seconds = 0.0
        self._started = 0.0
        text_encoder.register_forward_pre_hook(self._before)
        text_encoder.register_forward_hook(self._after)

    def _before(self, module, args):
        self._started = time.perf_counter()

    def _after(self, module, args, output):
        if self.on:
            self.seconds += time.perf_counter() - self._started
            self.sequences += args[0].shape[0] if args else 0


def cache_bytes(text_cache) -> int:
    if text_cache is None:
        return 0
    return sum(entry[0].numel() * entry[0].element_size() for entry in text_cache.entries.values())


def run_config(model: str, demo_dir: Path, model_dir: Path, use_cache: bool, warmup: int, timed: int) -> dict:
    """Train ``warmup + timed`` steps one way and measure; runs in its own process."""
    import torch

    from bench.common import peak_rss_bytes, reset_peak_rss, rss_high_water_bytes
    from trainer.events import EventWriter
    from trainer.loop import train
    from trainer.run import RunRequests
    from trainer.saving import Saver
    from trainer.session import build_session, cache_latents

    with tempfile.TemporaryDirectory(prefix="bench_te_") as temp:
        work = Path(temp)
        job = bench_job(demo_dir, model_dir, work)
        events = EventWriter(work / "run" / "events.jsonl")
        loaded_at = time.perf_counter()
        session = build_session(job, work / "run", events)
        cache_latents(session, events)
        setup_s = time.perf_counter() - loaded_at
        assert not session.train_text_encoder and session.text_cache is not None
        load_peak = peak_rss_bytes()  # read before the reset below, which lowers it
        reset_ok = reset_peak_rss()
        if not use_cache:
            session.text_cache = None
        fill_started = time.perf_counter()
        filled = fill_cache(session) if use_cache else 0
        fill_s = time.perf_counter() - fill_started

        meter = TextEncoderMeter(session.base.text_encoder)
        requests, step_times, cpu_times, losses = RunRequests(), {}, {}, {}

        def on_event(event: dict) -> None:
            if event["type"] != "step":
                return
            step_times[event["step"]] = time.perf_counter()
            cpu_times[event["step"]] = time.process_time()
            losses[event["step"]] = event["loss"]
            meter.on = warmup <= event["step"] < warmup + timed  # counts the passes of steps warmup+1 …
            if event["step"] >= warmup + timed:
                requests.stop = True

        events.listeners.append(on_event)
        status = train(session, events, requests, Saver(session, events))
        events.close()
        train_peak = rss_high_water_bytes() if reset_ok else None
        last = warmup + timed
        if status != "stopped" or last not in step_times:
            raise RuntimeError(f"{model}: training ended ({status}) before step {last}")
        durations = [step_times[s] - step_times[s - 1] for s in range(warmup + 1, last + 1)]
        return {
            "model": model, "cache": use_cache, "threads": torch.get_num_threads(),
            "batch": job.data.train_batch_size, "timed_steps": timed, "setup_s": setup_s, "fill_s": fill_s,
            "captions_filled": filled, "steps_per_s": timed / (step_times[last] - step_times[warmup]),
            "median_step_s": statistics.median(durations),
            "cpu_s_per_step": (cpu_times[last] - cpu_times[warmup]) / timed, "te_s_per_step": meter.seconds / timed,
            "te_sequences": meter.sequences, "cache_bytes": cache_bytes(session.text_cache),
            "load_peak_rss": load_peak, "train_peak_rss": train_peak,
            "peak_rss": max(load_peak, train_peak or 0), "last_loss": losses[last],
        }


# ---- the parent: build the models, run each configuration, print one table ----------------------

def run_child(args: list[str]) -> dict:
    """Run this script with ``args`` in a fresh Python and return its RESULT line."""
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    results = [line[len(RESULT_PREFIX):] for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not results:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"benchmark child {' '.join(args)} failed (exit {done.returncode})")
    return json.loads(results[-1])


def ensure_sd15(model_dir: Path) -> float:
    """Build the SD1.5-shaped model in a child process unless ``model_dir`` holds one; returns seconds spent."""
    if (model_dir / "model_index.json").is_file():
        return 0.0
    started = time.perf_counter()
    run_child(["--build-sd15", str(model_dir)])
    return time.perf_counter() - started


def best_of(rounds: list[dict]) -> dict:
    """One configuration's rounds summed up: the fastest wall-clock and CPU figures (other processes only
    ever slow a run down), the highest peak memory, the rest from the first round."""
    best = dict(rounds[0])
    best["rounds"] = len(rounds)
    best["steps_per_s"] = max(r["steps_per_s"] for r in rounds)
    for key in ("median_step_s", "cpu_s_per_step", "te_s_per_step"):
        best[key] = min(r[key] for r in rounds)
    best["peak_rss"] = max(r["peak_rss"] for r in rounds)
    return best


def format_table(results: list[dict]) -> str:
    header = ("| model | text cache | steps/s | CPU s/step | text encoder s/step | TE passes / step "
              "| cache MiB | peak RSS MiB | loss at last step |")
    lines = [header, "|" + "---|" * (header.count(" | ") + 1)]
    for r in results:
        lines.append(
            f"| {r['model']} | {'on' if r['cache'] else 'off'} | {r['steps_per_s']:.3f} | {r['cpu_s_per_step']:.3f} "
            f"| {r['te_s_per_step']:.4f} | {r['te_sequences'] / r['timed_steps']:g} | {r['cache_bytes'] / MIB:.2f} "
            f"| {r['peak_rss'] / MIB:,.0f} | {r['last_loss']:.5f} |")
    return "\n".join(lines)


def format_ratios(results: list[dict]) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in results):
        on = next(r for r in results if r["model"] == model and r["cache"])
        off = next(r for r in results if r["model"] == model and not r["cache"])
        lines.append(
            f"- {model}: cache on / off = {on['steps_per_s'] / off['steps_per_s']:.2f}x steps/s (wall clock), "
            f"{1 - on['cpu_s_per_step'] / off['cpu_s_per_step']:.0%} less CPU time per step; peak RSS "
            f"{(on['peak_rss'] - off['peak_rss']) / MIB:+,.0f} MiB with the cache; the cache took "
            f"{on['fill_s']:.2f} s to fill with {on['captions_filled']} captions "
            f"(best of {on['rounds']} rounds of {on['timed_steps']} timed steps, batch {on['batch']})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-steps", type=int, default=60, help="timed steps on the demo model")
    parser.add_argument("--sd15-steps", type=int, default=6, help="timed steps on the SD1.5-shaped model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing starts")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration (best is kept)")
    parser.add_argument("--skip-sd15", action="store_true", help="only the demo")
    parser.add_argument("--model-dir", type=Path, help="where to build (or find) the SD1.5-shaped model")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--build-sd15", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_sd15:
        from bench.common import build_sd15_random

        print(RESULT_PREFIX + json.dumps(build_sd15_random(args.build_sd15)))
        return
    if args.child:
        spec = json.loads(args.child)
        result = run_config(spec["model"], Path(spec["demo"]), Path(spec["model_dir"]), spec["cache"],
                            spec["warmup"], spec["timed"])
        print(RESULT_PREFIX + json.dumps(result))
        return
    run_all(args)


def run_all(args) -> None:
    from trainer.models.demo import build_demo

    with tempfile.TemporaryDirectory(prefix="bench_te_models_") as temp:
        demo_dir = build_demo(Path(temp) / "demo")
        models = [("demo", demo_dir / "model", args.demo_steps)]
        if not args.skip_sd15:
            sd15_dir = args.model_dir or Path(temp) / "sd15"
            built_s = ensure_sd15(sd15_dir)
            print(f"SD1.5-shaped model ready in {sd15_dir} ({built_s:.0f} s to build)", flush=True)
            models.append(("sd15", sd15_dir, args.sd15_steps))
        rounds: dict[tuple[str, bool], list[dict]] = {}
        for round_index in range(args.rounds):
            order = (True, False) if round_index % 2 == 0 else (False, True)  # alternate against drift
            for model, model_dir, timed in models:
                for use_cache in order:
                    spec = {"model": model, "demo": str(demo_dir), "model_dir": str(model_dir),
                            "cache": use_cache, "warmup": args.warmup, "timed": timed}
                    result = run_child(["--child", json.dumps(spec)])
                    rounds.setdefault((model, use_cache), []).append(result)
                    print(f"  round {round_index + 1}: {model} cache {'on' if use_cache else 'off'}: "
                          f"{result['steps_per_s']:.3f} steps/s, {result['cpu_s_per_step']:.3f} CPU s/step", flush=True)
    results = [best_of(rounds[(model, cache)]) for model, _, _ in models for cache in (True, False)]
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nmachine: {os.cpu_count()} CPU cores, no GPU, torch threads {results[0]['threads']}, "
          f"load average at the end {load}\n")
    print(format_table(results))
    print()
    print(format_ratios(results))
    if args.json:
        args.json.write_text(json.dumps({"best": results, "rounds": list(rounds.values())}, indent=2) + "\n",
                             encoding="utf-8")


if __name__ == "__main__":
    main()
