"""The "Additional parameters" line: sd-scripts command-line arguments read as LoRA Loom settings.

kohya_ss hands this text to sd-scripts untouched, so configs hold sd-scripts' spelling: ``--key value`` or
``--key=value``, bare flags, arguments that take several values (``--lr_scheduler_args T_max=1000
eta_min=0``), and a few names that differ from ours (``--optimizer_type``, ``--resolution``) or that are
spelled as another setting's value (``--network_train_unet_only`` is a text-encoder rate of 0). Every
sd-scripts argument that means a LoRA Loom setting is taken; anything else is a problem naming the argument.
The text is never passed to a shell; ``shlex`` only splits it into words.
"""
from __future__ import annotations

import shlex
from typing import Any

from .setting import Problem

# sd-scripts argument → our setting, where the names differ.
RENAMED = {"optimizer_type": "optimizer", "resolution": "max_resolution", "network_weights": "network_weights",
           "lr_scheduler_type": "lr_scheduler_type"}
# sd-scripts flags that set one of our settings to a fixed value.
FLAG_SETTINGS: dict[str, dict[str, Any]] = {
    "network_train_unet_only": {"text_encoder_lr": 0.0},
    "network_train_text_encoder_only": {"unet_lr": 0.0},
    "sdpa": {"xformers": False},
    "use_8bit_adam": {"optimizer": "AdamW8bit"},
    "use_lion_optimizer": {"optimizer": "Lion"},
}
# sd-scripts flags whose meaning LoRA Loom applies by itself: accepted, nothing to change.
SELF_APPLIED_FLAGS = {"no_half_vae": "an SDXL VAE always runs in fp32 here",
                      "cache_text_encoder_outputs": "text-encoder outputs are cached whenever they are not trained"}
# Arguments that take several words (argparse nargs="*"): the words are joined with spaces.
MULTI_WORD = frozenset({"optimizer_args", "lr_scheduler_args"})
FORBIDDEN = frozenset({"additional_parameters"})


def split_arguments(text: str) -> list[tuple[str, list[str]]]:
    """``[(name, words), …]`` for each ``--name`` (``-`` read as ``_``), with the words up to the next
    ``--name``; ``--name=value`` gives ``[value]``. A word before any ``--name`` raises ValueError."""
    arguments: list[tuple[str, list[str]]] = []
    for token in shlex.split(text or ""):
        if token.startswith("--") and len(token) > 2:
            name, equals, value = token[2:].partition("=")
            arguments.append((name.replace("-", "_"), [value] if equals else []))
        elif arguments:
            arguments[-1][1].append(token)
        else:
            raise ValueError(f"expected --name, got {token!r}")
    return arguments


def parse_extra_arguments(text: str, settings_by_key: dict) -> tuple[dict[str, Any], list[Problem]]:
    """The settings the line sets (overrides of the form) and a problem for each argument that cannot be
    used. A bool setting may be a bare flag or take true/false."""
    try:
        arguments = split_arguments(text)
    except ValueError as error:
        return {}, [Problem("additional_parameters", f"cannot read it: {error}")]
    overrides: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, words in arguments:
        if name in FLAG_SETTINGS and not words:
            overrides.update(FLAG_SETTINGS[name])
            continue
        if name in SELF_APPLIED_FLAGS and not words:
            continue
        key = RENAMED.get(name, name)
        setting = settings_by_key.get(key)
        if setting is None or key in FORBIDDEN:
            problems.append(Problem("additional_parameters", f"--{name} is neither a LoRA Loom setting nor an "
                                                             "sd-scripts argument that maps to one"))
            continue
        if len(words) > 1 and key not in MULTI_WORD:
            problems.append(Problem("additional_parameters", f"--{name} takes one value, got {' '.join(words)!r}"))
            continue
        raw = " ".join(words) if words else None
        try:
            overrides[key] = convert_word(setting, raw)
        except ValueError as error:
            problems.append(Problem("additional_parameters", f"--{name}: {error}"))
    return overrides, problems


def convert_word(setting, raw: str | None) -> Any:
    """One argument's text as the setting's type (None: a bare flag)."""
    if setting.kind == "bool":
        if raw is None or raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if raw is None:
        raise ValueError("needs a value")
    if setting.kind == "int" or (setting.kind == "choice" and isinstance(setting.default, int)):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
    if setting.kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    return raw
