"""The memory estimate of a job, for the plan: the job reduced to a :class:`RunShape`, the model's facts from
its meta-device skeleton, activations traced on meta tensors, the baseline of this very process, and the
machine's free memory. ``memory_plan(job, dataset_plan)`` returns the JSON-ready ``memory`` entry of the
plan (or None when the model's layout cannot be read, as for a ``.ckpt``).
"""
from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from pathlib import Path

import torch

from trainer.memory import ModelFacts, RunShape, estimate, suggestions, verdict
from trainer.spec.rules import effective_lrs
from trainer.spec.sections import Job

TOKENS_PER_CHUNK = 77
# Modules autocast runs in 16 bits (their frozen weights are copied): linear and convolution layers
AUTOCAST_LAYERS = (torch.nn.Linear, torch.nn.Conv2d)


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes; None where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss() -> int:
    """This process's resident memory now (``VmRSS``), 0 where /proc is not there."""
    return _status_bytes("VmRSS") or 0


def trainer_baseline() -> int:
    """Resident memory of a process that has imported what the trainer imports (measured here: the plan
    runs in such a process), plus what the trainer adds before its first step."""
    import trainer.loop  # noqa: F401 - importing is the point: the trainer holds these libraries
    import trainer.run  # noqa: F401
    import trainer.saving  # noqa: F401
    from trainer.memory import RUNTIME_EXTRA_BYTES

    return current_rss() + RUNTIME_EXTRA_BYTES


def free_memory(device_type: str) -> int | None:
    """Bytes free for a run: the GPU's free memory, or the host's available memory (``MemAvailable``)."""
    if device_type == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_shape(job: Job, dataset_plan) -> RunShape:
    from trainer.sample_prompts import parse_sample_prompts

    buckets = [tuple(b.resolution) for b in dataset_plan.buckets] or [(512, 512)]
    width, height = max(buckets, key=lambda size: size[0] * size[1])
    _, text_lr = effective_lrs(job.optimisation)
    sample = None
    if job.sampling.sample_prompts.strip() and (job.sampling.sample_every_n_steps or job.sampling.sample_every_n_epochs):
        try:
            prompts = parse_sample_prompts(job.sampling.sample_prompts)
        except ValueError:
            prompts = []
        if prompts:
            biggest = max(prompts, key=lambda p: p.width * p.height)
            sample = (biggest.width, biggest.height)
    images = dataset_plan.train_images + dataset_plan.reg_images
    return RunShape(
        batch_size=dataset_plan.batch_size, resolution=(int(width), int(height)),
        gradient_checkpointing=job.launch.gradient_checkpointing, train_text_encoder=text_lr > 0,
        optimizer=job.optimisation.optimizer, mixed_precision=job.launch.mixed_precision,
        full_fp16=job.launch.full_fp16, cache_latents=job.data.cache_latents or job.data.cache_latents_to_disk,
        image_count=images, caption_count=images,
        tokens=TOKENS_PER_CHUNK * max(1, math.ceil(job.captions.max_token_length / 75)), sample_resolution=sample)


