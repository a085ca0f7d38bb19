"""Tiny Stable Diffusion 1.x-, 2.x- and XL-shaped models for tests and the demo, built in about a second.

They have the real structure at a fraction of the width: a UNet with two resnets and a downsampler per
down block and cross-attention, a VAE with SD's downscale factor of 8 (64 px → 8×8 latents), a CLIP
text encoder with the real 49,408-token vocabulary, the real CLIP tokenizer and SD's scheduler config.
The SD2.x variant differs as SD2 does: Linear transformer projections, an OpenCLIP-style text encoder
(exact GELU), a tokenizer that pads with "!", and optionally v-prediction (like SD2.x-768-v).
The SDXL variant has SDXL's structure: three UNet levels with no attention on the first, deeper
transformers further down, Linear projections, ``text_time`` conditioning (pooled text + 6 size numbers),
two text encoders (CLIP-L-like, quick_gelu, penultimate states; OpenCLIP-bigG-like, gelu, with a
projection) whose penultimate states are concatenated, and a second tokenizer that pads with "!".
Weights are random but seeded, so two builds with the same seed are identical.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from trainer.models.tokenizer import CLIP_VOCAB_SIZE, EOS_TOKEN, build_clip_tokenizer, save_tokenizer

TEXT_HIDDEN_SIZE = 32
LATENT_CHANNELS = 4
FAMILIES = ("sd1", "sd2", "sdxl")
# SDXL's two encoders differ in width (768 and 1280); so must the tiny ones, or tools that tell the
# encoders of a single file apart by their width (diffusers' from_single_file) mix them up.
SDXL_TEXT_2_HIDDEN_SIZE = 64
SDXL_TIME_EMBED_DIM = 8  # per size number (real SDXL: 256)
SDXL_TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)

# SD1.x's scheduler config as the v1-5 folder ships it (the training schedule is the same betas, DDPM).
SD1_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def tiny_unet_config(family: str = "sd1") -> dict:
    """UNet2DConditionModel arguments: SD's layout (2 resnets per block, attention in the top blocks).

    ``family="sd2"`` adds SD2's Linear projections in and out of the transformers and head counts that
    grow with the width (SD2 uses 64-wide heads; here 8-wide).
    """
    if family == "sd2":
        return {**tiny_unet_config("sd1"), "use_linear_projection": True, "attention_head_dim": (4, 8)}
    if family == "sdxl":
        return tiny_sdxl_unet_config()
    return {
        "sample_size": 8,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": TEXT_HIDDEN_SIZE,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def tiny_sdxl_unet_config() -> dict:
    """SDXL's UNet layout at toy width: 3 levels (the first without attention, like SDXL's 320 level),
    2 resnets per level, 1 then 2 transformer blocks (SDXL: 2 then 10), Linear projections, and
    ``text_time`` conditioning on the pooled second encoder output plus 6 size numbers."""
    return {
        "sample_size": 8,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 1, 2),
        "cross_attention_dim": TEXT_HIDDEN_SIZE + SDXL_TEXT_2_HIDDEN_SIZE,  # both encoders' states side by side
        "attention_head_dim": (2, 4, 4),  # head counts (diffusers' historical name)
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": SDXL_TEXT_2_HIDDEN_SIZE + SDXL_TIME_IDS * SDXL_TIME_EMBED_DIM,
        "norm_num_groups": 32,
    }


def tiny_vae_config(family: str = "sd1") -> dict:
    """AutoencoderKL arguments: 4 blocks, so 3 downsamplers give SD's factor of 8."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": LATENT_CHANNELS,
        "block_out_channels": (32, 32, 64, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "sample_size": 64,
        "scaling_factor": 0.13025 if family == "sdxl" else 0.18215,
    }


