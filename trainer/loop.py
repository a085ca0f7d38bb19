"""The training loop, readable top to bottom.

For each epoch, for each batch: captions → conditioning, latents → noise at random timesteps, the UNet
predicts the noise, the loss is weighted (regularization, min-SNR), gradients accumulate, and every
``gradient_accumulation_steps`` batches the optimizer and LR schedule step. After each optimizer step:
an event for the page, the save / sample points of the plan, and what the page asked for (sample now,
save now, stop).
"""
from __future__ import annotations

import contextlib
import random
import time
from collections import deque
from typing import TYPE_CHECKING

import torch

from trainer.data.captions import process_caption
from trainer.distributed import batch_tracer
from trainer.divergence import NonFiniteLoss
from trainer.events import EventWriter
from trainer.loss import add_noise, loss_options, prediction_target, training_loss
from trainer.noise import input_perturbation, sample_timesteps, training_noise
from trainer.precision import grad_scaler
from trainer.saving import Saver
from trainer.sampling import generate_samples
from trainer.sdxl_conditioning import sdxl_added_conditions
from trainer.session import Session

if TYPE_CHECKING:
    from trainer.run import RunRequests


def autocast(session: Session):
    dtype = session.precision.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=session.precision.device.type, dtype=dtype)


def batch_latents(session: Session, batch) -> torch.Tensor:
    """Scaled latents: the cached ones, or the VAE's encoding of the batch's pixels."""
    device = session.precision.device
    if batch.latents is not None:
        latents = batch.latents.to(device)
    else:
        with torch.no_grad():
            pixels = batch.pixels.to(device, session.base.vae.dtype)
            latents = session.base.vae.encode(pixels).latent_dist.sample(generator=session.noise_generator)
    return latents.float() * session.base.vae_scale_factor


def processed_captions(session: Session, batch, epoch: int, step: int) -> list[str]:
    """Shuffle / keep tokens / dropout, re-drawn every time, from a generator seeded by (seed, epoch, step).
    A dataset-config subset's own shuffle_caption / keep_tokens replace the job's for its images."""
    job = session.job
    rng = random.Random(f"{session.seed}:captions:{epoch}:{step}")
    default = (job.captions.shuffle_caption, job.captions.keep_tokens)
    own = getattr(batch, "caption_options", None) or [None] * len(batch.captions)
    return [process_caption(caption, shuffle=(options or default)[0], keep_tokens=(options or default)[1],
                            dropout_rate=job.captions.caption_dropout_rate,
                            dropout_every_n_epochs=job.captions.caption_dropout_every_n_epochs, epoch=epoch, rng=rng,
                            weighted=job.captions.weighted_captions)
            for caption, options in zip(batch.captions, own)]


def batch_loss(session: Session, batch, epoch: int, step: int) -> torch.Tensor:
    """The denoising loss of one batch (eq. 14 of Ho et al. 2020, with the job's weightings)."""
    job, device = session.job, session.precision.device
    latents = batch_latents(session, batch)
    noise = training_noise(latents, session.noise_generator, noise_offset_type=job.noise_loss.noise_offset_type,
                           noise_offset=job.noise_loss.noise_offset, adaptive_noise_scale=job.noise_loss.adaptive_noise_scale,
                           multires_noise_iterations=job.noise_loss.multires_noise_iterations,
                           multires_noise_discount=job.noise_loss.multires_noise_discount,
                           noise_offset_random_strength=job.noise_loss.noise_offset_random_strength)
    timesteps = sample_timesteps(latents.shape[0], session.noise_generator, job.noise_loss.min_timestep,
                                 job.noise_loss.max_timestep).to(device)
    input_noise = input_perturbation(noise, job.noise_loss.ip_noise_gamma, job.noise_loss.ip_noise_gamma_random_strength,
                                     session.noise_generator)
    noisy = add_noise(latents, input_noise, timesteps, session.alphas_cumprod)
    with torch.set_grad_enabled(session.train_text_encoder), autocast(session):
        states, pooled = session.text_conditioning(processed_captions(session, batch, epoch, step))
    dtype = session.precision.weight_dtype
    extra = {} if pooled is None else {"added_cond_kwargs": sdxl_added_conditions(pooled, batch, dtype)}
    with autocast(session):
        prediction = session.base.unet(noisy.to(dtype), timesteps, states.to(dtype), **extra).sample
    target = prediction_target(latents, noise, timesteps, session.alphas_cumprod, session.base.v_prediction)
    return training_loss(prediction, target, timesteps, session.alphas_cumprod, sample_weights=batch.loss_weights,
                         min_snr_gamma=job.noise_loss.min_snr_gamma, v_prediction=session.base.v_prediction,
                         masks=batch.masks, **loss_options(job.noise_loss, timesteps, session.alphas_cumprod))


def current_lrs(session: Session) -> dict[str, float]:
    """The learning rate each group uses for the coming update (0 for a text encoder that has stopped)."""
    last = session.lr_scheduler.get_last_lr()
    lrs = {}
    for index, name in enumerate(session.group_names):
        lrs[name] = 0.0 if name.startswith("text_encoder") and not session.train_text_encoder else float(last[index])
    return lrs


def optimizer_step(session: Session, scaler) -> dict[str, float]:
    """Clip, step, advance the schedule; returns the learning rates this update used."""
    params = session.network.trainable_parameters()
    if scaler is not None:
        scaler.unscale_(session.optimizer)
    if session.job.optimisation.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, session.job.optimisation.max_grad_norm)
    lrs = current_lrs(session)
    if scaler is not None:
        scaler.step(session.optimizer)
        scaler.update()
    else:
        session.optimizer.step()
    session.lr_scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    return lrs


