"""The network's settings (one frozen dataclass) and what they mean for the LoRA file's metadata."""
from __future__ import annotations

import json
from dataclasses import dataclass

from trainer.network.blocks import block_labels, validate_block_values
from trainer.spec.block_layout import layout_for
from trainer.spec.rules import adapts_conv, dylora_rank_faults, lycoris_algo, rank_limits
from trainer.spec.setting import SettingError
from trainer.spec.tables import KOHYA_LOKR, LORA_FA, LORA_TYPES, NO_BLOCK_TYPES


# ss_network_module as sd-scripts / LyCORIS write it for each type.
NETWORK_MODULES = {
    "Standard": "networks.lora",
    "LoCon": "networks.lora",  # sd-scripts' own lora.py with conv_dim ("LoRA-C3Lier")
    "LoHa": "lycoris.kohya",
    "DyLoRA": "networks.dylora",
    LORA_FA: "networks.lora_fa",
    KOHYA_LOKR: "networks.lokr",  # sd-scripts' own LoKr (run here with LyCORIS's LoKr module)
}
LYCORIS_NETWORK_MODULE = "lycoris.kohya"

# The LyCORIS options and regularizers of the config, as the job names them (also the network_args keys,
# except constrain → constraint and network_dropout → dropout, which LyCORIS reads).
LYCORIS_FIELDS = ("preset", "factor", "decompose_both", "use_tucker", "use_scalar", "dora_wd", "bypass_mode",
                  "rank_dropout_scale", "train_norm", "constrain", "rescaled", "train_on_input")
REGULARIZER_FIELDS = ("network_dropout", "rank_dropout", "module_dropout")


@dataclass(frozen=True)
class NetworkConfig:
    """What to adapt and how.

    dim/alpha: rank and alpha of Linear and 1×1-conv adapters (scale = alpha / dim; alpha 0 means
    alpha = dim, as in sd-scripts). conv_dim/conv_alpha: the same for 3×3 convs (LoCon, LoHa, DyLoRA;
    0 means no conv adapters).
    unit: DyLoRA's rank step. block_*: 25 values IN00..IN11, MID, OUT00..OUT11 for the UNet (23 for
    ``family="sdxl"``: EMB, IN00..IN08, MID00..MID02, OUT00..OUT08, END); a block with dim 0 or LR weight
    0 gets no adapter. block_lr_weights are the weights after sd-scripts' zero threshold. seed drives
    DyLoRA's rank draws. family: the base model's ("sd1" | "sd2" | "sdxl"), which fixes the block table.
    """

    lora_type: str = "Standard"
    dim: int = 8
    alpha: float = 1.0
    conv_dim: int = 1
    conv_alpha: float = 1.0
    unit: int = 1
    train_unet: bool = True
    train_text_encoder: bool = True
    block_dims: tuple[int, ...] | None = None
    block_alphas: tuple[float, ...] | None = None
    conv_block_dims: tuple[int, ...] | None = None
    conv_block_alphas: tuple[float, ...] | None = None
    block_lr_weights: tuple[float, ...] | None = None
    seed: int = 0
    family: str = "sd1"
    # LyCORIS options (see the catalog's help); use_tucker includes kohya_ss's use_cp.
    preset: str = "full"
    factor: int = -1
    decompose_both: bool = False
    use_tucker: bool = False
    use_scalar: bool = False
    dora_wd: bool = False
    bypass_mode: bool = False
    rank_dropout_scale: bool = False
    train_norm: bool = False
    constrain: float = 0.0
    rescaled: bool = False
    train_on_input: bool = True
    # Regularizers that act in the forward pass (scale_weight_norms acts after the step: the loop's).
    network_dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    scale_weight_norms: float = 0.0  # applied by the loop after each step; here because it needs LyCORIS

    def __post_init__(self):
        validate_network_config(self)

    @property
    def algo(self) -> str | None:
        """The LyCORIS algorithm the network runs (lokr, ia3, locon, …), or None for our own modules."""
        options = {name: getattr(self, name) for name in LYCORIS_FIELDS[3:10] + REGULARIZER_FIELDS}
        return lycoris_algo(self.lora_type, {**options, "LyCORIS_preset": self.preset,
                                             "scale_weight_norms": self.scale_weight_norms})

    @property
    def adapts_conv_layers(self) -> bool:
        """LoCon, LoHa and DyLoRA also adapt the resnet / up- and downsampler layers (when conv_dim > 0)."""
        return adapts_conv(self.lora_type, self.conv_dim, self.conv_block_dims or ())


