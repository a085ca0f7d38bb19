"""How much memory a run will need, worked out before it starts, and whether the machine has it.

Everything is counted from the real model: its parts are built on torch's meta device (``model_skeletons``),
the LoRA is applied to them exactly as the trainer does, and one forward on meta tensors shows what autograd
keeps for the backward (``memory_trace``). The rest is arithmetic: weights by dtype, LoRA parameters, their
gradients and the optimizer's state, caches, and the transient tensors of the VAE and the sampler.

A run goes through phases that do not overlap in time; the peak is the largest of them:

- loading: the weights as the file holds them (and the file itself, for loaders that read it whole);
- caching latents: weights + the VAE encoder's working tensors;
- training: weights + LoRA + gradients + optimizer state + activations + caches + the backward's transients;
- sampling: weights + LoRA + optimizer state + the UNet's and the VAE decoder's working tensors.

On a CPU the figure is the process's peak resident memory (``VmHWM``): the phases plus the baseline of
Python, torch and the libraries, measured in the process that makes the plan. On CUDA it is the GPU's peak
allocation (``torch.cuda.max_memory_allocated``), which has no such baseline.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

MiB = 2**20
TIGHT_FRACTION = 0.85  # above this share of the free memory a run "fits" only tightly
# What the trainer adds to the imported libraries before and around the first step on any model (tokenizer
# tables, the data loader, thread pools and allocator arenas); measured on the demo (tests/test_memory.py).
RUNTIME_EXTRA_BYTES = 80 * MiB
# Bytes of optimizer state per LoRA parameter element, by optimizer, as multiples of the parameter's own
# size ("x") or as fixed bytes ("b"): AdamW keeps two moments; the 8-bit ones two (or one) 1-byte states
# plus block scales; Adafactor keeps factored row and column moments (counted per matrix below); Prodigy
# keeps the moments, its s and the initial weights; D-Adaptation's variants their moments and s.
OPTIMIZER_STATE = {
    "AdamW": ("x", 2.0), "AdamW8bit": ("b", 2.1), "PagedAdamW8bit": ("b", 2.1), "Lion8bit": ("b", 1.05),
    "SGDNesterov8bit": ("b", 1.05), "Lion": ("x", 1.0), "SGDNesterov": ("x", 1.0), "Prodigy": ("x", 4.0),
    "DAdaptation": ("x", 3.0), "DAdaptAdam": ("x", 3.0), "DAdaptAdan": ("x", 4.0), "DAdaptLion": ("x", 2.0),
    "DAdaptAdaGrad": ("x", 3.0), "DAdaptSGD": ("x", 2.0), "Adafactor": ("factored", 0.0),
    "PagedAdamW32bit": ("x", 2.0), "PagedLion8bit": ("b", 1.05), "DAdaptAdanIP": ("x", 4.0),
    "DAdaptAdamPreprint": ("x", 3.0),
    # AdEMAMix: two first moments (fast and slow) and the second moment, 8-bit with block scales
    "bitsandbytes.optim.AdEMAMix8bit": ("b", 3.15), "bitsandbytes.optim.PagedAdEMAMix8bit": ("b", 3.15),
}
# A module.Class optimizer the table does not know is counted as AdamW (two moments).


@dataclass(frozen=True)
class RunShape:
    """The settings that decide a run's memory (a job reduced to what matters here)."""

    batch_size: int
    resolution: tuple[int, int]  # (width, height) of the largest bucket
    gradient_checkpointing: bool
    train_text_encoder: bool
    optimizer: str
    mixed_precision: str
    full_fp16: bool
    cache_latents: bool
    image_count: int
    caption_count: int
    tokens: int  # text tokens per caption the UNet attends to (77 per 75-token chunk)
    sample_resolution: tuple[int, int] | None  # None: no samples


@dataclass(frozen=True)
class ModelFacts:
    """What the meta-device model says: parameter bytes per part and the traced activations."""

    params: dict[str, int]  # part → parameter count
    file_dtype_bytes: dict[str, int]  # part → bytes as stored in the file / folder
    lora: dict[str, int]  # "unet" / "text_encoder" → LoRA parameter count
    lora_adafactor: dict[str, int]  # part → Adafactor's factored state elements
    autocast_castable: int  # UNet parameters in Linear / Conv layers (copied to 16-bit by autocast)
    file_bytes: int  # a single file's size; 0 for folders
    streams_file: bool  # the loader reads the file tensor by tensor (else whole, then converts)


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def optimizer_state_bytes(name: str, lora_params: int, adafactor_elements: int, param_bytes: int) -> int:
    kind, amount = OPTIMIZER_STATE.get(name, ("x", 2.0))
    if kind == "factored":
        return adafactor_elements * 4
    if kind == "b":
        return int(lora_params * amount)
    return int(lora_params * param_bytes * amount)


def _phase(parts: dict[str, int]) -> int:
    return sum(parts.values())


