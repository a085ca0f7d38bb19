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
LORA_TYPES = ("Standard", "LoCon", "LoHa", "DyLoRA") + LYCORIS_TYPES
# LoRA types that also adapt the 3×3 convolutions (conv_dim, conv_alpha, conv block lists apply).
CONV_LORA_TYPES = ("LoCon", "LoHa", "DyLoRA") + LYCORIS_TYPES
# Types that run through LyCORIS's modules when a LyCORIS option or a regularizer asks for it (LoHa and
# LoCon: what kohya_ss's LyCORIS/LoHa and LyCORIS/LoCon are; Standard: LyCORIS's LoCon on the same layers).
LYCORIS_CAPABLE_TYPES = {"Standard": "locon", "LoCon": "locon", "LoHa": "loha"}
# Which LyCORIS option each type reads (the page shows an option only for these; kohya_ss's own choice).
DORA_TYPES = ("LoCon", "LoHa", "LyCORIS/LoKr")
SCALAR_TYPES = ("LoCon", "LoHa", "LyCORIS/LoKr")
TUCKER_TYPES = ("LoCon", "LoHa", "LyCORIS/LoKr")
RANK_DROPOUT_SCALE_TYPES = ("Standard", "LoCon", "LoHa", "LyCORIS/LoKr", "LyCORIS/GLoRA", "LyCORIS/BOFT",
                            "LyCORIS/Diag-OFT", "LyCORIS/Native Fine-Tuning")
OFT_TYPES = ("LyCORIS/BOFT", "LyCORIS/Diag-OFT")
# Types whose ranks may go to 100000, LyCORIS's "full rank / full matrix" convention.
FULL_RANK_TYPES = ("LyCORIS/LoKr", "LyCORIS/BOFT", "LyCORIS/Diag-OFT")
FULL_RANK = 100000
# The dropouts work on every type but DyLoRA (sd-scripts' dylora.py takes none), iA3 and native fine-tuning
# (LyCORIS's modules for them have no dropout; kohya_ss sends none for iA3).
REGULARIZED_TYPES = tuple(t for t in LORA_TYPES if t not in ("DyLoRA", "LyCORIS/iA3", "LyCORIS/Native Fine-Tuning"))
RANK_DROPOUT_TYPES = REGULARIZED_TYPES
# scale_weight_norms: the types whose LyCORIS module can scale itself back (GLoRA's cannot).
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
}
OPTIMIZERS: tuple[str, ...] = tuple(OPTIMIZER_CLASSES)
# Optimizers that take one learning rate for every group (they raise on different ones; sd-scripts warns).
ONE_LR_OPTIMIZERS = ("DAdaptation", "DAdaptAdam", "DAdaptLion", "DAdaptSGD", "Prodigy")
# Optimizers that adapt their own step size: the learning rate is a multiplier (usually 1.0).
SELF_ADAPTING = tuple(name for name in OPTIMIZERS if name.startswith("DAdapt") or name == "Prodigy")

LR_SCHEDULERS = (
    "adafactor", "constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial",
)
# Which schedule reads the number of cycles and the power (the plan warns when a set one is not read).
SCHEDULERS_WITH_CYCLES = ("cosine_with_restarts",)
SCHEDULERS_WITH_POWER = ("polynomial",)
SCHEDULERS_WITHOUT_WARMUP = ("constant", "adafactor")
