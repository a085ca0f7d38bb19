"""Train the demo's base model from scratch: a tiny Stable Diffusion 1.x that draws coloured shapes.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/train_demo_base.py --work /tmp/demo_base \
        --out trainer/models/demo_base_sd1.safetensors

The model has SD1.x's classes and file layout at toy width: a VAE of three 32-channel levels (downscale 4:
64 px pictures → 16×16×4 latents), a 2-layer CLIP text encoder of width 32 with the real vocabulary, and a
UNet of three levels (32, 64, 64 channels, one resnet each; cross-attention at 8×8 and 4×4: attention at
16×16 cost four times the step time on a CPU). GroupNorm uses 8 groups
(recorded in the single file's metadata). Stages, each kept in ``--work`` and reused when run again:

1. VAE: reconstruction (L1 + MSE, a small L2 on the latents) on random 32×32 crops of shapes pictures in
   the base colours and in random colours (so it also encodes colours the UNet never saw, such as the demo
   LoRA's magenta), then rescaled so that latents × 0.18215 have unit spread, as SD's loaders assume.
2. UNet and text encoder, trained together: SD's epsilon objective with DDPM betas and min-SNR-5 weights
   on pre-encoded latents of the captioned pictures of ``trainer.models.shapes``, 10 % empty captions (so
   classifier-free guidance works), AdamW at 1e-3 with warm-up and cosine decay, an exponential moving
   average of both kept and saved. Every ``--eval-every`` steps the EMA model draws the four test prompts
   over 16 seeds and ``trainer.models.demo_measure`` counts the hits (logged; with ``--stop-at`` training
   stops early once every prompt reaches it twice in a row). The state is kept in ``--work`` at each
   evaluation, so a killed run resumes there.
3. Export: a diffusers folder in ``--work`` and the single file (float32, 14.3 MB) in the original layout at
   ``--out``.

Seeded: the same arguments give the same weights on the same machine and torch build.
"""
from __future__ import annotations

import argparse
import copy
import json
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

from trainer.models import demo_measure, shapes  # noqa: E402
from trainer.models.demo import write_sd1_folder  # noqa: E402
from trainer.models.tiny import SD1_SCHEDULER_CONFIG, tiny_text_encoder_config  # noqa: E402
from trainer.models.tokenizer import build_clip_tokenizer  # noqa: E402

LATENT_SCALE = 0.18215
NORM_GROUPS = 8
EVAL_PROMPTS = (("red", "circle", "blue"), ("yellow", "square", "black"), ("white", "triangle", "green"),
                ("blue", "circle", "yellow"))


def base_vae_config() -> dict:
    """Three 32-channel levels (two downsamplers: 64 px → 16×16 latents), no mid-block attention, and
    GroupNorm over groups of 4 channels (at SD's 32 groups a 32-channel layer normalises every channel on
    its own, which erases the absolute colour of a flat region)."""
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (32, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3,
        "layers_per_block": 1, "norm_num_groups": NORM_GROUPS, "sample_size": 64,
        "mid_block_add_attention": False, "scaling_factor": LATENT_SCALE,
    }


def base_unet_config() -> dict:
    return {
        "sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32, "attention_head_dim": 4, "norm_num_groups": NORM_GROUPS,
    }


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
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 50) * (0.3 if step > steps * 0.75 else 1.0)
        full = to_tensor(vae_pictures(rng, batch))
        x, y = rng.randrange(0, 33), rng.randrange(0, 33)
        crop = full[:, :, y:y + 32, x:x + 32]
        latent = vae.encode(crop).latent_dist.mean
        decoded = vae.decode(latent + 0.02 * latent.std().detach() * torch.randn_like(latent)).sample
        loss = (decoded - crop).abs().mean() + (decoded - crop).pow(2).mean() + 1e-4 * latent.pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
    return vae.eval()


@torch.no_grad()
def rescale_latents(vae: AutoencoderKL, seed: int) -> float:
    """Scale the latent space so that latents × 0.18215 have unit standard deviation (exact: the encoder's
    last conv is scaled by k and the decoder's first conv by 1/k), with a fixed tiny posterior spread."""
    images = to_tensor(vae_pictures(random.Random(seed + 20), 64))
    spread = vae.encode(images).latent_dist.mean.std().item()
    k = 1.0 / (spread * LATENT_SCALE)
    vae.quant_conv.weight[:4] *= k
    vae.quant_conv.bias[:4] *= k
    vae.quant_conv.weight[4:] = 0.0
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


