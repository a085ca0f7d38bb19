"""The plan panel and the Dataset tab: what a run will do, worked out before it starts (no gradio here).

The plan comes from ``python -m trainer plan JOB.toml`` in a subprocess, because the LR preview uses the
trainer's own schedulers (torch) and the GUI process stays free of torch. The dataset table comes from
``trainer.data.folders.scan_dataset``, which only reads image headers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

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


def compute_plan(values: dict[str, Any], trainer_command: list[str] | None = None) -> PlanResult:
    """Write the values as a job file in a temporary folder and ask the trainer for its plan."""
    from trainer.spec import JobError, write_job_toml

    command = list(trainer_command or [sys.executable, "-m", "trainer"])
    with tempfile.TemporaryDirectory(prefix="loom-plan-") as folder:
        try:
            job_path = write_job_toml(values, Path(folder) / "job.toml")
        except JobError as error:
            return PlanResult(None, "Fix the settings first:\n" + "\n".join(f"- {p}" for p in error.problems))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")))))
        try:
            done = subprocess.run([*command, "plan", str(job_path), "--no-memory"], capture_output=True, text=True,
                                  timeout=PLAN_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return PlanResult(None, f"The plan took longer than {PLAN_TIMEOUT_S} s; is the image folder very large?")
    if done.returncode != 0:
        return PlanResult(None, (done.stderr or done.stdout).strip() or f"plan failed (exit code {done.returncode})")
    try:
        return PlanResult(json.loads(done.stdout), "")
    except json.JSONDecodeError:
        return PlanResult(None, "The trainer's plan was not valid JSON:\n" + done.stdout[-2000:])


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
    memory = memory_markdown(plan.get("memory"))
    return "| Plan | |\n|---|---|\n" + table + ("\n" + notes if notes else "") + ("\n\n" + memory if memory else "")


def _bytes(value) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


VERDICT_WORDS = {"fits": "✅ fits", "tight": "⚠️ tight", "will not fit": "❌ will not fit", "unknown": "free memory unknown"}


def memory_markdown(memory: dict | None) -> str:
    """The memory estimate: the peak with its parts, against the free memory, and what would make it fit."""
    if not memory:
        return ""
    where = "GPU memory" if memory.get("device") == "cuda" else "RAM"
    free = memory.get("free_bytes")
    verdict = VERDICT_WORDS.get(memory.get("verdict", "unknown"), str(memory.get("verdict")))
    head = (f"**Memory: {_bytes(memory.get('peak_bytes'))} of {where} at the peak** ({memory.get('phase')}); "
            f"{_bytes(free) if free else '?'} free — {verdict}")
    parts = "\n".join(f"| {part['name']} | {_bytes(part['bytes'])} |" for part in memory.get("parts") or [])
    lines = [head, "", "| Memory at the peak | |", "|---|---|", parts]
    remedies = memory.get("suggestions") or []
    if remedies:
        lines.append("")
        lines.append("To make it fit, try:" if memory.get("verdict") == "will not fit" else "To leave more room, try:")
        for remedy in remedies:
            setting = f" (`{remedy['setting']}`)" if remedy.get("setting") else ""
            fits = " — fits" if remedy.get("fits") else ""
            lines.append(f"- {remedy['words']}{setting}: {_bytes(remedy['peak_bytes'])}{fits}")
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
