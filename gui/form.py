"""The settings form, built from the schema: one widget and one error note per setting, no per-setting code.

bool → Checkbox, choice → Dropdown, int/float → one-line Textbox (numbers as text, so a blank stays blank:
see ``gui.values``), str/path → Textbox, text → multi-line Textbox. Label = setting.label, help = the
widget's ``info`` (the page's CSS shows it as a tip on hover or focus), ``elem_id="setting-<key>"``; the
note under each field has ``elem_id="error-<key>"`` and stays hidden while the field is fine. A setting that
does not apply (``visible_when``) is disabled and its label says why. Handlers receive values by name:
``Form.values(data)`` turns Gradio's {component: value} dict into {key: value}.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from gui.values import (
    applies,
    coerce_values,
    display_value,
    field_error_text,
    field_label,
    problems_by_setting,
    range_note,
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
        return {self.fields[k]: display_value(SETTINGS_BY_KEY[k], v) for k, v in values.items() if k in self.fields}

    def applicability_updates(self, values: dict[str, Any]) -> dict:
        """Enable or disable (with the reason in the label) the settings whose ``visible_when`` depends on
        another setting's value. Only the label and interactivity change: the value stays in the job."""
        return {
            self.fields[s.key]: gr.update(label=field_label(s, values), interactive=s.implemented and applies(s, values))
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


def make_widget(setting: Setting, values: dict[str, Any]) -> gr.components.Component:
    """The widget for one setting (see the module docstring for the mapping), showing ``values[key]``."""
    common = dict(
        label=field_label(setting, values),
        info=setting.help + range_note(setting),
        elem_id=f"setting-{setting.key}",
        elem_classes=["loom-field"],
        interactive=setting.implemented and applies(setting, values),
        min_width=150,
    )
    value = display_value(setting, values.get(setting.key, setting.default))
    if setting.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if setting.kind == "choice":
        choices = list(setting.choices) + ([None] if setting.optional else [])
        return gr.Dropdown(choices=[(str(c) if c is not None else "(blank)", c) for c in choices],
                           value=value, allow_custom_value=setting.custom_choices, **common)
    if setting.kind == "text":
        return gr.Textbox(value=value, lines=3, max_lines=20, **common)
    text_input = gr.components.textbox.InputHTMLAttributes(autocomplete="off", spellcheck=False)
    if setting.secret:
        return gr.Textbox(value=value, type="password", html_attributes=text_input, **common)
    placeholder = "blank" if setting.optional else None
    return gr.Textbox(value=value, lines=1, max_lines=1, placeholder=placeholder, html_attributes=text_input,
                      **common)


def add_field(form: Form, setting: Setting, values: dict[str, Any], problems: list[Problem]) -> None:
    """The widget of ``setting`` and the error note under it, registered in ``form``."""
    form.fields[setting.key] = make_widget(setting, values)
    form.errors[setting.key] = gr.Markdown(field_error_text(setting.key, problems), visible=bool(problems),
                                           elem_id=f"error-{setting.key}",
                                           elem_classes=["loom-field-error"])
