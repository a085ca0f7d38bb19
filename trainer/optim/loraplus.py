"""LoRA+ (Hayou et al. 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models", arXiv 2402.12354): the
up matrices (B, kohya's ``lora_up``) learn at ``ratio`` × the learning rate of their part.

As sd-scripts (``networks/lora.py`` ``prepare_optimizer_params``): the UNet's ratio is
``loraplus_unet_lr_ratio`` or else ``loraplus_lr_ratio``, the text encoder's ``loraplus_text_encoder_lr_ratio``
or else ``loraplus_lr_ratio``; 0 means off. Each optimizer group with a ratio is split in two: its other
parameters keep the group's name and lr, its up matrices go to ``<name>_plus`` at lr × ratio. LoHa has no up
matrix, so LoRA+ leaves it unchanged.
"""
from __future__ import annotations

from typing import Iterable

import torch

# Names of the up-matrix parameters: peft's LoRA ``lora_B``, our DyLoRA's ``up_groups``.
UP_PARAMETER_MARKERS = ("lora_B", "up_groups")
# sd-scripts' networks.lokr (Kohya LoKr) puts LoKr's scale factor ``lokr_w1`` in the LoRA+ group
# (network_base.py ``_is_plus_param``).
PLUS_MARKERS_BY_TYPE = {"Kohya LoKr": ("lokr_w1",)}


def plus_markers(lora_type: str) -> tuple[str, ...]:
    """The parameter-name markers of the LoRA+ ("up") parameters of a LoRA type."""
    return PLUS_MARKERS_BY_TYPE.get(lora_type, UP_PARAMETER_MARKERS)


def loraplus_ratios(lr_ratio: float, unet_ratio: float, text_encoder_ratio: float) -> tuple[float, float]:
    """(UNet ratio, text-encoder ratio): each part's own ratio when set, else the common one (0: off)."""
    return unet_ratio or lr_ratio, text_encoder_ratio or lr_ratio


def up_parameter_ids(named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
                     markers: tuple[str, ...] = UP_PARAMETER_MARKERS) -> set[int]:
    """ids of the up-matrix parameters among (name, parameter) pairs."""
    return {id(p) for name, p in named_parameters if any(marker in name for marker in markers)}


def group_ratio(name: str, unet_ratio: float, text_encoder_ratio: float) -> float:
    return text_encoder_ratio if name == "text_encoder" else unet_ratio


def loraplus_groups(groups: list[dict], up_ids: set[int], unet_ratio: float, text_encoder_ratio: float) -> list[dict]:
    """The optimizer groups with each group's up matrices moved to ``<name>_plus`` at lr × its ratio; empty
    groups are left out. Groups without a ratio are returned as they are."""
    out: list[dict] = []
    for group in groups:
        ratio = group_ratio(group["name"], unet_ratio, text_encoder_ratio)
        if not ratio:
            out.append(group)
            continue
        rest = [p for p in group["params"] if id(p) not in up_ids]
        ups = [p for p in group["params"] if id(p) in up_ids]
        if rest:
            out.append({**group, "params": rest})
        if ups:
            out.append({**group, "name": f"{group['name']}_plus", "params": ups, "lr": group["lr"] * ratio})
    return out


def preview_groups(groups: dict[str, float], unet_ratio: float, text_encoder_ratio: float) -> dict[str, float]:
    """The plan's {group: lr} with the ``_plus`` groups LoRA+ adds."""
    out = dict(groups)
    for name, lr in groups.items():
        ratio = group_ratio(name, unet_ratio, text_encoder_ratio)
        if ratio:
            out[f"{name}_plus"] = lr * ratio
    return out
