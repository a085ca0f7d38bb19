"""The declaration of one setting, and the problems validation reports.

A `Setting` is the single source of truth for a knob: the form, presets, validation, the job file, the CLI
and the LoRA file's metadata are all derived from these declarations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

Kind = Literal["str", "path", "text", "int", "float", "bool", "choice"]
Level = Literal["error", "warning"]

# Tabs of the page, in order. "weights", "blocks" and "conv" are the inner tabs of the Blocks/Conv tab.
TABS = ("model", "folders", "dataset", "basic", "advanced", "weights", "blocks", "conv", "samples")
# Sections of the typed job (``trainer.spec.sections``), by subject: each part of the trainer reads its own.
GROUPS = ("model", "data", "captions", "network", "optimisation", "noise_loss", "saving", "sampling", "logging",
          "launch")


class SettingError(ValueError):
    """A value that cannot be used, carrying the setting it blames as data (never parsed from the text)."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) with a job, naming the setting to blame when there is one."""

    setting: str | None
    message: str
    level: Level = "error"

    def __str__(self) -> str:
        where = f"{self.setting}: " if self.setting else ""
        return f"{self.level}: {where}{self.message}"


@dataclass(frozen=True)
class Setting:
    """One setting: its kohya_ss key, type, default, limits, words for people, and where the page shows it.

    - ``optional``: ``None`` (a blank field) is allowed and means what ``help`` says.
    - ``parser``: for text fields holding structured values (lists of numbers, "W,H"): a pure function that
      returns the parsed value or raises ``ValueError`` with a message a person can act on.
    - ``visible_when``: ``(other_key, values)``: the setting applies only while ``other_key`` is one of
      ``values``; otherwise the trainer ignores it and the page disables it, saying why (its value is kept).
    - ``implemented``: ``False`` while the trainer cannot honour it; validation then refuses any value other
      than the default instead of accepting and ignoring it.
    - ``group``: the section of the typed job that holds it (``GROUPS``), by subject rather than by tab.
    - ``secret``: never written to job files, presets, metadata or logs.
    - ``custom_choices``: a choice that also takes a dotted ``module.Class`` (kohya_ss's Optimizer list allows
      custom values, which sd-scripts imports); ``parser`` checks the spelling.
    """

    key: str
    kind: Kind
    default: Any
    label: str
    help: str
    tab: str
    group: str = ""
    section: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False
    parser: Callable[[str], Any] | None = field(default=None, compare=False)
    visible_when: tuple[str, tuple] | None = None
    implemented: bool = True
    secret: bool = False
    step: float | None = None
    custom_choices: bool = False

    def __post_init__(self) -> None:
        if self.tab not in TABS:
            raise ValueError(f"{self.key}: unknown tab {self.tab!r}")
        if self.group not in GROUPS:
            raise ValueError(f"{self.key}: unknown job section {self.group!r}")
        if self.kind == "choice" and self.default not in self.choices and not self.optional:
            raise ValueError(f"{self.key}: default {self.default!r} is not among its choices")

    def describe_range(self) -> str:
        """A short phrase saying which values are allowed, used in error messages and help."""
        if self.kind == "choice":
            more = ", or a module.Class" if self.custom_choices else ""
            return "one of " + ", ".join(str(c) for c in self.choices) + more
        if self.kind == "bool":
            return "true or false"
        if self.kind in ("int", "float"):
            noun = "a whole number" if self.kind == "int" else "a number"
            if self.minimum is not None and self.maximum is not None:
                return f"{noun} from {_num(self.minimum)} to {_num(self.maximum)}"
            if self.minimum is not None:
                return f"{noun} ≥ {_num(self.minimum)}"
            if self.maximum is not None:
                return f"{noun} ≤ {_num(self.maximum)}"
            return noun
        return "text"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
