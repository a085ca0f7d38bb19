"""Loss weighting for a training step: SNR, min-SNR-γ, the prediction target and the per-sample loss.

Semantics follow sd-scripts (``train_network.py`` and ``custom_train_functions.apply_snr_weight``): the MSE is
averaged over C, H, W per sample, multiplied by the sample's weight (``prior_loss_weight`` for regularization
images, 1 otherwise), then by the min-SNR weight, then averaged over the batch.
"""
from __future__ import annotations

import math

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


LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")
SNR_CAP = 1000.0  # sd-scripts caps the SNR at 1000 in the v-pred-like and debiased weights


def huber_threshold(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, schedule: str, huber_c: float,
                    huber_scale: float, num_timesteps: int = 1000) -> torch.Tensor:
    """Huber's ``c`` per sample, as sd-scripts' ``get_huber_threshold_if_needed`` (Khrapov et al. 2024,
    "Improving Diffusion Models's Data-Corruption Resistance using Scheduled Pseudo-Huber Loss"):

    - ``snr``: ``(1 − c)/(1 + σ_t)² + c`` with ``σ_t = √((1 − ᾱ_t)/ᾱ_t)``;
    - ``exponential``: ``exp(−(−ln c / T) · t) · scale`` (c at t = T, scale at t = 0);
    - ``constant``: ``c · scale``.
    """
    if schedule == "exponential":
        rate = -math.log(huber_c) / num_timesteps
        return torch.exp(-rate * timesteps.float()) * huber_scale
    if schedule == "snr":
        alphas = alphas_cumprod.to(timesteps.device, torch.float32)[timesteps.long()]
        sigmas = ((1.0 - alphas) / alphas) ** 0.5
        return (1.0 - huber_c) / (1.0 + sigmas) ** 2 + huber_c
    if schedule == "constant":
        return torch.full(timesteps.shape, huber_c * huber_scale, dtype=torch.float32, device=timesteps.device)
    raise ValueError(f"huber_schedule: {schedule!r} is not one of {', '.join(HUBER_SCHEDULES)}")


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                     huber_c: torch.Tensor | None = None) -> torch.Tensor:
    """sd-scripts' ``conditional_loss`` (reduction none, float32): l2 ``(p − y)²``; l1 ``|p − y|``;
    huber (pseudo-Huber) ``2c(√((p − y)² + c²) − c)``; smooth_l1 ``2(√((p − y)² + c²) − c)``, with ``c``
    per sample (:func:`huber_threshold`)."""
    p, y = prediction.float(), target.float()
    if loss_type == "l2":
        return F.mse_loss(p, y, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(p, y, reduction="none")
    if loss_type not in ("huber", "smooth_l1"):
        raise ValueError(f"loss_type: {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    if huber_c is None:
        raise ValueError(f"loss_type {loss_type} needs Huber's c")
    c = _per_sample(huber_c.float(), p)
    root = torch.sqrt((p - y) ** 2 + c**2) - c
    return 2 * c * root if loss_type == "huber" else 2 * root


def snr_post_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, *, v_prediction: bool,
                     scale_v_pred_loss_like_noise_pred: bool = False, v_pred_like_loss: float = 0.0,
                     debiased_estimation_loss: bool = False) -> torch.Tensor:
    """The per-sample factor sd-scripts' ``post_process_loss`` applies after min-SNR, with ``S = min(SNR_t,
    1000)`` (``custom_train_functions``):

    - scale_v_pred_loss_like_noise_pred (v-prediction models only): × ``S/(S + 1)``;
    - v_pred_like_loss x: ``loss + x · loss / (S/(S + 1))``, i.e. × ``1 + x (S + 1)/S``;
    - debiased_estimation_loss: × ``1/√S`` (ε) or ``1/(S + 1)`` (v) (Yu et al. 2024, "Debias the Training
      of Diffusion Models").
    The three multiply, so their order does not matter.
    """
    capped = torch.clamp(snr(timesteps, alphas_cumprod), max=SNR_CAP)
    weight = torch.ones_like(capped)
    if scale_v_pred_loss_like_noise_pred and v_prediction:
        weight = weight * capped / (capped + 1.0)
    if v_pred_like_loss:
        weight = weight * (1.0 + v_pred_like_loss * (capped + 1.0) / capped)
    if debiased_estimation_loss:
        weight = weight * (1.0 / (capped + 1.0) if v_prediction else 1.0 / torch.sqrt(capped))
    return weight


def apply_loss_mask(elements: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """sd-scripts' ``apply_masked_loss``: the element-wise loss (B, C, h, w) times each sample's mask (B, H, W)
    in [0, 1], brought to the latent size by area averaging (``interpolate(mode="area")``)."""
    mask = F.interpolate(masks.to(elements.device, torch.float32).unsqueeze(1), size=elements.shape[2:], mode="area")
    return elements * mask


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
    loss_type: str = "l2",
    huber_c: torch.Tensor | None = None,
    scale_v_pred_loss_like_noise_pred: bool = False,
    v_pred_like_loss: float = 0.0,
    debiased_estimation_loss: bool = False,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scalar loss: ``mean_b( L_b · sample_weight_b · min_snr_weight_b · post_weight_b )``, in sd-scripts'
    order: the element-wise loss (:func:`elementwise_loss`), times the masks (:func:`apply_loss_mask`, with
    ``masked_loss`` or alpha masks), averaged over C, H, W; the sample weight; then min-SNR and the other SNR
    weights (:func:`snr_post_weights`).

    ``sample_weights`` (B,) carries ``prior_loss_weight`` for regularization images and 1 for the others;
    None means all ones.
    """
    elements = elementwise_loss(prediction, target, loss_type, huber_c)
    if masks is not None:
        elements = apply_loss_mask(elements, masks)
    loss = elements.mean(dim=tuple(range(1, elements.dim())))
    if sample_weights is not None:
        loss = loss * sample_weights.to(loss.device, torch.float32)
    loss = loss * min_snr_weight(timesteps, alphas_cumprod, min_snr_gamma, v_prediction).to(loss.device)
    post = snr_post_weights(timesteps, alphas_cumprod, v_prediction=v_prediction,
                            scale_v_pred_loss_like_noise_pred=scale_v_pred_loss_like_noise_pred,
                            v_pred_like_loss=v_pred_like_loss, debiased_estimation_loss=debiased_estimation_loss)
    return (loss * post.to(loss.device)).mean()


def loss_options(noise_loss, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> dict:
    """The :func:`training_loss` keywords the job's noise/loss section sets (Huber's c from its schedule)."""
    huber_c = None
    if noise_loss.loss_type in ("huber", "smooth_l1"):
        huber_c = huber_threshold(timesteps, alphas_cumprod, noise_loss.huber_schedule, noise_loss.huber_c,
                                  noise_loss.huber_scale)
    return {"loss_type": noise_loss.loss_type, "huber_c": huber_c,
            "scale_v_pred_loss_like_noise_pred": noise_loss.scale_v_pred_loss_like_noise_pred,
            "v_pred_like_loss": noise_loss.v_pred_like_loss,
            "debiased_estimation_loss": noise_loss.debiased_estimation_loss}
