"""Putting adapters into the UNet and text encoders, and the LoraNetwork handle the loop works with.

Standard and LoCon use peft's LoRA layers, LoHa peft's LoHa layers (both through
``peft.inject_adapter_in_model`` with the exact module paths, one call per distinct rank and
alpha); DyLoRA uses our own module (peft has none). peft's init
matches kohya's: down (lora_A) kaiming-uniform with a = √5, up (lora_B) zeros; scale = alpha / rank.
Like peft, injection freezes every other parameter of an adapted model.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from peft import LoHaConfig, LoraConfig, inject_adapter_in_model

from trainer.network.blocks import unet_group_name
from trainer.network.config import NetworkConfig, network_metadata
from trainer.network.dylora import replace_with_dylora
from trainer.network.lora_fa import LoraFaAdapter, apply_max_norm_fa, replace_with_lora_fa
from trainer.network.kohya_keys import PEFT_ADAPTER_NAME, expected_shapes, export_adapter, import_adapter
from trainer.network.lycoris_adapters import apply_max_norm, attach, make_lycoris_module, module_options
from trainer.network.lycoris_targets import keep_target, preset_targets, unet_classes_for_type
from trainer.network.module_plan import ModulePlan, plan_modules
from trainer.network.targets import Target, text_encoder_prefixes, text_encoder_targets, unet_targets
from trainer.spec.tables import KOHYA_LOKR, LORA_FA


@dataclass(frozen=True)
class Adapter:
    """An injected adapter: its plan (target, rank, alpha, block) and the layer holding its weights."""

    plan: ModulePlan
    layer: torch.nn.Module

    @property
    def name(self) -> str:
        return self.plan.target.kohya_name

    @property
    def part(self) -> str:
        return self.plan.target.part

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.layer.named_parameters() if not n.startswith("base_layer.")]


def _peft_config(config: NetworkConfig, paths: list[str], dim: int, alpha: float):
    """A peft LoraConfig / LoHaConfig for modules that share one rank and alpha, named exactly."""
    if config.lora_type == "LoHa":
        return LoHaConfig(r=dim, alpha=alpha, target_modules=paths, use_effective_conv2d=False, init_weights=True)
    return LoraConfig(
        r=dim, lora_alpha=alpha, target_modules=paths, lora_dropout=0.0, bias="none", init_lora_weights=True
    )


def _group_by_rank_and_alpha(plans: list[ModulePlan]) -> dict[tuple[int, float], list[str]]:
    groups: dict[tuple[int, float], list[str]] = {}
    for plan in plans:
        groups.setdefault((plan.dim, plan.alpha), []).append(plan.target.path)
    return groups


def _inject(model: torch.nn.Module, plans: list[ModulePlan], config: NetworkConfig, generator) -> list[Adapter]:
    """Inject adapters for ``plans`` into ``model``; return them in plan order.

    peft is called once per distinct (rank, alpha) with exact module paths, all under one adapter
    name. (peft's rank_pattern / alpha_pattern would do it in one call, but match every pattern as a
    regex against every module: quadratic, and seconds on a full-size UNet.)
    """
    if not plans:
        return []
    if config.algo is not None:
        model.requires_grad_(False)
        options = module_options(config)
        layers = [attach(layer, make_lycoris_module(p.target.kohya_name, layer, config.algo, p.dim, p.alpha, options,
                                                    p.target.is_norm))
                  for p in plans for layer in [model.get_submodule(p.target.path)]]
        return [Adapter(plan, layer) for plan, layer in zip(plans, layers)]
    if config.lora_type == "DyLoRA":
        model.requires_grad_(False)
        layers = [replace_with_dylora(model, p.target.path, p.dim, p.alpha, config.unit, generator) for p in plans]
        return [Adapter(plan, layer) for plan, layer in zip(plans, layers)]
    if config.lora_type == LORA_FA:
        model.requires_grad_(False)
        dropouts = dict(network_dropout=config.network_dropout, rank_dropout=config.rank_dropout,
                        module_dropout=config.module_dropout)
        fa_layers = [replace_with_lora_fa(model, p.target.path, p.dim, p.alpha, generator, **dropouts) for p in plans]
        return [Adapter(plan, layer) for plan, layer in zip(plans, fa_layers)]
    for (dim, alpha), paths in _group_by_rank_and_alpha(plans).items():
        with warnings.catch_warnings():
            # Expected from the second call on: the adapter name is the same, the modules are new.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(_peft_config(config, paths, dim, alpha), model, adapter_name=PEFT_ADAPTER_NAME)
    return [Adapter(plan, model.get_submodule(plan.target.path)) for plan in plans]


def network_unet_targets(unet, config: NetworkConfig) -> list[Target]:
    """The UNet layers the network adapts: sd-scripts' set, or for LyCORIS the preset's (with train_norm,
    the norm layers of the same blocks too). Kohya LoKr adapts sd-scripts' networks.lora layers, as LoCon."""
    if config.algo is None or config.lora_type == KOHYA_LOKR:
        return unet_targets(unet, config.adapts_conv_layers)
    preset = preset_targets(config.preset)
    classes = unet_classes_for_type(preset, config.lora_type, config.adapts_conv_layers)
    found = unet_targets(unet, True, norms=config.train_norm, class_names=classes)
    return [t for t in found if keep_target(t, preset)]


