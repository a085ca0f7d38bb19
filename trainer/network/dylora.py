"""DyLoRA: a LoRA whose ranks are ordered, so it can be cut to any multiple of ``unit`` afterwards.

Our own module because peft has no DyLoRA. Paper: Valipour et al., "DyLoRA: Parameter-Efficient
Tuning of Pre-trained Models using Dynamic Search-Free Low-Rank Adaptation" (2022).

Each training forward draws one rank group k uniformly from 0 … dim/unit − 1 and computes

    y = W0·x + (alpha / b) · up[:, :b] · down[:b] · x,   b = (k + 1) · unit

with gradients only into the newest group (rows k·unit … b − 1); groups below it are used but not
updated, groups above it are not used. This is the paper's truncation. sd-scripts' dylora.py
instead always uses all ``dim`` ranks and rescales by sqrt(dim / b) — we deliberately follow the
paper, whose rank-b sub-network is exactly what a rank-b cut of the saved file computes.
Without gradients (sampling, inference) all ranks are used with scale alpha / dim, as in a normal
LoRA. Each rank group is its own Parameter, so groups that were not drawn get no gradient at all
(``None``) and the optimizer leaves them alone, as in sd-scripts.

Saved as an ordinary LoRA: lora_down = the down groups stacked, lora_up = the up groups side by side.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.spec.rules import dylora_rank_faults


class DyLoraAdapter(torch.nn.Module):
    """Wraps a ``Linear`` or ``Conv2d`` (kept frozen as ``base_layer``) and adds a DyLoRA delta."""

    def __init__(self, base_layer: torch.nn.Module, dim: int, alpha: float, unit: int, generator: torch.Generator):
        super().__init__()
        if dim <= 0 or unit <= 0 or dylora_rank_faults(unit, {"network_dim": [dim]}):
            raise ValueError(f"DyLoRA needs network_dim ({dim}) to be a positive multiple of unit ({unit})")
        self.base_layer = base_layer
        self.dim, self.unit, self.alpha = dim, unit, float(alpha)
        self.generator = generator
        down_shape, up_shape = _group_shapes(base_layer, unit)
        weight = base_layer.weight
        full_down = torch.empty((dim,) + down_shape[1:], dtype=weight.dtype, device=weight.device)
        # kohya / nn.Linear default: kaiming uniform with a = sqrt(5) on down, zeros on up.
        torch.nn.init.kaiming_uniform_(full_down, a=math.sqrt(5))
        self.down_groups = torch.nn.ParameterList(
            [torch.nn.Parameter(chunk.clone()) for chunk in full_down.split(unit, dim=0)]
        )
        zeros = [torch.zeros(up_shape, dtype=weight.dtype, device=weight.device) for _ in range(dim // unit)]
        self.up_groups = torch.nn.ParameterList([torch.nn.Parameter(z) for z in zeros])

    @property
    def group_count(self) -> int:
        return self.dim // self.unit

    def _draw_group(self) -> int:
        return int(torch.randint(0, self.group_count, (1,), generator=self.generator).item())

    def _weights_for_forward(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(down, up, scale) for this call: truncated with one trainable group when training."""
        training = torch.is_grad_enabled() and any(p.requires_grad for p in self.down_groups)
        if not training:
            return self.full_down(), self.full_up(), self.alpha / self.dim
        chosen = self._draw_group()
        downs = [g.detach() for g in self.down_groups[:chosen]] + [self.down_groups[chosen]]
        ups = [g.detach() for g in self.up_groups[:chosen]] + [self.up_groups[chosen]]
        rank = (chosen + 1) * self.unit
        return torch.cat(downs, dim=0), torch.cat(ups, dim=1), self.alpha / rank

    def full_down(self) -> torch.Tensor:
        return torch.cat(list(self.down_groups), dim=0)

    def full_up(self) -> torch.Tensor:
        return torch.cat(list(self.up_groups), dim=1)

    def load_full(self, down: torch.Tensor, up: torch.Tensor) -> None:
        """Set every rank group from full lora_down / lora_up tensors."""
        with torch.no_grad():
            for group, chunk in zip(self.down_groups, down.split(self.unit, dim=0)):
                group.copy_(chunk)
            for group, chunk in zip(self.up_groups, up.split(self.unit, dim=1)):
                group.copy_(chunk)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        down, up, scale = self._weights_for_forward()
        base = self.base_layer
        if isinstance(base, torch.nn.Conv2d):
            hidden = F.conv2d(x.to(down.dtype), down, None, base.stride, base.padding, base.dilation)
            delta = F.conv2d(hidden, up)
        else:
            delta = F.linear(F.linear(x.to(down.dtype), down), up)
        return result + (delta * scale).to(result.dtype)


def _group_shapes(base_layer: torch.nn.Module, unit: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of one down and one up rank group (kohya's lora_down / lora_up layouts)."""
    if isinstance(base_layer, torch.nn.Conv2d):
        if base_layer.groups != 1:
            raise ValueError("DyLoRA cannot adapt a grouped convolution")
        kh, kw = base_layer.kernel_size
        return (unit, base_layer.in_channels, kh, kw), (base_layer.out_channels, unit, 1, 1)
    if isinstance(base_layer, torch.nn.Linear):
        return (unit, base_layer.in_features), (base_layer.out_features, unit)
    raise TypeError(f"DyLoRA adapts Linear and Conv2d layers, not {type(base_layer).__name__}")


def replace_with_dylora(
    model: torch.nn.Module, path: str, dim: int, alpha: float, unit: int, generator: torch.Generator
) -> DyLoraAdapter:
    """Put a DyLoraAdapter in place of the module at ``path`` (like peft, which also swaps modules)."""
    parent_path, _, child_name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    adapter = DyLoraAdapter(getattr(parent, child_name), dim, alpha, unit, generator)
    setattr(parent, child_name, adapter)
    return adapter
