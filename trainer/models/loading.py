"""Load a base Stable Diffusion model for LoRA training, fully offline.

``load_base_model(path)`` returns a ``BaseModel``: frozen, eval-mode components plus what the training
loop needs to know about the model family (latent scale, prediction type). It reads diffusers folders and
single-file checkpoints in the original layout (``.safetensors``, or ``.ckpt`` through torch's safe
loader) of SD1.x, SD2.x and SDXL; the family is detected from the weights. Configs come from the file's
shapes (``ldm_configs``) and the tokenizers are built offline, so nothing is ever downloaded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from trainer.models.checkpoint_file import read_checkpoint
from trainer.models.detect import declared_v_prediction, family_from_names, inspect_model
from trainer.models.detect import folder_family as detect_family  # noqa: F401 - kept for older callers
from trainer.models.errors import ModelLoadError
from trainer.models.single_file import models_from_ldm
from trainer.models.tokenizer import build_clip_tokenizer
from trainer.models.vae_file import load_vae

SD_VAE_SCALE_FACTOR = 0.18215  # SD1.x / SD2.x latent scale (sd-scripts-semantics §4, step 1)
SDXL_VAE_SCALE_FACTOR = 0.13025
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder")
TRAINABLE_FAMILIES = ("sd1", "sd2", "sdxl")
# Single .safetensors files are read tensor by tensor into the model (False: read whole, then converted)
STREAMS_SAFETENSORS = True
FAMILY_WORDS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


@dataclass
class BaseModel:
    """The frozen parts of a Stable Diffusion model and the facts training needs about it."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    family: str  # "sd1" | "sd2" | "sdxl"
    vae_scale_factor: float
    v_prediction: bool
    source_path: Path
    text_encoder_2: Any = None  # SDXL's second text encoder (OpenCLIP bigG); None for SD1/SD2
    tokenizer_2: Any = None
    vae_path: Path | None = None  # the separate VAE, when one replaced the model's own
    notes: list[str] = field(default_factory=list)  # things the user should hear about (suggestions)

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
    v2: bool = False,
    vae: str | Path | None = None,
    families: tuple[str, ...] = TRAINABLE_FAMILIES,
) -> BaseModel:
    """Load the model at ``path`` (diffusers folder or single file) frozen, in eval mode, on ``device`` in ``dtype``.

    ``v_prediction=None`` takes the prediction type from the model itself (a folder's scheduler config, a
    file's model-spec metadata), else epsilon; True/False override it, like sd-scripts' ``--v_parameterization``.
    ``v2=True`` insists the model is SD2.x (the family is detected from the weights either way).
    ``vae`` replaces the model's VAE with a separate file or folder. ``families`` lists the families the
    caller can train. Raises ``ModelLoadError`` with an actionable message; never touches the network.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"Base model not found: {path}. Set pretrained_model_name_or_path to a local diffusers "
            "folder or checkpoint file (hub ids are not downloaded)."
        )
    model = _load_single_file(path, v_prediction) if path.is_file() else _load_diffusers_folder(path, v_prediction)
    _check_family(model, v2, families)
    if vae:
        model.vae = load_vae(vae, model.family)
        model.vae_path = Path(vae).expanduser()
    return _freeze(model, torch.device(device), dtype)


def _check_family(model: BaseModel, v2: bool, families: tuple[str, ...]) -> None:
    words = FAMILY_WORDS[model.family]
    if v2 and model.family != "sd2":
        raise ModelLoadError(f"v2 (SD2.x model) is set, but {model.source_path} is an {words} model by its "
                             "weights; clear v2 or choose an SD2.x model.", setting="v2")
    if model.family not in families:
        raise ModelLoadError(f"{model.source_path} is an {words} model; training {words} is not supported yet.")


def _tokenizers(family: str) -> tuple[CLIPTokenizer, CLIPTokenizer | None]:
    """The offline CLIP tokenizer(s): SD2.x and SDXL's second encoder pad with '!', SD1.x with <|endoftext|>."""
    if family == "sdxl":
        return build_clip_tokenizer(), build_clip_tokenizer(pad_token="!")
    return build_clip_tokenizer(pad_token="!" if family == "sd2" else "<|endoftext|>"), None


