"""The built-in demo: tiny model, generated shapes dataset and a valid job file."""
import random

import numpy as np
import pytest
from PIL import Image

from trainer.models.demo import COLOURS, build_demo, demo_job_values, draw_shape, shape_specs
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
        prefix, shape_text, background_text = caption.split(", ")
        assert prefix == "shapes"
        shape_colour = shape_text.split()[0]
        background = background_text.removesuffix(" background")
        assert shape_colour != background
        pixels = np.asarray(Image.open(image_path).convert("RGB"))
        assert pixels.shape == (64, 64, 3)
        colours_present = {tuple(int(v) for v in pixel) for pixel in pixels.reshape(-1, 3)}
        assert tuple(pixels[0, 0]) == COLOURS[background]  # corners are background
        assert COLOURS[shape_colour] in colours_present


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
    assert shape_specs(0) == shape_specs(0)
    assert shape_specs(0) != shape_specs(1)
    first = draw_shape("triangle", "red", "blue", random.Random(3))
    second = draw_shape("triangle", "red", "blue", random.Random(3))
    assert first.tobytes() == second.tobytes()
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        draw_shape("hexagon", "red", "blue", random.Random(0))


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
