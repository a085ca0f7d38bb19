"""The latent cache with the real tiny VAE: memory size, reuse across runs, and invalidation."""
import os

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from tests.test_data_folders import write_image
from trainer.data import images, latent_cache
from trainer.data.dataset_plan import DataOptions
from trainer.data.folders import DataError, scan_dataset
from trainer.data.training_data import TrainingData


class CountingEncoder:
    """The tiny VAE's posterior mean (deterministic), counting calls and images encoded."""

    def __init__(self, vae):
        self.vae, self.calls, self.images = vae, 0, 0

    def __call__(self, pixels):
        self.calls += 1
        self.images += pixels.shape[0]
        return self.vae.encode(pixels).latent_dist.mode()


@pytest.fixture(scope="module")
def vae(tiny_model_dir):
    return AutoencoderKL.from_pretrained(tiny_model_dir / "vae").eval()


def make_images(root):
    """2_x: a.png, b.png 64x64 and c.png 128x64. With no_upscale, max 64x64, steps 8, c (area 8192 > 4096)
    shrinks: w = √(4096·2) = 90.5 → 88, h 44 → 40 (AR 2.2); h = 45.25 → 40, w 80 (AR 2.0) → (80, 40)."""
    write_image(root / "img" / "2_x" / "a.png", 64, 64, seed=1)
    write_image(root / "img" / "2_x" / "b.png", 64, 64, seed=2)
    write_image(root / "img" / "2_x" / "c.png", 128, 64, seed=3)
    return root / "img"


def options(**changes):
    base = dict(resolution=(64, 64), bucket_reso_steps=8, bucket_no_upscale=True, batch_size=2, cache_latents=True)
    return DataOptions(**{**base, **changes})


def cached_data(root, vae, disk=True, encoder_id="tiny", **changes):
    data = TrainingData(scan_dataset(root, None, ".txt"), options(**changes), seed=0)
    encoder = CountingEncoder(vae)
    data.cache_latents(encoder, vae_batch_size=0, disk=disk, encoder_id=encoder_id)
    return data, encoder


