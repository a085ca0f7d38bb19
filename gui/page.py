"""The page: presets row, settings tabs built from the schema, plan panel and run area, wired to handlers.

Layout only; what each button does lives in ``gui.handlers``. ``build_app(config)`` returns the Blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from gui.blocks_table import blocks_markdown
from gui.form import Form, build_tab_fields
from gui.handlers import Handlers, SessionState
from gui.model_note import MODEL_KEY, model_note
from gui.queue_panel import QueuePanel, build_queue_panel
from gui.run_view import MOVING_AVERAGE_LABEL, RunView, messages_markdown, progress_html
from gui.values import problem_messages
from gui.runs import RunManager

LR_COLORS = {"unet": "#2563eb", "text_encoder": "#16a34a"}
CSS = """
.loom-progress { padding: 8px 4px; }
.loom-headline { font-weight: 600; margin-bottom: 6px; }
.loom-bar { height: 14px; background: var(--neutral-200); border-radius: 7px; overflow: hidden; }
.loom-fill { height: 100%; background: var(--color-accent); transition: width 0.5s; }
.loom-details { font-size: 0.9em; margin-top: 4px; opacity: 0.85; }
.loom-field-error, .loom-field-error * { color: var(--error-text-color, #b91c1c) !important; }
.loom-field-error { font-size: 0.9em; padding: 0 8px 6px; }
.loom-section { margin-top: 10px; }
.loom-queue td, .loom-history td { padding: 2px 8px; vertical-align: top; }
.loom-log-tail { font-size: 0.8em; max-height: 12em; overflow: auto; }
"""


@dataclass
class AppConfig:
    """What the app needs: where runs and user presets live, and the job the form opens with."""

    runs_dir: Path
    user_presets_dir: Path
    job_values: dict[str, Any] = field(default_factory=dict)
    trainer_command: list[str] | None = None


@dataclass
class RunArea:
    """The run area's components (handlers update them by name)."""

    start: Any = None
    add_to_queue: Any = None
    stop: Any = None
    sample_now: Any = None
    save_now: Any = None
    runs: Any = None
    open_run: Any = None
    progress: Any = None
    loss_plot: Any = None
    lr_plot: Any = None
    gallery: Any = None
    outputs: Any = None
    messages: Any = None
    log: Any = None
    model_note: Any = None
    plan_md: Any = None
    plan_plot: Any = None
    plan_button: Any = None
    plan_timer: Any = None
    dataset_md: Any = None
    scan_button: Any = None
    preset: Any = None
    preset_load: Any = None
    preset_name: Any = None
    preset_save: Any = None
    kohya_file: Any = None
    preset_report: Any = None
    state: Any = None
    timer: Any = None


def _presets_row(area: RunArea) -> None:
    with gr.Row(equal_height=True):
        area.preset = gr.Dropdown(label="Preset", choices=[], value=None, scale=3, elem_id="preset-choice")
        area.preset_load = gr.Button("Load preset", scale=1)
        area.preset_name = gr.Textbox(label="Save current settings as", placeholder="my preset", scale=3,
                                      elem_id="preset-name")
        area.preset_save = gr.Button("Save as preset", scale=1)
        area.kohya_file = gr.File(label="Import kohya_ss config (.json / .toml)", file_types=[".json", ".toml"],
                                  type="filepath", scale=3, height=120, elem_id="kohya-import")
    area.preset_report = gr.Markdown("", elem_id="preset-report")


def _settings_tabs(form: Form, values: dict, area: RunArea, problems: list) -> None:
    def add_model_note() -> None:
        note = model_note(values.get(MODEL_KEY, ""), values.get("v2", False), values.get("v_parameterization", False))
        area.model_note = gr.Markdown(note, elem_id="model-note", padding=True)

    with gr.Tabs(elem_id="settings-tabs"):
        with gr.Tab("Model", id="model", elem_id="tab-model"):
            build_tab_fields(form, "model", values, problems, after={MODEL_KEY: add_model_note})
        with gr.Tab("Folders", id="folders", elem_id="tab-folders"):
            build_tab_fields(form, "folders", values, problems)
        with gr.Tab("Dataset", id="dataset", elem_id="tab-dataset"):
            gr.Markdown("The folders found in the image folder (and the regularization folder), as the "
                        "trainer will read them.")
            area.scan_button = gr.Button("Scan folders")
            area.dataset_md = gr.Markdown("", elem_id="dataset-table")
        for tab_id, title in (("basic", "Basic"), ("advanced", "Advanced")):
            with gr.Tab(title, id=tab_id, elem_id=f"tab-{tab_id}"):
                build_tab_fields(form, tab_id, values, problems)
        with gr.Tab("Blocks/Conv", id="blocks-conv", elem_id="tab-blocks-conv"):
            with gr.Tabs():
                for tab_id, title in (("weights", "Weights"), ("blocks", "Blocks"), ("conv", "Conv")):
                    with gr.Tab(title, id=tab_id, elem_id=f"tab-{tab_id}"):
                        build_tab_fields(form, tab_id, values, problems)
            with gr.Accordion("Which UNet modules each block holds", open=False):
                gr.Markdown(blocks_markdown())
        with gr.Tab("Samples", id="samples", elem_id="tab-samples"):
            build_tab_fields(form, "samples", values, problems)


def _plan_panel(area: RunArea) -> None:
    with gr.Accordion("Plan: what this run will do", open=True, elem_id="plan-panel"):
        with gr.Row():
            with gr.Column(scale=1):
                area.plan_button = gr.Button("Update plan")
                area.plan_md = gr.Markdown("", elem_id="plan-table")
            with gr.Column(scale=2):
                area.plan_plot = gr.LinePlot(x="step", y="lr", color="group", title="Learning rate (preview)",
                                             color_map=LR_COLORS,
                                             height=240, elem_id="plan-lr-plot")


def _run_area(area: RunArea, opening_messages: str) -> None:
    with gr.Row(equal_height=True):
        area.start = gr.Button("Start training", variant="primary", elem_id="start-button", scale=2)
        area.add_to_queue = gr.Button("Add to queue", elem_id="add-queue-button", scale=1)
        area.stop = gr.Button("Stop training", variant="stop", elem_id="stop-button", scale=1)
        area.sample_now = gr.Button("Sample now", elem_id="sample-now-button", scale=1, interactive=False)
        area.save_now = gr.Button("Save now", elem_id="save-now-button", scale=1, interactive=False)
        area.runs = gr.Dropdown(label="Runs", choices=[], value=None, scale=3, elem_id="runs-choice")
        area.open_run = gr.Button("Open run", scale=1, elem_id="open-run-button")
    area.progress = gr.HTML(progress_html(RunView(), "idle"), elem_id="run-progress")
    area.messages = gr.Markdown(opening_messages, elem_id="messages")
    with gr.Row():
        area.loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=280,
                                     color_map={"loss": "#93c5fd", MOVING_AVERAGE_LABEL: "#ea580c"},
                                     elem_id="loss-plot")
        area.lr_plot = gr.LinePlot(x="step", y="lr", color="group", title="Learning rate", height=280,
                                   color_map=LR_COLORS,
                                   elem_id="lr-plot")
    area.gallery = gr.Gallery(label="Samples", columns=6, height=260, elem_id="sample-gallery",
                              show_label=True, allow_preview=True)
    area.outputs = gr.Markdown("", elem_id="run-outputs")
    area.log = gr.Textbox(label="Trainer log (last lines)", lines=10, max_lines=10, interactive=False,
                          autoscroll=True, elem_id="run-log")


def build_app(config: AppConfig) -> gr.Blocks:
    """The whole page; ``config.job_values`` fills the form (missing keys take their defaults)."""
    from trainer.spec import defaults, validate_values

    values = {**defaults(), **config.job_values}
    _, problems = validate_values(values, for_training=False)  # a job file with a bad or unknown key says so
    opening_notes = problem_messages(problems)
    form, area = Form(), RunArea()
    manager = RunManager(config.runs_dir, config.trainer_command)
    with gr.Blocks(title="LoRA Loom", analytics_enabled=False) as app:
        gr.Markdown("# LoRA Loom\nTrain LoRA adapters for Stable Diffusion.")
        _presets_row(area)
        _settings_tabs(form, values, area, problems)
        _plan_panel(area)
        _run_area(area, messages_markdown(opening_notes))
        queue_widgets = build_queue_panel(area.add_to_queue)
        area.state = gr.State(SessionState(notes=opening_notes))
        area.timer = gr.Timer(1.0)
        area.plan_timer = gr.Timer(1.0)
        handlers = Handlers(form, area, manager, config)
        handlers.wire(app)
        QueuePanel(queue_widgets, handlers).wire(app)
    return app
