"""The noise a training step adds to latents, and its timesteps: pure functions over an explicit generator.

Semantics follow sd-scripts (``train_util.get_noise_noisy_latents_and_timesteps``, ``custom_train_functions``):
noise offset (Guttenberg's "diffusion with offset noise"), adaptive noise scale, multires (pyramid) noise, and
uniform integer timesteps. All random draws come from the ``generator`` passed in, in a documented order, so
a seeded run repeats exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MULTIRES_DEFAULT_DISCOUNT = 0.3  # "Multires noise discount" 0 means this value (kohya_ss / sd-scripts default)
NUM_TRAIN_TIMESTEPS = 1000


def random_strength(value: float, generator: torch.Generator) -> float:
    """``U(0, 1) · value``: one draw per batch, as sd-scripts' ``*_random_strength`` options (``torch.rand(1)``)."""
    return float(torch.rand((), generator=generator, device=generator.device).item()) * value


def apply_noise_offset(
    noise: torch.Tensor,
    latents: torch.Tensor,
    offset: float,
    adaptive_scale: float,
    generator: torch.Generator,
    random_offset: bool = False,
) -> torch.Tensor:
    """``noise + o · z`` with ``z ~ N(0, 1)`` of shape (B, C, 1, 1): one constant per sample and channel.

    ``o = offset``, or with an adaptive scale ``o = max(0, offset + adaptive_scale · |mean_{h,w}(latents)|)``
    per (sample, channel). ``offset == 0`` returns ``noise`` unchanged and draws nothing (sd-scripts skips an
    unset offset, and the adaptive scale only works together with it). ``random_offset``
    (noise_offset_random_strength): ``offset`` is first replaced by ``U(0, 1) · offset``, one per batch.
    Draws: (with ``random_offset``, one ``rand(())``), then one ``randn(B, C, 1, 1)``.
    """
    if offset == 0:
        return noise
    if random_offset:
        offset = random_strength(offset, generator)
    strength: float | torch.Tensor = offset
    if adaptive_scale != 0:
        channel_means = latents.float().mean(dim=(2, 3), keepdim=True).abs()
        strength = torch.clamp(offset + adaptive_scale * channel_means, min=0.0).to(noise.dtype)
    batch, channels = latents.shape[0], latents.shape[1]
    shift = torch.randn(
        (batch, channels, 1, 1), generator=generator, device=generator.device, dtype=noise.dtype
    ).to(noise.device)
    return noise + strength * shift


def effective_multires_discount(discount: float) -> float:
    """The discount actually used: the setting's 0 means the default 0.3."""
    return MULTIRES_DEFAULT_DISCOUNT if discount == 0 else discount


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator) -> torch.Tensor:
    """Multires (pyramid) noise, after Wasserman's "multi-resolution noise" as sd-scripts implements it.

    For i = 0 … iterations−1: draw ``r ~ U(2, 4)``, size ``(max(1, int(H / r^i)), max(1, int(W / r^i)))``, draw
    ``z ~ N(0, 1)`` of shape (B, C, size), add ``bilinear_upsample(z) · discount^i``; stop after a side reaches 1.
    The sum is divided by its global standard deviation. As in sd-scripts, i starts at 0, so the first term is an
    extra full-resolution N(0, 1) of weight 1. ``iterations == 0`` returns ``noise`` unchanged; discount 0 means
    0.3. Draws per iteration, in order: ``rand(())`` for r, then ``randn(B, C, h, w)``.
    """
    if iterations < 0:
        raise ValueError(f"multires_noise_iterations: must be >= 0, got {iterations}")
    if iterations == 0:
        return noise
    weight_base = effective_multires_discount(discount)
    batch, channels, height, width = noise.shape
    total = noise.clone()
    for level in range(iterations):
        ratio = 2.0 + 2.0 * torch.rand((), generator=generator, device=generator.device).item()
        level_height = max(1, int(height / ratio**level))
        level_width = max(1, int(width / ratio**level))
        coarse = torch.randn(
            (batch, channels, level_height, level_width), generator=generator, device=generator.device
        ).to(device=noise.device, dtype=torch.float32)
        upsampled = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        total = total + (upsampled * weight_base**level).to(noise.dtype)
        if level_height == 1 or level_width == 1:
            break
    return total / total.std()


def training_noise(
    latents: torch.Tensor,
    generator: torch.Generator,
    *,
    noise_offset_type: str = "Original",
    noise_offset: float = 0.0,
    adaptive_noise_scale: float = 0.0,
    multires_noise_iterations: int = 0,
    multires_noise_discount: float = 0.0,
    noise_offset_random_strength: bool = False,
) -> torch.Tensor:
    """The noise for one batch: ``randn_like(latents)`` then the chosen noise-offset type.

    "Original" applies :func:`apply_noise_offset`; "Multires" applies :func:`pyramid_noise`. Only the settings
    of the chosen type are used, as the kohya_ss GUI passes only those.
    """
    noise = torch.randn(latents.shape, generator=generator, device=generator.device, dtype=latents.dtype)
    noise = noise.to(latents.device)
    if noise_offset_type == "Original":
        return apply_noise_offset(noise, latents, noise_offset, adaptive_noise_scale, generator,
                                  noise_offset_random_strength)
    if noise_offset_type == "Multires":
        return pyramid_noise(noise, multires_noise_iterations, multires_noise_discount, generator)
    raise ValueError(f"noise_offset_type: {noise_offset_type!r} is not 'Original' or 'Multires'")


def sample_timesteps(
    batch_size: int,
    generator: torch.Generator,
    min_t: int = 0,
    max_t: int = NUM_TRAIN_TIMESTEPS,
) -> torch.LongTensor:
    """One timestep per sample, uniform over the integers ``min_t … max_t − 1`` (sd-scripts' ``randint``).

    ``min_t == max_t`` gives that constant timestep (clamped to the last one, 999, when it is 1000).
    Draws: one ``randint`` of shape (batch_size,), or nothing for a constant.
    """
    if not 0 <= min_t <= max_t <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"timesteps: need 0 <= min_timestep <= max_timestep <= 1000, got {min_t} and {max_t}")
    if min_t == max_t:
        constant = min(min_t, NUM_TRAIN_TIMESTEPS - 1)
        return torch.full((batch_size,), constant, dtype=torch.long, device=generator.device)
    return torch.randint(min_t, max_t, (batch_size,), generator=generator, device=generator.device)


def input_perturbation(noise: torch.Tensor, gamma: float, random: bool, generator: torch.Generator) -> torch.Tensor:
    """The noise the latents are noised with under ip_noise_gamma: ``noise + γ · ε'``, ``ε' ~ N(0, 1)``, while
    the target stays ``noise`` (Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in Diffusion
    Models", arXiv 2301.11706; sd-scripts' ``--ip_noise_gamma``). With ``random`` γ becomes ``U(0, 1) · γ``.
    ``gamma == 0`` returns ``noise`` and draws nothing. Draws (after the timesteps, as sd-scripts): with
    ``random`` one ``rand(())``, then one ``randn`` shaped like ``noise``."""
    if gamma == 0:
        return noise
    if random:
        gamma = random_strength(gamma, generator)
    extra = torch.randn(noise.shape, generator=generator, device=generator.device, dtype=noise.dtype)
    return noise + gamma * extra.to(noise.device)
