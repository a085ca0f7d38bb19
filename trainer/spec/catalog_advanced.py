"""Settings of the Advanced tab, its Weights / Blocks / Conv inner tabs, and the Samples tab."""
from __future__ import annotations

from .fields import parse_block_alphas, parse_block_dims, parse_half_lr_weights, parse_mid_lr_weight
from .setting import Setting
from .tables import LYCORIS_TYPES, LORA_TYPES, MAX_NORM_TYPES, RANK_DROPOUT_TYPES, REGULARIZED_TYPES

# Block settings: the types sd-scripts applies them to (networks.lora, networks.dylora; ours also LoHa).
_BLOCK_TYPES = tuple(t for t in LORA_TYPES if t not in LYCORIS_TYPES)

SAMPLERS = (
    "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
    "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
)

WEIGHTS_BLOCKS_CONV = (
    Setting("down_lr_weight", "str", "", "Down LR weights", tab="weights", group="network", visible_when=("LoRA_type", _BLOCK_TYPES), parser=parse_half_lr_weights,
            help="Learning-rate weight (0–1) of each of the 12 down blocks IN0–IN11, as 12 numbers (SDXL: 9, "
                 "IN00–IN08), or a curve: sine, cosine, linear, reverse_linear or zeros, optionally +base "
                 "(e.g. sine+0.2). Blank: 1 everywhere. Not for the LyCORIS/… types (LyCORIS takes no block settings, as in sd-scripts)."),
    Setting("mid_lr_weight", "str", "", "Mid LR weights", tab="weights", group="network", visible_when=("LoRA_type", _BLOCK_TYPES), parser=parse_mid_lr_weight,
            help="Learning-rate weight (0–1) of the middle block (SDXL: 3 numbers, one per middle block). "
                 "Blank: 1. Not for the LyCORIS/… types (LyCORIS takes no block settings, as in sd-scripts)."),
    Setting("up_lr_weight", "str", "", "Up LR weights", tab="weights", group="network", visible_when=("LoRA_type", _BLOCK_TYPES), parser=parse_half_lr_weights,
            help="Learning-rate weight (0–1) of each of the 12 up blocks OUT0–OUT11, as 12 numbers (SDXL: 9) "
                 "or a curve. Not for the LyCORIS/… types (LyCORIS takes no block settings, as in sd-scripts)."),
    Setting("block_lr_zero_threshold", "float", None, "Blocks LR zero threshold", tab="weights", group="network", visible_when=("LoRA_type", _BLOCK_TYPES),
            minimum=0, maximum=1, optional=True,
            help="Blocks whose LR weight is at or below this get no LoRA module at all. Blank: 0. Not for the LyCORIS/… types (LyCORIS takes no block settings, as in sd-scripts)."),
    Setting("block_dims", "str", "", "Block dims", tab="blocks", group="network", visible_when=("LoRA_type", _BLOCK_TYPES), parser=parse_block_dims,
            help="Rank of each of the 25 blocks IN0–IN11, MID, OUT0–OUT11 (whole numbers; 0 = no module); "
                 "SDXL: 23 blocks EMB, IN00–IN08, MID00–MID02, OUT00–OUT08, END. Blocks without attention "
                 "ignore it. Blank: the network rank everywhere. Not for the LyCORIS/… types (LyCORIS takes no block settings, as in sd-scripts)."),
    Setting("block_alphas", "str", "", "Block alphas", tab="blocks", group="network", visible_when=("LoRA_type", _BLOCK_TYPES), parser=parse_block_alphas,
            help="Alpha of each of the 25 blocks (SDXL: 23). Blank: the network alpha everywhere. Not for the LyCORIS/… types (LyCORIS takes no block settings, as in sd-scripts)."),
    Setting("conv_block_dims", "str", "", "Conv dims", tab="conv", group="network", visible_when=("LoRA_type", _BLOCK_TYPES), parser=parse_block_dims,
            help="Rank of the 3×3 convolution adapters of each of the 25 blocks (SDXL: 23; LoCon-style types). "
                 "Blank: the convolution rank everywhere. Not for the LyCORIS/… types (LyCORIS takes no block settings, as in sd-scripts)."),
    Setting("conv_block_alphas", "str", "", "Conv alphas", tab="conv", group="network", visible_when=("LoRA_type", _BLOCK_TYPES), parser=parse_block_alphas,
            help="Alpha of the 3×3 convolution adapters of each of the 25 blocks (SDXL: 23). "
                 "Blank: the convolution alpha. Not for the LyCORIS/… types (LyCORIS takes no block settings, as in sd-scripts)."),
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
    Setting("prior_loss_weight", "float", 1.0, "Prior loss weight", tab="advanced", group="noise_loss", section="Loss",
            minimum=0, maximum=1,
            help="Weight of the regularization images' loss (0–1). Lower: the LoRA follows your images "
                 "more and the class less. No effect without a regularization folder."),
    Setting("lr_scheduler_num_cycles", "int", None, "LR number of cycles", tab="advanced", group="optimisation",
            section="Learning rate", minimum=1, maximum=1000, optional=True,
            help="How many times cosine_with_restarts restarts from the full rate. Blank: 1."),
    Setting("lr_scheduler_power", "float", None, "LR power", tab="advanced", group="optimisation", section="Learning rate",
            minimum=0, maximum=100, optional=True,
            help="Exponent of the polynomial scheduler: higher falls faster at first. Blank: 1 (linear)."),
    Setting("additional_parameters", "str", "", "Additional parameters", tab="advanced", group="launch", section="Other",
            help="More settings as --name value pairs, using the key names of this page (for instance "
                 "--max_grad_norm 0.5). They override the form. Anything unknown is refused."),
    Setting("save_every_n_steps", "int", 0, "Save every N steps", tab="advanced", group="saving", section="Saving", minimum=0,
            help="Also save an intermediate LoRA every N steps. 0: off."),
    Setting("save_last_n_steps", "int", 0, "Save last N steps", tab="advanced", group="saving", section="Saving", minimum=0,
            help="With step saving on, delete step files older than this many steps. 0: keep them all."),
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
            help="A hard cap on epochs; training stops here even if Epoch asks for more. Blank: no cap."),
    Setting("max_data_loader_n_workers", "int", 0, "Max num workers for DataLoader", tab="advanced", group="data",
            section="Performance", minimum=0, maximum=64,
            help="Worker processes that load images in parallel. 0: load in the training process."),
    Setting("wandb_api_key", "str", "", "WANDB API Key", tab="advanced", group="logging", section="Logging", secret=True,
            help="Your Weights & Biases key, only for wandb logging. It is passed to the trainer through the "
                 "environment and never written to job files, presets, metadata or logs. WANDB_API_KEY in the "
                 "environment works too."),
    Setting("log_with", "choice", "tensorboard", "Logging", tab="advanced", group="logging", section="Logging",
            choices=("tensorboard", "wandb"),
            help="Where training curves are logged besides this page: TensorBoard files in the logging "
                 "folder, or Weights & Biases."),
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
