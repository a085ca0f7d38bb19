"""What the page's buttons, fields and timer do. Every handler takes its inputs by name (dict inputs).

One ``SessionState`` per browser tab remembers the run it watches (a ``RunView`` with its byte offset)
and the page's own notes (validation, presets). The run manager is shared by all tabs: one run at a time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from gui.model_note import MODEL_KEY, model_note
from gui.plan_panel import PlanWorker, compute_plan, dataset_config_markdown, dataset_markdown, plan_markdown
from gui.preset_handlers import PresetHandlers
from gui.run_view import (
    RunView,
    loss_rows,
    lr_rows,
    messages_markdown,
    outputs_markdown,
    plan_lr_rows,
    progress_html,
    read_new_events,
)
from gui.runs import LOG_FILE, RunError, run_status, stop_requests, tail_text, trainer_alive
from gui.values import has_errors, problem_messages, split_secrets

PLAN_SETTLE_S = 1.0  # the plan is made again once edits have paused this long (it costs a subprocess)
RUN_TICK_S = 1.0  # the watched run's events are read this often while it goes
PLAN_TICK_S = 1.0  # while an edit waits for its plan, this often the timer asks whether edits have paused
DATASET_KEYS = ("train_data_dir", "reg_data_dir", "caption_extension", "dataset_config")
LOSS_COLUMNS = ["step", "loss", "series"]
LR_COLUMNS = ["step", "lr", "group"]


@dataclass
class SessionState:
    view: RunView = field(default_factory=RunView)
    notes: list[tuple[str, str]] = field(default_factory=list)
    settled: str = ""  # the final state already shown, so the timer stops redrawing
    samples_shown: int = -1
    plan_shown: bool = False
    edited: dict | None = None  # the form's values (secrets left out) after the latest edit
    edited_at: float = 0.0  # time.monotonic() of that edit
    planned: dict | None = None  # the values the plan panel was last made from
    errors_shown: dict[str, str] = field(default_factory=dict)  # the field error notes on the page, by setting


def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def view_state(view: RunView) -> str:
    """running / completed / stopped / failed / killed / died for the run a view watches."""
    if view.finished is not None:
        return str(view.finished.get("status", "completed"))
    run_dir = Path(view.run_dir or ".")
    if trainer_alive(run_dir):
        return "running"
    read_new_events(view)  # the trainer may have written its last lines just before exiting
    if view.finished is not None:
        return str(view.finished.get("status", "completed"))
    return run_status(run_dir).state


class Handlers:
    def __init__(self, form, area, manager, config):
        self.form, self.area, self.manager, self.config = form, area, manager, config
        self.planner = PlanWorker(config.trainer_command)  # one plan subprocess for the page, kept
        self.presets = PresetHandlers(form, area, config)

    # ----- wiring -----------------------------------------------------------------------------------
    def wire(self, app: gr.Blocks) -> None:
        form, area = self.form, self.area
        run_outputs = self.run_outputs()
        field_outputs = [form.error_box, area.messages, area.state]
        # A text field is checked when it is left (blur) or submitted, not on every keystroke: each check
        # sends the whole form, which costs the browser seconds on a busy machine; a box or list is checked
        # when it is changed by hand.
        triggers = [t for w in form.fields.values()
                    for t in ((w.blur, w.submit) if isinstance(w, gr.Textbox) else (w.input,))]
        gr.on(triggers, self.check_fields, inputs=form.inputs | {area.state},
              outputs=[*field_outputs, area.plan_timer], show_progress="hidden", trigger_mode="always_last")
        for key in {s_key for s_key in self._controlling_keys()}:
            form.fields[key].change(self.applicability, inputs=form.inputs, outputs=self._dependents(),
                                    show_progress="hidden")
        area.start.click(self.start, inputs=form.inputs | {area.state},
                         outputs=[form.error_box, *run_outputs, area.runs])
        area.stop.click(self.stop, inputs={area.state}, outputs=[area.state, area.messages, area.stop])
        area.sample_now.click(self.sample_now, inputs={area.state}, outputs=[area.state, area.messages])
        area.save_now.click(self.save_now, inputs={area.state}, outputs=[area.state, area.messages])
        area.timer.tick(self.tick, inputs={area.state}, outputs=[*run_outputs, area.runs],
                        show_progress="hidden")
        area.open_run.click(self.open_run, inputs={area.runs, area.state}, outputs=[*run_outputs, area.runs])
        area.plan_button.click(self.plan, inputs=form.inputs | {area.state}, outputs=[area.plan_md, area.plan_plot])
        area.plan_timer.tick(self.plan_when_settled, inputs={area.state},
                             outputs=[area.plan_md, area.plan_plot, area.dataset_md, area.plan_timer],
                             show_progress="hidden")
        area.scan_button.click(self.scan, inputs=form.inputs, outputs=[area.dataset_md])
        self.presets.wire(self.check_fields)
        # One listener for the page load and every change (triggers=None means both): with "always_last" the
        # browser runs it one call at a time, the last with the latest values, so a slow answer for the
        # page's first model can never land after, and hide, the note for the model just typed in.
        note_inputs = {form.fields[k] for k in (MODEL_KEY, "v2", "v_parameterization") if k in form.fields}
        gr.on(None, self.show_model_note, inputs=note_inputs, outputs=[area.model_note], show_progress="hidden",
              trigger_mode="always_last")
        app.load(self.on_load, inputs={area.state}, outputs=[*run_outputs, area.runs, area.preset]).then(
            self.scan, inputs=form.inputs, outputs=[area.dataset_md]).then(
            self.plan_unless_running, inputs=form.inputs | {area.state}, outputs=[area.plan_md, area.plan_plot])

    def run_outputs(self) -> list:
        a = self.area
        return [a.state, a.progress, a.loss_plot, a.lr_plot, a.gallery, a.outputs, a.log, a.messages, a.start,
                a.stop, a.sample_now, a.save_now, a.plan_md, a.plan_plot, a.timer]

    def _controlling_keys(self) -> set[str]:
        from trainer.spec import SETTINGS

        return {s.visible_when[0] for s in SETTINGS if s.visible_when and s.visible_when[0] in self.form.fields}

    def _dependents(self) -> list:
        from trainer.spec import SETTINGS

        return [self.form.fields[s.key] for s in SETTINGS if s.visible_when and s.key in self.form.fields]

    # ----- settings ---------------------------------------------------------------------------------
    def check_fields(self, data: dict) -> dict:
        """Cheap validation on every edit (no file-system checks): notes under fields and in the panel."""
        from trainer.spec import validate_values

        session: SessionState = data[self.area.state]
        values = self.form.values(data)
        _, problems = validate_values(values, for_training=False)
        session.notes = problem_messages(problems)
        session.edited, session.edited_at = split_secrets(values)[0], time.monotonic()
        return {**self.form.error_updates(problems, session.errors_shown), self.area.messages: self._messages(session),
                self.area.state: session, self.area.plan_timer: gr.Timer(active=True)}

    def show_model_note(self, data: dict) -> dict:
        """What the base model is (read from its header), with suggestions for v2 / v_parameterization."""
        values = self.form.values(data)
        note = model_note(values.get(MODEL_KEY, ""), values.get("v2", False), values.get("v_parameterization", False))
        return {self.area.model_note: note}

    def applicability(self, data: dict) -> dict:
        return self.form.applicability_updates(self.form.values(data))

    def _messages(self, session: SessionState) -> str:
        return messages_markdown(session.notes + session.view.messages)

    # ----- runs -------------------------------------------------------------------------------------
    def start(self, data: dict) -> dict:
        """Validate for training; start only when there is no error."""
        from trainer.spec import JobError, validate_values

        session: SessionState = data[self.area.state]
        values = self.form.values(data)
        _, problems = validate_values(values, for_training=True)
        session.notes = problem_messages(problems)
        updates = self.form.error_updates(problems, session.errors_shown)
        if has_errors(problems):
            session.notes.insert(0, ("error", "Nothing was started: fix the settings marked in red first."))
            return {**updates, self.area.messages: self._messages(session), self.area.state: session}
        public, secrets = split_secrets(values)
        try:
            run_dir = self.manager.start(public, secrets)
        except (RunError, JobError) as error:
            session.notes.insert(0, ("error", str(error)))
            return {**updates, self.area.messages: self._messages(session), self.area.state: session}
        self._attach(session, run_dir)
        return {**updates, **self.render(session), self.area.runs: self._runs_update(run_dir.name)}

    def stop(self, data: dict) -> dict:
        session: SessionState = data[self.area.state]
        run_dir = Path(session.view.run_dir) if session.view.run_dir else None
        done = self.manager.stop(run_dir)
        note = {"interrupted": "Stopping: the trainer finishes its step and saves the LoRA. Press Stop again "
                               "to kill it at once (nothing more is saved).",
                "killed": "Killed the trainer."}.get(done, "There is no run in progress to stop.")
        session.notes = [("info", note)]
        label = "Stop again to kill now" if done == "interrupted" else "Stop training"
        return {self.area.state: session, self.area.messages: self._messages(session),
                self.area.stop: gr.update(value=label)}

    def sample_now(self, data: dict) -> dict:
        return self._request(data[self.area.state], "sample", "Asked for samples: the trainer draws them once "
                                                               "the current step is done; they appear below.")

    def save_now(self, data: dict) -> dict:
        return self._request(data[self.area.state], "save", "Asked for a save: the trainer writes the LoRA "
                                                            "once the current step is done (listed below).")

    def _request(self, session: SessionState, what: str, note: str) -> dict:
        run_dir = Path(session.view.run_dir) if session.view.run_dir else None
        asked = run_dir is not None and not session.settled and self.manager.request(run_dir, what)
        session.notes = [("info", note if asked else "There is no training in progress to ask (it may still be "
                                                      "loading the model: try again once steps appear).")]
        return {self.area.state: session, self.area.messages: self._messages(session)}

    def tick(self, data: dict) -> dict:
        """Once a second: read new events and redraw what changed; nothing when nothing did."""
        session: SessionState = data[self.area.state]
        if session.settled or not session.view.run_dir:
            active = self.manager.active_run()
            if active is None or str(active) == session.view.run_dir:
                return {self.area.timer: gr.Timer(active=False)}  # nothing to watch: sleep until woken
            self._attach(session, active)
            return {**self.render(session), self.area.runs: self._runs_update(active.name)}
        arrived = read_new_events(session.view)
        updates = self.render(session)
        if not arrived:
            updates.pop(self.area.loss_plot), updates.pop(self.area.lr_plot)
        if session.settled:
            updates[self.area.runs] = self._runs_update(Path(session.view.run_dir).name)
        return updates

    def open_run(self, data: dict) -> dict:
        session: SessionState = data[self.area.state]
        name = data[self.area.runs]
        if not name:
            session.notes = [("info", "Choose a run in the Runs list first.")]
            return {self.area.messages: self._messages(session), self.area.state: session}
        self._attach(session, self.manager.runs_dir / name)
        return {**self.render(session), self.area.runs: self._runs_update(name)}

    def on_load(self, data: dict) -> dict:
        """A page (re)load: re-attach to a run still in progress, fill the Runs and Preset lists."""
        session: SessionState = data[self.area.state]
        updates = {self.area.preset: gr.update(choices=self.presets.choices()),
                   self.area.runs: self._runs_update(None)}
        active = self.manager.active_run()
        if active is not None:
            self._attach(session, active)
            updates.update(self.render(session))
            updates[self.area.runs] = self._runs_update(active.name)
        return updates

    def _attach(self, session: SessionState, run_dir: Path) -> None:
        session.view = RunView(run_dir=str(run_dir))
        session.settled, session.samples_shown, session.plan_shown = "", -1, False
        read_new_events(session.view)

    def render(self, session: SessionState) -> dict:
        """The run area for the watched run; parts that did not change are left alone."""
        a, view = self.area, session.view
        state = view_state(view)
        running = state == "running"
        stops = stop_requests(Path(view.run_dir or "."))
        # Sample now / Save now act once steps are running (the trainer answers after a step), until Stop
        trains = running and bool(view.plan) and not stops and bool(view.last_step or view.phase == "training")
        if not running and state != "died":  # "died" is looked at again: late last words revise it
            session.settled = state
            session.notes = [n for n in session.notes if n[0] != "info"]  # "Stopping…" is over
        if state == "died":
            session.notes = [("error", "The trainer process ended without saying it finished (crashed or "
                                       "killed from outside). The log below shows its last lines.")]
        updates = {
            a.state: session,
            a.progress: progress_html(view, state),
            a.loss_plot: frame(loss_rows(view), LOSS_COLUMNS),
            a.lr_plot: frame(lr_rows(view), LR_COLUMNS),
            a.outputs: outputs_markdown(view),
            a.log: tail_text(Path(view.run_dir or ".") / LOG_FILE, max_lines=25),
            a.messages: self._messages(session),
            a.start: gr.update(interactive=not running),
            a.stop: gr.update(interactive=running, value="Stop again to kill now" if running and stops == 1
                              else "Stop training"),
            a.sample_now: gr.update(interactive=trains),
            a.save_now: gr.update(interactive=trains),
            a.timer: gr.Timer(active=not session.settled),  # a settled run needs no more reading
        }
        if len(view.samples) != session.samples_shown:
            session.samples_shown = len(view.samples)
            updates[a.gallery] = [(self._servable(p), c) for p, c in reversed(view.samples) if Path(p).is_file()]
        if view.plan and not session.plan_shown:
            session.plan_shown = True
            updates[a.plan_md] = plan_markdown(view.plan)
            updates[a.plan_plot] = frame(plan_lr_rows(view.plan), LR_COLUMNS)
        return updates

    def _servable(self, path: str):
        """Gradio serves files only from the runs folder (allowed_paths); an image elsewhere goes as pixels."""
        if Path(path).resolve().is_relative_to(self.manager.runs_dir):
            return path
        from PIL import Image

        with Image.open(path) as image:
            return image.copy()

    def _runs_update(self, selected: str | None):
        choices = [(f"{p.name} — {run_status(p).outcome}", p.name) for p in self.manager.list_runs()[:50]]
        return gr.update(choices=choices, value=selected)

    # ----- plan and dataset -------------------------------------------------------------------------
    def plan(self, data: dict) -> dict:
        return self._plan_for(data[self.area.state], split_secrets(self.form.values(data))[0])

    def _plan_for(self, session: SessionState, values: dict, rescan: bool = False) -> dict:
        """The plan panel (and the Dataset tab when ``rescan``) for ``values``. The page's plan worker makes one
        plan at a time; a request overtaken by a newer one while it waited or ran is dropped."""
        session.planned = values
        updates = self._plan_updates(values)
        if rescan:
            updates.update(self._scan_updates(values))
        if session.planned is not values:
            return {self.area.plan_md: gr.skip()}
        return updates

    def _plan_updates(self, values: dict) -> dict:
        result = compute_plan(values, self.planner)
        if result.plan is None:
            return {self.area.plan_md: f"❌ {result.error}", self.area.plan_plot: frame([], LR_COLUMNS)}
        return {self.area.plan_md: plan_markdown(result.plan),
                self.area.plan_plot: frame(plan_lr_rows(result.plan), LR_COLUMNS)}

    def plan_unless_running(self, data: dict) -> dict:
        session: SessionState = data[self.area.state]
        if session.view.plan:
            return {self.area.plan_md: gr.skip()}
        return self.plan(data)

    def plan_when_settled(self, data: dict) -> dict:
        """Timer: once edits have paused for PLAN_SETTLE_S, make the plan again from the latest values (and
        rescan the folders if they changed). Not while the page watches a run that is going: the panel shows
        that run's plan then."""
        session: SessionState = data[self.area.state]
        wanted, planned = session.edited, session.planned
        watching_run = bool(session.view.plan) and not session.settled
        if wanted is None or wanted == planned:
            return {self.area.plan_timer: gr.Timer(active=False)}  # nothing waits for a plan
        if watching_run or time.monotonic() - session.edited_at < PLAN_SETTLE_S:
            return {self.area.plan_md: gr.skip()}
        rescan = planned is None or any(wanted.get(k) != planned.get(k) for k in DATASET_KEYS)
        updates = self._plan_for(session, wanted, rescan)
        newer_edit = session.edited is not None and session.edited != session.planned
        return {**updates, self.area.plan_timer: gr.Timer(active=newer_edit)}

    def scan(self, data: dict) -> dict:
        return self._scan_updates(self.form.values(data))

    def _scan_updates(self, values: dict) -> dict:
        if str(values.get("dataset_config") or "").strip():
            return {self.area.dataset_md: dataset_config_markdown(values)}
        text = dataset_markdown(values.get("train_data_dir", ""), values.get("reg_data_dir", ""),
                                values.get("caption_extension", ""))
        return {self.area.dataset_md: text}
