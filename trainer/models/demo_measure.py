"""What a picture of a flat shape shows, measured with colour masks and blob geometry (no learned judge).

``describe(image)`` finds the background (the palette colour most of the border has), then the largest
4-connected blob of each other palette colour, and calls the biggest one the shape: its colour, and its
kind from how much of its bounding box it fills (square ≈ 1, circle ≈ π/4) or from pointing up (a
triangle has a third as much area in its top half as in its bottom half). ``shows(image, colour, shape, background)`` asks whether an image
shows that; ``count_showing`` counts the images of a batch that do. Pure numpy; used by the tests of the
demo's base model and LoRA, and by ``scripts/train_demo_base.py`` to report how well the base draws.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from trainer.models.shapes import COLOURS

TOLERANCE = 80.0  # RGB distance within which a pixel counts as a palette colour (palette colours are ≥180 apart)
MIN_AREA_FRACTION = 0.03  # a shape smaller than this share of the image is not a shape
# Thresholds set between drawn shapes (square 1, circle 0.785, triangle 0.5 and top/bottom 1/3) and what the
# demo model makes of them: its squares fill 0.86-0.91 of their box, its triangles 0.47-0.52 (top/bottom
# 0.36-0.38); its circles are round blobs with four slight lobes, 0.60-0.65 (top/bottom 1.1-1.4), so a
# blob that does not point up and fills 0.57-0.845 of its box counts as a circle.
SQUARE_FILL = 0.845  # bounding-box fill at or above which a blob is a square
CIRCLE_FILL = 0.57  # … a circle
TRIANGLE_TOP_SHARE = 0.78  # area in the top half over area in the bottom half below which a blob points up
MAX_ASPECT = 1.6


@dataclass(frozen=True)
class Drawing:
    """What ``describe`` found: colour names (None when no palette colour fits) and the shape kind."""

    colour: str | None
    shape: str | None
    background: str | None
    area: float = 0.0  # share of the image the shape covers
    fill: float = 0.0  # share of its bounding box it fills


def pixels_of(image) -> np.ndarray:
    """An H×W×3 float array from a PIL image or an array (uint8 0–255, or float 0–1)."""
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    return array * 255.0 if array.max(initial=0.0) <= 1.0 else array


def colour_labels(pixels: np.ndarray, palette: dict[str, tuple[int, int, int]] = COLOURS) -> tuple[list[str], np.ndarray]:
    """(names, label map): each pixel's nearest palette colour index, or -1 when none is within TOLERANCE."""
    names = list(palette)
    centres = np.array([palette[name] for name in names], dtype=np.float64)
    distances = np.linalg.norm(pixels[:, :, None, :] - centres[None, None], axis=-1)
    labels = distances.argmin(axis=-1)
    labels[distances.min(axis=-1) > TOLERANCE] = -1
    return names, labels


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (all False when the mask is empty)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        region, queue = [], deque([start])
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    blob = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        blob[list(ys), list(xs)] = True
    return blob


def shape_of(blob: np.ndarray) -> tuple[str | None, float]:
    """(kind, fill) of a blob: "square", "circle", "triangle", or None when it is too small or not one."""
    area = int(blob.sum())
    if area < MIN_AREA_FRACTION * blob.size:
        return None, 0.0
    ys, xs = np.nonzero(blob)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = area / float(height * width)
    if not 1 / MAX_ASPECT <= width / height <= MAX_ASPECT:
        return None, fill
    middle = ys.min() + height / 2
    top, bottom = int((ys < middle).sum()), int((ys >= middle).sum())
    if fill >= SQUARE_FILL:
        return ("square" if top >= TRIANGLE_TOP_SHARE * bottom else None), fill
    if top < TRIANGLE_TOP_SHARE * bottom:
        return "triangle", fill
    return ("circle" if fill >= CIRCLE_FILL else None), fill


def border_of(labels: np.ndarray, width: int = 2) -> np.ndarray:
    return np.concatenate([labels[:width].ravel(), labels[-width:].ravel(), labels[:, :width].ravel(),
                           labels[:, -width:].ravel()])


def describe(image, palette: dict[str, tuple[int, int, int]] = COLOURS) -> Drawing:
    """The background, and the colour and kind of the largest blob of another palette colour."""
    names, labels = colour_labels(pixels_of(image), palette)
    border = border_of(labels)
    counts = np.bincount(border[border >= 0], minlength=len(names))
    background = int(counts.argmax()) if counts.sum() > border.size // 2 else -1
    best_blob, best_index = None, -1
    for index in range(len(names)):
        if index == background:
            continue
        blob = largest_blob(labels == index)
        if best_blob is None or blob.sum() > best_blob.sum():
            best_blob, best_index = blob, index
    if best_blob is None or not best_blob.any():
        return Drawing(None, None, names[background] if background >= 0 else None)
    kind, fill = shape_of(best_blob)
    return Drawing(names[best_index], kind, names[background] if background >= 0 else None,
                   float(best_blob.mean()), fill)


def shows(image, colour: str, shape: str | None = None, background: str | None = None) -> bool:
    """Whether the image shows a ``colour`` ``shape`` (any shape when None) on ``background`` (any when None)."""
    found = describe(image)
    return (found.colour == colour and (shape is None or found.shape == shape)
            and (background is None or found.background == background))


def count_showing(images, colour: str, shape: str | None = None, background: str | None = None) -> int:
    return sum(shows(image, colour, shape, background) for image in images)
