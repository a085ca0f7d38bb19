"""How big the chosen network is on a UNet, before anything is loaded: its module count and trainable
parameters, counted on the meta device (no memory, no weights).

The modules are the ones the network would get (``adapters.network_unet_targets`` and the module plan); each
is built as the LyCORIS module of its algorithm on the meta device and its parameters counted. Our own
modules count as their LyCORIS twins (peft's LoRA and our DyLoRA as LoCon: down + up; LoRA-FA: its up matrix only; peft's LoHa as
LyCORIS's LoHa without Tucker: the same four factors). Native fine-tuning and DoRA's magnitudes copy the
base weight, which a meta tensor cannot, and LoHa reads a meta shape as a number, so those are counted
from the layer's shape.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from trainer.network.adapters import network_unet_targets
from trainer.network.config import NetworkConfig
from trainer.network.lycoris_adapters import make_lycoris_module, module_options
from trainer.network.module_plan import plan_modules

class MetaFactories(TorchFunctionMode):
    """New tensors (empty, zeros, randn …) on the meta device unless a device is named; ``torch.tensor`` stays
    on the CPU, so LyCORIS's shape arithmetic (``torch.tensor(shape).prod().item()``) still works."""

    FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.randn, torch.rand, torch.eye, torch.full})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


OWN_TWINS = {"Standard": "locon", "LoCon": "locon", "LoHa": "loha", "DyLoRA": "locon", "LoRA-FA": "lora_fa"}


def _module_parameters(layer: torch.nn.Module, algo: str, dim: int, alpha: float, options: dict,
                       is_norm: bool) -> int:
    weight, bias = layer.weight, getattr(layer, "bias", None)
    if algo == "full" and not is_norm:
        return weight.numel() + (bias.numel() if bias is not None else 0)
    out_dim, in_dim = weight.shape[0], weight.shape[1] if weight.dim() > 1 else 0
    kernel = weight[0, 0].numel() if weight.dim() > 2 else 1
    if algo == "lora_fa":
        return dim * out_dim  # LoRA-FA trains the up matrix only (its down matrix is frozen)
    extras = int(bool(options.get("use_scalar"))) + (out_dim if options.get("weight_decompose") else 0)
    if algo == "locon" and not is_norm and not (options.get("use_tucker") and kernel > 1):
        return dim * (in_dim * kernel + out_dim) + extras  # down + up: counted, not built (the common case)
    if algo == "loha" and not is_norm:  # LyCORIS's LoHa asks its meta shapes for .item()
        if options.get("use_tucker") and kernel > 1:
            count = 2 * (dim * dim * kernel + dim * out_dim + dim * in_dim)
        else:
            count = 2 * dim * (out_dim + in_dim * kernel)
        return count + extras
    with MetaFactories():
        module = make_lycoris_module("count", layer, algo, dim, alpha, {**options, "weight_decompose": False},
                                     is_norm)
    count = sum(p.numel() for p in module.parameters())
    if options.get("weight_decompose") and not is_norm:
        count += weight.shape[0]  # DoRA: one magnitude per output channel
    return count


def unet_network_size(unet: torch.nn.Module, config: NetworkConfig) -> dict:
    """{"modules", "parameters"} of the network's UNet part (zeros when the UNet is not trained)."""
    if not config.train_unet:
        return {"modules": 0, "parameters": 0}
    algo = config.algo or OWN_TWINS[config.lora_type]
    plans = plan_modules(network_unet_targets(unet, config), config)
    options = module_options(config)
    total = sum(_module_parameters(unet.get_submodule(p.target.path), algo, p.dim, p.alpha, options,
                                   p.target.is_norm) for p in plans)
    return {"modules": len(plans), "parameters": total}
