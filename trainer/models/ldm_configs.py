"""diffusers / transformers configs for a single-file checkpoint, derived from its tensor shapes.

Widths, depths, which levels have attention, the conditioning width and the projection kind are all read
off the shapes. Attention head counts cannot be (the weights are the same for any split), so they follow
each family's published configs unless the file says otherwise in ``loraloom.attention_heads`` metadata
(written by our own converter for the tiny test models; for the demo's base it also records GroupNorm group
counts other than SD's 32, as ``unet_norm_groups`` / ``vae_norm_groups``):

  SD1.x  UNet 8 heads at every level; CLIP ViT-L text encoder 64-wide heads, quick_gelu
  SD2.x  UNet 64-wide heads (channels / 64); OpenCLIP-H text encoder 64-wide heads, gelu, 23 of 24 blocks
  SDXL   UNet 64-wide heads; CLIP-L (quick_gelu) + OpenCLIP-bigG (gelu, with projection) text encoders
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping

from trainer.models.errors import ModelLoadError
from trainer.models.ldm_text import SD1_TEXT_PREFIX, SD2_TEXT_PREFIX, SDXL_TEXT_PREFIXES

HEADS_METADATA_KEY = "loraloom.attention_heads"
HEAD_WIDTH = 64
SD1_UNET_HEADS = 8
OPENCLIP_H_BLOCKS = 24  # SD2 conditions on the penultimate of these
SDXL_TIME_IDS = 6  # original size, crop top-left, target size: 2 numbers each
VAE_SCALE = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
CLIP_BOS, CLIP_EOS = 49406, 49407


def _indices(shapes: Mapping, pattern: str) -> set[int]:
    regex = re.compile(pattern)
    return {int(m.group(1)) for name in shapes for m in [regex.match(name)] if m}


def _shape(shapes: Mapping, name: str) -> tuple:
    if name not in shapes:
        raise ModelLoadError(f"the checkpoint has no {name!r}: it is not a complete Stable Diffusion model")
    value = shapes[name]  # a shape, or a tensor (anything with .shape)
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def declared_heads(metadata: dict) -> dict:
    """The head counts our converter recorded in the file's metadata (empty for other files)."""
    try:
        return json.loads(metadata.get(HEADS_METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        return {}


def unet_levels(unet: Mapping) -> tuple[int, int]:
    """(levels, layers_per_block) from the LDM input-block numbering (names without the UNet prefix)."""
    level_count = len(_indices(unet, r"input_blocks\.(\d+)\.0\.op\.weight")) + 1
    block_count = max(_indices(unet, r"input_blocks\.(\d+)\.")) + 1
    layers, remainder = divmod(block_count - 1 - (level_count - 1), level_count)
    if remainder or layers < 1:
        raise ModelLoadError(f"unusual UNet layout ({block_count} input blocks over {level_count} levels)")
    return level_count, layers


def unet_config_from_ldm(unet: Mapping, family: str, heads: list[int] | None = None,
                         v_prediction: bool = False, norm_groups: int = 32) -> dict:
    """``UNet2DConditionModel`` arguments for LDM UNet shapes (names without ``model.diffusion_model.``)."""
    level_count, layers = unet_levels(unet)
    first_blocks = [1 + level * (layers + 1) for level in range(level_count)]
    channels = [_shape(unet, f"input_blocks.{i}.0.out_layers.3.weight")[0] for i in first_blocks]
    attention = [f"input_blocks.{i}.1.proj_in.weight" in unet for i in first_blocks]
    depth = [len(_indices(unet, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")) or 1 for i in first_blocks]
    to_k = next((name for name in sorted(unet) if name.endswith("attn2.to_k.weight")), None)
    if to_k is None:
        raise ModelLoadError("the UNet has no cross-attention: not a text-to-image Stable Diffusion model")
    if heads is None:
        heads = [SD1_UNET_HEADS] * level_count if family == "sd1" else [max(1, c // HEAD_WIDTH) for c in channels]
    config = {
        "sample_size": {"sd1": 64, "sd2": 96 if v_prediction else 64, "sdxl": 128}[family],
        "in_channels": _shape(unet, "input_blocks.0.0.weight")[1],
        "out_channels": _shape(unet, "out.2.weight")[0],
        "block_out_channels": tuple(channels),
        "layers_per_block": layers,
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        "cross_attention_dim": _shape(unet, to_k)[1],
        "attention_head_dim": tuple(heads),  # diffusers' historical name for the head count
        "use_linear_projection": len(_shape(unet, next(n for n in unet if n.endswith("proj_in.weight")))) == 2,
        "transformer_layers_per_block": tuple(depth) if family == "sdxl" else 1,
        "upcast_attention": family == "sd2" and v_prediction,
        "norm_num_groups": norm_groups,
    }
    if "label_emb.0.0.weight" in unet:
        config.update(addition_embed_type="text_time",
                      projection_class_embeddings_input_dim=_shape(unet, "label_emb.0.0.weight")[1])
    return config


def vae_config_from_ldm(vae: Mapping, family: str, norm_groups: int = 32) -> dict:
    """``AutoencoderKL`` arguments for LDM VAE shapes (names without ``first_stage_model.``)."""
    level_count = len(_indices(vae, r"encoder\.down\.(\d+)\."))
    if level_count == 0:
        raise ModelLoadError("the checkpoint holds no VAE encoder (first_stage_model.encoder.down.…)")
    return {
        "in_channels": _shape(vae, "encoder.conv_in.weight")[1],
        "out_channels": _shape(vae, "decoder.conv_out.weight")[0],
        "latent_channels": _shape(vae, "post_quant_conv.weight")[0],
        "block_out_channels": tuple(_shape(vae, f"encoder.down.{i}.block.0.conv1.weight")[0] for i in range(level_count)),
        "down_block_types": ("DownEncoderBlock2D",) * level_count,
        "up_block_types": ("UpDecoderBlock2D",) * level_count,
        "layers_per_block": len(_indices(vae, r"encoder\.down\.0\.block\.(\d+)\.")),
        "norm_num_groups": norm_groups,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in vae,
        "scaling_factor": VAE_SCALE[family],
    }


def _clip_config(width: int, vocab: int, positions: int, inner: int, layers: int, act: str,
                 heads: int | None, projection: int | None = None) -> dict:
    return {
        "vocab_size": vocab, "hidden_size": width, "intermediate_size": inner, "num_hidden_layers": layers,
        "num_attention_heads": heads or max(1, width // HEAD_WIDTH), "max_position_embeddings": positions,
        "hidden_act": act, "projection_dim": projection or width,
        "bos_token_id": CLIP_BOS, "eos_token_id": CLIP_EOS, "pad_token_id": CLIP_EOS,
    }


def hf_clip_config_from_ldm(ldm: Mapping, prefix: str, heads: int | None) -> dict:
    """CLIPTextConfig arguments for an encoder in transformers' layout under ``prefix`` (quick_gelu)."""
    inner = prefix + ("text_model." if any(n.startswith(prefix + "text_model.") for n in ldm) else "")
    vocab, width = _shape(ldm, inner + "embeddings.token_embedding.weight")
    layers = len(_indices(ldm, re.escape(inner) + r"encoder\.layers\.(\d+)\."))
    return _clip_config(width, vocab, _shape(ldm, inner + "embeddings.position_embedding.weight")[0],
                        _shape(ldm, inner + "encoder.layers.0.mlp.fc1.weight")[0], layers, "quick_gelu", heads)


def openclip_kept_layers(block_count: int, family: str) -> int:
    """SD2 drops OpenCLIP-H's last block (it conditions on the penultimate); SDXL keeps every block."""
    return block_count - 1 if family == "sd2" and block_count == OPENCLIP_H_BLOCKS else block_count


def openclip_config_from_ldm(ldm: Mapping, prefix: str, family: str, heads: int | None) -> dict:
    """CLIPTextConfig arguments for an OpenCLIP text tower under ``prefix`` (gelu)."""
    vocab, width = _shape(ldm, prefix + "token_embedding.weight")
    blocks = len(_indices(ldm, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\."))
    projection = _shape(ldm, prefix + "text_projection")[1] if family == "sdxl" else None
    return _clip_config(width, vocab, _shape(ldm, prefix + "positional_embedding")[0],
                        _shape(ldm, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
                        openclip_kept_layers(blocks, family), "gelu", heads, projection)


def text_configs_from_ldm(ldm: Mapping, family: str, heads: dict) -> list[dict]:
    """One CLIPTextConfig argument dict per text encoder of the family, in order."""
    if family == "sd1":
        return [hf_clip_config_from_ldm(ldm, SD1_TEXT_PREFIX, heads.get("text_encoder"))]
    if family == "sd2":
        return [openclip_config_from_ldm(ldm, SD2_TEXT_PREFIX, family, heads.get("text_encoder"))]
    return [hf_clip_config_from_ldm(ldm, SDXL_TEXT_PREFIXES[0], heads.get("text_encoder")),
            openclip_config_from_ldm(ldm, SDXL_TEXT_PREFIXES[1], family, heads.get("text_encoder_2"))]


def sdxl_time_embed_dim(unet_config: dict, pooled_width: int) -> int:
    """SDXL's addition_time_embed_dim: (label_emb input − pooled text width) / 6 size numbers."""
    extra = unet_config["projection_class_embeddings_input_dim"] - pooled_width
    if extra <= 0 or extra % SDXL_TIME_IDS:
        raise ModelLoadError(f"SDXL UNet's label embedding does not fit a pooled text width of {pooled_width}")
    return extra // SDXL_TIME_IDS
