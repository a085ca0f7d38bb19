"""Procedural captioned pictures of flat shapes: what the demo base model learned to draw, and the demo dataset.

A picture is one shape (circle, square or triangle) of one colour on a plain background, 64×64 px, roughly
centred. The base model (``scripts/train_demo_base.py``) was trained on the six ``BASE_COLOURS`` with
captions like "a red circle on a blue background". The demo dataset teaches one colour the base never saw,
``NEW_COLOUR`` (magenta), under the trigger word ``TRIGGER_WORD``: "a zqx circle on a green background".
Pure functions of their seeds (PIL only, no torch), so the training script, the demo and the tests agree.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
BASE_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
NEW_COLOUR_NAME = "magenta"
NEW_COLOUR = (225, 45, 225)
TRIGGER_WORD = "zqx"
COLOURS = {**BASE_COLOURS, NEW_COLOUR_NAME: NEW_COLOUR}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Picture:
    """What one picture shows: a ``colour`` ``shape`` of ``extent`` px with its top-left corner at (left, top)."""

    shape: str
    colour: str
    background: str
    extent: int
    left: int
    top: int


def caption(shape: str, colour_word: str, background: str) -> str:
    return f"a {colour_word} {shape} on a {background} background"


def random_picture(rng: random.Random, colours: tuple[str, ...] = tuple(BASE_COLOURS),
                   backgrounds: tuple[str, ...] = tuple(BASE_COLOURS), size: int = IMAGE_SIZE) -> Picture:
    """A random shape of 26–38 px placed within 8 px of the centre; colour and background always differ."""
    shape = rng.choice(SHAPES)
    colour = rng.choice(colours)
    background = rng.choice([name for name in backgrounds if name != colour])
    extent = rng.randint(size * 13 // 32, size * 19 // 32)
    centre = size // 2
    left = centre - extent // 2 + rng.randint(-size // 8, size // 8)
    top = centre - extent // 2 + rng.randint(-size // 8, size // 8)
    return Picture(shape, colour, background, extent, left, top)


def draw(picture: Picture, size: int = IMAGE_SIZE, rgb: dict[str, tuple[int, int, int]] | None = None) -> Image.Image:
    """The picture as an RGB image; ``rgb`` may give colours for names outside ``COLOURS``."""
    table = {**COLOURS, **(rgb or {})}
    image = Image.new("RGB", (size, size), table[picture.background])
    pen = ImageDraw.Draw(image)
    left, top, extent = picture.left, picture.top, picture.extent
    box = (left, top, left + extent - 1, top + extent - 1)
    fill = table[picture.colour]
    if picture.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif picture.shape == "square":
        pen.rectangle(box, fill=fill)
    elif picture.shape == "triangle":
        pen.polygon([(left + extent // 2, top), (left, top + extent - 1), (left + extent - 1, top + extent - 1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {picture.shape!r}; expected one of {SHAPES}")
    return image


def base_caption(picture: Picture) -> str:
    return caption(picture.shape, picture.colour, picture.background)


def base_pictures(seed: int, count: int) -> list[Picture]:
    """``count`` pictures in the base palette (what the base UNet was trained on)."""
    rng = random.Random(seed)
    return [random_picture(rng) for _ in range(count)]


def demo_pictures(seed: int = 0, count: int = 8) -> list[tuple[Picture, str]]:
    """The demo dataset: (picture, caption) pairs of magenta shapes captioned with the trigger word.

    Shapes cycle so each appears; backgrounds are base colours, so only the new colour is new.
    """
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        picture = random_picture(rng, colours=(NEW_COLOUR_NAME,), backgrounds=tuple(BASE_COLOURS))
        picture = Picture(SHAPES[index % len(SHAPES)], *[getattr(picture, f) for f in
                                                          ("colour", "background", "extent", "left", "top")])
        pairs.append((picture, caption(picture.shape, TRIGGER_WORD, picture.background)))
    return pairs
