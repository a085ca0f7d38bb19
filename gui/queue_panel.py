"""The "Queue & history" part of the page: the queue (add, reorder, remove, edit a waiting job, stop on
failure) and the Runs history (every run, open one in the run area, compare several, delete).

Layout and handlers together, kept apart from ``gui.page`` / ``gui.handlers``: the page builds the panel with
``build_queue_panel()`` and wires it with ``QueuePanel(...).wire(app)``. What the panel shows is computed
by ``gui.queue_view`` and ``gui.history`` (pure) from the queue and run folders on disk; the queue itself is
driven by ``trainer.queue_runner`` (a thread started by app.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from gui import history
from gui.queue_view import queue_html, removable_choices
from gui.values import has_errors, problem_messages, split_secrets
from trainer import run_queue

COMPARE_LOSS_COLUMNS = ["step", "loss", "run"]
COMPARE_LR_COLUMNS = ["step", "lr", "run"]
HISTORY_LIMIT = 100
QUEUE_TICK_S = 3.0  # the queue and Runs lists are read this often (the page's only timer that always runs)


@dataclass
class QueueWidgets:
    add: Any = None
    table: Any = None
    note: Any = None
    job: Any = None
    position: Any = None
    move: Any = None
    remove: Any = None
    load: Any = None
    replace: Any = None
    stop_on_failure: Any = None
    resume: Any = None
    history: Any = None
    pick: Any = None
    open: Any = None
    compare: Any = None
    delete: Any = None
    confirm: Any = None
    cancel: Any = None
    history_note: Any = None
    compare_loss: Any = None
    compare_lr: Any = None
    compare_step: Any = None
    compare_gallery: Any = None
    seen: Any = None
    timer: Any = None


def build_queue_panel(add_button: Any) -> QueueWidgets:
    """The accordion's components; ``add_button`` is the page's "Add to queue" (beside Start)."""
    w = QueueWidgets(add=add_button)
    with gr.Accordion("Queue & history", open=True, elem_id="queue-history"):
        with gr.Tabs():
            with gr.Tab("Queue", id="queue", elem_id="tab-queue"):
                w.table = gr.HTML("", elem_id="queue-table")
                w.note = gr.Markdown("", elem_id="queue-note")
                with gr.Row(equal_height=True):
                    w.job = gr.Dropdown(label="Job", choices=[], value=None, scale=3, elem_id="queue-job")
                    w.position = gr.Number(label="Move to position", value=1, precision=0, minimum=1, scale=1,
                                           elem_id="queue-position")
                    w.move = gr.Button("Move", scale=1, elem_id="queue-move")
                    w.remove = gr.Button("Remove", scale=1, elem_id="queue-remove")
                    w.load = gr.Button("Load into form", scale=1, elem_id="queue-load")
                    w.replace = gr.Button("Replace with form", scale=1, elem_id="queue-replace")
                with gr.Row(equal_height=True):
                    w.stop_on_failure = gr.Checkbox(label="Stop the queue when a job fails or is stopped",
                                                    value=False, elem_id="queue-stop-on-failure")
                    w.resume = gr.Button("Resume queue", elem_id="queue-resume")
            with gr.Tab("Runs", id="history", elem_id="tab-history"):
                w.history = gr.HTML("", elem_id="history-table")
                w.pick = gr.CheckboxGroup(label="Select runs", choices=[], value=[], elem_id="history-pick")
                with gr.Row():
                    w.open = gr.Button("Open in the run area", elem_id="history-open")
                    w.compare = gr.Button("Compare selected", elem_id="history-compare")
                    w.delete = gr.Button("Delete selected…", variant="stop", elem_id="history-delete")
                    w.confirm = gr.Button("Yes, delete the runs and their LoRA files", variant="stop",
                                          visible=False, elem_id="history-confirm")
                    w.cancel = gr.Button("Cancel", visible=False, elem_id="history-cancel")
                w.history_note = gr.Markdown("", elem_id="history-note")
                with gr.Row():
                    w.compare_loss = gr.LinePlot(x="step", y="loss", color="run", title="Loss (moving average)",
                                                 height=260, elem_id="compare-loss-plot")
                    w.compare_lr = gr.LinePlot(x="step", y="lr", color="run", title="Learning rate", height=260,
                                               elem_id="compare-lr-plot")
                w.compare_step = gr.Dropdown(label="Samples at step", choices=[], value=None,
                                             elem_id="compare-step")
                w.compare_gallery = gr.Gallery(label="Samples side by side", columns=4, height=260,
                                               elem_id="compare-gallery")
    w.seen = gr.State("")
    w.timer = gr.Timer(QUEUE_TICK_S)
    return w


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


class QueuePanel:
    """The panel's handlers. ``handlers`` is the page's ``gui.handlers.Handlers`` (its form, run area and
    ``open_run`` are reused)."""

    def __init__(self, widgets: QueueWidgets, handlers: Any):
        self.w, self.handlers = widgets, handlers
        self.form, self.area = handlers.form, handlers.area
        self.runs_dir: Path = handlers.manager.runs_dir
        self._finished: dict[str, tuple[int, history.RunSummary]] = {}  # name → (events size, summary)

    def _summary(self, run_dir: Path) -> history.RunSummary:
        """A run's summary; a finished run's is kept while its events file does not change."""
        try:
            size = (run_dir / "events.jsonl").stat().st_size
        except OSError:
            size = -1
        kept = self._finished.get(run_dir.name)
        if kept is not None and kept[0] == size:
            return kept[1]
        summary = history.summarize(run_dir)
        if summary.status in ("completed", "stopped", "failed"):
            self._finished[run_dir.name] = (size, summary)
        return summary

    def wire(self, app: gr.Blocks) -> None:
        w, form, area = self.w, self.form, self.area
        lists = [w.table, w.job, w.history, w.pick, w.seen, w.stop_on_failure]
        w.add.click(self.add, inputs=form.inputs | {area.state},
                    outputs=[form.error_box, w.note, area.messages, area.state, *lists])
        w.move.click(self.move, inputs={w.job, w.position}, outputs=[w.note, *lists])
        w.remove.click(self.remove, inputs={w.job}, outputs=[w.note, *lists])
        w.load.click(self.load, inputs={w.job}, outputs=[*form.fields.values(), w.note])
        w.replace.click(self.replace, inputs=form.inputs | {w.job, area.state},
                        outputs=[form.error_box, w.note, area.state, *lists])
        w.stop_on_failure.input(self.set_stop_on_failure, inputs={w.stop_on_failure}, outputs=[w.note])
        w.resume.click(self.resume, inputs=set(), outputs=[w.note, *lists])
        w.timer.tick(self.refresh, inputs={w.seen}, outputs=[*lists, area.timer], show_progress="hidden")
        app.load(self.refresh, inputs={w.seen}, outputs=[*lists, area.timer])
        w.open.click(self.open, inputs={w.pick, area.state},
                     outputs=[*self.handlers.run_outputs(), area.runs, w.history_note])
        w.compare.click(self.compare, inputs={w.pick, w.compare_step},
                        outputs=[w.compare_loss, w.compare_lr, w.compare_step, w.compare_gallery, w.history_note])
        w.compare_step.input(self.compare, inputs={w.pick, w.compare_step},
                             outputs=[w.compare_loss, w.compare_lr, w.compare_step, w.compare_gallery,
                                      w.history_note])
        w.delete.click(self.ask_delete, inputs={w.pick}, outputs=[w.confirm, w.cancel, w.history_note])
        w.cancel.click(lambda: (gr.update(visible=False), gr.update(visible=False), ""), inputs=None,
                       outputs=[w.confirm, w.cancel, w.history_note])
        w.confirm.click(self.delete, inputs={w.pick}, outputs=[w.confirm, w.cancel, w.history_note, *lists])

    # ----- lists ------------------------------------------------------------------------------------
    def _lists(self, seen: str | None = None) -> dict:
        """The queue table, the job choices and the Runs table; all skipped when nothing changed."""
        w = self.w
        entries = run_queue.list_jobs(self.runs_dir)
        options = run_queue.read_options(self.runs_dir)
        summaries = [self._summary(p) for p in history.list_runs(self.runs_dir)[:HISTORY_LIMIT]]
        queue_text, history_text = queue_html(entries, options), history.history_html(summaries)
        signature = str(hash((queue_text, history_text)))
        if seen is not None and signature == seen:
            return {w.seen: gr.skip()}
        return {
            w.table: queue_text,
            w.job: gr.update(choices=removable_choices(entries)),
            w.history: history_text,
            w.pick: gr.update(choices=[s.name for s in summaries]),
            w.seen: signature,
            w.stop_on_failure: gr.update(value=bool(options["stop_on_failure"])),
        }

    def refresh(self, data: dict) -> dict:
        """The lists, and the run timer woken when a run goes (one the queue or another tab started)."""
        updates = self._lists(data[self.w.seen])
        if self.handlers.manager.active_run() is not None:
            updates[self.area.timer] = gr.Timer(active=True)
        return updates

    # ----- queue ------------------------------------------------------------------------------------
    def add(self, data: dict) -> dict:
        """Validate the form exactly as Start does; queue it only when there is no error."""
        from trainer.spec import validate_values

        session = data[self.area.state]
        values = self.form.values(data)
        _, problems = validate_values(values, for_training=True)
        updates = self.form.error_updates(problems, session.errors_shown)
        if has_errors(problems):
            session.notes = [("error", "Nothing was queued: fix the settings marked in red first."),
                             *problem_messages(problems)]
            return {**updates, self.w.note: "❌ Nothing was queued: fix the settings marked in red first.",
                    self.area.messages: self.handlers._messages(session), self.area.state: session}
        public, _secrets = split_secrets(values)
        job_id = run_queue.add_job(self.runs_dir, public)
        return {**updates, self.w.note: f"Queued **{job_id}**.", self.area.state: session, **self._lists()}

    def move(self, data: dict) -> dict:
        return self._queue_op(lambda job: run_queue.move_job(self.runs_dir, job, int(data[self.w.position] or 1)),
                              data[self.w.job], "Moved")

    def remove(self, data: dict) -> dict:
        return self._queue_op(lambda job: run_queue.remove_job(self.runs_dir, job), data[self.w.job], "Removed")

    def _queue_op(self, operation, job_id: str | None, done: str) -> dict:
        if not job_id:
            return {self.w.note: "Choose a job first."}
        try:
            operation(job_id)
        except run_queue.QueueError as error:
            return {self.w.note: f"❌ {error}"}
        return {self.w.note: f"{done} **{job_id}**.", **self._lists()}

    def load(self, data: dict) -> dict:
        job_id = data[self.w.job]
        if not job_id:
            return {self.w.note: "Choose a job first."}
        from trainer.spec import JobError

        try:
            values = run_queue.job_values(self.runs_dir, job_id)
        except JobError as error:
            return {self.w.note: f"❌ {error}"}
        return {**self.form.value_updates(values),
                self.w.note: f"Loaded **{job_id}** into the form; edit it and press Replace with form."}

    def replace(self, data: dict) -> dict:
        from trainer.spec import JobError, validate_values

        job_id = data[self.w.job]
        if not job_id:
            return {self.w.note: "Choose a job first."}
        session = data[self.area.state]
        values = self.form.values(data)
        _, problems = validate_values(values, for_training=True)
        updates = {**self.form.error_updates(problems, session.errors_shown), self.area.state: session}
        if has_errors(problems):
            return {**updates, self.w.note: "❌ The job was not changed: fix the settings marked in red first."}
        try:
            run_queue.replace_job(self.runs_dir, job_id, split_secrets(values)[0])
        except (run_queue.QueueError, JobError) as error:
            return {**updates, self.w.note: f"❌ {error}"}
        return {**updates, self.w.note: f"Replaced **{job_id}** with the form's settings.", **self._lists()}

    def set_stop_on_failure(self, data: dict) -> dict:
        on = bool(data[self.w.stop_on_failure])
        run_queue.set_options(self.runs_dir, stop_on_failure=on)
        return {self.w.note: "The queue pauses when a job fails or is stopped." if on
                else "The queue goes on when a job fails or is stopped."}

    def resume(self, data: dict) -> dict:
        run_queue.set_options(self.runs_dir, paused=False)
        return {self.w.note: "The queue goes on.", **self._lists()}

    # ----- history ----------------------------------------------------------------------------------
    def open(self, data: dict) -> dict:
        picked = data[self.w.pick] or []
        if not picked:
            return {self.w.history_note: "Select a run first."}
        updates = self.handlers.open_run({self.area.runs: picked[0], self.area.state: data[self.area.state]})
        return {**updates, self.w.history_note: f"Opened **{picked[0]}** in the run area above."}

    def compare(self, data: dict) -> dict:
        w, picked = self.w, data[self.w.pick] or []
        if len(picked) < 2:
            return {w.history_note: "Select two or more runs to compare."}
        views = [history.load_view(self.runs_dir / name) for name in picked]
        steps = history.common_sample_steps(views)
        wanted = data[w.compare_step]
        step = int(wanted) if wanted not in (None, "") and int(wanted) in steps else (steps[-1] if steps else None)
        pairs = history.side_by_side(views, step)
        note = f"{len(picked)} runs overlaid." + ("" if pairs else " They share no sample prompt and step.")
        return {
            w.compare_loss: _frame(history.overlay_loss_rows(views), COMPARE_LOSS_COLUMNS),
            w.compare_lr: _frame(history.overlay_lr_rows(views), COMPARE_LR_COLUMNS),
            w.compare_step: gr.update(choices=[str(s) for s in steps], value=str(step) if step is not None else None),
            w.compare_gallery: [(self.handlers._servable(p), c) for p, c in pairs if Path(p).is_file()],
            w.history_note: note,
        }

    def ask_delete(self, data: dict) -> dict:
        picked = data[self.w.pick] or []
        if not picked:
            return {self.w.history_note: "Select the runs to delete first."}
        return {self.w.confirm: gr.update(visible=True), self.w.cancel: gr.update(visible=True),
                self.w.history_note: f"Delete {', '.join(picked)} with their LoRA files? This cannot be undone."}

    def delete(self, data: dict) -> dict:
        done, failed = [], []
        for name in data[self.w.pick] or []:
            try:
                history.delete_run(self.runs_dir / name, self.runs_dir)
                done.append(name)
            except (OSError, ValueError) as error:
                failed.append(f"{name}: {error}")
        note = (f"Deleted {', '.join(done)}." if done else "") + "".join(f"\n\n❌ {f}" for f in failed)
        return {self.w.confirm: gr.update(visible=False), self.w.cancel: gr.update(visible=False),
                self.w.history_note: note, **self._lists()}
