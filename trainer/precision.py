"""Number formats of a run: the frozen base weights, the LoRA weights, the autocast compute type and the
gradient scaler, decided from ``mixed_precision``, ``full_fp16`` and the device.

As sd-scripts: mixed precision computes in 16-bit under autocast while the LoRA weights (the optimizer's
parameters) stay fp32; ``full_fp16`` keeps the LoRA weights themselves in fp16 as well, so there is no
fp32 master copy and the gradients and optimizer state are fp16 (least memory, some risk to accuracy).
fp16 needs a GPU: on a CPU both fall back to fp32 with a warning naming the setting.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrecisionChoice:
    """What :func:`choose_precision` decided, and the warnings (setting, message) that explain a fallback."""

    weight_dtype: torch.dtype  # the frozen base model
    adapter_dtype: torch.dtype  # the LoRA parameters, their gradients and optimizer state
    autocast_dtype: torch.dtype | None  # None: plain fp32, no autocast
    use_grad_scaler: bool  # fp16 gradients need loss scaling
    warnings: tuple[tuple[str, str], ...] = ()


CPU_BF16_SLOW = ("this CPU has no bf16 instructions (AVX-512 BF16 or AMX), so bf16 runs emulated: on such a "
                 "CPU an SD1.5-shaped step took 6–13× as long as in fp32 (bench/bench_step_parts.py). Choose "
                 "mixed precision \"no\" here unless memory is what you are short of")


def choose_precision(mixed_precision: str, full_fp16: bool, device_type: str,
                     bf16_supported: bool = True, full_bf16: bool = False, bf16_fast: bool = True) -> PrecisionChoice:
    """Pure: (mixed_precision "no" | "fp16" | "bf16", full_fp16, device type "cpu" | "cuda", whether the GPU
    has bf16, full_bf16, whether the CPU computes bf16 natively) → the dtypes of a run. Raises ValueError for
    full_fp16 without fp16 or full_bf16 without bf16 (validation refuses both). full_bf16 (sd-scripts'
    --full_bf16) keeps the LoRA weights, their gradients and the optimizer state in bf16; bf16 needs no loss
    scaling, and it runs on any CPU (slowly without bf16 instructions: a warning says so)."""
    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {mixed_precision!r}")
    if full_fp16 and mixed_precision != "fp16":
        raise ValueError(f"full_fp16 needs mixed precision fp16, got {mixed_precision!r}")
    if full_bf16 and mixed_precision != "bf16":
        raise ValueError(f"full_bf16 needs mixed precision bf16, got {mixed_precision!r}")
    on_cpu = device_type == "cpu"
    mode, warnings = mixed_precision, []
    if on_cpu and mode == "fp16":
        warnings.append(("mixed_precision", "fp16 mixed precision needs a GPU; training in fp32 on this CPU "
                                            "instead (choose bf16 to use 16-bit math on CPU)"))
        if full_fp16:
            warnings.append(("full_fp16", "full fp16 training needs a GPU; on this CPU the LoRA weights, their "
                                          "gradients and the optimizer state stay fp32"))
        mode = "no"
    if mode == "bf16" and on_cpu and not bf16_fast:
        warnings.append(("mixed_precision", CPU_BF16_SLOW))
    if mode == "bf16" and not on_cpu and not bf16_supported:
        warnings.append(("mixed_precision", "this GPU has no bf16; using fp16 instead"))
        if full_bf16:
            warnings.append(("full_bf16", "this GPU has no bf16: the LoRA weights stay fp32"))
            full_bf16 = False
        mode = "fp16"
    if mode == "no":
        return PrecisionChoice(torch.float32, torch.float32, None, False, tuple(warnings))
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    # The frozen weights are stored in the 16-bit type too, on CPU as on GPU: at LoRA sizes a CPU step is bound
    # by reading the frozen weights (forward and backward), so bf16 halves that traffic and the memory, and
    # autocast no longer makes a 16-bit copy of every weight each step (bench/bench_step_parts.py).
    weight_dtype = dtype
    adapter_dtype = torch.float16 if full_fp16 else torch.bfloat16 if full_bf16 else torch.float32
    return PrecisionChoice(weight_dtype, adapter_dtype, dtype, dtype == torch.float16, tuple(warnings))


def choose_for_machine(mixed_precision: str, full_fp16: bool, full_bf16: bool, device_type: str) -> PrecisionChoice:
    """:func:`choose_precision` with this machine's facts: whether the GPU has bf16, whether the CPU computes
    it natively (oneDNN's own test for its bf16 kernels)."""
    bf16_supported = device_type != "cuda" or torch.cuda.is_bf16_supported()
    bf16_fast = device_type != "cpu" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return choose_precision(mixed_precision, full_fp16, device_type, bf16_supported, full_bf16, bf16_fast)


def unet_memory_format(device_type: str, weight_dtype: torch.dtype) -> torch.memory_format:
    """Pure: how the UNet's convolution weights (and so its activations) are laid out in memory.

    channels-last (NHWC) for fp32 on a CPU: there torch runs the small, batch-1 convolutions of a LoRA step
    through im2col and a matrix product that is slow for few pixels; laid out channels-last they take oneDNN's
    path, and one SD1.5-shaped step at 64 px took 0.57× the time (UNet forward and backward; 0.79× at 128 px,
    ``bench/bench_step_parts.py``). Not for bf16 on a CPU (the backward became twice as slow there) and not
    on a GPU, where it has not been measured yet: those keep the default layout."""
    if device_type == "cpu" and weight_dtype == torch.float32:
        return torch.channels_last
    return torch.contiguous_format


def mixed_precision_name(autocast_dtype: torch.dtype | None) -> str:
    """The ``mixed_precision`` value that describes what ran ("no", "fp16", "bf16"): after a fallback (fp16 on
    a CPU) it differs from the one asked for, and the LoRA file's metadata records this one."""
    return {None: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}[autocast_dtype]


def grad_scaler(device_type: str, adapter_dtype: torch.dtype) -> torch.amp.GradScaler:
    """A loss scaler for fp16 gradients. With fp16 parameters (full_fp16) the gradients are fp16 too, which
    ``GradScaler.unscale_`` refuses; sd-scripts patches accelerate's scaler to allow them
    (``patch_accelerator_for_fp16_training``), and so does this (through the private ``_unscale_grads_``)."""
    scaler = torch.amp.GradScaler(device_type)
    if adapter_dtype == torch.float16:
        unscale = scaler._unscale_grads_

        def unscale_allowing_fp16(optimizer, inv_scale, found_inf, allow_fp16):
            return unscale(optimizer, inv_scale, found_inf, True)

        scaler._unscale_grads_ = unscale_allowing_fp16
    return scaler
