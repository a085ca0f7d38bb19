"""Learning-rate schedules by name: the factor at each optimizer step, the torch scheduler, the preview curve.

The formulas are those of transformers' ``get_scheduler`` family, called the way sd-scripts calls them
(``get_scheduler_fix``): ``cosine`` is one half-wave to 0 (transformers' default ``num_cycles=0.5``; the
"LR number of cycles" setting is not passed to it), ``cosine_with_restarts`` runs ``num_cycles`` hard
restarts, ``polynomial`` decays to ``lr_end = 1e-7`` with ``power``. ``adafactor`` is the Adafactor
optimizer's own step size (see :func:`adafactor_relative_step_size`). ``piecewise_constant`` (diffusers),
``cosine_with_min_lr``, ``inverse_sqrt`` and ``warmup_stable_decay`` (transformers) read their own arguments
from ``lr_scheduler_args`` (``SCHEDULER_ARGS``), and the two cosine ones get ``num_cycles / 2`` as sd-scripts
passes it, so the default 1 is one half-wave.

Steps are 0-based optimizer steps: ``lr_factor(s, …)`` is the multiplier of a group's base learning rate
used by optimizer step ``s``, which is what ``LambdaLR`` gives after ``s`` calls of ``scheduler.step()``.
"""
from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from collections.abc import Mapping

from trainer.spec.tables import LR_SCHEDULERS, SCHEDULER_ARGS, SCHEDULERS_WITHOUT_WARMUP

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


def parse_step_rules(text: str) -> tuple[list[tuple[int, float]], float]:
    """diffusers' piecewise-constant rules: ``"1:100,0.5:200,0.1"`` → ([(100, 1.0), (200, 0.5)], 0.1): the factor
    before each step count, then the factor for the rest."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        rules = [(int(steps), float(value)) for value, _, steps in (p.partition(":") for p in parts[:-1])]
        last = float(parts[-1])
    except ValueError:
        raise ValueError(f"lr_scheduler_args: step_rules {text!r} must look like '1:100,0.5:200,0.1' (factor:step, "
                         "…, the last factor)") from None
    return sorted(rules), last


def _piecewise_constant(step: int, step_rules: str) -> float:
    """The factor of the first rule whose step count is above ``step``, else the last factor."""
    rules, last = parse_step_rules(step_rules)
    return next((value for steps, value in rules if step < steps), last)


def _cosine_with_min_lr(step: int, total_steps: int, warmup_steps: int, num_cycles: float, floor: float) -> float:
    """transformers' cosine with a floor: ``max(0, c·(1 − floor) + floor)``, ``c = ½(1 + cos(2π·cycles·progress))``
    with sd-scripts' ``cycles = num_cycles / 2``."""
    cosine = 0.5 * (1.0 + math.cos(math.pi * (num_cycles / 2) * 2.0 * _progress(step, total_steps, warmup_steps)))
    return max(0.0, cosine * (1.0 - floor) + floor)


def _inverse_sqrt(step: int, warmup_steps: int, timescale: int | None) -> float:
    """``1 / √((step + timescale − warmup) / timescale)`` (big_vision via transformers); timescale defaults to the
    warmup steps, or 10 000 without warmup."""
    scale = timescale or warmup_steps or 10_000
    return 1.0 / math.sqrt((step + scale - warmup_steps) / scale)


def _warmup_stable_decay(step: int, total_steps: int, warmup_steps: int, num_cycles: float, options: Mapping) -> float:
    """transformers' WSD: warmup (linear, cosine or 1-sqrt) from min_lr_ratio to 1, a stable 1, then the decay
    (cosine with sd-scripts' ``num_cycles / 2``, linear or 1-sqrt) over ``num_decay_steps`` back to min_lr_ratio."""
    floor = float(options.get("min_lr_ratio") or 0.0)
    decay = decay_steps(options.get("num_decay_steps"), total_steps)
    stable = total_steps - warmup_steps - decay
    if step < warmup_steps:
        progress = step / max(1, warmup_steps)
        shape = {"linear": progress, "cosine": 0.5 * (1.0 - math.cos(math.pi * progress)),
                 "1-sqrt": 1.0 - math.sqrt(1.0 - progress)}[str(options.get("warmup_type") or "linear")]
        return max(0.0, shape * (1.0 - floor) + floor)
    if step < warmup_steps + stable:
        return 1.0
    if step < warmup_steps + stable + decay:
        progress = (step - warmup_steps - stable) / max(1, decay)
        shape = {"linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * (num_cycles / 2) * 2.0 * progress)),
                 "1-sqrt": 1.0 - math.sqrt(progress)}[str(options.get("decay_type") or "cosine")]
        return max(0.0, shape * (1.0 - floor) + floor)
    return floor


def decay_steps(value, total_steps: int) -> int:
    """sd-scripts' ``--lr_decay_steps``: a step count, or below 1 a fraction of the run (default 0)."""
    if value is None:
        return 0
    return int(value * total_steps) if isinstance(value, float) and value < 1 else int(value)


