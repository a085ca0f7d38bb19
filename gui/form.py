"""The settings form, built from the schema: one widget and one error note per setting, no per-setting code.

bool → Checkbox, choice → Dropdown, int/float → Number, str/path → Textbox, text → multi-line Textbox;
label = setting.label, info = setting.help, ``elem_id="setting-<key>"``; the note under each field has
``elem_id="error-<key>"`` and stays hidden while the field is fine. Handlers receive values by name:
``Form.values(data)`` turns Gradio's {component: value} dict into {key: value}.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gradio as gr

from gui.values import (
    coerce_values,
    field_error_text,
    is_visible,
    problems_by_setting,
    range_note,
    sections_of,
    settings_of_tab,
)
from trainer.spec import SETTINGS, SETTINGS_BY_KEY, Problem, Setting


@dataclass
class Form:
    """The widgets of every setting (``fields``) and the error note under each (``errors``), by key."""

    fields: dict[str, gr.components.Component] = field(default_factory=dict)
    errors: dict[str, gr.Markdown] = field(default_factory=dict)

    @property
    def inputs(self) -> set:
        return set(self.fields.values())

    def values(self, data: dict) -> dict[str, Any]:
        """{key: coerced value} from a Gradio dict-input payload."""
        return coerce_values({key: data[widget] for key, widget in self.fields.items() if widget in data})

    def value_updates(self, values: dict[str, Any]) -> dict:
        """{widget: new value} for every setting in ``values`` (presets, imports, opening a run)."""
        return {self.fields[k]: _display_value(SETTINGS_BY_KEY[k], v) for k, v in values.items() if k in self.fields}

    def visibility_updates(self, values: dict[str, Any]) -> dict:
        """Show or hide settings whose ``visible_when`` depends on another setting's value."""
        return {
            self.fields[s.key]: gr.update(visible=is_visible(s, values))
            for s in SETTINGS if s.visible_when is not None and s.key in self.fields
        }

    def error_updates(self, problems: list[Problem]) -> dict:
        """Each error note shown with its problems, or hidden when its setting is fine."""
        grouped = problems_by_setting(problems)
        updates = {}
        for key, note in self.errors.items():
            found = grouped.get(key, [])
            updates[note] = gr.update(value=field_error_text(key, found), visible=bool(found))
        return updates


def _display_value(setting: Setting, value: Any) -> Any:
    """What the widget can show: a value it cannot hold (text in a number box, an unknown choice from a
    hand-edited job file) shows blank; validation names the setting in the messages panel."""
    if setting.kind in ("str", "path", "text"):
        return "" if value is None else value
    if setting.kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return None
    if setting.kind == "choice" and value not in setting.choices:
        return None
    return value


def make_widget(setting: Setting, value: Any, visible: bool = True) -> gr.components.Component:
    """The widget for one setting (see the module docstring for the mapping)."""
    label = setting.label if setting.implemented else f"{setting.label} (not implemented yet)"
    common = dict(
        label=label,
        info=setting.help + range_note(setting),
        elem_id=f"setting-{setting.key}",
        interactive=setting.implemented,
        visible=visible,
    )
    value = _display_value(setting, value)
    if setting.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if setting.kind == "choice":
        choices = list(setting.choices) + ([None] if setting.optional else [])
        return gr.Dropdown(choices=[(str(c) if c is not None else "(blank)", c) for c in choices],
                           value=value, **common)
    if setting.kind in ("int", "float"):
        # No minimum/maximum on the widget: Gradio would reject an out-of-range value with a bare toast
        # before our handler runs; validation names the setting under the field instead.
        return gr.Number(value=value, precision=None, step=setting.step or (1 if setting.kind == "int" else None),
                         **common)
    if setting.kind == "text":
        return gr.Textbox(value=value, lines=4, max_lines=20, **common)
    if setting.secret:
        return gr.Textbox(value=value, type="password", **common)
    return gr.Textbox(value=value, lines=1, max_lines=1, **common)


def build_tab_fields(form: Form, tab: str, values: dict[str, Any], problems: Sequence[Problem] = (),
                     after: dict[str, Callable[[], Any]] | None = None) -> None:
    """Widgets of one tab, grouped by section, each with its error note (shown only for ``problems``).
    ``after[key]()`` builds extra components right under that setting's field (the model note)."""
    grouped = problems_by_setting(problems)
    after = after or {}
    for section, settings in sections_of(settings_of_tab(tab)):
        if section:
            gr.Markdown(f"#### {section}", elem_classes=["loom-section"])
        with gr.Group():
            for setting in settings:
                _add_field(form, setting, values, grouped.get(setting.key, []))
                if setting.key in after:
                    after[setting.key]()


def _add_field(form: Form, setting: Setting, values: dict[str, Any], problems: list[Problem]) -> None:
    widget = make_widget(setting, values.get(setting.key, setting.default), is_visible(setting, values))
    form.fields[setting.key] = widget
    form.errors[setting.key] = gr.Markdown(field_error_text(setting.key, problems), visible=bool(problems),
                                           elem_id=f"error-{setting.key}",
                                           elem_classes=["loom-field-error"])
