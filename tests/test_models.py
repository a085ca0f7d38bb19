"""The offline CLIP tokenizer, the tiny SD1.x model and base-model loading."""
import json
import shutil

import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from trainer.models.loading import BaseModel, ModelLoadError, load_base_model
from trainer.models.tiny import build_tiny_sd1
from trainer.models.tokenizer import build_clip_tokenizer, byte_to_unicode_table, save_tokenizer

# OpenAI CLIP ids, as the hub's openai/clip-vit-large-patch14 tokenizer gives them.
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.fixture(scope="module")
def clip_tokenizer():
    return build_clip_tokenizer()


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = byte_to_unicode_table()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert not any(char.isspace() for char in table.values())
    assert list(table.values())[0] == "!"  # vocab id 0 is "!", the SD2 pad token
    assert table[ord(" ")] == "Ġ"  # byte 32 is the 33rd remapped byte: chr(256 + 32)


def test_tokenizer_matches_openai_clip_ids(clip_tokenizer):
    assert len(clip_tokenizer) == 49408
    assert clip_tokenizer.bos_token_id == 49406
    assert clip_tokenizer.eos_token_id == 49407
    assert clip_tokenizer("a photo of a cat").input_ids == CAT_IDS
    # Case and extra whitespace are normalised away like CLIP does.
    assert clip_tokenizer("A  Photo of a CAT").input_ids == CAT_IDS


def test_tokenizer_pads_sd1_with_end_of_text(clip_tokenizer):
    ids = clip_tokenizer("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[:7] == CAT_IDS
    assert set(ids[7:]) == {49407}


def test_tokenizer_truncates_long_prompts_to_77(clip_tokenizer):
    ids = clip_tokenizer("cat " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[0] == 49406 and ids[-1] == 49407


def test_sd2_tokenizer_pads_with_exclamation_mark():
    tokenizer = build_clip_tokenizer(pad_token="!")
    assert tokenizer.pad_token_id == 0
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids[:7] == CAT_IDS
    assert set(ids[7:]) == {0}


def test_saved_tokenizer_reloads_offline(clip_tokenizer, tmp_path):
    from transformers import CLIPTokenizer

    folder = save_tokenizer(clip_tokenizer, tmp_path / "tokenizer")
    assert {"vocab.json", "merges.txt"} <= {path.name for path in folder.iterdir()}
    assert len(json.loads((folder / "vocab.json").read_text(encoding="utf-8"))) == 49408
    reloaded = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert reloaded("a photo of a cat").input_ids == CAT_IDS
    assert reloaded.pad_token_id == 49407


def test_tiny_model_folder_layout(tiny_model_dir):
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_model_dir / part).is_dir(), part
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    scheduler = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_start"], scheduler["beta_end"]) == (0.00085, 0.012)
    assert scheduler["beta_schedule"] == "scaled_linear" and scheduler["clip_sample"] is False


def test_tiny_model_is_deterministic_per_seed(tiny_model_dir, tmp_path):
    same = build_tiny_sd1(tmp_path / "same", seed=0)
    other = build_tiny_sd1(tmp_path / "other", seed=1)
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        reference = load_file(tiny_model_dir / part)
        assert all(torch.equal(reference[key], value) for key, value in load_file(same / part).items())
        differing = [key for key, value in load_file(other / part).items() if not torch.equal(reference[key], value)]
        assert differing, part


def test_tiny_model_loads_as_a_pipeline_and_samples(tiny_model_dir):
    pipeline = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    assert pipeline.vae_scale_factor == 8
    assert pipeline.text_encoder.config.vocab_size == 49408
    down_block = pipeline.unet.down_blocks[0]
    assert len(down_block.resnets) == 2 and down_block.downsamplers is not None  # SD's IN1, IN2, IN3 layout
    image = pipeline(
        "a photo of a cat", num_inference_steps=2, height=64, width=64,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3)
    latents = pipeline.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)


