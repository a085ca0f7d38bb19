"""Text-encoder weights in single-file checkpoints ↔ transformers' ``CLIPTextModel`` state dicts.

Two layouts occur in original-layout checkpoints:

* **Hugging Face CLIP** (SD1.x ``cond_stage_model.transformer.``, SDXL's first encoder
  ``conditioner.embedders.0.transformer.``): the transformers names under ``text_model.``. transformers 5
  drops that ``text_model.`` prefix from its own state dict, so we add it back when writing. Very old SD1
  files lack it too (``…transformer.encoder.…``); reading accepts both.
* **OpenCLIP** (SD2.x ``cond_stage_model.model.``, SDXL's second encoder ``conditioner.embedders.1.model.``):
  ``transformer.resblocks.N`` with one fused ``attn.in_proj_weight`` holding q, k and v stacked
  (rows 0…C-1 = q, C…2C-1 = k, 2C…3C-1 = v), ``ln_1/ln_2``, ``mlp.c_fc/c_proj``, ``positional_embedding``
  (a bare tensor), ``ln_final`` and ``text_projection`` (applied as ``x @ P``, i.e. the transpose of a
  Linear weight).
"""
from __future__ import annotations

import re

import torch

SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")

# OpenCLIP names inside one residual block → transformers names inside one encoder layer.
OPENCLIP_LAYER_NAMES = (
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("attn.out_proj.", "self_attn.out_proj."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
)
OPENCLIP_TOP_NAMES = (
    ("token_embedding.weight", "embeddings.token_embedding.weight"),
    ("positional_embedding", "embeddings.position_embedding.weight"),
    ("ln_final.weight", "final_layer_norm.weight"),
    ("ln_final.bias", "final_layer_norm.bias"),
)
# Parts of the full OpenCLIP model that the text encoder of a diffusion model does not use.
OPENCLIP_UNUSED = ("logit_scale", "attn_mask")
RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")


class TextLayoutError(ValueError):
    """The text-encoder weights are not in a layout this module knows."""


def hf_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel weights → ``prefix + "text_model." + name``."""
    return {f"{prefix}text_model.{name}": tensor for name, tensor in state.items()}


def ldm_to_hf_clip(ldm: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The inverse of ``hf_clip_to_ldm``; accepts the old layout without ``text_model.``; drops ``position_ids``."""
    state = {}
    for name, tensor in ldm.items():
        if not name.startswith(prefix):
            continue
        inner = name[len(prefix):]
        inner = inner[len("text_model."):] if inner.startswith("text_model.") else inner
        if inner.endswith("position_ids"):
            continue  # a buffer some old files saved; transformers rebuilds it
        state[inner] = tensor
    return state


def hf_to_openclip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel(WithProjection) weights → OpenCLIP names under ``prefix``, q/k/v fused."""
    ldm = {}
    top_names = {hf: oc for oc, hf in OPENCLIP_TOP_NAMES}
    for name, tensor in state.items():
        if name in top_names:
            ldm[prefix + top_names[name]] = tensor
        elif name == "text_projection.weight":
            ldm[prefix + "text_projection"] = tensor.T.contiguous()
        elif not name.startswith("encoder.layers."):
            raise TextLayoutError(f"unexpected text-encoder parameter {name!r}")
    layer_count = 1 + max(int(n.split(".")[2]) for n in state if n.startswith("encoder.layers."))
    for index in range(layer_count):
        hf_layer = f"encoder.layers.{index}."
        oc_block = f"{prefix}transformer.resblocks.{index}."
        for suffix in ("weight", "bias"):
            parts = [state[f"{hf_layer}self_attn.{p}_proj.{suffix}"] for p in "qkv"]
            ldm[f"{oc_block}attn.in_proj_{suffix}"] = torch.cat(parts, dim=0)
        for oc_name, hf_name in OPENCLIP_LAYER_NAMES:
            for suffix in ("weight", "bias"):
                ldm[f"{oc_block}{oc_name}{suffix}"] = state[f"{hf_layer}{hf_name}{suffix}"]
    return ldm


def _split_fused(block: str, tensor: torch.Tensor, suffix: str) -> dict[str, torch.Tensor]:
    width = tensor.shape[0] // 3
    return {f"{block}self_attn.{p}_proj.{suffix}": tensor[i * width:(i + 1) * width].clone()
            for i, p in enumerate("qkv")}


def _openclip_block_entry(index: int, rest: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    block = f"encoder.layers.{index}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        return _split_fused(block, tensor, rest.rsplit("_", 1)[1])
    for oc_name, hf_name in OPENCLIP_LAYER_NAMES:
        if rest.startswith(oc_name):
            return {block + hf_name + rest[len(oc_name):]: tensor}
    raise TextLayoutError(f"unknown OpenCLIP block parameter {rest!r}")


def openclip_to_hf(ldm: dict, prefix: str, keep_layers: int, with_projection: bool) -> dict[str, torch.Tensor]:
    """OpenCLIP text weights under ``prefix`` → transformers names, keeping blocks ``0 … keep_layers-1``.

    SD2.x conditions on the penultimate block of OpenCLIP-H (24 blocks) followed by ``ln_final``, which is
    exactly a 23-layer transformers model; SDXL's second encoder keeps all its blocks and its projection.
    """
    state = {}
    top_names = dict(OPENCLIP_TOP_NAMES)
    for name, tensor in ldm.items():
        if not name.startswith(prefix):
            continue
        inner = name[len(prefix):]
        block = RESBLOCK.match(inner)
        if block:
            if int(block.group(1)) < keep_layers:
                state.update(_openclip_block_entry(int(block.group(1)), block.group(2), tensor))
        elif inner in top_names:
            state[top_names[inner]] = tensor
        elif inner == "text_projection":
            if with_projection:
                state["text_projection.weight"] = tensor.T.contiguous()
        elif inner not in OPENCLIP_UNUSED:
            raise TextLayoutError(f"unknown OpenCLIP parameter {name!r}")
    return state
