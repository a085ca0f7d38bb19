"""Presets: named bundles of settings, built in (``presets/`` of the project) or saved by the user.

A preset is a sparse TOML file (only what differs from the defaults, ``spec_version`` first) or a JSON file. A
JSON file without ``spec_version`` is taken for a kohya_ss config and imported through ``trainer.kohya``, so
kohya_ss presets and saved configs can be picked like our own. The display name of a preset is its file name
without the extension. Secrets are never written. Applying a preset starts from the defaults, keeps the
current model, folders, sample prompts and secrets unless the preset sets them, then takes the preset's values.
"""
from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.kohya import KohyaImportError, Unmapped, explicit_blank_rates, import_kohya_config
from trainer.spec import SETTINGS, JobError, defaults, job_from_values, job_to_values, sparse_values, toml_text

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "presets"
PRESET_SUFFIXES = (".toml", ".json")
# Settings a preset leaves alone unless it names them: where the model and data are, and what is personal.
KEPT_TABS = ("model", "folders")
KEPT_KEYS = ("sample_prompts",)
UNSAFE_NAME_CHARS = re.compile(r"[^\w .,()+-]")
MAX_NAME_LENGTH = 80


class PresetError(ValueError):
    """A preset that cannot be read, saved or used; the message names the file or the setting."""


@dataclass(frozen=True)
class PresetInfo:
    name: str
    path: Path
    builtin: bool


@dataclass
class PresetLoad:
    """What reading a preset file gave: its settings, and for a kohya_ss config what was not imported."""

    values: dict[str, Any]
    from_kohya: bool = False
    unmapped: list[Unmapped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _preset_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PRESET_SUFFIXES]
    return sorted(files, key=lambda p: p.stem.lower())


def list_presets(user_dir: str | Path | None, builtin_dir: str | Path = BUILTIN_DIR) -> list[PresetInfo]:
    """Built-in presets, then the user's (each group by name). A missing user folder simply has none."""
    builtin = [PresetInfo(p.stem, p, True) for p in _preset_files(Path(builtin_dir))]
    if user_dir is None or Path(user_dir).resolve() == Path(builtin_dir).resolve():
        return builtin
    return builtin + [PresetInfo(p.stem, p, False) for p in _preset_files(Path(user_dir))]


def find_preset(name: str, user_dir: str | Path | None, builtin_dir: str | Path = BUILTIN_DIR) -> PresetInfo:
    """The preset called ``name`` (a user preset with a built-in's name cannot exist; see save_preset)."""
    for info in list_presets(user_dir, builtin_dir):
        if info.name == name:
            return info
    raise PresetError(f"there is no preset called {name!r}")


def read_preset(path: str | Path) -> PresetLoad:
    """Read a preset file: our TOML or JSON (checked strictly), or a kohya_ss JSON config (imported)."""
    path = Path(path)
    if path.suffix.lower() not in PRESET_SUFFIXES:
        raise PresetError(f"{path}: a preset is a .toml or .json file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise PresetError(f"{path}: cannot be read ({error.strerror or error})") from None
    if path.suffix.lower() == ".toml":
        return PresetLoad(_checked(_parse_toml(raw, path), path))
    data = _parse_json(raw, path)
    if "spec_version" in data:
        return PresetLoad(_checked(data, path))
    try:
        result = import_kohya_config(data)
    except KohyaImportError as error:
        raise PresetError(f"{path}: {error}") from None
    return PresetLoad(result.values, True, result.unmapped, result.notes)


def load_preset(path: str | Path) -> dict[str, Any]:
    """The settings a preset file sets (sparse; ``spec_version`` removed). Raises PresetError."""
    return read_preset(path).values


def _parse_toml(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PresetError(f"{path} is not valid TOML: {error}") from None
    except RecursionError:
        raise PresetError(f"{path}: its TOML is nested too deeply to be a preset") from None


def _parse_json(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PresetError(f"{path} is not valid JSON: {error}") from None
    except RecursionError:
        raise PresetError(f"{path}: its JSON is nested too deeply to be a preset") from None
    if not isinstance(data, dict):
        raise PresetError(f"{path}: expected a JSON object of settings")
    return data


def _checked(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Our own preset: every key must be a setting with a valid value (the job model says which is not)."""
    try:
        job_from_values(data)
    except JobError as error:
        details = "; ".join(str(p) for p in error.problems)
        raise PresetError(f"{path}: {details}") from None
    return {key: value for key, value in data.items() if key != "spec_version"}


def safe_file_stem(name: str) -> str:
    """A file name from a preset name: letters, digits, spaces and . , ( ) + - _ kept, others become _."""
    stem = UNSAFE_NAME_CHARS.sub("_", name.strip())[:MAX_NAME_LENGTH].strip(" .")
    if not stem or not any(ch.isalnum() for ch in stem):
        raise PresetError(f"{name!r} cannot be a preset name: use letters or digits")
    return stem


def comment_safe(name: str) -> str:
    """The name on one line of printable characters, so that it stays inside the file's comment line (a line
    break in a name typed through the API would otherwise start a line of settings)."""
    return "".join(ch for ch in " ".join(name.split()) if ch.isprintable())


def save_preset(name: str, values: dict[str, Any], user_dir: str | Path,
                builtin_dir: str | Path = BUILTIN_DIR) -> Path:
    """Write the settings that differ from the defaults as ``<user_dir>/<name>.toml`` and return its path.

    Secrets are never written. A name that a built-in preset has is refused; an existing user preset of the
    same name is replaced. Invalid values are refused with the settings named.
    """
    stem = safe_file_stem(name)
    builtin_names = {info.name.lower() for info in list_presets(None, builtin_dir)}
    if stem.lower() in builtin_names:
        raise PresetError(f"{name!r} is the name of a built-in preset; choose another name")
    user_dir = Path(user_dir)
    if user_dir.resolve() == Path(builtin_dir).resolve():
        raise PresetError("user presets cannot be saved into the built-in presets folder")
    try:
        job = job_from_values(explicit_blank_rates(values))
    except JobError as error:
        raise PresetError(f"preset {name!r} not saved: " + "; ".join(str(p) for p in error.problems)) from None
    text = f"# LoRA Loom preset: {comment_safe(name)}\n" + toml_text(sparse_values(job_to_values(job)))
    user_dir.mkdir(parents=True, exist_ok=True)
    path = user_dir / f"{stem}.toml"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def kept_keys() -> tuple[str, ...]:
    """Settings that survive applying a preset that does not set them: model, folders, prompts, secrets."""
    return tuple(s.key for s in SETTINGS if s.tab in KEPT_TABS or s.key in KEPT_KEYS or s.secret)


def apply_preset(current_values: dict[str, Any], preset_values: dict[str, Any]) -> dict[str, Any]:
    """All settings after picking a preset: the defaults, then the current model / folder paths, sample
    prompts and secrets, then everything the preset sets. A blank path or prompt in the preset (kohya_ss
    configs carry "" for them) does not wipe the current one; a filled-in one wins."""
    kept = kept_keys()
    result = defaults()
    result.update({key: current_values[key] for key in kept if key in current_values})
    for key, value in preset_values.items():
        if key == "spec_version" or (key in kept and value in ("", None)):
            continue
        result[key] = value
    return result
