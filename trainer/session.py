"""Everything a run needs, built from a job before the first step: device and precision, data, the base
model with its LoRA network, optimizer, LR schedule, text conditioning and the random generators.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.data.batches import data_options_from_job
from trainer.data.folders import scan_dataset
from trainer.data.training_data import TrainingData
from trainer.events import EventWriter
from trainer.loss import sd_alphas_cumprod
from trainer.models.loading import BaseModel, load_base_model
from trainer.network import LoraNetwork, apply_network, read_lora_file
from trainer.network.from_job import network_config_from_job
from trainer.optim.optimizers import build_optimizer, optimizer_warnings, parse_optimizer_args
from trainer.optim.schedulers import build_lr_scheduler
from trainer.plan import Schedule, lr_preview, schedule_for_job
from trainer.spec import effective_lrs
from trainer.text_encoding import TextEmbeddingCache, encode_captions


class TrainingError(Exception):
    """A problem found while setting up or running, with the setting to blame when there is one."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


@dataclass
class Precision:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    weight_dtype: torch.dtype  # the frozen base weights
    use_grad_scaler: bool


@dataclass
class Session:
    job: object
    run_dir: Path
    seed: int
    precision: Precision
    data: TrainingData
    schedule: Schedule
    base: BaseModel
    network: LoraNetwork
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    group_names: list[str]
    train_text_encoder: bool
    text_cache: TextEmbeddingCache | None
    alphas_cumprod: torch.Tensor
    noise_generator: torch.Generator
    started_at: float = field(default_factory=time.time)
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def text_states(self, captions: list[str]) -> torch.Tensor:
        """The UNet's conditioning for these (already processed) captions."""
        job = self.job
        kwargs = dict(max_token_length=job.max_token_length, clip_skip=job.clip_skip,
                      weighted=job.weighted_captions, pad_to_longest=job.no_token_padding)
        if self.text_cache is not None:
            return self.text_cache.encode_captions(captions, **kwargs)
        return encode_captions(self.base.tokenizer, self.base.text_encoder, captions, **kwargs)

    def stop_text_encoder(self) -> None:
        """Freeze the text encoder's LoRA from here on; its (now fixed) outputs are cached."""
        self.network.set_text_encoder_trainable(False)
        self.train_text_encoder = False
        self.text_cache = TextEmbeddingCache(self.base.tokenizer, self.base.text_encoder)


