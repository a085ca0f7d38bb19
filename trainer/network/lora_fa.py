"""LoRA-FA: a LoRA whose down matrix (A) is frozen at its random start; only the up matrix (B) learns.

Paper: Zhang et al., "LoRA-FA: Memory-efficient Low-rank Adaptation for Large Language Models Fine-tuning"
(2023, arXiv 2308.03303). Semantics of sd-scripts' ``networks/lora_fa.py`` (kohya_ss's "LoRA-FA"):

    y = W0·x + up(drop(down(x))) · multiplier · alpha / rank

* down: ``Linear(in, rank)`` or ``Conv2d(in, rank, kernel, stride, padding)``, drawn from a normal with
  std √(2 / (in + rank)) ("according to the paper") and never trained; up: ``Linear(rank, out)`` or a
  1×1 ``Conv2d``, zeros;
* in training mode: module dropout (the whole module skipped with probability p), network dropout on the
  rank activations, rank dropout (each rank dropped per sample, the scale × 1/(1 − p));
* max-norm (``scale_weight_norms``): ΔW = up·down·scale; when its norm is above the limit both matrices are
  scaled by √ratio, the down one included (sd-scripts scales the state dict's tensors).

The down matrix is a buffer, not a Parameter, so no optimizer, LoRA+ split or "start training the text
encoder" can ever unfreeze it; it is saved, since the up matrix means nothing without it. The file's keys
are an ordinary LoRA's (``lora_down.weight``, ``lora_up.weight``, ``alpha``): every LoRA loader reads it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class LoraFaAdapter(torch.nn.Module):
    """Wraps a ``Linear`` or ``Conv2d`` (kept frozen as ``base_layer``) and adds a LoRA-FA delta."""

    def __init__(self, base_layer: torch.nn.Module, dim: int, alpha: float, generator: torch.Generator,
                 network_dropout: float = 0.0, rank_dropout: float = 0.0, module_dropout: float = 0.0):
        super().__init__()
        if dim <= 0:
            raise ValueError(f"LoRA-FA needs a rank of at least 1, got {dim}")
        self.base_layer = base_layer
        self.dim, self.alpha = dim, float(alpha)
        self.network_dropout, self.rank_dropout, self.module_dropout = network_dropout, rank_dropout, module_dropout
        weight = base_layer.weight
        if isinstance(base_layer, torch.nn.Conv2d):
            if base_layer.groups != 1:
                raise ValueError("LoRA-FA cannot adapt a grouped convolution")
            in_dim, out_dim = base_layer.in_channels, base_layer.out_channels
            down_shape: tuple[int, ...] = (dim, in_dim, *base_layer.kernel_size)
            up_shape: tuple[int, ...] = (out_dim, dim, 1, 1)
        elif isinstance(base_layer, torch.nn.Linear):
            in_dim, out_dim = base_layer.in_features, base_layer.out_features
            down_shape, up_shape = (dim, in_dim), (out_dim, dim)
        else:
            raise TypeError(f"LoRA-FA adapts Linear and Conv2d layers, not {type(base_layer).__name__}")
        down = torch.randn(down_shape, generator=generator) * math.sqrt(2.0 / (in_dim + dim))
        self.register_buffer("lora_down", down.to(device=weight.device, dtype=torch.float32))
        self.lora_up = torch.nn.Parameter(torch.zeros(up_shape, device=weight.device, dtype=torch.float32))

    @property
    def scale(self) -> float:
        return self.alpha / self.dim

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        base, down = self.base_layer, self.lora_down.to(self.lora_up.dtype)
        if isinstance(base, torch.nn.Conv2d):
            return F.conv2d(x.to(down.dtype), down, None, base.stride, base.padding, base.dilation)
        return F.linear(x.to(down.dtype), down)

    def _up(self, hidden: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base_layer, torch.nn.Conv2d):
            return F.conv2d(hidden, self.lora_up)
        return F.linear(hidden, self.lora_up)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.training and self.module_dropout and torch.rand(1) < self.module_dropout:
            return result
        hidden = self._down(x)
        if self.training and self.network_dropout:
            hidden = F.dropout(hidden, p=self.network_dropout)
        scale = self.scale
        if self.training and self.rank_dropout:
            mask = torch.rand((hidden.size(0), self.dim), device=hidden.device) > self.rank_dropout
            if hidden.dim() == 3:  # (batch, tokens, rank): text encoder and SDXL's linear projections
                mask = mask.unsqueeze(1)
            elif hidden.dim() == 4:  # (batch, rank, h, w): convolutions
                mask = mask.unsqueeze(-1).unsqueeze(-1)
            hidden = hidden * mask.to(hidden.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        return result + (self._up(hidden) * scale).to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = up · down · scale, in the base weight's layout."""
        up, down = self.lora_up.float(), self.lora_down.float()
        if down.dim() == 2:
            return up @ down * self.scale
        if down.shape[2:] == (1, 1):
            return (up.flatten(1) @ down.flatten(1)).unsqueeze(2).unsqueeze(3) * self.scale
        return F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * self.scale

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[bool, float]:
        """sd-scripts' max-norm step for this module: (scaled?, the norm after it)."""
        norm = self.delta_weight().norm().clamp(min=max_norm / 2)
        ratio = float(torch.clamp(norm, max=max_norm) / norm)
        if ratio != 1:
            self.lora_up.mul_(ratio ** 0.5)
            self.lora_down.mul_(ratio ** 0.5)
        return ratio != 1, float(self.delta_weight().norm())


def replace_with_lora_fa(model: torch.nn.Module, path: str, dim: int, alpha: float, generator: torch.Generator,
                         **dropouts: float) -> LoraFaAdapter:
    """Put a LoraFaAdapter in place of the module at ``path`` (as peft and our DyLoRA do)."""
    parent_path, _, child_name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    adapter = LoraFaAdapter(getattr(parent, child_name), dim, alpha, generator, **dropouts)
    setattr(parent, child_name, adapter)
    return adapter


def apply_max_norm_fa(adapters: list[LoraFaAdapter], max_norm: float) -> tuple[int, float, float]:
    """(keys scaled, average norm, largest norm) over the modules, as sd-scripts logs them."""
    results = [adapter.apply_max_norm(max_norm) for adapter in adapters]
    if not results:
        return 0, 0.0, 0.0
    norms = [norm for _, norm in results]
    return sum(int(scaled) for scaled, _ in results), sum(norms) / len(norms), max(norms)
