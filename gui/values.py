"""Pure helpers between the form's raw widget values and the schema's settings (no gradio here).

The form's one promise: what a job holds is what the page gives back, whatever was opened or left alone.
``display_value`` is what a setting's widget shows, ``coerce_value`` turns the widget's value back into the
setting's type, and ``coerce_value(s, display_value(s, v)) == v`` for every value the job model accepts
(tested for every setting). Numbers are shown as text, not in number inputs: a browser number input turns
a blank into 0 when it is drawn, so merely opening a tab changed the job. Anything that cannot convert
losslessly is returned as it is, for validation to name.
"""
from __future__ import annotations

from typing import Any, Iterable

from trainer.spec import SETTINGS, SETTINGS_BY_KEY, Problem, Setting

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


def display_value(setting: Setting, value: Any) -> Any:
    """What ``setting``'s widget shows for ``value``: numbers as text (blank for None), text as it is, a choice
    or a flag as itself. A choice the dropdown cannot hold (an unknown one from a hand-edited job) shows blank;
    validation names it in the messages panel."""
    if setting.kind in ("str", "path", "text"):
        return "" if value is None else value
    if setting.kind in ("int", "float"):
        return number_text(value)
    if setting.kind == "choice" and value not in setting.choices:
        return None
    return value


def number_text(value: Any) -> str:
    """A number as the text that converts back to exactly it: 8, 0.0001, 1e-05, 8.0 (a float stays a float);
    None is blank; anything else (text in a hand-edited job) is shown as it is, for validation to name."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _as_int(raw: Any) -> Any:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            return int(text)
        except ValueError:
            pass
        number = _as_float(text)  # "8.0" or "1e3" is a whole number written another way
        return int(number) if isinstance(number, float) and number.is_integer() else raw
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


def applies(setting: Setting, values: dict[str, Any]) -> bool:
    """A setting with ``visible_when=(other, allowed)`` applies only while ``values[other]`` is allowed."""
    if setting.visible_when is None:
        return True
    other, allowed = setting.visible_when
    return values.get(other) in allowed


def not_applicable_reason(setting: Setting) -> str:
    """Why a setting with ``visible_when`` is off, from the schema: 'only with LoRA type DyLoRA', or 'not
    with LR Scheduler constant or adafactor' when that is the shorter list."""
    if setting.visible_when is None:
        return ""
    other_key, allowed = setting.visible_when
    other = SETTINGS_BY_KEY[other_key]
    excluded = [c for c in other.choices if c not in allowed]
    if other.kind == "choice" and excluded and len(excluded) < len(allowed):
        return f"not with {other.label} {_or_list(excluded)}"
    if other.kind == "bool":
        return f"only with {other.label} {'on' if True in allowed else 'off'}"
    return f"only with {other.label} {_or_list(allowed)}"


def _or_list(items) -> str:
    words = [str(i) for i in items]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def field_label(setting: Setting, values: dict[str, Any]) -> str:
    """The label the page shows: the setting's, plus why it is switched off when it is."""
    if not setting.implemented:
        return f"{setting.label} (not implemented yet)"
    if not applies(setting, values):
        return f"{setting.label} — {not_applicable_reason(setting)}"
    return setting.label


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