def tiny_text_encoder_config(family: str = "sd1") -> CLIPTextConfig:
    """CLIPTextConfig with the real vocabulary and CLIP's special-token ids, 2 layers of width 32.

    SD1.x's OpenAI CLIP uses quick_gelu; SD2.x's OpenCLIP uses exact gelu and pads with "!" (id 0).
    ``family="sdxl"`` is SDXL's first encoder (like SD1's); ``"sdxl_2"`` its second (OpenCLIP, with projection).
    """
    if family == "sdxl":
        family = "sd1"
    if family == "sdxl_2":
        width = SDXL_TEXT_2_HIDDEN_SIZE
        return CLIPTextConfig(**{**tiny_text_encoder_config("sd2").to_dict(), "hidden_size": width,
                                 "intermediate_size": 2 * width, "projection_dim": width})
    if family == "sd2":
        return CLIPTextConfig(**{**tiny_text_encoder_config("sd1").to_dict(), "hidden_act": "gelu", "pad_token_id": 0})
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=TEXT_HIDDEN_SIZE,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def model_index(family: str = "sd1") -> dict:
    """model_index.json for a StableDiffusionPipeline folder without a safety checker
    (a StableDiffusionXLPipeline folder for SDXL)."""
    if family == "sdxl":
        return {
            "_class_name": "StableDiffusionXLPipeline",
            "_diffusers_version": "0.42.1",
            "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def sd1_scheduler_file_config(v_prediction: bool = False) -> dict:
    """``scheduler/scheduler_config.json`` as SD1.x/SD2.x folders ship it: PNDM, plus the DDIM keys
    (``clip_sample``, ``set_alpha_to_one``) that other schedulers read when built ``from_config``;
    SD2.x-768-v folders say ``prediction_type: v_prediction``."""
    prediction = {"prediction_type": "v_prediction" if v_prediction else "epsilon"}
    return {"_class_name": "PNDMScheduler", "_diffusers_version": "0.42.1", **SD1_SCHEDULER_CONFIG, **prediction}


def sdxl_scheduler_file_config() -> dict:
    """SDXL base's ``scheduler_config.json``: Euler, the same scaled-linear betas as SD1.x."""
    return {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.42.1", **SD1_SCHEDULER_CONFIG,
            "interpolation_type": "linear", "timestep_spacing": "leading", "use_karras_sigmas": False}


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def build_tiny_sd1(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny SD1.x diffusers folder (model_index.json, unet, vae, text_encoder, tokenizer, scheduler).

    Deterministic for a given ``seed``; loadable offline with ``StableDiffusionPipeline.from_pretrained``.
    Returns the folder.
    """
    return build_tiny_sd(out_dir, "sd1", seed)


def build_tiny_sd2(out_dir: str | Path, seed: int = 0, v_prediction: bool = False) -> Path:
    """Write a tiny SD2.x diffusers folder; ``v_prediction=True`` makes it a 768-v-style model."""
    return build_tiny_sd(out_dir, "sd2", seed, v_prediction)


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny SDXL diffusers folder (loadable with ``StableDiffusionXLPipeline.from_pretrained``)."""
    return build_tiny_sd(out_dir, "sdxl", seed)


def build_tiny_sd(out_dir: str | Path, family: str, seed: int = 0, v_prediction: bool = False) -> Path:
    """A tiny ``family`` ("sd1" | "sd2" | "sdxl") diffusers folder, deterministic for ``seed``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {', '.join(FAMILIES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Each part gets its own seed so changing one part's shape leaves the others' weights unchanged.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config(family))
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**tiny_vae_config(family))
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(tiny_text_encoder_config(family))
        torch.manual_seed(seed + 3)
        text_encoder_2 = CLIPTextModelWithProjection(tiny_text_encoder_config("sdxl_2")) if family == "sdxl" else None
    unet.save_pretrained(out_dir / "unet")
    vae.save_pretrained(out_dir / "vae")
    text_encoder.save_pretrained(out_dir / "text_encoder")
    save_tokenizer(build_clip_tokenizer(pad_token="!" if family == "sd2" else EOS_TOKEN), out_dir / "tokenizer")
    if text_encoder_2 is not None:
        text_encoder_2.save_pretrained(out_dir / "text_encoder_2")
        save_tokenizer(build_clip_tokenizer(pad_token="!"), out_dir / "tokenizer_2")
    scheduler = sdxl_scheduler_file_config() if family == "sdxl" else sd1_scheduler_file_config(v_prediction)
    write_json(out_dir / "scheduler" / "scheduler_config.json", scheduler)
    write_json(out_dir / "model_index.json", model_index(family))
    return out_dir
