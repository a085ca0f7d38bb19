"""Which modules of the UNet and the text encoders get an adapter, and their kohya names.

sd-scripts (networks/lora.py) walks the model, and for every module whose *class name* is in a
target list it adapts every descendant ``Linear`` or ``Conv2d``:

* UNet, always: ``Transformer2DModel`` → proj_in, proj_out, attn1/attn2 to_q/to_k/to_v/to_out.0,
  ff.net.0.proj, ff.net.2 ("LoRA-LierLa").
* UNet, with conv layers (LoCon): also ``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``; their 3×3
  convs use conv_dim/conv_alpha while their Linear (time_emb_proj) and 1×1 (conv_shortcut) children
  use the linear network_dim/alpha ("LoRA-C3Lier").
* Text encoder: ``CLIPAttention`` / ``CLIPSdpaAttention`` / ``CLIPMLP`` → q/k/v/out_proj, fc1, fc2.

The kohya name is ``prefix + "_" + module path`` with every "." replaced by "_". transformers 5's
``CLIPTextModel`` dropped the ``text_model.`` level that kohya and A1111 keys carry, so it is put
back here when missing. SDXL UNet modules are named by their original (SGM) path, as sd-scripts'
SDXL UNet calls them (``trainer.network.sdxl_blocks``); SD1/SD2 UNet modules by their diffusers path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.models.ldm_layout import UNetLayout
from trainer.network.sdxl_blocks import is_sdxl_unet, sgm_module_path

UNET_LINEAR_BLOCK_CLASSES = ("Transformer2DModel",)
UNET_CONV_BLOCK_CLASSES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_BLOCK_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")

UNET_PREFIX = "lora_unet"
TEXT_MODEL_LEVEL = "text_model."


@dataclass(frozen=True)
class Target:
    """One module that gets an adapter.

    ``path`` is the module's dotted path inside its model (what peft matches), ``kohya_name`` the
    key stem in the LoRA file, ``part`` "unet" or "text_encoder", ``is_conv3x3`` whether it is a
    spatial conv (which takes conv_dim/conv_alpha instead of dim/alpha).
    """

    path: str
    kohya_name: str
    part: str
    is_conv3x3: bool
    block_class: str = ""  # class name of the block it was found in (what LyCORIS presets select by)
    is_norm: bool = False  # a GroupNorm / LayerNorm (LyCORIS's train_norm)


def kohya_name(prefix: str, module_path: str) -> str:
    """sd-scripts' lora_name: ``(prefix + "." + path).replace(".", "_")``."""
    return f"{prefix}.{module_path}".replace(".", "_")


def text_encoder_prefixes(count: int) -> list[str]:
    """``lora_te`` for one text encoder (SD1/2), ``lora_te1``/``lora_te2`` for SDXL's two."""
    if count == 1:
        return ["lora_te"]
    return [f"lora_te{i + 1}" for i in range(count)]


LYCORIS_CHILD = "lycoris_adapter"  # where a LyCORIS module hangs under the layer it adapts


def _is_adapter_wrapper(module: torch.nn.Module) -> bool:
    """A layer already wrapped by an adapter (peft or our DyLoRA keep the original as ``base_layer``;
    a layer adapted by LyCORIS holds the LyCORIS module as a child)."""
    return isinstance(getattr(module, "base_layer", None), torch.nn.Module) or LYCORIS_CHILD in module._modules


def _original_layer(module: torch.nn.Module) -> torch.nn.Module:
    base = getattr(module, "base_layer", None)
    return base if isinstance(base, torch.nn.Module) else module


NORM_CLASSES = (torch.nn.GroupNorm, torch.nn.LayerNorm)


def _is_adaptable(module: torch.nn.Module, norms: bool = False) -> bool:
    kinds = (torch.nn.Linear, torch.nn.Conv2d) + (NORM_CLASSES if norms else ())
    return isinstance(_original_layer(module), kinds)


def _is_conv3x3(module: torch.nn.Module) -> bool:
    """A Conv2d with a kernel bigger than 1×1 (sd-scripts' ``is_conv2d`` and not ``is_conv2d_1x1``)."""
    module = _original_layer(module)
    return isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) != (1, 1)


def _children_of_classes(model: torch.nn.Module, class_names: tuple[str, ...], norms: bool = False):
    """Yield (full path, child, block class) for every Linear/Conv2d (and with ``norms`` GroupNorm/LayerNorm)
    inside a module whose class name is listed.

    On a model that already has adapters, the wrapped layer counts once, at its original path.
    """
    for block_path, block in model.named_modules():
        if type(block).__name__ not in class_names:
            continue
        wrapped: list[str] = []
        for child_path, child in block.named_modules():
            if not child_path or any(child_path.startswith(w + ".") for w in wrapped):
                continue
            if _is_adapter_wrapper(child):
                wrapped.append(child_path)
            if _is_adaptable(child, norms):
                yield f"{block_path}.{child_path}" if block_path else child_path, child, type(block).__name__


def unet_targets(unet: torch.nn.Module, include_conv_blocks: bool, norms: bool = False,
                 class_names: tuple[str, ...] | None = None) -> list[Target]:
    """The UNet modules sd-scripts adapts, in model order (no duplicates).

    Without ``include_conv_blocks`` only Transformer2DModel children; with it, ResnetBlock2D,
    Downsample2D and Upsample2D children too. 3×3 convs are marked ``is_conv3x3``. An SDXL UNet's
    modules get kohya names from their original-layout paths (``lora_unet_input_blocks_4_1_…``).
    """
    if class_names is None:
        class_names = UNET_LINEAR_BLOCK_CLASSES
        if include_conv_blocks:
            class_names = class_names + UNET_CONV_BLOCK_CLASSES
    layout = UNetLayout.from_config(unet.config) if is_sdxl_unet(unet) else None
    found: dict[str, Target] = {}
    for path, child, block_class in _children_of_classes(unet, class_names, norms):
        kohya_path = sgm_module_path(path, layout) if layout else path
        found.setdefault(path, Target(path, kohya_name(UNET_PREFIX, kohya_path), "unet", _is_conv3x3(child),
                                      block_class, isinstance(_original_layer(child), NORM_CLASSES)))
    return list(found.values())


def text_encoder_module_path_for_kohya(path: str, text_encoder: torch.nn.Module) -> str:
    """The module path as kohya/A1111 spell it: always under ``text_model.``.

    transformers ≤4 ``CLIPTextModel`` nests everything under ``text_model``; transformers 5 does not.
    """
    if path.startswith(TEXT_MODEL_LEVEL):
        return path
    if hasattr(text_encoder, "text_model"):
        return path  # an odd layout: keep what the model says
    return TEXT_MODEL_LEVEL + path


def text_encoder_targets(text_encoder: torch.nn.Module, prefix: str,
                         class_names: tuple[str, ...] = TEXT_ENCODER_BLOCK_CLASSES) -> list[Target]:
    """The text-encoder modules sd-scripts adapts: q/k/v/out_proj and fc1/fc2 of every layer."""
    found: dict[str, Target] = {}
    for path, child, block_class in _children_of_classes(text_encoder, class_names):
        kohya_path = text_encoder_module_path_for_kohya(path, text_encoder)
        found.setdefault(path, Target(path, kohya_name(prefix, kohya_path), "text_encoder", _is_conv3x3(child),
                                      block_class))
    return list(found.values())
