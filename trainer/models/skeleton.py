"""A base model's UNet as structure only: built on torch's ``meta`` device from its config, no weights read.

The plan uses it to know which UNet blocks will hold LoRA modules (and so which per-block learning-rate
groups the run will have) before anything is loaded. The config comes from a diffusers folder's
``unet/config.json`` or, for a ``.safetensors`` single file, from the tensor shapes in its header (the
same rules the loader uses). A ``.ckpt`` cannot be read without unpickling it, so it gives None.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from trainer.models.detect import UNET_PREFIX, ModelFileError, family_from_names, folder_family, read_safetensors_header
from trainer.models.errors import ModelLoadError
from trainer.models.ldm_configs import declared_heads, unet_config_from_ldm

ANY_TIME_EMBED_DIM = 256  # SDXL's size-embedding width holds no parameters, so any value builds the same modules


def unet_config_of(path: str | Path) -> tuple[dict, str] | None:
    """(UNet2DConditionModel config, family) of a model folder or single file; None when it cannot tell."""
    path = Path(path).expanduser()
    try:
        if path.is_dir():
            config = json.loads((path / "unet" / "config.json").read_text(encoding="utf-8"))
            return config, folder_family(path)
        if path.suffix.lower() != ".safetensors":
            return None
        header, metadata = read_safetensors_header(path)
        family = family_from_names(header)
        if family is None:
            return None
        shapes = {name[len(UNET_PREFIX):]: entry["shape"] for name, entry in header.items()
                  if name.startswith(UNET_PREFIX)}
        config = unet_config_from_ldm(shapes, family, declared_heads(metadata).get("unet"))
    except (OSError, ValueError, KeyError, ModelFileError, ModelLoadError):
        return None
    if config.get("addition_embed_type") == "text_time":
        config.setdefault("addition_time_embed_dim", ANY_TIME_EMBED_DIM)
    return config, family


def unet_skeleton(path: str | Path) -> tuple[UNet2DConditionModel, str] | None:
    """(the UNet on the meta device, family) for ``path``, or None when its layout cannot be read."""
    found = unet_config_of(path)
    if found is None:
        return None
    config, family = found
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return unet, family
