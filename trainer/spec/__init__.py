"""The one schema: every setting declared once, the strict job model, its TOML file and its checks.

    from trainer.spec import SETTINGS, load_job, job_from_values, write_job_toml, check_job
"""
from __future__ import annotations

from .checks import check_paths, check_settings, parse_additional_parameters
from .job import (
    SETTINGS,
    SETTINGS_BY_KEY,
    SPEC_VERSION,
    Job,
    JobError,
    defaults,
    job_from_values,
    job_to_values,
    load_job,
    read_job_toml,
    sparse_values,
    toml_text,
    write_job_toml,
)
from .setting import TABS, Problem, Setting
from .sections import Job


def check_job(job: Job, *, for_training: bool = True) -> list[Problem]:
    """Cross-setting rules, plus, when the job is about to train (Start, ``validate``, ``train``), the
    file-system checks and the optimizer's own (``trainer.preflight``: it imports torch, never a model)."""
    problems = check_settings(job, SETTINGS)
    if for_training:
        from trainer.preflight import deep_checks

        problems = check_paths(job) + problems + deep_checks(job)
    return problems


def validate_values(values: dict, *, for_training: bool = True):
    """(job or None, problems) for a dict of settings: field errors first, then cross-setting checks."""
    try:
        job = job_from_values(values)
    except JobError as error:
        return None, error.problems
    return job, check_job(job, for_training=for_training)


__all__ = [
    "SETTINGS", "SETTINGS_BY_KEY", "SPEC_VERSION", "TABS", "Job", "JobError", "Problem", "Setting",
    "check_job", "check_paths", "check_settings", "defaults", "job_from_values",
    "job_to_values", "load_job", "parse_additional_parameters", "read_job_toml", "sparse_values",
    "toml_text", "validate_values", "write_job_toml",
]
