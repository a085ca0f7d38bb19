"""GPU benchmark (not run yet: no GPU here): LoRA training steps of the SD1.5-shaped UNet at 512 px and the
SDXL-shaped UNet at 1024 px, batch 1, fp16 and bf16, with and without gradient checkpointing, SDPA and
xformers, and (with SDPA) the UNet in the default and the channels-last layout (the trainer uses channels-last
only for fp32 on a CPU so far: this is the measurement that would decide it for GPUs); prints it/s, the peak
GPU memory against the plan's estimate, and the model FLOP utilisation.

The UNets are built with random weights directly on the GPU (no download, no folder on disk), frozen in the
16-bit type, with the trainer's own LoRA (rank 8, ``apply_network``) and AdamW; the text encoders' outputs
count as cached (random states), as with a text encoder learning rate of 0. The estimate is
``trainer.memory.estimate`` over the same model built on the meta device; FLOPs per step come from
``torch.utils.flop_counter`` on one step. Run on a CUDA machine:
``python bench/gpu_bench.py [--steps 20] [--peak-tflops 989]`` (989: H100/H200 dense bf16/fp16).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import sd15_unet_config  # noqa: E402


def sdxl_unet_config() -> dict:
    """UNet2DConditionModel arguments of SDXL base (2.57 B parameters)."""
    return {
        "sample_size": 128, "in_channels": 4, "out_channels": 4, "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
    }


def tiny_config(family: str) -> dict:
    """A few-MB UNet of the family's shape for ``--smoke``."""
    small = {"block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 8,
             "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")}
    if family == "sdxl":
        return {**sdxl_unet_config(), **small, "transformer_layers_per_block": (1, 1), "attention_head_dim": (2, 4),
                "cross_attention_dim": 64, "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80}
    return {**sd15_unet_config(), **small, "cross_attention_dim": 32, "attention_head_dim": 4}


def network_config(family: str):
    from trainer.network import NetworkConfig

    return NetworkConfig(lora_type="Standard", dim=8, alpha=8, train_unet=True, train_text_encoder=False,
                         family=family)


def estimate_bytes(config: dict, family: str, size: int, dtype_name: str, checkpointing: bool) -> int:
    """The plan's estimate (device memory on CUDA) for this UNet, LoRA and setting."""
    from diffusers import UNet2DConditionModel

    from trainer.memory import ModelFacts, RunShape, estimate
    from trainer.memory_trace import largest_outputs, trace_unet, unet_inputs
    from trainer.network import apply_network

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet.requires_grad_(False)
    params = sum(p.numel() for p in unet.parameters())
    castable = sum(m.weight.numel() for m in unet.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    with torch.device("meta"):
        network = apply_network(unet, [], network_config(family))
    lora = sum(p.numel() for p in network.trainable_parameters())
    facts = ModelFacts({"unet": params}, {"unet": params * 2}, {"unet": lora}, {"unet": 0}, castable, 0, True)
    trace = trace_unet(unet, 1, size // 8, size // 8, 77, checkpointing)
    part = trace_unet(unet, 1, size // 8, size // 8, 77, False).largest_part_bytes if checkpointing else 0
    args, kwargs = unet_inputs(unet, 2, size // 8, size // 8)
    figures = {"unet_saved": trace.saved_bytes, "unet_largest": trace.largest_bytes, "unet_part": part,
               "text_saved": 0, "text_cache_per_caption": 0, "vae_encode": 0,
               "sample_unet": largest_outputs(unet, lambda: unet(*args, **kwargs)), "vae_decode": 0}
    shape = RunShape(batch_size=1, resolution=(size, size), gradient_checkpointing=checkpointing,
                     train_text_encoder=False, optimizer="AdamW", mixed_precision=dtype_name, full_fp16=False,
                     cache_latents=True, image_count=0, caption_count=0, tokens=77, sample_resolution=None)
    return estimate(shape, facts, lambda _: figures, "cuda", 0)["peak_bytes"]


def one_case(config: dict, family: str, size: int, dtype_name: str, checkpointing: bool, attention: str,
             layout: str, steps: int, peak_tflops: float, device: str = "cuda") -> str:
    from diffusers import UNet2DConditionModel

    from trainer.network import apply_network

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    on_gpu = device == "cuda"
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with torch.device(device):
        unet = UNet2DConditionModel(**config).to(dtype)
    unet.requires_grad_(False)
    if layout == "channels-last":
        unet.to(memory_format=torch.channels_last)
    if attention == "xformers":
        unet.enable_xformers_memory_efficient_attention()
    if checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()
    network = apply_network(unet, [], network_config(family))
    network.cast_adapters(torch.float32)
    network_params = network.trainable_parameters()
    for p in network_params:
        p.data = p.data.to(device)
    optimizer = torch.optim.AdamW(network_params, lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16 and on_gpu)
    latents = torch.randn(1, 4, size // 8, size // 8, device=device)
    states = torch.randn(1, 77, config["cross_attention_dim"], device=device, dtype=dtype)
    extra = {}
    if family == "sdxl":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled, device=device, dtype=dtype),
                                       "time_ids": torch.tensor([[size, size, 0, 0, size, size]], device=device,
                                                                dtype=dtype)}}

    def step() -> None:
        timesteps = torch.randint(0, 1000, (1,), device=device)
        noise = torch.randn_like(latents)
        with torch.autocast(device, dtype=dtype):
            prediction = unet((latents + noise).to(dtype), timesteps, states, **extra).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    speed = steps / (time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() if on_gpu else 1  # no device memory to count on a CPU
    estimated = estimate_bytes(config, family, size, dtype_name, checkpointing)
    mfu = flops * speed / (peak_tflops * 1e12)
    del unet, network, optimizer
    return (f"| {family} | {size} | {dtype_name} | {'on' if checkpointing else 'off'} | {attention} | {layout} | "
            f"{speed:.2f} | "
            f"{peak / 2**30:.2f} GiB | {estimated / 2**30:.2f} GiB | {(estimated - peak) / peak:+.0%} | {mfu:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--only", default="", help="sd15 or sdxl")
    parser.add_argument("--smoke", action="store_true",
                        help="on the CPU with two tiny UNets, one step each: that the script runs, before a GPU is spent")
    args = parser.parse_args()
    if args.smoke:
        for family, config in (("sd1", tiny_config("sd1")), ("sdxl", tiny_config("sdxl"))):
            for layout in ("default", "channels-last"):
                print(one_case(config, family, 64, "bf16", True, "sdpa", layout, 1, 1.0, device="cpu"), flush=True)
        return
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py needs a CUDA GPU")
    attentions = ["sdpa"] + (["xformers"] if importlib.util.find_spec("xformers") else [])
    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; attention: {', '.join(attentions)}")
    print("| model | px | dtype | grad. ckpt | attention | layout | it/s | peak GPU memory | estimate | error | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    models = [("sd15", sd15_unet_config(), 512), ("sdxl", sdxl_unet_config(), 1024)]
    for family, config, size in models:
        if args.only and args.only != family:
            continue
        for dtype_name in ("fp16", "bf16"):
            for checkpointing in (False, True):
                for attention, layout in [(a, "default") for a in attentions] + [("sdpa", "channels-last")]:
                    print(one_case(config, "sd1" if family == "sd15" else "sdxl", size, dtype_name, checkpointing,
                                   attention, layout, args.steps, args.peak_tflops), flush=True)


if __name__ == "__main__":
    main()
