"""Settings of the Model, Folders and Basic tabs (kohya_ss key names; defaults from the seed)."""
from __future__ import annotations

from .fields import parse_optimizer_name, parse_resolution
from .names import parse_caption_extension, parse_output_name
from .setting import Setting
from .tables import (
    CONV_LORA_TYPES, DORA_TYPES, FULL_RANK, LOKR_TYPES, LORA_TYPES, LR_SCHEDULERS, LYCORIS_CAPABLE_TYPES, LYCORIS_TYPES, OFT_TYPES,
    OPTIMIZERS, RANK_DROPOUT_SCALE_TYPES, RANK_DROPOUT_TYPES, REGULARIZED_TYPES, SCALAR_TYPES,
    SCHEDULERS_WITHOUT_WARMUP, TUCKER_TYPES,
)

_LYCORIS_RUN = tuple(LYCORIS_CAPABLE_TYPES) + LYCORIS_TYPES


MODEL_AND_FOLDERS = (
    Setting("pretrained_model_name_or_path", "path", "", "Pretrained model", tab="model", group="model",
            help="The base Stable Diffusion model the LoRA is trained against: a local diffusers folder or a "
                 "single checkpoint file. Nothing is downloaded; the path must exist on this machine."),
    Setting("v2", "bool", False, "SD2.x model", tab="model", group="model",
            help="The base model is Stable Diffusion 2.x (OpenCLIP text encoder). The family is detected from the "
                 "weights; setting this makes the run refuse a model that is not SD2.x."),
    Setting("v_parameterization", "bool", False, "v-parameterization", tab="model", group="model",
            help="The model predicts velocity (v) instead of noise, as SD2.x 768-v models do. Off: as the model "
                 "declares it (a diffusers folder's scheduler, a file's model-spec metadata), else noise. "
                 "Suggested for single files that look like SD2.x-768-v."),
    Setting("vae", "path", "", "VAE", tab="model", group="model",
            help="Optional separate VAE to use instead of the model's own: a .safetensors/.ckpt file (original "
                 "or diffusers layout) or a diffusers folder."),
    Setting("output_name", "str", "last", "Output name", tab="model", group="saving", parser=parse_output_name,
            help="File name (without extension) of the trained LoRA. Intermediate saves add -000002 "
                 "(epoch) or -step00000200 (step) to it."),
    Setting("save_model_as", "choice", "safetensors", "Save trained model as", tab="model", group="saving",
            choices=("safetensors", "ckpt"),
            help="File format of the LoRA. LoRA Loom writes safetensors only: a .ckpt is a Python pickle, which "
                 "can run code when it is loaded, and cannot hold the metadata; choosing ckpt is refused."),
    Setting("training_comment", "str", "", "Training comment", tab="model", group="saving",
            help="Free text stored in the LoRA file's metadata as ss_training_comment (trigger words, notes)."),
    Setting("metadata_title", "str", "", "Metadata title", tab="folders", group="saving", section="Metadata",
            help="modelspec.title in the LoRA file. Blank: the output name."),
    Setting("metadata_author", "str", "", "Metadata author", tab="folders", group="saving", section="Metadata",
            help="modelspec.author in the LoRA file. Blank: left out."),
    Setting("metadata_description", "str", "", "Metadata description", tab="folders", group="saving",
            section="Metadata", help="modelspec.description in the LoRA file. Blank: left out."),
    Setting("metadata_license", "str", "", "Metadata license", tab="folders", group="saving", section="Metadata",
            help="modelspec.license in the LoRA file. Blank: left out."),
    Setting("metadata_tags", "str", "", "Metadata tags", tab="folders", group="saving", section="Metadata",
            help="modelspec.tags in the LoRA file, comma-separated. Blank: left out."),
    Setting("train_data_dir", "path", "", "Image folder", tab="folders", group="data",
            help="Folder that holds one sub-folder per concept, named N_name: N is how many times each "
                 "image is repeated per epoch, name is the class token used when an image has no caption."),
    Setting("reg_data_dir", "path", "", "Regularization folder", tab="folders", group="data",
            help="Optional folder of regularization images in the same N_name layout. They keep the model "
                 "from forgetting the general class; their loss is scaled by the prior loss weight."),
    Setting("dataset_config", "path", "", "Dataset config file", tab="folders", group="data",
            help="Optional: an sd-scripts dataset .toml ([general], [[datasets]], [[datasets.subsets]]) listing "
                 "the image folders one by one, each with its own num_repeats, class_tokens, caption_extension, "
                 "is_reg, shuffle_caption, keep_tokens and flip_aug; a dataset may set resolution, batch_size and "
                 "the bucket settings. When set, the image and regularization folders are ignored (as in "
                 "sd-scripts) and anything not given in the file comes from these settings. The plan lists each "
                 "subset. Options LoRA Loom has only for all images (color_aug, random_crop, caption dropout, "
                 "prior_loss_weight) must match the job's; options it lacks (masks, caption prefix …) are refused."),
    Setting("output_dir", "path", "", "Output folder", tab="folders", group="saving",
            help="Where the LoRA files (final and intermediate) are written. Created if it does not exist."),
    Setting("logging_dir", "path", "", "Logging folder", tab="folders", group="logging",
            help="Where TensorBoard logs go. Blank: a 'logs' folder inside the run folder."),
)

