"""The built-in demo: a tiny model, a small generated dataset and a ready job file.

``build_demo(out_dir, family="sd1")`` lays out::

    out_dir/model/              the tiny model as a diffusers folder (trainer.models.tiny)
    out_dir/model.safetensors   the same model as one file in the original (LDM) layout
    out_dir/data/10_shapes/     8 PNGs of coloured shapes (64×64) + .txt captions, 10 repeats
    out_dir/job.toml            a job that trains a LoRA on the single file in a minute on a CPU

``family="sd2"`` makes the model SD2.x-shaped with v-prediction (like SD2.x-768-v); ``family="sdxl"``
makes it SDXL-shaped (two text encoders, size conditioning; written in the SGM single-file layout).

It is idempotent: what already exists is reused, so the app can call it at every start.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from trainer.models.tiny import build_tiny_sd

IMAGE_COUNT = 8
IMAGE_SIZE = 64
DATASET_FOLDER = "10_shapes"
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
DEMO_SAMPLE_PROMPTS = (
    "shapes, red circle, blue background --w 64 --h 64 --s 8 --d 1\n"
    "shapes, green square --n blurry --w 64 --h 64 --s 8 --d 2 --l 5"
)


DEMO_FAMILIES = ("sd1", "sd2", "sdxl")
SINGLE_FILE_NAME = "model.safetensors"


def demo_job_values(out_dir: Path, family: str = "sd1") -> dict:
    """The demo's settings (kohya key names), with absolute paths under ``out_dir``; trains on the single file."""
    family_values = {"v2": True, "v_parameterization": True} if family == "sd2" else {}
    return {
        **family_values,
        "pretrained_model_name_or_path": str(out_dir / SINGLE_FILE_NAME),
        "train_data_dir": str(out_dir / "data"),
        "output_dir": str(out_dir / "output"),
        "logging_dir": str(out_dir / "logs"),
        "output_name": "demo_lora",
        "caption_extension": ".txt",
        "max_resolution": "64,64",
        "min_bucket_reso": 64,
        "max_bucket_reso": 128,
        "train_batch_size": 2,
        "epoch": 5,
        "learning_rate": 1e-3,
        "unet_lr": 1e-3,
        "text_encoder_lr": 5e-4,
        "network_dim": 8,
        "network_alpha": 8,
        "optimizer": "AdamW",
        "lr_scheduler": "cosine",
        "lr_warmup": 10,
        "mixed_precision": "no",
        "xformers": False,  # PyTorch's attention: no "xformers needs a GPU" warning on a newcomer's CPU
        "save_every_n_epochs": 1,
        "seed": 42,
        "num_cpu_threads_per_process": 1,
        "sample_every_n_steps": 25,
        "sample_sampler": "euler_a",
        "sample_prompts": DEMO_SAMPLE_PROMPTS,
    }


def shape_specs(seed: int, count: int = IMAGE_COUNT) -> list[tuple[str, str, str]]:
    """``count`` (shape, shape colour, background colour) triples from a seeded generator.

    Shapes cycle so every shape appears; colours are drawn so a shape never matches its background.
    """
    rng = random.Random(seed)
    colour_names = list(COLOURS)
    specs = []
    for index in range(count):
        shape_colour, background = rng.sample(colour_names, 2)
        specs.append((SHAPES[index % len(SHAPES)], shape_colour, background))
    return specs


def draw_shape(shape: str, colour: str, background: str, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """One ``size``×``size`` RGB image: a ``colour`` shape of random size and place on a plain background."""
    image = Image.new("RGB", (size, size), COLOURS[background])
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size * 2 // 5, size * 3 // 4)
    left = rng.randint(2, size - extent - 2)
    top = rng.randint(2, size - extent - 2)
    box = (left, top, left + extent, top + extent)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    elif shape == "triangle":
        draw.polygon([(left + extent // 2, top), (left, top + extent), (left + extent, top + extent)], fill=COLOURS[colour])
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return image


def caption_for(shape: str, colour: str, background: str) -> str:
    return f"shapes, {colour} {shape}, {background} background"


def build_dataset(data_dir: Path, seed: int = 0) -> Path:
    """Write the shapes images and captions into ``data_dir/10_shapes``; existing files are kept."""
    folder = data_dir / DATASET_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)  # separate stream from shape_specs: placement does not shift the colours
    for index, (shape, colour, background) in enumerate(shape_specs(seed)):
        image = draw_shape(shape, colour, background, rng)
        stem = f"shape_{index:02d}"
        if not (folder / f"{stem}.png").is_file():
            image.save(folder / f"{stem}.png")
        if not (folder / f"{stem}.txt").is_file():
            (folder / f"{stem}.txt").write_text(caption_for(shape, colour, background) + "\n", encoding="utf-8")
    return folder


def build_model(model_dir: Path, seed: int = 0, family: str = "sd1") -> Path:
    """The tiny model, built in a side folder and renamed, so an interrupted build is never reused."""
    if (model_dir / "model_index.json").is_file():
        return model_dir
    partial = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build_tiny_sd(partial, family, seed=seed, v_prediction=family == "sd2")
    shutil.rmtree(model_dir, ignore_errors=True)
    partial.rename(model_dir)
    return model_dir


def build_single_file(model_dir: Path, path: Path) -> Path:
    """The folder's model as one original-layout file (written to a temporary name, then renamed)."""
    if path.is_file():
        return path
    from trainer.models.loading import save_as_single_file

    return save_as_single_file(model_dir, path)


def write_demo_job(out_dir: Path, family: str = "sd1") -> Path:
    """``out_dir/job.toml`` through the schema (validated), unless one exists already."""
    job_path = out_dir / "job.toml"
    if job_path.is_file():
        return job_path
    from trainer.spec import write_job_toml

    return write_job_toml(demo_job_values(out_dir, family), job_path)


def build_demo(out_dir: str | Path, seed: int = 0, family: str = "sd1") -> Path:
    """Make (or reuse) the demo model, dataset and job file under ``out_dir``; returns ``out_dir``."""
    if family not in DEMO_FAMILIES:
        raise ValueError(f"unknown demo family {family!r}; expected one of {', '.join(DEMO_FAMILIES)}")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(out_dir / "model", seed=seed, family=family)
    build_single_file(model_dir, out_dir / SINGLE_FILE_NAME)
    build_dataset(out_dir / "data", seed=seed)
    write_demo_job(out_dir, family)
    return out_dir
