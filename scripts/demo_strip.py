"""Run the built-in demo and put its samples, from the first sample point to the last, into one PNG strip.

    python scripts/demo_strip.py --demo /tmp/demo --out docs/demo_samples.png

One row per sample prompt, one column per sample point (step 0 = the base model before training, drawn with
the same sampler and seed), each picture 64 px with the step written under the columns. Prints how long the
training took.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.models.demo import build_demo  # noqa: E402

CELL, LABEL = 64, 12


def sample_events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [event for event in map(json.loads, lines) if event.get("type") == "sample"]


def base_pictures(demo: Path, prompts: str) -> list[Image.Image]:
    """The sample prompts drawn by the base model alone, as the trainer samples (step 0)."""
    import torch

    from trainer.models.loading import load_base_model
    from trainer.sampling import generate_samples

    base = load_base_model(str(demo / "model.safetensors"), device=torch.device("cpu"), dtype=torch.float32)
    records = generate_samples(base, prompts, demo / "strip_base", step=0, sampler="euler_a")
    return [Image.open(record["path"]).convert("RGB") for record in records]


def strip(columns: list[tuple[int, list[Image.Image]]]) -> Image.Image:
    rows = len(columns[0][1])
    sheet = Image.new("RGB", (len(columns) * (CELL + 2), rows * (CELL + 2) + LABEL), "white")
    pen = ImageDraw.Draw(sheet)
    for x, (step, images) in enumerate(columns):
        for y, image in enumerate(images):
            sheet.paste(image.resize((CELL, CELL)), (x * (CELL + 2), y * (CELL + 2)))
        pen.text((x * (CELL + 2) + 2, rows * (CELL + 2)), f"step {step}", fill="black")
    return sheet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "demo_samples.png")
    args = parser.parse_args()
    demo = build_demo(args.demo)
    run_dir = demo / "strip_run"
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "trainer", "train", str(demo / "job.toml"), "--run-dir",
                             str(run_dir)], cwd=ROOT, capture_output=True, text=True)
    took = time.time() - started
    if result.returncode:
        print(result.stdout[-3000:], result.stderr[-3000:])
        return result.returncode
    from trainer.spec import load_job

    prompts = load_job(demo / "job.toml").sampling.sample_prompts
    columns = [(0, base_pictures(demo, prompts))]
    for event in sample_events(run_dir):
        columns.append((event["step"], [Image.open(image["path"]).convert("RGB") for image in event["images"]]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    strip(columns).save(args.out, optimize=True)
    print(f"training took {took:.0f}s; wrote {args.out} ({len(columns)} columns)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