def resolve_precision(job, events: EventWriter) -> Precision:
    """Mixed precision where the device has it; otherwise fall back with a warning (no fp16 on CPU)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mode = job.mixed_precision
    if device.type == "cpu" and mode == "fp16":
        events.warning("fp16 mixed precision needs a GPU; training in fp32 on this CPU instead "
                       "(choose bf16 to use 16-bit math on CPU)", "mixed_precision")
        mode = "no"
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        events.warning("this GPU has no bf16; using fp16 instead", "mixed_precision")
        mode = "fp16"
    if mode == "no":
        return Precision(device, None, torch.float32, False)
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    # On CPU the frozen weights stay fp32 (autocast still computes in bf16); on GPU they are stored in 16-bit.
    weight_dtype = dtype if device.type == "cuda" else torch.float32
    return Precision(device, dtype, weight_dtype, use_grad_scaler=(dtype == torch.float16))


def rank_and_alpha_of(tensors: dict[str, torch.Tensor]) -> tuple[int, float]:
    """The rank and alpha a LoRA file was trained with (for dim_from_weights); a file mixing ranks or
    alphas cannot be described by one rank and is refused."""
    ranks = {t.shape[0] for k, t in tensors.items() if k.endswith(".lora_down.weight")}
    alphas = {round(float(t), 6) for k, t in tensors.items() if k.endswith(".alpha")}
    if len(ranks) != 1:
        raise TrainingError(f"the LoRA file has modules of different ranks {sorted(ranks)}; set the rank "
                            "yourself instead of taking it from the file", "dim_from_weights")
    rank = ranks.pop()
    if len(alphas) > 1:
        raise TrainingError(f"the LoRA file has different alphas {sorted(alphas)}", "dim_from_weights")
    return rank, (alphas.pop() if alphas else float(rank))  # no alpha in old files means alpha = rank


def configure_attention(job, base: BaseModel, device: torch.device, events: EventWriter) -> None:
    """xformers where installed and on a GPU; sliced attention for mem_eff_attn; PyTorch SDPA otherwise."""
    if job.xformers:
        if device.type != "cuda":
            events.warning("xformers runs only on a GPU; using PyTorch's scaled-dot-product attention", "xformers")
        elif importlib.util.find_spec("xformers") is None:
            events.warning("xformers is not installed; using PyTorch's scaled-dot-product attention", "xformers")
        else:
            base.unet.enable_xformers_memory_efficient_attention()
    if job.mem_eff_attn:
        base.unet.set_attention_slice("auto")
    if job.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        base.unet.train()


def build_data(job, seed: int, events: EventWriter) -> TrainingData:
    scan = scan_dataset(job.train_data_dir, job.reg_data_dir or None, job.caption_extension or ".caption")
    data = TrainingData(scan, data_options_from_job(job), seed)
    for warning in data.warnings:
        events.warning(warning.message, getattr(warning, "setting", None))
    if data.steps_per_epoch == 0:
        raise TrainingError("the image folder holds no usable images", "train_data_dir")
    return data


def build_session(job, run_dir: Path, events: EventWriter) -> Session:
    torch.set_num_threads(job.num_cpu_threads_per_process)
    seed = job.seed if job.seed is not None else random.SystemRandom().randrange(2**31)
    random.seed(seed)
    torch.manual_seed(seed)
    precision = resolve_precision(job, events)
    events.status("scanning data")
    data = build_data(job, seed, events)
    sched = schedule_for_job(job, data.steps_per_epoch)
    plan = {"dataset": data.plan.summary(), **sched.__dict__, "seed": seed,
            "lr_curve": lr_preview(job, sched)}
    events.emit("started", plan=plan)

    events.status("loading model")
    base = load_base_model(job.pretrained_model_name_or_path, device=precision.device, dtype=precision.weight_dtype,
                           v2=job.v2, v_prediction=True if job.v_parameterization else None, vae=job.vae or None)
    for note in base.notes:
        events.warning(note, setting="v_parameterization")
    configure_attention(job, base, precision.device, events)
    unet_lr, text_lr = effective_lrs(job)
    tensors = read_lora_file(job.network_weights)[0] if job.network_weights else None
    config = network_config_from_job(job, seed)
    if job.dim_from_weights:
        dim, alpha = rank_and_alpha_of(tensors)
        config = dataclasses.replace(config, dim=dim, alpha=alpha)
        events.status("loading model", note=f"rank {dim} and alpha {alpha:g} taken from {job.network_weights}")
    network = apply_network(base.unet, base.text_encoders, config)
    if tensors is not None:
        try:
            network.load_kohya_state_dict(tensors)
        except ValueError as error:
            raise TrainingError(f"{job.network_weights} does not fit this network: {error}", "network_weights") from None

    groups = network.param_groups(unet_lr, text_lr)
    if not groups:
        raise TrainingError("nothing to train: no LoRA modules were created with these settings", "network_dim")
    optimizer_args = parse_optimizer_args(job.optimizer_args)
    for setting, message in optimizer_warnings(job.optimizer, optimizer_args, {g["name"]: g["lr"] for g in groups}):
        events.warning(message, setting)
    optimizer = build_optimizer(job.optimizer, groups, job.learning_rate, optimizer_args)
    lr_scheduler = build_lr_scheduler(optimizer, scheduler=job.lr_scheduler, total_steps=sched.total_steps,
                                      warmup_steps=sched.warmup_steps, num_cycles=job.lr_scheduler_num_cycles or 1,
                                      power=job.lr_scheduler_power or 1.0)
    train_te = any(g["name"] == "text_encoder" for g in groups)
    text_cache = None if train_te else TextEmbeddingCache(base.tokenizer, base.text_encoder)
    noise_generator = torch.Generator(device=precision.device).manual_seed(seed)
    return Session(job=job, run_dir=run_dir, seed=seed, precision=precision, data=data, schedule=sched,
                   base=base, network=network, optimizer=optimizer, lr_scheduler=lr_scheduler,
                   group_names=[g["name"] for g in groups], train_text_encoder=train_te, text_cache=text_cache,
                   alphas_cumprod=sd_alphas_cumprod().to(precision.device), noise_generator=noise_generator)


def cache_latents(session: Session, events: EventWriter) -> None:
    """Encode every image once with the VAE (in memory, and on disk when asked)."""
    job, base, device = session.job, session.base, session.precision.device
    if not (job.cache_latents or job.cache_latents_to_disk):
        return
    events.status("caching latents")

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pixels = pixels.to(device, base.vae.dtype)
            return base.vae.encode(pixels).latent_dist.sample(generator=session.noise_generator).float().cpu()

    session.data.cache_latents(encode, job.vae_batch_size, disk=job.cache_latents_to_disk,
                               encoder_id=str(base.source_path))