def named_scheduler_options(scheduler: str, args_text: str) -> dict:
    """The parsed ``lr_scheduler_args`` for a schedule that reads them (:data:`SCHEDULER_ARGS`), else {}."""
    if scheduler not in SCHEDULER_ARGS:
        return {}
    from trainer.optim.scheduler_type import parse_scheduler_args

    return parse_scheduler_args(args_text)


def check_scheduler_options(scheduler: str, options: Mapping | None, total_steps: int = 1,
                            warmup_steps: int = 0) -> None:
    """A ValueError beginning with ``lr_scheduler_args`` for what a named schedule cannot use."""
    options = options or {}
    if scheduler not in SCHEDULER_ARGS:
        return
    unknown = [key for key in options if key not in SCHEDULER_ARGS[scheduler]]
    if unknown:
        raise ValueError(f"lr_scheduler_args: {scheduler} does not take {', '.join(unknown)} (it takes "
                         f"{', '.join(SCHEDULER_ARGS[scheduler])})")
    if scheduler == "piecewise_constant":
        if not options.get("step_rules"):
            raise ValueError("lr_scheduler_args: piecewise_constant needs step_rules, e.g. "
                             "step_rules='1:100,0.5:200,0.1'")
        parse_step_rules(str(options["step_rules"]))
    if scheduler == "cosine_with_min_lr":
        given = [key for key in ("min_lr_rate", "min_lr") if options.get(key) is not None]
        if len(given) != 1:
            raise ValueError("lr_scheduler_args: cosine_with_min_lr needs one of min_lr_rate (a fraction of the "
                             "learning rate) or min_lr (as transformers asks)")
        if not isinstance(options[given[0]], (int, float)) or options[given[0]] < 0:
            raise ValueError(f"lr_scheduler_args: {given[0]} must be a number of 0 or more")
    if scheduler == "inverse_sqrt" and options.get("timescale") is not None:
        if not isinstance(options["timescale"], int) or options["timescale"] < 1:
            raise ValueError("lr_scheduler_args: timescale must be a whole number of steps, at least 1")
    if scheduler == "warmup_stable_decay":
        for key in ("warmup_type", "decay_type"):
            if options.get(key) is not None and options[key] not in ("linear", "cosine", "1-sqrt"):
                raise ValueError(f"lr_scheduler_args: {key} must be linear, cosine or 1-sqrt")
        value = options.get("num_decay_steps", 0)
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError("lr_scheduler_args: num_decay_steps must be a step count or a fraction below 1")
        if warmup_steps + decay_steps(value, total_steps) > total_steps:
            raise ValueError(f"lr_scheduler_args: num_decay_steps {value} and {warmup_steps} warmup steps are more "
                             f"than the run's {total_steps} steps")
        ratio = options.get("min_lr_ratio", 0.0)
        if not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ValueError("lr_scheduler_args: min_lr_ratio must be from 0 to 1")


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
    options: Mapping | None = None,
) -> float:
    """Multiplier of a group's base learning rate at 0-based optimizer step ``step``.

    Warmup (all but ``constant`` and ``adafactor``) rises linearly ``step / warmup`` from 0. ``constant``
    ignores warmup (sd-scripts refuses the pair: use ``constant_with_warmup``). ``adafactor`` is 1 here: the
    requested rate is left alone (a relative-step Adafactor ignores it; see :func:`lr_curve`).
    ``lr_init`` is only used by ``polynomial`` and is the optimizer's default lr (``learning_rate``), as in
    transformers, which divides by it. ``options``: the parsed ``lr_scheduler_args`` of the schedules that read
    them (:data:`SCHEDULER_ARGS`; ``min_lr`` is divided by ``lr_init``, as transformers divides by the lr).
    """
    _check_schedule_args(scheduler, total_steps, warmup_steps, num_cycles, power)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    options = options or {}
    if scheduler == "piecewise_constant":
        return _piecewise_constant(step, str(options.get("step_rules", "1")))
    if scheduler == "warmup_stable_decay":
        return _warmup_stable_decay(step, total_steps, warmup_steps, num_cycles, options)
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
    if scheduler == "cosine_with_min_lr":
        floor = options.get("min_lr_rate")
        if floor is None:
            floor = float(options.get("min_lr") or 0.0) / lr_init
        return _cosine_with_min_lr(step, total_steps, warmup_steps, num_cycles, float(floor))
    if scheduler == "inverse_sqrt":
        return _inverse_sqrt(step, warmup_steps, options.get("timescale"))
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
    options: Mapping | None = None,
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
        options=options,
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
    options: Mapping | None = None,
) -> LRScheduler:
    """A torch scheduler following :func:`lr_factor` for every param group.

    A relative-step Adafactor gets :class:`AdafactorStepSizeSchedule` whatever ``scheduler`` says (as in
    sd-scripts, which forces its ``adafactor`` schedule). ``adafactor`` with another optimizer is an error.
    """
    _check_schedule_args(scheduler, total_steps, warmup_steps, num_cycles, power)
    check_scheduler_options(scheduler, options, total_steps, warmup_steps)
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
        options=options,
    )
    return LambdaLR(optimizer, factor)