def _adafactor_elements(parameters) -> int:
    """Adafactor's state: a row and a column moment per matrix, a full one for vectors."""
    total = 0
    for p in parameters:
        shape = [s for s in p.shape if s > 1] or [1]
        total += (shape[0] + math.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return total


def model_facts(job: Job, skeleton) -> ModelFacts:
    from trainer.network import apply_network
    from trainer.network.from_job import network_config_from_job

    unet, vae, encoders, family = skeleton
    config = network_config_from_job(job, 0, family)
    config = dataclasses.replace(config, train_text_encoder=True, train_unet=config.train_unet)
    parts = {"unet": unet, "vae": vae, **{("text_encoder" if i == 0 else f"text_encoder_{i + 1}"): e
                                         for i, e in enumerate(encoders)}}
    params = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    stored = {name: sum(p.numel() * p.element_size() for p in part.parameters()) for name, part in parts.items()}
    castable = sum(m.weight.numel() for m in unet.modules() if isinstance(m, AUTOCAST_LAYERS))
    for part in parts.values():
        part.requires_grad_(False)
        if any(p.dtype != torch.float32 for p in part.parameters()):
            part.to(torch.float32)  # activations are traced in fp32 and scaled to the run's compute type
    with torch.device("meta"):
        network = apply_network(unet, encoders, config)
    lora = {"unet": sum(p.numel() for p in network._parameters("unet")),
            "text_encoder": sum(p.numel() for p in network._parameters("text_encoder"))}
    adafactor = {"unet": _adafactor_elements(network._parameters("unet")),
                 "text_encoder": _adafactor_elements(network._parameters("text_encoder"))}
    path = Path(job.model.pretrained_model_name_or_path).expanduser()
    file_bytes = path.stat().st_size if path.is_file() else 0
    from trainer.models.loading import STREAMS_SAFETENSORS

    return ModelFacts(params, stored, lora, adafactor, castable, file_bytes,
                      streams_file=STREAMS_SAFETENSORS and path.suffix.lower() == ".safetensors")


def _tracer(skeleton, train_text_encoder_lora: bool):
    """traces(shape) → activation figures, each traced once per (resolution, batch, checkpointing)."""
    from trainer.memory_trace import largest_outputs, trace_text_encoder, trace_unet, unet_inputs

    unet, vae, encoders, _ = skeleton
    down = 2 ** (len(vae.config.block_out_channels) - 1)  # the VAE's downscale: 8 in SD, 4 in the demo base

    @lru_cache(maxsize=None)
    def unet_trace(width, height, tokens, checkpointing):
        return trace_unet(unet, 1, height // down, width // down, tokens, checkpointing)

    @lru_cache(maxsize=None)
    def text_trace(tokens):
        return sum(trace_text_encoder(e, 1, tokens).saved_bytes for e in encoders)

    @lru_cache(maxsize=None)
    def vae_encode(width, height):
        pixels = torch.zeros(1, vae.config.in_channels, height, width, device="meta")
        return largest_outputs(vae.encoder, lambda: vae.encoder(pixels))

    @lru_cache(maxsize=None)
    def sampler(width, height):
        args, kwargs = unet_inputs(unet, 2, height // down, width // down)
        latents = torch.zeros(1, vae.config.latent_channels, height // down, width // down, device="meta")
        return (largest_outputs(unet, lambda: unet(*args, **kwargs)),
                largest_outputs(vae.decoder, lambda: vae.decoder(latents)))

    def traces(shape: RunShape) -> dict:
        width, height = shape.resolution
        trace = unet_trace(width, height, shape.tokens, shape.gradient_checkpointing)
        width_out = sum(getattr(e.config, "hidden_size", 768) for e in encoders)
        figures = {
            "unet_saved": trace.saved_bytes * shape.batch_size,
            "unet_largest": trace.largest_bytes * shape.batch_size,
            "unet_part": (unet_trace(width, height, shape.tokens, False).largest_part_bytes * shape.batch_size
                          if shape.gradient_checkpointing else 0),
            "text_saved": text_trace(shape.tokens) * shape.batch_size if shape.train_text_encoder else 0,
            "text_cache_per_caption": shape.tokens * width_out * 4,
            "vae_encode": vae_encode(width, height),
            "sample_unet": 0, "vae_decode": 0,
        }
        if shape.sample_resolution is not None:
            figures["sample_unet"], figures["vae_decode"] = sampler(*shape.sample_resolution)
        return figures

    return traces


def memory_plan(job: Job, dataset_plan, device_type: str | None = None, baseline: int | None = None,
                free: int | None = None) -> dict | None:
    """The plan's ``memory`` entry: peak, parts, free memory, verdict and the settings that would help.
    ``baseline`` and ``free`` replace what this process and this machine measure (for tests)."""
    from trainer.models.skeleton import model_skeletons

    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    baseline = trainer_baseline() if baseline is None else baseline
    skeleton = model_skeletons(job.model.pretrained_model_name_or_path)
    if skeleton is None:
        return None
    try:
        facts = model_facts(job, skeleton)
    except ValueError:
        return None  # a network the session refuses; validation names the setting
    shape = run_shape(job, dataset_plan)
    traces = _tracer(skeleton, shape.train_text_encoder)
    result = estimate(shape, facts, traces, device_type, baseline)
    free = free_memory(device_type) if free is None else free
    result["free_bytes"] = free
    result["verdict"] = verdict(result["peak_bytes"], free)
    result["suggestions"] = (suggestions(shape, facts, traces, device_type, baseline, free)
                             if result["verdict"] in ("will not fit", "tight") else [])
    return result


def estimate_for_run(job: Job, dataset_plan, device_type: str | None = None,
                     baseline: int | None = None) -> dict | None:
    """The estimate of a plan or of a run's ``started`` event; None when it cannot be made (it never stops a
    plan or a run: the model's own loader reports unreadable models with a better message)."""
    try:
        return memory_plan(job, dataset_plan, device_type, baseline)
    except (RuntimeError, ValueError, NotImplementedError, TypeError, AttributeError):
        return None


def measured_peak(device_type: str) -> int:
    """The run's measured peak: the GPU's peak allocation, or this process's peak resident memory.

    On Linux that is ``VmHWM``, the high-water mark of this process's own memory. ``ru_maxrss`` is not: it
    keeps the parent's high-water mark across ``exec`` (a trainer started by a 1 GB process reported 1 GB)."""
    if device_type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    high_water = _status_bytes("VmHWM")
    if high_water is not None:
        return high_water
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def memory_report(device_type: str, estimate: dict | None) -> dict:
    """The ``memory`` field of the ``finished`` event: the measured peak beside the estimate."""
    report: dict = {"device": device_type, "measured_peak_bytes": measured_peak(device_type)}
    if estimate:
        report["estimated_peak_bytes"] = estimate["peak_bytes"]
        report["estimated_phase"] = estimate["phase"]
    return report
