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
from .sections import Job
from .network_checks import check_network_options
from .rules import dylora_rank_faults, effective_lrs, network_adapts_conv, unread_scheduler_settings


# Optimizers whose update divides by a running second moment kept in the parameters' dtype: with full_fp16
# the moment and epsilon (1e-8, below fp16's smallest number) underflow to 0. Found by training the demo
# with fp16 LoRA weights: AdamW and Prodigy give NaN losses from the first steps, DAdaptSGD divides by zero.
FP16_STATE_UNSTABLE = ("AdamW", "Prodigy", "DAdaptSGD")
MAX_ADDITIONAL_PARAMETERS = 4096


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


def check_settings(job: Job, settings) -> list[Problem]:
    """Rules across settings. Warnings do not stop a run; errors do."""
    problems: list[Problem] = []
    for setting in settings:
        value = job.get(setting.key)
        if not setting.implemented and value != setting.default:
            problems.append(Problem(setting.key, f"is not implemented yet in LoRA Loom; leave it at its "
                                                 f"default ({setting.default!r}) — it would be ignored"))
    unet_lr, text_lr = effective_lrs(job.optimisation)
    if unet_lr == 0 and text_lr == 0:
        problems.append(Problem("learning_rate", "the UNet and text-encoder learning rates are both 0: "
                                                 "nothing would be trained"))
    caching = job.data.cache_latents or job.data.cache_latents_to_disk
    if caching and job.data.color_aug:
        problems.append(Problem("color_aug", "cannot be used with cached latents (the images are encoded once); "
                                             "turn off Cache latents or Color augmentation"))
    if caching and job.data.random_crop:
        problems.append(Problem("random_crop", "cannot be used with cached latents (the crop is fixed when "
                                               "latents are cached); turn off Cache latents or Random crop"))
    if job.network.network_alpha > job.network.network_dim and not job.network.dim_from_weights:
        problems.append(Problem("network_alpha", f"alpha {job.network.network_alpha:g} is above the rank "
                                                 f"{job.network.network_dim}: the LoRA is amplified, which is rarely "
                                                 f"intended", "warning"))
    if job.data.min_bucket_reso > job.data.max_bucket_reso:
        problems.append(Problem("min_bucket_reso", "is larger than the maximum bucket resolution"))
    if job.network.LoRA_type == "DyLoRA":
        problems += check_dylora_units(job)
    if job.network.dim_from_weights and not job.network.network_weights:
        problems.append(Problem("dim_from_weights", "needs a file in 'LoRA network weights'"))
    if job.launch.full_fp16 and job.launch.mixed_precision != "fp16":
        problems.append(Problem("full_fp16", f"needs mixed precision fp16 (it is {job.launch.mixed_precision!r}): it "
                                             "keeps the LoRA weights in fp16; turn it off or choose fp16"))
    if job.launch.full_fp16 and job.optimisation.optimizer in FP16_STATE_UNSTABLE:
        problems.append(Problem("full_fp16", f"{job.optimisation.optimizer} keeps its state in the weights' fp16, where its "
                                             "second moment and epsilon underflow: the loss turns NaN within a few "
                                             "steps; use AdamW8bit (or another 8-bit optimizer) with full fp16",
                                "warning"))
    problems += check_network_weights_kept(job)
    problems += check_network_options(job)
    if job.saving.save_last_n_steps and not job.saving.save_every_n_steps:
        problems.append(Problem("save_last_n_steps", "has no effect while 'Save every N steps' is 0", "warning"))
    if job.noise_loss.adaptive_noise_scale and not job.noise_loss.noise_offset:
        problems.append(Problem("adaptive_noise_scale", "has no effect without a noise offset", "warning"))
    if job.noise_loss.noise_offset_type == "Multires" and (job.noise_loss.noise_offset or job.noise_loss.adaptive_noise_scale):
        problems.append(Problem("noise_offset", "is ignored while the noise offset type is Multires", "warning"))
    if job.noise_loss.noise_offset_type == "Original" and job.noise_loss.multires_noise_iterations:
        problems.append(Problem("multires_noise_iterations", "is ignored while the noise offset type is "
                                                             "Original", "warning"))
    if job.optimisation.stop_text_encoder_training and text_lr == 0:
        problems.append(Problem("stop_text_encoder_training", "the text encoder is not trained at all "
                                                              "(its learning rate is 0)", "warning"))
    if (job.sampling.sample_every_n_steps or job.sampling.sample_every_n_epochs) and not job.sampling.sample_prompts.strip():
        problems.append(Problem("sample_prompts", "sampling is on but there are no prompts", "warning"))
    problems += [Problem(key, message, "warning") for key, message in unread_scheduler_settings(job.optimisation)]
    if job.logging.log_with == "wandb" and importlib.util.find_spec("wandb") is None:
        problems.append(Problem("log_with", "wandb is not installed here; choose tensorboard or "
                                            "`pip install wandb`"))
    problems += check_optimizer_args_syntax(job.optimisation.optimizer_args)
    problems += _check_sample_prompts(job.sampling.sample_prompts)
    return problems


