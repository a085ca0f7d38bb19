"""Cross-setting checks of the network's LyCORIS options, ranks and regularizers (part of ``check_settings``).

The network refuses the same things when it is built (``trainer.network.config``); these say so earlier, in
the page and in ``validate``, each naming its setting.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .rules import rank_limits
from .setting import Problem
from .tables import LYCORIS_PRESETS, NO_BLOCK_TYPES

if TYPE_CHECKING:
    from .sections import Job

BLOCK_KEYS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
              "mid_lr_weight", "up_lr_weight")
FORWARD_REGULARIZERS = ("network_dropout", "rank_dropout", "module_dropout", "scale_weight_norms")


def ignored_options(job: Job) -> list[Problem]:
    """A network option set away from its default on a type that does not read it (the page hides it there;
    a job file or an import may still hold it): a warning, since the run goes on without it."""
    from .catalog import SETTINGS

    lora_type = job.network.LoRA_type
    problems = []
    for setting in SETTINGS:
        if setting.group != "network" or setting.visible_when is None or setting.visible_when[0] != "LoRA_type":
            continue
        if setting.key in BLOCK_KEYS or lora_type in setting.visible_when[1] or lora_type == "DyLoRA":
            continue
        if job.get(setting.key) != setting.default and str(job.get(setting.key)).strip() != "":
            problems.append(Problem(setting.key, f"is ignored by {lora_type} (it applies to "
                                                 f"{', '.join(setting.visible_when[1])})", "warning"))
    return problems


def check_network_options(job: Job) -> list[Problem]:
    network = job.network
    lora_type = network.LoRA_type
    problems = []
    for key, limit in zip(("network_dim", "conv_dim"), rank_limits(lora_type)):
        if job.get(key) > limit:
            problems.append(Problem(key, f"is at most {limit} for {lora_type}; 100000 (LyCORIS's full rank) is "
                                         "for the LoKr types, LyCORIS/BOFT and LyCORIS/Diag-OFT"))
    if lora_type == "DyLoRA":
        for key in FORWARD_REGULARIZERS:
            if job.get(key):
                problems.append(Problem(key, "does not work with DyLoRA (sd-scripts' DyLoRA takes no regularizer); "
                                             "set it to 0 or choose another LoRA type"))
    if lora_type in NO_BLOCK_TYPES:
        for key in BLOCK_KEYS:
            if str(job.get(key) or "").strip():
                problems.append(Problem(key, f"does not apply to {lora_type} (LyCORIS and sd-scripts' networks.lokr "
                                             "take no block settings); it is ignored", "warning"))
    problems += ignored_options(job)
    preset = (network.LyCORIS_preset or "").strip()
    if preset and preset not in LYCORIS_PRESETS and not Path(preset).expanduser().is_file():
        problems.append(Problem("LyCORIS_preset", f"{preset!r} is neither one of {', '.join(LYCORIS_PRESETS)} "
                                                  "nor an existing preset .toml file"))
    return problems
