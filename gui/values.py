"""Pure helpers between the form's raw widget values and the schema's settings (no gradio here).

Widgets hand back loosely typed values (a Number gives 2.0 for an int, a blank box gives None, a Dropdown
may give "75" for the choice 75); the job model is strict, so ``coerce_value`` turns each raw value into the
setting's own type where that is lossless, and leaves anything else for validation to name.
"""
from __future__ import annotations

from typing import Any, Iterable

from trainer.spec import SETTINGS, Problem, Setting

SECRET_ENVIRONMENT = {"wandb_api_key": "WANDB_API_KEY"}


def coerce_value(setting: Setting, raw: Any) -> Any:
    """The widget value ``raw`` in ``setting``'s type; values that cannot convert are returned as they are."""
    kind = setting.kind
    if kind == "bool":
        return bool(raw)
    if kind in ("str", "path", "text"):
        return "" if raw is None else str(raw)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if kind == "int":
        return _as_int(raw)
    if kind == "float":
        return _as_float(raw)
    if kind == "choice":
        for choice in setting.choices:
            if str(choice) == str(raw):
                return choice
    return raw


def _as_int(raw: Any) -> Any:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            return raw
    return raw


def _as_float(raw: Any) -> Any:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            return raw
    return raw


def coerce_values(raw_by_key: dict[str, Any]) -> dict[str, Any]:
    """Every known setting in ``raw_by_key`` coerced; unknown keys are dropped (the form only has known ones)."""
    by_key = {s.key: s for s in SETTINGS}
    return {key: coerce_value(by_key[key], raw) for key, raw in raw_by_key.items() if key in by_key}


def split_secrets(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(values without secrets, {ENV_NAME: secret}) — secrets reach the trainer only through its environment."""
    secrets = {SECRET_ENVIRONMENT[k]: str(v) for k, v in values.items() if k in SECRET_ENVIRONMENT and v}
    public = {k: v for k, v in values.items() if not _is_secret(k)}
    return public, secrets


def _is_secret(key: str) -> bool:
    return any(s.key == key and s.secret for s in SETTINGS)


def is_visible(setting: Setting, values: dict[str, Any]) -> bool:
    """A setting with ``visible_when=(other, allowed)`` shows only while ``values[other]`` is allowed."""
    if setting.visible_when is None:
        return True
    other, allowed = setting.visible_when
    return values.get(other) in allowed


def settings_of_tab(tab: str) -> list[Setting]:
    return [s for s in SETTINGS if s.tab == tab]


def sections_of(settings: Iterable[Setting]) -> list[tuple[str, list[Setting]]]:
    """Settings grouped by section, sections in order of first appearance."""
    groups: dict[str, list[Setting]] = {}
    for setting in settings:
        groups.setdefault(setting.section, []).append(setting)
    return list(groups.items())


def problems_by_setting(problems: Iterable[Problem]) -> dict[str, list[Problem]]:
    """Problems keyed by the setting they blame (errors before warnings); general ones under ``""``."""
    grouped: dict[str, list[Problem]] = {}
    for problem in sorted(problems, key=lambda p: p.level != "error"):
        grouped.setdefault(problem.setting or "", []).append(problem)
    return grouped


def field_error_text(key: str, problems: list[Problem]) -> str:
    """The small note under a field, naming the setting: '❌ train_batch_size: must be …'."""
    icons = {"error": "❌", "warning": "⚠️"}
    return "\n\n".join(f"{icons.get(p.level, '•')} `{key}`: {p.message}" for p in problems)


def problem_messages(problems: Iterable[Problem]) -> list[tuple[str, str]]:
    """(level, text) pairs for the messages panel."""
    return [(p.level, f"{p.setting}: {p.message}" if p.setting else p.message) for p in problems]


def has_errors(problems: Iterable[Problem]) -> bool:
    return any(p.level == "error" for p in problems)


def range_note(setting: Setting) -> str:
    """' (1–64)'-style suffix for number help, since range checks happen in validation, not in the widget."""
    if setting.kind not in ("int", "float") or (setting.minimum is None and setting.maximum is None):
        return ""
    return f" Allowed: {setting.describe_range()}" + ("; blank allowed." if setting.optional else ".")
