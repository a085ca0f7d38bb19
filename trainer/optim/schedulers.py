"""Learning-rate schedules by name: the factor at each optimizer step, the torch scheduler, the preview curve.

The formulas are those of transformers' ``get_scheduler`` family, called the way sd-scripts calls them
(``get_scheduler_fix``): ``cosine`` is one half-wave to 0 (transformers' default ``num_cycles=0.5``; the
"LR number of cycles" setting is not passed to it), ``cosine_with_restarts`` runs ``num_cycles`` hard
restarts, ``polynomial`` decays to ``lr_end = 1e-7`` with ``power``. ``adafactor`` is the Adafactor
optimizer's own step size (see :func:`adafactor_relative_step_size`).

Steps are 0-based optimizer steps: ``lr_factor(s, …)`` is the multiplier of a group's base learning rate
used by optimizer step ``s``, which is what ``LambdaLR`` gives after ``s`` calls of ``scheduler.step()``.
"""
from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from trainer.spec.tables import LR_SCHEDULERS, SCHEDULERS_WITHOUT_WARMUP

SCHEDULER_NAMES = LR_SCHEDULERS
POLYNOMIAL_LR_END = 1e-7  # transformers' default lr_end for the polynomial schedule


def _warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup from 0: ``step / max(1, warmup_steps)``."""
    return step / max(1, warmup_steps)


def _progress(step: int, total_steps: int, warmup_steps: int) -> float:
    """Fraction of the post-warmup steps done: ``(step − warmup) / max(1, total − warmup)``."""
    return (step - warmup_steps) / max(1, total_steps - warmup_steps)


def _linear(step: int, total_steps: int, warmup_steps: int) -> float:
    """``max(0, (total − step) / max(1, total − warmup))``."""
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Half a cosine wave from 1 to 0: ``max(0, ½(1 + cos(π·progress)))``."""
    progress = _progress(step, total_steps, warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _cosine_with_restarts(step: int, total_steps: int, warmup_steps: int, num_cycles: int) -> float:
    """Hard restarts: ``½(1 + cos(π·((cycles·progress) mod 1)))``, and 0 once progress reaches 1."""
    progress = _progress(step, total_steps, warmup_steps)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))


def _polynomial(step: int, total_steps: int, warmup_steps: int, power: float, lr_init: float) -> float:
    """``((lr_init − lr_end)·(1 − progress)^power + lr_end) / lr_init``; ``lr_end / lr_init`` after the end."""
    if lr_init <= POLYNOMIAL_LR_END:
        raise ValueError(
            f"learning_rate: the polynomial scheduler decays to {POLYNOMIAL_LR_END}, "
            f"so the learning rate must be larger (got {lr_init})"
        )
    if step > total_steps:
        return POLYNOMIAL_LR_END / lr_init
    remaining = 1.0 - _progress(step, total_steps, warmup_steps)
    return ((lr_init - POLYNOMIAL_LR_END) * remaining**power + POLYNOMIAL_LR_END) / lr_init