def token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def draw_prompts(unet, text_encoder, vae, tokenizer, prompts: list[str], seeds=range(16), steps: int = 12,
                 guidance: float = 6.0) -> dict[str, list[np.ndarray]]:
    """Pictures for each prompt over ``seeds`` (Euler ancestral, classifier-free guidance), as uint8 arrays."""
    from trainer.sampling import make_sample_scheduler

    drawn = {}
    empty = text_encoder(token_ids(tokenizer, [""])).last_hidden_state
    for prompt in prompts:
        states = text_encoder(token_ids(tokenizer, [prompt])).last_hidden_state
        scheduler = make_sample_scheduler("euler_a")
        scheduler.set_timesteps(steps)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        latents = torch.stack([torch.randn(4, 16, 16, generator=g) for g in generators]) * scheduler.init_noise_sigma
        count = len(latents)
        context = torch.cat([empty.expand(count, -1, -1), states.expand(count, -1, -1)])
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            uncond, cond = unet(model_input, t, context).sample.chunk(2)
            latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents, generator=generators[0]).prev_sample
        pixels = vae.decode(latents / LATENT_SCALE).sample
        drawn[prompt] = [((p.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy() for p in pixels]
    return drawn


def evaluate(unet, text_encoder, vae, tokenizer) -> list[int]:
    prompts = [shapes.caption(shape, colour, background) for colour, shape, background in EVAL_PROMPTS]
    drawn = draw_prompts(unet.eval(), text_encoder.eval(), vae, tokenizer, prompts)
    return [demo_measure.count_showing(drawn[prompt], *wanted) for prompt, wanted in zip(prompts, EVAL_PROMPTS)]


class Pair(torch.nn.Module):
    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder


def train_unet(latents: torch.Tensor, ids: torch.Tensor, caption_index: torch.Tensor, empty_ids: torch.Tensor,
               vae, tokenizer, args, log, work: Path) -> Pair:
    torch.manual_seed(args.seed)
    model = Pair(UNet2DConditionModel(**base_unet_config()), CLIPTextModel(tiny_text_encoder_config("sd1")))
    state_path = work / "unet_state.pt"
    ema = copy.deepcopy(model).requires_grad_(False)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    first = 0
    if state_path.is_file():
        saved = torch.load(state_path)
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        optimiser.load_state_dict(saved["optimiser"])
        torch.set_rng_state(saved["rng"])
        first = saved["step"]
        log(f"resuming at step {first}")
    params = sum(p.numel() for p in model.unet.parameters())
    log(f"UNet {params / 1e6:.2f} M parameters, text encoder "
        f"{sum(p.numel() for p in model.text_encoder.parameters()) / 1e6:.2f} M")
    scheduler = DDPMScheduler(**{k: v for k, v in SD1_SCHEDULER_CONFIG.items()
                                 if k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")})
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for epsilon prediction
    steps, batch = args.unet_steps, args.unet_batch
    started = time.time()
    passes = 0
    for step in range(first, steps):
        model.train()
        warm = min(1.0, (step + 1) / 200)
        for group in optimiser.param_groups:
            group["lr"] = args.lr * warm * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        rows = torch.randint(0, len(latents), (batch,))
        x0 = latents[rows]
        drop = torch.rand(batch) < 0.1
        batch_ids = torch.where(drop[:, None], empty_ids, ids[caption_index[rows]])
        states = model.text_encoder(batch_ids).last_hidden_state
        noise = torch.randn(x0.shape)
        timesteps = torch.randint(0, 1000, (batch,))
        noisy = scheduler.add_noise(x0, noise, timesteps)
        predicted = model.unet(noisy, timesteps, states).sample
        loss = ((predicted - noise).pow(2).mean(dim=(1, 2, 3)) * weights[timesteps]).mean()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for kept, live in zip(ema.parameters(), model.parameters()):
                kept.lerp_(live.detach(), 1 - decay)
        if step % 50 == 0 or step == steps - 1:
            log(f"unet step {step} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
        if (step + 1) % args.eval_every == 0 or step == steps - 1:
            hits = evaluate(ema.unet, ema.text_encoder, vae, tokenizer)
            log(f"eval at step {step + 1}: hits {hits} of 16 ({time.time() - started:.0f}s)")
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimiser": optimiser.state_dict(),
                        "rng": torch.get_rng_state(), "step": step + 1}, state_path)
            passes = passes + 1 if args.stop_at and min(hits) >= args.stop_at else 0
            if passes >= 2:
                log(f"every prompt drawn in ≥{args.stop_at}/16 twice in a row: stopping at step {step + 1}")
                break
    return ema.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the VAE, latents, checkpoints")
    parser.add_argument("--out", type=Path, default=Path("trainer/models/demo_base_sd1.safetensors"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--unet-steps", type=int, default=4000)
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--stop-at", type=int, default=0,
                        help="stop once every test prompt is drawn in this many of 16 at two evaluations in a row "
                             "(0: never; the shipped file ran all 4,000 steps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stage", choices=("all", "vae", "export"), default="all",
                        help="vae: the VAE only; export: the last checkpoint's EMA weights as they are, no training")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.time()

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"arguments: {json.dumps({k: str(v) for k, v in vars(args).items()})}")
    vae_path = args.work / "vae"
    if (vae_path / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(vae_path).eval()
        log(f"reusing the VAE in {vae_path}")
    else:
        vae = train_vae(args.seed, args.vae_steps, args.vae_batch, log)
        log(f"latent scale correction {rescale_latents(vae, args.seed):.3f}")
        vae.save_pretrained(vae_path)
    if args.stage == "vae":
        return 0
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
    ids = token_ids(tokenizer, captions)
    empty_ids = token_ids(tokenizer, [""])[0]
    log(f"{len(pictures)} pictures, {len(captions)} captions, latents {tuple(latents.shape[1:])} "
        f"std {latents.std().item():.3f} ({time.time() - began:.0f}s so far)")
    if args.stage == "export":
        args.unet_steps = torch.load(args.work / "unet_state.pt")["step"]
    model = train_unet(latents, ids, caption_index, empty_ids, vae, tokenizer, args, log, args.work)
    folder = write_sd1_folder(args.work / "model", model.unet, vae, model.text_encoder)
    from trainer.models.loading import save_as_single_file

    save_as_single_file(folder, args.out)
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {(time.time() - began) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
