"""Shared pieces of the benchmarks: a full-size SD1.5-shaped model with random weights, built offline, and
process memory readings.

``build_sd15_random(folder)`` writes a diffusers folder with Stable Diffusion 1.5's architecture (UNet
859.5 M parameters, CLIP ViT-L/14 text encoder 123 M, the SD VAE 83.7 M) and seeded random weights, so
speed and memory can be measured at real size without downloading anything. Its outputs are noise;
only the shapes (and so the arithmetic and memory) are those of SD1.5. About 4 GB on disk.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from trainer.models.tiny import model_index, sd1_scheduler_file_config, write_json
from trainer.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer, save_tokenizer

LATENT_CHANNELS = 4


def sd15_unet_config() -> dict:
    """UNet2DConditionModel arguments of SD1.5 (the bare class default has cross_attention_dim 1280: not SD1.5)."""
    return {
        "sample_size": 64,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def sd15_vae_config() -> dict:
    """AutoencoderKL arguments of the SD VAE: 4 blocks (128, 256, 512, 512), 8× downscale, 4 latent channels."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": LATENT_CHANNELS,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }


def sd15_text_encoder_config() -> CLIPTextConfig:
    """CLIP ViT-L/14's text tower as SD1.x uses it: width 768, 12 layers of 12 heads, quick-GELU."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def build_sd15_random(folder: str | Path, seed: int = 0) -> dict[str, int]:
    """Write an SD1.5-shaped diffusers folder with seeded random weights; returns parameter counts by part.

    Each part is built, saved and freed before the next, so the peak memory is that of the UNet alone.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    builders = {
        "unet": lambda: UNet2DConditionModel(**sd15_unet_config()),
        "vae": lambda: AutoencoderKL(**sd15_vae_config()),
        "text_encoder": lambda: CLIPTextModel(sd15_text_encoder_config()),
    }
    counts = {}
    for offset, (name, build) in enumerate(builders.items()):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + offset)
            model = build()
        counts[name] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder / name)
        del model
    save_tokenizer(build_clip_tokenizer(), folder / "tokenizer")
    write_json(folder / "scheduler" / "scheduler_config.json", sd1_scheduler_file_config())
    write_json(folder / "model_index.json", model_index("sd1"))
    return counts


def peak_rss_bytes() -> int:
    """This process's peak resident set size since it started (``VmHWM``: the trainer's own measure)."""
    from trainer.memory_plan import measured_peak

    return measured_peak("cpu")


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (``VmHWM``) by writing 5 to
    ``/proc/self/clear_refs`` (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_high_water_bytes() -> int | None:
    """``VmHWM`` from ``/proc/self/status``: the peak RSS since the last :func:`reset_peak_rss` (None off Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None
