"""Optimizers by name, as sd-scripts' ``get_optimizer`` maps them, with checked "Optimizer extra arguments".

Names are matched case-insensitively. Each optimizer's class is imported only when it is built, so choosing
AdamW never loads bitsandbytes. ``optimizer_args`` is a line of ``key=value`` pairs whose values are Python
literals (``weight_decay=0.01 betas=(0.9,0.99) decouple=True``); a key the optimizer does not take, or a value
of the wrong kind, is an :class:`OptimizerArgsError` that names the pair and lists what the optimizer takes.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass

import torch

from trainer.spec.setting import SettingError
from trainer.spec.tables import ONE_LR_OPTIMIZERS, OPTIMIZER_CLASSES, OPTIMIZERS, SELF_ADAPTING, OptimizerClass


class OptimizerSettingError(SettingError):
    """A bad optimizer setting; ``setting`` names the job key to blame."""

    def __init__(self, message: str, setting: str = "optimizer") -> None:
        # the setting is named where the problem is shown ("optimizer_args: …"), so not twice
        super().__init__(message.removeprefix(f"{setting}: "), setting)


class OptimizerArgsError(OptimizerSettingError):
    """A bad ``optimizer_args`` pair."""

    def __init__(self, message: str) -> None:
        super().__init__(message, setting="optimizer_args")


OPTIMIZER_NAMES: tuple[str, ...] = OPTIMIZERS
# These raise at their first step when param groups have different non-zero lrs. sd-scripts warns that "only
# the first one will take effect"; we make that true: every trained group gets the first group's lr.
ONE_LR_ONLY = ONE_LR_OPTIMIZERS

# Words accepted where a Python literal is expected, so "decouple=true growth_rate=inf" reads as meant.
_SPECIAL_WORDS = {"true": True, "false": False, "none": None, "null": None, "inf": float("inf"), "-inf": float("-inf")}
_BARE_WORD = re.compile(r"^[A-Za-z_][\w.\-]*$")
_KEY = re.compile(r"^[A-Za-z_]\w*$")
_CLOSERS = {"(": ")", "[": "]", "{": "}"}


# ---------------------------------------------------------------- parsing "Optimizer extra arguments"


def _split_top_level(text: str) -> list[str]:
    """Split on whitespace and commas that are outside brackets and quotes."""
    pieces: list[str] = []
    current: list[str] = []
    stack: list[str] = []
    quote: str | None = None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _CLOSERS:
            stack.append(_CLOSERS[char])
        elif char in ")]}":
            if not stack or stack.pop() != char:
                raise OptimizerArgsError(f"optimizer_args: unbalanced {char!r} in {text!r}")
        elif not stack and (char.isspace() or char == ","):
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    if quote or stack:
        missing = f"closing {quote}" if quote else repr(stack[-1])
        raise OptimizerArgsError(f"optimizer_args: missing {missing} in {text!r}")
    pieces.append("".join(current))
    return [piece for piece in pieces if piece]


def _join_spaced_equals(pieces: list[str]) -> list[str]:
    """``["wd", "=", "0.1"]`` → ``["wd=0.1"]``: allow spaces around ``=``."""
    joined: list[str] = []
    for piece in pieces:
        if joined and (joined[-1].endswith("=") or piece.startswith("=")):
            joined[-1] += piece
        else:
            joined.append(piece)
    return joined


def _literal(pair: str, value_text: str) -> object:
    try:
        return ast.literal_eval(value_text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if value_text.lower() in _SPECIAL_WORDS:
        return _SPECIAL_WORDS[value_text.lower()]
    if _BARE_WORD.match(value_text):
        return value_text
    raise OptimizerArgsError(f"optimizer_args: {pair!r} has a value that is not a Python literal")


def parse_optimizer_args(text: str) -> dict:
    """``"weight_decay=0.01 betas=(0.9,0.99) decouple=True"`` → ``{"weight_decay": 0.01, …}``.

    Values are read with ``ast.literal_eval`` (as sd-scripts does); ``true``/``false``/``none``/``inf`` in any
    case and bare words (read as strings) are accepted too. Pairs are separated by spaces or commas outside
    brackets; spaces around ``=`` are allowed. A list value becomes a tuple.
    """
    parsed: dict = {}
    for pair in _join_spaced_equals(_split_top_level(text or "")):
        key, sep, value_text = pair.partition("=")
        if not sep or not value_text:
            raise OptimizerArgsError(f"optimizer_args: {pair!r} is not key=value")
        if not _KEY.match(key):
            raise OptimizerArgsError(f"optimizer_args: {key!r} in {pair!r} is not an argument name")
        if key in parsed:
            raise OptimizerArgsError(f"optimizer_args: {key!r} is given twice")
        value = _literal(pair, value_text)
        parsed[key] = tuple(value) if isinstance(value, list) else value
    return parsed


# ---------------------------------------------------------------- looking up and checking


def canonical_optimizer_name(name: str) -> str:
    """The spelling in :data:`OPTIMIZER_NAMES` of ``name``, matched case-insensitively; a dotted
    ``module.Class`` (sd-scripts' "any optimizer class") is returned as it is."""
    for known in OPTIMIZER_NAMES:
        if known.lower() == str(name).strip().lower():
            return known
    if _DOTTED.match(str(name).strip()):
        return str(name).strip()
    raise OptimizerSettingError(f"optimizer: {name!r} is not one of {', '.join(OPTIMIZER_NAMES)}, nor a "
                                "module.Class")


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def _custom_class(name: str) -> tuple[type, OptimizerClass]:
    """sd-scripts' ``get_optimizer`` for a dotted name: import the module, take the class; here it must also be
    a ``torch.optim.Optimizer``, so a typo fails before training instead of at the first step."""
    module_name, _, class_name = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise OptimizerSettingError(f"optimizer: cannot import {module_name!r} for {name} ({error}); install "
                                    "its package or choose an optimizer of the list") from error
    found = getattr(module, class_name, None)
    if not (inspect.isclass(found) and issubclass(found, torch.optim.Optimizer)):
        raise OptimizerSettingError(f"optimizer: {name} is not a torch optimizer class")
    return found, OptimizerClass(module_name, class_name)


def _optimizer_class(name: str) -> tuple[type, OptimizerClass]:
    if name not in OPTIMIZER_CLASSES:
        return _custom_class(name)
    entry = OPTIMIZER_CLASSES[name]
    try:
        module = importlib.import_module(entry.module)
    except ImportError as error:
        package = entry.module.split(".")[0]
        raise OptimizerSettingError(f"optimizer: {name} needs the {package} package, which is missing ({error})") from error
    return getattr(module, entry.class_name), entry


def _accepted_arguments(optimizer_class: type) -> dict[str, object]:
    """Constructor arguments an optimizer takes besides ``params`` and ``lr``, with their defaults."""
    parameters = inspect.signature(optimizer_class.__init__).parameters.values()  # type: ignore[misc]
    skipped = {"self", "params", "lr"}
    return {
        p.name: p.default
        for p in parameters
        if p.name not in skipped and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def optimizer_arg_names(name: str) -> tuple[str, ...]:
    """The ``optimizer_args`` keys optimizer ``name`` accepts (for help text and errors)."""
    optimizer_class, _ = _optimizer_class(canonical_optimizer_name(name))
    return tuple(_accepted_arguments(optimizer_class))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind_mismatch(value: object, default: object) -> str | None:
    """What kind ``value`` should have been, judged by the argument's default; None when it fits."""
    if default is inspect.Parameter.empty or default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "True or False"
    if _is_number(default):
        return None if _is_number(value) else "a number"
    if isinstance(default, tuple):
        fits = isinstance(value, tuple) and len(value) == len(default) and all(_is_number(v) for v in value)
        return None if fits else f"a tuple of {len(default)} numbers such as {default}"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


def check_optimizer_args(name: str, args: dict) -> None:
    """Raise :class:`OptimizerArgsError` for a key optimizer ``name`` does not take or a value of the wrong kind."""
    canonical = canonical_optimizer_name(name)
    accepted = _accepted_arguments(_optimizer_class(canonical)[0])
    for key, value in args.items():
        if key == "lr":
            raise OptimizerArgsError(
                "optimizer_args: set the learning rate with learning_rate / unet_lr / text_encoder_lr, not 'lr'"
            )
        if key not in accepted:
            raise OptimizerArgsError(
                f"optimizer_args: {key!r} is not an argument of {canonical}; it takes: {', '.join(accepted)}"
            )
        expected = _kind_mismatch(value, accepted[key])
        if expected:
            raise OptimizerArgsError(f"optimizer_args: {key}={value!r} for {canonical} should be {expected}")


# ---------------------------------------------------------------- building


def uses_own_step_size(name: str, args: dict) -> bool:
    """True for Adafactor with ``relative_step`` (its default, also forced on by ``warmup_init``): it then
    ignores every learning rate and the LR scheduler."""
    if canonical_optimizer_name(name) != "Adafactor":
        return False
    return bool(args.get("relative_step", True) or args.get("warmup_init", False))


def _adafactor_call(param_groups: list[dict], lr: float, args: dict) -> tuple[list[dict], float | None, dict]:
    """sd-scripts' Adafactor rules: relative_step defaults on; warmup_init forces it; then lrs are dropped."""
    kwargs = dict(args)
    kwargs["relative_step"] = uses_own_step_size("Adafactor", args)
    if not kwargs["relative_step"]:
        return param_groups, lr, kwargs
    groups = [{key: value for key, value in group.items() if key != "lr"} for group in param_groups]
    return groups, None, kwargs


def _trained_groups(param_groups: list[dict], lr: float) -> list[dict]:
    """Copies of the groups whose lr is not 0 (DAdaptAdaGrad, DAdaptAdan and DAdaptLion move lr-0 params)."""
    groups = [dict(group) for group in param_groups if group.get("lr", lr) != 0]
    if not groups:
        raise OptimizerSettingError(
            "learning_rate: every learning rate is 0 (learning_rate, unet_lr, text_encoder_lr), so nothing would train",
            setting="learning_rate",
        )
    return groups


def one_lr_groups(name: str, param_groups: list[dict], lr: float) -> list[dict]:
    """For the optimizers of :data:`ONE_LR_ONLY` (which raise at their first step on different group lrs):
    every group gets the first group's lr, which is what sd-scripts' warning says happens ("only the first
    one will take effect"; the text encoder comes first, as there). Others: the groups unchanged."""
    group_lrs = {group.get("lr", lr) for group in param_groups} - {0, 0.0}
    if name not in ONE_LR_ONLY or len(group_lrs) <= 1:
        return param_groups
    first = param_groups[0].get("lr", lr)
    return [{**group, "lr": first} for group in param_groups]


def build_optimizer(name: str, param_groups: list[dict], lr: float, args: dict) -> torch.optim.Optimizer:
    """The optimizer called ``name`` over ``param_groups`` (dicts with ``params`` and optionally ``lr``).

    ``lr`` is the default learning rate (``learning_rate``); ``args`` come from :func:`parse_optimizer_args`.
    SGDNesterov(8bit) get ``nesterov=True, momentum=0.9`` unless args say otherwise. A relative-step Adafactor
    gets no learning rate at all. The optimizers in :data:`ONE_LR_ONLY` train every group at the first group's
    lr (:func:`one_lr_groups`; :func:`optimizer_warnings` says so). Groups with lr 0 are left out, as sd-scripts does: keep a
    ``name`` key in each group to tell the remaining ones apart. The caller's groups are not modified.
    """
    canonical = canonical_optimizer_name(name)
    check_optimizer_args(canonical, args)
    groups = one_lr_groups(canonical, _trained_groups(param_groups, lr), lr)
    optimizer_class, entry = _optimizer_class(canonical)
    kwargs = {**dict(entry.preset), **args}
    call_lr: float | None = lr
    if canonical == "Adafactor":
        groups, call_lr, kwargs = _adafactor_call(groups, lr, kwargs)
    try:
        return optimizer_class(groups, lr=call_lr, **kwargs)
    except (ValueError, TypeError, AssertionError, RuntimeError) as error:
        raise OptimizerArgsError(f"optimizer_args: {canonical} refused {kwargs}: {error}") from error


def optimizer_warnings(name: str, args: dict, lrs: dict[str, float]) -> list[tuple[str, str]]:
    """``(setting, message)`` pairs a person should see before training with these learning rates."""
    canonical = canonical_optimizer_name(name)
    warnings = []
    if uses_own_step_size(canonical, args):
        warnings.append((
            "learning_rate",
            "Adafactor with relative_step=True sets its own step size and ignores the learning rates and the LR "
            "scheduler; add 'relative_step=False scale_parameter=False warmup_init=False' to optimizer_args to use them",
        ))
    if canonical in SELF_ADAPTING:
        if any(lr <= 0.1 for lr in lrs.values()):
            warnings.append((
                "learning_rate",
                f"{canonical} adapts its step size itself and expects learning rates near 1.0; got {lrs}",
            ))
        if len(set(lrs.values()) - {0, 0.0}) > 1:
            if canonical in ONE_LR_ONLY:
                first_name, first = next(iter(lrs.items()))
                must = (f"takes one learning rate for every part; as in sd-scripts only the first ({first_name} "
                        f"{first:g}) takes effect and every part trains at it")
            else:
                must = "scales its adapted step differently per part with different learning rates"
            warnings.append(("text_encoder_lr", f"{canonical} {must}: {lrs}"))
    return warnings
