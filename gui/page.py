"""The page: on the left the presets row and the settings tabs built from the schema; on the right, in view
while editing, the run column (Start / Stop / Sample now / Save now, progress, messages, loss and LR
curves, newest samples, the LoRA files) and the plan. One column on a phone (see ``gui.page_style``).

Layout only; what each button does lives in ``gui.handlers``. ``build_app(config)`` returns the Blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from gui.blocks_table import blocks_markdown
from gui.form import Form, error_box_html
from gui.form_layout import build_tab_fields, fold
from gui.handlers import PLAN_TICK_S, RUN_TICK_S, Handlers, SessionState
from gui.model_note import MODEL_KEY, model_note
from gui.queue_panel import QueuePanel, build_queue_panel
from gui.run_view import MOVING_AVERAGE_LABEL, RunView, messages_markdown, progress_html
from gui.runs import RunManager
from gui.values import problem_messages

LR_COLORS = {"unet": "#2563eb", "text_encoder": "#16a34a"}
INNER_TABS = (("weights", "Weights"), ("blocks", "Blocks"), ("conv", "Conv"))


@dataclass
class AppConfig:
    """What the app needs: where runs and user presets live, and the job the form opens with."""

    runs_dir: Path
    user_presets_dir: Path
    job_values: dict[str, Any] = field(default_factory=dict)
    trainer_command: list[str] | None = None


@dataclass
class RunArea:
    """The page's components other than the settings (handlers update them by name)."""

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
    export_job: Any = None
    job_file: Any = None
    preset_report: Any = None
    state: Any = None
    timer: Any = None


def _presets_row(area: RunArea) -> None:
    with gr.Column(elem_id="presets-area"):
        _presets_controls(area)
    area.preset_report = gr.Markdown("", elem_id="preset-report")


def _presets_controls(area: RunArea) -> None:
    with gr.Row(equal_height=True):
        gr.HTML("<h1>LoRA Loom</h1>", elem_id="loom-title", padding=False, scale=1, min_width=170)
        area.preset = gr.Dropdown(label="Preset", choices=[], value=None, scale=3, min_width=180,
                                  elem_id="preset-choice")
        area.preset_load = gr.Button("Load preset", scale=1, min_width=90, size="sm")
        area.preset_name = gr.Textbox(label="Save current settings as", placeholder="my preset", scale=3,
                                      min_width=180, elem_id="preset-name")
        area.preset_save = gr.Button("Save as preset", scale=1, min_width=90, size="sm")
    with gr.Row(equal_height=True):
        area.kohya_file = gr.File(label="Import kohya_ss config (.json / .toml)", file_types=[".json", ".toml"],
                                  type="filepath", scale=3, min_width=180, height=90, elem_id="kohya-import")
        area.export_job = gr.Button("Save job file", scale=1, min_width=90, size="sm", elem_id="export-job-button")
        area.job_file = gr.File(label="Job file (the form as it is now)", scale=3, min_width=180, height=90,
                                interactive=False, visible=False, elem_id="job-file")


def _settings_tabs(form: Form, values: dict, area: RunArea) -> None:
    def add_model_note() -> None:
        note = model_note(values.get(MODEL_KEY, ""), values.get("v2", False), values.get("v_parameterization", False))
        area.model_note = gr.Markdown(note, elem_id="model-note", padding=True)

    with gr.Tabs(elem_id="settings-tabs"):
        with gr.Tab("Model", id="model", elem_id="tab-model"):
            build_tab_fields(form, "model", values, after={MODEL_KEY: add_model_note})
        with gr.Tab("Folders", id="folders", elem_id="tab-folders"):
            build_tab_fields(form, "folders", values)
        with gr.Tab("Dataset", id="dataset", elem_id="tab-dataset"):
            gr.Markdown("The folders found in the image folder (and the regularization folder), as the "
                        "trainer will read them.")
            area.scan_button = gr.Button("Scan folders", size="sm")
            area.dataset_md = gr.Markdown("", elem_id="dataset-table")
        for tab_id, title in (("basic", "Basic"), ("advanced", "Advanced")):
            with gr.Tab(title, id=tab_id, elem_id=f"tab-{tab_id}"):
                build_tab_fields(form, tab_id, values)
        with gr.Tab("Blocks/Conv", id="blocks-conv", elem_id="tab-blocks-conv"):
            with gr.Tabs():
                for tab_id, title in INNER_TABS:
                    with gr.Tab(title, id=tab_id, elem_id=f"tab-{tab_id}"):
                        build_tab_fields(form, tab_id, values)
            with fold("Which UNet modules each block holds", "fold-blocks-table"):
                gr.Markdown(blocks_markdown())
        with gr.Tab("Samples", id="samples", elem_id="tab-samples"):
            build_tab_fields(form, "samples", values)


