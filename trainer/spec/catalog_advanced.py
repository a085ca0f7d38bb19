"""Settings of the Advanced tab, its Weights / Blocks / Conv inner tabs, and the Samples tab."""
from __future__ import annotations

from .fields import parse_block_alphas, parse_block_dims, parse_half_lr_weights, parse_mid_lr_weight
from .names import parse_tracker_name
from .setting import Setting
from .tables import (
    CONV_LORA_TYPES, LORA_TYPES, MAX_NORM_TYPES, NO_BLOCK_TYPES, RANK_DROPOUT_TYPES, REGULARIZED_TYPES,
    SCHEDULERS_WITH_CYCLES, SCHEDULERS_WITH_POWER,
)

# Block settings: the types sd-scripts applies them to (networks.lora, networks.dylora, networks.lora_fa; ours
# also LoHa).
_BLOCK_TYPES = tuple(t for t in LORA_TYPES if t not in NO_BLOCK_TYPES)
_CONV_BLOCK_TYPES = tuple(t for t in CONV_LORA_TYPES if t in _BLOCK_TYPES)
_NOT_LYCORIS = (" Not for the LyCORIS/… types and Kohya LoKr (LyCORIS and sd-scripts' networks.lokr take no "
                "block settings).")

SAMPLERS = (
    "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
    "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
)

WEIGHTS_BLOCKS_CONV = (
    Setting("down_lr_weight", "str", "", "Down LR weights", tab="weights", group="network", visible_when=("LoRA_type", _BLOCK_TYPES), parser=parse_half_lr_weights,
            help="Learning-rate weight (0–1) of each of the 12 down blocks IN0–IN11, as 12 numbers (SDXL: 9, "
                 "IN00–IN08), or a curve: sine, cosine, linear, reverse_linear or zeros, optionally +base "
                 "(e.g. sine+0.2). Blank: 1 everywhere." + _NOT_LYCORIS),
    Setting("mid_lr_weight", "str", "", "Mid LR weights", tab="weights", group="network", visible_when=("LoRA_type", _BLOCK_TYPES), parser=parse_mid_lr_weight,
            help="Learning-rate weight (0–1) of the middle block (SDXL: 3 numbers, one per middle block). "
                 "Blank: 1." + _NOT_LYCORIS),
    Setting("up_lr_weight", "str", "", "Up LR weights", tab="weights", group="network", visible_when=("LoRA_type", _BLOCK_TYPES), parser=parse_half_lr_weights,
            help="Learning-rate weight (0–1) of each of the 12 up blocks OUT0–OUT11, as 12 numbers (SDXL: 9) "
                 "or a curve." + _NOT_LYCORIS),
    Setting("block_lr_zero_threshold", "float", None, "Blocks LR zero threshold", tab="weights", group="network", visible_when=("LoRA_type", _BLOCK_TYPES),
            minimum=0, maximum=1, optional=True,
            help="Blocks whose LR weight is at or below this get no LoRA module at all. Blank: 0." + _NOT_LYCORIS),
    Setting("block_dims", "str", "", "Block dims", tab="blocks", group="network", parser=parse_block_dims,
            visible_when=("LoRA_type", _BLOCK_TYPES),
            help="Rank of each of the 25 blocks IN0–IN11, MID, OUT0–OUT11 (whole numbers; 0 = no module); "
                 "SDXL: 23 blocks EMB, IN00–IN08, MID00–MID02, OUT00–OUT08, END. Blocks without attention "
                 "ignore it. Blank: the network rank everywhere." + _NOT_LYCORIS),
    Setting("block_alphas", "str", "", "Block alphas", tab="blocks", group="network", parser=parse_block_alphas,
            visible_when=("LoRA_type", _BLOCK_TYPES),
            help="Alpha of each of the 25 blocks (SDXL: 23). Blank: the network alpha everywhere." + _NOT_LYCORIS),
    Setting("conv_block_dims", "str", "", "Conv dims", tab="conv", group="network", parser=parse_block_dims,
            visible_when=("LoRA_type", _CONV_BLOCK_TYPES),
            help="Rank of the 3×3 convolution adapters of each of the 25 blocks (SDXL: 23; LoCon-style types). "
                 "Blank: the convolution rank everywhere." + _NOT_LYCORIS),
    Setting("conv_block_alphas", "str", "", "Conv alphas", tab="conv", group="network", parser=parse_block_alphas,
            visible_when=("LoRA_type", _CONV_BLOCK_TYPES),
            help="Alpha of the 3×3 convolution adapters of each of the 25 blocks (SDXL: 23). "
                 "Blank: the convolution alpha." + _NOT_LYCORIS),
)

