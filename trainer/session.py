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
from typing import Any

import torch

from trainer.data.dataset_config import scan_job_dataset
from trainer.data.training_data import TrainingData
from trainer.distributed import SingleProcess, process_seed
from trainer.events import EventWriter
from trainer.loss import sd_alphas_cumprod
from trainer.memory_plan import estimate_for_run
from trainer.models.loading import BaseModel, load_base_model
from trainer.network import LoraNetwork, apply_network, read_lora_file
from trainer.network.from_job import network_config_from_job
from trainer.optim.optimizers import build_optimizer, optimizer_warnings, parse_optimizer_args
from trainer.optim.loraplus import loraplus_groups, loraplus_ratios, plus_markers, up_parameter_ids
from trainer.optim.scheduler_type import build_typed_scheduler
from trainer.optim.schedulers import build_lr_scheduler, named_scheduler_options
from trainer.plan import Schedule, global_batch_size, lr_preview, schedule_for_job
from trainer.precision import choose_for_machine, grad_scaler, unet_memory_format
from trainer.text_encoding import TextEmbeddingCache, encode_captions, encode_captions_sdxl
from trainer.spec.rules import effective_lrs
from trainer.spec.setting import SettingError
from trainer.spec.sections import Job


class TrainingError(SettingError):
    """A problem found while setting up or running, with the setting to blame when there is one."""


@dataclass
class Precision:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    weight_dtype: torch.dtype  # the frozen base weights
    use_grad_scaler: bool
    adapter_dtype: torch.dtype = torch.float32  # the LoRA weights: fp16 with full_fp16, else fp32


