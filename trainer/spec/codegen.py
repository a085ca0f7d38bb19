"""Writes ``trainer/spec/sections.py``, the typed job, from the settings catalog.

The catalog stays the one declaration; this turns it into plain frozen dataclasses, one per job section
(``Setting.group``), so that a type checker sees every key the trainer reads and finds a misspelt one.
``python -m trainer.spec.codegen`` rewrites the file; a test fails when the file and the catalog differ.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .catalog import SETTINGS
from .setting import GROUPS, Setting

TARGET = Path(__file__).with_name("sections.py")
_PLAIN_TYPES = {"str": "str", "path": "str", "text": "str", "int": "int", "float": "float", "bool": "bool"}
_TITLES = {"model": "The base model", "data": "Images, folders, buckets and the data loader",
           "captions": "Caption processing and text encoding", "network": "The LoRA network",
           "optimisation": "Optimizer, learning rates, schedule and run length",
           "noise_loss": "Noise and loss weighting", "saving": "Output files and training state",
           "sampling": "Sample images during training", "logging": "Logs and trackers",
           "launch": "Precision, memory and process settings"}


def class_name(group: str) -> str:
    return "".join(part.capitalize() for part in group.split("_")) + "Section"


def annotation(setting: Setting) -> str:
    if setting.kind == "choice" and setting.custom_choices:
        text = "str"
    elif setting.kind == "choice":
        text = "Literal[" + ", ".join(repr(choice) for choice in setting.choices) + "]"
    else:
        text = _PLAIN_TYPES[setting.kind]
    return f"{text} | None" if setting.optional else text


def _section_source(group: str) -> list[str]:
    lines = ["", "", "@dataclass(frozen=True, slots=True)", f"class {class_name(group)}:",
             f'    """{_TITLES[group]}."""', ""]
    lines += [f"    {s.key}: {annotation(s)}" for s in SETTINGS if s.group == group]
    return lines


def source() -> str:
    lines = [
        '"""The job, typed by section: GENERATED from the catalog by ``python -m trainer.spec.codegen``; do not edit.',
        "",
        "Each part of the trainer reads its own section (``job.network.network_dim``); rules derived from a section",
        "are in ``trainer.spec.rules``. The job file stays flat TOML with kohya_ss's key names.",
        '"""',
        "from __future__ import annotations",
        "",
        "from dataclasses import dataclass",
        "from typing import Any, Literal",
    ]
    for group in GROUPS:
        lines += _section_source(group)
    lines += ["", "", "SECTION_CLASSES: dict[str, Any] = {"]
    lines += [f"    {group!r}: {class_name(group)}," for group in GROUPS]
    lines += ["}", "SECTION_OF_KEY: dict[str, str] = {"]
    lines += [f"    {s.key!r}: {s.group!r}," for s in SETTINGS]
    lines += ["}", "", "", "@dataclass(frozen=True, slots=True)", "class Job:",
              '    """A validated job: every setting, in its section."""', "", "    spec_version: int"]
    lines += [f"    {group}: {class_name(group)}" for group in GROUPS]
    lines += ["", "    def get(self, key: str) -> Any:",
              '        """A setting by its key, for code that walks the catalog (the form, checks, metadata)."""',
              "        return getattr(getattr(self, SECTION_OF_KEY[key]), key)", ""]
    return "\n".join(lines)


def main() -> int:
    TARGET.write_text(source(), encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
