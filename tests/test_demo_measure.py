"""The drawing measurement (trainer.models.demo_measure) on pictures whose content is known."""
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from trainer.models import demo_measure as measure
from trainer.models import shapes


def test_every_drawn_picture_is_described_as_drawn():
    for picture in shapes.base_pictures(7, 24):
        found = measure.describe(shapes.draw(picture))
        assert (found.colour, found.shape, found.background) == (picture.colour, picture.shape, picture.background)


def test_softened_pictures_are_still_described_as_drawn():
    """Decoded pictures have soft edges; a blur of 1 px must not change the verdict."""
    for picture in shapes.base_pictures(8, 12):
        soft = shapes.draw(picture).filter(ImageFilter.GaussianBlur(1))
        assert measure.shows(soft, picture.colour, picture.shape, picture.background)


@pytest.mark.parametrize("asked", [dict(colour="green"), dict(shape="square"), dict(shape="triangle"),
                                   dict(background="white")])
def test_another_description_is_refused(asked):
    picture = shapes.Picture("circle", "red", "blue", 32, 16, 16)
    wanted = {"colour": "red", "shape": "circle", "background": "blue", **asked}
    assert not measure.shows(shapes.draw(picture), **wanted)


def test_the_new_colour_is_found_and_not_confused_with_its_neighbours():
    magenta = shapes.Picture("triangle", shapes.NEW_COLOUR_NAME, "green", 34, 14, 15)
    assert measure.shows(shapes.draw(magenta), shapes.NEW_COLOUR_NAME, "triangle", "green")
    purple = shapes.draw(magenta, rgb={shapes.NEW_COLOUR_NAME: (130, 50, 140)})  # a red-blue mix is not magenta
    assert measure.describe(purple).colour is None


def test_noise_flat_images_and_specks_show_nothing():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert measure.describe(noise).shape is None
    flat = Image.new("RGB", (64, 64), shapes.COLOURS["blue"])
    assert measure.describe(flat) == measure.Drawing(None, None, "blue")
    speck = shapes.draw(shapes.Picture("square", "red", "blue", 6, 30, 30))  # under 3 % of the image
    assert measure.describe(speck).shape is None


def test_a_stretched_blob_is_no_shape():
    image = Image.new("RGB", (64, 64), shapes.COLOURS["black"])
    image.paste(shapes.COLOURS["yellow"], (4, 28, 60, 38))  # a bar 56×10
    assert measure.describe(image).colour == "yellow" and measure.describe(image).shape is None


def test_largest_blob_keeps_only_the_biggest_connected_part():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:3, 1:3] = True
    mask[5:9, 5:9] = True
    mask[0, 9] = True
    blob = measure.largest_blob(mask)
    assert blob.sum() == 16 and blob[5:9, 5:9].all()
    assert not measure.largest_blob(np.zeros((4, 4), dtype=bool)).any()


def test_float_and_channel_first_arrays_are_read_like_images():
    picture = shapes.Picture("square", "white", "black", 30, 17, 17)
    array = np.asarray(shapes.draw(picture)).astype(np.float32) / 255.0
    assert measure.shows(array, "white", "square", "black")
    assert measure.shows(array.transpose(2, 0, 1), "white", "square", "black")


def test_count_showing_counts():
    rng = random.Random(3)
    pictures = [shapes.random_picture(rng) for _ in range(6)]
    images = [shapes.draw(p) for p in pictures]
    first = pictures[0]
    expected = sum((p.colour, p.shape) == (first.colour, first.shape) for p in pictures)
    assert measure.count_showing(images, first.colour, first.shape) == expected
