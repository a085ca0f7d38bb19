"""Scanning kohya-style folders, with the bad data people really have: every problem is named."""
import io

import numpy as np
import pytest
from PIL import Image

from trainer.data.folders import (DataError, caption_candidates, normalize_caption_extension, parse_folder_name,
                                  read_image_size, scan_dataset)


def write_image(path, width, height, fmt=None, seed=0, exif_orientation=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    image.save(path, format=fmt, **kwargs)
    return path


def messages(scan):
    return [w.message for w in scan.warnings]


def test_parse_folder_name():
    assert parse_folder_name("10_sks dog") == (10, "sks dog")
    assert parse_folder_name("5_a_b") == (5, "a_b")
    assert parse_folder_name("3") == (3, "")
    assert parse_folder_name("nameonly") is None
    assert parse_folder_name("x_name") is None


def test_caption_extension_normalised():
    assert normalize_caption_extension("") == ".caption"
    assert normalize_caption_extension(None) == ".caption"
    assert normalize_caption_extension("txt") == ".txt"
    assert normalize_caption_extension(".txt") == ".txt"


def test_face_crop_caption_candidate(tmp_path):
    names = [p.name for p in caption_candidates(tmp_path / "img_a_1_2_3_4.png", ".txt")]
    assert names == ["img_a_1_2_3_4.txt", "img_a.txt"]
    assert [p.name for p in caption_candidates(tmp_path / "a_b_c_d.png", ".txt")] == ["a_b_c_d.txt"]


def test_scan_finds_subsets_sizes_and_captions(tmp_path):
    train = tmp_path / "img"
    write_image(train / "10_sks dog" / "landscape.png", 96, 64)
    write_image(train / "10_sks dog" / "portrait.jpg", 48, 80)
    (train / "10_sks dog" / "portrait.txt").write_text("a photo of sks dog\n\nsecond line\n", encoding="utf-8")
    write_image(train / "2_cat" / "square.webp", 64, 64, fmt="WEBP")
    write_image(train / "2_cat" / "UPPER.PNG", 32, 32)
    write_image(train / "2_cat" / "photo_x_1_2_3_4.bmp", 40, 40)
    (train / "2_cat" / "photo_x.txt").write_text("face crop caption", encoding="utf-8")
    write_image(tmp_path / "reg" / "1_dog" / "r.png", 64, 64)

    scan = scan_dataset(train, tmp_path / "reg", ".txt")

    assert [(s.repeats, s.class_tokens, s.is_reg) for s in scan.subsets] == [
        (10, "sks dog", False), (2, "cat", False), (1, "dog", True)]
    dog = {r.path.rsplit("/", 1)[1]: r for r in scan.subsets[0].images}
    assert dog["landscape.png"].size == (96, 64)
    assert (dog["landscape.png"].caption, dog["landscape.png"].caption_from_file) == ("sks dog", False)
    assert dog["portrait.jpg"].size == (48, 80)
    assert dog["portrait.jpg"].caption == "a photo of sks dog\nsecond line"
    cat = {r.path.rsplit("/", 1)[1]: r.caption for r in scan.subsets[1].images}
    assert cat == {"UPPER.PNG": "cat", "photo_x_1_2_3_4.bmp": "face crop caption", "square.webp": "cat"}
    assert scan.warnings == []


def test_exif_rotation_swaps_size(tmp_path):
    path = write_image(tmp_path / "rotated.jpg", 40, 20, fmt="JPEG", exif_orientation=6)
    assert read_image_size(path) == (20, 40)


def test_bad_files_are_skipped_with_a_named_warning(tmp_path):
    folder = tmp_path / "img" / "5_thing"
    write_image(folder / "good.png", 64, 64)
    (folder / "zero.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    full_png = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(full_png, format="PNG")
    (folder / "truncated.png").write_bytes(full_png.getvalue()[:-40])
    full_jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full_jpg, "JPEG")
    (folder / "truncated.jpg").write_bytes(full_jpg.getvalue()[: len(full_jpg.getvalue()) // 2])
    write_image(folder / "latin1.png", 64, 64)
    (folder / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    write_image(folder / "emptycap.png", 64, 64)
    (folder / "emptycap.txt").write_text("  \n", encoding="utf-8")
    (folder / "anim.gif").write_bytes(b"GIF89a")

    scan = scan_dataset(tmp_path / "img", None, ".txt")

    kept = sorted(r.path.rsplit("/", 1)[1] for r in scan.subsets[0].images)
    assert kept == ["emptycap.png", "good.png"]
    by_path = {w.path.rsplit("/", 1)[1]: w for w in scan.warnings}
    assert "zero-byte" in by_path["zero.png"].message
    assert "cannot be read" in by_path["garbage.jpg"].message
    assert "skipped" in by_path["truncated.png"].message
    assert "truncated" in by_path["truncated.jpg"].message
    assert "not UTF-8" in by_path["latin1.txt"].message and by_path["latin1.txt"].setting == "caption_extension"
    assert "empty" in by_path["emptycap.txt"].message
    assert ".gif" in by_path["anim.gif"].message
    assert {r.path.rsplit("/", 1)[1]: r.caption for r in scan.subsets[0].images}["emptycap.png"] == "thing"


def test_folder_problems(tmp_path):
    train = tmp_path / "img"
    write_image(train / "3_ok" / "a.png", 64, 64)
    (train / "2_empty").mkdir()
    write_image(train / "nameonly" / "b.png", 64, 64)
    write_image(train / "0_zero" / "c.png", 64, 64)
    write_image(train / "loose.png", 64, 64)

    scan = scan_dataset(train, None, ".caption")

    assert [s.class_tokens for s in scan.subsets] == ["ok"]
    text = "\n".join(messages(scan))
    assert "2_empty has no usable images" in text
    assert "nameonly is skipped" in text and "10_nameonly" in text
    assert "0_zero is skipped" in text
    assert "directly in" in text


def test_wrong_caption_extension_is_pointed_out(tmp_path):
    write_image(tmp_path / "img" / "1_x" / "a.png", 64, 64)
    (tmp_path / "img" / "1_x" / "a.txt").write_text("a caption", encoding="utf-8")
    scan = scan_dataset(tmp_path / "img", None, "")
    assert scan.subsets[0].images[0].caption == "x"
    assert any("set caption_extension to '.txt'" in m for m in messages(scan))


@pytest.mark.parametrize("layout, setting, words", [
    ("missing", "train_data_dir", "does not exist"),
    ("file", "train_data_dir", "is a file"),
    ("no_subfolders", "train_data_dir", "no sub-folder"),
    ("only_empty", "train_data_dir", "No usable training images"),
    ("blank", "train_data_dir", "No image folder"),
])
def test_fatal_train_folder_problems(tmp_path, layout, setting, words):
    root = tmp_path / "img"
    if layout == "file":
        root.write_text("x")
    elif layout == "no_subfolders":
        write_image(root / "a.png", 64, 64)
    elif layout == "only_empty":
        (root / "5_nothing").mkdir(parents=True)
    with pytest.raises(DataError) as caught:
        scan_dataset("" if layout == "blank" else root, None, ".txt")
    assert caught.value.setting == setting
    assert words in caught.value.message


def test_missing_reg_folder_is_an_error(tmp_path):
    write_image(tmp_path / "img" / "1_x" / "a.png", 64, 64)
    with pytest.raises(DataError) as caught:
        scan_dataset(tmp_path / "img", tmp_path / "nope", ".txt")
    assert caught.value.setting == "reg_data_dir" and str(tmp_path / "nope") in caught.value.message
