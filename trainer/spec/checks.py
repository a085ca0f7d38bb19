"""Checks across settings, done before anything starts (in the page, by ``validate`` and by ``train``).

Field-level checks (types, ranges, list formats) live in the Job model; these are the rules that involve
several settings or the file system. They are pure except for looking at paths, and never import torch, so
the GUI can run them on every change.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from .disk_checks import dataset_problems, network_weights_problems, resume_problems, writable_folder_problem
from .setting import Problem
from .tables import ONE_LR_OPTIMIZERS
from .sections import Job
from .network_checks import check_network_options
from .rules import both_rates_zero, dylora_rank_faults, effective_lrs, network_adapts_conv, unread_scheduler_settings


# Optimizers whose update divides by a running second moment kept in the parameters' dtype: with full_fp16
# the moment and epsilon (1e-8, below fp16's smallest number) underflow to 0. Found by training the demo
# with fp16 LoRA weights: AdamW and Prodigy give NaN losses from the first steps, DAdaptSGD divides by zero.
FP16_STATE_UNSTABLE = ("AdamW", "Prodigy", "DAdaptSGD")
MAX_ADDITIONAL_PARAMETERS = 4096


def parse_additional_parameters(text: str, settings_by_key: dict) -> tuple[dict[str, Any], list[Problem]]:
    """sd-scripts arguments that map to settings → overrides (:mod:`trainer.spec.extra_args`)."""
    from .extra_args import parse_extra_arguments

    if len(text or "") > MAX_ADDITIONAL_PARAMETERS:  # shlex takes seconds per pasted megabyte
        return {}, [Problem("additional_parameters", f"is {len(text):,} characters long; at most "
                                                     f"{MAX_ADDITIONAL_PARAMETERS:,} are allowed here")]
    return parse_extra_arguments(text, settings_by_key)


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
    elif both_rates_zero(job.optimisation):
        problems.append(Problem("unet_lr", f"the UNet and text-encoder rates are both 0, which kohya_ss reads as "
                                           f"unset: both parts train at the learning rate "
                                           f"({job.optimisation.learning_rate:g})", "warning"))
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
    if job.launch.full_bf16 and job.launch.mixed_precision != "bf16":
        problems.append(Problem("full_bf16", f"needs mixed precision bf16 (it is {job.launch.mixed_precision!r}): it "
                                             "keeps the LoRA weights in bf16; turn it off or choose bf16"))
    if job.launch.full_bf16 and job.launch.full_fp16:
        problems.append(Problem("full_bf16", "and full fp16 exclude each other; choose one"))
    if job.launch.full_fp16 and job.optimisation.optimizer in FP16_STATE_UNSTABLE:
        problems.append(Problem("full_fp16", f"{job.optimisation.optimizer} keeps its state in the weights' fp16, where its "
                                             "second moment and epsilon underflow: the loss turns NaN within a few "
                                             "steps; use AdamW8bit (or another 8-bit optimizer) with full fp16",
                                "warning"))
    problems += check_network_weights_kept(job)
    if job.saving.save_model_as != "safetensors":
        problems.append(Problem("save_model_as", f"{job.saving.save_model_as} is not written by LoRA Loom: a .ckpt is "
                                                 "a Python pickle that can run code when loaded and holds no "
                                                 "metadata; choose safetensors (every LoRA loader reads it)"))
    if (job.saving.save_last_n_epochs or job.saving.save_last_n_epochs_state) and not job.saving.save_every_n_epochs:
        problems.append(Problem("save_last_n_epochs", "has no effect while 'Save every N epochs' is 0", "warning"))
    if job.saving.save_last_n_epochs_state and not job.saving.save_state:
        problems.append(Problem("save_last_n_epochs_state", "has no effect without 'Save training state'", "warning"))
    if job.saving.save_last_n_steps_state and not (job.saving.save_state and job.saving.save_every_n_steps):
        problems.append(Problem("save_last_n_steps_state", "has no effect without 'Save training state' and step "
                                                           "saving", "warning"))
    problems += check_network_options(job)
    if job.saving.save_last_n_steps and not job.saving.save_every_n_steps:
        problems.append(Problem("save_last_n_steps", "has no effect while 'Save every N steps' is 0", "warning"))
    loraplus = [k for k in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
                if getattr(job.optimisation, k)]
    if loraplus and job.network.LoRA_type == "LoHa":
        problems.append(Problem(loraplus[0], "LoRA+ speeds up the LoRA up matrices; LoHa has none, so it has no "
                                             "effect", "warning"))
    if loraplus and job.network.LoRA_type == "LoRA-FA":
        problems.append(Problem(loraplus[0], "has no effect on LoRA-FA (sd-scripts' networks.lora_fa takes no LoRA+ "
                                             "ratios: only its up matrices learn, at the part's rate)", "warning"))
    if job.noise_loss.min_timestep > job.noise_loss.max_timestep:
        problems.append(Problem("min_timestep", f"({job.noise_loss.min_timestep}) is above the max timestep "
                                                f"({job.noise_loss.max_timestep})"))
    if job.noise_loss.noise_offset_random_strength and not job.noise_loss.noise_offset:
        problems.append(Problem("noise_offset_random_strength", "has no effect without a noise offset", "warning"))
    if job.noise_loss.ip_noise_gamma_random_strength and not job.noise_loss.ip_noise_gamma:
        problems.append(Problem("ip_noise_gamma_random_strength", "has no effect without an IP noise gamma",
                                "warning"))
    if job.noise_loss.loss_type in ("huber", "smooth_l1") and job.noise_loss.huber_c == 0:
        problems.append(Problem("huber_c", f"must be above 0 for the {job.noise_loss.loss_type} loss (0 makes "
                                           "every error count as nothing)"))
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
    if job.logging.log_tracker_config:
        problems += _check_tracker_config(job.logging.log_tracker_config)
    if job.logging.log_with in ("wandb", "all") and importlib.util.find_spec("wandb") is None:
        problems.append(Problem("log_with", "wandb is not installed here; choose tensorboard or "
                                            "`pip install wandb`"))
    problems += check_optimizer_args_syntax(job.optimisation.optimizer_args)
    problems += check_scheduler_type(job.optimisation.lr_scheduler_type, job.optimisation.lr_scheduler_args)
    if not job.optimisation.lr_scheduler_type:
        problems += check_named_scheduler_args(job.optimisation.lr_scheduler, job.optimisation.lr_scheduler_args)
    problems += check_one_lr_optimizer(job)
    problems += _check_sample_prompts(job.sampling.sample_prompts)
    problems += check_launch(job)
    return problems


def check_launch(job: Job) -> list[Problem]:
    """Processes, machines and GPU ids must fit together (accelerate refuses the rest at start)."""
    launch, problems = job.launch, []
    if launch.num_processes < launch.num_machines:
        problems.append(Problem("num_processes", f"{launch.num_processes} process(es) cannot span "
                                                 f"{launch.num_machines} machines: it counts the processes of all machines"))
    per_machine = -(-launch.num_processes // max(1, launch.num_machines))
    ids = [part for part in launch.gpu_ids.split(",") if part.strip()]
    if ids and len(ids) < per_machine:
        problems.append(Problem("gpu_ids", f"lists {len(ids)} GPU(s) for {per_machine} process(es) per machine: "
                                           "one GPU each"))
    if launch.main_process_port and launch.num_processes == 1 and launch.num_machines == 1 and not launch.multi_gpu:
        problems.append(Problem("main_process_port", "has no effect with one process", "warning"))
    return problems


def check_scheduler_type(name: str, args_text: str) -> list[Problem]:
    """The arguments must be key=value pairs; the scheduler class must exist and take them (imports torch,
    only when arguments or a class are given)."""
    if not name.strip() and not args_text.strip():
        return []
    from trainer.optim.scheduler_type import check_scheduler_args, parse_scheduler_args, scheduler_class
    from .setting import SettingError

    try:
        args = parse_scheduler_args(args_text)
        if name.strip():
            check_scheduler_args(scheduler_class(name), args)
    except SettingError as error:
        return [Problem(error.setting, str(error))]
    return []


def check_named_scheduler_args(scheduler: str, args_text: str) -> list[Problem]:
    """piecewise_constant, cosine_with_min_lr, inverse_sqrt and warmup_stable_decay read lr_scheduler_args
    (their step rules, floor, timescale, decay): what they cannot use is an error naming lr_scheduler_args."""
    from .tables import SCHEDULER_ARGS

    if scheduler not in SCHEDULER_ARGS:
        return []
    from trainer.optim.schedulers import check_scheduler_options, named_scheduler_options
    from .setting import SettingError

    try:
        check_scheduler_options(scheduler, named_scheduler_options(scheduler, args_text), total_steps=10**9)
    except SettingError as error:
        return [Problem(error.setting, str(error))]
    except ValueError as error:
        return [Problem("lr_scheduler_args", str(error).removeprefix("lr_scheduler_args: "))]
    return []


def check_one_lr_optimizer(job: Job) -> list[Problem]:
    """DAdaptation-style optimizers take one rate: sd-scripts warns that only the first (the text encoder's)
    takes effect, and trains; so do we (``trainer.optim.optimizers.one_lr_groups``)."""
    unet_lr, text_lr = effective_lrs(job.optimisation)
    if job.optimisation.optimizer not in ONE_LR_OPTIMIZERS or 0 in (unet_lr, text_lr) or unet_lr == text_lr:
        return []
    return [Problem("text_encoder_lr", f"{job.optimisation.optimizer} takes one learning rate for every part: as in "
                                       f"sd-scripts only the first, the text encoder's ({text_lr:g}), takes effect, "
                                       f"and the UNet trains at it too (not at {unet_lr:g})", "warning")]


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
    if (is_file and len(parts) == 1) or (not is_file and (job.saving.save_state or job.saving.save_state_on_train_end)):
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


def _check_tracker_config(path: str) -> list[Problem]:
    from trainer.tracking import read_tracker_config
    from .setting import SettingError

    try:
        table = read_tracker_config(path)
    except SettingError as error:
        return [Problem(error.setting, str(error))]
    if any("api_key" in str(key).lower() for part in table.values() for key in part):
        return [Problem("log_tracker_config", "holds an API key: keys belong in the WANDB API Key field or the "
                                              "WANDB_API_KEY environment variable, never in a file")]
    return []


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
    with_config = bool(job.data.dataset_config.strip())  # sd-scripts ignores both folders then
    need("dataset_config", "file", False)
    need("train_data_dir", "dir", not with_config)
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
    if not any(p.setting in ("train_data_dir", "reg_data_dir", "dataset_config") for p in problems):
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
