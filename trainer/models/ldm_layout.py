"""Parameter names of the original (LDM / CompVis) checkpoint layout ↔ diffusers, for the UNet and the VAE.

A single-file Stable Diffusion checkpoint stores the UNet under ``model.diffusion_model.`` with the LDM
names (``input_blocks.N.M…``, ``middle_block…``, ``output_blocks…``) and the VAE under ``first_stage_model.``
(``encoder.down.N.block.M…``). This module renames one diffusers parameter name into its LDM name, given
the few structural facts of the model (``UNetLayout`` / ``VaeLayout``); the inverse map is built by
renaming every parameter of the target diffusers model and inverting, so both directions share one table.

The numbering follows the LDM ``UNetModel`` constructor: ``input_blocks[0]`` is the input conv, then per
level ``layers_per_block`` (resnet [+ transformer]) blocks and, except on the last level, one downsampler;
``output_blocks`` hold ``layers_per_block + 1`` blocks per level, the upsampler sitting after the resnet
(and the transformer, when the level has one) of the level's last block.
"""
from __future__ import annotations

from dataclasses import dataclass

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# diffusers ResnetBlock2D names → LDM ResBlock names (UNet).
UNET_RESNET_NAMES = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)
# Top-level UNet modules outside the blocks.
UNET_TOP_LEVEL_NAMES = (
    ("conv_in.", "input_blocks.0.0."),
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("add_embedding.linear_1.", "label_emb.0.0."),  # SDXL's pooled-text + size conditioning
    ("add_embedding.linear_2.", "label_emb.0.2."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
)
# VAE: the resnet shortcut and the mid-block attention differ; everything else keeps its name.
VAE_RESNET_NAMES = (("conv_shortcut.", "nin_shortcut."),)
VAE_ATTENTION_NAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)
VAE_TOP_LEVEL_NAMES = (("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out."))


class LayoutError(ValueError):
    """A parameter name that the layout does not know (the checkpoint is not the expected architecture)."""


@dataclass(frozen=True)
class UNetLayout:
    """What fixes the UNet's LDM numbering: levels, resnets per level, which levels have transformers."""

    layers_per_block: int
    attention_levels: tuple[bool, ...]  # one per level, top (full resolution) first

    @property
    def level_count(self) -> int:
        return len(self.attention_levels)

    @classmethod
    def from_config(cls, config: dict) -> "UNetLayout":
        """From a ``UNet2DConditionModel`` config (down block types name the attention levels)."""
        layers = config["layers_per_block"]
        if not isinstance(layers, int):
            raise LayoutError(f"layers_per_block must be one number for the LDM layout, got {layers!r}")
        levels = tuple(kind.startswith("CrossAttn") for kind in config["down_block_types"])
        return cls(layers_per_block=layers, attention_levels=levels)


def _rename_start(name: str, pairs, reverse: bool = False) -> str | None:
    """``name`` with the first matching prefix of ``pairs`` swapped, or None when none matches."""
    for diffusers_part, ldm_part in pairs:
        old, new = (ldm_part, diffusers_part) if reverse else (diffusers_part, ldm_part)
        if name.startswith(old):
            return new + name[len(old):]
    return None


def _resnet_inner(rest: str) -> str:
    renamed = _rename_start(rest, UNET_RESNET_NAMES)
    if renamed is None:
        raise LayoutError(f"unknown resnet parameter {rest!r}")
    return renamed


def _split(name: str, depth: int) -> tuple[list[str], str]:
    """The first ``depth`` dot-separated parts of ``name`` and the rest."""
    parts = name.split(".", depth)
    if len(parts) <= depth:
        raise LayoutError(f"parameter name {name!r} is too short")
    return parts[:depth], parts[depth]


def _unet_down(name: str, layout: UNetLayout) -> str:
    (_, level_text, kind, index_text), rest = _split(name, 4)
    level, index, per_level = int(level_text), int(index_text), layout.layers_per_block + 1
    first = 1 + level * per_level
    if kind == "resnets":
        return f"input_blocks.{first + index}.0.{_resnet_inner(rest)}"
    if kind == "attentions":
        return f"input_blocks.{first + index}.1.{rest}"
    if kind == "downsamplers" and rest.startswith("conv."):
        return f"input_blocks.{first + layout.layers_per_block}.0.op.{rest[len('conv.'):]}"
    raise LayoutError(f"unknown down-block parameter {name!r}")


