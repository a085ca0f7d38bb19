"""Adapters made by LyCORIS (``lycoris-lora``): LoKr, iA3, GLoRA, BOFT, Diag-OFT, native fine-tuning, and
LoCon / LoHa when a LyCORIS option or a regularizer asks for them.

Each planned module gets the LyCORIS module of its algorithm, built with the plan's rank and alpha and the
config's options, named by its kohya name, hooked into the layer (``apply_to``: the layer's forward is
LyCORIS's from then on) and registered as the layer's child ``lycoris_adapter`` so that it follows the
model's device, dtype and train/eval flags. Its state dict is what LyCORIS saves (``lokr_w1``, ``hada_w1_a``,
``oft_blocks``, ``diff``, ``dora_scale`` …), so the file is what LyCORIS, ComfyUI and A1111 read.
"""
from __future__ import annotations

import logging

import torch

from trainer.network.config import NetworkConfig
from trainer.network.targets import LYCORIS_CHILD
from trainer.spec.setting import SettingError
from trainer.spec.tables import KOHYA_LOKR


def module_classes() -> dict[str, type]:
    """LyCORIS's module class of each algorithm we run (imported on first use: LyCORIS is a heavy import)."""
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)  # its per-module INFO lines would flood the log
    from lycoris.modules import (
        ButterflyOFTModule, DiagOFTModule, FullModule, GLoRAModule, IA3Module, LoConModule, LohaModule, LokrModule,
    )

    return {"locon": LoConModule, "loha": LohaModule, "lokr": LokrModule, "ia3": IA3Module, "glora": GLoRAModule,
            "boft": ButterflyOFTModule, "diag-oft": DiagOFTModule, "full": FullModule}


def module_options(config: NetworkConfig) -> dict:
    """Keyword arguments LyCORIS's module constructors take, from the config.

    LyCORIS applies the network dropout only in bypass mode (its rebuilt-weight forward has no activations
    to drop), so a network dropout turns bypass mode on: y = Wx + dropout(ΔW x), sd-scripts' meaning.

    Kohya LoKr (sd-scripts' networks.lokr) takes factor, Tucker and the rank / module dropouts only; its module
    always rescales the kept ranks (× 1/(1 − p)), which LyCORIS's rank_dropout_scale does by the kept share."""
    if config.lora_type == KOHYA_LOKR:
        return dict(dropout=0.0, rank_dropout=config.rank_dropout, module_dropout=config.module_dropout,
                    use_tucker=config.use_tucker, use_scalar=False, rank_dropout_scale=True, weight_decompose=False,
                    bypass_mode=False, decompose_both=False, factor=config.factor, constraint=0.0, rescaled=False,
                    train_on_input=True)
    return dict(
        dropout=config.network_dropout, rank_dropout=config.rank_dropout, module_dropout=config.module_dropout,
        use_tucker=config.use_tucker, use_scalar=config.use_scalar, rank_dropout_scale=config.rank_dropout_scale,
        weight_decompose=config.dora_wd, bypass_mode=config.bypass_mode or config.network_dropout > 0, decompose_both=config.decompose_both,
        factor=config.factor, constraint=config.constrain, rescaled=config.rescaled,
        train_on_input=config.train_on_input,
    )


def make_lycoris_module(name: str, layer: torch.nn.Module, algo: str, dim: int, alpha: float, options: dict,
                        is_norm: bool = False) -> torch.nn.Module:
    """A LyCORIS module for ``layer`` (not yet hooked in): the algorithm's, or the norm module for a norm."""
    if is_norm:
        from lycoris.modules.norms import NormModule

        return NormModule(name, layer, 1.0, rank_dropout=options["rank_dropout"],
                          module_dropout=options["module_dropout"], rank_dropout_scale=options["rank_dropout_scale"])
    try:
        return module_classes()[algo](name, layer, 1.0, lora_dim=dim, alpha=alpha, **options)
    except ValueError as error:  # e.g. BOFT: a rank that cannot factor the layer's width
        setting = "conv_dim" if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size != (1, 1) else "network_dim"
        raise SettingError(f"{setting} {dim} does not work for {name} with LyCORIS {algo}: {error}", setting) from None


def attach(layer: torch.nn.Module, module: torch.nn.Module) -> torch.nn.Module:
    """Hook ``module`` into ``layer`` and register it as the layer's child; returns the module."""
    reference = next(layer.parameters(), None)
    if reference is not None:  # LyCORIS builds on the CPU in float32
        module.to(reference.device)
    module.apply_to()
    layer.add_module(LYCORIS_CHILD, module)
    return module


def lycoris_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's tensors by LyCORIS suffix (as LyCORIS saves them: its own custom state dict)."""
    return dict(module.state_dict())


def is_lycoris_module(layer: torch.nn.Module) -> bool:
    from lycoris.modules.base import LycorisBaseModule

    return isinstance(layer, LycorisBaseModule)


def load_lycoris_tensors(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load a module's tensors (suffix → tensor) through LyCORIS's own load hooks."""
    own = module.state_dict()
    module.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in tensors.items()}, strict=False)


@torch.no_grad()
def apply_max_norm(modules: list[torch.nn.Module], max_norm: float) -> tuple[int, float, float]:
    """sd-scripts' max-norm regularisation through LyCORIS: every module whose ΔW norm is above ``max_norm``
    is scaled back to it. Returns (keys scaled, average norm, largest norm) over the modules that have a norm,
    the norms after scaling, as sd-scripts logs them (0, 0, 0 with none)."""
    scaled_count, norms = 0, []
    for module in modules:
        scaled, norm = module.apply_max_norm(max_norm, None)
        if scaled is None:
            continue
        scaled_count += int(bool(scaled))
        norms.append(float(norm))
    if not norms:
        return 0, 0.0, 0.0
    return scaled_count, sum(norms) / len(norms), max(norms)
