"""SDXL (issue 6): SGM module names and the 23-block table, two-encoder text conditioning with pooled text
and size ids, and the acceptance run: single file → CLI training → a LoRA diffusers places completely."""
import math
import re
import tomllib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from trainer.models.detect import inspect_model
from trainer.models.ldm_layout import UNetLayout
from trainer.models.loading import load_base_model
from trainer.network import NetworkConfig, apply_network
from trainer.network.config import network_args
from trainer.network.from_job import network_config_from_job
from trainer.network.sdxl_blocks import SDXL_BLOCK_LABELS, sdxl_block_index, sgm_module_path
from trainer.network.targets import unet_targets
from trainer.sdxl_conditioning import sdxl_time_ids
from trainer.spec.setting import SettingError
from trainer.spec import job_from_values
from trainer.text_encoding import TextEmbeddingCache, encode_captions_sdxl

from .effects_runs import run_demo, run_in_session
from .trainer_helpers import train_ten_steps

KEY_PATTERN = re.compile(r"^lora_(unet|te1|te2)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")
SDXL_LAYOUT = UNetLayout(layers_per_block=2, attention_levels=(False, True, True))


@pytest.fixture(scope="module")
def sdxl(sdxl_demo_dir):
    """The tiny SDXL model as the trainer loads it (frozen, from the diffusers folder)."""
    return load_base_model(sdxl_demo_dir / "model")


# ---- names and blocks -----------------------------------------------------------------------------