def test_memory_cache_holds_latents_not_pixels(tmp_path, vae):
    root = make_images(tmp_path)
    data, encoder = cached_data(root, vae, disk=False)
    assert sorted(i.bucket for i in data.plan.images) == [(64, 64), (64, 64), (80, 40)]
    assert (encoder.calls, encoder.images) == (2, 3)  # vae_batch_size 0 → 2: one call per bucket here
    # 4 channels at 1/8 size in float32 versus 3 channels at full size: 4·8·8 + 4·8·8 + 4·5·10 values.
    assert data.cached_bytes() == (4 * 8 * 8 * 2 + 4 * 5 * 10) * 4
    pixel_bytes = (3 * 64 * 64 * 2 + 3 * 40 * 80) * 4
    assert pixel_bytes / data.cached_bytes() == pytest.approx(48.0)
    for path in root.glob("*/*.png"):
        os.remove(path)  # a cached epoch never touches the images again
    batches = list(data.epoch(1))
    assert len(batches) == data.steps_per_epoch == 1 + 2  # bucket 80x40: ⌈2/2⌉, bucket 64x64: ⌈4/2⌉
    assert all(b.pixels is None and b.latents.shape[2:] == (b.bucket[1] // 8, b.bucket[0] // 8) for b in batches)
    assert not list(root.glob("*/*.npz"))


def test_cached_latents_are_the_vae_of_the_centre_crop(tmp_path, vae):
    root = make_images(tmp_path)
    data, _ = cached_data(root, vae, disk=False, flip_aug=True)
    seen_flips = set()
    for epoch in (1, 2):
        for batch in data.epoch(epoch):
            for k, path in enumerate(batch.image_paths):
                item = next(i for i in data.plan.images if i.path == path)
                offsets = (item.resized[0] - item.bucket[0]) // 2, (item.resized[1] - item.bucket[1]) // 2
                pixels = images.prepare_pixels(path, item.resized, item.bucket, offsets, batch.flipped[k])
                with torch.no_grad():
                    expected = vae.encode(pixels[None]).latent_dist.mode()[0]
                assert torch.allclose(batch.latents[k], expected, atol=1e-5)
                seen_flips.add(batch.flipped[k])
    assert seen_flips == {True, False}


def test_vae_batch_size_sets_the_chunks(tmp_path, vae):
    root = make_images(tmp_path)
    data = TrainingData(scan_dataset(root, None, ".txt"), options(), seed=0)
    encoder = CountingEncoder(vae)
    data.cache_latents(encoder, vae_batch_size=1, disk=False)
    assert (encoder.calls, encoder.images) == (3, 3)


def test_disk_cache_is_reused_across_runs(tmp_path, vae):
    root = make_images(tmp_path)
    first, encoder = cached_data(root, vae)
    assert encoder.images == 3
    files = sorted(p.name for p in (root / "2_x").glob("*.npz"))
    assert files == ["a_0064x0064_sd.npz", "b_0064x0064_sd.npz", "c_0128x0064_sd.npz"]
    with np.load(root / "2_x" / "c_0128x0064_sd.npz") as stored:  # the keys sd-scripts reads
        assert stored["latents"].shape == (4, 5, 10) and stored["original_size"].tolist() == [128, 64]
        assert stored["crop_ltrb"].tolist() == [0, 0, 80, 40]
    second, encoder = cached_data(root, vae)
    assert encoder.calls == 0
    assert all(torch.equal(x, y) for x, y in zip(first._latents, second._latents))


def test_disk_cache_invalidation(tmp_path, vae):
    root = make_images(tmp_path)
    cached_data(root, vae)
    # A touched but unchanged image (new mtime, same bytes) is still valid: the hash decides.
    os.utime(root / "2_x" / "a.png", ns=(1, 1))
    assert cached_data(root, vae)[1].images == 0
    # A changed image is re-encoded, alone.
    write_image(root / "2_x" / "b.png", 64, 64, seed=99)
    assert cached_data(root, vae)[1].images == 1
    # A new resolution moves every bucket → everything re-encoded, then reused at that resolution.
    assert cached_data(root, vae, resolution=(48, 48))[1].images == 3
    assert cached_data(root, vae, resolution=(48, 48))[1].images == 0
    # Back to 64: rebuilt again (the files were rewritten for 48).
    assert cached_data(root, vae)[1].images == 3
    # flip_aug needs flipped latents: originals and mirrors encoded.
    assert cached_data(root, vae, flip_aug=True)[1].images == 6
    assert cached_data(root, vae, flip_aug=False)[1].images == 0  # flipped latents present is fine
    # Another VAE.
    assert cached_data(root, vae, encoder_id="other vae")[1].images == 3
    # A corrupt cache file is rebuilt, not a crash.
    (root / "2_x" / "a_0064x0064_sd.npz").write_bytes(b"not a zip")
    assert cached_data(root, vae, encoder_id="other vae")[1].images == 1
    assert not list(root.glob("*/*.tmp"))


def test_stale_reason_names_the_change(tmp_path, vae):
    root = make_images(tmp_path)
    data, _ = cached_data(root, vae)
    item = next(i for i in data.plan.images if i.path.endswith("c.png"))
    path = latent_cache.cache_file_path(item.path, item.original_size)
    key = latent_cache.CacheEntryKey(item.bucket, item.resized, (0, 0), False, "tiny")
    stored = dict(np.load(path))
    assert latent_cache.stale_reason(stored, item.path, key) is None
    moved = latent_cache.CacheEntryKey((72, 40), item.resized, (0, 0), False, "tiny")
    assert latent_cache.stale_reason(stored, item.path, moved) == "the bucket resolution changed"
    assert "another tool" in latent_cache.stale_reason({"latents": stored["latents"]}, item.path, key)


@pytest.mark.parametrize("setting", ["color_aug", "random_crop"])
def test_caching_refuses_per_step_augmentation(tmp_path, vae, setting):
    root = make_images(tmp_path)
    data = TrainingData(scan_dataset(root, None, ".txt"), options(cache_latents=False, **{setting: True}), seed=0)
    with pytest.raises(DataError) as caught:
        data.cache_latents(CountingEncoder(vae), 0, disk=False)
    assert caught.value.setting == setting


def test_a_broken_encoder_is_reported(tmp_path):
    root = make_images(tmp_path)
    data = TrainingData(scan_dataset(root, None, ".txt"), options(), seed=0)
    with pytest.raises(DataError) as caught:
        data.cache_latents(lambda x: torch.full((x.shape[0], 4, 8, 8), float("nan")), 0, disk=False)
    assert caught.value.setting == "cache_latents" and "NaN" in caught.value.message


def test_progress_is_reported_and_reaches_the_total(tmp_path, vae):
    root = make_images(tmp_path)
    calls = []
    data = TrainingData(scan_dataset(root, None, ".txt"), options(), seed=0)
    data.cache_latents(CountingEncoder(vae), 0, disk=True, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (3, 3)]  # smallest bucket area first: c in 80x40 (3200), then a, b in 64x64 (4096)
    calls.clear()
    again = TrainingData(scan_dataset(root, None, ".txt"), options(), seed=0)
    again.cache_latents(CountingEncoder(vae), 0, disk=True, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 3)]


def test_an_unwritable_cache_file_is_named(tmp_path, vae):
    root = make_images(tmp_path)
    (root / "2_x" / "a_0064x0064_sd.npz.tmp").mkdir()  # the temporary name is taken by a folder
    data = TrainingData(scan_dataset(root, None, ".txt"), options(), seed=0)
    with pytest.raises(DataError) as caught:
        data.cache_latents(CountingEncoder(vae), 0, disk=True)
    assert caught.value.setting == "cache_latents_to_disk" and "a_0064x0064_sd.npz" in caught.value.message


def test_skip_cache_check_trusts_a_file_of_the_right_bucket(tmp_path, vae):
    """sd-scripts' --skip_cache_check: the image and the VAE are not checked (an edited image keeps its old
    latent); an unreadable file, a missing flipped latent or another bucket are still rebuilt."""
    root = make_images(tmp_path)
    first, _ = cached_data(root, vae)
    write_image(root / "2_x" / "b.png", 64, 64, seed=99)

    def run(encoder_id="tiny", **changes):
        data = TrainingData(scan_dataset(root, None, ".txt"), options(**changes), seed=0)
        encoder = CountingEncoder(vae)
        data.cache_latents(encoder, disk=True, encoder_id=encoder_id, skip_cache_check=True)
        return data, encoder

    data, encoder = run()
    assert encoder.images == 0 and torch.equal(data._latents[1], first._latents[1])  # the old latent of b.png
    assert run(encoder_id="other vae")[1].images == 0
    assert run(flip_aug=True)[1].images == 6  # no flipped latents yet: every image is encoded again
    assert run(resolution=(48, 48))[1].images == 3
    assert cached_data(root, vae)[1].images == 3  # without the setting, the check is back
