"""Train the demo's base model from scratch: a tiny Stable Diffusion 1.x that draws coloured shapes.

    nice -n 10 python scripts/train_demo_base.py --work /tmp/demo_base --out trainer/models/demo_base_sd1.safetensors

The model has SD1.x's classes and file layout at toy width (the configs of ``trainer.models.tiny``, with a
VAE of 32 channels and no mid-block attention): a VAE with SD's downscale factor of 8 (64 px → 8×8×4
latents), a frozen 2-layer CLIP text encoder with the real vocabulary (random but seeded weights: its token
vectors already tell the words apart, the UNet learns to read them), and a UNet trained with SD's epsilon
objective and DDPM betas on the captioned shapes of ``trainer.models.shapes``. Stages:

1. VAE: reconstruction (L1 + MSE of the posterior mean with 1 % noise, a small L2 on the latents) on random 32×32 crops of 64×64 shapes pictures in the base
   colours and in random colours (so it can encode colours the UNet never saw), then rescaled so that
   latents × 0.18215 have unit spread, as SD's loaders assume, with the posterior's spread fixed at 0.5 %.
2. Decoder: more training of the decoder alone (the encoder, so the latent space, frozen) on latents with
   3 % noise, for sharper edges and truer colours; it does not change what the UNet learns from.
3. UNet: epsilon prediction with min-SNR-5 loss weights on pre-encoded latents, 10 % empty captions (so
   classifier-free guidance works), an exponential moving average of the weights kept and saved; 700
   steps of 16 (cosine from 1e-3), then ``--unet-more-steps`` more from that (cosine from 5e-4).
4. Export: a diffusers folder in ``--work`` and the single file in the original layout at ``--out``.

Each stage's result is kept in ``--work`` and reused when the script runs again. Seeded: the same arguments give the same weights on the same machine and torch build.
"""
from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel  # noqa: E402

from trainer.models import shapes  # noqa: E402
from trainer.models.tiny import (  # noqa: E402
    SD1_SCHEDULER_CONFIG, model_index, sd1_scheduler_file_config, tiny_text_encoder_config, tiny_unet_config,
    tiny_vae_config, write_json,
)
from trainer.models.tokenizer import build_clip_tokenizer, save_tokenizer  # noqa: E402

LATENT_SCALE = 0.18215


NORM_GROUPS = 8  # 4 channels a group at width 32; see base_vae_config


def base_vae_config() -> dict:
    """The tiny VAE at 32 channels a level, no mid-block attention, and GroupNorm over groups of 4 channels.

    At SD's 32 groups a 32-channel layer normalises every channel on its own, which erases the absolute
    colour of a flat region (only its contrast survives the decoder's last norm), so it could never learn
    to reproduce a plain background. The group count is recorded in the single file's metadata."""
    return {**tiny_vae_config("sd1"), "block_out_channels": (32, 32, 32, 32), "mid_block_add_attention": False,
            "norm_num_groups": NORM_GROUPS}


def base_unet_config() -> dict:
    return {**tiny_unet_config("sd1"), "norm_num_groups": NORM_GROUPS}


def to_tensor(images) -> torch.Tensor:
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def vae_pictures(rng: random.Random, count: int):
    """Shapes pictures, half in the base colours and half in random colours."""
    images = []
    for _ in range(count):
        picture = shapes.random_picture(rng)
        if rng.random() < 0.5:
            extra = {"c1": tuple(rng.randrange(256) for _ in range(3)), "c2": tuple(rng.randrange(256) for _ in range(3))}
            picture = shapes.Picture(picture.shape, "c1", "c2", picture.extent, picture.left, picture.top)
            images.append(shapes.draw(picture, rgb=extra))
        else:
            images.append(shapes.draw(picture))
    return images


def train_vae(seed: int, steps: int, batch: int, log) -> AutoencoderKL:
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**base_vae_config())
    optimiser = torch.optim.Adam(vae.parameters(), lr=1e-3)
    rng = random.Random(seed + 10)
    started = time.time()
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 50) * (0.3 if step > steps * 0.8 else 1.0)
        full = to_tensor(vae_pictures(rng, batch))
        x, y = rng.randrange(0, 33), rng.randrange(0, 33)
        crop = full[:, :, y:y + 32, x:x + 32]
        latent = vae.encode(crop).latent_dist.mean
        decoded = vae.decode(latent + 0.01 * latent.std().detach() * torch.randn_like(latent)).sample
        loss = (decoded - crop).abs().mean() + (decoded - crop).pow(2).mean() + 1e-4 * latent.pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
    return vae.eval()


