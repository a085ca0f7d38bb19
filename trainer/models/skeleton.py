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
        declared = declared_heads(metadata)
        config = unet_config_from_ldm(shapes, family, declared.get("unet"), norm_groups=declared.get("unet_norm_groups", 32))
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


def model_skeletons(path: str | Path):
    """(unet, vae, [text encoders], family) of a model folder or ``.safetensors`` file, all on the meta device
    (shapes and dtypes only, nothing read but configs and the file's header); None when it cannot tell.

    A single file goes through the loader's own conversion (:func:`models_from_ldm`) with meta tensors in
    place of the weights, so the parts have exactly the shapes training will hold."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = Path(path).expanduser()
    try:
        if path.is_dir():
            found = unet_skeleton(path)
            if found is None:
                return None
            unet, family = found
            from diffusers import AutoencoderKL

            vae_config = json.loads((path / "vae" / "config.json").read_text(encoding="utf-8"))
            names = ["text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
            with torch.device("meta"):
                vae = AutoencoderKL.from_config(vae_config)
                encoders = [(CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel)(
                    CLIPTextConfig.from_pretrained(str(path / name), local_files_only=True)) for name in names]
            return unet, vae, encoders, family
        if path.suffix.lower() != ".safetensors":
            return None
        from trainer.models.single_file import models_from_ldm

        header, metadata = read_safetensors_header(path)
        file_family = family_from_names(header)
        if file_family is None:
            return None
        dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64, "I64": torch.int64}
        tensors = {name: torch.empty(entry["shape"], dtype=dtypes.get(entry["dtype"], torch.float32), device="meta")
                   for name, entry in header.items()}
        unet, vae, encoders = models_from_ldm(tensors, metadata, file_family)
        return unet, vae, encoders, file_family
    except (OSError, ValueError, KeyError, ModelFileError, ModelLoadError):
        return None
