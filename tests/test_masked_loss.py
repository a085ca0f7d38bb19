"""``masked_loss`` and the masks of a dataset config, as sd-scripts reads them: an image's alpha channel
(``alpha_mask``) or a mask folder (``conditioning_data_dir``: the mask's red channel), cut and flipped with the
image, brought to the latent size by area averaging and multiplied into the element-wise loss."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data.dataset_config import scan_job_dataset
from trainer.data.folders import DataError
from trainer.data.training_data import TrainingData
from trainer.loss import apply_loss_mask, training_loss
from trainer.network import read_lora_file
from trainer.spec import job_from_values
from trainer.spec.checks import check_paths

from .effects_runs import run_in_session


def test_the_mask_is_area_averaged_to_the_latent_size_and_multiplies_the_loss():
    elements = torch.ones(2, 4, 2, 2)
    masks = torch.zeros(2, 16, 16)
    masks[0, :, :8] = 1.0  # left half of sample 0
    masks[1, :4, :4] = 1.0  # a quarter of one latent cell of sample 1
    out = apply_loss_mask(elements, masks)
    assert torch.equal(out[0, :, :, 0], torch.ones(4, 2)) and torch.equal(out[0, :, :, 1], torch.zeros(4, 2))
    assert out[1, 0, 0, 0] == 0.25 and out[1].sum() == 4 * 0.25
    prediction, target = torch.randn(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    timesteps, alphas = torch.tensor([10, 20]), torch.linspace(0.99, 0.01, 1000)
    plain = training_loss(prediction, target, timesteps, alphas)
    assert training_loss(prediction, target, timesteps, alphas, masks=torch.ones(2, 16, 16)) == plain
    assert training_loss(prediction, target, timesteps, alphas, masks=torch.zeros(2, 16, 16)) == 0
    half = training_loss(prediction, target, timesteps, alphas, masks=masks[[0, 0]])
    assert torch.isclose(half, (prediction[..., 0] ** 2).mean() / 2)


def _rgba(path: Path, seed: int, transparent_left: bool) -> None:
    rgb = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    alpha = np.full((64, 64, 1), 255, dtype=np.uint8)
    if transparent_left:
        alpha[:, :32] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(path)
    path.with_suffix(".txt").write_text("a picture")


def _config(tmp_path: Path, subset: str, **job) -> object:
    (tmp_path / "ds.toml").write_text(f"""
[general]
caption_extension = ".txt"
[[datasets]]
resolution = 64
bucket_reso_steps = 8
[[datasets.subsets]]
{subset}
""")
    return job_from_values({"dataset_config": str(tmp_path / "ds.toml"), "train_data_dir": "", **job})


def test_alpha_masks_follow_the_crop_and_the_flip(tmp_path):
    for i in range(2):
        _rgba(tmp_path / "img" / f"{i}.png", i, transparent_left=True)
    job = _config(tmp_path, f'image_dir = "{tmp_path / "img"}"\nalpha_mask = true\nflip_aug = true')
    data = TrainingData(*scan_job_dataset(job), seed=3)
    assert data.plan.subsets[0].masks == "alpha channel"
    seen = set()
    for epoch in (1, 2, 3):
        for batch in data.epoch(epoch):
            for mask, flipped in zip(batch.masks, batch.flipped):
                transparent = mask[:, 32:] if flipped else mask[:, :32]
                opaque = mask[:, :32] if flipped else mask[:, 32:]
                assert transparent.max() == 0 and opaque.min() == 1
                seen.add(flipped)
    assert seen == {True, False}


def test_a_mask_folder_gives_each_image_its_masks_red_channel(tmp_path):
    for i in range(2):
        _rgba(tmp_path / "img" / f"{i}.png", i, transparent_left=False)
        red = np.zeros((32, 32, 3), dtype=np.uint8)  # half the size: stretched to the image
        red[:, :, 0] = 255 if i == 0 else 64
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(red).save(tmp_path / "masks" / f"{i}.png")
    subset = f'image_dir = "{tmp_path / "img"}"\nconditioning_data_dir = "{tmp_path / "masks"}"'
    data = TrainingData(*scan_job_dataset(_config(tmp_path, subset, masked_loss=True)), seed=0)
    masks = {Path(p).stem: m for batch in data.epoch(1) for p, m in zip(batch.image_paths, batch.masks)}
    assert torch.all(masks["0"] == 1) and torch.allclose(masks["1"], torch.full((64, 64), 64 / 255))
    # the folder needs masked_loss (sd-scripts' schema), and every image its mask
    with pytest.raises(DataError) as error:
        scan_job_dataset(_config(tmp_path, subset))
    assert error.value.setting == "dataset_config" and "needs masked_loss" in str(error.value)
    (tmp_path / "masks" / "1.png").unlink()
    with pytest.raises(DataError) as error:
        TrainingData(*scan_job_dataset(_config(tmp_path, subset, masked_loss=True)), seed=0)
    assert error.value.setting == "masked_loss" and "has no mask" in str(error.value)


def test_masked_loss_without_masks_is_refused_naming_it(demo_dir, tmp_path):
    job = job_from_values({"train_data_dir": str(Path(demo_dir) / "data"), "masked_loss": True})
    problems = [p for p in check_paths(job) if p.setting == "masked_loss"]
    assert problems and "no image has one" in problems[0].message


def test_an_all_black_mask_trains_nothing(demo_dir, tmp_path):
    """Through a run: every image masked out → a zero loss, no gradient, the LoRA's up matrices stay 0."""
    source = Path(demo_dir) / "data" / "10_shapes"
    (tmp_path / "masks").mkdir()
    for png in sorted(source.glob("*.png"))[:3]:
        Image.new("RGB", Image.open(png).size, (0, 0, 0)).save(tmp_path / "masks" / png.name)
    (tmp_path / "ds.toml").write_text(f"""
[[datasets]]
[[datasets.subsets]]
image_dir = "{tmp_path / "img"}"
conditioning_data_dir = "{tmp_path / "masks"}"
caption_extension = ".txt"
""")
    (tmp_path / "img").mkdir()
    for png in sorted(source.glob("*.png"))[:3]:
        (tmp_path / "img" / png.name).write_bytes(png.read_bytes())
        (tmp_path / "img" / f"{png.stem}.txt").write_text(png.with_suffix(".txt").read_text())
    run = run_in_session(demo_dir, tmp_path / "work", dataset_config=str(tmp_path / "ds.toml"), train_data_dir="",
                         masked_loss=True, epoch=1, train_batch_size=1, max_train_steps=0, network_dim=4,
                         save_every_n_epochs=0, sample_every_n_epochs=0, sample_every_n_steps=0)
    assert run.status == "completed" and len(run.losses) == 3 and all(loss == 0 for loss in run.losses)
    tensors, _ = read_lora_file(run.final_file)
    ups = [t for k, t in tensors.items() if k.endswith("lora_up.weight")]
    assert ups and all(torch.count_nonzero(t) == 0 for t in ups)
    assert all(math.isfinite(loss) for loss in run.losses)