def _single_file_family(path: Path, tensors: dict) -> str:
    family = family_from_names(tensors)
    if family is None:
        info = inspect_model(path, allow_torch=False) if path.suffix.lower() == ".safetensors" else None
        reason = info.summary() if info else "no SD1.x, SD2.x or SDXL text encoder and UNet found in it"
        raise ModelLoadError(f"{path} cannot be trained on: {reason}.")
    return family


def _load_single_file(path: Path, v_prediction: bool | None) -> BaseModel:
    """An original-layout checkpoint: tensors → diffusers / transformers models, tokenizers built offline."""
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(
            f"{path} is not a model checkpoint (expected a diffusers folder or one of "
            f"{', '.join(SINGLE_FILE_SUFFIXES)})."
        )
    if STREAMS_SAFETENSORS and path.suffix.lower() == ".safetensors":
        tensors, metadata = _streamed_checkpoint(path)
    else:
        tensors, metadata = read_checkpoint(path)
    family = _single_file_family(path, tensors)
    notes = []
    if v_prediction is None:
        v_prediction = bool(declared_v_prediction(metadata))
        info = inspect_model(path) if family == "sd2" and path.suffix.lower() == ".safetensors" else None
        if info is not None and info.suggest_v_parameterization and not v_prediction:
            notes.append(f"{info.notes[-1]}; training with epsilon prediction as v_parameterization is off")
    unet, vae, encoders = models_from_ldm(tensors, metadata, family, v_prediction)
    tokenizer, tokenizer_2 = _tokenizers(family)
    return BaseModel(
        unet=unet, vae=vae, text_encoder=encoders[0], tokenizer=tokenizer,
        noise_scheduler=training_noise_scheduler(v_prediction), family=family,
        vae_scale_factor=SDXL_VAE_SCALE_FACTOR if family == "sdxl" else SD_VAE_SCALE_FACTOR,
        v_prediction=v_prediction, source_path=path,
        text_encoder_2=encoders[1] if len(encoders) > 1 else None, tokenizer_2=tokenizer_2, notes=notes,
    )


def _streamed_checkpoint(path: Path):
    """A ``.safetensors`` file as tensors read one at a time (:class:`StreamedTensors`), and its metadata."""
    from trainer.models.detect import ModelFileError
    from trainer.models.streamed_file import StreamedTensors

    try:
        tensors = StreamedTensors(path)
    except (ModelFileError, OSError, KeyError, ValueError) as error:
        raise ModelLoadError(f"{path} is corrupt and cannot be read: {error}") from error
    return tensors, tensors.metadata


def read_json(path: Path) -> dict:
    """A JSON config file as a dict, or ModelLoadError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"Cannot read {path}: {error}") from error


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


def _load_unet(folder: Path) -> UNet2DConditionModel:
    """The folder's UNet. When it is one ``.safetensors`` file whose names and shapes are the model's, its
    tensors are read one at a time into a model built from the config (plain reads into the model's own memory,
    as for single files): diffusers' loader memory-maps the file instead, and the mapping stays while any of its
    weights lives, so a weight replaced later (a new layout, a new type) kept its old pages in this process's
    resident memory as well. Other layouts (sharded, ``.bin``, older names) go through diffusers' loader."""
    from trainer.models.detect import ModelFileError
    from trainer.models.streamed_file import StreamedTensors

    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        return _load_component(UNet2DConditionModel, folder, "unet")
    try:
        config = UNet2DConditionModel.load_config(str(folder / "unet"), local_files_only=True)
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        tensors = StreamedTensors(weights)
        stored = tensors.shapes()
        wanted = unet.state_dict()
        if stored.keys() != wanted.keys() or any(stored[k].shape != v.shape for k, v in wanted.items()):
            return _load_component(UNet2DConditionModel, folder, "unet")
        unet.to_empty(device="cpu")
        with torch.no_grad():
            for name, target in unet.state_dict().items():
                target.copy_(tensors[name])
    except (OSError, ValueError, KeyError, RuntimeError, ModelFileError, ModelLoadError) as error:
        raise ModelLoadError(f"Cannot load the unet weights from {folder / 'unet'}: {error}. The files may be "
                             "incomplete or corrupt; re-copy or re-convert the model.") from error
    return unet.eval()


