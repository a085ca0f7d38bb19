"""Scanning a kohya-style dataset: ``train_data_dir/10_name/*.png`` plus captions.

Semantics follow sd-scripts (``config_util.generate_dreambooth_subsets_config_by_subdirs`` and
``DreamBoothDataset.read_caption``): every immediate sub-folder named ``<repeats>_<class tokens>`` is
one subset; images are listed non-recursively; a caption is ``<stem><caption_extension>`` (or the
face-crop name, the stem minus its last four ``_`` parts). The scan only opens image headers
(size and EXIF orientation), never decodes pixels, so it is fast enough for the plan panel.

Deliberate differences from sd-scripts, each reported as a warning instead of being silent:
an unreadable, zero-byte or truncated image is skipped (sd-scripts crashes later); a caption that is
not UTF-8 skips its image; an empty caption file falls back to the class tokens (sd-scripts asserts);
the size is the one after EXIF rotation (sd-scripts ignores EXIF and trains phone photos sideways);
``caption_extension`` without its leading dot ("txt") is read as ".txt".
"""
from __future__ import annotations

import os
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError, features

BASE_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Extensions a person may drop in a folder that we cannot read: worth a warning, not silence.
UNREADABLE_IMAGE_EXTENSIONS = (".gif", ".tif", ".tiff", ".heic", ".heif", ".jxl", ".psd")
DEFAULT_CAPTION_EXTENSION = ".caption"
EXIF_ORIENTATION_TAG = 0x0112
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# What Pillow raises for unreadable files (RuntimeError: a PNG verify() that could not run to its end).
UNREADABLE_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, RuntimeError,
                           Image.DecompressionBombError)


class DataError(Exception):
    """A dataset problem a person can act on: the message names the setting and the file or folder."""

    def __init__(self, message: str, setting: str = "", path: str | os.PathLike | None = None):
        super().__init__(message)
        self.message = message
        self.setting = setting
        self.path = str(path) if path is not None else None


class DataWarning(NamedTuple):
    """A problem training can go on with (the image or folder is skipped, or a fallback is used)."""

    message: str
    setting: str
    path: str | None


@dataclass(frozen=True)
class ImageRecord:
    """One image found by the scan: where it is, its size after EXIF rotation, and its raw caption.

    ``caption`` is the caption file's non-empty lines, stripped, joined with "\\n" (caption
    processing picks the first line, or a random one with wildcards), or the folder's class tokens
    when there is no caption file (``caption_from_file`` is then False).
    """

    path: str
    size: tuple[int, int]
    caption: str
    caption_from_file: bool


@dataclass(frozen=True)
class SubsetOptions:
    """A dataset-config subset's own caption and flip options (``dataset_config``); an ``N_name`` folder has
    none and takes the job's."""

    shuffle_caption: bool
    keep_tokens: int
    flip_aug: bool
    alpha_mask: bool = False  # the images' alpha channels are loss masks
    mask_dir: str | None = None  # sd-scripts' conditioning_data_dir: a mask image per image, same stem


@dataclass
class Subset:
    """One ``<repeats>_<class tokens>`` folder (or one subset of a dataset config)."""

    folder: str
    repeats: int
    class_tokens: str
    is_reg: bool
    images: list[ImageRecord] = field(default_factory=list)
    options: SubsetOptions | None = None


@dataclass
class DatasetScan:
    """What the scan found: the subsets (train then reg) and every warning, in folder order."""

    subsets: list[Subset]
    warnings: list[DataWarning]


def image_extensions() -> tuple[str, ...]:
    """The lower-case extensions read as images: sd-scripts' list, plus .avif when Pillow reads it."""
    extra = (".avif",) if features.check("avif") else ()
    return BASE_IMAGE_EXTENSIONS + extra


def normalize_caption_extension(caption_extension: str | None) -> str:
    """Blank means ".caption" (sd-scripts' default); a missing leading dot is added."""
    ext = (caption_extension or "").strip()
    if not ext:
        return DEFAULT_CAPTION_EXTENSION
    return ext if ext.startswith(".") else "." + ext


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """``"10_sks dog"`` → ``(10, "sks dog")``; ``"5_a_b"`` → ``(5, "a_b")``; no integer prefix → None."""
    repeats_text, _, class_tokens = name.partition("_")
    try:
        return int(repeats_text), class_tokens
    except ValueError:
        return None


