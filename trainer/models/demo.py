"""The built-in demo: a small base model that draws, a dataset that teaches it something new, and a job.

``build_demo(out_dir, family="sd1")`` lays out::

    out_dir/model/              the base model as a diffusers folder
    out_dir/model.safetensors   the same model as one file in the original (LDM) layout
    out_dir/data/10_shapes/     8 PNGs (64×64) of magenta shapes + .txt captions with the trigger word, 10 repeats
    out_dir/job.toml            a job that trains a LoRA on the single file in about a minute on a CPU

For SD1 the base is the tiny model that ships with the project (``demo_base_sd1.safetensors`` beside this
module, 14.2 MB, trained by ``scripts/train_demo_base.py``; its VAE downscales 4×, so 64 px pictures are
16×16 latents): it draws circles, squares and triangles in six colours on plain backgrounds ("a red circle
on a blue background") but has never seen magenta. The dataset shows
magenta shapes captioned with the trigger word ``zqx`` ("a zqx circle on a green background"), so the
samples show the new colour appear step by step for the trigger prompt while the other prompt stays.

``family="sd2"`` makes a random-weight SD2.x-shaped model with v-prediction (like SD2.x-768-v);
``family="sdxl"`` a random-weight SDXL-shaped one (written in the SGM single-file layout).

It is idempotent: what already exists is reused, so the app can call it at every start.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from trainer.models import shapes
from trainer.models.tiny import build_tiny_sd, model_index, sd1_scheduler_file_config, write_json

IMAGE_COUNT = 8
IMAGE_SIZE = shapes.IMAGE_SIZE
DATASET_FOLDER = "10_shapes"
COLOURS = shapes.COLOURS
TRIGGER_WORD = shapes.TRIGGER_WORD
BASE_FILE = Path(__file__).with_name("demo_base_sd1.safetensors")
DEMO_SAMPLE_PROMPTS = (
    f"a {TRIGGER_WORD} circle on a blue background --w 64 --h 64 --s 12 --l 6 --d 1\n"
    "a red square on a yellow background --w 64 --h 64 --s 12 --l 6 --d 2"
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


def build_dataset(data_dir: Path, seed: int = 0) -> Path:
    """Write the demo images and captions into ``data_dir/10_shapes``; existing files are kept."""
    folder = data_dir / DATASET_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for index, (picture, caption) in enumerate(shapes.demo_pictures(seed, IMAGE_COUNT)):
        stem = f"shape_{index:02d}"
        if not (folder / f"{stem}.png").is_file():
            shapes.draw(picture).save(folder / f"{stem}.png")
        if not (folder / f"{stem}.txt").is_file():
            (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def write_base_folder(source: Path, folder: Path) -> Path:
    """A diffusers SD1.x folder from the shipped single file, through the same converter training uses."""
    from trainer.models.checkpoint_file import read_checkpoint
    from trainer.models.single_file import models_from_ldm

    tensors, metadata = read_checkpoint(source)
    unet, vae, (text_encoder,) = models_from_ldm(tensors, metadata, "sd1")
    return write_sd1_folder(folder, unet, vae, text_encoder)


def write_sd1_folder(folder: Path, unet, vae, text_encoder) -> Path:
    """A diffusers SD1.x folder of these models, with the offline CLIP tokenizer and the SD1 scheduler."""
    from trainer.models.tokenizer import build_clip_tokenizer, save_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    save_tokenizer(build_clip_tokenizer(), folder / "tokenizer")
    write_json(folder / "scheduler" / "scheduler_config.json", sd1_scheduler_file_config())
    write_json(folder / "model_index.json", model_index("sd1"))
    return folder


def build_model(model_dir: Path, seed: int = 0, family: str = "sd1") -> Path:
    """The base model, built in a side folder and renamed, so an interrupted build is never reused.

    SD1: the shipped base that draws; SD2/SDXL: random tiny models (deterministic for ``seed``).
    """
    if (model_dir / "model_index.json").is_file():
        return model_dir
    partial = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if family == "sd1":
        write_base_folder(BASE_FILE, partial)
    else:
        build_tiny_sd(partial, family, seed=seed, v_prediction=family == "sd2")
    shutil.rmtree(model_dir, ignore_errors=True)
    partial.rename(model_dir)
    return model_dir


def build_single_file(model_dir: Path, path: Path, family: str = "sd1") -> Path:
    """The model as one original-layout file (SD1: the shipped file itself; written to a temporary name,
    then renamed)."""
    if path.is_file():
        return path
    if family == "sd1":
        partial = path.with_name(path.name + ".partial")
        shutil.copyfile(BASE_FILE, partial)
        partial.replace(path)
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
    build_single_file(model_dir, out_dir / SINGLE_FILE_NAME, family)
    build_dataset(out_dir / "data", seed=seed)
    write_demo_job(out_dir, family)
    return out_dir