def network_text_encoder_targets(text_encoder, prefix: str, config: NetworkConfig) -> list[Target]:
    if config.algo is None or config.lora_type == KOHYA_LOKR:
        return text_encoder_targets(text_encoder, prefix)
    preset = preset_targets(config.preset)
    found = text_encoder_targets(text_encoder, prefix, class_names=preset.text_encoder_classes)
    return [t for t in found if keep_target(t, preset)]


def apply_network(unet, text_encoders: list, config: NetworkConfig) -> "LoraNetwork":
    """Inject the adapters ``config`` asks for into ``unet`` and ``text_encoders`` (in place).

    Parts with train_unet / train_text_encoder False get no adapter at all. Adapter weights are
    float32 whatever the base dtype (``LoraNetwork.cast_adapters`` changes that). One text encoder gets
    kohya prefix ``lora_te``, two (SDXL) ``lora_te1`` / ``lora_te2``.
    """
    generator = torch.Generator().manual_seed(config.seed)
    if config.algo is not None:  # LyCORIS draws its initial weights from torch's global generator
        torch.manual_seed(config.seed)
    adapters: list[Adapter] = []
    if config.train_text_encoder:
        for prefix, text_encoder in zip(text_encoder_prefixes(len(text_encoders)), text_encoders):
            plans = plan_modules(network_text_encoder_targets(text_encoder, prefix, config), config)
            adapters += _inject(text_encoder, plans, config, generator)
    if config.train_unet:
        plans = plan_modules(network_unet_targets(unet, config), config)
        adapters += _inject(unet, plans, config, generator)
    if not adapters:
        raise ValueError(
            "The network has no modules: neither the UNet nor the text encoder is trained, or every block dim is 0"
        )
    network = LoraNetwork(config, adapters)
    network.cast_adapters(torch.float32)  # as sd-scripts: fp32 adapters even on an fp16/bf16 base
    return network


