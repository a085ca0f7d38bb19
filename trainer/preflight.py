"""Checks that need the trainer's own modules (optimizer signatures), run by ``validate``
and before ``train``; still no model is loaded."""
from __future__ import annotations

from trainer.spec import Problem
from trainer.spec.sections import Job


def deep_checks(job: Job) -> list[Problem]:
    from trainer.optim.optimizers import OptimizerSettingError, check_optimizer_args, parse_optimizer_args

    problems: list[Problem] = []
    try:
        check_optimizer_args(job.optimisation.optimizer, parse_optimizer_args(job.optimisation.optimizer_args))
    except OptimizerSettingError as error:
        problems.append(Problem(getattr(error, "setting", None) or "optimizer_args", str(error)))
    if job.optimisation.lr_scheduler == "adafactor" and job.optimisation.optimizer != "Adafactor":
        problems.append(Problem("lr_scheduler", "the adafactor scheduler needs the Adafactor optimizer"))
    return problems
