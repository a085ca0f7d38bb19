"""The plan panel and the Dataset tab: what a run will do, worked out before it starts (no gradio here).

The plan comes from the trainer in a subprocess, because the LR preview uses the trainer's own schedulers
(torch) and the GUI process stays free of torch: one ``python -m trainer plan-server`` that the page keeps
(``PlanWorker``), so that the imports are paid once and a plan after an edit takes a fraction of a second.
The dataset table comes from ``trainer.data.folders.scan_dataset``, which only reads image headers.
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, NamedTuple

from gui.runs import PROJECT_ROOT

PLAN_TIMEOUT_S = 120
DATASET_LABELS = (
    ("train_images", "Training images"),
    ("train_samples", "Images × repeats per epoch"),
    ("reg_images", "Regularization images"),
    ("batch_size", "Batch size"),
)


class PlanResult(NamedTuple):
    plan: dict | None
    error: str  # "" when the plan was made


class PlanWorker:
    """One long-lived ``TRAINER plan-server`` subprocess, asked one plan at a time (a lock), started on the
    first request and again whenever it has died; it ends by itself when the page's process closes its
    stdin (the app exits)."""

    def __init__(self, trainer_command: list[str] | None = None):
        self.command = [*(trainer_command or [sys.executable, "-m", "trainer"]), "plan-server"]
        self._process: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None
        self._lock = threading.Lock()

    def plan(self, job_path: Path, timeout: float = PLAN_TIMEOUT_S) -> PlanResult:
        failure = ""
        with self._lock:
            for _attempt in range(2):  # a worker that died since the last plan is started again, once
                try:
                    process = self._started()
                    assert process.stdin is not None
                    process.stdin.write(json.dumps({"job": str(job_path), "memory": True}) + "\n")
                    process.stdin.flush()
                    line = _read_line(process, timeout)
                except OSError:
                    line = ""
                if line is None:
                    self.close()
                    return PlanResult(None, f"The plan took longer than {timeout:.0f} s; is the image folder "
                                            f"very large?")
                if line:
                    return _plan_result(line)
                failure = self._failure()
                self.close()
            return PlanResult(None, failure or "The trainer's plan worker ended without an answer.")

    def start(self) -> None:
        """Start the worker now (it imports while the page loads) instead of at the first plan."""
        with self._lock:
            self._started()

    def _started(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self.close()
            self._stderr = tempfile.TemporaryFile()
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(PROJECT_ROOT),
                                                                             os.environ.get("PYTHONPATH")))))
            self._process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=self._stderr, text=True, env=env)
        return self._process

    def _failure(self) -> str:
        """The last lines the worker wrote to stderr (why it died)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()[-2000:]

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
            if process.poll() is None:
                process.kill()
            process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _read_line(process: subprocess.Popen, timeout: float) -> str | None:
    """One line of the worker's stdout; "" when it ended; None when it said nothing within ``timeout``."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return None
    return process.stdout.readline()


def _plan_result(line: str) -> PlanResult:
    try:
        reply = json.loads(line)
    except json.JSONDecodeError:
        return PlanResult(None, "The trainer's plan was not valid JSON:\n" + line[-2000:])
    if reply.get("plan") is not None:
        return PlanResult(reply["plan"], "")
    return PlanResult(None, str(reply.get("error") or f"plan failed (exit code {reply.get('code')})"))


def compute_plan(values: dict[str, Any], worker: PlanWorker) -> PlanResult:
    """Write the values as a job file in a temporary folder and ask the trainer's plan worker for its plan."""
    from trainer.spec import JobError, write_job_toml

    with tempfile.TemporaryDirectory(prefix="loom-plan-") as folder:
        try:
            job_path = write_job_toml(values, Path(folder) / "job.toml")
        except JobError as error:
            return PlanResult(None, "Fix the settings first:\n" + "\n".join(f"- {p}" for p in error.problems))
        return worker.plan(job_path)


def _points(steps: list, limit: int = 12) -> str:
    if not steps:
        return "none"
    shown = ", ".join(str(s) for s in steps[:limit])
    return shown + (f" … ({len(steps)} in all)" if len(steps) > limit else "")


# Which setting fixed the run's length (trainer.plan.run_length), in the page's words.
LENGTH_SETTINGS = {"epoch": "Epoch", "max_train_epochs": "Max train epoch (replaces Epoch and Max train steps)",
                   "max_train_steps": "Max train steps (Epoch is not read)"}


def plan_markdown(plan: dict) -> str:
    """The plan's numbers in words: the arithmetic the seed explains by hand."""
    dataset = plan.get("dataset") or {}
    te_stop = plan.get("text_encoder_stop_step")
    rows = [
        ("Batches per epoch", plan.get("batches_per_epoch")),
        *([("Processes (each takes whole batches)", plan["num_processes"]),
           ("Global batch (batch × processes × accumulation)", plan.get("global_batch_size"))]
          if (plan.get("num_processes") or 1) > 1 else []),
        ("Steps per epoch", plan.get("steps_per_epoch")),
        ("Epochs", plan.get("epochs")),
        ("**Total steps**", f"**{plan.get('total_steps')}**"),
        ("Length set by", LENGTH_SETTINGS.get(plan.get("governed_by") or "epoch", "Epoch")),
        ("Warmup steps", plan.get("warmup_steps")),
        ("Text encoder stops", "never (trains to the end)" if te_stop is None else f"after step {te_stop}"),
        ("Intermediate saves (epochs)", _points(plan.get("save_epochs") or [])),
        ("Intermediate saves (steps)", _points(plan.get("save_steps") or [])),
        ("Samples at steps", _points(plan.get("sample_steps") or [])),
    ]
    network = plan.get("network")
    if network:  # the chosen type's size on this model's UNet
        rows.insert(0, ("UNet network", f"{network['type']}: {network['modules']} modules, "
                                        f"{network['parameters']:,} trainable parameters"))
    dataset_rows = [(label, dataset[key]) for key, label in DATASET_LABELS if key in dataset]
    rows = dataset_rows + rows
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    notes = "".join(f"\n- ⚠️ `{w['setting']}` {w['message']}" for w in plan.get("warnings") or [])
    memory = memory_markdown(plan.get("memory")) if plan.get("memory") else (
        NO_ESTIMATE if "memory" in plan else "")
    return (memory + "\n\n" if memory else "") + "| Plan | |\n|---|---|\n" + table + ("\n" + notes if notes else "")