class LoraNetwork:
    """The adapters of one run: parameter groups, kohya state dict in and out, metadata."""

    def __init__(self, config: NetworkConfig, adapters: list[Adapter]):
        self.config = config
        self.adapters = adapters

    def __len__(self) -> int:
        return len(self.adapters)

    def module_names(self, part: str | None = None) -> list[str]:
        """kohya names of the adapted modules (of one part if given)."""
        return [a.name for a in self.adapters if part is None or a.part == part]

    def _parameters(self, part: str) -> list[torch.nn.Parameter]:
        return [p for a in self.adapters if a.part == part for p in a.parameters()]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Every adapter parameter that currently requires grad."""
        return [p for a in self.adapters for p in a.parameters() if p.requires_grad]

    def cast_adapters(self, dtype: torch.dtype) -> None:
        """Keep the adapter weights in ``dtype`` (float32 by default; fp16/bf16 for full_fp16/full_bf16)."""
        for param in (p for a in self.adapters for p in a.parameters()):
            param.data = param.data.to(dtype)

    def set_text_encoder_trainable(self, trainable: bool) -> None:
        """Start or stop training the text-encoder adapters (they keep acting in the forward pass)."""
        for param in self._parameters("text_encoder"):
            param.requires_grad_(trainable)

    def param_groups(self, unet_lr: float, text_encoder_lr: float) -> list[dict]:
        """Optimizer groups: "text_encoder", then "unet" or one "unet_<block>" per block with block LR
        weights (lr = unet_lr × weight). Groups with lr 0 or no parameters are left out."""
        groups = [{"name": "text_encoder", "params": self._parameters("text_encoder"), "lr": text_encoder_lr}]
        weights = self.config.block_lr_weights
        if weights is None:
            groups.append({"name": "unet", "params": self._parameters("unet"), "lr": unet_lr})
        else:
            for block in sorted({a.plan.block for a in self.adapters if a.part == "unet" and a.plan.block is not None}):
                params = [p for a in self.adapters if a.plan.block == block for p in a.parameters()]
                name = unet_group_name(block, self.config.family)
                groups.append({"name": name, "params": params, "lr": unet_lr * weights[block]})
        return [g for g in groups if g["params"] and g["lr"]]

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """All adapters under kohya keys (CPU copies); every tensor incl. alpha cast to ``dtype`` if given."""
        tensors: dict[str, torch.Tensor] = {}
        for adapter in self.adapters:
            tensors.update(export_adapter(adapter.layer, adapter.name, dtype))
        return tensors

    def load_kohya_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load weights and alphas saved by ``kohya_state_dict`` (or sd-scripts for the same settings).

        Every key must fit: a ValueError names missing keys, unexpected keys and shape mismatches.
        Alpha from the file sets each module's scale (alpha / rank).
        """
        expected: dict[str, tuple[int, ...]] = {}
        for adapter in self.adapters:
            expected.update(expected_shapes(adapter.layer, adapter.name))
        check_state_dict_fits(expected, tensors)
        for adapter in self.adapters:
            import_adapter(adapter.layer, adapter.name, tensors)

    def set_training(self, training: bool) -> None:
        """Put the adapters (not the base layers) in training mode, where the dropouts act, or out of it."""
        for adapter in self.adapters:
            adapter.layer.train(training)

    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """scale_weight_norms after a step: (keys scaled, average norm, largest norm); LyCORIS and LoRA-FA
        networks only."""
        if self.config.lora_type == LORA_FA:
            return apply_max_norm_fa([a.layer for a in self.adapters if isinstance(a.layer, LoraFaAdapter)], max_norm)
        if self.config.algo is None:
            raise ValueError("max-norm regularisation runs on LyCORIS modules only")
        return apply_max_norm([a.layer for a in self.adapters], max_norm)

    def metadata(self) -> dict[str, str]:
        """ss_network_module, ss_network_dim, ss_network_alpha and ss_network_args (JSON)."""
        return network_metadata(self.config)


def _listing(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict_fits(expected: dict[str, tuple[int, ...]], tensors: dict[str, torch.Tensor]) -> None:
    """Raise ValueError naming every key that is missing, unexpected or of the wrong shape."""
    problems = []
    missing = expected.keys() - tensors.keys()
    unexpected = tensors.keys() - expected.keys()
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
    wrong = []
    for key in expected.keys() & tensors.keys():
        shape = tuple(tensors[key].shape)
        fits = tensors[key].numel() == 1 if key.endswith(".alpha") else shape == expected[key]
        if not fits:
            wrong.append(f"{key} is {list(shape)}, the network needs {list(expected[key])}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(sorted(wrong)[:5]))
    if problems:
        raise ValueError("LoRA weights do not fit this network: " + " | ".join(problems))