def estimate(shape: RunShape, facts: ModelFacts, traces, device_type: str, baseline: int) -> dict:
    """Peak memory of a run and its parts (bytes). ``traces(shape) -> dict`` gives the activation figures
    for the shape (``unet_saved``, ``unet_largest``, ``unet_part``, ``text_saved``, ``vae_encode``,
    ``sample_unet``, ``vae_decode``), traced once per resolution and checkpointing choice."""
    from trainer.precision import choose_precision

    precision = choose_precision(shape.mixed_precision, shape.full_fp16, device_type)
    weight_size, adapter_size = dtype_bytes(precision.weight_dtype), dtype_bytes(precision.adapter_dtype)
    weights = {part: count * (4 if part == "vae" and facts.params.get("text_encoder_2") else weight_size)
               for part, count in facts.params.items()}
    lora_count = facts.lora.get("unet", 0) + (facts.lora.get("text_encoder", 0) if shape.train_text_encoder else 0)
    adafactor = facts.lora_adafactor.get("unet", 0) + (
        facts.lora_adafactor.get("text_encoder", 0) if shape.train_text_encoder else 0)
    act = traces(shape)
    # activations were traced in fp32; a run keeps them in its compute type (the weights', or autocast's)
    scale = dtype_bytes(precision.autocast_dtype or precision.weight_dtype) / 4
    weights_total = sum(weights.values())
    lora = lora_count * adapter_size
    optimizer = optimizer_state_bytes(shape.optimizer, lora_count, adafactor, adapter_size)
    width, height = shape.resolution
    caches = {}
    if shape.cache_latents:
        caches["latent cache"] = shape.image_count * 4 * (height // 8) * (width // 8) * 4
    if not shape.train_text_encoder:
        caches["text-encoder output cache"] = act["text_cache_per_caption"] * shape.caption_count
    training = {
        "weights": weights_total,
        "LoRA": lora,
        "gradients": lora_count * adapter_size,
        "optimizer state": optimizer,
        "activations": int((act["unet_saved"] + act["text_saved"]) * scale),
        "backward transients": int((2 * act["unet_largest"] + act["unet_part"]) * scale),
        **caches,
    }
    if precision.autocast_dtype is not None and precision.weight_dtype != precision.autocast_dtype:
        # autocast casts each frozen Linear/Conv weight to 16 bits; the copies are saved for the backward
        held = 0.1 if shape.gradient_checkpointing else 1.0
        training["16-bit weight copies"] = int(facts.autocast_castable * dtype_bytes(precision.autocast_dtype) * held)
    loading = {"weights": sum(facts.file_dtype_bytes.values())}
    if facts.file_bytes and not facts.streams_file:
        loading["checkpoint file read whole"] = facts.file_bytes
    phases = {"loading": loading, "training": training}
    phases["caching latents" if shape.cache_latents else "encoding latents"] = {
        "weights": weights_total, "VAE encoder": act["vae_encode"], **caches}
    if shape.sample_resolution is not None:
        phases["sampling"] = {"weights": weights_total, "LoRA": lora, "optimizer state": optimizer,
                              "sampler": act["sample_unet"] + act["vae_decode"], **caches}
    peak_phase = max(phases, key=lambda name: _phase(phases[name]))
    parts = dict(phases[peak_phase])
    if device_type == "cpu":
        parts = {"Python, torch and libraries": baseline, **parts}
    return {"device": device_type, "peak_bytes": sum(parts.values()), "phase": peak_phase,
            "parts": [{"name": name, "bytes": int(value)} for name, value in parts.items() if value],
            "phases": {name: _phase(values) + (baseline if device_type == "cpu" else 0)
                       for name, values in phases.items()}}


def verdict(peak: int, free: int | None) -> str:
    if not free:
        return "unknown"
    if peak > free:
        return "will not fit"
    return "tight" if peak > TIGHT_FRACTION * free else "fits"


# (setting, value, words) tried in order when the estimate is above the free memory
REMEDIES: tuple[tuple[str, Any, str], ...] = (
    ("gradient_checkpointing", True, "turn on gradient checkpointing"),
    ("train_text_encoder", False, "cache text encoder outputs (text encoder learning rate 0)"),
    ("optimizer", "AdamW8bit", "use the AdamW8bit optimizer"),
    ("batch_size", 1, "use batch size 1"),
    ("mixed_precision", "bf16", "use bf16 mixed precision"),
)
SETTING_OF_REMEDY = {"train_text_encoder": "text_encoder_lr", "batch_size": "train_batch_size"}


NEGLIGIBLE_SAVING = 0.01  # a remedy that saves less than this share of the peak is not worth a setting


def suggestions(shape: RunShape, facts: ModelFacts, traces, device_type: str, baseline: int,
                free: int | None) -> list[dict]:
    """The remedies that lower the estimate, each with its figure, and then all of them together; only those
    that help (by at least ``NEGLIGIBLE_SAVING`` of the peak) are named, and ``fits`` says whether that one
    alone brings the run under the free memory."""
    base = estimate(shape, facts, traces, device_type, baseline)["peak_bytes"]
    found, combined = [], shape
    for field, value, words in REMEDIES:
        if getattr(shape, field) == value:
            continue
        changed = dataclasses.replace(shape, **{field: value})
        peak = estimate(changed, facts, traces, device_type, baseline)["peak_bytes"]
        if peak < base * (1 - NEGLIGIBLE_SAVING):
            found.append({"setting": SETTING_OF_REMEDY.get(field, field), "value": value, "words": words,
                          "peak_bytes": peak, "fits": bool(free) and peak <= free})
            combined = dataclasses.replace(combined, **{field: value})
    if len(found) > 1:
        peak = estimate(combined, facts, traces, device_type, baseline)["peak_bytes"]
        found.append({"setting": "", "value": None, "words": "all of these together", "peak_bytes": peak,
                      "fits": bool(free) and peak <= free})
    return found


def gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{math.ceil(value / MiB)} MiB"
