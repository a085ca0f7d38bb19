"""Parsers for text settings that hold structured values (resolution, block lists, LR-weight curves).

Each parser is pure: it returns the parsed value or raises ``ValueError`` with a message that says what is
wrong and what is expected. Validation, the form and the trainer all call the same functions.
"""
from __future__ import annotations

import math
import re

from .block_layout import allowed_layouts, layout_for

# The form cannot know the model's family, so it accepts SD's or SDXL's list lengths (``family=None``); the
# trainer parses again with the family of the model it loaded and names the setting when the length does
# not fit.
LR_WEIGHT_CURVES = ("sine", "cosine", "linear", "reverse_linear", "zeros")
# Upper bounds from memory: a 4096×4096 image is 512×512 latents, whose attention maps alone take tens of GB
# (SDXL trains at 1024); ranks and alphas as the network_dim / network_alpha settings allow.
MAX_SIDE = 4096
MAX_BLOCK_RANK = 1024
MAX_BLOCK_ALPHA = 1024


def parse_resolution(text: str) -> tuple[int, int]:
    """"512,512" or "512" → (width, height), whole numbers ≥ 64 (buckets round them down to their step)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected 'width,height' such as 512,512, got {text!r}")
    width, height = int(parts[0]), int(parts[1])
    for side in (width, height):
        if side < 64:
            raise ValueError(f"each side must be at least 64 pixels, got {width},{height}")
        if side > MAX_SIDE:
            raise ValueError(f"each side must be at most {MAX_SIDE} pixels, got {width},{height}: larger images "
                             "need more memory than any GPU has (SDXL trains at 1024)")
    return width, height


def _split_numbers(text: str) -> list[str]:
    return [p.strip() for p in str(text).replace(";", ",").split(",")]


def _counts_text(counts: tuple[int, ...]) -> str:
    """"25", or "25 (SD1.x/SD2.x) or 23 (SDXL)" when both lengths are allowed."""
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} (SD1.x/SD2.x) or {counts[1]} (SDXL)"


def parse_number_list(text: str, count: int | tuple[int, ...], *, integer: bool, minimum: float = 0.0,
                      maximum: float = math.inf) -> tuple | None:
    """A comma-separated list of exactly ``count`` numbers from ``minimum`` to ``maximum`` (``count`` may list
    the lengths allowed: SD's and SDXL's); blank → None (use the global value)."""
    if not str(text).strip():
        return None
    parts = _split_numbers(text)
    counts = (count,) if isinstance(count, int) else tuple(count)
    if len(parts) not in counts:
        raise ValueError(f"needs exactly {_counts_text(counts)} comma-separated numbers, got {len(parts)}")
    values = []
    for position, part in enumerate(parts, start=1):
        try:
            value = int(part) if integer else float(part)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise ValueError(f"entry {position} ({part!r}) is not {kind}") from None
        if not math.isfinite(value) or value < minimum:
            raise ValueError(f"entry {position} ({part}) must be ≥ {minimum:g}")
        if value > maximum:
            raise ValueError(f"entry {position} ({part}) must be at most {maximum:g}")
        values.append(value)
    return tuple(values)


def _block_counts(family: str | None) -> tuple[int, ...]:
    return tuple(layout.count for layout in allowed_layouts(family))


def _half_counts(family: str | None) -> tuple[int, ...]:
    return tuple(layout.half for layout in allowed_layouts(family))


def _mid_counts(family: str | None) -> tuple[int, ...]:
    return tuple(layout.mid for layout in allowed_layouts(family))


def parse_block_dims(text: str, family: str | None = None) -> tuple[int, ...] | None:
    """25 whole numbers ≥ 0 (23 for SDXL): a rank per block; 0 leaves that block without a module."""
    return parse_number_list(text, _block_counts(family), integer=True, maximum=MAX_BLOCK_RANK)


def parse_block_alphas(text: str, family: str | None = None) -> tuple[float, ...] | None:
    """25 numbers ≥ 0 (23 for SDXL): an alpha per block."""
    return parse_number_list(text, _block_counts(family), integer=False, maximum=MAX_BLOCK_ALPHA)


def lr_weight_curve(name: str, n: int = layout_for(None).half) -> tuple[float, ...]:
    """The named LR-weight curves over n blocks, i = 0..n−1: sine sin(π/2·i/(n−1)), cosine its reverse,
    linear i/(n−1), reverse_linear its reverse, zeros all 0. An optional "+base" adds base to each."""
    base = 0.0
    if "+" in name:
        name, _, base_text = name.partition("+")
        try:
            base = float(base_text)
        except ValueError:
            raise ValueError(f"'+{base_text}' is not a number to add to the curve") from None
    name = name.strip()
    steps = [i / (n - 1) for i in range(n)]
    if name == "sine":
        values = [math.sin(math.pi / 2 * s) for s in steps]
    elif name == "cosine":
        values = [math.sin(math.pi / 2 * s) for s in reversed(steps)]
    elif name == "linear":
        values = steps
    elif name == "reverse_linear":
        values = list(reversed(steps))
    elif name == "zeros":
        values = [0.0] * n
    else:
        raise ValueError(f"unknown curve {name!r}; use {n} numbers or one of {', '.join(LR_WEIGHT_CURVES)}")
    return tuple(v + base for v in values)


def parse_half_lr_weights(text: str, family: str | None = None) -> tuple[float, ...] | None:
    """Down or up LR weights: 12 numbers from 0 to 1 (9 for SDXL), or a named curve with optional +base
    (over the family's count; 12 when the family is not known yet); blank → None."""
    text = str(text).strip()
    if not text:
        return None
    if "," not in text and not _is_number(text):
        return lr_weight_curve(text, layout_for(family).half)
    values = parse_number_list(text, _half_counts(family), integer=False)
    return _check_unit_interval(values)


def parse_mid_lr_weight(text: str, family: str | None = None) -> tuple[float, ...] | None:
    """Mid LR weight: one number from 0 to 1 (SDXL: 3, one per middle block); blank → None."""
    values = parse_number_list(text, _mid_counts(family), integer=False)
    return _check_unit_interval(values) if values else None


def _check_unit_interval(values: tuple | None) -> tuple | None:
    for position, value in enumerate(values or (), start=1):
        if value > 1:
            raise ValueError(f"entry {position} ({value:g}) must be between 0 and 1")
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_DOTTED_CLASS = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def parse_optimizer_name(text: str) -> str:
    """An Optimizer value: one of the list (exactly as spelled there) or a dotted ``module.Class`` that
    sd-scripts would import (``torch.optim.RAdam``, ``pytorch_optimizer.CAME``). Whether the module imports and
    the class is an optimizer is checked before training (``trainer.preflight``)."""
    from .tables import OPTIMIZERS

    name = str(text).strip()
    if name in OPTIMIZERS or _DOTTED_CLASS.match(name):
        return name
    raise ValueError(f"{name!r} is not one of {', '.join(OPTIMIZERS)}, nor a module.Class such as torch.optim.RAdam")
