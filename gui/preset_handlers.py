"""What the presets row does: load a preset (built-in or your own), save the form as one, import a kohya_ss
config, and save the form as a job file to download. Every handler takes its inputs by name (dict inputs)."""
from __future__ import annotations

import time
from typing import Any, Callable

import gradio as gr

from gui import presets_panel
from gui.values import split_secrets


class PresetHandlers:
    def __init__(self, form: Any, area: Any, config: Any):
        self.form, self.area, self.config = form, area, config

    def wire(self, check_fields: Callable[[dict], dict]) -> None:
        """Load, save, import and export; a load or an import is checked afterwards by ``check_fields``."""
        form, area = self.form, self.area
        value_outputs = [*form.fields.values(), area.preset_report]
        check = dict(fn=check_fields, inputs=form.inputs | {area.state},
                     outputs=[form.error_box, area.messages, area.state], show_progress="hidden")
        area.preset_load.click(self.load_preset, inputs=form.inputs | {area.preset},
                               outputs=value_outputs).then(**check)
        area.preset_save.click(self.save_preset, inputs=form.inputs | {area.preset_name},
                               outputs=[area.preset, area.preset_report])
        area.kohya_file.upload(self.import_kohya, inputs=form.inputs | {area.kohya_file},
                               outputs=value_outputs).then(**check)
        area.export_job.click(self.export_job, inputs=form.inputs, outputs=[area.job_file, area.preset_report])

    def choices(self) -> list[tuple[str, str]]:
        return [(c.label, c.path) for c in presets_panel.preset_choices(self.config.user_presets_dir)]

    def load_preset(self, data: dict) -> dict:
        path = data[self.area.preset]
        if not path:
            return {self.area.preset_report: "Choose a preset first."}
        try:
            applied = presets_panel.load_preset_values(path, self.form.values(data))
        except (OSError, ValueError) as error:
            return {self.area.preset_report: f"❌ {error}"}
        return {**self.form.value_updates(applied.values), self.area.preset_report: applied.report}

    def save_preset(self, data: dict) -> dict:
        try:
            path = presets_panel.save_preset_values(data[self.area.preset_name], self.form.values(data),
                                                    self.config.user_presets_dir)
        except (OSError, ValueError) as error:
            return {self.area.preset_report: f"❌ {error}"}
        return {self.area.preset: gr.update(choices=self.choices(), value=str(path)),
                self.area.preset_report: f"Saved preset **{path.stem}** to {path}."}

    def export_job(self, data: dict) -> dict:
        """The form as a job file to download: what Start would write, secrets left out."""
        try:
            path = presets_panel.export_job_file(split_secrets(self.form.values(data))[0])
        except ValueError as error:
            return {self.area.job_file: gr.update(visible=False), self.area.preset_report: f"❌ {error}"}
        return {self.area.job_file: gr.update(value=str(path), visible=True),
                self.area.preset_report: f"Saved the form as **{path.name}** at {time.strftime('%H:%M:%S')}: "
                                         f"download it beside the button."}

    def import_kohya(self, data: dict) -> dict:
        path = data[self.area.kohya_file]
        if not path:
            return {self.area.preset_report: gr.skip()}
        try:
            result = presets_panel.import_kohya_values(path, self.form.values(data))
        except (OSError, ValueError) as error:
            return {self.area.preset_report: f"❌ {error}"}
        return {**self.form.value_updates(result.values), self.area.preset_report: result.report}