def _unet_up(name: str, layout: UNetLayout) -> str:
    (_, level_text, kind, index_text), rest = _split(name, 4)
    level, index, per_level = int(level_text), int(index_text), layout.layers_per_block + 1
    first = level * per_level
    if kind == "resnets":
        return f"output_blocks.{first + index}.0.{_resnet_inner(rest)}"
    if kind == "attentions":
        return f"output_blocks.{first + index}.1.{rest}"
    if kind == "upsamplers":
        has_attention = layout.attention_levels[layout.level_count - 1 - level]
        return f"output_blocks.{first + layout.layers_per_block}.{2 if has_attention else 1}.{rest}"
    raise LayoutError(f"unknown up-block parameter {name!r}")


def _unet_mid(name: str) -> str:
    (_, kind, index), rest = _split(name, 3)
    if kind == "resnets" and index in ("0", "1"):
        return f"middle_block.{0 if index == '0' else 2}.{_resnet_inner(rest)}"
    if kind == "attentions" and index == "0":
        return f"middle_block.1.{rest}"
    raise LayoutError(f"unknown mid-block parameter {name!r}")


def unet_name_to_ldm(name: str, layout: UNetLayout) -> str:
    """The LDM name (without ``model.diffusion_model.``) of one diffusers UNet parameter.

    Transformer internals (``proj_in``, ``transformer_blocks.K.attn1.to_q`` …) keep their names: LDM's
    SpatialTransformer and diffusers' Transformer2DModel spell them alike.
    """
    top_level = _rename_start(name, UNET_TOP_LEVEL_NAMES)
    if top_level is not None:
        return top_level
    if name.startswith("down_blocks."):
        return _unet_down(name, layout)
    if name.startswith("up_blocks."):
        return _unet_up(name, layout)
    if name.startswith("mid_block."):
        return _unet_mid(name)
    raise LayoutError(f"unknown UNet parameter {name!r}")


@dataclass(frozen=True)
class VaeLayout:
    level_count: int

    @classmethod
    def from_config(cls, config: dict) -> "VaeLayout":
        return cls(level_count=len(config["block_out_channels"]))


def _vae_mid(side: str, name: str) -> str:
    (kind, index), rest = _split(name, 2)
    if kind == "resnets" and index in ("0", "1"):
        return f"{side}.mid.block_{int(index) + 1}.{_rename_start(rest, VAE_RESNET_NAMES) or rest}"
    if kind == "attentions" and index == "0":
        renamed = _rename_start(rest, VAE_ATTENTION_NAMES)
        if renamed is None:
            raise LayoutError(f"unknown VAE attention parameter {rest!r}")
        return f"{side}.mid.attn_1.{renamed}"
    raise LayoutError(f"unknown VAE mid-block parameter {side}.mid_block.{name}")


def vae_name_to_ldm(name: str, layout: VaeLayout) -> str:
    """The LDM name (without ``first_stage_model.``) of one diffusers ``AutoencoderKL`` parameter.

    Decoder levels are numbered in opposite directions: diffusers' ``up_blocks.0`` (lowest resolution) is
    LDM's ``decoder.up.{levels-1}``.
    """
    top_level = _rename_start(name, VAE_TOP_LEVEL_NAMES)
    if top_level is not None:
        return top_level
    side, _, rest = name.partition(".")
    if side not in ("encoder", "decoder"):
        return name  # quant_conv, post_quant_conv
    if rest.startswith("mid_block."):
        return _vae_mid(side, rest[len("mid_block."):])
    if rest.startswith(("down_blocks.", "up_blocks.")):
        (blocks, level_text, kind, index), inner = _split(rest, 4)
        level = int(level_text)
        ldm_level = level if blocks == "down_blocks" else layout.level_count - 1 - level
        ldm_blocks = "down" if blocks == "down_blocks" else "up"
        if kind == "resnets":
            return f"{side}.{ldm_blocks}.{ldm_level}.block.{index}.{_rename_start(inner, VAE_RESNET_NAMES) or inner}"
        if kind in ("downsamplers", "upsamplers") and index == "0":
            return f"{side}.{ldm_blocks}.{ldm_level}.{kind.removesuffix('rs')}.{inner}"  # downsample / upsample
        raise LayoutError(f"unknown VAE parameter {name!r}")
    return name  # conv_in, conv_out


def is_vae_attention_matrix(diffusers_name: str) -> bool:
    """True for the mid-block attention projections: Linear in diffusers, 1×1 conv in LDM."""
    return ".mid_block.attentions.0." in diffusers_name and diffusers_name.endswith(
        ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))


def name_map(diffusers_names, to_ldm) -> dict[str, str]:
    """{diffusers name: LDM name} for every name; raises LayoutError when two names collide."""
    mapping = {name: to_ldm(name) for name in diffusers_names}
    if len(set(mapping.values())) != len(mapping):
        raise LayoutError("two parameters map to the same LDM name; the layout description is wrong")
    return mapping
