"""Turning an image file into the pixels one training sample sees.

Order as in sd-scripts ``BaseDataset.__getitem__``: load (RGB) → resize to cover the bucket →
crop to the bucket (centre or random) → colour augmentation → horizontal flip → [-1, 1] tensor.

Differences from sd-scripts, on purpose:
- Resizing uses Pillow (no OpenCV here): ``Image.BOX`` when shrinking (area averaging, what
  cv2.INTER_AREA does) and ``Image.LANCZOS`` when enlarging (as sd-scripts).
- EXIF orientation is applied, matching the sizes the scan reports.
- ``color_aug``'s gamma is applied to values in [0, 1]: sd-scripts raises raw 0–255 values to the
  power g ∈ [0.95, 1.05] and clips, which is a brightness boost (255^1.05 ≈ 336), not a gamma.
  The hue shift is the same: ±8 OpenCV hue units (of 180), i.e. ±16°.
"""
from __future__ import annotations

import random
import warnings as _warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from trainer.data.folders import DataError

Size = tuple[int, int]
COLOR_AUG_PROBABILITY = 0.33  # sd-scripts AugHelper: one of the two colour changes, a third of the time
HUE_SHIFT_OPENCV_UNITS = 8.0  # of OpenCV's 180 hue units
GAMMA_RANGE = (0.95, 1.05)


def decode(path) -> Image.Image:
    """Decode an image fully, EXIF-rotated, in its own mode. Raises what PIL raises for a bad file (see
    ``DECODE_ERRORS``)."""
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)


DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_rgb(path) -> Image.Image:
    """Decode an image fully (EXIF-rotated, RGB). A corrupt or truncated file raises DataError naming it."""
    try:
        return decode(path).convert("RGB")
    except DECODE_ERRORS as err:
        raise DataError(f"Image {path} cannot be decoded ({type(err).__name__}: {err}); "
                        f"fix or remove it.", "train_data_dir", Path(path)) from err


def resize(image: Image.Image, size: Size) -> Image.Image:
    """Resize to ``size``: area averaging when shrinking, Lanczos when enlarging, nothing when equal."""
    if image.size == tuple(size):
        return image
    shrinking = size[0] * size[1] < image.size[0] * image.size[1]
    return image.resize(size, Image.BOX if shrinking else Image.LANCZOS)


def crop(image: Image.Image, offsets: tuple[int, int], bucket: Size) -> Image.Image:
    """Cut the bucket-sized window whose top-left corner is ``offsets``."""
    left, top = offsets
    return image.crop((left, top, left + bucket[0], top + bucket[1]))


def resize_and_crop(image: Image.Image, resized: Size, bucket: Size, offsets: tuple[int, int]) -> Image.Image:
    """sd-scripts ``trim_and_resize_if_required``: resize to cover the bucket, then trim the excess."""
    return crop(resize(image, resized), offsets, bucket)


def flip_horizontal(image: Image.Image) -> Image.Image:
    return image.transpose(Image.FLIP_LEFT_RIGHT)


def shift_hue(image: Image.Image, opencv_units: float) -> Image.Image:
    """Rotate the hue by ``opencv_units`` of OpenCV's 180-unit circle (Pillow's HSV hue has 256 units)."""
    hsv = np.asarray(image.convert("HSV")).copy()
    shift = int(round(opencv_units * 256.0 / 180.0))
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 256).astype(np.uint8)
    return Image.fromarray(hsv, "HSV").convert("RGB")


def apply_gamma(image: Image.Image, gamma: float) -> Image.Image:
    """``255 · (x / 255) ** gamma``: a real gamma on normalised values (see the module note)."""
    values = np.asarray(image).astype(np.float32) / 255.0
    return Image.fromarray(np.clip(np.rint(255.0 * values ** gamma), 0, 255).astype(np.uint8), "RGB")


def color_augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """With probability 0.33: half the time a hue shift uniform(−8, 8) OpenCV units, else a gamma
    uniform(0.95, 1.05) (sd-scripts ``AugHelper.color_aug``, gamma fixed as noted above)."""
    if rng.random() >= COLOR_AUG_PROBABILITY:
        return image
    if rng.random() < 0.5:
        return shift_hue(image, rng.uniform(-HUE_SHIFT_OPENCV_UNITS, HUE_SHIFT_OPENCV_UNITS))
    return apply_gamma(image, rng.uniform(*GAMMA_RANGE))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image → float32 tensor (3, H, W) in [-1, 1]: ``x / 127.5 − 1`` (ToTensor + Normalize(0.5, 0.5))."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def load_mask(path, source: str) -> Image.Image:
    """A mask as a grey image (0–255) the size of the image at ``path``: its alpha channel (``source`` "alpha";
    all 255 when it has none), or the red channel of the mask file ``source`` (sd-scripts' conditioning image),
    stretched to the image's size when the mask file's size differs."""
    try:
        image = decode(path)
        size = image.size
        if source == "alpha":
            if "A" in image.getbands() or "transparency" in image.info:
                return image.convert("RGBA").getchannel("A")
            return Image.new("L", size, 255)
        red = decode(source).convert("RGB").getchannel("R")
    except DECODE_ERRORS as err:
        raise DataError(f"The mask of {path} cannot be decoded ({type(err).__name__}: {err}); fix or remove it.",
                        "masked_loss", Path(path)) from err
    return red if red.size == size else red.resize(size, Image.BILINEAR)


def prepare_mask(path, source: str, resized: Size, bucket: Size, offsets: tuple[int, int], flip: bool) -> torch.Tensor:
    """One sample's loss mask (bucket_h, bucket_w) in [0, 1], cut and flipped exactly as its pixels."""
    mask = resize_and_crop(load_mask(path, source), resized, bucket, offsets)
    if flip:
        mask = flip_horizontal(mask)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)


def prepare_pixels(path, resized: Size, bucket: Size, offsets: tuple[int, int], flip: bool,
                   color_rng: random.Random | None = None) -> torch.Tensor:
    """The full pipeline for one sample: (3, bucket_h, bucket_w) in [-1, 1].

    ``color_rng`` given → colour augmentation with it; ``flip`` → mirrored left-right.
    """
    image = resize_and_crop(load_rgb(path), resized, bucket, offsets)
    if color_rng is not None:
        image = color_augment(image, color_rng)
    if flip:
        image = flip_horizontal(image)
    return to_tensor(image)