# The job setting each field of the config comes from (what a SettingError blames).
_SETTING_OF_FIELD = {"lora_type": "LoRA_type", "dim": "network_dim", "alpha": "network_alpha", "conv_dim": "conv_dim",
                     "conv_alpha": "conv_alpha", "unit": "unit", "block_lr_weights": "down_lr_weight",
                     "preset": "LyCORIS_preset"}


def validate_network_config(config: NetworkConfig) -> None:
    """Raise a SettingError naming the job setting for anything the network cannot be built from."""
    if config.lora_type not in LORA_TYPES:
        raise SettingError(f"LoRA_type {config.lora_type!r} is not one of {', '.join(LORA_TYPES)}", "LoRA_type")
    for name in ("dim", "conv_dim", "alpha", "conv_alpha"):
        if getattr(config, name) < 0:
            raise SettingError(f"{_SETTING_OF_FIELD[name]} must be 0 or more, got {getattr(config, name)}",
                               _SETTING_OF_FIELD[name])
    if config.dim == 0 and not config.block_dims:
        raise SettingError("network_dim must be at least 1", "network_dim")
    for name, limit in zip(("dim", "conv_dim"), rank_limits(config.lora_type)):
        if getattr(config, name) > limit:
            raise SettingError(f"{_SETTING_OF_FIELD[name]} is at most {limit} for {config.lora_type} (100000, "
                               "LyCORIS's full rank, is for LyCORIS/LoKr, BOFT and Diag-OFT)", _SETTING_OF_FIELD[name])
    for name in REGULARIZER_FIELDS:
        value = getattr(config, name)
        if not 0 <= value <= 1:
            raise SettingError(f"{name} must be from 0 to 1, got {value}", name)
        if value and config.lora_type == "DyLoRA":
            raise SettingError(f"{name} does not work with DyLoRA (sd-scripts' DyLoRA has no dropouts)", name)
    if config.network_dropout and config.lora_type == "LyCORIS/Native Fine-Tuning":
        raise SettingError("network_dropout does not work with native fine-tuning (LyCORIS's full module has no "
                           "dropout)", "network_dropout")
    if config.scale_weight_norms and config.lora_type == "DyLoRA":
        raise SettingError("scale_weight_norms does not work with DyLoRA", "scale_weight_norms")
    if config.lora_type == KOHYA_LOKR:
        for name in ("network_dropout", "scale_weight_norms"):
            if getattr(config, name):
                raise SettingError(f"{name} does not work with Kohya LoKr (sd-scripts' networks.lokr never applies "
                                   "it); use LyCORIS/LoKr", name)
    if config.lora_type == "DyLoRA" and any(getattr(config, name) for name in LYCORIS_FIELDS[3:11]):
        raise SettingError("DyLoRA takes none of the LyCORIS options", "LoRA_type")
    if config.lora_type in NO_BLOCK_TYPES and any(
            getattr(config, name) is not None for name in ("block_dims", "block_alphas", "conv_block_dims",
                                                           "conv_block_alphas", "block_lr_weights")):
        raise SettingError(f"block dims, alphas and LR weights do not apply to {config.lora_type}", "block_dims")
    if config.unit < 1:
        raise SettingError(f"unit must be at least 1, got {config.unit}", "unit")
    for name in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "block_lr_weights"):
        values = getattr(config, name)
        if values is not None:
            count = len(block_labels(config.family))
            try:
                object.__setattr__(config, name, validate_block_values(name, values, count))
            except ValueError as error:
                raise SettingError(str(error), _SETTING_OF_FIELD.get(name, name)) from None
    if config.lora_type == "DyLoRA":
        ranks = {"network_dim": [config.dim], "block_dims": list(config.block_dims or ())}
        if config.adapts_conv_layers:
            ranks.update(conv_dim=[config.conv_dim], conv_block_dims=list(config.conv_block_dims or ()))
        for name, rank in dylora_rank_faults(config.unit, ranks):
            raise SettingError(f"DyLoRA: {name} ({rank}) must be a multiple of unit ({config.unit})", name)


