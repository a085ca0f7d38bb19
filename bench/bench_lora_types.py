"""Time per step and peak memory of each LoRA type against Standard at the same rank, on the demo.

Each type trains in its own process (so its peak RSS is its own; ``--one-process`` runs them one after the
other in one process instead): the demo job at rank 8 / alpha 8 (conv rank
4 where the type adapts convolutions), batch 2, UNet and text encoder trained, one torch thread; ``--warmup``
steps, then ``--steps`` timed ones. Reported: median seconds per step, CPU seconds per step, the peak RSS
while training (the kernel's high-water mark, reset after loading), trainable parameters and the saved
file's size, and each figure's ratio to Standard's from the same run. Best of ``--rounds``.

    .venv/bin/python bench/bench_lora_types.py [--steps 30] [--rounds 2] [--out bench/results/lora_types]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULT_PREFIX = "RESULT "
TYPES = [("Standard", {}), ("LoCon", {}), ("LoHa", {}), ("DyLoRA", {}), ("LyCORIS/LoKr", {}),
         ("LyCORIS/LoKr", {"dora_wd": True}), ("LoCon", {"dora_wd": True}), ("LyCORIS/iA3", {}),
         ("LyCORIS/GLoRA", {}), ("LyCORIS/BOFT", {}), ("LyCORIS/Diag-OFT", {}),
         ("LyCORIS/Native Fine-Tuning", {}), ("Standard", {"scale_weight_norms": 1.0, "rank_dropout": 0.1,
                                                           "module_dropout": 0.1, "network_dropout": 0.1})]


def label(lora_type: str, extra: dict) -> str:
    return lora_type + (" + " + ", ".join(extra) if extra else "")


def run_one(demo_dir: Path, index: int, warmup: int, timed: int) -> dict:
    """Train one type and measure (in this process)."""
    import tomllib

    import torch

    from bench.common import reset_peak_rss, rss_high_water_bytes
    from trainer.events import EventWriter
    from trainer.loop import train
    from trainer.run import RunRequests
    from trainer.saving import Saver
    from trainer.session import build_session, cache_latents
    from trainer.spec import job_from_values

    lora_type, extra = TYPES[index]
    values = tomllib.loads((demo_dir / "job.toml").read_text())
    with tempfile.TemporaryDirectory(prefix="bench_types_") as temp:
        work = Path(temp)
        values.update(LoRA_type=lora_type, network_dim=8, network_alpha=8.0, conv_dim=4, conv_alpha=4.0,
                      train_batch_size=2, epoch=100, save_every_n_epochs=0, sample_every_n_epochs=0,
                      sample_every_n_steps=0, num_cpu_threads_per_process=1, output_dir=str(work / "out"),
                      logging_dir=str(work / "logs"), save_precision="fp16", **extra)
        job = job_from_values(values)
        events = EventWriter(work / "run" / "events.jsonl")
        session = build_session(job, work / "run", events)
        cache_latents(session, events)
        reset_ok = reset_peak_rss()
        start_rss = rss_high_water_bytes() or 0  # right after the reset: the RSS training starts from
        requests, step_times, cpu_times = RunRequests(), {}, {}

        def on_event(event: dict) -> None:
            if event["type"] == "step":
                step_times[event["step"]] = time.perf_counter()
                cpu_times[event["step"]] = time.process_time()
                if event["step"] >= warmup + timed:
                    requests.stop = True

        events.listeners.append(on_event)
        saver = Saver(session, events)
        train(session, events, requests, saver)
        events.close()
        last = warmup + timed
        durations = [step_times[s] - step_times[s - 1] for s in range(warmup + 1, last + 1)]
        final = Path(saver.outputs[-1])
        return {"type": label(lora_type, extra), "threads": torch.get_num_threads(),
                "median_step_s": statistics.median(durations),
                "cpu_s_per_step": (cpu_times[last] - cpu_times[warmup]) / timed,
                "train_peak_rss": rss_high_water_bytes() if reset_ok else None,
                "train_rss_growth": (rss_high_water_bytes() or 0) - start_rss if reset_ok else None,
                "parameters": sum(p.numel() for p in session.network.trainable_parameters()),
                "modules": len(session.network), "file_bytes": final.stat().st_size}


def run_child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT, capture_output=True,
                          text=True)
    results = [line[len(RESULT_PREFIX):] for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not results:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"child {' '.join(args)} failed ({done.returncode})")
    return json.loads(results[-1])


def table(results: list[dict]) -> str:
    base = results[0]
    lines = ["| type | modules | trainable params | file (fp16) | s/step | × Standard | CPU s/step | peak RSS training"
             " | RSS growth in training |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rss = r["train_peak_rss"] or 0
        lines.append(f"| {r['type']} | {r['modules']} | {r['parameters']:,} | {r['file_bytes'] / 1024:,.0f} KiB | "
                     f"{r['median_step_s']:.3f} | {r['median_step_s'] / base['median_step_s']:.2f} | "
                     f"{r['cpu_s_per_step']:.3f} | {rss / 2**20:,.0f} MiB | "
                     f"{(r.get('train_rss_growth') or 0) / 2**20:,.1f} MiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "lora_types"))
    parser.add_argument("--child", nargs=2, metavar=("DEMO_DIR", "INDEX"))
    parser.add_argument("--one-process", action="store_true",
                        help="all types in one process (faster; peak RSS is then the process's high-water "
                             "mark since each type's training began, which includes what earlier types left)")
    args = parser.parse_args()
    if args.child:
        if args.child[1] == "all":  # every type in this one process, one after the other (a busy machine)
            import gc

            results = []
            for index in range(len(TYPES)):
                results.append(run_one(Path(args.child[0]), index, args.warmup, args.steps))
                gc.collect()
            print(RESULT_PREFIX + json.dumps(results))
            return
        result = run_one(Path(args.child[0]), int(args.child[1]), args.warmup, args.steps)
        print(RESULT_PREFIX + json.dumps(result))
        return
    from trainer.models.demo import build_demo

    with tempfile.TemporaryDirectory(prefix="bench_demo_") as temp:
        build_demo(Path(temp))
        timing = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        if args.one_process:
            rounds = [run_child(["--child", temp, "all", *timing]) for _ in range(args.rounds)]
        else:
            rounds = [[run_child(["--child", temp, str(i), *timing]) for i in range(len(TYPES))]
                      for _ in range(args.rounds)]
    results = []
    for i in range(len(TYPES)):
        runs = [r[i] for r in rounds]  # a round is one result per type (a list from the one process, too)
        best = dict(runs[0])
        best["median_step_s"] = min(r["median_step_s"] for r in runs)
        best["cpu_s_per_step"] = min(r["cpu_s_per_step"] for r in runs)
        best["train_peak_rss"] = max((r["train_peak_rss"] or 0) for r in runs)
        best["train_rss_growth"] = max((r.get("train_rss_growth") or 0) for r in runs)
        results.append(best)
    text = table(results)
    print(text)
    Path(args.out + ".txt").write_text(text + "\n")
    Path(args.out + ".json").write_text(json.dumps({"rounds": rounds, "best": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
