"""Noise offset, adaptive scale, multires noise, timesteps, SNR and min-SNR weights, the loss: by hand and seeded."""
import pytest
import torch
import torch.nn.functional as F

from trainer.loss import (
    add_noise,
    min_snr_weight,
    per_sample_mse,
    prediction_target,
    sd_alphas_cumprod,
    snr,
    training_loss,
)
from trainer.noise import (
    apply_noise_offset,
    effective_multires_discount,
    pyramid_noise,
    sample_timesteps,
    training_noise,
)


def seeded(seed=7):
    return torch.Generator().manual_seed(seed)


def channel_latents():
    """Batch 1, channel 0 everywhere 2.0, channel 1 everywhere −0.5 (mean over h, w known by hand)."""
    latents = torch.empty(1, 2, 3, 3)
    latents[:, 0] = 2.0
    latents[:, 1] = -0.5
    return latents


# ---------------------------------------------------------------- noise offset


def test_zero_offset_returns_noise_and_draws_nothing():
    noise = torch.randn(2, 4, 3, 3, generator=seeded(1))
    generator = seeded()
    assert apply_noise_offset(noise, torch.zeros_like(noise), 0.0, 0.5, generator) is noise
    assert torch.equal(generator.get_state(), seeded().get_state())


def test_noise_offset_adds_one_draw_per_sample_and_channel():
    noise = torch.randn(2, 4, 3, 3, generator=seeded(1))
    result = apply_noise_offset(noise, torch.zeros_like(noise), 0.1, 0.0, seeded())
    shift = torch.randn(2, 4, 1, 1, generator=seeded())  # the same first draw from the same seed
    assert torch.allclose(result, noise + 0.1 * shift)
    added = result - noise
    assert torch.allclose(added, added[:, :, :1, :1].expand_as(added))  # constant over h, w


def test_adaptive_noise_scale_by_hand():
    latents = channel_latents()
    noise = torch.zeros_like(latents)
    shift = torch.randn(1, 2, 1, 1, generator=seeded())
    # offset 0.1, adaptive 0.5: channel 0 → 0.1 + 0.5·|2| = 1.1, channel 1 → 0.1 + 0.5·|−0.5| = 0.35
    raised = apply_noise_offset(noise, latents, 0.1, 0.5, seeded())
    assert torch.allclose(raised[0, 0], torch.full((3, 3), 1.1 * shift[0, 0, 0, 0].item()))
    assert torch.allclose(raised[0, 1], torch.full((3, 3), 0.35 * shift[0, 1, 0, 0].item()))
    # a negative scale clamps at 0: 0.1 − 2 < 0 and 0.1 − 0.5 < 0
    lowered = apply_noise_offset(noise, latents, 0.1, -1.0, seeded())
    assert torch.equal(lowered, torch.zeros_like(lowered))


# ---------------------------------------------------------------- multires


def replay_pyramid(noise, iterations, discount, generator):
    """The expected pyramid noise, rebuilt from the same generator draws in the documented order."""
    batch, channels, height, width = noise.shape
    total = noise.clone()
    for level in range(iterations):
        ratio = 2 + 2 * torch.rand((), generator=generator).item()
        size = (max(1, int(height / ratio**level)), max(1, int(width / ratio**level)))
        coarse = torch.randn((batch, channels, *size), generator=generator)
        total += F.interpolate(coarse, size=(height, width), mode="bilinear") * discount**level
        if 1 in size:
            break
    return total / total.std()


def test_pyramid_noise_matches_the_replayed_draws():
    noise = torch.randn(2, 4, 16, 16, generator=seeded(1))
    result = pyramid_noise(noise, 3, 0.8, seeded())
    assert torch.allclose(result, replay_pyramid(noise, 3, 0.8, seeded()), atol=1e-6)
    assert result.std().item() == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(result, noise / noise.std())


def test_pyramid_one_iteration_is_noise_plus_full_resolution_draw():
    noise = torch.randn(1, 1, 4, 4, generator=seeded(1))
    generator = seeded()
    torch.rand((), generator=generator)  # r is drawn but r^0 = 1
    extra = torch.randn(1, 1, 4, 4, generator=generator)
    expected = (noise + extra) / (noise + extra).std()
    assert torch.allclose(pyramid_noise(noise, 1, 0.8, seeded()), expected, atol=1e-6)


def test_pyramid_stops_at_one_pixel_and_zero_discount_means_point_three():
    noise = torch.randn(1, 1, 2, 2, generator=seeded(1))
    generator = seeded()
    pyramid_noise(noise, 6, 0.5, generator)
    # level 1 has side int(2 / r) = 1 for r in [2, 4): exactly two levels of draws
    expected_state = seeded()
    for size in (2, 1):
        torch.rand((), generator=expected_state)
        torch.randn(1, 1, size, size, generator=expected_state)
    assert torch.equal(generator.get_state(), expected_state.get_state())
    assert effective_multires_discount(0) == 0.3 and effective_multires_discount(0.8) == 0.8
    assert torch.equal(pyramid_noise(noise, 6, 0.0, seeded()), pyramid_noise(noise, 6, 0.3, seeded()))
    assert pyramid_noise(noise, 0, 0.3, seeded()) is noise