def tune_decoder(vae: AutoencoderKL, seed: int, steps: int, batch: int, log) -> AutoencoderKL:
    """More decoder training with the encoder (so the latent space) frozen: sharper edges and colours.

    The decoder sees the encoder's latents with 3 % noise, as the UNet's results are never exact."""
    vae = copy.deepcopy(vae)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=1e-3)
    rng = random.Random(seed + 50)
    started = time.time()
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 20) * (0.3 if step > steps * 0.7 else 1.0)
        full = to_tensor(vae_pictures(rng, batch))
        x, y = rng.randrange(0, 33), rng.randrange(0, 33)
        crop = full[:, :, y:y + 32, x:x + 32]
        with torch.no_grad():
            latent = vae.encode(crop).latent_dist.mean
        decoded = vae.decode(latent + 0.03 * latent.std() * torch.randn_like(latent)).sample
        loss = (decoded - crop).abs().mean() + (decoded - crop).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"decoder step {step} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
    return vae.eval()


@torch.no_grad()
def rescale_latents(vae: AutoencoderKL, seed: int) -> float:
    """Scale the latent space so that latents × 0.18215 have unit standard deviation (exact: the encoder's
    last conv is scaled by k and the decoder's first conv by 1/k). Returns k."""
    images = to_tensor(vae_pictures(random.Random(seed + 20), 64))
    spread = vae.encode(images).latent_dist.mean.std().item()
    k = 1.0 / (spread * LATENT_SCALE)
    vae.quant_conv.weight[:4] *= k
    vae.quant_conv.bias[:4] *= k
    vae.quant_conv.weight[4:] = 0.0  # a fixed, tiny posterior spread: sampling adds noise of 0.5 % of the latents' spread
    vae.quant_conv.bias[4:] = 2 * math.log(0.005 * spread * k)
    vae.post_quant_conv.weight /= k
    return k


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, pictures, batch: int = 64) -> torch.Tensor:
    latents = []
    for start in range(0, len(pictures), batch):
        images = to_tensor([shapes.draw(p) for p in pictures[start:start + batch]])
        latents.append(vae.encode(images).latent_dist.mean * LATENT_SCALE)
    return torch.cat(latents)


@torch.no_grad()
def encode_texts(text_encoder: CLIPTextModel, tokenizer, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids).last_hidden_state


