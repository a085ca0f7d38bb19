"""Draw a batch of pictures from the demo's base model (optionally with a LoRA file) for the drawing tests.

The base is read from the demo's single file by the trainer's own loader; sampling uses the trainer's
scheduler for the demo's sampler, 16 seeds in one batch, at 64 px. ``v_prediction=True`` or
``lora_scale=0`` give the deliberately broken variants the negative tests use.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SEEDS = tuple(range(16))
STEPS = 12
GUIDANCE = 6.0


def pipeline(model_file: Path, lora_file: Path | None = None, v_prediction: bool = False, sampler: str = "euler_a"):
    """A StableDiffusionPipeline around the trainer's load of ``model_file`` (and diffusers' load of the LoRA)."""
    from diffusers import StableDiffusionPipeline

    from trainer.models.loading import load_base_model
    from trainer.sampling import make_sample_scheduler

    base = load_base_model(str(model_file), device=torch.device("cpu"), dtype=torch.float32)
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=base.unet, scheduler=make_sample_scheduler(sampler, v_prediction),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if lora_file is not None:
        pipe.load_lora_weights(str(lora_file))
    return pipe


def draw(pipe, prompt: str, seeds=SEEDS, lora_scale: float | None = None, steps: int = STEPS) -> list[np.ndarray]:
    """One 64×64 RGB uint8 array per seed for ``prompt``."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    extra = {"cross_attention_kwargs": {"scale": lora_scale}} if lora_scale is not None else {}
    with torch.no_grad():
        images = pipe([prompt] * len(seeds), height=64, width=64, num_inference_steps=steps,
                      guidance_scale=GUIDANCE, generator=generators, output_type="np", **extra).images
    return [(image * 255).round().astype(np.uint8) for image in images]
