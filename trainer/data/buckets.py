"""Aspect-ratio buckets: the bucket list, choosing a bucket for an image, and the crop offsets.

Pure integer/float arithmetic, following sd-scripts ``model_util.make_bucket_resolutions`` and
``BucketManager.select_bucket`` / ``round_to_steps`` and ``train_util.trim_and_resize_if_required``
(see sd-scripts-semantics.md §1). Sizes are always ``(width, height)``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

Size = tuple[int, int]


@dataclass(frozen=True)
class BucketChoice:
    """Where one image goes: the bucket, the size it is resized to (covering the bucket),
    and the aspect-ratio error ``bucket_w/bucket_h − image_w/image_h``."""

    bucket: Size
    resized: Size
    ar_error: float


def snap_bucket_limits(min_reso: int, max_reso: int, steps: int) -> tuple[int, int]:
    """Min rounded down and max rounded up to multiples of ``steps``
    (sd-scripts ``adjust_min_max_bucket_reso_by_steps``)."""
    if steps < 1:
        raise ValueError("bucket_reso_steps must be at least 1")
    return min_reso - min_reso % steps, max_reso + (-max_reso) % steps


def make_bucket_resolutions(max_reso: Size, min_size: int, max_size: int, divisible: int) -> list[Size]:
    """The predefined bucket list (sd-scripts ``make_bucket_resolutions``).

    With A = W×H: the square ``(⌊√A / d⌋·d)²``, and for width = min, min+d, … ≤ max:
    ``height = min(max, ⌊A / width / d⌋·d)``; if height ≥ min, add (width, height) and (height, width).
    Returned sorted as (width, height) tuples, no duplicates.
    """
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // divisible) * divisible
    resolutions = {(side, side)}
    for width in range(min_size, max_size + 1, divisible):
        height = min(max_size, (max_area // width) // divisible * divisible)
        if height >= min_size:
            resolutions.add((width, height))
            resolutions.add((height, width))
    return sorted(resolutions)


def cover_resize(image_size: Size, bucket: Size) -> Size:
    """The size that keeps the image's aspect ratio and just covers the bucket.

    If the image is wider than the bucket (image AR > bucket AR) the heights match, else the widths;
    each side is ``int(side·scale + 0.5)`` as in sd-scripts.
    """
    width, height = image_size
    if width / height > bucket[0] / bucket[1]:
        scale = bucket[1] / height
    else:
        scale = bucket[0] / width
    return int(width * scale + 0.5), int(height * scale + 0.5)


def select_predefined_bucket(image_size: Size, buckets: list[Size]) -> BucketChoice:
    """sd-scripts ``select_bucket`` without no_upscale: the exact size if it is a bucket, else the
    bucket with the smallest |bucket AR − image AR| (first in sorted order on ties); then cover-resize
    (which upscales images smaller than the bucket)."""
    width, height = image_size
    image_ar = width / height
    if image_size in buckets:
        bucket = image_size
    else:
        bucket = min(buckets, key=lambda b: abs(b[0] / b[1] - image_ar))
    return BucketChoice(bucket, cover_resize(image_size, bucket), bucket[0] / bucket[1] - image_ar)


def round_to_steps(value: float, steps: int) -> int:
    """``int(x + 0.5)`` rounded down to a multiple of steps (sd-scripts ``BucketManager.round_to_steps``)."""
    rounded = int(value + 0.5)
    return rounded - rounded % steps


def no_upscale_resize(image_size: Size, max_area: int, steps: int) -> Size:
    """The resized size under bucket_no_upscale (sd-scripts ``select_bucket`` with no_upscale).

    An image of area ≤ max_area keeps its size. A larger one is shrunk to area max_area keeping
    its aspect ratio r: w = √(A·r), h = A / w; then either the width or the height is rounded to
    steps and the other side follows from r, whichever pair has the smaller aspect-ratio error.
    """
    width, height = image_size
    if width * height <= max_area:
        return image_size
    ratio = width / height
    resized_width = math.sqrt(max_area * ratio)
    resized_height = max_area / resized_width
    width_rounded = round_to_steps(resized_width, steps)
    height_for_width = round_to_steps(width_rounded / ratio, steps)
    height_rounded = round_to_steps(resized_height, steps)
    width_for_height = round_to_steps(height_rounded * ratio, steps)
    error_by_width = abs(width_rounded / max(height_for_width, 1) - ratio)
    error_by_height = abs(width_for_height / max(height_rounded, 1) - ratio)
    if error_by_width < error_by_height:
        return width_rounded, int(width_rounded / ratio + 0.5)
    return int(height_rounded * ratio + 0.5), height_rounded


def select_no_upscale_bucket(image_size: Size, max_area: int, steps: int) -> BucketChoice | None:
    """Bucket = the (possibly shrunk) size floored to multiples of steps on each axis: crop, never pad.
    None when a side is smaller than one step (the image cannot fill any bucket)."""
    resized = no_upscale_resize(image_size, max_area, steps)
    bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    if bucket[0] < 1 or bucket[1] < 1:
        return None
    return BucketChoice(bucket, resized, bucket[0] / bucket[1] - image_size[0] / image_size[1])


def crop_offsets(resized: Size, bucket: Size, rng: random.Random | None = None) -> tuple[int, int]:
    """(left, top) of the bucket-sized window cut from the resized image.

    Centre crop: ``trim // 2`` on each axis; random crop (an rng given): ``randint(0, trim)``.
    """
    trim_x = resized[0] - bucket[0]
    trim_y = resized[1] - bucket[1]
    if trim_x < 0 or trim_y < 0:
        raise ValueError(f"resized size {resized} does not cover bucket {bucket}")
    if rng is None:
        return trim_x // 2, trim_y // 2
    return rng.randint(0, trim_x), rng.randint(0, trim_y)


def mean_ar_error(choices: list[BucketChoice]) -> float:
    """Mean absolute aspect-ratio error over the images (sd-scripts' ``mean_img_ar_error``)."""
    if not choices:
        return 0.0
    return sum(abs(c.ar_error) for c in choices) / len(choices)
