"""Sample prompts, sampler names → schedulers, and sample images on the tiny model."""
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.models.loading import load_base_model
from trainer.sampling import (
    SAMPLER_NAMES,
    LinearMultistepScheduler,
    derived_seed,
    generate_samples,
    lms_coefficient,
    make_sample_scheduler,
    parse_sample_prompts,
    preserved_state,
    sample_file_name,
)

FAST = "--w 64 --h 64 --s 2"


@pytest.fixture(scope="module")
def base_model(tiny_model_dir):
    return load_base_model(tiny_model_dir)


# ---- prompt parsing (hand-written cases, sd-scripts-semantics §6) ----

def test_prompt_with_every_option():
    [prompt] = parse_sample_prompts("a cat, sitting --n dog, ugly --w 100 --h 300 --d 7 --l 5.5 --s 20 --ss ddim")
    assert prompt.prompt == "a cat, sitting"
    assert prompt.negative_prompt == "dog, ugly"
    assert (prompt.width, prompt.height) == (96, 296)  # floored to multiples of 8
    assert (prompt.seed, prompt.scale, prompt.steps, prompt.sampler) == (7, 5.5, 20, "ddim")


def test_prompt_defaults():
    [prompt] = parse_sample_prompts("a cat")
    assert (prompt.width, prompt.height, prompt.steps, prompt.scale) == (512, 512, 30, 7.5)
    assert prompt.seed is None and prompt.negative_prompt == "" and prompt.sampler is None


def test_blank_and_comment_lines_are_skipped_and_indices_count_prompts():
    prompts = parse_sample_prompts("\n# a comment\nfirst --W 10 --S 0\n\n   \nsecond --s 5000\n")
    assert [p.prompt for p in prompts] == ["first", "second"]
    assert [p.index for p in prompts] == [0, 1]
    assert prompts[0].width == 64  # minimum size; options are case-insensitive
    assert (prompts[0].steps, prompts[1].steps) == (1, 1000)  # clamped to 1..1000


def test_malformed_value_names_line_and_option():
    with pytest.raises(ValueError, match=r"line 2.*--w"):
        parse_sample_prompts("fine --w 64\nbad --w wide")
    with pytest.raises(ValueError, match=r"line 1.*--l"):
        parse_sample_prompts("bad --l high")


# ---- sampler names ----

@pytest.mark.parametrize(
    ("name", "class_name"),
    [("ddim", "DDIMScheduler"), ("pndm", "PNDMScheduler"), ("k_lms", "LinearMultistepScheduler"),
     ("euler", "EulerDiscreteScheduler"), ("k_euler_a", "EulerAncestralDiscreteScheduler"),
     ("heun", "HeunDiscreteScheduler"), ("k_dpm_2", "KDPM2DiscreteScheduler"),
     ("dpm_2_a", "KDPM2AncestralDiscreteScheduler"), ("dpmsingle", "DPMSolverSinglestepScheduler")],
)
def test_sampler_names_map_to_diffusers_schedulers(name, class_name):
    scheduler = make_sample_scheduler(name)
    assert type(scheduler).__name__ == class_name
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.num_train_timesteps == 1000


def test_dpmsolver_variants_and_v_prediction():
    assert make_sample_scheduler("dpmsolver").config.algorithm_type == "dpmsolver"
    assert make_sample_scheduler("dpmsolver++").config.algorithm_type == "dpmsolver++"
    assert make_sample_scheduler("euler_a", v_prediction=True).config.prediction_type == "v_prediction"
    assert make_sample_scheduler("ddim").config.prediction_type == "epsilon"


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="sample_sampler.*'eulr'"):
        make_sample_scheduler("eulr")


def test_lms_coefficients_hand_worked():
    sigmas = [3.0, 2.0, 1.0, 0.0]
    # order 1 is Euler: the weight is the step σ_{t+1} − σ_t.
    assert lms_coefficient(sigmas, 1, 0, 0) == pytest.approx(-1.0)
    # order 2 at t=1 (nodes σ=2, 3): ∫_2^1 (3−τ) dτ = −1.5 and ∫_2^1 (τ−2) dτ = 0.5 (Adams–Bashforth 2).
    assert lms_coefficient(sigmas, 2, 1, 0) == pytest.approx(-1.5)
    assert lms_coefficient(sigmas, 2, 1, 1) == pytest.approx(0.5)
    # any order: the weights sum to the step (a constant derivative is integrated exactly).
    assert sum(lms_coefficient(sigmas, 3, 2, j) for j in range(3)) == pytest.approx(-1.0)


def test_lms_scheduler_recovers_a_known_clean_sample():
    """With the exact noise prediction ε = (x − x0)/σ, every step lands on the line to x0: the end is x0."""
    scheduler = make_sample_scheduler("lms")
    assert isinstance(scheduler, LinearMultistepScheduler)
    scheduler.set_timesteps(6)
    clean = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    sample = clean + scheduler.init_noise_sigma * torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for timestep in scheduler.timesteps:
        sigma = scheduler.sigmas[scheduler.step_index or 0]
        scheduler.scale_model_input(sample, timestep)
        sample = scheduler.step((sample - clean) / sigma, timestep, sample).prev_sample
    assert torch.allclose(sample, clean, atol=1e-4)


# ---- file names and seeds ----

def test_sample_file_names_follow_sd_scripts():
    when = time.mktime((2026, 11, 25, 11, 17, 30, 0, 0, -1))
    assert sample_file_name("demo", 25, None, 1, None, when) == "demo_000025_01_20261125111730.png"
    assert sample_file_name("demo", 25, 3, 0, 7, when) == "demo_e000003_00_20261125111730_7.png"
    assert sample_file_name("", 5, None, 0, None, when) == "000005_00_20261125111730.png"


