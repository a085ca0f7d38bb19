"""Tables of names that the schema, the trainer and the page share: each is written here once.

Torch-free (strings only), so the form and validation can read them without importing the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

# The LyCORIS-only types, by kohya_ss's LoRA_type value, and the LyCORIS algorithm each runs.
LYCORIS_TYPE_ALGOS = {
    "LyCORIS/LoKr": "lokr",
    "LyCORIS/iA3": "ia3",
    "LyCORIS/GLoRA": "glora",
    "LyCORIS/BOFT": "boft",
    "LyCORIS/Diag-OFT": "diag-oft",
    "LyCORIS/Native Fine-Tuning": "full",
}
LYCORIS_TYPES = tuple(LYCORIS_TYPE_ALGOS)
# sd-scripts' own networks.lokr (kohya_ss's "Kohya LoKr"): LoKr modules on networks.lora's layers, no block
# settings, no LyCORIS preset; run with LyCORIS's LoKr module, whose tensors and arithmetic are the same.
KOHYA_LOKR = "Kohya LoKr"
# sd-scripts' networks.lora_fa (kohya_ss's "LoRA-FA"): a LoRA whose down matrix is frozen at its random init.
LORA_FA = "LoRA-FA"
LORA_TYPES = ("Standard", "LoCon", "LoHa", "DyLoRA", LORA_FA, KOHYA_LOKR) + LYCORIS_TYPES
# Types that take no block dims / alphas / LR weights (LyCORIS, and sd-scripts' networks.lokr).
NO_BLOCK_TYPES = LYCORIS_TYPES + (KOHYA_LOKR,)
# LoRA types that also adapt the 3×3 convolutions (conv_dim, conv_alpha, conv block lists apply).
CONV_LORA_TYPES = ("LoCon", "LoHa", "DyLoRA", KOHYA_LOKR) + LYCORIS_TYPES
# The LoKr types (factor applies).
LOKR_TYPES = ("LyCORIS/LoKr", KOHYA_LOKR)
# Types that run through LyCORIS's modules when a LyCORIS option or a regularizer asks for it (LoHa and
# LoCon: what kohya_ss's LyCORIS/LoHa and LyCORIS/LoCon are; Standard: LyCORIS's LoCon on the same layers).
LYCORIS_CAPABLE_TYPES = {"Standard": "locon", "LoCon": "locon", "LoHa": "loha"}
# Which LyCORIS option each type reads (the page shows an option only for these; kohya_ss's own choice).
DORA_TYPES = ("LoCon", "LoHa", "LyCORIS/LoKr")
SCALAR_TYPES = ("LoCon", "LoHa", "LyCORIS/LoKr")
TUCKER_TYPES = ("LoCon", "LoHa", "LyCORIS/LoKr", KOHYA_LOKR)
RANK_DROPOUT_SCALE_TYPES = ("Standard", "LoCon", "LoHa", "LyCORIS/LoKr", "LyCORIS/GLoRA", "LyCORIS/BOFT",
                            "LyCORIS/Diag-OFT", "LyCORIS/Native Fine-Tuning")
OFT_TYPES = ("LyCORIS/BOFT", "LyCORIS/Diag-OFT")
# Types whose ranks may go to 100000, LyCORIS's "full rank / full matrix" convention.
FULL_RANK_TYPES = ("LyCORIS/LoKr", KOHYA_LOKR, "LyCORIS/BOFT", "LyCORIS/Diag-OFT")
FULL_RANK = 100000
# The dropouts work on every type but DyLoRA (sd-scripts' dylora.py takes none), iA3 and native fine-tuning
# (LyCORIS's modules for them have no dropout; kohya_ss sends none for iA3). sd-scripts' networks.lokr takes
# rank and module dropout only (its module keeps the network dropout but never applies it).
REGULARIZED_TYPES = tuple(t for t in LORA_TYPES
                          if t not in ("DyLoRA", "LyCORIS/iA3", "LyCORIS/Native Fine-Tuning", KOHYA_LOKR))
RANK_DROPOUT_TYPES = REGULARIZED_TYPES + (KOHYA_LOKR,)
# scale_weight_norms: the types whose module can scale itself back (GLoRA's cannot; sd-scripts' networks.lokr
# has no apply_max_norm_regularization, so sd-scripts turns it off there).
MAX_NORM_TYPES = tuple(t for t in REGULARIZED_TYPES if t != "LyCORIS/GLoRA")
# LyCORIS presets (which layers get an adapter); a path to a preset .toml is also accepted.
LYCORIS_PRESETS = ("full", "full-lin", "attn-mlp", "attn-only", "unet-transformer-only", "unet-convblock-only")


@dataclass(frozen=True)
class OptimizerClass:
    """Where an optimizer of the "Optimizer" list lives; imported only when it is built."""

    module: str
    class_name: str
    preset: tuple[tuple[str, object], ...] = ()  # arguments sd-scripts sets; optimizer_args may override them


_NESTEROV = (("nesterov", True), ("momentum", 0.9))
# The "Optimizer" choices in kohya_ss's order, as sd-scripts' ``get_optimizer`` maps them.
OPTIMIZER_CLASSES: dict[str, OptimizerClass] = {
    "AdamW": OptimizerClass("torch.optim", "AdamW"),
    "AdamW8bit": OptimizerClass("bitsandbytes.optim", "AdamW8bit"),
    "Adafactor": OptimizerClass("transformers.optimization", "Adafactor"),
    "DAdaptation": OptimizerClass("dadaptation.experimental", "DAdaptAdamPreprint"),
    "DAdaptAdaGrad": OptimizerClass("dadaptation", "DAdaptAdaGrad"),
    "DAdaptAdam": OptimizerClass("dadaptation", "DAdaptAdam"),
    "DAdaptAdan": OptimizerClass("dadaptation", "DAdaptAdan"),
    "DAdaptLion": OptimizerClass("dadaptation", "DAdaptLion"),
    "DAdaptSGD": OptimizerClass("dadaptation", "DAdaptSGD"),
    "Lion": OptimizerClass("lion_pytorch", "Lion"),
    "SGDNesterov": OptimizerClass("torch.optim", "SGD", _NESTEROV),
    "Prodigy": OptimizerClass("prodigyopt", "Prodigy"),
    "PagedAdamW8bit": OptimizerClass("bitsandbytes.optim", "PagedAdamW8bit"),
    "Lion8bit": OptimizerClass("bitsandbytes.optim", "Lion8bit"),
    "SGDNesterov8bit": OptimizerClass("bitsandbytes.optim", "SGD8bit", _NESTEROV),
    "PagedAdamW32bit": OptimizerClass("bitsandbytes.optim", "PagedAdamW32bit"),
    "PagedLion8bit": OptimizerClass("bitsandbytes.optim", "PagedLion8bit"),
    # kohya_ss names these two by module path (sd-scripts' "any optimizer class" branch)
    "bitsandbytes.optim.AdEMAMix8bit": OptimizerClass("bitsandbytes.optim", "AdEMAMix8bit"),
    "bitsandbytes.optim.PagedAdEMAMix8bit": OptimizerClass("bitsandbytes.optim", "PagedAdEMAMix8bit"),
    "DAdaptAdanIP": OptimizerClass("dadaptation.experimental", "DAdaptAdanIP"),
    "DAdaptAdamPreprint": OptimizerClass("dadaptation.experimental", "DAdaptAdamPreprint"),
}
OPTIMIZERS: tuple[str, ...] = tuple(OPTIMIZER_CLASSES)
# Optimizers that take one learning rate for every group (they raise on different ones; sd-scripts warns).
ONE_LR_OPTIMIZERS = ("DAdaptation", "DAdaptAdamPreprint", "DAdaptAdam", "DAdaptLion", "DAdaptSGD", "Prodigy")
# Optimizers that adapt their own step size: the learning rate is a multiplier (usually 1.0).
SELF_ADAPTING = tuple(name for name in OPTIMIZERS if name.startswith("DAdapt") or name == "Prodigy")

LR_SCHEDULERS = (
    "adafactor", "constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial",
    "piecewise_constant", "cosine_with_min_lr", "inverse_sqrt", "warmup_stable_decay",
)
# Which schedule reads the number of cycles and the power (the plan warns when a set one is not read).
SCHEDULERS_WITH_CYCLES = ("cosine_with_restarts", "cosine_with_min_lr", "warmup_stable_decay")
SCHEDULERS_WITH_POWER = ("polynomial",)
SCHEDULERS_WITHOUT_WARMUP = ("constant", "adafactor", "piecewise_constant")
# The schedules that read lr_scheduler_args (sd-scripts passes them as keyword arguments), and the keys each
# takes: piecewise_constant's step_rules ("1:100,0.5:200,0.1"), cosine_with_min_lr's floor (min_lr_rate, or an
# absolute min_lr), inverse_sqrt's timescale, warmup_stable_decay's num_decay_steps (sd-scripts'
# --lr_decay_steps: steps, or a fraction of the run below 1), min_lr_ratio, warmup_type and decay_type.
SCHEDULER_ARGS = {
    "piecewise_constant": ("step_rules",),
    "cosine_with_min_lr": ("min_lr_rate", "min_lr"),
    "inverse_sqrt": ("timescale",),
    "warmup_stable_decay": ("num_decay_steps", "min_lr_ratio", "warmup_type", "decay_type"),
}
