"""How much memory the in-memory latent cache holds, against the pixels of the same dataset.

Builds a small dataset (square, landscape and portrait photos-sized images) and the tiny SD-shaped model
(its VAE has SD's 4 latent channels and 8× downscale, so the byte counts are those of real SD), caches
latents, and prints one line: bytes held by the cache versus the float32 pixels the same batches would
hold without it. Run: ``.venv/bin/python bench/bench_latent_cache_memory.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from trainer.data.dataset_plan import DataOptions  # noqa: E402
from trainer.data.folders import scan_dataset  # noqa: E402
from trainer.data.training_data import TrainingData  # noqa: E402

SIZES = [(512, 512), (768, 512), (512, 768), (640, 480)]


def build_images(folder: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from diffusers import AutoencoderKL

    from trainer.models.tiny import build_tiny_sd1

    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        build_tiny_sd1(root / "model", seed=0)
        vae = AutoencoderKL.from_pretrained(root / "model" / "vae").eval()
        build_images(root / "img" / "1_photo", args.images, seed=0)
        options = DataOptions(resolution=(512, 512), bucket_no_upscale=True, batch_size=1, cache_latents=True)
        data = TrainingData(scan_dataset(root / "img", None, ".txt"), options, seed=0)
        started = time.perf_counter()
        data.cache_latents(lambda pixels: vae.encode(pixels).latent_dist.sample(), vae_batch_size=1)
        seconds = time.perf_counter() - started
        pixel_bytes = sum(3 * i.bucket[0] * i.bucket[1] * 4 for i in data.plan.images)
        latent_bytes = data.cached_bytes()
    print(f"latent cache: {len(data.plan.images)} images in {len(data.plan.buckets)} buckets (~512x512): "
          f"float32 pixels {pixel_bytes / 2**20:.2f} MiB vs cached latents {latent_bytes / 2**20:.3f} MiB "
          f"= {pixel_bytes / latent_bytes:.1f}x less memory (encoded in {seconds:.1f} s with the tiny VAE)")


if __name__ == "__main__":
    main()