def test_derived_seeds_are_reproducible_and_distinct():
    assert derived_seed(42, 0) == derived_seed(42, 0)
    assert len({derived_seed(42, 0), derived_seed(42, 1), derived_seed(43, 0)}) == 3
    assert 0 <= derived_seed(-1, 5) < 2**32


# ---- images on the tiny model ----

@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_renders_an_image(base_model, tmp_path, sampler):
    [record] = generate_samples(base_model, f"a red circle {FAST} --d 3", tmp_path, step=4,
                                sampler=sampler, output_name="t")
    image = np.asarray(Image.open(record["path"]))
    assert image.shape == (64, 64, 3)
    assert image.std() > 0  # not a blank (NaN-decoded) image
    assert record["sampler"] == sampler and record["seed"] == 3


def test_samples_are_named_and_seeded_like_sd_scripts(base_model, tmp_path):
    text = f"# skipped\nshapes, red circle {FAST} --d 1\nshapes, green square --n blurry {FAST} --ss ddim"
    records = generate_samples(base_model, text, tmp_path, step=25, sampler="euler_a", output_name="demo", run_seed=42)
    names = [record["path"].rsplit("/", 1)[1] for record in records]
    assert re.fullmatch(r"demo_000025_00_\d{14}_1\.png", names[0])
    assert re.fullmatch(r"demo_000025_01_\d{14}\.png", names[1])
    assert records[1]["seed"] == derived_seed(42, 1)
    assert records[1]["sampler"] == "ddim" and records[1]["prompt"] == "shapes, green square"


def test_seedless_prompts_repeat_across_sample_points(base_model, tmp_path):
    first = generate_samples(base_model, f"a cat {FAST}", tmp_path / "a", step=10, run_seed=7)
    again = generate_samples(base_model, f"a cat {FAST}", tmp_path / "b", step=20, run_seed=7)
    other = generate_samples(base_model, f"a cat {FAST}", tmp_path / "c", step=20, run_seed=8)
    pixels = [np.asarray(Image.open(records[0]["path"])) for records in (first, again, other)]
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


def test_clip_skip_changes_the_conditioning(base_model, tmp_path):
    last = generate_samples(base_model, f"a cat {FAST} --d 1", tmp_path / "a", step=1, clip_skip=1)
    penultimate = generate_samples(base_model, f"a cat {FAST} --d 1", tmp_path / "b", step=1, clip_skip=2)
    assert not np.array_equal(np.asarray(Image.open(last[0]["path"])), np.asarray(Image.open(penultimate[0]["path"])))


def test_bad_per_prompt_sampler_fails_before_rendering(base_model, tmp_path):
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        generate_samples(base_model, f"fine {FAST}\nbad {FAST} --ss nope", tmp_path, step=1)
    assert not list(tmp_path.glob("*.png"))


def test_rng_state_and_modes_are_restored(base_model, tmp_path):
    base_model.unet.train()
    base_model.unet.down_blocks[0].eval()
    torch.manual_seed(123)
    generate_samples(base_model, f"a cat {FAST}", tmp_path, step=1, sampler="euler_a")
    after = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(4))
    assert base_model.unet.training and not base_model.unet.down_blocks[0].training
    assert base_model.unet.up_blocks[0].training
    base_model.unet.eval()


def test_preserved_state_restores_rng_even_when_consumed(base_model):
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    with preserved_state([base_model.vae], torch.device("cpu")):
        torch.rand(100)
        assert not base_model.vae.training
    assert torch.equal(torch.rand(2), expected)


def test_injected_lora_layers_are_used_not_copied(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    model = load_base_model(tiny_model_dir)
    prompt = f"a cat {FAST} --d 9"
    plain = generate_samples(model, prompt, tmp_path / "plain", step=1)
    model.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, parameter in model.unet.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.5)  # peft starts B at zero; make the adapter change the output
    adapted = generate_samples(model, prompt, tmp_path / "lora", step=1)
    assert not np.array_equal(np.asarray(Image.open(plain[0]["path"])), np.asarray(Image.open(adapted[0]["path"])))


def test_prompt_encoding_matches_the_pipeline(base_model):
    from diffusers import StableDiffusionPipeline

    from trainer.sampling import encode_prompt

    pipeline = StableDiffusionPipeline(
        vae=base_model.vae, text_encoder=base_model.text_encoder, tokenizer=base_model.tokenizer,
        unet=base_model.unet, scheduler=make_sample_scheduler("ddim"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    with torch.no_grad():
        theirs, _ = pipeline.encode_prompt("a red circle", "cpu", 1, False)
        ours = encode_prompt(base_model.text_encoder, base_model.tokenizer, "a red circle", 1, torch.device("cpu"))
        skipped = encode_prompt(base_model.text_encoder, base_model.tokenizer, "a red circle", 2, torch.device("cpu"))
    assert ours.shape == (1, 77, 32)
    assert torch.allclose(ours, theirs)
    assert not torch.allclose(skipped, ours)


def test_bfloat16_autocast_sampling(base_model, tmp_path):
    [record] = generate_samples(base_model, f"a cat {FAST} --d 2", tmp_path, step=1, dtype=torch.bfloat16)
    assert np.asarray(Image.open(record["path"])).std() > 0
    assert next(base_model.unet.parameters()).dtype == torch.float32  # weights untouched
