"""Checks across settings, done before anything starts (in the page, by ``validate`` and by ``train``).

Field-level checks (types, ranges, list formats) live in the Job model; these are the rules that involve
several settings or the file system. They are pure except for looking at paths, and never import torch, so
the GUI can run them on every change.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

from .disk_checks import dataset_problems, network_weights_problems, resume_problems, writable_folder_problem
from .setting import Problem


# Optimizers whose update divides by a running second moment kept in the parameters' dtype: with full_fp16
# the moment and epsilon (1e-8, below fp16's smallest number) underflow to 0. Found by training the demo
# with fp16 LoRA weights: AdamW and Prodigy give NaN losses from the first steps, DAdaptSGD divides by zero.
FP16_STATE_UNSTABLE = ("AdamW", "Prodigy", "DAdaptSGD")
MAX_ADDITIONAL_PARAMETERS = 4096


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
    if len(text or "") > MAX_ADDITIONAL_PARAMETERS:  # shlex takes seconds per pasted megabyte
        return {}, [Problem("additional_parameters", f"is {len(text):,} characters long; at most "
                                                     f"{MAX_ADDITIONAL_PARAMETERS:,} are allowed here")]
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
    if job.LoRA_type == "DyLoRA":
        problems += check_dylora_units(job)
    if job.dim_from_weights and not job.network_weights:
        problems.append(Problem("dim_from_weights", "needs a file in 'LoRA network weights'"))
    if job.full_fp16 and job.mixed_precision != "fp16":
        problems.append(Problem("full_fp16", f"needs mixed precision fp16 (it is {job.mixed_precision!r}): it "
                                             "keeps the LoRA weights in fp16; turn it off or choose fp16"))
    if job.full_fp16 and job.optimizer in FP16_STATE_UNSTABLE:
        problems.append(Problem("full_fp16", f"{job.optimizer} keeps its state in the weights' fp16, where its "
                                             "second moment and epsilon underflow: the loss turns NaN within a few "
                                             "steps; use AdamW8bit (or another 8-bit optimizer) with full fp16",
                                "warning"))
    problems += check_network_weights_kept(job)
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


def check_dylora_units(job) -> list[Problem]:
    """Every DyLoRA rank must be a whole number of units (``trainer.network.config._check_dylora_dims``):
    network_dim and block_dims always; conv_dim and conv_block_dims because DyLoRA adapts the 3×3 convs
    too whenever conv_dim > 0 or a conv block dim is set (``NetworkConfig.adapts_conv_layers``)."""
    from .fields import parse_block_dims

    unit = job.unit
    problems = []
    if job.network_dim % unit:
        problems.append(Problem("unit", f"the rank ({job.network_dim}) must be a multiple of the DyLoRA unit"))
    try:
        block_dims = parse_block_dims(job.block_dims) or ()
        conv_block_dims = parse_block_dims(job.conv_block_dims) or ()
    except ValueError:
        return problems  # the field check names these
    ranks = {"block_dims": block_dims}
    if job.conv_dim > 0 or any(conv_block_dims):
        ranks = {"conv_dim": (job.conv_dim,), **ranks, "conv_block_dims": conv_block_dims}
    for key, values in ranks.items():
        bad = [value for value in values if value % unit]
        if bad:
            problems.append(Problem(key, f"DyLoRA trains ranks in steps of the unit ({unit}), so every rank must be "
                                         f"a multiple of it; {bad[0]} is not: change it or the DyLoRA unit"))
    return problems


def output_files_pattern(output_name: str) -> re.Pattern:
    """What a run writes into the output folder (``trainer.saving``): the final file, epoch and step files,
    and the training-state folders next to them (replaced wholesale, through a ``.tmp`` folder)."""
    return re.compile(re.escape(output_name) + r"(-\d{6,}|-step\d{8,})?(\.safetensors|-state(\.tmp)?)")


def output_overwriting_network_weights(job) -> Path | None:
    """The output path (a file, or a state folder holding it) that would replace the ``network_weights``
    file the run starts from; None when the run never writes there. Paths are compared resolved."""
    if not job.network_weights or not job.output_dir:
        return None
    weights = Path(job.network_weights).expanduser().resolve()
    output_dir = Path(job.output_dir).expanduser().resolve()
    try:
        parts = weights.relative_to(output_dir).parts
    except ValueError:
        return None  # not inside the output folder
    match = output_files_pattern(job.output_name).fullmatch(parts[0]) if parts else None
    if match is None:
        return None
    is_file = match.group(2) == ".safetensors"
    if (is_file and len(parts) == 1) or (not is_file and job.save_state):
        return output_dir / parts[0]
    return None


def check_network_weights_kept(job) -> list[Problem]:
    """A run never writes over the LoRA file it starts from (also checked by the Saver before it writes)."""
    overwritten = output_overwriting_network_weights(job)
    if overwritten is None:
        return []
    return [Problem("output_name", f"the run would write {overwritten}, which is (or holds) the file in 'LoRA "
                                   "network weights' it starts from, and so overwrite it; choose another output "
                                   "name or output folder")]


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
    need("vae", "any", False)
    if not any(p.setting == "pretrained_model_name_or_path" for p in problems):
        problems += check_model_files(job)
    if not job.output_dir:
        problems.append(Problem("output_dir", "is required"))
    else:
        problems += writable_folder_problem("output_dir", job.output_dir)
    if job.logging_dir:
        problems += writable_folder_problem("logging_dir", job.logging_dir)
    if not any(p.setting in ("train_data_dir", "reg_data_dir") for p in problems):
        problems += dataset_problems(job)
    if job.resume:
        problems += resume_problems(job)
    if job.network_weights and Path(job.network_weights).expanduser().is_file():
        problems += network_weights_problems(job)
    return problems


def check_model_files(job) -> list[Problem]:
    """What the base model (and a separate VAE) are, read from file headers and configs only.

    A LoRA, a VAE, an unknown architecture or a corrupt file as the base model is refused here, before
    anything is loaded; so is ``v2`` on a model whose weights say it is not SD2.x.
    """
    from trainer.models.detect import FAMILY_NAMES, ModelFileError, inspect_model

    key = "pretrained_model_name_or_path"
    try:
        info = inspect_model(getattr(job, key))
    except ModelFileError as error:
        return [Problem(key, str(error))]
    problems = []
    if info.kind in ("lora", "vae", "unknown"):
        problems.append(Problem(key, f"{info.path} cannot be trained on: {info.summary()}"))
    elif job.v2 and info.family not in (None, "sd2"):
        problems.append(Problem("v2", f"is set, but {info.path} is a {FAMILY_NAMES[info.family]} model by its "
                                      "weights; clear v2 or choose an SD2.x model"))
    if job.vae and Path(job.vae).expanduser().exists():
        problems += _check_vae_file(job.vae)
    return problems


def _check_vae_file(path: str) -> list[Problem]:
    from trainer.models.detect import ModelFileError, inspect_model

    try:
        info = inspect_model(path)
    except ModelFileError as error:
        return [Problem("vae", str(error))]
    if info.kind in ("vae", "checkpoint", "diffusers_folder"):
        return []
    what = "a LoRA file" if info.kind == "lora" else "not a VAE"
    return [Problem("vae", f"{info.path} is {what}: expected a VAE file or folder, or a full checkpoint "
                           "whose VAE is used")]