REGULARIZERS = (
    Setting("scale_weight_norms", "float", 0.0, "Scale weight norms", tab="advanced", group="network",
            section="Regularizers", minimum=0, maximum=10, visible_when=("LoRA_type", MAX_NORM_TYPES),
            help="Max-norm regularisation: after each step every module whose weight change ΔW has a norm above "
                 "this is scaled back to it (the run shows how many were scaled and the average and largest "
                 "norm). 0: off; 1 is common."),
    Setting("network_dropout", "float", 0.0, "Network dropout", tab="advanced", group="network",
            section="Regularizers", minimum=0, maximum=1, visible_when=("LoRA_type", REGULARIZED_TYPES),
            help="Dropout on the adapters' output while training (0: off; 0.1–0.5 typical)."),
    Setting("rank_dropout", "float", 0.0, "Rank dropout", tab="advanced", group="network", section="Regularizers",
            minimum=0, maximum=1, visible_when=("LoRA_type", RANK_DROPOUT_TYPES),
            help="Drop each rank of an adapter with this probability at every step (0: off)."),
    Setting("module_dropout", "float", 0.0, "Module dropout", tab="advanced", group="network",
            section="Regularizers", minimum=0, maximum=1, visible_when=("LoRA_type", RANK_DROPOUT_TYPES),
            help="Skip a whole adapter with this probability at every step (0: off)."),
)