def _check_schedule_args(scheduler: str, total_steps: int, warmup_steps: int, num_cycles: int, power: float) -> None:
    if scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"lr_scheduler: {scheduler!r} is not one of {', '.join(SCHEDULER_NAMES)}")
    if total_steps < 1:
        raise ValueError(f"total steps must be at least 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"lr_warmup: warmup steps must be >= 0, got {warmup_steps}")
    if num_cycles < 1 or int(num_cycles) != num_cycles:
        raise ValueError(f"lr_scheduler_num_cycles: must be a whole number >= 1, got {num_cycles}")
    if power <= 0:
        raise ValueError(f"lr_scheduler_power: must be > 0, got {power}")


def lr_factor(
    step: int,
    *,
    scheduler: str,
    total_steps: int,
    warmup_steps: int,
    num_cycles: int = 1,
    power: float = 1.0,
    lr_init: float = 1.0,
) -> float:
    """Multiplier of a group's base learning rate at 0-based optimizer step ``step``.

    Warmup (all but ``constant`` and ``adafactor``) rises linearly ``step / warmup`` from 0. ``constant``
    ignores warmup (sd-scripts refuses the pair: use ``constant_with_warmup``). ``adafactor`` is 1 here: the
    requested rate is left alone (a relative-step Adafactor ignores it; see :func:`lr_curve`).
    ``lr_init`` is only used by ``polynomial`` and is the optimizer's default lr (``learning_rate``), as in
    transformers, which divides by it.
    """
    _check_schedule_args(scheduler, total_steps, warmup_steps, num_cycles, power)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if scheduler in SCHEDULERS_WITHOUT_WARMUP:
        return 1.0
    if step < warmup_steps:
        return _warmup_factor(step, warmup_steps)
    if scheduler == "constant_with_warmup":
        return 1.0
    if scheduler == "linear":
        return _linear(step, total_steps, warmup_steps)
    if scheduler == "cosine":
        return _cosine(step, total_steps, warmup_steps)
    if scheduler == "cosine_with_restarts":
        return _cosine_with_restarts(step, total_steps, warmup_steps, int(num_cycles))
    return _polynomial(step, total_steps, warmup_steps, power, lr_init)


def adafactor_relative_step_size(step: int, warmup_init: bool = False) -> float:
    """Adafactor's relative step size at 0-based step ``step`` (Shazeer & Stern 2018, transformers' Adafactor).

    Adafactor counts steps from 1: ``ρ = min(1e-2, 1/√(step+1))``, or ``min(1e-6·(step+1), 1/√(step+1))`` with
    ``warmup_init``. With ``scale_parameter`` (its default) each tensor's update is further multiplied by
    ``max(1e-3, RMS(tensor))``, which depends on the weights and so is not part of a preview.
    """
    count = step + 1
    ceiling = 1e-6 * count if warmup_init else 1e-2
    return min(ceiling, 1.0 / math.sqrt(count))


def lr_curve(
    base_lrs: dict[str, float],
    *,
    scheduler: str,
    total_steps: int,
    warmup_steps: int,
    num_cycles: int = 1,
    power: float = 1.0,
    lr_init: float | None = None,
    relative_step: bool = False,
    warmup_init: bool = False,
) -> dict[str, list[float]]:
    """Learning rate of each named group at every optimizer step 0 … total_steps−1, for the plan preview.

    ``lr_init`` (polynomial only) defaults to the largest base lr. With ``relative_step`` (Adafactor's default)
    every group follows :func:`adafactor_relative_step_size` whatever its base lr.
    """
    if relative_step:
        sizes = [adafactor_relative_step_size(step, warmup_init) for step in range(total_steps)]
        return {name: list(sizes) for name in base_lrs}
    init = lr_init if lr_init is not None else max(base_lrs.values(), default=1.0)
    factor = functools.partial(
        lr_factor,
        scheduler=scheduler,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        num_cycles=num_cycles,
        power=power,
        lr_init=init,
    )
    factors = [factor(step) for step in range(total_steps)]
    return {name: [base * f for f in factors] for name, base in base_lrs.items()}


def _is_relative_step_adafactor(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer).__name__ == "Adafactor" and bool(optimizer.defaults.get("relative_step"))


class AdafactorStepSizeSchedule(LRScheduler):
    """Reports the step size a relative-step Adafactor computes for itself; never changes it.

    transformers' ``AdafactorSchedule`` writes the reported values back into the groups and drops groups
    without gradients from its list (so values can land on the wrong group); this one only reads.
    """

    def get_lr(self) -> list[float]:
        return [self._group_step_size(group) for group in self.optimizer.param_groups]

    def _group_step_size(self, group: dict) -> float:
        for param in group["params"]:
            state = self.optimizer.state.get(param)
            if state and "step" in state:
                return float(self.optimizer._get_lr(group, state))
        return adafactor_relative_step_size(0, bool(group.get("warmup_init")))

    def step(self, epoch: int | None = None) -> None:  # noqa: ARG002 - torch's signature
        self.last_epoch += 1
        self._step_count = getattr(self, "_step_count", 0) + 1
        self._last_lr = self.get_lr()


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: str,
    total_steps: int,
    warmup_steps: int,
    num_cycles: int = 1,
    power: float = 1.0,
) -> LRScheduler:
    """A torch scheduler following :func:`lr_factor` for every param group.

    A relative-step Adafactor gets :class:`AdafactorStepSizeSchedule` whatever ``scheduler`` says (as in
    sd-scripts, which forces its ``adafactor`` schedule). ``adafactor`` with another optimizer is an error.
    """
    _check_schedule_args(scheduler, total_steps, warmup_steps, num_cycles, power)
    if _is_relative_step_adafactor(optimizer):
        return AdafactorStepSizeSchedule(optimizer)
    if scheduler == "adafactor" and type(optimizer).__name__ != "Adafactor":
        raise ValueError(
            f"lr_scheduler: 'adafactor' needs the Adafactor optimizer (got {type(optimizer).__name__}); "
            "choose Adafactor as the optimizer or another scheduler"
        )
    factor = functools.partial(
        lr_factor,
        scheduler=scheduler,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        num_cycles=num_cycles,
        power=power,
        lr_init=float(optimizer.defaults.get("lr") or 1.0),
    )
    return LambdaLR(optimizer, factor)
