"""The settings form, built from the schema: one widget per setting and the field error notes, no per-setting
code.

bool → Checkbox, choice → Dropdown, int/float → one-line Textbox (numbers as text, so a blank stays blank:
see ``gui.values``), str/path → Textbox, text → multi-line Textbox. Label = setting.label, help = the
widget's ``info`` (the page's CSS shows it as a tip on hover or focus), ``elem_id="setting-<key>"``. The
notes under the fields (``id="error-<key>"``, only while a field has a problem) all travel in one hidden
component, ``Form.error_box``, which the page's script spreads under the fields (``gui/page_style.py``): each
event that lists an output costs the browser time, so one output replaces a Markdown per setting. A setting
that does not apply (``visible_when``) is disabled and its label says why. Handlers receive values by name:
``Form.values(data)`` turns Gradio's {component: value} dict into {key: value}.
"""
from __future__ import annotations

import html
import json
import re
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
    """The widgets of every setting (``fields``, by key) and the one component that carries the error notes
    under them (``error_box``)."""

    fields: dict[str, gr.components.Component] = field(default_factory=dict)
    error_box: Any = None  # gr.HTML holding error_box_html(...)

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

    def error_notes(self, problems: list[Problem]) -> dict[str, str]:
        """{key: the note's HTML} for each setting of the form that has a problem."""
        grouped = problems_by_setting(problems)
        return {key: note_html(field_error_text(key, found)) for key, found in grouped.items() if key in self.fields}

    def error_updates(self, problems: list[Problem], shown: dict[str, str] | None = None) -> dict:
        """The error notes for ``problems``, as an update of ``error_box``. With ``shown`` (the notes this page
        shows now; updated here) nothing is sent when they are the same."""
        notes = self.error_notes(problems)
        if shown is not None:
            if shown == notes:
                return {}
            shown.clear()
            shown.update(notes)
        return {self.error_box: error_box_html(notes)}


def note_html(text: str) -> str:
    """A note's text as HTML: escaped, with `code` spans."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False)).replace("\n\n", "<br>")


def error_box_html(notes: dict[str, str]) -> str:
    """The error box's content: the notes as JSON text, which the page's script reads and spreads."""
    return f'<pre class="loom-errors-data">{html.escape(json.dumps(notes, ensure_ascii=False), quote=False)}</pre>'


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


def add_field(form: Form, setting: Setting, values: dict[str, Any]) -> None:
    """The widget of ``setting``, registered in ``form`` (its error note is drawn by the page's script)."""
    form.fields[setting.key] = make_widget(setting, values)
