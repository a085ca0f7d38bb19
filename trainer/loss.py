"""Loss weighting for a training step: SNR, min-SNR-γ, the prediction target and the per-sample loss.

Semantics follow sd-scripts (``train_network.py`` and ``custom_train_functions.apply_snr_weight``): the MSE is
averaged over C, H, W per sample, multiplied by the sample's weight (``prior_loss_weight`` for regularization
images, 1 otherwise), then by the min-SNR weight, then averaged over the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SD_BETA_START = 0.00085
SD_BETA_END = 0.012


def sd_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = SD_BETA_START, beta_end: float = SD_BETA_END) -> torch.Tensor:
    """ᾱ_t of Stable Diffusion's "scaled_linear" schedule: ``β = linspace(√β₀, √β₁, T)²``, ``ᾱ_t = Π_{s≤t}(1 − β_s)``.

    The same numbers as diffusers' ``DDPMScheduler(beta_schedule="scaled_linear")`` with sd-scripts' betas.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``SNR_t = ᾱ_t / (1 − ᾱ_t)`` at each timestep (Kingma et al. 2021), in float32."""
    alphas = alphas_cumprod.to(timesteps.device, torch.float32)[timesteps.long()]
    return alphas / (1.0 - alphas)


def min_snr_weight(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-γ loss weight per sample (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting").

    ε-prediction: ``min(SNR_t, γ) / SNR_t``; v-prediction: ``min(SNR_t, γ) / (SNR_t + 1)``. ``γ == 0`` (the
    setting's "off") gives ones.
    """
    if gamma < 0:
        raise ValueError(f"min_snr_gamma: must be >= 0, got {gamma}")
    if gamma == 0:
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    ratio = snr(timesteps, alphas_cumprod)
    clipped = torch.clamp(ratio, max=gamma)
    return clipped / (ratio + 1.0) if v_prediction else clipped / ratio


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor so it broadcasts over ``like``'s (B, C, H, W), on its device."""
    return values.to(like.device).reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The forward diffusion ``x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε`` (Ho et al. 2020)."""
    alphas = _per_sample(alphas_cumprod.to(latents.device, torch.float32)[timesteps.long()], latents)
    return (alphas.sqrt() * latents.float() + (1.0 - alphas).sqrt() * noise.float()).to(latents.dtype)


def prediction_target(
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    v_prediction: bool,
) -> torch.Tensor:
    """What the U-Net learns to predict: ε, or with v-parameterization ``v = √ᾱ_t · ε − √(1 − ᾱ_t) · x₀``
    (Salimans & Ho 2022)."""
    if not v_prediction:
        return noise
    alphas = _per_sample(alphas_cumprod.to(latents.device, torch.float32)[timesteps.long()], latents)
    return (alphas.sqrt() * noise.float() - (1.0 - alphas).sqrt() * latents.float()).to(noise.dtype)


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every axis but the batch, in float32: shape (B,)."""
    squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
    return squared.mean(dim=tuple(range(1, squared.dim())))


def training_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    sample_weights: torch.Tensor | None = None,
    min_snr_gamma: float = 0.0,
    v_prediction: bool = False,
) -> torch.Tensor:
    """The scalar loss: ``mean_b( MSE_b · sample_weight_b · min_snr_weight_b )``.

    ``sample_weights`` (B,) carries ``prior_loss_weight`` for regularization images and 1 for the others;
    None means all ones.
    """
    loss = per_sample_mse(prediction, target)
    if sample_weights is not None:
        loss = loss * sample_weights.to(loss.device, torch.float32)
    loss = loss * min_snr_weight(timesteps, alphas_cumprod, min_snr_gamma, v_prediction).to(loss.device)
    return loss.mean()
