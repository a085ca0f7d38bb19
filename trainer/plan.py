"""The run's arithmetic, worked out before anything trains: steps, epochs, warmup, the step where the text
encoder stops, the save and sample points, and a preview of each group's learning-rate curve.

``schedule(...)`` is pure; ``make_plan(job)`` adds the dataset numbers from the real folders (image headers
only, no decoding, no torch models), so the page and ``python -m trainer plan`` show the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from trainer.spec.rules import effective_lrs, unread_scheduler_settings
from trainer.spec.sections import Job

MAX_CURVE_POINTS = 400


@dataclass(frozen=True)
class Schedule:
    batches_per_epoch: int
    steps_per_epoch: int  # optimizer updates per epoch (after gradient accumulation)
    epochs: int
    total_steps: int
    warmup_steps: int
    text_encoder_stop_step: int | None  # last step that updates the text encoder; None = never stops
    save_epochs: list[int]
    save_steps: list[int]  # optimizer steps after which an intermediate LoRA is written
    sample_steps: list[int]
    sample_epochs: list[int]
    governed_by: str = "epoch"  # the setting that fixed the run's length: epoch, max_train_epochs or max_train_steps
    num_processes: int = 1  # data-parallel processes, each taking whole batches of every epoch


def percent_of(total: int, percent: float) -> int:
    """⌊total × percent / 100⌋, robust to float error (10% of 1000 is 100, not 99)."""
    return int(math.floor(total * percent / 100 + 1e-9))


def schedule(
    *,
    batches_per_epoch: int,
    epoch: int,
    max_train_epochs: int | None = None,
    max_train_steps: int = 0,
    gradient_accumulation_steps: int = 1,
    lr_scheduler: str = "cosine",
    lr_warmup_percent: float = 0.0,
    lr_warmup_steps: int = 0,
    warmup_applies: bool = True,
    stop_text_encoder_percent: float = 0.0,
    save_every_n_epochs: int = 0,
    save_every_n_steps: int = 0,
    sample_every_n_steps: int = 0,
    sample_every_n_epochs: int = 0,
    num_processes: int = 1,
) -> Schedule:
    """Steps per epoch = ⌈batches ÷ processes ÷ accumulation⌉ (as sd-scripts: each process takes whole batches,
    so a global batch is batch × processes × accumulation images); the length as sd-scripts reads it
    (:func:`run_length`).

    Warmup is ``lr_warmup_steps`` when set, else a percent of the total (none for the constant scheduler, as
    kohya_ss does, nor for a scheduler type, which has no warmup). Intermediate saves
    happen at the end of epochs divisible by N, except the last (the final file covers it), and after every
    N-th step before the last. Samples follow sd-scripts: an epoch interval, when set, replaces the step one.
    """
    steps_per_epoch = math.ceil(batches_per_epoch / num_processes / gradient_accumulation_steps)
    epochs, total, governed_by = run_length(steps_per_epoch, epoch, max_train_epochs, max_train_steps)
    if lr_scheduler == "constant" or not warmup_applies:
        warmup = 0
    else:
        warmup = lr_warmup_steps if lr_warmup_steps > 0 else percent_of(total, lr_warmup_percent)
    te_stop = percent_of(total, stop_text_encoder_percent) if stop_text_encoder_percent > 0 else None
    save_epochs = [e for e in range(1, epochs) if save_every_n_epochs and e % save_every_n_epochs == 0]
    save_steps = list(range(save_every_n_steps, total, save_every_n_steps)) if save_every_n_steps else []
    if sample_every_n_epochs:
        sample_epochs = [e for e in range(1, epochs + 1) if e % sample_every_n_epochs == 0]
        sample_steps = [min(e * steps_per_epoch, total) for e in sample_epochs]
    else:
        sample_epochs = []
        sample_steps = list(range(sample_every_n_steps, total + 1, sample_every_n_steps)) if sample_every_n_steps else []
    return Schedule(batches_per_epoch, steps_per_epoch, epochs, total, warmup, te_stop, save_epochs, save_steps,
                    sample_steps, sample_epochs, governed_by, num_processes)


def run_length(steps_per_epoch: int, epoch: int, max_train_epochs: int | None, max_train_steps: int) -> tuple[int, int, str]:
    """(epochs, total optimizer steps, the setting that governs), as sd-scripts' ``train()`` works them out.

    ``max_train_epochs`` replaces everything: total = max_train_epochs × steps per epoch. Else a
    ``max_train_steps`` above 0 is the total, with ⌈total ÷ steps per epoch⌉ epochs (the last one stops
    part-way). Else (kohya_ss's 0, which its GUI computes from the epochs) total = epoch × steps per epoch.
    """
    if max_train_epochs:
        return max_train_epochs, max_train_epochs * steps_per_epoch, "max_train_epochs"
    if max_train_steps > 0:
        return math.ceil(max_train_steps / max(1, steps_per_epoch)), max_train_steps, "max_train_steps"
    return epoch, epoch * steps_per_epoch, "epoch"


def length_note(sched: Schedule) -> str:
    """One line saying how long the run is and which setting decided it."""
    words = {"epoch": "Epoch", "max_train_epochs": "Max train epoch (it replaces Epoch and Max train steps)",
             "max_train_steps": "Max train steps (Epoch is not read)"}
    return (f"{sched.total_steps} steps in {sched.epochs} epoch(s) of {sched.steps_per_epoch} steps, "
            f"set by {words[sched.governed_by]}")


def downsample_curve(values: list[float], max_points: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """[[step, lr], …] with at most ``max_points`` points (the first and last steps always kept). Step k is
    1-based: the LR used by the k-th optimizer update, as the live ``step`` events report it."""
    if not values:
        return []
    count = len(values)
    stride = max(1, math.ceil(count / max_points))
    indices = list(range(0, count, stride))
    if indices[-1] != count - 1:
        indices.append(count - 1)
    return [[i + 1, values[i]] for i in indices]


def lr_preview(job: Job, sched: Schedule) -> dict[str, list[list[float]]]:
    """The LR of each parameter group at every step, as the trainer's scheduler will produce it.

    With block LR weights the UNet has one group per block that holds modules (``unet_IN04`` …), each the
    UNet curve times its weight, read from the model's layout (:func:`unet_block_groups`); when the layout
    cannot be read (a ``.ckpt``), the plain "unet" curve stands for them.
    """
    from trainer.optim.optimizers import parse_optimizer_args, uses_own_step_size
    from trainer.optim.schedulers import lr_curve
    unet_lr, text_lr = effective_lrs(job.optimisation)
    groups = {name: lr for name, lr in (("unet", unet_lr), ("text_encoder", text_lr)) if lr}
    blocks = unet_block_groups(job) if unet_lr else None
    if blocks:
        groups = {"text_encoder": text_lr, **{name: unet_lr * weight for name, weight in blocks.items()}}
        groups = {name: lr for name, lr in groups.items() if lr}
    if job.network.LoRA_type not in ("LoHa", "LoRA-FA"):  # no up matrices to split / no LoRA+ (sd-scripts)
        from trainer.optim.loraplus import loraplus_ratios, preview_groups
        groups = preview_groups(groups, *loraplus_ratios(job.optimisation.loraplus_lr_ratio,
                                                         job.optimisation.loraplus_unet_lr_ratio,
                                                         job.optimisation.loraplus_text_encoder_lr_ratio))
    try:
        relative = uses_own_step_size(job.optimisation.optimizer, parse_optimizer_args(job.optimisation.optimizer_args))
    except ValueError:
        relative = False
    if job.optimisation.lr_scheduler_type:
        from trainer.optim.scheduler_type import typed_curve
        try:
            typed = typed_curve(job.optimisation.lr_scheduler_type, job.optimisation.lr_scheduler_args, groups,
                                sched.total_steps)
        except ValueError:
            typed = {}  # validation names the setting
        return {name: downsample_curve(values) for name, values in typed.items()}
    curves = lr_curve(groups, scheduler=job.optimisation.lr_scheduler, total_steps=sched.total_steps,
                      warmup_steps=sched.warmup_steps, num_cycles=job.optimisation.lr_scheduler_num_cycles or 1,
                      power=job.optimisation.lr_scheduler_power or 1.0, lr_init=job.optimisation.learning_rate, relative_step=relative,
                      options=_scheduler_options(job))
    stop = sched.text_encoder_stop_step
    if stop is not None:
        for name in [n for n in curves if n.startswith("text_encoder")]:
            curves[name] = [v if i < stop else 0.0 for i, v in enumerate(curves[name])]
    return {name: downsample_curve(values) for name, values in curves.items()}


def _scheduler_options(job: Job) -> dict:
    """The named schedule's lr_scheduler_args, {} when they do not parse (validation names the setting)."""
    from trainer.optim.schedulers import named_scheduler_options

    try:
        return named_scheduler_options(job.optimisation.lr_scheduler, job.optimisation.lr_scheduler_args)
    except ValueError:
        return {}


def unet_block_groups(job: Job) -> dict[str, float] | None:
    """{``unet_<block>``: LR weight} of the groups block LR weights give this job's model, from the UNet's
    layout on the meta device (no weights read); None without block LR weights or a readable layout."""
    if not (job.network.down_lr_weight or job.network.mid_lr_weight or job.network.up_lr_weight) or not job.model.pretrained_model_name_or_path:
        return None
    # Only here: diffusers takes most of a plain plan's time to import (seconds on a slow machine).
    from trainer.models.skeleton import unet_skeleton
    from trainer.network.from_job import network_config_from_job
    from trainer.network.module_plan import unet_block_lr_weights

    found = unet_skeleton(job.model.pretrained_model_name_or_path)
    if found is None:
        return None
    unet, family = found
    try:
        config = network_config_from_job(job, family=family)
    except ValueError:
        return None  # the session names the setting; the preview falls back to the plain curve
    return unet_block_lr_weights(unet, config) or None


def network_size(job: Job) -> dict | None:
    """{"type", "modules", "parameters"} of the network's UNet part on this job's model (its layout on the meta
    device, nothing loaded); None without a readable model or when the network settings are at fault (the
    checks name those)."""
    if not job.model.pretrained_model_name_or_path:
        return None
    from trainer.models.skeleton import unet_skeleton
    from trainer.network.from_job import network_config_from_job
    from trainer.network.size import unet_network_size

    found = unet_skeleton(job.model.pretrained_model_name_or_path)
    if found is None:
        return None
    unet, family = found
    try:
        config = network_config_from_job(job, family=family)
        return {"type": job.network.LoRA_type, **unet_network_size(unet, config)}
    except ValueError:
        return None


def precision_warnings(job: Job) -> list[tuple[str, str]]:
    """What the run will warn about its number formats on this machine (fp16 on a CPU, bf16 without bf16
    instructions…), said before Start; nothing for a combination validation refuses (it names that)."""
    import torch

    from trainer.precision import choose_for_machine

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        choice = choose_for_machine(job.launch.mixed_precision, job.launch.full_fp16, job.launch.full_bf16, device_type)
    except ValueError:
        return []
    return list(choice.warnings)


def global_batch_size(job: Job, num_processes: int) -> int:
    """Images per optimizer step: batch × processes × gradient accumulation."""
    return job.data.train_batch_size * num_processes * job.optimisation.gradient_accumulation_steps


def schedule_for_job(job: Job, batches_per_epoch: int, num_processes: int | None = None) -> Schedule:
    """The job's schedule; ``num_processes`` defaults to the job's (the trainer passes the launcher's)."""
    return schedule(
        batches_per_epoch=batches_per_epoch,
        epoch=job.optimisation.epoch,
        max_train_epochs=job.optimisation.max_train_epochs,
        max_train_steps=job.optimisation.max_train_steps,
        gradient_accumulation_steps=job.optimisation.gradient_accumulation_steps,
        lr_scheduler=job.optimisation.lr_scheduler,
        lr_warmup_percent=job.optimisation.lr_warmup,
        lr_warmup_steps=job.optimisation.lr_warmup_steps,
        warmup_applies=not job.optimisation.lr_scheduler_type,
        stop_text_encoder_percent=job.optimisation.stop_text_encoder_training,
        save_every_n_epochs=job.saving.save_every_n_epochs,
        save_every_n_steps=job.saving.save_every_n_steps,
        sample_every_n_steps=job.sampling.sample_every_n_steps,
        sample_every_n_epochs=job.sampling.sample_every_n_epochs,
        num_processes=num_processes if num_processes is not None else job.launch.num_processes,
    )


def make_plan(job: Job, dataset_plan=None, with_memory: bool = False, baseline: int | None = None) -> dict:
    """The plan as a JSON-ready dict: dataset numbers (from the real folders) plus the schedule, the LR preview
    and, ``with_memory``, the memory estimate (``memory``: :mod:`trainer.memory_plan`; None when the model's
    layout cannot be read). The estimate builds the model on the meta device, so it imports diffusers;
    ``baseline`` is the trainer's own memory before the model (measured in this process when None)."""
    from trainer.data.dataset_config import scan_job_dataset
    from trainer.data.dataset_plan import plan_dataset

    if dataset_plan is None:
        dataset_plan = plan_dataset(*scan_job_dataset(job))
    sched = schedule_for_job(job, dataset_plan.steps_per_epoch)
    plan = {"dataset": dataset_plan.summary(), **asdict(sched),
            "global_batch_size": global_batch_size(job, sched.num_processes)}
    plan["length_note"] = length_note(sched)
    plan["lr_curve"] = lr_preview(job, sched)
    plan["network"] = network_size(job) if with_memory else None  # both read the model's layout (diffusers)
    plan["warnings"] = [{"setting": key, "message": message}
                        for key, message in [*unread_scheduler_settings(job.optimisation), *precision_warnings(job)]]
    if with_memory:
        from trainer.memory_plan import estimate_for_run

        plan["memory"] = estimate_for_run(job, dataset_plan, baseline=baseline)
    return plan
