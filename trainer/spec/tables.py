"""Tables of names that the schema, the trainer and the page share: each is written here once.

Torch-free (strings only), so the form and validation can read them without importing the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

LORA_TYPES = ("Standard", "LoCon", "LoHa", "DyLoRA")
# LoRA types that also adapt the 3×3 convolutions (conv_dim, conv_alpha, conv block lists apply).
CONV_LORA_TYPES = ("LoCon", "LoHa", "DyLoRA")


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
