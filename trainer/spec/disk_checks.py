"""Checks against the disk that ``validate``, ``plan``, the page's Start and ``train`` all make before a
model is loaded: the output folders can be written, the dataset has trainable images, a resume folder holds
a training state. Nothing is left behind: a folder is probed by creating and removing an empty one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .setting import Problem
from .sections import Job

STATE_FILE = "train_state.json"  # trainer.saving writes it into every state folder


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_folder_problem(key: str, value: str) -> list[Problem]:
    """A folder the run writes into (created if missing) must be, or be creatable as, a writable folder."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        return [Problem(key, f"{path} exists and is not a folder")]
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        return [Problem(key, f"{path} cannot be created: {existing} is a file")]
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lora-loom-write-check-", dir=existing))
    except OSError as error:
        return [Problem(key, f"{path} cannot be written ({error.strerror or error}): choose a folder of yours")]
    return []


def dataset_problems(job: Job) -> list[Problem]:
    """What ``plan`` and ``train`` would refuse in the image folders (scan and bucket plan, headers only)."""
    from trainer.data.dataset_config import scan_job_dataset
    from trainer.data.dataset_plan import plan_dataset
    from trainer.data.folders import DataError

    try:
        plan_dataset(*scan_job_dataset(job))
    except DataError as error:
        return [Problem(error.setting or "train_data_dir", str(error))]
    return []


def network_weights_problems(job: Job) -> list[Problem]:
    """The LoRA file a run starts from must be one (read from its header; a model or a damaged file is not)."""
    from trainer.models.detect import ModelFileError, inspect_model

    try:
        info = inspect_model(job.network.network_weights)
    except ModelFileError as error:
        return [Problem("network_weights", str(error))]
    if info.kind != "lora":
        return [Problem("network_weights", f"{info.path} is not a LoRA file: {info.summary()}")]
    return []


def resume_problems(job: Job) -> list[Problem]:
    folder = Path(job.saving.resume).expanduser()
    if folder.is_dir() and not (folder / STATE_FILE).is_file():
        return [Problem("resume", f"{folder} is not a saved training state (no {STATE_FILE}): choose a "
                                  "…-state folder written with 'Save training state'")]
    return []