def train_unet(latents: torch.Tensor, text_states: torch.Tensor, caption_index: torch.Tensor, empty: torch.Tensor,
               seed: int, steps: int, batch: int, log, checkpoint=None, start=None,
               peak_lr: float = 1e-3) -> UNet2DConditionModel:
    """Train a new UNet (or continue ``start``) for ``steps``: warm-up, cosine down to a tenth of ``peak_lr``."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**base_unet_config()) if start is None else copy.deepcopy(start).train()
    unet.requires_grad_(True)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = DDPMScheduler(**{k: v for k, v in SD1_SCHEDULER_CONFIG.items()
                                 if k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")})
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for epsilon prediction
    optimiser = torch.optim.Adam(unet.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed + 30)
    started = time.time()
    for step in range(steps):
        for group in optimiser.param_groups:
            group["lr"] = peak_lr * min(1.0, (step + 1) / 100) * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.9 + 0.1)
        rows = torch.randint(0, len(latents), (batch,), generator=generator)
        x0 = latents[rows]
        states = text_states[caption_index[rows]]
        drop = torch.rand(batch, generator=generator) < 0.1
        states = torch.where(drop[:, None, None], empty, states)
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (batch,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        predicted = unet(noisy, timesteps, states).sample
        loss = ((predicted - noise).pow(2).mean(dim=(1, 2, 3)) * weights[timesteps]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        decay = 0.0 if step < 100 and start is None else 0.995
        for kept, live in zip(ema.parameters(), unet.parameters()):
            kept.mul_(decay).add_(live.detach(), alpha=1 - decay)
        if step % 50 == 0 or step == steps - 1:
            log(f"unet step {step} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
        if checkpoint is not None and step % 200 == 199 and step < steps - 1:
            checkpoint(ema, step + 1)
    return ema.eval()


def write_folder(folder: Path, unet, vae, text_encoder) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    save_tokenizer(build_clip_tokenizer(), folder / "tokenizer")
    write_json(folder / "scheduler" / "scheduler_config.json", sd1_scheduler_file_config())
    write_json(folder / "model_index.json", model_index("sd1"))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the VAE, latents and diffusers folders")
    parser.add_argument("--out", type=Path, default=Path("trainer/models/demo_base_sd1.safetensors"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=300)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--decoder-steps", type=int, default=300)
    parser.add_argument("--stage", choices=("all", "vae", "unet"), default="all",
                        help="vae: the VAE and its decoder only; unet: the UNet only, on the VAE in --work "
                             "(two processes can then share the work); all: every stage not done yet, then export")
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=700)
    parser.add_argument("--unet-more-steps", type=int, default=800,
                        help="then continue from that UNet for this many steps (peak learning rate 5e-4)")
    parser.add_argument("--unet-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.time()

    def log(line: str) -> None:
        print(line, flush=True)

    vae_path = args.work / "vae"
    if (vae_path / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(vae_path).eval()
        log(f"reusing the VAE in {vae_path}")
    else:
        vae = train_vae(args.seed, args.vae_steps, args.vae_batch, log)
        log(f"latent scale correction {rescale_latents(vae, args.seed):.3f}")
        vae.save_pretrained(vae_path)
    tuned_path = args.work / "vae_tuned"
    if args.stage == "unet":
        tuned = vae  # checkpoints decode with the first VAE; the export reuses the tuned one
    elif (tuned_path / "config.json").is_file():
        tuned = AutoencoderKL.from_pretrained(tuned_path).eval()
        log(f"reusing the tuned decoder in {tuned_path}")
    else:
        torch.manual_seed(args.seed + 3)
        tuned = tune_decoder(vae, args.seed, args.decoder_steps, args.vae_batch, log)
        tuned.save_pretrained(tuned_path)
    if args.stage == "vae":
        return 0
    torch.manual_seed(args.seed + 2)
    text_encoder = CLIPTextModel(tiny_text_encoder_config("sd1")).eval().requires_grad_(False)
    tokenizer = build_clip_tokenizer()

    pictures = shapes.base_pictures(args.seed + 40, args.images)
    captions = sorted({shapes.base_caption(p) for p in pictures})
    caption_index = torch.tensor([captions.index(shapes.base_caption(p)) for p in pictures])
    latents_path = args.work / f"latents_{args.images}.pt"
    if latents_path.is_file():
        latents = torch.load(latents_path)
    else:
        latents = encode_dataset(vae, pictures)
        torch.save(latents, latents_path)
    text_states = encode_texts(text_encoder, tokenizer, captions)
    empty = encode_texts(text_encoder, tokenizer, [""])[0]
    log(f"{len(pictures)} pictures, {len(captions)} captions, latent std {latents.std().item():.3f} "
        f"({time.time() - began:.0f}s so far)")

    def checkpoint(unet, step):
        write_folder(args.work / f"model_step{step}", unet, tuned, text_encoder)
        log(f"checkpoint at step {step}")

    unet_path = args.work / "unet"
    if (unet_path / "config.json").is_file():
        unet = UNet2DConditionModel.from_pretrained(unet_path).eval()
        log(f"reusing the UNet in {unet_path}")
    else:
        unet = train_unet(latents, text_states, caption_index, empty, args.seed, args.unet_steps, args.unet_batch,
                          log, checkpoint)
        unet.save_pretrained(unet_path)
    more_path = args.work / "unet_more"
    if args.unet_more_steps and (more_path / "config.json").is_file():
        unet = UNet2DConditionModel.from_pretrained(more_path).eval()
        log(f"reusing the continued UNet in {more_path}")
    elif args.unet_more_steps:
        unet = train_unet(latents, text_states, caption_index, empty, args.seed + 1, args.unet_more_steps,
                          args.unet_batch, log, checkpoint, start=unet, peak_lr=5e-4)
        unet.save_pretrained(more_path)
    if args.stage == "unet":
        return 0
    folder = write_folder(args.work / "model", unet, tuned, text_encoder)
    from trainer.models.loading import save_as_single_file

    save_as_single_file(folder, args.out)
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {(time.time() - began) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