@pytest.mark.parametrize("diffusers_path, sgm_path", [
    ("down_blocks.0.resnets.0.conv1", "input_blocks.1.0.in_layers.2"),
    ("down_blocks.0.resnets.1.time_emb_proj", "input_blocks.2.0.emb_layers.1"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "input_blocks.4.1.transformer_blocks.0.attn2.to_k"),
    ("down_blocks.2.attentions.1.transformer_blocks.1.ff.net.0.proj",
     "input_blocks.8.1.transformer_blocks.1.ff.net.0.proj"),
    ("mid_block.resnets.1.conv2", "middle_block.2.out_layers.3"),
    ("mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
    ("up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0",
     "output_blocks.2.1.transformer_blocks.0.attn1.to_out.0"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.2.resnets.2.conv1", "output_blocks.8.0.in_layers.2"),
])
def test_diffusers_module_paths_map_to_sgm_paths(diffusers_path, sgm_path):
    assert sgm_module_path(diffusers_path, SDXL_LAYOUT) == sgm_path


@pytest.mark.parametrize("name, block", [
    ("lora_unet_time_embed_0", 0), ("lora_unet_label_emb_0_0", 0), ("input_blocks.0.0", 1),
    ("lora_unet_input_blocks_1_0_in_layers_2", 2), ("lora_unet_input_blocks_4_1_proj_in", 5),
    ("lora_unet_input_blocks_8_1_transformer_blocks_1_attn2_to_k", 9), ("lora_unet_middle_block_0_emb_layers_1", 10),
    ("middle_block.1.proj_out", 11), ("lora_unet_middle_block_2_out_layers_3", 12),
    ("lora_unet_output_blocks_0_1_proj_in", 13), ("lora_unet_output_blocks_2_2_conv", 15),
    ("lora_unet_output_blocks_8_0_skip_connection", 21), ("lora_unet_out_2", 22),
])
def test_sdxl_block_table_follows_sd_scripts(name, block):
    """Reference §3: time_embed/label_emb → 0, input_blocks k → 1+k, middle_block k → 10+k,
    output_blocks k → 13+k, out → 22; 23 entries."""
    assert sdxl_block_index(name) == block
    assert len(SDXL_BLOCK_LABELS) == 23
    assert (SDXL_BLOCK_LABELS[1], SDXL_BLOCK_LABELS[10], SDXL_BLOCK_LABELS[13]) == ("IN00", "MID00", "OUT00")


@pytest.mark.parametrize("name", ["lora_unet_down_blocks_0_attentions_0_proj_in", "lora_unet_input_blocks_9_0_op",
                                  "lora_unet_middle_block_3_proj_in"])
def test_names_outside_the_sdxl_table_are_refused(name):
    with pytest.raises(ValueError):
        sdxl_block_index(name)


def test_sdxl_unet_targets_carry_sgm_kohya_names(sdxl, tiny_model_dir):
    targets = unet_targets(sdxl.unet, include_conv_blocks=True)
    names = {target.kohya_name for target in targets}
    assert len(names) == len(targets)
    for expected in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", "lora_unet_input_blocks_3_0_op",
                     "lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_middle_block_1_proj_in",
                     "lora_unet_output_blocks_2_2_conv", "lora_unet_output_blocks_8_0_skip_connection",
                     "lora_unet_input_blocks_7_1_transformer_blocks_1_ff_net_2"):
        assert expected in names, expected
    assert all(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_\d+_", name) for name in names)
    sd1_unet = load_base_model(tiny_model_dir).unet  # SD1 keys keep their diffusers names
    assert all(t.kohya_name.startswith(("lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_"))
               for t in unet_targets(sd1_unet, include_conv_blocks=True))


def test_block_dims_give_each_module_its_blocks_rank(sdxl_demo_dir):
    base = load_base_model(sdxl_demo_dir / "model")  # adapters go into it: a model of its own
    dims = tuple(1 + index % 5 for index in range(23))
    dims = dims[:5] + (0,) + dims[6:]  # IN04 (input_blocks.4) gets no module
    conv_dims = tuple(0 if index == 5 else 2 for index in range(23))
    config = NetworkConfig(lora_type="LoCon", dim=8, alpha=4, conv_dim=2, block_dims=dims, conv_block_dims=conv_dims,
                           family="sdxl")
    network = apply_network(base.unet, base.text_encoders, config)
    unet_adapters = [a for a in network.adapters if a.part == "unet"]
    assert unet_adapters and not any(a.name.startswith("lora_unet_input_blocks_4_") for a in unet_adapters)
    for adapter in unet_adapters:
        block = sdxl_block_index(adapter.name)
        expected = conv_dims[block] if adapter.plan.target.is_conv3x3 else dims[block]
        assert (adapter.plan.block, adapter.plan.dim) == (block, expected), adapter.name
    assert {a.plan.block for a in unet_adapters} == set(range(2, 22)) - {5}  # IN01…OUT08, not EMB/IN00/END
    prefixes = {a.name.split("_text_model_")[0] for a in network.adapters if a.part == "text_encoder"}
    assert prefixes == {"lora_te1", "lora_te2"}
    assert {a.plan.dim for a in network.adapters if a.part == "text_encoder"} == {8}


def test_block_lists_are_checked_against_the_family():
    sd_dims, sdxl_dims = ",".join(["4"] * 25), ",".join(["4"] * 23)
    assert job_from_values({"block_dims": sdxl_dims}).network.block_dims == sdxl_dims  # the form accepts both lengths
    assert network_config_from_job(job_from_values({"block_dims": sdxl_dims}), family="sdxl").block_dims == (4,) * 23
    for values, family in (({"block_dims": sd_dims}, "sdxl"), ({"block_dims": sdxl_dims}, "sd1"),
                           ({"mid_lr_weight": "0.5"}, "sdxl"), ({"up_lr_weight": ",".join(["1"] * 12)}, "sdxl")):
        with pytest.raises(SettingError) as raised:
            network_config_from_job(job_from_values(values), family=family)
        setting = next(iter(values))
        assert str(raised.value).startswith(setting) and raised.value.setting == setting
    config = network_config_from_job(job_from_values({"down_lr_weight": "linear", "mid_lr_weight": "0.5,0.6,0.7"}),
                                     family="sdxl")
    weights = config.block_lr_weights
    assert len(weights) == 23 and weights[0] == weights[22] == 1.0  # EMB and END wrapped with 1.0
    assert weights[1:10] == pytest.approx([i / 8 for i in range(9)]) and weights[10:13] == (0.5, 0.6, 0.7)
    args = network_args(config)
    assert len(args["down_lr_weight"].split(",")) == 9 and args["mid_lr_weight"] == "0.5,0.6,0.7"


# ---- text conditioning ---------------------------------------------------------------------------

def test_states_are_both_penultimate_layers_and_pooled_is_the_projected_eos(sdxl):
    caption = "shapes, red circle, blue background"
    states, pooled = encode_captions_sdxl([sdxl.tokenizer, sdxl.tokenizer_2], sdxl.text_encoders, [caption])
    with torch.no_grad():
        ids_1 = sdxl.tokenizer([caption], padding="max_length", max_length=77, return_tensors="pt").input_ids
        ids_2 = sdxl.tokenizer_2([caption], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert ids_2[0, -1] == 0 and ids_1[0, -1] == 49407  # "!" pads the second, EOS the first
        first = sdxl.text_encoder(ids_1, output_hidden_states=True).hidden_states[-2]
        second = sdxl.text_encoder_2(ids_2, output_hidden_states=True)
    assert states.shape == (1, 77, 32 + 64) and pooled.shape == (1, 64)
    torch.testing.assert_close(states, torch.cat([first, second.hidden_states[-2]], dim=-1))
    eos = int((ids_2[0] == 49407).nonzero()[0])
    last = second.last_hidden_state[0, eos]  # last layer, after the final layer norm, at the first EOS
    torch.testing.assert_close(pooled[0], sdxl.text_encoder_2.text_projection(last))


def test_long_weighted_captions_and_the_cache_agree(sdxl):
    tokenizers = [sdxl.tokenizer, sdxl.tokenizer_2]
    long_caption = ", ".join(f"(shape {i}:1.2)" for i in range(40))  # > 75 tokens
    captions = [long_caption, "a [small] red circle"]
    settings = dict(max_token_length=150, weighted=True)
    states, pooled = encode_captions_sdxl(tokenizers, sdxl.text_encoders, captions, **settings)
    assert states.shape == (2, 152, 96) and pooled.shape == (2, 64)
    _, pooled_75 = encode_captions_sdxl(tokenizers, sdxl.text_encoders, captions, max_token_length=75, weighted=True)
    torch.testing.assert_close(pooled, pooled_75)  # the first window's pooled vector
    cache = TextEmbeddingCache(sdxl.tokenizer, sdxl.text_encoder, tokenizer_2=sdxl.tokenizer_2,
                               text_encoder_2=sdxl.text_encoder_2)
    for pad_to_longest in (False, True):
        expected = encode_captions_sdxl(tokenizers, sdxl.text_encoders, captions, pad_to_longest=pad_to_longest,
                                        **settings)
        cached = cache.encode(captions, pad_to_longest=pad_to_longest, **settings)
        for mine, theirs in zip(cached, expected, strict=True):
            torch.testing.assert_close(mine, theirs)
    assert cache.encoded_count == 2


def test_time_ids_are_original_size_crop_and_target_as_height_width():
    ids = sdxl_time_ids(original_sizes=[(100, 80), (64, 64)], crop_top_lefts=[(3, 5), (0, 0)], bucket=(64, 48))
    assert ids.tolist() == [[80, 100, 5, 3, 48, 64], [64, 64, 0, 0, 48, 64]]


# ---- training ------------------------------------------------------------------------------------

def test_long_weighted_captions_text_cache_and_clip_skip_in_a_run(sdxl_demo_dir, tmp_path):
    run = run_in_session(sdxl_demo_dir, tmp_path, max_token_length=150, weighted_captions=True, clip_skip=2,
                   stop_text_encoder_training=50, cache_latents=True, block_dims=",".join(["4"] * 23))
    assert run.status == "completed", run.of("error")
    assert len(run.losses) == 4 and all(math.isfinite(loss) for loss in run.losses)
    assert run.warnings_for("clip_skip")
    assert run.session.text_cache is not None and run.session.text_cache.sdxl  # after the text encoders stopped
    with safe_open(str(run.final_file), "pt") as handle:
        keys = list(handle.keys())
        ranks = {handle.get_tensor(k).shape[0] for k in keys if k.startswith("lora_unet") and "down" in k}
    assert ranks == {4}
    assert any(k.startswith("lora_te1_") for k in keys) and any(k.startswith("lora_te2_") for k in keys)
    bad = run_demo(sdxl_demo_dir, tmp_path / "bad", block_dims=",".join(["4"] * 25))
    errors = bad.of("error")
    assert bad.status == "failed" and errors[0]["setting"] == "block_dims", errors
    assert "for an SDXL model it needs exactly 23" in errors[0]["message"]


def _adapted_layers(pipe) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    parts = (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    return sum(isinstance(m, BaseTunerLayer) for part in parts for m in part.modules())


def _image(pipe) -> torch.Tensor:
    return pipe("shapes, red circle", num_inference_steps=3, height=64, width=64, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


def test_train_sdxl_on_a_single_file_and_load_the_lora_in_diffusers(sdxl_demo_dir, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    job_values = tomllib.loads((sdxl_demo_dir / "job.toml").read_text(encoding="utf-8"))
    assert job_values["pretrained_model_name_or_path"] == str(sdxl_demo_dir / "model.safetensors")
    assert not job_values.get("v2") and (sdxl_demo_dir / "model" / "text_encoder_2").is_dir()
    info = inspect_model(sdxl_demo_dir / "model.safetensors")
    assert (info.kind, info.family, info.v_prediction) == ("checkpoint", "sdxl", False)
    train_ten_steps(sdxl_demo_dir, tmp_path)  # StableDiffusionXLPipeline on the in-memory parts draws a sample

    lora = tmp_path / "out" / "demo_lora.safetensors"
    with safe_open(str(lora), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert keys and all(KEY_PATTERN.match(k) for k in keys), [k for k in keys if not KEY_PATTERN.match(k)][:3]
    modules = {k.split(".")[0] for k in keys}
    assert any(m.startswith("lora_te1_text_model_encoder_layers_") for m in modules)
    assert any(m.startswith("lora_te2_text_model_encoder_layers_") for m in modules)
    unet_modules = [m for m in modules if m.startswith("lora_unet_")]
    assert unet_modules and all(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_\d+_", m)
                                for m in unet_modules)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_demo_dir / "model", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    before = _image(pipe)
    pipe.load_lora_weights(str(lora))
    assert _adapted_layers(pipe) == len(modules)  # diffusers skips what it cannot place: count
    assert not torch.allclose(before, _image(pipe), atol=1e-4)


def test_the_sdxl_vae_stays_fp32_when_the_rest_is_16_bit(sdxl_demo_dir, demo_dir):
    """sd-scripts users pass --no_half_vae for SDXL; here it is always so. SD1's VAE follows the weights."""
    base = load_base_model(sdxl_demo_dir / "model.safetensors", dtype=torch.bfloat16)
    assert base.vae.dtype == torch.float32
    assert base.unet.dtype == base.text_encoder.dtype == base.text_encoder_2.dtype == torch.bfloat16
    assert load_base_model(demo_dir / "model", dtype=torch.bfloat16).vae.dtype == torch.bfloat16


def test_samples_decode_in_the_vaes_own_dtype(sdxl_demo_dir, tmp_path):
    """A bf16 UNet under autocast with the fp32 VAE: the sample decodes (no dtype clash) to a real image."""
    from trainer.sampling import generate_samples

    base = load_base_model(sdxl_demo_dir / "model.safetensors", dtype=torch.bfloat16)
    records = generate_samples(base, "shapes, red circle --w 64 --h 64 --s 2 --d 3", tmp_path, sampler="euler",
                               device="cpu", dtype=torch.bfloat16, output_name="x", step=1, run_seed=0)
    pixels = np.asarray(Image.open(records[0]["path"]))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 1.0