def max_norm_statistics(session: Session) -> dict:
    """scale_weight_norms after the step (sd-scripts' max-norm regularisation), and what it logs. The network's
    own value: 0 for a type that ignores the setting (sd-scripts turns it off there too)."""
    max_norm = session.network.config.scale_weight_norms
    if not max_norm:
        return {}
    scaled, average, largest = session.network.apply_max_norm(max_norm)
    return {"keys_scaled": scaled, "average_key_norm": average, "max_key_norm": largest}


class Progress:
    """Moving-average loss, speed and ETA for the step events."""

    def __init__(self, total_steps: int, window: int, start_step: int = 0):
        self.total = total_steps
        self.losses: deque[float] = deque(maxlen=max(1, window))
        self.started = time.monotonic()
        self.start_step = start_step

    def update(self, step: int, loss: float) -> dict:
        self.losses.append(loss)
        elapsed = max(time.monotonic() - self.started, 1e-9)
        speed = (step - self.start_step) / elapsed
        return {"loss_avg": sum(self.losses) / len(self.losses), "it_per_s": round(speed, 3),
                "eta_s": round((self.total - step) / speed, 1) if speed > 0 else None}


def sample(session: Session, events: EventWriter, step: int, epoch: int | None, requested: bool = False) -> None:
    job = session.job
    if not job.sampling.sample_prompts.strip():
        if requested:
            events.warning("no samples were drawn: there are no sample prompts (Samples tab)", "sample_prompts")
        return
    events.status("sampling", step=step)
    images = generate_samples(session.base, job.sampling.sample_prompts, session.run_dir / "samples", step=step, epoch=epoch,
                              sampler=job.sampling.sample_sampler, output_name=job.saving.output_name, device=session.precision.device,
                              dtype=session.precision.weight_dtype, clip_skip=job.captions.clip_skip, run_seed=session.seed)
    events.emit("sample", step=step, epoch=epoch, images=[{"path": i["path"], "prompt": i["prompt"]} for i in images],
                **({"requested": True} if requested else {}))
    events.status("training")


def train(session: Session, events: EventWriter, requests: RunRequests, saver: Saver) -> str:
    """Run the plan; returns "completed" or "stopped" (the LoRA is saved either way).

    In a multi-process run every process runs this on its share of each epoch (``session.processes``):
    the gradients are averaged before each update, and what was asked (stop, sample, save) is agreed on
    after it, so all act at the same step; the main process alone samples and writes."""
    job, plan = session.job, session.schedule
    processes = session.processes
    accumulation = job.optimisation.gradient_accumulation_steps
    scaler = session.scaler
    progress = Progress(plan.total_steps, window=plan.batches_per_epoch, start_step=saver.start_step)
    step, epoch = saver.start_step, saver.start_epoch
    session.network.set_training(True)  # as sd-scripts: the adapters train (dropouts on), the base stays as it is
    non_finite = NonFiniteLoss(job)
    trace = batch_tracer(processes.rank)
    events.status("training")
    for epoch in range(saver.start_epoch, plan.epochs + 1):
        batches = session.data.epoch(epoch, select=processes.shard if processes.world_size > 1 else None)
        last_index = processes.local_batches(plan.batches_per_epoch) - 1
        for index, batch in enumerate(batches):
            if epoch == saver.start_epoch and index < saver.skip_batches:
                continue
            if trace:
                trace(epoch, index, batch.image_paths)
            loss = batch_loss(session, batch, epoch, step)
            if not processes.all_finite(loss):  # every process skips a batch that is not finite in any
                session.optimizer.zero_grad(set_to_none=True)
                non_finite.skipped(loss.item(), step, events)  # ends the run after several in a row
                continue
            non_finite.finite()
            (scaler.scale(loss / accumulation) if scaler else loss / accumulation).backward()
            if (index + 1) % accumulation and index != last_index:
                continue
            processes.average_gradients(session.network.trainable_parameters())
            lrs = optimizer_step(session, scaler)
            step += 1
            loss_value = processes.mean(loss.item())
            events.emit("step", step=step, epoch=epoch, loss=loss_value, lr=lrs, **progress.update(step, loss_value),
                        **max_norm_statistics(session))
            if plan.text_encoder_stop_step is not None and step == plan.text_encoder_stop_step and session.train_text_encoder:
                session.stop_text_encoder()
                events.status("training", note=f"text encoder training stopped after step {step}")
            # Save now / Sample now / Stop, asked during this step (in a multi-process run: of any process,
            # agreed on by all, so that all act at this step)
            save_asked, requests.save = requests.save, False
            sample_asked, requests.sample = requests.sample, False
            requests.stop, sample_asked, save_asked = processes.agree(requests.stop, sample_asked, save_asked)
            # at a planned point the one file or set is marked
            if step in plan.save_steps or save_asked:
                saver.save_step(step, epoch, index + 1, requested=save_asked)
            if ((step in plan.sample_steps and not plan.sample_epochs) or sample_asked) and processes.is_main:
                sample(session, events, step, None, requested=sample_asked)
            if requests.stop:
                saver.save_final(step, epoch, stopped=True, batches_done=index + 1)
                return "stopped"
            if step >= plan.total_steps:
                break  # max_train_steps ends the last epoch part-way, as in sd-scripts
        if epoch in plan.save_epochs:
            saver.save_epoch(step, epoch)
        if epoch in plan.sample_epochs and processes.is_main:
            sample(session, events, step, epoch)
    non_finite.check_end()
    saver.save_final(step, plan.epochs, stopped=False)
    return "completed"
