"""Load a base Stable Diffusion model for LoRA training, fully offline.

``load_base_model(path)`` returns a ``BaseModel``: frozen, eval-mode components plus what the training
loop needs to know about the model family (latent scale, prediction type). Today it reads diffusers
folders of SD1.x and SD2.x; the dispatch in ``load_base_model`` is where single-file checkpoints and
SDXL slot in (each a ``_load_*`` function returning a ``BaseModel``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from trainer.models.tokenizer import build_clip_tokenizer

SD_VAE_SCALE_FACTOR = 0.18215  # SD1.x / SD2.x latent scale (sd-scripts-semantics §4, step 1)
SDXL_VAE_SCALE_FACTOR = 0.13025
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder")


class ModelLoadError(RuntimeError):
    """The base model could not be loaded; the message says which file and what to do."""


@dataclass
class BaseModel:
    """The frozen parts of a Stable Diffusion model and the facts training needs about it."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    family: str  # "sd1" | "sd2" (| "sdxl" later)
    vae_scale_factor: float
    v_prediction: bool
    source_path: Path
    text_encoder_2: Any = None  # SDXL's second text encoder (OpenCLIP bigG); None for SD1/SD2
    tokenizer_2: Any = None

    @property
    def text_encoders(self) -> list:
        """The text encoders in order (one for SD1/SD2, two for SDXL)."""
        return [encoder for encoder in (self.text_encoder, self.text_encoder_2) if encoder is not None]


def training_noise_scheduler(v_prediction: bool = False) -> DDPMScheduler:
    """sd-scripts' training scheduler (semantics §4, step 3): DDPM, scaled-linear betas 0.00085 → 0.012, 1000 steps."""
    return DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )


def load_base_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    v_prediction: bool | None = None,
) -> BaseModel:
    """Load the model at ``path`` (a diffusers folder) frozen, in eval mode, on ``device`` in ``dtype``.

    ``v_prediction=None`` takes the prediction type from the folder's scheduler config (SD2-768-v models
    say ``v_prediction`` there); pass True/False to override, like sd-scripts' ``--v_parameterization``.
    Raises ``ModelLoadError`` with an actionable message; never touches the network.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"Base model not found: {path}. Set pretrained_model_name_or_path to a local diffusers "
            "folder or checkpoint file (hub ids are not downloaded)."
        )
    if path.is_file():
        return _load_single_file(path)
    model = _load_diffusers_folder(path, v_prediction)
    return _freeze(model, torch.device(device), dtype)


def _load_single_file(path: Path) -> BaseModel:
    """Single-file LDM checkpoints: recognised, not yet supported (issue 6)."""
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(
            f"{path} is not a model checkpoint (expected a diffusers folder or one of "
            f"{', '.join(SINGLE_FILE_SUFFIXES)})."
        )
    raise ModelLoadError(
        f"{path}: single-file checkpoints are not supported yet. Convert it to a diffusers folder "
        "(diffusers' StableDiffusionPipeline.from_single_file(...).save_pretrained(folder)) and point "
        "pretrained_model_name_or_path at that folder."
    )


def read_json(path: Path) -> dict:
    """A JSON config file as a dict, or ModelLoadError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"Cannot read {path}: {error}") from error


def detect_family(folder: Path) -> str:
    """'sd1', 'sd2' or 'sdxl' from the folder's configs (model_index class, UNet conditioning width)."""
    index_path = folder / "model_index.json"
    pipeline_class = read_json(index_path).get("_class_name", "") if index_path.is_file() else ""
    unet_config = read_json(folder / "unet" / "config.json")
    if "XL" in pipeline_class or unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if unet_config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def _check_diffusers_folder(folder: Path) -> None:
    missing = [name for name in REQUIRED_SUBFOLDERS if not (folder / name / "config.json").is_file()]
    if missing:
        raise ModelLoadError(
            f"{folder} is not a diffusers Stable Diffusion folder: missing "
            f"{', '.join(name + '/config.json' for name in missing)}. Expected subfolders "
            f"{', '.join(REQUIRED_SUBFOLDERS)} (and tokenizer, scheduler) as written by save_pretrained."
        )


def _load_component(model_class, folder: Path, subfolder: str):
    """``model_class.from_pretrained`` on one subfolder, offline, with errors that name the folder."""
    try:
        return model_class.from_pretrained(str(folder / subfolder), local_files_only=True)
    except Exception as error:  # diffusers/transformers/safetensors raise many types for bad files
        raise ModelLoadError(
            f"Cannot load the {subfolder} weights from {folder / subfolder}: {error}. "
            "The files may be incomplete or corrupt; re-copy or re-convert the model."
        ) from error


def _load_tokenizer(folder: Path, family: str) -> CLIPTokenizer:
    """The folder's tokenizer when it has one, else the offline CLIP tokenizer (SD2 pads with '!')."""
    if (folder / "tokenizer").is_dir():
        try:
            return CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        except Exception as error:
            raise ModelLoadError(f"Cannot load the tokenizer from {folder / 'tokenizer'}: {error}") from error
    return build_clip_tokenizer(pad_token="!" if family == "sd2" else "<|endoftext|>")


def _scheduler_says_v_prediction(folder: Path) -> bool:
    config_path = folder / "scheduler" / "scheduler_config.json"
    if not config_path.is_file():
        return False
    return read_json(config_path).get("prediction_type") == "v_prediction"


def _load_diffusers_folder(folder: Path, v_prediction: bool | None) -> BaseModel:
    _check_diffusers_folder(folder)
    family = detect_family(folder)
    if family == "sdxl":
        raise ModelLoadError(f"{folder} is an SDXL model; SDXL training is not supported yet.")
    if v_prediction is None:
        v_prediction = _scheduler_says_v_prediction(folder)
    return BaseModel(
        unet=_load_component(UNet2DConditionModel, folder, "unet"),
        vae=_load_component(AutoencoderKL, folder, "vae"),
        text_encoder=_load_component(CLIPTextModel, folder, "text_encoder"),
        tokenizer=_load_tokenizer(folder, family),
        noise_scheduler=training_noise_scheduler(v_prediction),
        family=family,
        vae_scale_factor=SD_VAE_SCALE_FACTOR,
        v_prediction=v_prediction,
        source_path=folder,
    )


def _freeze(model: BaseModel, device: torch.device, dtype: torch.dtype) -> BaseModel:
    """Move every network to ``device``/``dtype``, switch to eval mode and stop gradients."""
    for network in (model.unet, model.vae, *model.text_encoders):
        network.to(device=device)
        if network.dtype != dtype:  # diffusers warns on every dtype cast, even a no-op one
            network.to(dtype=dtype)
        network.requires_grad_(False)
        network.eval()
    return model
