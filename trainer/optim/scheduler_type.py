"""A learning-rate scheduler class named by the user, as sd-scripts' ``--lr_scheduler_type`` /
``--lr_scheduler_args`` (``train_util.get_scheduler_fix``).

A bare name is looked up in ``torch.optim.lr_scheduler`` (``CosineAnnealingLR``), a dotted one is imported
(``module.Class``). The class is built as ``Class(optimizer, **args)``: no warmup and no step count are
added (sd-scripts refuses a warmup with a scheduler type). ``lr_scheduler_args`` is ``key=value`` pairs whose
values are Python literals; a key the class does not take is an error naming the setting.
"""
from __future__ import annotations

import ast
import importlib
import inspect

import torch
from torch.optim.lr_scheduler import LRScheduler

from trainer.spec.setting import SettingError

_WORDS = {"true": True, "false": False, "none": None, "inf": float("inf")}


def _pairs(text: str) -> list[str]:
    """Split on spaces and commas outside quotes (``step_rules='1:10,0.1'`` stays one pair)."""
    pairs, current, quote = [], "", ""
    for char in text or "":
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char.isspace() or char == ",":
            if current:
                pairs.append(current)
            current = ""
            continue
        current += char
    return pairs + ([current] if current else [])


def parse_scheduler_args(text: str) -> dict[str, object]:
    """``"T_max=1000 eta_min=1e-6"`` → ``{"T_max": 1000, "eta_min": 1e-06}`` (commas also separate, except
    inside quotes)."""
    args: dict[str, object] = {}
    for pair in _pairs(text):
        key, equals, value = pair.partition("=")
        if not equals or not key.isidentifier():
            raise SettingError(f"expected key=value pairs, got {pair!r}", "lr_scheduler_args")
        try:
            args[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if value.lower() not in _WORDS:
                raise SettingError(f"{key}: {value!r} is not a number, true/false or a quoted text",
                                   "lr_scheduler_args") from None
            args[key] = _WORDS[value.lower()]
    return args


def scheduler_class(name: str) -> type:
    """The class ``name`` names: a ``torch.optim.lr_scheduler`` class, or ``module.Class``."""
    module_name, dot, class_name = name.strip().rpartition(".")
    try:
        module = importlib.import_module(module_name if dot else "torch.optim.lr_scheduler")
    except ImportError as error:
        raise SettingError(f"cannot import {module_name!r}: {error}", "lr_scheduler_type") from None
    found = getattr(module, class_name if dot else name.strip(), None)
    if not (inspect.isclass(found) and issubclass(found, LRScheduler)):
        where = module_name if dot else "torch.optim.lr_scheduler"
        raise SettingError(f"{name!r} is not a learning-rate scheduler class in {where}", "lr_scheduler_type")
    return found


def check_scheduler_args(cls: type, args: dict[str, object]) -> None:
    """Every argument must be a parameter of the class (other than the optimizer)."""
    parameters = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    takes = [name for name in parameters if name != "optimizer"]
    unknown = [key for key in args if key not in takes]
    if unknown:
        raise SettingError(f"{cls.__name__} does not take {', '.join(unknown)}; it takes {', '.join(takes)}",
                           "lr_scheduler_args")


def build_typed_scheduler(optimizer: torch.optim.Optimizer, name: str, args_text: str) -> LRScheduler:
    """``Class(optimizer, **args)``; a refusal by the class is a SettingError on ``lr_scheduler_args``."""
    cls = scheduler_class(name)
    args = parse_scheduler_args(args_text)
    check_scheduler_args(cls, args)
    try:
        return cls(optimizer, **args)
    except (TypeError, ValueError) as error:
        raise SettingError(f"{cls.__name__} refused {args}: {error}", "lr_scheduler_args") from None


def typed_curve(name: str, args_text: str, base_lrs: dict[str, float], total_steps: int) -> dict[str, list[float]]:
    """Each group's lr at optimizer steps 0 … total_steps−1, by running the scheduler on a stand-in optimizer."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in base_lrs.values()]
    optimizer = torch.optim.SGD(groups, lr=max(base_lrs.values(), default=1.0))
    scheduler = build_typed_scheduler(optimizer, name, args_text)
    curves: list[list[float]] = [[] for _ in groups]
    for _ in range(total_steps):
        for index, group in enumerate(optimizer.param_groups):
            curves[index].append(float(group["lr"]))
        optimizer.step()
        scheduler.step()
    return dict(zip(base_lrs, curves))