NO_ESTIMATE = "**Memory:** no estimate (the model's layout could not be read; the run still reports its peak)."


def _bytes(value) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


VERDICT_WORDS = {"fits": "✅ fits", "tight": "⚠️ tight", "will not fit": "❌ will not fit", "unknown": "free memory unknown"}


def memory_markdown(memory: dict | None) -> str:
    """The memory estimate, first in the plan: the peak against the free memory and what would make it fit
    (shown), then the peak's parts (folded)."""
    if not memory:
        return ""
    where = "GPU memory" if memory.get("device") == "cuda" else "RAM"
    free = memory.get("free_bytes")
    verdict = VERDICT_WORDS.get(memory.get("verdict", "unknown"), str(memory.get("verdict")))
    lines = [f"**Memory: {_bytes(memory.get('peak_bytes'))} of {where} at the peak** ({memory.get('phase')}); "
             f"{_bytes(free) if free else '?'} free — **{verdict}**"]
    remedies = memory.get("suggestions") or []
    if remedies:
        lines.append("")
        lines.append("To make it fit, try:" if memory.get("verdict") == "will not fit" else "To leave more room, try:")
        for remedy in remedies:
            setting = f" (`{remedy['setting']}`)" if remedy.get("setting") else ""
            fits = " — fits" if remedy.get("fits") else ""
            lines.append(f"- {remedy['words']}{setting}: {_bytes(remedy['peak_bytes'])}{fits}")
    parts = [f"| {part['name']} | {_bytes(part['bytes'])} |" for part in memory.get("parts") or []]
    if parts:
        lines += ["", "<details class=\"loom-memory-parts\"><summary>The peak, part by part</summary>", "",
                  "| Memory at the peak | |", "|---|---|", *parts, "", "</details>"]
    return "\n".join(lines)


def dataset_config_markdown(values: dict) -> str:
    """A table of a dataset config's subsets (repeats, images, their own caption and flip options, masks) plus
    the scan's warnings; the image folders are not read then (as in sd-scripts)."""
    from trainer.data import folders
    from trainer.data.dataset_config import scan_job_dataset
    from trainer.spec import JobError, job_from_values

    try:
        scan, _ = scan_job_dataset(job_from_values(values))
    except folders.DataError as error:
        return f"❌ `{error.setting or 'dataset_config'}`: {error.message}"
    except JobError as error:
        return f"❌ {error}"
    lines = ["| subset | kind | repeats | images | shuffle | keep tokens | flip | masks |",
             "|---|---|---|---|---|---|---|---|"]
    for subset in scan.subsets:
        own = subset.options
        kind = "regularization" if subset.is_reg else "training"
        masks = "—" if own is None else own.mask_dir or ("alpha" if own.alpha_mask else "—")
        lines.append(f"| {subset.folder} | {kind} | {subset.repeats} | {len(subset.images)} | "
                     f"{own.shuffle_caption if own else '—'} | {own.keep_tokens if own else '—'} | "
                     f"{own.flip_aug if own else '—'} | {masks} |")
    lines.append(f"\nFrom the dataset config {values.get('dataset_config')} (the image folders are not used).")
    for warning in scan.warnings:
        lines.append(f"- ⚠️ `{warning.setting}`: {warning.message}")
    return "\n".join(lines)


def dataset_markdown(train_data_dir: str, reg_data_dir: str, caption_extension: str) -> str:
    """A table of the N_name folders found (repeats, images, captions) plus the scan's warnings."""
    from trainer.data import folders  # its DataError is whatever class the scan raises

    try:
        scan = folders.scan_dataset(train_data_dir, reg_data_dir or None, caption_extension or ".caption")
    except folders.DataError as error:
        return f"❌ `{error.setting or 'train_data_dir'}`: {error.message}"
    lines = ["| folder | kind | repeats | images | with caption file | images × repeats |",
             "|---|---|---|---|---|---|"]
    total = 0
    for subset in scan.subsets:
        captioned = sum(1 for image in subset.images if image.caption_from_file)
        weight = len(subset.images) * subset.repeats
        total += 0 if subset.is_reg else weight
        kind = "regularization" if subset.is_reg else "training"
        lines.append(f"| {Path(subset.folder).name} | {kind} | {subset.repeats} | {len(subset.images)} | "
                     f"{captioned} | {weight} |")
    lines.append(f"\n**{total}** training images per epoch (images × repeats).")
    for warning in scan.warnings:
        lines.append(f"- ⚠️ `{warning.setting}`: {warning.message}")
    return "\n".join(lines)