def test_load_base_model_gives_frozen_eval_components(tiny_model_dir):
    model = load_base_model(tiny_model_dir)
    assert isinstance(model, BaseModel)
    assert (model.family, model.vae_scale_factor, model.v_prediction) == ("sd1", 0.18215, False)
    assert model.source_path == tiny_model_dir
    assert model.tokenizer("a photo of a cat").input_ids == CAT_IDS
    for network in (model.unet, model.vae, model.text_encoder):
        assert not network.training
        assert not any(parameter.requires_grad for parameter in network.parameters())
    scheduler = model.noise_scheduler
    assert isinstance(scheduler, DDPMScheduler)
    # scaled_linear: beta_t = (sqrt(0.00085) + t/999 · (sqrt(0.012) − sqrt(0.00085)))²
    assert scheduler.betas[0].item() == pytest.approx(0.00085, rel=1e-5)
    assert scheduler.betas[-1].item() == pytest.approx(0.012, rel=1e-5)
    middle = (0.00085**0.5 + 500 / 999 * (0.012**0.5 - 0.00085**0.5)) ** 2
    assert scheduler.betas[500].item() == pytest.approx(middle, rel=1e-5)
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.clip_sample is False


def test_load_base_model_dtype_and_v_prediction_override(tiny_model_dir):
    model = load_base_model(tiny_model_dir, dtype=torch.bfloat16, v_prediction=True)
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    assert next(model.text_encoder.parameters()).dtype == torch.bfloat16
    assert model.v_prediction and model.noise_scheduler.config.prediction_type == "v_prediction"


def test_folder_without_tokenizer_uses_the_offline_one(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("tokenizer"))
    model = load_base_model(copy)
    assert model.tokenizer("a photo of a cat").input_ids == CAT_IDS


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_base_model(tmp_path / "nowhere")


def test_folder_that_is_not_a_model_names_what_is_missing(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers Stable Diffusion folder.*unet/config.json"):
        load_base_model(tmp_path)


@pytest.mark.parametrize("part", ["vae", "unet"])
def test_corrupt_weights_name_the_component(tiny_model_dir, tmp_path, part):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (copy / part / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError, match=f"{part} weights"):
        load_base_model(copy)


def test_empty_or_foreign_files_are_refused_with_the_file_named(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="model.safetensors is empty or truncated"):
        load_base_model(checkpoint)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model checkpoint"):
        load_base_model(text_file)


@pytest.mark.parametrize("layout", ["one file", "sharded"])
def test_a_folders_unet_is_read_into_the_models_own_memory(tiny_model_dir, tmp_path, layout):
    """A one-file UNet is read tensor by tensor into a model built from its config (no memory map that would
    stay in the process after its weights are replaced); other layouts go through diffusers' loader. Either
    way the weights are diffusers' own."""
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    reference = UNet2DConditionModel.from_pretrained(folder / "unet")
    if layout == "sharded":
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        reference.save_pretrained(folder / "unet", max_shard_size="100KB")
        assert len(list((folder / "unet").glob("*.safetensors"))) > 1
    unet = load_base_model(folder).unet
    expected = reference.state_dict()
    assert unet.state_dict().keys() == expected.keys()
    for name, tensor in unet.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    mapped = [p for p in unet.parameters() if _in_a_mapping_of(p.data_ptr(), folder)]
    assert not mapped if layout == "one file" else mapped  # diffusers' loader maps the shards


def _in_a_mapping_of(address: int, folder) -> bool:
    """Whether ``address`` lies in a memory map of a file under ``folder`` (``/proc/self/maps``)."""
    for line in open("/proc/self/maps", encoding="utf-8"):
        span, *rest = line.split(maxsplit=5)
        start, end = (int(part, 16) for part in span.split("-"))
        if start <= address < end and len(rest) == 5 and rest[4].strip().startswith(str(folder)):
            return True
    return False
