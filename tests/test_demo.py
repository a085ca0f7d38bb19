"""The built-in demo: the shipped base model, the generated dataset with its trigger word, a valid job file."""
import random

import numpy as np
import pytest
from PIL import Image

from trainer.models import shapes
from trainer.models.demo import BASE_FILE, COLOURS, TRIGGER_WORD, build_demo, demo_job_values
from trainer.spec import load_job


def test_demo_layout(demo_dir):
    assert (demo_dir / "model" / "model_index.json").is_file()
    images = sorted((demo_dir / "data" / "10_shapes").glob("*.png"))
    captions = sorted((demo_dir / "data" / "10_shapes").glob("*.txt"))
    assert len(images) == 8
    assert [path.stem for path in images] == [path.stem for path in captions]
    assert not (demo_dir / "model.partial").exists()


def test_demo_images_match_their_captions(demo_dir):
    for image_path in sorted((demo_dir / "data" / "10_shapes").glob("*.png")):
        caption = image_path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        article, trigger, shape, on, _, background, word = caption.split(" ")
        assert (article, trigger, on, word) == ("a", TRIGGER_WORD, "on", "background")
        assert shape in shapes.SHAPES and background in shapes.BASE_COLOURS
        pixels = np.asarray(Image.open(image_path).convert("RGB"))
        assert pixels.shape == (64, 64, 3)
        colours_present = {tuple(int(v) for v in pixel) for pixel in pixels.reshape(-1, 3)}
        assert tuple(pixels[0, 0]) == COLOURS[background]  # corners are background
        assert shapes.NEW_COLOUR in colours_present  # the trigger word stands for the colour the base never saw


def test_demo_job_loads_through_the_schema(demo_dir):
    job = load_job(demo_dir / "job.toml")
    assert job.model.pretrained_model_name_or_path == str(demo_dir / "model.safetensors")
    assert (job.model.v2, job.model.v_parameterization) == (False, False)
    assert job.data.train_data_dir == str(demo_dir / "data")
    assert (job.saving.output_name, job.data.max_resolution, job.network.network_dim, job.optimisation.seed) == ("demo_lora", "64,64", 8, 42)
    assert (job.data.train_batch_size, job.optimisation.epoch, job.sampling.sample_sampler) == (2, 5, "euler_a")
    assert job.sampling.sample_prompts.count("\n") == 1


def test_build_demo_is_idempotent(demo_dir):
    job_path = demo_dir / "job.toml"
    image_path = demo_dir / "data" / "10_shapes" / "shape_00.png"
    weights = demo_dir / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    single_file = demo_dir / "model.safetensors"
    stamps = [path.stat().st_mtime_ns for path in (job_path, image_path, weights, single_file)]
    assert build_demo(demo_dir) == demo_dir
    assert [path.stat().st_mtime_ns for path in (job_path, image_path, weights, single_file)] == stamps


def test_demo_dataset_is_seeded(tmp_path):
    assert shapes.demo_pictures(0) == shapes.demo_pictures(0)
    assert shapes.demo_pictures(0) != shapes.demo_pictures(1)
    assert {picture.shape for picture, _ in shapes.demo_pictures(0)} == set(shapes.SHAPES)
    first = shapes.draw(shapes.random_picture(random.Random(3)))
    assert first.tobytes() == shapes.draw(shapes.random_picture(random.Random(3))).tobytes()
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        shapes.draw(shapes.Picture("hexagon", "red", "blue", 30, 10, 10))


def test_the_base_never_saw_the_new_colour_or_the_trigger_word():
    pictures = shapes.base_pictures(0, 200)
    assert {p.colour for p in pictures} | {p.background for p in pictures} == set(shapes.BASE_COLOURS)
    assert not any(TRIGGER_WORD in shapes.base_caption(p) for p in pictures)


def test_sd1_demo_ships_the_trained_base_file_and_its_folder_matches_it(demo_dir):
    """The single file is the shipped file byte for byte; the folder is the same weights, converted."""
    import torch

    from trainer.models.loading import load_base_model

    assert (demo_dir / "model.safetensors").read_bytes() == BASE_FILE.read_bytes()
    assert BASE_FILE.stat().st_size <= 15_000_000
    from_file = load_base_model(str(demo_dir / "model.safetensors"), device=torch.device("cpu"), dtype=torch.float32)
    from_folder = load_base_model(str(demo_dir / "model"), device=torch.device("cpu"), dtype=torch.float32)
    for part in ("unet", "vae"):  # GroupNorm groups are no tensor shape: the file's metadata carries them
        assert getattr(from_file, part).config.norm_num_groups == getattr(from_folder, part).config.norm_num_groups == 8
    for part in ("unet", "vae", "text_encoder"):
        left, right = getattr(from_file, part).state_dict(), getattr(from_folder, part).state_dict()
        assert left.keys() == right.keys()
        assert all(torch.equal(left[name], right[name]) for name in left), part


def test_demo_job_values_use_absolute_paths(tmp_path):
    values = demo_job_values(tmp_path)
    for key in ("pretrained_model_name_or_path", "train_data_dir", "output_dir", "logging_dir"):
        assert values[key].startswith(str(tmp_path))


def test_interrupted_model_build_is_not_reused(tmp_path):
    from trainer.models.demo import build_model

    model_dir = tmp_path / "model"
    (model_dir / "unet").mkdir(parents=True)  # what a crash half-way through an older build could leave
    build_model(model_dir)
    assert (model_dir / "model_index.json").is_file()
    assert (model_dir / "vae" / "config.json").is_file()
    assert not (tmp_path / "model.partial").exists()


def test_cli_demo_family_flag_builds_that_family(tmp_path):
    """``python -m trainer demo DIR --family sd2``: folder + single file of an SD2.x v-prediction model, and a
    job that trains on the single file with v2 and v_parameterization on; an unknown family is refused."""
    from trainer.models.detect import inspect_model

    from .trainer_helpers import run_trainer

    built = run_trainer("demo", tmp_path / "sd2", "--family", "sd2")
    assert built.returncode == 0, built.stderr[-2000:]
    info = inspect_model(tmp_path / "sd2" / "model.safetensors")
    assert (info.family, info.v_prediction) == ("sd2", True)
    assert inspect_model(tmp_path / "sd2" / "model").family == "sd2"
    job = load_job(tmp_path / "sd2" / "job.toml")
    assert job.model.v2 and job.model.v_parameterization
    assert job.model.pretrained_model_name_or_path == str(tmp_path / "sd2" / "model.safetensors")
    refused = run_trainer("demo", tmp_path / "x", "--family", "flux")
    assert refused.returncode == 2 and "invalid choice: 'flux'" in refused.stderr
    assert not (tmp_path / "x").exists()
