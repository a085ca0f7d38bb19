"""Checks across settings, done before anything starts (in the page, by ``validate`` and by ``train``).

Field-level checks (types, ranges, list formats) live in the Job model; these are the rules that involve
several settings or the file system. They are pure except for looking at paths, and never import torch, so
the GUI can run them on every change.
"""
from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path
from typing import Any

from .setting import Problem



def effective_lrs(job) -> tuple[float, float]:
    """(unet_lr, text_encoder_lr): each falls back to learning_rate when blank."""
    unet = job.learning_rate if job.unet_lr is None else job.unet_lr
    text = job.learning_rate if job.text_encoder_lr is None else job.text_encoder_lr
    return unet, text


def parse_additional_parameters(text: str, settings_by_key: dict) -> tuple[dict[str, Any], list[Problem]]:
    """``--name value`` pairs of known settings → overrides. Never passed to a shell; shlex only splits.

    A bool setting may be given as a bare flag (``--flip_aug``) or with true/false.
    """
    overrides: dict[str, Any] = {}
    problems: list[Problem] = []
    try:
        tokens = shlex.split(text or "")
    except ValueError as error:
        return {}, [Problem("additional_parameters", f"cannot split into words: {error}")]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("--"):
            problems.append(Problem("additional_parameters", f"expected --name, got {token!r}"))
            continue
        key = token[2:].replace("-", "_")
        setting = settings_by_key.get(key)
        if setting is None or key == "additional_parameters":
            problems.append(Problem("additional_parameters",
                                    f"--{key} is not a setting LoRA Loom knows; use the key names of this page"))
            if index < len(tokens) and not tokens[index].startswith("--"):
                index += 1
            continue
        has_value = index < len(tokens) and not tokens[index].startswith("--")
        raw = tokens[index] if has_value else None
        index += 1 if has_value else 0
        try:
            overrides[key] = _convert(setting, raw)
        except ValueError as error:
            problems.append(Problem("additional_parameters", f"--{key}: {error}"))
    return overrides, problems


def _convert(setting, raw: str | None):
    if setting.kind == "bool":
        if raw is None or raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if raw is None:
        raise ValueError("needs a value")
    if setting.kind == "int" or (setting.kind == "choice" and isinstance(setting.default, int)):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
    if setting.kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    return raw


def check_optimizer_args_syntax(text: str) -> list[Problem]:
    """The optimizer arguments must parse (names are checked against the optimizer by ``validate``)."""
    if not (text or "").strip():
        return []
    from trainer.optim.optimizers import OptimizerSettingError, parse_optimizer_args

    try:
        parse_optimizer_args(text)
    except (OptimizerSettingError, ValueError) as error:
        return [Problem("optimizer_args", str(error))]
    return []


def check_settings(job, settings) -> list[Problem]:
    """Rules across settings. Warnings do not stop a run; errors do."""
    problems: list[Problem] = []
    for setting in settings:
        value = getattr(job, setting.key)
        if not setting.implemented and value != setting.default:
            problems.append(Problem(setting.key, f"is not implemented yet in LoRA Loom; leave it at its "
                                                 f"default ({setting.default!r}) — it would be ignored"))
    unet_lr, text_lr = effective_lrs(job)
    if unet_lr == 0 and text_lr == 0:
        problems.append(Problem("learning_rate", "the UNet and text-encoder learning rates are both 0: "
                                                 "nothing would be trained"))
    caching = job.cache_latents or job.cache_latents_to_disk
    if caching and job.color_aug:
        problems.append(Problem("color_aug", "cannot be used with cached latents (the images are encoded once); "
                                             "turn off Cache latents or Color augmentation"))
    if caching and job.random_crop:
        problems.append(Problem("random_crop", "cannot be used with cached latents (the crop is fixed when "
                                               "latents are cached); turn off Cache latents or Random crop"))
    if job.network_alpha > job.network_dim and not job.dim_from_weights:
        problems.append(Problem("network_alpha", f"alpha {job.network_alpha:g} is above the rank "
                                                 f"{job.network_dim}: the LoRA is amplified, which is rarely "
                                                 f"intended", "warning"))
    if job.min_bucket_reso > job.max_bucket_reso:
        problems.append(Problem("min_bucket_reso", "is larger than the maximum bucket resolution"))
    if job.LoRA_type == "DyLoRA" and job.network_dim % job.unit:
        problems.append(Problem("unit", f"the rank ({job.network_dim}) must be a multiple of the DyLoRA unit"))
    if job.dim_from_weights and not job.network_weights:
        problems.append(Problem("dim_from_weights", "needs a file in 'LoRA network weights'"))
    if job.full_fp16 and job.mixed_precision != "fp16":
        problems.append(Problem("full_fp16", "needs mixed precision fp16"))
    if job.save_last_n_steps and not job.save_every_n_steps:
        problems.append(Problem("save_last_n_steps", "has no effect while 'Save every N steps' is 0", "warning"))
    if job.adaptive_noise_scale and not job.noise_offset:
        problems.append(Problem("adaptive_noise_scale", "has no effect without a noise offset", "warning"))
    if job.noise_offset_type == "Multires" and (job.noise_offset or job.adaptive_noise_scale):
        problems.append(Problem("noise_offset", "is ignored while the noise offset type is Multires", "warning"))
    if job.noise_offset_type == "Original" and job.multires_noise_iterations:
        problems.append(Problem("multires_noise_iterations", "is ignored while the noise offset type is "
                                                             "Original", "warning"))
    if job.stop_text_encoder_training and text_lr == 0:
        problems.append(Problem("stop_text_encoder_training", "the text encoder is not trained at all "
                                                              "(its learning rate is 0)", "warning"))
    if (job.sample_every_n_steps or job.sample_every_n_epochs) and not job.sample_prompts.strip():
        problems.append(Problem("sample_prompts", "sampling is on but there are no prompts", "warning"))
    if job.log_with == "wandb" and importlib.util.find_spec("wandb") is None:
        problems.append(Problem("log_with", "wandb is not installed here; choose tensorboard or "
                                            "`pip install wandb`"))
    problems += check_optimizer_args_syntax(job.optimizer_args)
    problems += _check_sample_prompts(job.sample_prompts)
    return problems


def _check_sample_prompts(text: str) -> list[Problem]:
    from trainer.sample_prompts import parse_sample_prompts

    try:
        parse_sample_prompts(text)
    except ValueError as error:
        return [Problem("sample_prompts", str(error))]
    return []


def check_paths(job) -> list[Problem]:
    """What must exist on disk before training starts."""
    problems: list[Problem] = []

    def need(key: str, kind: str, required: bool) -> None:
        value = getattr(job, key)
        if not value:
            if required:
                problems.append(Problem(key, "is required"))
            return
        path = Path(value).expanduser()
        if not path.exists():
            problems.append(Problem(key, f"{path} does not exist"))
        elif kind == "dir" and not path.is_dir():
            problems.append(Problem(key, f"{path} is not a folder"))
        elif kind == "file" and not path.is_file():
            problems.append(Problem(key, f"{path} is not a file"))

    need("pretrained_model_name_or_path", "any", True)
    need("train_data_dir", "dir", True)
    need("reg_data_dir", "dir", False)
    need("network_weights", "file", False)
    need("resume", "dir", False)
    if not job.output_dir:
        problems.append(Problem("output_dir", "is required"))
    elif Path(job.output_dir).exists() and not Path(job.output_dir).is_dir():
        problems.append(Problem("output_dir", f"{job.output_dir} exists and is not a folder"))
    return problems
