"""The job, typed by section: GENERATED from the catalog by ``python -m trainer.spec.codegen``; do not edit.

Each part of the trainer reads its own section (``job.network.network_dim``); rules derived from a section
are in ``trainer.spec.rules``. The job file stays flat TOML with kohya_ss's key names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ModelSection:
    """The base model."""

    pretrained_model_name_or_path: str
    v2: bool
    v_parameterization: bool
    vae: str


@dataclass(frozen=True, slots=True)
class DataSection:
    """Images, folders, buckets and the data loader."""

    train_data_dir: str
    reg_data_dir: str
    dataset_config: str
    train_batch_size: int
    caption_extension: str
    cache_latents: bool
    cache_latents_to_disk: bool
    skip_cache_check: bool
    max_resolution: str
    enable_bucket: bool
    min_bucket_reso: int
    max_bucket_reso: int
    persistent_data_loader_workers: bool
    color_aug: bool
    flip_aug: bool
    bucket_no_upscale: bool
    bucket_reso_steps: int
    random_crop: bool
    vae_batch_size: int
    max_data_loader_n_workers: int


@dataclass(frozen=True, slots=True)
class CaptionsSection:
    """Caption processing and text encoding."""

    no_token_padding: bool
    weighted_captions: bool
    keep_tokens: int
    clip_skip: int
    max_token_length: Literal[75, 150, 225]
    shuffle_caption: bool
    caption_dropout_every_n_epochs: int
    caption_dropout_rate: float


@dataclass(frozen=True, slots=True)
class NetworkSection:
    """The LoRA network."""

    LoRA_type: Literal['Standard', 'LoCon', 'LoHa', 'DyLoRA', 'LoRA-FA', 'Kohya LoKr', 'LyCORIS/LoKr', 'LyCORIS/iA3', 'LyCORIS/GLoRA', 'LyCORIS/BOFT', 'LyCORIS/Diag-OFT', 'LyCORIS/Native Fine-Tuning']
    network_weights: str
    dim_from_weights: bool
    network_dim: int
    network_alpha: float
    conv_dim: int
    conv_alpha: float
    unit: int
    LyCORIS_preset: str
    factor: int
    decompose_both: bool
    use_cp: bool
    use_tucker: bool
    use_scalar: bool
    dora_wd: bool
    bypass_mode: bool
    rank_dropout_scale: bool
    train_norm: bool
    constrain: float
    rescaled: bool
    train_on_input: bool
    down_lr_weight: str
    mid_lr_weight: str
    up_lr_weight: str
    block_lr_zero_threshold: float | None
    block_dims: str
    block_alphas: str
    conv_block_dims: str
    conv_block_alphas: str
    scale_weight_norms: float
    network_dropout: float
    rank_dropout: float
    module_dropout: float


@dataclass(frozen=True, slots=True)
class OptimisationSection:
    """Optimizer, learning rates, schedule and run length."""

    epoch: int
    max_train_steps: int
    seed: int | None
    learning_rate: float
    lr_scheduler: Literal['adafactor', 'constant', 'constant_with_warmup', 'cosine', 'cosine_with_restarts', 'linear', 'polynomial', 'piecewise_constant', 'cosine_with_min_lr', 'inverse_sqrt', 'warmup_stable_decay']
    lr_warmup: float
    lr_warmup_steps: int
    lr_scheduler_type: str
    lr_scheduler_args: str
    optimizer: str
    optimizer_args: str
    text_encoder_lr: float | None
    unet_lr: float | None
    loraplus_lr_ratio: float
    loraplus_unet_lr_ratio: float
    loraplus_text_encoder_lr_ratio: float
    stop_text_encoder_training: float
    gradient_accumulation_steps: int
    lr_scheduler_num_cycles: int | None
    lr_scheduler_power: float | None
    max_train_epochs: int | None
    max_grad_norm: float


@dataclass(frozen=True, slots=True)
class NoiseLossSection:
    """Noise and loss weighting."""

    masked_loss: bool
    prior_loss_weight: float
    min_snr_gamma: float
    noise_offset_type: Literal['Original', 'Multires']
    noise_offset: float
    adaptive_noise_scale: float
    multires_noise_iterations: int
    multires_noise_discount: float
    noise_offset_random_strength: bool
    ip_noise_gamma: float
    ip_noise_gamma_random_strength: bool
    min_timestep: int
    max_timestep: int
    loss_type: Literal['l2', 'l1', 'huber', 'smooth_l1']
    huber_schedule: Literal['snr', 'exponential', 'constant']
    huber_c: float
    huber_scale: float
    debiased_estimation_loss: bool
    scale_v_pred_loss_like_noise_pred: bool
    v_pred_like_loss: float


@dataclass(frozen=True, slots=True)
class SavingSection:
    """Output files and training state."""

    output_name: str
    save_model_as: Literal['safetensors', 'ckpt']
    training_comment: str
    metadata_title: str
    metadata_author: str
    metadata_description: str
    metadata_license: str
    metadata_tags: str
    output_dir: str
    save_every_n_epochs: int
    save_precision: Literal['float', 'fp16', 'bf16']
    save_every_n_steps: int
    save_last_n_steps: int
    save_last_n_epochs: int
    save_last_n_epochs_state: int
    save_last_n_steps_state: int
    save_state_on_train_end: bool
    save_state: bool
    resume: str


@dataclass(frozen=True, slots=True)
class SamplingSection:
    """Sample images during training."""

    sample_every_n_steps: int
    sample_every_n_epochs: int
    sample_sampler: Literal['ddim', 'pndm', 'lms', 'euler', 'euler_a', 'heun', 'dpm_2', 'dpm_2_a', 'dpmsolver', 'dpmsolver++', 'dpmsingle', 'k_lms', 'k_euler', 'k_euler_a', 'k_dpm_2', 'k_dpm_2_a']
    sample_prompts: str


@dataclass(frozen=True, slots=True)
class LoggingSection:
    """Logs and trackers."""

    logging_dir: str
    wandb_api_key: str
    log_with: Literal['tensorboard', 'wandb', 'all']
    wandb_run_name: str
    log_tracker_name: str
    log_tracker_config: str
    log_config: bool


@dataclass(frozen=True, slots=True)
class LaunchSection:
    """Precision, memory and process settings."""

    mixed_precision: Literal['no', 'fp16', 'bf16']
    num_cpu_threads_per_process: int
    additional_parameters: str
    full_fp16: bool
    full_bf16: bool
    fp8_base: bool
    highvram: bool
    gradient_checkpointing: bool
    mem_eff_attn: bool
    xformers: bool
    num_processes: int
    num_machines: int
    multi_gpu: bool
    gpu_ids: str
    main_process_port: int
    dynamo_backend: Literal['no', 'eager', 'aot_eager', 'inductor', 'aot_ts_nvfuser', 'nvprims_nvfuser', 'cudagraphs', 'ofi', 'fx2trt', 'onnxrt', 'tensorrt', 'ipex', 'tvm']
    dynamo_mode: Literal['default', 'reduce-overhead', 'max-autotune']
    dynamo_use_fullgraph: bool
    dynamo_use_dynamic: bool
    extra_accelerate_launch_args: str


SECTION_CLASSES: dict[str, Any] = {
    'model': ModelSection,
    'data': DataSection,
    'captions': CaptionsSection,
    'network': NetworkSection,
    'optimisation': OptimisationSection,
    'noise_loss': NoiseLossSection,
    'saving': SavingSection,
    'sampling': SamplingSection,
    'logging': LoggingSection,
    'launch': LaunchSection,
}
SECTION_OF_KEY: dict[str, str] = {
    'pretrained_model_name_or_path': 'model',
    'v2': 'model',
    'v_parameterization': 'model',
    'vae': 'model',
    'output_name': 'saving',
    'save_model_as': 'saving',
    'training_comment': 'saving',
    'metadata_title': 'saving',
    'metadata_author': 'saving',
    'metadata_description': 'saving',
    'metadata_license': 'saving',
    'metadata_tags': 'saving',
    'train_data_dir': 'data',
    'reg_data_dir': 'data',
    'dataset_config': 'data',
    'output_dir': 'saving',
    'logging_dir': 'logging',
    'LoRA_type': 'network',
    'network_weights': 'network',
    'dim_from_weights': 'network',
    'network_dim': 'network',
    'network_alpha': 'network',
    'conv_dim': 'network',
    'conv_alpha': 'network',
    'unit': 'network',
    'LyCORIS_preset': 'network',
    'factor': 'network',
    'decompose_both': 'network',
    'use_cp': 'network',
    'use_tucker': 'network',
    'use_scalar': 'network',
    'dora_wd': 'network',
    'bypass_mode': 'network',
    'rank_dropout_scale': 'network',
    'train_norm': 'network',
    'constrain': 'network',
    'rescaled': 'network',
    'train_on_input': 'network',
    'train_batch_size': 'data',
    'epoch': 'optimisation',
    'max_train_steps': 'optimisation',
    'save_every_n_epochs': 'saving',
    'caption_extension': 'data',
    'mixed_precision': 'launch',
    'save_precision': 'saving',
    'num_cpu_threads_per_process': 'launch',
    'seed': 'optimisation',
    'cache_latents': 'data',
    'cache_latents_to_disk': 'data',
    'skip_cache_check': 'data',
    'learning_rate': 'optimisation',
    'lr_scheduler': 'optimisation',
    'lr_warmup': 'optimisation',
    'lr_warmup_steps': 'optimisation',
    'lr_scheduler_type': 'optimisation',
    'lr_scheduler_args': 'optimisation',
    'optimizer': 'optimisation',
    'optimizer_args': 'optimisation',
    'text_encoder_lr': 'optimisation',
    'unet_lr': 'optimisation',
    'loraplus_lr_ratio': 'optimisation',
    'loraplus_unet_lr_ratio': 'optimisation',
    'loraplus_text_encoder_lr_ratio': 'optimisation',
    'max_resolution': 'data',
    'stop_text_encoder_training': 'optimisation',
    'enable_bucket': 'data',
    'min_bucket_reso': 'data',
    'max_bucket_reso': 'data',
    'down_lr_weight': 'network',
    'mid_lr_weight': 'network',
    'up_lr_weight': 'network',
    'block_lr_zero_threshold': 'network',
    'block_dims': 'network',
    'block_alphas': 'network',
    'conv_block_dims': 'network',
    'conv_block_alphas': 'network',
    'scale_weight_norms': 'network',
    'network_dropout': 'network',
    'rank_dropout': 'network',
    'module_dropout': 'network',
    'no_token_padding': 'captions',
    'gradient_accumulation_steps': 'optimisation',
    'weighted_captions': 'captions',
    'masked_loss': 'noise_loss',
    'prior_loss_weight': 'noise_loss',
    'lr_scheduler_num_cycles': 'optimisation',
    'lr_scheduler_power': 'optimisation',
    'additional_parameters': 'launch',
    'save_every_n_steps': 'saving',
    'save_last_n_steps': 'saving',
    'save_last_n_epochs': 'saving',
    'save_last_n_epochs_state': 'saving',
    'save_last_n_steps_state': 'saving',
    'save_state_on_train_end': 'saving',
    'keep_tokens': 'captions',
    'clip_skip': 'captions',
    'max_token_length': 'captions',
    'full_fp16': 'launch',
    'full_bf16': 'launch',
    'fp8_base': 'launch',
    'highvram': 'launch',
    'gradient_checkpointing': 'launch',
    'shuffle_caption': 'captions',
    'persistent_data_loader_workers': 'data',
    'mem_eff_attn': 'launch',
    'xformers': 'launch',
    'color_aug': 'data',
    'flip_aug': 'data',
    'min_snr_gamma': 'noise_loss',
    'bucket_no_upscale': 'data',
    'bucket_reso_steps': 'data',
    'random_crop': 'data',
    'noise_offset_type': 'noise_loss',
    'noise_offset': 'noise_loss',
    'adaptive_noise_scale': 'noise_loss',
    'multires_noise_iterations': 'noise_loss',
    'multires_noise_discount': 'noise_loss',
    'noise_offset_random_strength': 'noise_loss',
    'ip_noise_gamma': 'noise_loss',
    'ip_noise_gamma_random_strength': 'noise_loss',
    'min_timestep': 'noise_loss',
    'max_timestep': 'noise_loss',
    'loss_type': 'noise_loss',
    'huber_schedule': 'noise_loss',
    'huber_c': 'noise_loss',
    'huber_scale': 'noise_loss',
    'debiased_estimation_loss': 'noise_loss',
    'scale_v_pred_loss_like_noise_pred': 'noise_loss',
    'v_pred_like_loss': 'noise_loss',
    'caption_dropout_every_n_epochs': 'captions',
    'caption_dropout_rate': 'captions',
    'vae_batch_size': 'data',
    'save_state': 'saving',
    'resume': 'saving',
    'max_train_epochs': 'optimisation',
    'max_data_loader_n_workers': 'data',
    'wandb_api_key': 'logging',
    'log_with': 'logging',
    'wandb_run_name': 'logging',
    'log_tracker_name': 'logging',
    'log_tracker_config': 'logging',
    'log_config': 'logging',
    'max_grad_norm': 'optimisation',
    'num_processes': 'launch',
    'num_machines': 'launch',
    'multi_gpu': 'launch',
    'gpu_ids': 'launch',
    'main_process_port': 'launch',
    'dynamo_backend': 'launch',
    'dynamo_mode': 'launch',
    'dynamo_use_fullgraph': 'launch',
    'dynamo_use_dynamic': 'launch',
    'extra_accelerate_launch_args': 'launch',
    'sample_every_n_steps': 'sampling',
    'sample_every_n_epochs': 'sampling',
    'sample_sampler': 'sampling',
    'sample_prompts': 'sampling',
}


@dataclass(frozen=True, slots=True)
class Job:
    """A validated job: every setting, in its section."""

    spec_version: int
    model: ModelSection
    data: DataSection
    captions: CaptionsSection
    network: NetworkSection
    optimisation: OptimisationSection
    noise_loss: NoiseLossSection
    saving: SavingSection
    sampling: SamplingSection
    logging: LoggingSection
    launch: LaunchSection

    def get(self, key: str) -> Any:
        """A setting by its key, for code that walks the catalog (the form, checks, metadata)."""
        return getattr(getattr(self, SECTION_OF_KEY[key]), key)
