"""The one table mapping UNet modules to the 25 blocks IN00–IN11, MID, OUT00–OUT11.

Block-wise dims, alphas and learning-rate weights are lists of 25 values in this order
(sd-scripts networks/lora.py ``get_block_index``, SD1/SD2 UNets in diffusers naming):

* ``down_blocks.i.(resnets|attentions).j`` → IN(1 + 3i + j); ``down_blocks.i.downsamplers.0`` → IN(1 + 3i + 2)
* ``mid_block.…`` → MID (index 12)
* ``up_blocks.i.(resnets|attentions).j`` → OUT(3i + j); ``up_blocks.i.upsamplers.0`` → OUT(3i + 2)

IN00 is the UNet's ``conv_in``, which never gets an adapter; it keeps its slot so lists line up
with kohya's. So down_blocks.0.attentions.{0,1} = IN01, IN02, down_blocks.0.downsamplers.0 = IN03,
up_blocks.0.resnets.{0,1,2} = OUT00–OUT02 (up_blocks.0.upsamplers.0 is OUT02 too).

SDXL has its own 23-entry table (``trainer.network.sdxl_blocks``); ``block_labels(family)`` and
``family_block_index(family, kohya_name)`` pick the family's table, so dims, alphas and LR weights of
every family go through one function.
"""
from __future__ import annotations

import re

import torch

from trainer.network.sdxl_blocks import SDXL_BLOCK_LABELS, is_sdxl_unet, sdxl_block_index
from trainer.network.targets import unet_targets
from trainer.spec.block_layout import SD_LAYOUT

BLOCK_COUNT = SD_LAYOUT.count
MID_INDEX = SD_LAYOUT.middle.start
BLOCK_LABELS: tuple[str, ...] = SD_LAYOUT.labels

_DOWN_UP_PATTERN = re.compile(
    r"(up|down)_blocks[._](\d+)[._](resnets|upsamplers|downsamplers|attentions)[._](\d+)(?:[._]|$)"
)
_MID_PATTERN = re.compile(r"(?:^|[._])mid_block[._]")


def block_index(module_name: str) -> int:
    """Block index 0..24 of a UNet module, given its dotted path or its kohya name.

    Formula (sd-scripts ``get_block_index``): idx = 3i + j for resnets/attentions, 3i + 2 for
    up/downsamplers; down → 1 + idx, mid → 12, up → 13 + idx. Raises ValueError for a module
    outside the down/mid/up blocks (conv_in, time_embedding, conv_out get no block).
    """
    match = _DOWN_UP_PATTERN.search(module_name)
    if match:
        direction, block, kind, position = match.group(1), int(match.group(2)), match.group(3), int(match.group(4))
        idx = 3 * block + (2 if kind in ("upsamplers", "downsamplers") else position)
        index = 1 + idx if direction == "down" else 13 + idx
        if index >= BLOCK_COUNT:
            raise ValueError(f"UNet module {module_name!r} lies beyond block OUT11; is this an SD1/SD2 UNet?")
        return index
    if _MID_PATTERN.search(module_name):
        return MID_INDEX
    raise ValueError(f"UNet module {module_name!r} belongs to no block (IN00–IN11, MID, OUT00–OUT11)")


def block_labels(family: str = "sd1") -> tuple[str, ...]:
    """The block labels of ``family``'s table: 25 for SD1.x/SD2.x, 23 for SDXL."""
    return SDXL_BLOCK_LABELS if family == "sdxl" else BLOCK_LABELS


def family_block_index(family: str, kohya_name: str) -> int:
    """The block of a UNet module (kohya name or path) in ``family``'s table."""
    return sdxl_block_index(kohya_name) if family == "sdxl" else block_index(kohya_name)


def block_label(index: int, family: str = "sd1") -> str:
    """IN00…IN11, MID, OUT00…OUT11 for 0…24 (SDXL: EMB, IN00…IN08, MID00…MID02, OUT00…OUT08, END)."""
    return block_labels(family)[index]


def unet_group_name(block: int, family: str = "sd1") -> str:
    """The optimizer group (and LR plot line) of a UNet block under block LR weights, e.g. ``unet_IN04``."""
    return f"unet_{block_label(block, family)}"


def describe_blocks(unet: torch.nn.Module, include_conv_blocks: bool = True) -> dict[str, list[str]]:
    """Every block label (in order) with the UNet module paths an adapter would go on in that block.

    With ``include_conv_blocks`` (LoCon/LoHa) the resnet and up/downsampler layers are listed too.
    Blocks the model does not have (a small UNet) map to an empty list. An SDXL UNet is described
    with SDXL's table.
    """
    family = "sdxl" if is_sdxl_unet(unet) else "sd1"
    labels = block_labels(family)
    described: dict[str, list[str]] = {label: [] for label in labels}
    for target in unet_targets(unet, include_conv_blocks):
        described[labels[family_block_index(family, target.kohya_name)]].append(target.path)
    return described


def validate_block_values(name: str, values, count: int = BLOCK_COUNT) -> tuple:
    """Check a per-block list has ``count`` entries (25, or 23 for SDXL) and no negative value."""
    values = tuple(values)
    labels = SDXL_BLOCK_LABELS if count == len(SDXL_BLOCK_LABELS) else BLOCK_LABELS
    if len(values) != count:
        raise ValueError(f"{name} needs {count} values ({labels[0]}–{labels[-1]}), got {len(values)}")
    negative = [labels[i] for i, value in enumerate(values) if value < 0]
    if negative:
        raise ValueError(f"{name} has negative values for block(s) {', '.join(negative)}")
    return values
