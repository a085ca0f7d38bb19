"""Decide, for every candidate module, whether it gets an adapter and with which rank and alpha.

Pure: takes the target list and the config, touches no weights. The rules are sd-scripts'
(networks/lora.py ``get_block_dims_and_alphas`` / ``remove_block_dims_and_alphas``):

* text encoder: network_dim / network_alpha;
* UNet Linear and 1×1 conv: block_dims[block] / block_alphas[block] when given, else dim / alpha;
* UNet 3×3 conv (LoCon, LoHa): conv_block_dims / conv_block_alphas when given, else conv_dim / conv_alpha;
* a block whose LR weight is 0 gets dim 0, and dim 0 means no adapter;
* an alpha of 0 means alpha = dim (scale 1).
"""
from __future__ import annotations

from dataclasses import dataclass

from trainer.network.blocks import family_block_index, unet_group_name
from trainer.network.config import NetworkConfig, effective_alpha
from trainer.network.targets import Target, unet_targets


@dataclass(frozen=True)
class ModulePlan:
    """One adapter to create: the target, its rank and alpha, its UNet block (None for text encoders)."""

    target: Target
    dim: int
    alpha: float
    block: int | None

    @property
    def scale(self) -> float:
        """LoRA output scale = alpha / dim."""
        return self.alpha / self.dim


def _unet_dim_alpha(target: Target, block: int, config: NetworkConfig) -> tuple[int, float]:
    if target.is_conv3x3:
        dim = config.conv_block_dims[block] if config.conv_block_dims else config.conv_dim
        alpha = config.conv_block_alphas[block] if config.conv_block_alphas else config.conv_alpha
    else:
        dim = config.block_dims[block] if config.block_dims else config.dim
        alpha = config.block_alphas[block] if config.block_alphas else config.alpha
    if config.block_lr_weights is not None and config.block_lr_weights[block] == 0:
        dim = 0
    return int(dim), float(alpha)


def plan_module(target: Target, config: NetworkConfig) -> ModulePlan | None:
    """The adapter for one target, or None when it gets none (dim 0 after the block rules)."""
    if target.part == "unet":
        block = family_block_index(config.family, target.kohya_name)
        dim, alpha = _unet_dim_alpha(target, block, config)
    else:
        block, dim, alpha = None, config.dim, config.alpha
    if dim <= 0:
        return None
    return ModulePlan(target, dim, effective_alpha(alpha, dim), block)


def plan_modules(targets: list[Target], config: NetworkConfig) -> list[ModulePlan]:
    """Plans for all targets that get an adapter, in target order."""
    plans = [plan_module(target, config) for target in targets]
    return [plan for plan in plans if plan is not None]


def unet_block_lr_weights(unet, config: NetworkConfig) -> dict[str, float]:
    """{group name: LR weight} of the UNet groups a network with block LR weights gets on ``unet`` (which
    may be a meta-device skeleton): one per block that holds an adapter, as ``LoraNetwork.param_groups``
    makes them. Empty when the UNet is not trained or there are no block LR weights."""
    if not config.train_unet or config.block_lr_weights is None:
        return {}
    planned = plan_modules(unet_targets(unet, config.adapts_conv_layers), config)
    blocks = sorted({plan.block for plan in planned if plan.block is not None})
    return {unet_group_name(block, config.family): config.block_lr_weights[block] for block in blocks}
