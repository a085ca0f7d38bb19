"""How a tab's settings are laid out: its sections in schema order, each a heading and rows of 2–4 fields.

Widths follow the kind of setting, not the setting: a flag, number or choice takes one slot of a row's four,
a text or path field two, multi-line text a whole row. Rarely used sections sit in a fold: a heading button
over a body that the page's script keeps ``hidden="until-found"`` while closed, so the fields are always
in the page (their values never depend on what was opened) and the browser's find (Ctrl-F) still finds and
opens them. Gradio's own closed Accordion does not render its content at all, so Ctrl-F could not.
"""
from __future__ import annotations

import html
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import gradio as gr

from gui.form import Form, add_field
from gui.values import sections_of, settings_of_tab
from trainer.spec import Setting

ROW_SLOTS = 4
# What kohya_ss users rarely open (LyCORIS's options matter only for its types; launch only for several GPUs)
FOLDED_SECTIONS = frozenset({"Performance", "Logging", "Other", "LyCORIS", "Noise", "Augmentation",
                             "Regularizers", "Accelerate launch"})


def slots(setting: Setting) -> int:
    """How many of a row's four slots the setting's field takes."""
    if setting.kind == "text":
        return ROW_SLOTS
    return 2 if setting.kind in ("str", "path") else 1


def pack_rows(settings: list[Setting]) -> list[list[Setting]]:
    """Settings in order, packed greedily into rows of at most ``ROW_SLOTS`` slots."""
    rows: list[list[Setting]] = []
    used = ROW_SLOTS
    for setting in settings:
        width = slots(setting)
        if used + width > ROW_SLOTS:
            rows.append([])
            used = 0
        rows[-1].append(setting)
        used += width
    return rows


@contextmanager
def fold(title: str, elem_id: str) -> Iterator[None]:
    """A closed section a person opens with its heading; its content is rendered (see the module docstring)."""
    with gr.Column(elem_classes=["loom-fold"], elem_id=elem_id):
        gr.HTML(f'<button type="button" class="loom-fold-head" aria-expanded="false">{html.escape(title)}</button>',
                padding=False)
        with gr.Column(elem_classes=["loom-fold-body"]):
            yield


def section_heading(title: str) -> None:
    gr.HTML(f"<h4 class='loom-section'>{html.escape(title)}</h4>", padding=False, elem_classes=["loom-heading"])


def bands(sections: list[tuple[str, list[Setting]]]) -> list[list[tuple[str, list[Setting]]]]:
    """Sections grouped into bands: consecutive open sections small enough to share one row of
    ``ROW_SLOTS`` slots do (Loss beside Learning rate); a bigger section or a fold is a band of its own."""
    grouped: list[list[tuple[str, list[Setting]]]] = []
    for section, settings in sections:
        width = sum(slots(s) for s in settings)
        last = grouped[-1] if grouped else None
        if (last and section not in FOLDED_SECTIONS and last[0][0] not in FOLDED_SECTIONS
                and _band_width(last) + width <= ROW_SLOTS):
            last.append((section, settings))
        else:
            grouped.append([(section, settings)])
    return grouped


def _band_width(band: list[tuple[str, list[Setting]]]) -> int:
    return sum(slots(s) for _, settings in band for s in settings)


def build_tab_fields(form: Form, tab: str, values: dict[str, Any],
                     after: dict[str, Callable[[], Any]] | None = None) -> None:
    """Widgets of one tab, section by section. ``after[key]()`` builds extra components right under that
    setting's field (the model note)."""
    add = _FieldAdder(form, values, after or {})
    for band in bands(sections_of(settings_of_tab(tab))):
        (section, settings), *others = band
        if section in FOLDED_SECTIONS:
            with fold(section, f"fold-{tab}-{section.lower().replace(' ', '-')}"):
                add.rows(settings)
        elif not others:
            if section:
                section_heading(section)
            add.rows(settings)
        else:
            with gr.Row(equal_height=False, elem_classes=["loom-row", "loom-band"]):
                for title, members in band:
                    with gr.Column(scale=sum(slots(s) for s in members), min_width=0):
                        section_heading(title)
                        add.rows(members, pad=False)
                _spare(ROW_SLOTS - _band_width(band))


class _FieldAdder:
    """Adds fields row by row into the form, with each field's extras (``after``)."""

    def __init__(self, form: Form, values: dict[str, Any], after: dict):
        self.form, self.values, self.after = form, values, after

    def rows(self, settings: list[Setting], pad: bool = True) -> None:
        for row in pack_rows(settings):
            with gr.Row(equal_height=False, elem_classes=["loom-row"]):
                for setting in row:
                    with gr.Column(scale=slots(setting), min_width=150 if slots(setting) == 1 else 240):
                        add_field(self.form, setting, self.values)
                        if setting.key in self.after:
                            self.after[setting.key]()
                if pad:  # a one-slot field stays one slot wide, even alone in its row
                    _spare(ROW_SLOTS - sum(slots(s) for s in row))


def _spare(width: int) -> None:
    if width > 0:
        gr.Column(scale=width, min_width=0)