def scan_dataset(train_data_dir, reg_data_dir=None, caption_extension: str | None = ".caption") -> DatasetScan:
    """Scan the image folder (and the optional regularization folder) without decoding pixels.

    Raises DataError when training cannot go on (a missing folder, no usable images);
    everything else becomes a warning in the result.
    """
    if not train_data_dir or not str(train_data_dir).strip():
        raise DataError("No image folder is set: choose the folder that holds your 10_name sub-folders.",
                        "train_data_dir")
    ext = normalize_caption_extension(caption_extension)
    found_warnings: list[DataWarning] = []
    subsets = _scan_root(Path(train_data_dir), "train_data_dir", False, ext, found_warnings)
    if not any(s.images for s in subsets):
        raise DataError(f"No usable training images in {train_data_dir}: it needs sub-folders named like "
                        f"'10_name' holding .png/.jpg/.webp/.bmp images.", "train_data_dir", train_data_dir)
    if reg_data_dir and str(reg_data_dir).strip():
        subsets += _scan_root(Path(reg_data_dir), "reg_data_dir", True, ext, found_warnings)
    return DatasetScan([s for s in subsets if s.images], found_warnings)


def _scan_root(root: Path, setting: str, is_reg: bool, caption_ext: str,
               found_warnings: list[DataWarning]) -> list[Subset]:
    if not root.exists():
        raise DataError(f"The folder {root} does not exist.", setting, root)
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder.", setting, root)
    exts = image_extensions()
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts]
    if loose:
        found_warnings.append(DataWarning(
            f"{len(loose)} image(s) lie directly in {root} and are not used: put them in a sub-folder "
            f"named like '10_name' (10 = repeats).", setting, str(root)))
    subsets = []
    # Hidden folders (.ipynb_checkpoints, .cache) are tool litter, not subsets.
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        subset = _scan_subset(folder, setting, is_reg, caption_ext, found_warnings)
        if subset is not None:
            subsets.append(subset)
    if not subsets:
        raise DataError(f"{root} has no sub-folder named like '10_name' (repeats, underscore, name).",
                        setting, root)
    return subsets


def _scan_subset(folder: Path, setting: str, is_reg: bool, caption_ext: str,
                 found_warnings: list[DataWarning]) -> Subset | None:
    parsed = parse_folder_name(folder.name)
    if parsed is None:
        found_warnings.append(DataWarning(
            f"Folder {folder} is skipped: its name must start with a repeat count, like '10_{folder.name}'.",
            setting, str(folder)))
        return None
    repeats, class_tokens = parsed
    if repeats < 1:
        found_warnings.append(DataWarning(
            f"Folder {folder} is skipped: its repeat count {repeats} must be at least 1.", setting, str(folder)))
        return None
    subset = Subset(str(folder), repeats, class_tokens, is_reg)
    for path in _list_images(folder, setting, found_warnings):
        record = _read_image_record(path, class_tokens, caption_ext, setting, found_warnings)
        if record is not None:
            subset.images.append(record)
    if not subset.images:
        found_warnings.append(DataWarning(f"Folder {folder} has no usable images and is skipped.",
                                          setting, str(folder)))
    _warn_other_caption_extension(subset, caption_ext, found_warnings)
    return subset


def _warn_other_caption_extension(subset: Subset, caption_ext: str, found_warnings: list[DataWarning]) -> None:
    """The classic mistake: captions saved as .txt while caption_extension is ".caption" (or the reverse)."""
    without = [Path(r.path) for r in subset.images if not r.caption_from_file]
    for other in (".txt", ".caption"):
        if other == caption_ext:
            continue
        matching = [p for p in without if p.with_suffix(other).is_file()]
        if matching:
            found_warnings.append(DataWarning(
                f"{len(matching)} image(s) in {subset.folder} have no {caption_ext} caption but a {other} file "
                f"beside them (e.g. {matching[0].with_suffix(other).name}); set caption_extension to "
                f"'{other}' to use those captions.", "caption_extension", subset.folder))