def check_dylora_units(job: Job) -> list[Problem]:
    """Every DyLoRA rank must be a whole number of units (:func:`trainer.spec.rules.dylora_rank_faults`, which
    the network applies too): network_dim and block_dims always; conv_dim and conv_block_dims whenever DyLoRA
    adapts the 3×3 convs (conv_dim > 0 or a conv block dim set)."""
    from .fields import parse_block_dims

    network = job.network
    try:
        block_dims = parse_block_dims(network.block_dims) or ()
        conv_block_dims = parse_block_dims(network.conv_block_dims) or ()
    except ValueError:
        block_dims = conv_block_dims = ()  # the field check names these
    ranks: dict[str, tuple[int, ...]] = {"network_dim": (network.network_dim,), "block_dims": block_dims}
    if network_adapts_conv(network, conv_block_dims):
        ranks.update(conv_dim=(network.conv_dim,), conv_block_dims=conv_block_dims)
    problems = []
    for key, rank in dylora_rank_faults(network.unit, ranks):
        blamed = "unit" if key == "network_dim" else key
        problems.append(Problem(blamed, f"DyLoRA trains ranks in steps of the unit ({network.unit}), so every rank "
                                        f"must be a multiple of it; {key} {rank} is not: change it or the DyLoRA unit"))
    return problems


def output_files_pattern(output_name: str) -> re.Pattern:
    """What a run writes into the output folder (``trainer.saving``): the final file, epoch and step files,
    and the training-state folders next to them (replaced wholesale, through a ``.tmp`` folder)."""
    return re.compile(re.escape(output_name) + r"(-\d{6,}|-step\d{8,})?(\.safetensors|-state(\.tmp)?)")


def output_overwriting_network_weights(job: Job) -> Path | None:
    """The output path (a file, or a state folder holding it) that would replace the ``network_weights``
    file the run starts from; None when the run never writes there. Paths are compared resolved."""
    if not job.network.network_weights or not job.saving.output_dir:
        return None
    weights = Path(job.network.network_weights).expanduser().resolve()
    output_dir = Path(job.saving.output_dir).expanduser().resolve()
    try:
        parts = weights.relative_to(output_dir).parts
    except ValueError:
        return None  # not inside the output folder
    match = output_files_pattern(job.saving.output_name).fullmatch(parts[0]) if parts else None
    if match is None:
        return None
    is_file = match.group(2) == ".safetensors"
    if (is_file and len(parts) == 1) or (not is_file and job.saving.save_state):
        return output_dir / parts[0]
    return None


def check_network_weights_kept(job: Job) -> list[Problem]:
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


def check_paths(job: Job) -> list[Problem]:
    """What must exist on disk before training starts."""
    problems: list[Problem] = []

    def need(key: str, kind: str, required: bool) -> None:
        value = job.get(key)
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
    if not job.saving.output_dir:
        problems.append(Problem("output_dir", "is required"))
    else:
        problems += writable_folder_problem("output_dir", job.saving.output_dir)
    if job.logging.logging_dir:
        problems += writable_folder_problem("logging_dir", job.logging.logging_dir)
    if not any(p.setting in ("train_data_dir", "reg_data_dir") for p in problems):
        problems += dataset_problems(job)
    if job.saving.resume:
        problems += resume_problems(job)
    if job.network.network_weights and Path(job.network.network_weights).expanduser().is_file():
        problems += network_weights_problems(job)
    return problems


def check_model_files(job: Job) -> list[Problem]:
    """What the base model (and a separate VAE) are, read from file headers and configs only.

    A LoRA, a VAE, an unknown architecture or a corrupt file as the base model is refused here, before
    anything is loaded; so is ``v2`` on a model whose weights say it is not SD2.x.
    """
    from trainer.models.detect import FAMILY_NAMES, ModelFileError, inspect_model

    key = "pretrained_model_name_or_path"
    try:
        info = inspect_model(job.get(key))
    except ModelFileError as error:
        return [Problem(key, str(error))]
    problems = []
    if info.kind in ("lora", "vae", "unknown"):
        problems.append(Problem(key, f"{info.path} cannot be trained on: {info.summary()}"))
    elif job.model.v2 and info.family not in (None, "sd2"):
        problems.append(Problem("v2", f"is set, but {info.path} is a {FAMILY_NAMES[info.family]} model by its "
                                      "weights; clear v2 or choose an SD2.x model"))
    if job.model.vae and Path(job.model.vae).expanduser().exists():
        problems += _check_vae_file(job.model.vae)
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
