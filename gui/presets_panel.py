"""The presets row's logic: list, load, save and kohya_ss import, as plain functions (no gradio).

The work is done by ``trainer.presets`` and ``trainer.kohya``; this module turns their results into what the
page shows, above all a report of every kohya_ss key that was not imported (never dropped silently).
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from trainer import presets
from trainer.kohya import KohyaImportError, import_kohya_config


class PresetChoice(NamedTuple):
    label: str
    path: str


class Applied(NamedTuple):
    values: dict[str, Any]  # every setting after applying
    report: str  # Markdown for the presets row


def preset_choices(user_dir: Path) -> list[PresetChoice]:
    """Built-in presets first, then the user's, labelled 'user: name'."""
    return [PresetChoice(i.name if i.builtin else f"user: {i.name}", str(i.path))
            for i in presets.list_presets(Path(user_dir))]


def load_preset_values(path: str, current: dict[str, Any]) -> Applied:
    """``current`` with the preset applied. A kohya_ss JSON in the list is imported, with its report.
    Raises ValueError (PresetError) with a message naming the file."""
    loaded = presets.read_preset(Path(path))
    values = presets.apply_preset(current, loaded.values)
    report = f"Loaded preset **{Path(path).stem}**."
    if loaded.from_kohya:
        report = import_report(Path(path).name, loaded.values, loaded.unmapped, loaded.notes)
    return Applied(values, report)


def save_preset_values(name: str, values: dict[str, Any], user_dir: Path) -> Path:
    """Save what differs from the defaults as a user preset; returns its file. Raises ValueError."""
    if not name or not name.strip():
        raise ValueError("Type a name for the preset first.")
    return presets.save_preset(name.strip(), values, Path(user_dir))


def import_kohya_values(path: str, current: dict[str, Any]) -> Applied:
    """Apply a kohya_ss config file on top of ``current``. Raises ValueError with a message for the page."""
    try:
        result = import_kohya_config(Path(path))
    except KohyaImportError as error:
        raise ValueError(f"{Path(path).name} was not imported: {error}") from None
    values = presets.apply_preset(current, result.values)
    return Applied(values, import_report(Path(path).name, result.values, result.unmapped, result.notes))


def export_job_file(values: dict[str, Any]) -> Path:
    """``values`` written as a job file (the same text Start writes into a run folder) in a new temporary
    folder, named after the output name. Raises ValueError naming every setting at fault."""
    from trainer.spec import JobError, job_from_values, write_job_toml

    try:
        job_from_values(values)
    except JobError as error:
        raise ValueError("The job was not saved; fix these first: "
                         + "; ".join(str(p) for p in error.problems)) from None
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(values.get("output_name") or "")).strip("._") or "job"
    return write_job_toml(values, Path(tempfile.mkdtemp(prefix="loom-job-")) / f"{name}.toml")


def import_report(file_name: str, imported: dict, unmapped: list, notes: list[str]) -> str:
    """Markdown: how many settings came in, a table of every key that did not and why, then the notes.
    Keys that only held kohya_ss's off/default values are listed in one line (nothing was lost there)."""
    lines = [f"**Imported {len(imported)} settings from {file_name}.**"]
    lost = [u for u in unmapped if not getattr(u, "neutral", False)]
    neutral = [u.key for u in unmapped if getattr(u, "neutral", False)]
    if lost:
        lines += [f"\n**Not imported ({len(lost)}):**\n", "| key | value | why |", "|---|---|---|"]
        lines += [f"| `{u.key}` | `{_short(u.value)}` | {u.reason} |" for u in lost]
    if neutral:
        lines.append(f"\nNot imported, but only kohya_ss's off/default values (nothing lost): "
                     f"{', '.join(f'`{k}`' for k in neutral)}")
    lines += [f"\n- {note}" for note in notes]
    return "\n".join(lines)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"