def test_training_noise_uses_only_the_chosen_type():
    latents = channel_latents()
    plain = torch.randn(latents.shape, generator=seeded())
    assert torch.equal(training_noise(latents, seeded()), plain)
    # Original ignores multires settings; Multires ignores the offset
    original = training_noise(latents, seeded(), noise_offset=0.1, multires_noise_iterations=6)
    generator = seeded()
    base = torch.randn(latents.shape, generator=generator)
    assert torch.allclose(original, apply_noise_offset(base, latents, 0.1, 0.0, generator))
    multires = training_noise(latents, seeded(), noise_offset_type="Multires", noise_offset=0.1, multires_noise_iterations=2)
    generator = seeded()
    base = torch.randn(latents.shape, generator=generator)
    assert torch.allclose(multires, replay_pyramid(base, 2, 0.3, generator), atol=1e-6)
    with pytest.raises(ValueError, match="noise_offset_type"):
        training_noise(latents, seeded(), noise_offset_type="Pyramid")


# ---------------------------------------------------------------- timesteps


def test_timesteps_are_seeded_uniform_integers():
    timesteps = sample_timesteps(64, seeded())
    assert torch.equal(timesteps, torch.randint(0, 1000, (64,), generator=seeded()))
    assert timesteps.dtype == torch.long
    ranged = sample_timesteps(500, seeded(), 100, 200)
    assert ranged.min() >= 100 and ranged.max() <= 199
    assert len(set(ranged.tolist())) > 50
    assert sample_timesteps(3, seeded(), 500, 500).tolist() == [500, 500, 500]
    with pytest.raises(ValueError, match="min_timestep"):
        sample_timesteps(3, seeded(), 600, 500)


# ---------------------------------------------------------------- SNR and loss

KNOWN_ALPHAS = torch.tensor([0.5, 0.8, 0.2, 0.99])  # SNR = ᾱ/(1−ᾱ) = 1, 4, 0.25, 99
ALL_T = torch.arange(4)


def test_snr_by_hand():
    assert torch.allclose(snr(ALL_T, KNOWN_ALPHAS), torch.tensor([1.0, 4.0, 0.25, 99.0]), rtol=1e-5)


def test_min_snr_weights_by_hand():
    # ε: min(SNR, γ)/SNR; v: min(SNR, γ)/(SNR + 1)
    eps_5 = min_snr_weight(ALL_T, KNOWN_ALPHAS, 5.0, v_prediction=False)
    assert torch.allclose(eps_5, torch.tensor([1.0, 1.0, 1.0, 5 / 99]), rtol=1e-5)
    v_5 = min_snr_weight(ALL_T, KNOWN_ALPHAS, 5.0, v_prediction=True)
    assert torch.allclose(v_5, torch.tensor([0.5, 0.8, 0.2, 0.05]), rtol=1e-5)
    eps_2 = min_snr_weight(torch.tensor([1, 3, 1]), KNOWN_ALPHAS, 2.0, v_prediction=False)
    assert torch.allclose(eps_2, torch.tensor([0.5, 2 / 99, 0.5]), rtol=1e-5)
    assert torch.equal(min_snr_weight(ALL_T, KNOWN_ALPHAS, 0.0, v_prediction=True), torch.ones(4))
    with pytest.raises(ValueError, match="min_snr_gamma"):
        min_snr_weight(ALL_T, KNOWN_ALPHAS, -1.0, v_prediction=False)


def test_sd_schedule_add_noise_and_velocity_match_diffusers():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    alphas = sd_alphas_cumprod()
    assert torch.allclose(alphas, scheduler.alphas_cumprod, rtol=1e-6)
    generator = seeded()
    latents, noise = torch.randn(3, 4, 2, 2, generator=generator), torch.randn(3, 4, 2, 2, generator=generator)
    timesteps = torch.tensor([0, 500, 999])
    assert torch.allclose(add_noise(latents, noise, timesteps, alphas), scheduler.add_noise(latents, noise, timesteps), atol=1e-6)
    velocity = prediction_target(latents, noise, timesteps, alphas, v_prediction=True)
    assert torch.allclose(velocity, scheduler.get_velocity(latents, noise, timesteps), atol=1e-6)
    assert prediction_target(latents, noise, timesteps, alphas, v_prediction=False) is noise


def test_training_loss_by_hand():
    prediction = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 2.0)])  # per-sample MSE 1 and 4
    assert torch.equal(per_sample_mse(prediction, target), torch.tensor([1.0, 4.0]))
    timesteps = torch.tensor([1, 3])  # SNR 4 and 99
    plain = training_loss(prediction, target, timesteps, KNOWN_ALPHAS)
    assert plain.item() == pytest.approx(2.5)
    # reg weight 0.5 on the second sample: (1 + 4·0.5)/2
    weighted = training_loss(prediction, target, timesteps, KNOWN_ALPHAS, sample_weights=torch.tensor([1.0, 0.5]))
    assert weighted.item() == pytest.approx(1.5)
    # γ = 2, ε: weights 2/4 and 2/99 → (1·0.5 + 4·0.5·2/99)/2
    snr_weighted = training_loss(
        prediction, target, timesteps, KNOWN_ALPHAS, sample_weights=torch.tensor([1.0, 0.5]), min_snr_gamma=2.0
    )
    assert snr_weighted.item() == pytest.approx((0.5 + 4 * 0.5 * 2 / 99) / 2, rel=1e-5)