def _run_area(area: RunArea, opening_messages: str) -> None:
    """Buttons start enabled only where they can act: nothing runs yet, so Start and Add to queue."""
    with gr.Row(equal_height=True, elem_id="run-actions"):
        area.start = gr.Button("Start training", variant="primary", elem_id="start-button", scale=2, min_width=0)
        area.add_to_queue = gr.Button("Add to queue", elem_id="add-queue-button", scale=1, min_width=0)
        area.stop = gr.Button("Stop training", variant="stop", elem_id="stop-button", scale=2, min_width=0,
                              interactive=False)
        area.sample_now = gr.Button("Sample now", elem_id="sample-now-button", scale=1, min_width=0,
                                    interactive=False)
        area.save_now = gr.Button("Save now", elem_id="save-now-button", scale=1, min_width=0, interactive=False)
    area.progress = gr.HTML(progress_html(RunView(), "idle"), elem_id="run-progress", padding=False)
    area.messages = gr.Markdown(opening_messages, elem_id="messages")
    with gr.Row(equal_height=True):
        area.loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=200, min_width=200,
                                     color_map={"loss": "#93c5fd", MOVING_AVERAGE_LABEL: "#ea580c"},
                                     elem_id="loss-plot")
        area.lr_plot = gr.LinePlot(x="step", y="lr", color="group", title="Learning rate", height=200,
                                   min_width=200, color_map=LR_COLORS, elem_id="lr-plot")
    area.gallery = gr.Gallery(label="Newest samples", columns=4, height=170, elem_id="sample-gallery",
                              show_label=True, allow_preview=True)
    area.outputs = gr.Markdown("", elem_id="run-outputs")


def _plan_panel(area: RunArea) -> None:
    with gr.Row(equal_height=False, elem_id="plan-panel"):
        with gr.Column(scale=3, min_width=200):  # wider than the plot: fewer wrapped rows, a shorter page
            area.plan_md = gr.Markdown("", elem_id="plan-table")
            area.plan_button = gr.Button("Update plan", size="sm")
        area.plan_plot = gr.LinePlot(x="step", y="lr", color="group", title="Planned learning rate",
                                     color_map=LR_COLORS, height=200, min_width=200, scale=2,
                                     elem_id="plan-lr-plot")


def _runs_and_log(area: RunArea) -> None:
    with gr.Row(equal_height=True):
        area.runs = gr.Dropdown(label="Runs", choices=[], value=None, scale=3, min_width=160, elem_id="runs-choice")
        area.open_run = gr.Button("Open run", scale=1, min_width=80, size="sm", elem_id="open-run-button")
    with fold("Trainer log (last lines)", "fold-log"):
        area.log = gr.Textbox(show_label=False, lines=10, max_lines=10, interactive=False, autoscroll=True,
                              elem_id="run-log")


def build_app(config: AppConfig) -> gr.Blocks:
    """The whole page; ``config.job_values`` fills the form (missing keys take their defaults)."""
    from trainer.spec import defaults, validate_values

    values = {**defaults(), **config.job_values}
    _, problems = validate_values(values, for_training=False)  # a job file with a bad or unknown key says so
    opening_notes = problem_messages(problems)
    form, area = Form(), RunArea()
    manager = RunManager(config.runs_dir, config.trainer_command)
    with gr.Blocks(title="LoRA Loom", analytics_enabled=False, fill_width=True) as app:
        with gr.Row(equal_height=False, elem_id="main-row"):
            with gr.Column(scale=3, min_width=400, elem_id="settings-column"):
                _presets_row(area)
                _settings_tabs(form, values, area)
                opening_errors = form.error_notes(problems)  # drawn under their fields by the page's script
                form.error_box = gr.HTML(error_box_html(opening_errors), elem_id="field-errors",
                                         elem_classes=["loom-hidden"])
            with gr.Column(scale=2, min_width=400, elem_id="run-column"):
                _run_area(area, messages_markdown(opening_notes))
                _plan_panel(area)
                _runs_and_log(area)
                queue_widgets = build_queue_panel(area.add_to_queue)
        area.state = gr.State(SessionState(notes=opening_notes, errors_shown=opening_errors))
        # Timers tick only while they have work (each tick costs the browser a walk over the page's ~800
        # components): the run timer while a run is watched, the plan timer after an edit until the plan is
        # made again. The queue panel's slower timer wakes the run timer when a run starts elsewhere.
        area.timer = gr.Timer(RUN_TICK_S, active=False)
        area.plan_timer = gr.Timer(PLAN_TICK_S, active=False)
        handlers = Handlers(form, area, manager, config)
        handlers.wire(app)
        QueuePanel(queue_widgets, handlers).wire(app)
    handlers.planner.start()  # its imports run while the page is served and loaded, not at the first plan
    return app