BASIC = (
    Setting("LoRA_type", "choice", "Standard", "LoRA type", tab="basic", group="network", section="Network",
            choices=LORA_TYPES,
            help="Standard: LoRA on the attention and feed-forward layers. LoCon: also the 3×3 convolutions "
                 "of the ResNet blocks. LoHa: a Hadamard-product adapter, more expressive for its size. "
                 "DyLoRA: trains every rank up to the chosen one at once, so you can pick a rank afterwards. "
                 "LoRA-FA: a LoRA whose down matrix stays frozen at its random start (sd-scripts' networks.lora_fa: "
                 "only the up matrix learns, less optimizer memory). Kohya LoKr: sd-scripts' own LoKr "
                 "(networks.lokr) on the layers Standard/LoCon adapt, with factor, Tucker, rank and module "
                 "dropout only (kohya_ss offers it for SDXL; it trains SD1.x/SD2.x here too). "
                 "LyCORIS/LoKr: a Kronecker-product adapter (tiny files; rank 100000 = full matrix). "
                 "LyCORIS/iA3: learns one scale per channel (smallest of all). LyCORIS/GLoRA: generalised LoRA "
                 "(scales the weight and adds a low-rank term). LyCORIS/BOFT and LyCORIS/Diag-OFT: orthogonal "
                 "fine-tuning, rotates the weights (rank = block size). LyCORIS/Native Fine-Tuning: trains the "
                 "layers' full weights and saves their difference (big files). The LyCORIS types run through "
                 "the LyCORIS library and write files that LyCORIS, ComfyUI and A1111 load; block dims, alphas "
                 "and LR weights do not apply to them (as in sd-scripts)."),
    Setting("network_weights", "path", "", "LoRA network weights", tab="basic", group="network", section="Network",
            help="Start from an existing LoRA file instead of from zero. That file is read, never overwritten."),
    Setting("dim_from_weights", "bool", False, "DIM from weights", tab="basic", group="network", section="Network",
            help="Take rank and alpha from the file in 'LoRA network weights' instead of the rank setting."),
    Setting("network_dim", "int", 8, "Network Rank (Dimension)", tab="basic", group="network", section="Network",
            minimum=1, maximum=FULL_RANK,
            help="Width of the LoRA's hidden layer. Higher ranks store more detail but also more noise and "
                 "make bigger files; 4–32 is typical, 8 is a good start. At most 1024, except the LoKr types, "
                 "BOFT and Diag-OFT, where 100000 means full rank (LoKr: full matrix; OFT: the block size)."),
    Setting("network_alpha", "float", 1.0, "Network alpha", tab="basic", group="network", section="Network",
            minimum=0.0001, maximum=1024, step=0.0001,
            help="The LoRA's output is scaled by alpha ÷ rank during training, so alpha acts like a "
                 "learning-rate multiplier. Alpha = rank means no scaling; keep alpha ≤ rank."),
    Setting("conv_dim", "int", 1, "Convolution rank (LoCon)", tab="basic", group="network", section="Network",
            minimum=0, maximum=FULL_RANK, visible_when=("LoRA_type", CONV_LORA_TYPES + LYCORIS_TYPES),
            help="Rank of the adapters on the 3×3 convolutions (LoCon, LoHa, DyLoRA and the LyCORIS types); "
                 "0: no convolution adapters. At most 512, except 100000 (full rank) for the LoKr types, BOFT "
                 "and Diag-OFT."),
    Setting("conv_alpha", "float", 1.0, "Convolution alpha (LoCon)", tab="basic", group="network", section="Network",
            minimum=0.0001, maximum=512, visible_when=("LoRA_type", CONV_LORA_TYPES),
            help="Alpha of the convolution adapters; they are scaled by conv alpha ÷ conv rank."),
    Setting("unit", "int", 1, "DyLoRA unit", tab="basic", group="network", section="Network",
            minimum=1, maximum=64, visible_when=("LoRA_type", ("DyLoRA",)),
            help="DyLoRA trains ranks in steps of this size; the rank must be a multiple of it."),
    Setting("LyCORIS_preset", "str", "full", "LyCORIS preset", tab="basic", group="network", section="LyCORIS",
            visible_when=("LoRA_type", _LYCORIS_RUN),
            help="Which layers get an adapter when the type runs through LyCORIS: full (attention, feed-forward "
                 "and ResNet layers, and the text encoder), full-lin (no 3×3 convolutions), attn-mlp (the "
                 "transformer blocks only), attn-only (attention only), unet-transformer-only, "
                 "unet-convblock-only (ResNet blocks only; both without the text encoder), or the path of a "
                 "LyCORIS preset .toml (its target_module, target_name, exclude_name and enable_conv are read; "
                 "per-module algorithm maps are refused)."),
    Setting("factor", "int", -1, "LoKr factor", tab="basic", group="network", section="LyCORIS",
            minimum=-1, maximum=64, visible_when=("LoRA_type", LOKR_TYPES),
            help="How LoKr splits each dimension for its Kronecker product: -1 picks the most balanced split; "
                 "a positive number makes the small factor at most that big."),
    Setting("decompose_both", "bool", False, "LoKr decompose both", tab="basic", group="network", section="LyCORIS",
            visible_when=("LoRA_type", ("LyCORIS/LoKr",)),
            help="Also low-rank decompose LoKr's smaller Kronecker factor (fewer parameters)."),
    Setting("use_cp", "bool", False, "Use CP decomposition", tab="basic", group="network", section="LyCORIS",
            visible_when=("LoRA_type", ("LyCORIS/LoKr",)),
            help="CP-decompose LoKr's 3×3 convolution adapters (LyCORIS treats it as use_tucker)."),
    Setting("use_tucker", "bool", False, "Use Tucker decomposition", tab="basic", group="network", section="LyCORIS",
            visible_when=("LoRA_type", TUCKER_TYPES),
            help="Tucker-decompose the 3×3 convolution adapters (LoCon, LoHa, LoKr): fewer parameters per kernel."),
    Setting("use_scalar", "bool", False, "Use scalar", tab="basic", group="network", section="LyCORIS",
            visible_when=("LoRA_type", SCALAR_TYPES),
            help="Add one trainable scale per module (starting at 0) and initialise both factors randomly."),
    Setting("dora_wd", "bool", False, "DoRA weight decompose", tab="basic", group="network", section="LyCORIS",
            visible_when=("LoRA_type", DORA_TYPES),
            help="DoRA: train the direction with the adapter and each output channel's magnitude separately; "
                 "the magnitudes are saved as dora_scale."),
    Setting("bypass_mode", "bool", False, "Bypass mode", tab="basic", group="network", section="LyCORIS",
            visible_when=("LoRA_type", DORA_TYPES),
            help="Compute the adapter's output beside the layer's (Wx + ΔWx) instead of merging ΔW into W "
                 "for each step. Same result; meant for quantised base layers."),
    Setting("rank_dropout_scale", "bool", False, "Rank dropout scale", tab="basic", group="network",
            section="LyCORIS", visible_when=("LoRA_type", RANK_DROPOUT_SCALE_TYPES),
            help="With rank dropout, scale the kept ranks up so the expected output stays the same."),
    Setting("train_norm", "bool", False, "Train norm", tab="basic", group="network", section="LyCORIS",
            visible_when=("LoRA_type", _LYCORIS_RUN),
            help="Also train the normalisation layers (GroupNorm, LayerNorm) inside the targeted blocks."),
    Setting("constrain", "float", 0.0, "Constrain OFT", tab="basic", group="network", section="LyCORIS",
            minimum=0, maximum=1000, visible_when=("LoRA_type", OFT_TYPES),
            help="Limit the norm of the orthogonal blocks (0: no limit)."),
    Setting("rescaled", "bool", False, "Rescaled OFT", tab="basic", group="network", section="LyCORIS",
            visible_when=("LoRA_type", OFT_TYPES),
            help="Add a trainable per-channel rescale after the rotation."),
    Setting("train_on_input", "bool", True, "iA3 train on input", tab="basic", group="network", section="LyCORIS",
            visible_when=("LoRA_type", ("LyCORIS/iA3",)),
            help="iA3 scales each layer's input channels (on) or output channels (off)."),
    Setting("train_batch_size", "int", 1, "Train batch size", tab="basic", group="data", section="Steps",
            minimum=1, maximum=64,
            help="Images per step. Bigger batches are faster per image and smoother, but need more memory "
                 "and fewer steps happen; images in a batch must share a bucket."),
    Setting("epoch", "int", 1, "Epoch", tab="basic", group="optimisation", section="Steps", minimum=1, maximum=10000,
            help="How many passes over the dataset. One epoch = every image × its repeats once."),
    Setting("max_train_steps", "int", 0, "Max train steps", tab="basic", group="optimisation", section="Steps",
            minimum=0,
            help="Train exactly this many optimizer steps (the last epoch may stop part-way), as sd-scripts' "
                 "--max_train_steps. Max train epoch, when set, replaces it. 0: Epoch × steps per epoch "
                 "(kohya_ss's 0 computes the same)."),
    Setting("save_every_n_epochs", "int", 1, "Save every N epochs", tab="basic", group="saving", section="Saving",
            minimum=0,
            help="Also save an intermediate LoRA after every N epochs (0: only the final file). The last "
                 "epoch is always saved as the final file."),
    Setting("caption_extension", "str", ".caption", "Caption Extension", tab="basic", group="data", section="Data",
            parser=parse_caption_extension,
            help="Extension of the caption file next to each image (.caption, .txt …). Blank means .caption."),
    Setting("mixed_precision", "choice", "fp16", "Mixed precision", tab="basic", group="launch", section="Precision",
            choices=("no", "fp16", "bf16"),
            help="Compute in 16-bit where it is safe, keeping the LoRA weights in 32-bit: less memory and "
                 "faster on GPUs. Falls back with a warning where the device cannot (no fp16 on CPU)."),
    Setting("save_precision", "choice", "fp16", "Save precision", tab="basic", group="saving", section="Precision",
            choices=("float", "fp16", "bf16"),
            help="Number format of the saved LoRA file: float is 32-bit, fp16/bf16 halve the file size."),
    Setting("num_cpu_threads_per_process", "int", 2, "Number of CPU threads per core", tab="basic", group="launch",
            section="Performance", minimum=1, maximum=256,
            help="Threads the trainer's CPU math uses (torch threads)."),
    Setting("seed", "int", None, "Seed", tab="basic", group="optimisation", section="Steps", minimum=0, maximum=2**32 - 1,
            optional=True,
            help="Fixes the random choices (order of images, noise, timesteps) so a run can be repeated. "
                 "Blank: a seed is chosen at start and recorded in the LoRA's metadata."),
    Setting("cache_latents", "bool", True, "Cache latents", tab="basic", group="data", section="Data",
            help="Encode every image with the VAE once and keep the small latents in memory: faster and "
                 "lighter, but rules out colour augmentation and random crop (flip still works)."),
    Setting("cache_latents_to_disk", "bool", False, "Cache latents to disk", tab="basic", group="data", section="Data",
            help="Like cache latents, but also saves them next to the images so later runs reuse them; "
                 "they are rebuilt when an image, the resolution or the bucket changes."),
    Setting("skip_cache_check", "bool", False, "Skip cache check", tab="basic", group="data", section="Data",
            help="With cache latents to disk: reuse a cache file of the right bucket without checking that its "
                 "image and VAE are unchanged (faster start with many images; an edited image keeps training "
                 "on its old latents until you turn this off)."),
    Setting("learning_rate", "float", 0.0001, "Learning rate", tab="basic", group="optimisation", section="Learning rate",
            minimum=0, maximum=10,
            help="How far each step moves the weights. Used for the UNet and the text encoder unless "
                 "their own rates below are set."),
    Setting("lr_scheduler", "choice", "cosine", "LR Scheduler", tab="basic", group="optimisation", section="Learning rate",
            choices=LR_SCHEDULERS,
            help="How the learning rate changes over the run: constant; constant_with_warmup; cosine "
                 "(a smooth fall to 0); cosine_with_restarts (several falls, see cycles); linear; "
                 "polynomial (see power); adafactor (Adafactor's own schedule, with that optimizer); "
                 "piecewise_constant (steps of fixed factors, no warmup); cosine_with_min_lr (a cosine fall to a "
                 "floor); inverse_sqrt (1/√step after the warmup); warmup_stable_decay (warmup, flat, then a decay "
                 "at the end). The last four take their arguments from LR scheduler extra arguments."),
    Setting("lr_warmup", "float", 10.0, "LR warmup (% of steps)", tab="basic", group="optimisation",
            section="Learning rate", minimum=0, maximum=100,
            visible_when=("lr_scheduler", tuple(s for s in LR_SCHEDULERS if s not in SCHEDULERS_WITHOUT_WARMUP)),
            help="Percent of all steps over which the learning rate rises from 0 to its value. "
                 "Ignored by the constant scheduler."),
    Setting("lr_warmup_steps", "int", 0, "LR warmup steps (override)", tab="basic", group="optimisation",
            section="Learning rate", minimum=0,
            help="Warm up over this many optimizer steps instead of the LR warmup percent (sd-scripts' "
                 "--lr_warmup_steps). 0: use the percent."),
    Setting("lr_scheduler_type", "str", "", "LR Scheduler type", tab="basic", group="optimisation",
            section="Learning rate",
            help="A scheduler class instead of the LR Scheduler list, as sd-scripts' --lr_scheduler_type: a "
                 "name in torch.optim.lr_scheduler (CosineAnnealingLR, StepLR …) or module.Class. Its "
                 "arguments come from LR scheduler extra arguments; warmup is not applied. Blank: use the list."),
    Setting("lr_scheduler_args", "str", "", "LR scheduler extra arguments", tab="basic", group="optimisation",
            section="Learning rate",
            help="key=value arguments for the LR scheduler type, separated by spaces, such as T_max=1000 "
                 "eta_min=1e-6. An argument the class does not take is an error. Without a type, four schedulers "
                 "of the list read them (as sd-scripts passes them): piecewise_constant step_rules='1:100,0.5:200,0.1' "
                 "(factor:step …, last factor); cosine_with_min_lr min_lr_rate=0.1 (or min_lr=1e-6); inverse_sqrt "
                 "timescale=N (default: the warmup steps); warmup_stable_decay num_decay_steps=N (or a fraction "
                 "below 1), min_lr_ratio, warmup_type / decay_type (linear, cosine, 1-sqrt)."),
    Setting("optimizer", "choice", "AdamW8bit", "Optimizer", tab="basic", group="optimisation", section="Optimizer",
            choices=OPTIMIZERS, custom_choices=True, parser=parse_optimizer_name,
            help="How gradients become weight updates. AdamW8bit: AdamW with 8-bit state, less memory. "
                 "Adafactor ignores the learning rate and adapts its own. DAdaptation and Prodigy find the "
                 "rate themselves (set learning rates to 1). Lion and SGDNesterov are alternatives. Paged…: "
                 "bitsandbytes keeps the state in paged memory on a GPU (on the CPU they run unpaged). AdEMAMix8bit: "
                 "Adam with a second, slow momentum (8-bit state). DAdaptAdanIP / DAdaptAdamPreprint: D-Adaptation's "
                 "experimental variants (DAdaptation is DAdaptAdamPreprint). Or type any optimizer class as "
                 "module.Class (torch.optim.RAdam): it is imported, must be a torch optimizer, and its "
                 "Optimizer extra arguments are checked against its signature."),
    Setting("optimizer_args", "str", "", "Optimizer extra arguments", tab="basic", group="optimisation", section="Optimizer",
            help="Extra key=value arguments for the optimizer, separated by spaces, such as "
                 "weight_decay=0.01 betas=(0.9,0.99). An argument the optimizer does not take is an error."),
    Setting("text_encoder_lr", "float", 0.00005, "Text Encoder learning rate", tab="basic", group="optimisation",
            section="Learning rate", minimum=0, maximum=10, optional=True,
            help="Learning rate of the text-encoder LoRA; overrides the learning rate. Usually lower than "
                 "the UNet's. 0: the text encoder is not trained and gets no modules in the file (both rates 0: "
                 "both parts train at the learning rate, as in kohya_ss)."),
    Setting("unet_lr", "float", 0.0001, "Unet learning rate", tab="basic", group="optimisation", section="Learning rate",
            minimum=0, maximum=10, optional=True,
            help="Learning rate of the UNet LoRA; overrides the learning rate. 0: the UNet is not trained "
                 "and gets no modules in the file (both rates 0: both parts train at the learning rate)."),
    Setting("loraplus_lr_ratio", "float", 0.0, "LoRA+ learning rate ratio", tab="basic", group="optimisation",
            section="Learning rate", minimum=0, maximum=128,
            help="LoRA+ (Hayou et al. 2024): the LoRA up matrices learn at this many times the learning rate; "
                 "16 is the paper's choice. 0: off. Not for LoHa (it has no up matrix)."),
    Setting("loraplus_unet_lr_ratio", "float", 0.0, "LoRA+ Unet learning rate ratio", tab="basic",
            group="optimisation", section="Learning rate", minimum=0, maximum=128,
            help="LoRA+ ratio for the UNet only; overrides the LoRA+ ratio there. 0: the LoRA+ ratio."),
    Setting("loraplus_text_encoder_lr_ratio", "float", 0.0, "LoRA+ Text Encoder learning rate ratio", tab="basic",
            group="optimisation", section="Learning rate", minimum=0, maximum=128,
            help="LoRA+ ratio for the text encoder only; overrides the LoRA+ ratio there. 0: the LoRA+ ratio."),
    Setting("max_resolution", "str", "512,512", "Max resolution", tab="basic", group="data", section="Data",
            parser=parse_resolution,
            help="Training resolution as width,height. Larger images are scaled down to fit this area; "
                 "with buckets off every image is resized and centre-cropped to exactly this size."),
    Setting("stop_text_encoder_training", "float", 0.0, "Stop text encoder training (%)", tab="basic", group="optimisation",
            section="Learning rate", minimum=0, maximum=100,
            help="Percent of all steps after which the text encoder stops learning while the UNet goes on. "
                 "0: train it to the end."),
    Setting("enable_bucket", "bool", True, "Enable buckets", tab="basic", group="data", section="Buckets",
            help="Sort images into buckets of similar aspect ratio so they can be trained without "
                 "distorting crops. Each batch comes from one bucket."),
    Setting("min_bucket_reso", "int", 256, "Minimum bucket resolution", tab="basic", group="data", section="Buckets",
            minimum=64, maximum=4096, step=64,
            help="Smallest side a bucket may have."),
    Setting("max_bucket_reso", "int", 1024, "Maximum bucket resolution", tab="basic", group="data", section="Buckets",
            minimum=64, maximum=4096, step=64,
            help="Largest side a bucket may have."),
)
