"""A separate VAE (the ``vae`` setting): a single file in the original or diffusers layout, a diffusers
``AutoencoderKL`` folder, a diffusers model folder (its ``vae/``), or a full checkpoint (its VAE part)."""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from diffusers import AutoencoderKL

from trainer.models.checkpoint_file import read_checkpoint
from trainer.models.errors import ModelLoadError
from trainer.models.ldm_layout import VAE_PREFIX, LayoutError, VaeLayout, is_vae_attention_matrix, vae_name_to_ldm
from trainer.models.single_file import vae_from_ldm

SD_LATENT_CHANNELS = 4


def _vae_error(path: Path, reason: str) -> ModelLoadError:
    return ModelLoadError(f"VAE {path}: {reason}", setting="vae")


def diffusers_vae_names_to_ldm(tensors: dict) -> dict:
    """A diffusers-layout VAE state dict renamed into the LDM layout (attention matrices as 1×1 convs)."""
    levels = {int(m.group(1)) for name in tensors for m in [re.match(r"encoder\.down_blocks\.(\d+)\.", name)] if m}
    to_ldm = partial(vae_name_to_ldm, layout=VaeLayout(level_count=len(levels)))
    return {to_ldm(name): tensor[:, :, None, None] if is_vae_attention_matrix(name) and tensor.ndim == 2 else tensor
            for name, tensor in tensors.items()}


def vae_tensors_in_ldm_layout(tensors: dict) -> dict:
    """The VAE part of a file's tensors, with LDM names and no ``first_stage_model.`` prefix."""
    if any(name.startswith(VAE_PREFIX) for name in tensors):
        tensors = {name[len(VAE_PREFIX):]: t for name, t in tensors.items() if name.startswith(VAE_PREFIX)}
    if any(name.startswith("encoder.down_blocks.") for name in tensors):
        return diffusers_vae_names_to_ldm(tensors)
    return tensors


def _vae_from_file(path: Path, family: str) -> AutoencoderKL:
    tensors, _ = read_checkpoint(path)
    tensors = vae_tensors_in_ldm_layout(tensors)
    if not any(name.startswith("encoder.down.") for name in tensors):
        raise _vae_error(path, "no VAE weights in it (expected encoder.down.… / decoder.up.… tensors)")
    try:
        return vae_from_ldm(tensors, family)
    except (ModelLoadError, LayoutError) as error:
        raise _vae_error(path, str(error)) from error


def _vae_from_folder(folder: Path) -> AutoencoderKL:
    source = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
    if not (source / "config.json").is_file():
        raise _vae_error(folder, "the folder has neither config.json nor vae/config.json")
    try:
        return AutoencoderKL.from_pretrained(str(source), local_files_only=True)
    except Exception as error:  # diffusers raises many types for bad folders
        raise _vae_error(folder, f"cannot load it: {error}") from error


def load_vae(path: str | Path, family: str) -> AutoencoderKL:
    """The VAE at ``path`` for a model of ``family``; ModelLoadError (setting ``vae``) when it does not fit."""
    path = Path(path).expanduser()
    if not path.exists():
        raise _vae_error(path, "not found")
    try:
        vae = _vae_from_folder(path) if path.is_dir() else _vae_from_file(path, family)
    except ModelLoadError as error:
        error.setting = "vae"
        raise
    if vae.config.latent_channels != SD_LATENT_CHANNELS:
        raise _vae_error(path, f"it makes {vae.config.latent_channels}-channel latents; Stable Diffusion "
                               f"needs {SD_LATENT_CHANNELS}")
    return vae