def _list_images(folder: Path, setting: str, found_warnings: list[DataWarning]) -> list[Path]:
    exts = image_extensions()
    images = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        suffix = path.suffix.lower()
        if suffix in exts:
            images.append(path)
        elif suffix in UNREADABLE_IMAGE_EXTENSIONS:
            found_warnings.append(DataWarning(
                f"{path} is skipped: {suffix} images are not read (use {', '.join(exts)}).", setting, str(path)))
    return images


def _read_image_record(path: Path, class_tokens: str, caption_ext: str, setting: str,
                       found_warnings: list[DataWarning]) -> ImageRecord | None:
    try:
        size = read_image_size(path)
    except DataError as err:
        found_warnings.append(DataWarning(f"{err.message} The image is skipped.", setting, str(path)))
        return None
    try:
        caption, from_file = read_caption(path, caption_ext, class_tokens, found_warnings, setting)
    except DataError as err:
        found_warnings.append(DataWarning(f"{err.message} The image is skipped.", "caption_extension", err.path))
        return None
    return ImageRecord(str(path), size, caption, from_file)


def read_image_size(path) -> tuple[int, int]:
    """(width, height) after EXIF rotation, from the header; checks the file is complete.

    PNG and most formats are checked with Pillow's ``verify()`` (chunk CRCs, no decoding);
    JPEG is checked for its end-of-image marker, which a truncated download lacks.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise DataError(f"Image {path} is an empty (zero-byte) file.", "train_data_dir", path)
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")  # DecompressionBombWarning etc.: size is what we want here
            with Image.open(path) as image:
                width, height = image.size
                orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
                image_format = image.format
            with Image.open(path) as image:  # verify() must come straight after open
                image.verify()
    except UNREADABLE_IMAGE_ERRORS as err:
        raise DataError(f"Image {path} cannot be read ({type(err).__name__}: {err}).",
                        "train_data_dir", path) from err
    if image_format == "JPEG" and not _jpeg_has_end_marker(path):
        raise DataError(f"Image {path} is truncated (the JPEG data stops before its end marker).",
                        "train_data_dir", path)
    if width < 1 or height < 1:
        raise DataError(f"Image {path} has no pixels ({width}x{height}).", "train_data_dir", path)
    return (height, width) if orientation in ROTATED_ORIENTATIONS else (width, height)


def _jpeg_has_end_marker(path: Path, tail_bytes: int = 4096) -> bool:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - tail_bytes))
        return b"\xff\xd9" in handle.read()


def caption_candidates(image_path, caption_ext: str) -> list[Path]:
    """``<stem><ext>``, then the face-crop name (stem minus its last 4 ``_`` parts) if it has ≥ 5 parts."""
    image_path = Path(image_path)
    candidates = [image_path.with_suffix(caption_ext)]
    parts = image_path.stem.split("_")
    if len(parts) >= 5:
        candidates.append(image_path.with_name("_".join(parts[:-4]) + caption_ext))
    return candidates


def read_caption(image_path, caption_ext: str, class_tokens: str,
                 found_warnings: list[DataWarning], setting: str = "train_data_dir") -> tuple[str, bool]:
    """The raw caption of an image and whether it came from a file (else the class tokens).

    Raises DataError (naming the caption file) when the file is not UTF-8 text.
    """
    for candidate in caption_candidates(image_path, caption_ext):
        if not candidate.is_file():
            continue
        try:
            text = candidate.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataError(f"Caption file {candidate} is not UTF-8 text ({err.reason} at byte {err.start}); "
                            f"re-save it as UTF-8.", "caption_extension", candidate) from err
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return "\n".join(lines), True
        found_warnings.append(DataWarning(
            f"Caption file {candidate} is empty; the image trains with the folder's class tokens "
            f"'{class_tokens}'.", "caption_extension", str(candidate)))
        return class_tokens, False
    if not class_tokens:
        found_warnings.append(DataWarning(
            f"{image_path} has no caption file ({caption_ext}) and its folder name gives no class tokens; "
            f"it trains with an empty caption.", "caption_extension", str(image_path)))
    return class_tokens, False