def effective_alpha(alpha: float, dim: int) -> float:
    """sd-scripts: an alpha of 0 (or None) means alpha = dim, i.e. scale 1."""
    return float(dim) if not alpha else float(alpha)


def _join(values) -> str:
    return ",".join(str(v) for v in values)


def network_args(config: NetworkConfig) -> dict[str, str]:
    """The network_args sd-scripts / LyCORIS would have been given, as strings (for ss_network_args)."""
    args: dict[str, str] = {}
    algo = config.algo
    if config.lora_type == KOHYA_LOKR:
        return _kohya_lokr_args(config)
    if algo is not None:
        args["algo"] = algo
        args.update(_lycoris_args(config, algo))
    elif config.lora_type == "LoHa":
        args["algo"] = "loha"
    if config.adapts_conv_layers:
        args["conv_dim"] = str(config.conv_dim)
        args["conv_alpha"] = str(config.conv_alpha)
    if config.lora_type == "DyLoRA":
        args["unit"] = str(config.unit)
    for name in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
        values = getattr(config, name)
        if values is not None:
            args[name] = _join(values)
    if config.block_lr_weights is not None:
        weights = config.block_lr_weights
        layout = layout_for(config.family)  # the LR weight settings leave out SDXL's EMB and END
        args["down_lr_weight"] = _join(weights[layout.down])
        args["mid_lr_weight"] = _join(weights[layout.middle])
        args["up_lr_weight"] = _join(weights[layout.up])
    return args


def _kohya_lokr_args(config: NetworkConfig) -> dict[str, str]:
    """The network_args kohya_ss sends to sd-scripts' networks.lokr: only values away from its defaults."""
    args: dict[str, str] = {}
    if config.conv_dim > 0:
        args.update(conv_dim=str(config.conv_dim), conv_alpha=str(config.conv_alpha))
    if config.use_tucker:
        args["use_tucker"] = "True"
    if config.factor != -1:
        args["factor"] = str(config.factor)
    for name in ("rank_dropout", "module_dropout"):
        if getattr(config, name):
            args[name] = str(getattr(config, name))
    return args


def network_module_name(config: NetworkConfig) -> str:
    """ss_network_module: sd-scripts' module for our own types and Kohya LoKr, else LyCORIS's."""
    if config.lora_type == KOHYA_LOKR or config.algo is None:
        return NETWORK_MODULES[config.lora_type]
    return LYCORIS_NETWORK_MODULE


def _lycoris_args(config: NetworkConfig, algo: str) -> dict[str, str]:
    """The LyCORIS network_args kohya_ss sends, as strings; options at their defaults are left out."""
    defaults = NetworkConfig()
    args = {"preset": config.preset}
    for name in LYCORIS_FIELDS[1:]:
        value = getattr(config, name)
        if value != getattr(defaults, name) or (name == "train_on_input" and algo == "ia3"):
            args["constraint" if name == "constrain" else name] = str(value)
    for name in REGULARIZER_FIELDS:
        if getattr(config, name):
            args["dropout" if name == "network_dropout" else name] = str(getattr(config, name))
    return args


def network_metadata(config: NetworkConfig) -> dict[str, str]:
    """ss_network_module, ss_network_dim, ss_network_alpha, ss_network_args as sd-scripts writes them."""
    return {
        "ss_network_module": network_module_name(config),
        "ss_network_dim": str(config.dim),
        "ss_network_alpha": str(float(config.alpha)),
        "ss_network_args": json.dumps(network_args(config)),
    }