ADVANCED = (
    Setting("no_token_padding", "bool", False, "No token padding", tab="advanced", group="captions", section="Captions",
            help="Pad captions only to the longest caption of the batch instead of to the full 75-token "
                 "window, so the UNet attends to fewer padding tokens."),
    Setting("gradient_accumulation_steps", "int", 1, "Gradient accumulation steps", tab="advanced", group="optimisation",
            section="Steps", minimum=1, maximum=120,
            help="Add up the gradients of this many batches before each weight update: like a bigger "
                 "batch without its memory, with proportionally fewer steps."),
    Setting("weighted_captions", "bool", False, "Weighted captions", tab="advanced", group="captions", section="Captions",
            help="Read (word:1.2) and [word] emphasis in captions, as the A1111 web UI does in prompts. "
                 "Avoid commas inside the brackets."),
    Setting("masked_loss", "bool", False, "Masked loss", tab="advanced", group="noise_loss", section="Loss",
            help="Weight the loss by a mask per image (white = learn, black = ignore), brought to the latent size "
                 "by area averaging. As in sd-scripts the masks come from a dataset config (dataset_config): "
                 "subsets with conditioning_data_dir (a folder of mask images named like the images; their red "
                 "channel) or alpha_mask = true (the images' alpha channels, which mask the loss even with this "
                 "off). On without any mask: refused."),
    Setting("prior_loss_weight", "float", 1.0, "Prior loss weight", tab="advanced", group="noise_loss", section="Loss",
            minimum=0, maximum=1,
            help="Weight of the regularization images' loss (0–1). Lower: the LoRA follows your images "
                 "more and the class less. No effect without a regularization folder."),
    Setting("lr_scheduler_num_cycles", "int", None, "LR number of cycles", tab="advanced", group="optimisation",
            section="Learning rate", minimum=1, maximum=1000, optional=True,
            visible_when=("lr_scheduler", SCHEDULERS_WITH_CYCLES),
            help="How many times cosine_with_restarts restarts from the full rate. Blank: 1."),
    Setting("lr_scheduler_power", "float", None, "LR power", tab="advanced", group="optimisation",
            section="Learning rate", minimum=0, maximum=100, optional=True,
            visible_when=("lr_scheduler", SCHEDULERS_WITH_POWER),
            help="Exponent of the polynomial scheduler: higher falls faster at first. Blank: 1 (linear)."),
    Setting("additional_parameters", "str", "", "Additional parameters", tab="advanced", group="launch", section="Other",
            help="More settings as sd-scripts arguments, --name value or --name=value, by this page's key names "
                 "or sd-scripts' (--max_grad_norm=0.5, --optimizer_type AdamW, --network_train_unet_only, "
                 "--lr_scheduler_args T_max=1000 eta_min=0). They override the form. An argument that maps to "
                 "no setting is refused, by name."),
    Setting("save_every_n_steps", "int", 0, "Save every N steps", tab="advanced", group="saving", section="Saving", minimum=0,
            help="Also save an intermediate LoRA every N steps. 0: off."),
    Setting("save_last_n_steps", "int", 0, "Save last N steps", tab="advanced", group="saving", section="Saving", minimum=0,
            help="With step saving on, delete step files older than this many steps. 0: keep them all."),
    Setting("save_last_n_epochs", "int", 0, "Save last N epochs", tab="advanced", group="saving", section="Saving",
            minimum=0,
            help="Keep only the last N epoch files: older ones are deleted as new ones are saved. 0: keep all."),
    Setting("save_last_n_epochs_state", "int", 0, "Save last N epochs state", tab="advanced", group="saving",
            section="Saving", minimum=0,
            help="Keep only the last N epoch training-state folders. 0: as Save last N epochs."),
    Setting("save_last_n_steps_state", "int", 0, "Save last N steps state", tab="advanced", group="saving",
            section="Saving", minimum=0,
            help="With step saving on, delete step state folders older than this many steps. 0: as Save last "
                 "N steps."),
    Setting("save_state_on_train_end", "bool", False, "Save training state at end of training", tab="advanced",
            group="saving", section="Saving",
            help="Write the final training state (last-state folder) even when 'Save training state' is off."),
    Setting("keep_tokens", "int", 0, "Keep n tokens", tab="advanced", group="captions", section="Captions", minimum=0, maximum=32,
            help="With shuffled captions, the first N comma-separated tags stay in front (e.g. the trigger word)."),
    Setting("clip_skip", "int", 1, "Clip skip", tab="advanced", group="captions", section="Captions", minimum=1, maximum=12,
            help="Which text-encoder layer conditions the UNet, counted from the end: 1 = the last layer "
                 "(most models), 2 = the one before (NovelAI-derived anime models)."),
    Setting("max_token_length", "choice", 75, "Max Token Length", tab="advanced", group="captions", section="Captions",
            choices=(75, 150, 225),
            help="Longest caption in tokens. Past 75, captions are encoded in 75-token windows and joined."),
    Setting("full_fp16", "bool", False, "Full fp16 training", tab="advanced", group="launch", section="Precision",
            help="Keep even the LoRA weights and gradients in fp16 (needs mixed precision fp16): least "
                 "memory, some risk to accuracy. Off by default. Needs a GPU: on CPU the run stays fp32 "
                 "with a warning."),
    Setting("full_bf16", "bool", False, "Full bf16 training (experimental)", tab="advanced", group="launch",
            section="Precision",
            help="Keep even the LoRA weights, gradients and optimizer state in bf16 (needs mixed precision "
                 "bf16): least memory, some loss of accuracy. Works on CPU too."),
    Setting("fp8_base", "bool", False, "fp8 base", tab="advanced", group="launch", section="Precision",
            implemented=False,
            help="sd-scripts: store the frozen base model's weights in float8 (e4m3) on a CUDA GPU and compute in "
                 "mixed precision, for less memory. Not implemented in LoRA Loom (its model loader keeps 16- or "
                 "32-bit weights), so turning it on is refused rather than ignored; a CPU could not use it either "
                 "(no fp8 matmuls). Use mixed precision bf16 for the nearest saving."),
    Setting("highvram", "bool", False, "highvram", tab="advanced", group="launch", section="Performance",
            help="sd-scripts: do not free the CUDA cache after each latent-caching batch (faster on big GPUs). "
                 "LoRA Loom never frees it during caching, so it already behaves as with highvram on: the switch "
                 "changes nothing here and is kept so kohya_ss configs keep it."),
    Setting("gradient_checkpointing", "bool", False, "Gradient checkpointing", tab="advanced", group="launch",
            section="Performance",
            help="Recompute activations during the backward pass instead of storing them: much less memory, "
                 "about a quarter slower, same result."),
    Setting("shuffle_caption", "bool", False, "Shuffle caption", tab="advanced", group="captions", section="Captions",
            help="Shuffle the comma-separated tags of each caption every time it is used."),
    Setting("persistent_data_loader_workers", "bool", False, "Persistent data loaders", tab="advanced", group="data",
            section="Performance",
            help="Keep data-loading worker processes alive between epochs instead of restarting them."),
    Setting("mem_eff_attn", "bool", False, "Memory efficient attention", tab="advanced", group="launch", section="Performance",
            help="Compute attention in slices to save memory, at some cost in speed."),
    Setting("xformers", "bool", True, "Use xformers", tab="advanced", group="launch", section="Performance",
            help="Use xformers attention where it is installed and a GPU is present; otherwise PyTorch's "
                 "own scaled-dot-product attention is used, with a note in the log."),
    Setting("color_aug", "bool", False, "Color augmentation", tab="advanced", group="data", section="Augmentation",
            help="Randomly shift the hue of images as they are loaded. Not with cached latents."),
    Setting("flip_aug", "bool", False, "Flip augmentation", tab="advanced", group="data", section="Augmentation",
            help="Randomly mirror images left-right. Good for symmetric subjects; works with cached latents."),
    Setting("min_snr_gamma", "float", 0.0, "Min SNR gamma", tab="advanced", group="noise_loss", section="Loss",
            minimum=0, maximum=20,
            help="Down-weights the loss of low-noise timesteps (Min-SNR weighting, Hang et al. 2023); "
                 "5 is the paper's choice. 0: off."),
    Setting("bucket_no_upscale", "bool", True, "Don't upscale bucket resolution", tab="advanced", group="data",
            section="Buckets",
            help="Never enlarge small images: each gets a bucket of its own size (rounded down to the "
                 "bucket step) instead of one from the min–max range."),
    Setting("bucket_reso_steps", "int", 64, "Bucket resolution steps", tab="advanced", group="data", section="Buckets",
            minimum=1, maximum=256,
            help="Bucket sides are multiples of this many pixels; the excess is cropped."),
    Setting("random_crop", "bool", False, "Random crop instead of center crop", tab="advanced", group="data",
            section="Augmentation",
            help="Crop the excess at a random place instead of the centre. Not with cached latents."),
    Setting("noise_offset_type", "choice", "Original", "Noise offset type", tab="advanced", group="noise_loss", section="Noise",
            choices=("Original", "Multires"),
            help="Original adds a constant offset per channel; Multires adds noise at several resolutions."),
    Setting("noise_offset", "float", 0.0, "Noise offset", tab="advanced", group="noise_loss", section="Noise",
            minimum=0, maximum=1, visible_when=("noise_offset_type", ("Original",)),
            help="Strength of the per-channel offset noise (0–1). About 0.1 lets the LoRA learn darker darks "
                 "and brighter brights. 0: off."),
    Setting("adaptive_noise_scale", "float", 0.0, "Adaptive noise scale", tab="advanced", group="noise_loss", section="Noise",
            minimum=-1, maximum=1, visible_when=("noise_offset_type", ("Original",)),
            help="Adds this times the mean absolute latent value to the noise offset, so brighter or darker "
                 "images get more (positive) or less (negative). Needs a noise offset."),
    Setting("multires_noise_iterations", "int", 0, "Multires noise iterations", tab="advanced", group="noise_loss", section="Noise",
            minimum=0, maximum=64, visible_when=("noise_offset_type", ("Multires",)),
            help="How many resolutions of noise to add; 6 is a good value. 0: off."),
    Setting("multires_noise_discount", "float", 0.0, "Multires noise discount", tab="advanced", group="noise_loss",
            section="Noise", minimum=0, maximum=1, visible_when=("noise_offset_type", ("Multires",)),
            help="How much weaker each coarser level is (0–1); 0 means 0.3. Lower for small datasets."),
    Setting("noise_offset_random_strength", "bool", False, "Noise offset random strength", tab="advanced",
            group="noise_loss", section="Noise", visible_when=("noise_offset_type", ("Original",)),
            help="Each batch uses a random noise offset between 0 and the Noise offset instead of the full value."),
    Setting("ip_noise_gamma", "float", 0.0, "IP noise gamma", tab="advanced", group="noise_loss", section="Noise",
            minimum=0, maximum=1,
            help="Input perturbation (Ning et al. 2023): the latents are noised with extra noise × gamma while "
                 "the UNet still learns the original noise, which reduces exposure bias. 0.1 is typical. 0: off."),
    Setting("ip_noise_gamma_random_strength", "bool", False, "IP noise gamma random strength", tab="advanced",
            group="noise_loss", section="Noise",
            help="Each batch uses a random IP noise gamma between 0 and the value set."),
    Setting("min_timestep", "int", 0, "Min Timestep", tab="advanced", group="noise_loss", section="Noise",
            minimum=0, maximum=1000,
            help="Lowest diffusion timestep trained (0–999). Raising it skips the finest-detail steps."),
    Setting("max_timestep", "int", 1000, "Max Timestep", tab="advanced", group="noise_loss", section="Noise",
            minimum=0, maximum=1000,
            help="Timesteps are drawn below this (1–1000; 1000 = up to the noisiest step). Equal to Min "
                 "Timestep: that one timestep only."),
    Setting("loss_type", "choice", "l2", "Loss type", tab="advanced", group="noise_loss", section="Loss",
            choices=("l2", "l1", "huber", "smooth_l1"),
            help="l2: squared error (the usual); l1: absolute error; huber and smooth_l1: pseudo-Huber losses, "
                 "squared for small errors and linear for large ones, more robust to odd images."),
    Setting("huber_schedule", "choice", "snr", "Huber schedule", tab="advanced", group="noise_loss", section="Loss",
            choices=("snr", "exponential", "constant"), visible_when=("loss_type", ("huber", "smooth_l1")),
            help="How Huber's c changes with the timestep: snr (by the noise level), exponential (from the "
                 "Huber scale at t=0 to c at t=1000) or constant (c × scale)."),
    Setting("huber_c", "float", 0.1, "Huber C", tab="advanced", group="noise_loss", section="Loss",
            minimum=0, maximum=1, visible_when=("loss_type", ("huber", "smooth_l1")),
            help="Huber's c: errors below it count as squared, above it as linear (0–1)."),
    Setting("huber_scale", "float", 1.0, "Huber scale", tab="advanced", group="noise_loss", section="Loss",
            minimum=0, maximum=10, visible_when=("loss_type", ("huber", "smooth_l1")),
            help="Multiplies c in the exponential and constant schedules."),
    Setting("debiased_estimation_loss", "bool", False, "Debiased Estimation loss", tab="advanced", group="noise_loss",
            section="Loss",
            help="Weight each timestep's loss by 1/√SNR (v-prediction: 1/(SNR+1)), Yu et al. 2024, so the "
                 "noisier steps count more."),
    Setting("scale_v_pred_loss_like_noise_pred", "bool", False, "Scale v prediction loss", tab="advanced",
            group="noise_loss", section="Loss",
            help="For v-prediction models: scale the loss by SNR/(SNR+1) so timesteps weigh as they do for "
                 "noise prediction. No effect on noise-prediction models."),
    Setting("v_pred_like_loss", "float", 0.0, "V Pred like loss", tab="advanced", group="noise_loss", section="Loss",
            minimum=0, maximum=1,
            help="Add this fraction of a v-prediction-like loss (loss × (SNR+1)/SNR) to a noise-prediction "
                 "model's loss. 0: off."),
    Setting("caption_dropout_every_n_epochs", "int", 0, "Dropout caption every n epochs", tab="advanced", group="captions",
            section="Captions", minimum=0,
            help="Train without any captions on every Nth epoch. 0: never."),
    Setting("caption_dropout_rate", "float", 0.0, "Rate of caption dropout", tab="advanced", group="captions", section="Captions",
            minimum=0, maximum=1,
            help="Fraction of images trained with an empty caption, chosen at random each time (0–1)."),
    Setting("vae_batch_size", "int", 0, "VAE batch size", tab="advanced", group="data", section="Performance",
            minimum=0, maximum=64,
            help="Images encoded at once while caching latents. 0: the train batch size."),
    Setting("save_state", "bool", False, "Save training state", tab="advanced", group="saving", section="Saving",
            help="Save the optimizer, scheduler and random state with each LoRA (a …-state folder; the final "
                 "one is last-state) so the run can be resumed exactly."),
    Setting("resume", "path", "", "Resume from saved training state", tab="advanced", group="saving", section="Saving",
            help="A …-state folder from an earlier run with 'Save training state'; training continues there."),
    Setting("max_train_epochs", "int", None, "Max train epoch", tab="advanced", group="optimisation", section="Steps",
            minimum=1, optional=True,
            help="Train this many epochs instead of Epoch and Max train steps (as sd-scripts: it replaces "
                 "both). Blank: Epoch, or Max train steps when set."),
    Setting("max_data_loader_n_workers", "int", 0, "Max num workers for DataLoader", tab="advanced", group="data",
            section="Performance", minimum=0, maximum=64,
            help="Worker processes that load images in parallel. 0: load in the training process."),
    Setting("wandb_api_key", "str", "", "WANDB API Key", tab="advanced", group="logging", section="Logging", secret=True,
            help="Your Weights & Biases key, only for wandb logging. It is passed to the trainer through the "
                 "environment and never written to job files, presets, metadata or logs. WANDB_API_KEY in the "
                 "environment works too."),
    Setting("log_with", "choice", "tensorboard", "Logging", tab="advanced", group="logging", section="Logging",
            choices=("tensorboard", "wandb", "all"),
            help="Where training curves are logged besides this page: TensorBoard files in the logging "
                 "folder, Weights & Biases, or all (both)."),
    Setting("wandb_run_name", "str", "", "WANDB run name", tab="advanced", group="logging", section="Logging",
            visible_when=("log_with", ("wandb", "all")),
            help="Name of the Weights & Biases run. Blank: the output name."),
    Setting("log_tracker_name", "str", "", "Log tracker name", tab="advanced", group="logging", section="Logging",
            parser=parse_tracker_name,
            help="The tracker's project: the W&B project (blank: lora-loom) and a sub-folder of the run's "
                 "TensorBoard logs (blank: none)."),
    Setting("log_tracker_config", "path", "", "Log tracker config", tab="advanced", group="logging",
            section="Logging",
            help="A TOML file with a [wandb] and/or [tensorboard] table of extra arguments for the tracker "
                 "(e.g. entity, tags). Never put the W&B key here: use the key field or WANDB_API_KEY."),
    Setting("log_config", "bool", False, "Log config", tab="advanced", group="logging", section="Logging",
            help="Send the run's settings to the tracker (secrets left out)."),
    Setting("max_grad_norm", "float", 1.0, "Max grad norm", tab="advanced", group="optimisation", section="Steps",
            minimum=0, maximum=1000,
            help="Gradients are clipped to this norm before each update. 0: no clipping."),
)

SAMPLES = (
    Setting("sample_every_n_steps", "int", 0, "Sample every n steps", tab="samples", group="sampling", minimum=0,
            help="Generate the sample prompts every N steps. 0: off."),
    Setting("sample_every_n_epochs", "int", 0, "Sample every n epochs", tab="samples", group="sampling", minimum=0,
            help="Generate the sample prompts after every N epochs; when set, it replaces the step interval."),
    Setting("sample_sampler", "choice", "euler_a", "Sample sampler", tab="samples", group="sampling", choices=SAMPLERS,
            help="The sampler used for sample images (the k_ names are the same samplers)."),
    Setting("sample_prompts", "text", "", "Sample prompts", tab="samples", group="sampling",
            help="One prompt per line. Options after the prompt: --n negative prompt, --w width, --h height, "
                 "--d seed, --l CFG scale, --s steps. Example: a cat, best quality --n blurry --w 512 --h 512 "
                 "--d 1 --l 7 --s 28"),
)