@dataclass
class Session:
    job: Job
    run_dir: Path
    seed: int
    precision: Precision
    data: TrainingData
    schedule: Schedule
    base: BaseModel
    network: LoraNetwork
    optimizer: Any  # a torch optimizer, or one of the optimizer packages' classes
    lr_scheduler: Any
    group_names: list[str]
    train_text_encoder: bool
    text_cache: TextEmbeddingCache | None
    alphas_cumprod: torch.Tensor
    noise_generator: torch.Generator
    processes: SingleProcess = field(default_factory=SingleProcess)  # this process's place in a multi-process run
    scaler: Any = None  # torch.amp.GradScaler for fp16 gradients
    started_at: float = field(default_factory=time.time)
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    memory_estimate: dict | None = None  # the plan's memory estimate (trainer.memory_plan), made before loading

    def text_states(self, captions: list[str]) -> torch.Tensor:
        """The UNet's conditioning for these (already processed) captions."""
        options = self.job.captions
        kwargs: dict[str, Any] = dict(max_token_length=options.max_token_length, clip_skip=options.clip_skip,
                                      weighted=options.weighted_captions, pad_to_longest=options.no_token_padding)
        if self.text_cache is not None:
            return self.text_cache.encode_captions(captions, **kwargs)
        return encode_captions(self.base.tokenizer, self.base.text_encoder, captions, **kwargs)

    def text_conditioning(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(states, pooled)``: SDXL's two-encoder states and pooled vector; SD's states and None."""
        if self.base.family != "sdxl":
            return self.text_states(captions), None
        options, base = self.job.captions, self.base
        kwargs: dict[str, Any] = dict(max_token_length=options.max_token_length, weighted=options.weighted_captions,
                                      pad_to_longest=options.no_token_padding)
        if self.text_cache is not None:
            return self.text_cache.encode(captions, **kwargs)
        return encode_captions_sdxl([base.tokenizer, base.tokenizer_2], base.text_encoders, captions, **kwargs)

    def stop_text_encoder(self) -> None:
        """Freeze the text encoder's LoRA from here on; its (now fixed) outputs are cached."""
        self.network.set_text_encoder_trainable(False)
        self.train_text_encoder = False
        self.text_cache = text_embedding_cache(self.base)


def text_embedding_cache(base: BaseModel) -> TextEmbeddingCache:
    """A cache of the (frozen) text encoders' outputs: one encoder, or SDXL's two with the pooled vector."""
    return TextEmbeddingCache(base.tokenizer, base.text_encoder, tokenizer_2=base.tokenizer_2,
                              text_encoder_2=base.text_encoder_2)


def resolve_precision(job: Job, events: EventWriter, device: torch.device | None = None) -> Precision:
    """Mixed precision (and full_fp16) where the device has it; otherwise fall back with a warning naming the
    setting (no fp16 on CPU). The rules are :func:`trainer.precision.choose_precision`. ``device``: accelerate's
    choice for this process in a multi-process run."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        choice = choose_for_machine(job.launch.mixed_precision, job.launch.full_fp16, job.launch.full_bf16,
                                    device.type)
    except ValueError as error:
        blamed = "full_fp16" if job.launch.full_fp16 else "full_bf16" if job.launch.full_bf16 else "mixed_precision"
        raise TrainingError(str(error), blamed) from None
    for setting, message in choice.warnings:
        events.warning(message, setting)
    return Precision(device, choice.autocast_dtype, choice.weight_dtype, choice.use_grad_scaler,
                     choice.adapter_dtype)


def parts_not_trained(tensors: dict[str, torch.Tensor], train_unet: bool, train_text_encoder: bool):
    """(the tensors of the parts this run trains, {"UNet" | "text encoder": module count left out}).

    A LoRA file trained with both parts can start a run that trains one of them (learning rate 0 for the
    other, which then has no modules); its other part is left out, and the caller says so."""
    dropped: dict[str, set[str]] = {}
    kept = {}
    for key, tensor in tensors.items():
        part = "UNet" if key.startswith("lora_unet_") else "text encoder" if key.startswith("lora_te") else None
        if (part == "UNet" and not train_unet) or (part == "text encoder" and not train_text_encoder):
            dropped.setdefault(part, set()).add(key.split(".", 1)[0])
        else:
            kept[key] = tensor
    return kept, {part: len(modules) for part, modules in dropped.items()}


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


def configure_attention(job: Job, base: BaseModel, device: torch.device, events: EventWriter) -> None:
    """xformers where installed and on a GPU; sliced attention for mem_eff_attn; PyTorch SDPA otherwise."""
    if job.launch.xformers:
        if device.type != "cuda":
            events.warning("xformers runs only on a GPU; using PyTorch's scaled-dot-product attention", "xformers")
        elif importlib.util.find_spec("xformers") is None:
            events.warning("xformers is not installed; using PyTorch's scaled-dot-product attention", "xformers")
        else:
            base.unet.enable_xformers_memory_efficient_attention()
    if job.launch.mem_eff_attn:
        base.unet.set_attention_slice("auto")
    if job.launch.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        base.unet.train()


def compile_unet(job: Job, base: BaseModel) -> None:
    """TorchDynamo on the UNet with the job's backend, mode, fullgraph and dynamic (accelerate's plugin)."""
    launch = job.launch
    if launch.dynamo_backend == "no":
        return
    from accelerate.utils import TorchDynamoPlugin

    plugin = TorchDynamoPlugin(backend=launch.dynamo_backend.upper(), mode=launch.dynamo_mode,
                               fullgraph=launch.dynamo_use_fullgraph, dynamic=launch.dynamo_use_dynamic)
    base.unet = torch.compile(base.unet, **plugin.to_kwargs())


def build_data(job: Job, seed: int, events: EventWriter) -> TrainingData:
    scan, options = scan_job_dataset(job)
    data = TrainingData(scan, options, seed)
    for warning in data.warnings:
        events.warning(warning.message, getattr(warning, "setting", None))
    if data.steps_per_epoch == 0:
        raise TrainingError("the image folder holds no usable images", "train_data_dir")
    return data


def build_session(job: Job, run_dir: Path, events: EventWriter, processes: SingleProcess | None = None) -> Session:
    processes = processes or SingleProcess()
    torch.set_num_threads(job.launch.num_cpu_threads_per_process)
    seed = job.optimisation.seed if job.optimisation.seed is not None else random.SystemRandom().randrange(2**31)
    seed = int(processes.gather(seed)[0])  # a seed chosen at start: the main process's, for all
    random.seed(seed)
    torch.manual_seed(seed)
    precision = resolve_precision(job, events, processes.device)
    if processes.world_size != job.launch.num_processes:
        events.warning(f"the job asks for {job.launch.num_processes} process(es) but {processes.world_size} "
                       "were started; the plan follows the processes that run", "num_processes")
    events.status("scanning data")
    data = build_data(job, seed, events)
    sched = schedule_for_job(job, data.steps_per_epoch, processes.world_size)
    plan = {"dataset": data.plan.summary(), **sched.__dict__, "seed": seed,
            "global_batch_size": global_batch_size(job, processes.world_size), "lr_curve": lr_preview(job, sched)}
    plan["memory"] = estimate_for_run(job, data.plan, precision.device.type)
    events.emit("started", plan=plan)

    events.status("loading model")
    base = load_base_model(job.model.pretrained_model_name_or_path, device=precision.device, dtype=precision.weight_dtype,
                           v2=job.model.v2, v_prediction=True if job.model.v_parameterization else None, vae=job.model.vae or None)
    for note in base.notes:
        events.warning(note, setting="v_parameterization")
    base.unet.to(memory_format=unet_memory_format(precision.device.type, precision.weight_dtype))
    if base.family == "sdxl" and job.captions.clip_skip > 1:
        events.warning("clip_skip is ignored for SDXL: it always conditions on the penultimate layer of both "
                       "text encoders (as sd-scripts does)", "clip_skip")
    configure_attention(job, base, precision.device, events)
    compile_unet(job, base)
    unet_lr, text_lr = effective_lrs(job.optimisation)
    tensors = read_lora_file(job.network.network_weights)[0] if job.network.network_weights else None
    try:
        config = network_config_from_job(job, seed, base.family)
    except SettingError as error:  # validation names these first; a job that skipped it still gets a setting
        raise TrainingError(str(error), error.setting) from None
    if job.network.dim_from_weights:
        if tensors is None:
            raise TrainingError("needs a file in 'LoRA network weights'", "dim_from_weights")
        dim, alpha = rank_and_alpha_of(tensors)
        try:
            config = dataclasses.replace(config, dim=dim, alpha=alpha)
        except ValueError as error:
            raise TrainingError(f"rank {dim} and alpha {alpha:g} from {job.network.network_weights}: {error}",
                                "dim_from_weights") from None
        events.status("loading model", note=f"rank {dim} and alpha {alpha:g} taken from {job.network.network_weights}")
    network = apply_network(base.unet, base.text_encoders, config)
    network.cast_adapters(precision.adapter_dtype)
    if tensors is not None:
        tensors, unused = parts_not_trained(tensors, config.train_unet, config.train_text_encoder)
        for part, count in unused.items():
            events.warning(f"{job.network.network_weights}: its {count} {part} module(s) are not used, because this run "
                           f"does not train the {part} (its learning rate is 0)", "network_weights")
        try:
            network.load_kohya_state_dict(tensors)
        except ValueError as error:
            raise TrainingError(f"{job.network.network_weights} does not fit this network: {error}", "network_weights") from None

    processes.share_parameters([p for adapter in network.adapters for p in adapter.parameters()])
    groups = network.param_groups(unet_lr, text_lr)
    unet_ratio, text_ratio = loraplus_ratios(job.optimisation.loraplus_lr_ratio, job.optimisation.loraplus_unet_lr_ratio,
                                             job.optimisation.loraplus_text_encoder_lr_ratio)
    if unet_ratio or text_ratio:
        up_ids = up_parameter_ids(((n, p) for a in network.adapters for n, p in a.layer.named_parameters()),
                                  plus_markers(job.network.LoRA_type))
        groups = loraplus_groups(groups, up_ids, unet_ratio, text_ratio)
    if not groups:
        raise TrainingError("nothing to train: no LoRA modules were created with these settings", "network_dim")
    optimizer_args = parse_optimizer_args(job.optimisation.optimizer_args)
    for setting, message in optimizer_warnings(job.optimisation.optimizer, optimizer_args, {g["name"]: g["lr"] for g in groups}):
        events.warning(message, setting)
    optimizer = build_optimizer(job.optimisation.optimizer, groups, job.optimisation.learning_rate, optimizer_args)
    if job.optimisation.lr_scheduler_type:
        lr_scheduler = build_typed_scheduler(optimizer, job.optimisation.lr_scheduler_type, job.optimisation.lr_scheduler_args)
    else:
        try:
            lr_scheduler = build_lr_scheduler(
                optimizer, scheduler=job.optimisation.lr_scheduler, total_steps=sched.total_steps,
                warmup_steps=sched.warmup_steps, num_cycles=job.optimisation.lr_scheduler_num_cycles or 1,
                power=job.optimisation.lr_scheduler_power or 1.0,
                options=named_scheduler_options(job.optimisation.lr_scheduler, job.optimisation.lr_scheduler_args))
        except SettingError:
            raise
        except ValueError as error:
            setting, _, message = str(error).partition(": ")
            raise TrainingError(message or str(error), setting if message else "lr_scheduler") from None
    train_te = any(g["name"].startswith("text_encoder") for g in groups)
    text_cache = None if train_te else text_embedding_cache(base)
    noise_generator = torch.Generator(device=precision.device).manual_seed(seed)
    return Session(job=job, run_dir=run_dir, seed=seed, precision=precision, data=data, schedule=sched,
                   base=base, network=network, optimizer=optimizer, lr_scheduler=lr_scheduler,
                   group_names=[g["name"] for g in groups], train_text_encoder=train_te, text_cache=text_cache,
                   alphas_cumprod=sd_alphas_cumprod().to(precision.device), noise_generator=noise_generator,
                   processes=processes,
                   scaler=grad_scaler(precision.device.type, precision.adapter_dtype) if precision.use_grad_scaler else None,
                   memory_estimate=plan["memory"])


def start_process_noise(session: Session) -> None:
    """From here each process draws its own noise: the main one goes on with the run's generator (what one
    process would draw), the others restart theirs from their own seed. Called after the latent cache, which
    every process encodes alike."""
    if session.processes.rank:
        session.noise_generator.manual_seed(process_seed(session.seed, session.processes.rank))


def _report_progress(events: EventWriter, done: int, total: int) -> None:
    events.status("caching latents", done=done, total=total)


def cache_latents(session: Session, events: EventWriter) -> None:
    """Encode every image once with the VAE (in memory, and on disk when asked)."""
    job, base, device = session.job, session.base, session.precision.device
    if not (job.data.cache_latents or job.data.cache_latents_to_disk):
        return
    processes = session.processes
    disk_first = job.data.cache_latents_to_disk and processes.world_size > 1
    if disk_first and not processes.is_main:
        processes.barrier()  # the main process writes the disk cache first; the others then read it
    events.status("caching latents")

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pixels = pixels.to(device, base.vae.dtype)
            return base.vae.encode(pixels).latent_dist.sample(generator=session.noise_generator).float().cpu()

    encoded, reused = session.data.cache_latents(
        encode, job.data.vae_batch_size, disk=job.data.cache_latents_to_disk, encoder_id=str(base.vae_path or base.source_path),
        cache_suffix="sdxl" if base.family == "sdxl" else "sd", skip_cache_check=job.data.skip_cache_check,
        progress=lambda done, total: _report_progress(events, done, total))
    events.status("caching latents", encoded=encoded, reused=reused,
                  note=f"{encoded} image(s) encoded by the VAE, {reused} reused from the disk cache")
    if disk_first and processes.is_main:
        processes.barrier()
