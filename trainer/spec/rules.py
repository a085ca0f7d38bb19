"""Rules derived from the job's sections, each written once, grouped by the section they read.

Each takes the section it derives from (``effective_lrs(job.optimisation)``), so a type checker sees every
setting a rule reads. Pure and torch-free: the page, validation and the trainer call the same functions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

from .tables import (
    CONV_LORA_TYPES, FULL_RANK_TYPES, KOHYA_LOKR, LYCORIS_CAPABLE_TYPES, LYCORIS_TYPE_ALGOS, SCHEDULER_ARGS,
    SCHEDULERS_WITH_CYCLES,
    SCHEDULERS_WITH_POWER, SCHEDULERS_WITHOUT_WARMUP,
)

if TYPE_CHECKING:
    from .sections import NetworkSection, OptimisationSection


# ---------------------------------------------------------------- network


def dylora_rank_faults(unit: int, ranks: Mapping[str, Iterable[int]]) -> list[tuple[str, int]]:
    """DyLoRA trains ranks in steps of ``unit``: every rank must be a whole number of units.

    ``ranks`` maps a setting to its ranks; the answer is (setting, first rank that is not a multiple) for
    each setting at fault, in order."""
    faults = []
    for key, values in ranks.items():
        bad = [value for value in values if value % unit]
        if bad:
            faults.append((key, bad[0]))
    return faults



def adapts_conv(lora_type: str, conv_dim: int, conv_block_dims: Iterable[int] = ()) -> bool:
    """Conv-capable types adapt the 3×3 convolutions while conv_dim > 0 or a conv block has a rank."""
    return lora_type in CONV_LORA_TYPES and (conv_dim > 0 or any(conv_block_dims))


def network_adapts_conv(network: NetworkSection, conv_block_dims: Iterable[int] = ()) -> bool:
    return adapts_conv(network.LoRA_type, network.conv_dim, conv_block_dims)


# Options that only LyCORIS's modules implement: set on Standard / LoCon / LoHa, they run through LyCORIS.
LYCORIS_SWITCHES = ("dora_wd", "use_scalar", "use_tucker", "bypass_mode", "rank_dropout_scale", "train_norm")
REGULARIZERS = ("network_dropout", "rank_dropout", "module_dropout", "scale_weight_norms")


def lycoris_algo(lora_type: str, options: dict) -> str | None:
    """The LyCORIS algorithm a network runs, or None for our own modules (peft's LoRA / LoHa, our DyLoRA).

    The LyCORIS types always run through LyCORIS; Standard, LoCon and LoHa do when a LyCORIS option, a
    regularizer or a preset other than full is set (``options``: setting → value). sd-scripts' own LoKr
    (Kohya LoKr) runs LyCORIS's LoKr module on sd-scripts' layers."""
    if lora_type in LYCORIS_TYPE_ALGOS:
        return LYCORIS_TYPE_ALGOS[lora_type]
    if lora_type == KOHYA_LOKR:
        return "lokr"
    if lora_type not in LYCORIS_CAPABLE_TYPES:
        return None
    asked = any(options.get(key) for key in LYCORIS_SWITCHES + REGULARIZERS)
    if asked or options.get("LyCORIS_preset", "full") not in ("full", "", None):
        return LYCORIS_CAPABLE_TYPES[lora_type]
    return None


def rank_limits(lora_type: str) -> tuple[int, int]:
    """(network_dim, conv_dim) maxima: 100000 ("full rank") for the LoKr types, BOFT and Diag-OFT, else 1024
    and 512."""
    return (100000, 100000) if lora_type in FULL_RANK_TYPES else (1024, 512)


# ---------------------------------------------------------------- optimisation


def effective_lrs(optimisation: OptimisationSection) -> tuple[float, float]:
    """(unet_lr, text_encoder_lr): each falls back to learning_rate when blank. Both 0 also means both at
    learning_rate: kohya_ss passes a 0 rate to sd-scripts as "unset" and asks for a UNet-only (or text-encoder
    -only) run only when the other rate is not 0."""
    lr = optimisation.learning_rate
    if optimisation.unet_lr == 0 and optimisation.text_encoder_lr == 0:
        return lr, lr
    unet = lr if optimisation.unet_lr is None else optimisation.unet_lr
    text = lr if optimisation.text_encoder_lr is None else optimisation.text_encoder_lr
    return unet, text


def both_rates_zero(optimisation: OptimisationSection) -> bool:
    """unet_lr and text_encoder_lr are both 0, which kohya_ss reads as "both at the learning rate"."""
    return optimisation.unet_lr == 0 and optimisation.text_encoder_lr == 0


def unread_scheduler_settings(optimisation: OptimisationSection) -> list[tuple[str, str]]:
    """(setting, why) for each schedule setting that is set but that the chosen scheduler does not read
    (the number of cycles outside cosine_with_restarts, the power outside polynomial; warmup, which the
    constant schedules never read, keeps its default of 10 % in most jobs, so the page disables it instead)."""
    scheduler = optimisation.lr_scheduler
    unread = []
    if optimisation.lr_scheduler_type:
        for key in ("lr_warmup", "lr_warmup_steps"):
            if getattr(optimisation, key):
                unread.append((key, f"the LR scheduler type {optimisation.lr_scheduler_type} has no warmup "
                                    "(as in sd-scripts)"))
        return unread
    if optimisation.lr_scheduler_args.strip() and scheduler not in SCHEDULER_ARGS:
        unread.append(("lr_scheduler_args", "is read only with an LR scheduler type; the LR Scheduler list "
                                            "ignores it"))
    if optimisation.lr_warmup_steps and scheduler in SCHEDULERS_WITHOUT_WARMUP:
        unread.append(("lr_warmup_steps", f"{scheduler} has no warmup; choose constant_with_warmup to warm up"))
    if optimisation.lr_scheduler_num_cycles not in (None, 1) and scheduler not in SCHEDULERS_WITH_CYCLES:
        unread.append(("lr_scheduler_num_cycles",
                       f"is read only by {', '.join(SCHEDULERS_WITH_CYCLES)}; {scheduler} ignores it"))
    if optimisation.lr_scheduler_power not in (None, 1.0) and scheduler not in SCHEDULERS_WITH_POWER:
        unread.append(("lr_scheduler_power",
                       f"is read only by {', '.join(SCHEDULERS_WITH_POWER)}; {scheduler} ignores it"))
    return unread
