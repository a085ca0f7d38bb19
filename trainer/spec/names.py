"""Text settings that become parts of file paths: the output name and the caption extension.

A name typed into the page or a job file must stay a single file name inside its folder: no separators, no
``..``, nothing hidden, no control characters, nothing that Windows cannot store. The parsers are pure and
raise ``ValueError`` with a message a person can act on; :func:`path_inside` is the last guard where a name
is joined to its folder.
"""
from __future__ import annotations

from pathlib import Path

MAX_NAME_LENGTH = 120  # file systems allow 255 bytes; step files and "-state.tmp" add about 30
NOT_IN_FILE_NAMES = '/\\<>:"|?*'
MAX_EXTENSION_LENGTH = 32  # kohya_ss writes ".none-use-foldername"


def _control_characters(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def parse_output_name(text: str) -> str:
    """The LoRA's file name without extension: one plain file name (``my_lora``), never a path."""
    name = str(text)
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} fit in a file name with "
                         "the suffixes added to it")
    if not name.strip():
        raise ValueError("is blank: the file would be called '.safetensors'; type a name such as my_lora")
    if name != name.strip():
        raise ValueError(f"{name!r} starts or ends with a space; remove it")
    bad = sorted({ch for ch in name if ch in NOT_IN_FILE_NAMES})
    if bad or name in (".", ".."):
        raise ValueError(f"{name!r} must be a file name, not a path (no {' '.join(bad) or '..'}): the files are "
                         "written into the output folder, never outside it")
    if name.startswith("."):
        raise ValueError(f"{name!r} starts with a dot: the files would be hidden; start it with a letter or digit")
    if _control_characters(name):
        raise ValueError("holds a line break or another control character")
    return name


def parse_tracker_name(text: str) -> str:
    """The tracker's project name, which also names a log sub-folder: blank (the default) or a plain name."""
    return parse_output_name(text) if str(text) else ""


def parse_caption_extension(text: str) -> str:
    """A caption file's extension (``.txt``; blank means .caption): a short suffix, never a path."""
    ext = str(text)
    if len(ext) > MAX_EXTENSION_LENGTH:
        raise ValueError(f"is {len(ext)} characters long; an extension such as .txt is expected")
    if any(ch in NOT_IN_FILE_NAMES for ch in ext) or ".." in ext:
        raise ValueError(f"{ext!r} must be an extension such as .txt, not a path")
    if _control_characters(ext) or ext != ext.strip():
        raise ValueError(f"{ext!r} holds spaces or control characters; use an extension such as .txt")
    return ext


def path_inside(folder: Path, name: str) -> Path:
    """``folder / name``, refused (ValueError) when it would lie anywhere but directly in ``folder``."""
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise ValueError(f"{name!r} would be written outside {folder}")
    return path

