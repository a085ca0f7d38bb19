"""The presets row's logic: list, load, save and kohya_ss import, as plain functions (no gradio).

The real work lives in ``trainer.presets`` and ``trainer.kohya``. Until those land, a small local stand-in
lists and reads JSON/TOML presets so the row works; the kohya import then says it is not available.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

from gui.runs import PROJECT_ROOT

BUILTIN_PRESETS_DIR = PROJECT_ROOT / "presets"


class PresetChoice(NamedTuple):
    label: str
    path: str


def _presets_module():
    try:
        from trainer import presets
    except ImportError:
        return None
    return presets


def preset_choices(user_dir: Path) -> list[PresetChoice]:
    """Built-in presets first, then the user's, labelled 'user: name'."""
    module = _presets_module()
    if module is not None:
        infos = module.list_presets(Path(user_dir))
        return [PresetChoice(i.name if i.builtin else f"user: {i.name}", str(i.path)) for i in infos]
    found = [PresetChoice(p.stem, str(p)) for p in _preset_files(BUILTIN_PRESETS_DIR)]
    return found + [PresetChoice(f"user: {p.stem}", str(p)) for p in _preset_files(Path(user_dir))]


def _preset_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".json", ".toml") and p.is_file())


def load_preset_values(path: str, current: dict[str, Any]) -> dict[str, Any]:
    """``current`` with the preset's values applied (a preset only holds what differs from defaults)."""
    module = _presets_module()
    if module is not None:
        return dict(module.apply_preset(current, module.load_preset(Path(path))))
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    preset = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    preset.pop("spec_version", None)
    return {**current, **preset}


def save_preset_values(name: str, values: dict[str, Any], user_dir: Path) -> Path:
    """Save the settings that differ from the defaults as a user preset; returns its file."""
    if not name or not name.strip():
        raise ValueError("Type a name for the preset first.")
    module = _presets_module()
    if module is not None:
        return Path(module.save_preset(name.strip(), values, Path(user_dir)))
    from trainer.spec import sparse_values

    safe = "".join(c if c.isalnum() or c in "-_ ." else "_" for c in name.strip())
    path = Path(user_dir) / f"{safe}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sparse_values(values), indent=2, sort_keys=True), encoding="utf-8")
    return path


class KohyaImport(NamedTuple):
    values: dict[str, Any]
    report: str  # Markdown: what was imported, what was not and why


def import_kohya_values(path: str, current: dict[str, Any]) -> KohyaImport:
    """Apply a kohya_ss config file on top of ``current``. Raises ValueError with a message for the page."""
    try:
        from trainer.kohya import KohyaImportError, import_kohya_config
    except ImportError:
        raise ValueError("Importing kohya_ss configs is not available in this build (trainer.kohya is missing).") from None
    try:
        result = import_kohya_config(Path(path))
    except KohyaImportError as error:
        raise ValueError(f"{Path(path).name} was not imported: {error}") from None
    return KohyaImport({**current, **result.values}, import_report(Path(path).name, result))


def import_report(file_name: str, result) -> str:
    """Markdown listing what was imported and every key that was not, with its reason (nothing is dropped silently)."""
    lines = [f"**Imported {len(result.values)} settings from {file_name}.**"]
    if result.unmapped:
        lines.append(f"\n**Not imported ({len(result.unmapped)}):**\n")
        lines.append("| key | value | why |\n|---|---|---|")
        for key, value, reason in result.unmapped:
            lines.append(f"| `{key}` | `{_short(value)}` | {reason} |")
    for note in result.notes:
        lines.append(f"\n- {note}")
    return "\n".join(lines)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"
