"""Bucket list, bucket selection, resize and crop: expected values worked out by hand from
sd-scripts' formulas (sd-scripts-semantics.md §1)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import buckets, images

# make_bucket_resolutions((512, 512), 256, 1024, 64) by hand: A = 262144, square side 512;
# width w from 256 to 1024 step 64, height = min(1024, (A // w) // 64 * 64):
# 256→1024, 320→768 (819//64=12), 384→640 (682), 448→576 (585), 512→512, 576→448 (455), 640→384 (409),
# 704→320 (372), 768→320 (341), 832→256 (315), 896→256 (292), 960→256 (273), 1024→256; each also transposed.
SD_512_BUCKETS = [
    (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576), (512, 512),
    (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
]


def test_bucket_list_for_512_matches_hand_computation():
    assert buckets.make_bucket_resolutions((512, 512), 256, 1024, 64) == SD_512_BUCKETS


def test_bucket_list_respects_min_and_max():
    # A = 768·512 = 393216, square side ⌊627.07/64⌋·64 = 576; w=384 → min(640, 1024//64·64=1024) = 640;
    # w=448 → 877//64=13 → 832 → capped 640; w=512 → 768 → 640; w=576 → 682//64 → 640; w=640 → 614//64=9 → 576.
    assert buckets.make_bucket_resolutions((768, 512), 384, 640, 64) == [
        (384, 640), (448, 640), (512, 640), (576, 576), (576, 640), (640, 384), (640, 448), (640, 512),
        (640, 576)]


def test_snap_bucket_limits_rounds_min_down_and_max_up():
    assert buckets.snap_bucket_limits(300, 1000, 64) == (256, 1024)
    assert buckets.snap_bucket_limits(256, 1024, 64) == (256, 1024)


@pytest.mark.parametrize("image_size, bucket, resized", [
    # 640x480 (AR 1.333): nearest bucket AR is 576/448 = 1.2857 (error 0.048); image wider → scale 448/480,
    # width 640·0.9333 = 597.33 → int(597.83) = 597.
    ((640, 480), (576, 448), (597, 448)),
    # 1000x600 (AR 1.667) = 640/384 exactly; equal ARs take the width branch: scale 0.64 → (640, 384).
    ((1000, 600), (640, 384), (640, 384)),
    # 300x500 (AR 0.6) = 384/640: upscaled by 384/300 = 1.28 → (384, 640).
    ((300, 500), (384, 640), (384, 640)),
    # An image exactly the size of a bucket keeps it.
    ((448, 576), (448, 576), (448, 576)),
    # 2000x500 (AR 4): nearest is 1024/256 = 4 → scale 0.512 → (1024, 256).
    ((2000, 500), (1024, 256), (1024, 256)),
])
def test_select_predefined_bucket(image_size, bucket, resized):
    choice = buckets.select_predefined_bucket(image_size, SD_512_BUCKETS)
    assert (choice.bucket, choice.resized) == (bucket, resized)
    assert choice.ar_error == pytest.approx(bucket[0] / bucket[1] - image_size[0] / image_size[1])


def test_no_upscale_shrinks_large_image_by_hand():
    # 1000x700, A = 262144, r = 1.428571: w = √(A·r) = 611.96, h = 428.37.
    # Width first: 612 → 576, height 576/r = 403.2 → 384, AR 1.5 (error 0.071).
    # Height first: 428 → 384, width 384·r = 548.6 → 512, AR 1.333 (error 0.095). Width wins:
    # resized = (576, int(403.2 + 0.5)) = (576, 403); bucket = floor to 64 = (576, 384).
    choice = buckets.select_no_upscale_bucket((1000, 700), 262144, 64)
    assert choice.resized == (576, 403)
    assert choice.bucket == (576, 384)
    assert buckets.crop_offsets(choice.resized, choice.bucket) == (0, 9)  # trim 19 → 19 // 2


def test_no_upscale_keeps_small_images_and_floors_to_steps():
    choice = buckets.select_no_upscale_bucket((300, 200), 262144, 64)
    assert (choice.resized, choice.bucket) == ((300, 200), (256, 192))
    assert buckets.select_no_upscale_bucket((50, 40), 262144, 64) is None


def test_round_to_steps():
    assert buckets.round_to_steps(611.96, 64) == 576
    assert buckets.round_to_steps(639.5, 64) == 640  # int(640.0) = 640


def test_crop_offsets_centre_and_random():
    assert buckets.crop_offsets((597, 448), (576, 448)) == (10, 0)
    seen = {buckets.crop_offsets((600, 448), (576, 448), random.Random(i))[0] for i in range(200)}
    assert seen <= set(range(25)) and len(seen) > 15
    with pytest.raises(ValueError):
        buckets.crop_offsets((500, 448), (576, 448))


def _column_ramp(width: int, height: int) -> Image.Image:
    """Red channel of column x = 2·(x // 2): pairs of equal columns, so a 2× box shrink is exact."""
    columns = (2 * (np.arange(width) // 2)).astype(np.uint8)
    red = np.tile(columns, (height, 1))
    return Image.fromarray(np.stack([red, np.zeros_like(red), np.full_like(red, 255)], axis=-1), "RGB")


def test_resize_and_crop_by_hand(tmp_path):
    # 256x128 into a 64x64 bucket: cover scale 64/128 = 0.5 → (128, 64); trim 64 → left 32.
    # Resized column j holds 2j (box average of columns 2j, 2j+1, both 2j); cropped column c = 2(c + 32).
    path = tmp_path / "ramp.png"
    _column_ramp(256, 128).save(path)
    assert buckets.cover_resize((256, 128), (64, 64)) == (128, 64)
    offsets = buckets.crop_offsets((128, 64), (64, 64))
    pixels = images.prepare_pixels(path, (128, 64), (64, 64), offsets, flip=False)
    assert pixels.shape == (3, 64, 64)
    expected_red = torch.tensor([2.0 * (c + 32) for c in range(64)]) / 127.5 - 1.0
    assert torch.allclose(pixels[0, 10], expected_red, atol=1e-6)
    assert torch.all(pixels[1] == -1.0) and torch.all(pixels[2] == 1.0)
    flipped = images.prepare_pixels(path, (128, 64), (64, 64), offsets, flip=True)
    assert torch.equal(flipped, torch.flip(pixels, dims=[2]))


def test_to_tensor_range():
    image = Image.fromarray(np.array([[[0, 51, 255]]], dtype=np.uint8), "RGB")
    assert images.to_tensor(image).flatten().tolist() == pytest.approx([-1.0, -0.6, 1.0])


def test_gamma_is_applied_to_normalised_values():
    # 255 · (128/255)^1.05 = 255 · exp(1.05 · ln 0.50196) = 255 · 0.48497 = 123.67 → 124 (sd-scripts: 128^1.05 = 162.7).
    image = Image.fromarray(np.full((2, 2, 3), 128, dtype=np.uint8), "RGB")
    assert np.asarray(images.apply_gamma(image, 1.05))[0, 0].tolist() == [124, 124, 124]
    white = Image.fromarray(np.full((2, 2, 3), 255, dtype=np.uint8), "RGB")
    assert np.asarray(images.apply_gamma(white, 1.05)).max() == 255


def test_hue_shift_changes_hue_not_greys():
    red = Image.fromarray(np.tile(np.array([200, 30, 30], dtype=np.uint8), (4, 4, 1)), "RGB")
    shifted = np.asarray(images.shift_hue(red, 8.0))[0, 0]
    assert shifted[1] > 30 and shifted[0] >= 190  # +16° moves red toward orange: more green
    grey = Image.fromarray(np.full((4, 4, 3), 90, dtype=np.uint8), "RGB")
    assert np.array_equal(np.asarray(images.shift_hue(grey, 8.0)), np.asarray(grey))
