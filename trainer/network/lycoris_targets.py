"""Which layers a network that runs through LyCORIS adapts: its preset, over our own target walk.

LyCORIS's presets pick modules by block class (and a few by name). Here a preset is the block classes to
walk in the UNet and in the text encoders, and whether 3×3 convolutions count; the walk itself, the kohya
names (SGM paths for SDXL) and the block of each module are those of ``trainer.network.targets``, so one
module plan serves every type. Differences from LyCORIS, on purpose: its ``full`` / ``unet-convblock-only``
also adapt conv_in, conv_out and the time embedding by name (not done here: outside every block, they have
no kohya block); ``attn-only`` names sd-scripts' own attention classes, here diffusers' ``Attention``.
A custom preset (.toml path) is read with LyCORIS's own reader; its target_module lists, enable_conv and
exclude_name are honoured, anything that would need per-name matching or per-module algorithms is refused.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from trainer.network.targets import (
    TEXT_ENCODER_BLOCK_CLASSES, UNET_CONV_BLOCK_CLASSES, UNET_LINEAR_BLOCK_CLASSES, Target,
)
from trainer.spec.setting import SettingError


@dataclass(frozen=True)
class PresetTargets:
    """Block classes to walk in the UNet and text encoders, whether 3×3 convs count, names to leave out."""

    unet_classes: tuple[str, ...]
    text_encoder_classes: tuple[str, ...]
    enable_conv: bool
    exclude: tuple[str, ...] = ()


_TE_ATTENTION = ("CLIPAttention", "CLIPSdpaAttention")
NAMED_PRESETS = {
    "full": PresetTargets(UNET_LINEAR_BLOCK_CLASSES + UNET_CONV_BLOCK_CLASSES, TEXT_ENCODER_BLOCK_CLASSES, True),
    "full-lin": PresetTargets(("Transformer2DModel", "ResnetBlock2D"), TEXT_ENCODER_BLOCK_CLASSES, False),
    "attn-mlp": PresetTargets(UNET_LINEAR_BLOCK_CLASSES, TEXT_ENCODER_BLOCK_CLASSES, False),
    "attn-only": PresetTargets(("Attention",), _TE_ATTENTION, False),
    "unet-transformer-only": PresetTargets(UNET_LINEAR_BLOCK_CLASSES, (), False),
    "unet-convblock-only": PresetTargets(UNET_CONV_BLOCK_CLASSES, (), True),
}
_REFUSED_KEYS = ("target_name", "unet_target_name", "text_encoder_target_name", "module_algo_map",
                 "name_algo_map", "lora_prefix")


def read_custom_preset(path: str) -> PresetTargets:
    """A LyCORIS preset .toml as PresetTargets; SettingError (LyCORIS_preset) for what cannot be honoured."""
    if not Path(path).is_file():
        raise SettingError(f"LyCORIS_preset {path!r} is neither a preset name nor a file", "LyCORIS_preset")
    import toml
    from lycoris.config_sdk import PresetConfig, PresetValidationError

    try:
        data = PresetConfig.from_dict(toml.load(path)).to_dict()
    except (PresetValidationError, toml.TomlDecodeError, ValueError, KeyError) as error:
        raise SettingError(f"LyCORIS_preset {path}: {error}", "LyCORIS_preset") from None
    refused = [key for key in _REFUSED_KEYS if data.get(key)]
    if refused:
        raise SettingError(f"LyCORIS_preset {path}: {', '.join(refused)} is not supported (only target_module, "
                           "unet_target_module, text_encoder_target_module, enable_conv and exclude_name)",
                           "LyCORIS_preset")
    shared = tuple(data.get("target_module") or ())
    return PresetTargets(tuple(data.get("unet_target_module") or shared),
                         tuple(data.get("text_encoder_target_module") or shared),
                         bool(data.get("enable_conv", True)), tuple(data.get("exclude_name") or ()))


def preset_targets(preset: str) -> PresetTargets:
    """The named preset, or a custom one read from a .toml path."""
    return NAMED_PRESETS[preset] if preset in NAMED_PRESETS else read_custom_preset(preset)


def keep_target(target: Target, preset: PresetTargets) -> bool:
    """Whether the preset keeps a target found by the walk (3×3 convs only with enable_conv; exclude_name)."""
    if target.is_conv3x3 and not preset.enable_conv:
        return False
    return not any(fnmatch.fnmatch(target.path, pattern) for pattern in preset.exclude)


def unet_classes_for_type(preset: PresetTargets, lora_type: str, adapts_conv: bool) -> tuple[str, ...]:
    """The UNet block classes to walk: the preset's, without the ResNet-side ones where the type has no conv
    adapters (Standard always, LoCon / LoHa with conv_dim 0, as without LyCORIS)."""
    if lora_type in ("Standard", "LoCon", "LoHa") and not adapts_conv:
        return tuple(name for name in preset.unet_classes if name not in UNET_CONV_BLOCK_CLASSES)
    return preset.unet_classes