def _load_tokenizer(folder: Path, subfolder: str, pad_token: str) -> CLIPTokenizer:
    """The folder's tokenizer when it has one, else the offline CLIP tokenizer with ``pad_token``."""
    if (folder / subfolder).is_dir():
        try:
            return CLIPTokenizer.from_pretrained(str(folder / subfolder), local_files_only=True)
        except Exception as error:
            raise ModelLoadError(f"Cannot load the tokenizer from {folder / subfolder}: {error}") from error
    return build_clip_tokenizer(pad_token=pad_token)


def _scheduler_says_v_prediction(folder: Path) -> bool:
    config_path = folder / "scheduler" / "scheduler_config.json"
    if not config_path.is_file():
        return False
    return read_json(config_path).get("prediction_type") == "v_prediction"


def _load_diffusers_folder(folder: Path, v_prediction: bool | None) -> BaseModel:
    _check_diffusers_folder(folder)
    family = detect_family(folder)
    if v_prediction is None:
        v_prediction = _scheduler_says_v_prediction(folder)
    sdxl = family == "sdxl"
    return BaseModel(
        unet=_load_unet(folder),
        vae=_load_component(AutoencoderKL, folder, "vae"),
        text_encoder=_load_component(CLIPTextModel, folder, "text_encoder"),
        tokenizer=_load_tokenizer(folder, "tokenizer", "!" if family == "sd2" else "<|endoftext|>"),
        noise_scheduler=training_noise_scheduler(v_prediction),
        family=family,
        vae_scale_factor=SDXL_VAE_SCALE_FACTOR if sdxl else SD_VAE_SCALE_FACTOR,
        v_prediction=v_prediction,
        source_path=folder,
        text_encoder_2=_load_component(CLIPTextModelWithProjection, folder, "text_encoder_2") if sdxl else None,
        tokenizer_2=_load_tokenizer(folder, "tokenizer_2", "!") if sdxl else None,
    )


def network_dtype(family: str, part: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a frozen part is kept in: ``dtype``, except SDXL's VAE, which stays fp32 because its
    activations overflow fp16 (sd-scripts users pass ``--no_half_vae`` for the same reason)."""
    return torch.float32 if family == "sdxl" and part == "vae" else dtype


def _freeze(model: BaseModel, device: torch.device, dtype: torch.dtype) -> BaseModel:
    """Move every network to ``device``/``dtype`` (see :func:`network_dtype`), eval mode, no gradients."""
    parts = [("unet", model.unet), ("vae", model.vae)] + [("text_encoder", e) for e in model.text_encoders]
    for part, network in parts:
        network.to(device=device)
        wanted = network_dtype(model.family, part, dtype)
        if network.dtype != wanted:  # diffusers warns on every dtype cast, even a no-op one
            network.to(dtype=wanted)
        network.requires_grad_(False)
        network.eval()
    return model


def save_as_single_file(folder: str | Path, path: str | Path) -> Path:
    """Write the diffusers model in ``folder`` as one ``.safetensors`` file in the original (LDM) layout.

    The metadata records the prediction type (SAI model spec) and the attention head counts, which the
    shapes cannot tell, so ``load_base_model(path)`` rebuilds exactly the folder's model.
    """
    from trainer.models.checkpoint_file import write_safetensors
    from trainer.models.single_file import heads_metadata, ldm_state_dict

    model = _load_diffusers_folder(Path(folder), None)
    tensors = ldm_state_dict(model.unet, model.vae, model.text_encoders, model.family)
    metadata = {**heads_metadata(model.unet, model.text_encoders, model.vae),
                "modelspec.prediction_type": "v" if model.v_prediction else "epsilon"}
    return write_safetensors(tensors, path, metadata)
