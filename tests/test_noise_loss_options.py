"""kohya_ss's timestep, input-noise and loss options: the formulas (as sd-scripts computes them) and their
effect on a real training step of the tiny model."""
import math

import pytest
import torch

from tests.effects_runs import run_demo
from trainer.loss import (elementwise_loss, huber_threshold, min_snr_weight, sd_alphas_cumprod, snr, snr_post_weights,
                          training_loss)
from trainer.noise import apply_noise_offset, input_perturbation, sample_timesteps
from trainer.spec import validate_values

ALPHAS = sd_alphas_cumprod()


def test_huber_thresholds_follow_sd_scripts_schedules():
    t = torch.tensor([0, 500, 999])
    sigma = ((1 - ALPHAS[t]) / ALPHAS[t]).sqrt()
    assert torch.allclose(huber_threshold(t, ALPHAS, "snr", 0.1, 1.0), 0.9 / (1 + sigma) ** 2 + 0.1)
    expo = huber_threshold(t, ALPHAS, "exponential", 0.1, 2.0)
    assert expo[0].item() == pytest.approx(2.0) and expo[2].item() == pytest.approx(2.0 * 0.1 ** 0.999, rel=1e-5)
    assert torch.allclose(huber_threshold(t, ALPHAS, "constant", 0.1, 3.0), torch.full((3,), 0.3))


def test_elementwise_losses():
    p, y = torch.tensor([[0.0, 1.0, 3.0]]), torch.zeros(1, 3)
    c = torch.tensor([0.5])
    assert elementwise_loss(p, y, "l2").tolist() == [[0.0, 1.0, 9.0]]
    assert elementwise_loss(p, y, "l1").tolist() == [[0.0, 1.0, 3.0]]
    huber = elementwise_loss(p, y, "huber", c)[0]
    assert huber[2].item() == pytest.approx(2 * 0.5 * (math.sqrt(9 + 0.25) - 0.5))
    assert torch.allclose(elementwise_loss(p, y, "smooth_l1", c), huber / 0.5)
    with pytest.raises(ValueError, match="loss_type"):
        elementwise_loss(p, y, "l3")


def test_snr_weights_match_sd_scripts():
    t = torch.tensor([1, 300, 900])
    s = torch.clamp(snr(t, ALPHAS), max=1000)
    ones = snr_post_weights(t, ALPHAS, v_prediction=False)
    assert torch.equal(ones, torch.ones(3))
    assert torch.allclose(snr_post_weights(t, ALPHAS, v_prediction=False, debiased_estimation_loss=True), 1 / s.sqrt())
    assert torch.allclose(snr_post_weights(t, ALPHAS, v_prediction=True, debiased_estimation_loss=True), 1 / (s + 1))
    assert torch.equal(snr_post_weights(t, ALPHAS, v_prediction=False, scale_v_pred_loss_like_noise_pred=True), ones)
    assert torch.allclose(snr_post_weights(t, ALPHAS, v_prediction=True, scale_v_pred_loss_like_noise_pred=True),
                          s / (s + 1))
    assert torch.allclose(snr_post_weights(t, ALPHAS, v_prediction=False, v_pred_like_loss=0.5),
                          1 + 0.5 / (s / (s + 1)))


def test_training_loss_combines_sample_min_snr_and_post_weights():
    gen = torch.Generator().manual_seed(0)
    p, y = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 700])
    per_sample = ((p - y) ** 2).mean(dim=(1, 2, 3))
    weights = torch.tensor([1.0, 0.5])
    expected = (per_sample * weights * min_snr_weight(t, ALPHAS, 5, False)
                * snr_post_weights(t, ALPHAS, v_prediction=False, debiased_estimation_loss=True)).mean()
    got = training_loss(p, y, t, ALPHAS, sample_weights=weights, min_snr_gamma=5, debiased_estimation_loss=True)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert training_loss(p, y, t, ALPHAS).item() == pytest.approx(per_sample.mean().item(), rel=1e-6)


def test_timesteps_stay_in_the_chosen_range():
    gen = torch.Generator().manual_seed(1)
    t = sample_timesteps(1000, gen, 200, 300)
    assert t.min() >= 200 and t.max() <= 299
    assert set(sample_timesteps(4, gen, 1000, 1000).tolist()) == {999}


def test_input_perturbation_and_random_strengths():
    noise = torch.zeros(2, 4, 8, 8)
    gen = torch.Generator().manual_seed(3)
    assert input_perturbation(noise, 0.0, True, gen) is noise
    before = gen.get_state()
    full = input_perturbation(noise, 0.2, False, gen)
    gen.set_state(before)
    assert torch.allclose(full, 0.2 * torch.randn(noise.shape, generator=gen))
    gen.set_state(before)
    strength = torch.rand((), generator=gen).item() * 0.2
    expected = strength * torch.randn(noise.shape, generator=gen)
    gen.set_state(before)
    assert torch.allclose(input_perturbation(noise, 0.2, True, gen), expected)
    gen.set_state(before)
    offset = torch.rand((), generator=gen).item() * 0.1
    shift = torch.randn((2, 4, 1, 1), generator=gen)
    gen.set_state(before)
    assert torch.allclose(apply_noise_offset(noise, noise, 0.1, 0.0, gen, random_offset=True), offset * shift)


def test_bad_values_are_named():
    for values, key in (({"min_timestep": 600, "max_timestep": 500}, "min_timestep"),
                        ({"max_timestep": 1001}, "max_timestep"), ({"ip_noise_gamma": 2}, "ip_noise_gamma"),
                        ({"loss_type": "l3"}, "loss_type"), ({"huber_schedule": "cubic"}, "huber_schedule"),
                        ({"loss_type": "huber", "huber_c": 0}, "huber_c"), ({"huber_scale": -1}, "huber_scale"),
                        ({"v_pred_like_loss": 1.5}, "v_pred_like_loss")):
        _, problems = validate_values(values, for_training=False)
        assert key in {p.setting for p in problems if p.level == "error"}, values


@pytest.fixture(scope="module")
def first_loss(demo_dir, tmp_path_factory):
    done: dict = {}

    def run(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in done:
            work = tmp_path_factory.mktemp("loss")
            done[key] = run_demo(demo_dir, work, max_train_steps=1, seed=5, **overrides).losses[0]
        return done[key]
    return run


@pytest.mark.parametrize("overrides", [
    {"min_timestep": 900, "max_timestep": 1000},
    {"ip_noise_gamma": 0.5},
    {"ip_noise_gamma": 0.5, "ip_noise_gamma_random_strength": True},
    {"noise_offset": 0.5, "noise_offset_random_strength": True},
    {"loss_type": "l1"},
    {"loss_type": "huber", "huber_schedule": "constant", "huber_c": 0.05},
    {"loss_type": "smooth_l1", "huber_schedule": "exponential", "huber_scale": 2.0},
    {"debiased_estimation_loss": True},
    {"v_pred_like_loss": 0.5},
], ids=lambda o: "+".join(o))
def test_each_option_changes_the_first_training_loss(first_loss, overrides):
    assert first_loss(**overrides) != pytest.approx(first_loss(), rel=1e-6)


def test_scale_v_pred_loss_is_inert_on_a_noise_prediction_model(first_loss):
    assert first_loss(scale_v_pred_loss_like_noise_pred=True) == first_loss()
