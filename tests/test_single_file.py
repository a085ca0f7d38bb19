"""load_base_model on single files: same model as the folder, offline, .ckpt safety, the vae setting."""
import socket

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainer.models.loading import ModelLoadError, load_base_model, save_as_single_file
from trainer.models.tiny import build_tiny_sd2


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory, tiny_model_dir):
    return save_as_single_file(tiny_model_dir, tmp_path_factory.mktemp("single") / "sd1.safetensors")


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    folder = build_tiny_sd2(tmp_path_factory.mktemp("sd2") / "model", seed=5, v_prediction=True)
    return folder, save_as_single_file(folder, folder.parent / "sd2.safetensors")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during model loading")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _outputs(model) -> list[torch.Tensor]:
    """Text states, a UNet prediction and a VAE decode at fixed inputs (SDXL: both encoders, pooled text
    and size conditioning)."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    ids = model.tokenizer(["shapes, red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    extra, outputs = {}, [ids]
    with torch.no_grad():
        states = model.text_encoder(ids).last_hidden_state
        if model.family == "sdxl":
            ids_2 = model.tokenizer_2(["shapes, red circle"], padding="max_length", max_length=77,
                                      return_tensors="pt").input_ids
            output_2 = model.text_encoder_2(ids_2)
            states = torch.cat([states, output_2.last_hidden_state], dim=-1)
            time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
            extra = {"added_cond_kwargs": {"text_embeds": output_2.text_embeds, "time_ids": time_ids}}
            outputs += [ids_2, output_2.text_embeds]
        prediction = model.unet(latents, torch.tensor([500]), encoder_hidden_states=states, **extra).sample
        image = model.vae.decode(latents).sample
    return outputs + [states, prediction, image]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_loads_exactly_like_the_folder_with_no_network(family, sd1_file, sd2, tiny_model_dir,
                                                                   sdxl_demo_dir, no_network):
    folder, path = {"sd1": (tiny_model_dir, sd1_file), "sd2": sd2,
                    "sdxl": (sdxl_demo_dir / "model", sdxl_demo_dir / "model.safetensors")}[family]
    from_file, from_folder = load_base_model(path), load_base_model(folder)
    assert (from_file.family, from_file.v_prediction) == (family, family == "sd2")
    assert from_file.noise_scheduler.config.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    assert from_file.tokenizer.pad_token == ("!" if family == "sd2" else "<|endoftext|>")
    if family == "sdxl":
        assert from_file.tokenizer_2.pad_token == "!" and from_file.vae_scale_factor == 0.13025
    assert not any(p.requires_grad for network in (from_file.unet, *from_file.text_encoders)
                   for p in network.parameters())
    for mine, theirs in zip(_outputs(from_file), _outputs(from_folder), strict=True):
        if family == "sdxl":  # same weights (test_models_ldm_layout), but the folder's tensors sit unaligned in
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)  # the mmap: other SIMD paths, ~1e-6 apart
        else:
            assert torch.equal(mine, theirs)


def test_ckpt_loads_through_the_safe_unpickler(sd1_file, tmp_path):
    tensors = load_file(str(sd1_file))
    torch.save({"state_dict": tensors, "global_step": 10}, tmp_path / "model.ckpt")
    from_ckpt, from_safetensors = load_base_model(tmp_path / "model.ckpt"), load_base_model(sd1_file)
    for part in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(from_ckpt, part).state_dict(), getattr(from_safetensors, part).state_dict()
        assert all(torch.equal(mine[name], theirs[name]) for name in theirs)


class NotWeights:
    """A pickled object that weights_only loading must refuse (it could be anything)."""


def test_pickles_that_need_more_than_tensors_are_refused(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "trap": NotWeights()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(ModelLoadError, match="unsafe.ckpt refuses to load safely.*could run code"):
        load_base_model(tmp_path / "unsafe.ckpt")
    (tmp_path / "noise.ckpt").write_bytes(b"\x80\x02 definitely not a checkpoint" * 10)
    with pytest.raises(ModelLoadError, match="noise.ckpt"):
        load_base_model(tmp_path / "noise.ckpt")


def test_files_of_another_kind_are_refused_before_training(tmp_path, sd1_file):
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4)}, str(tmp_path / "style.safetensors"))
    with pytest.raises(ModelLoadError, match="style.safetensors cannot be trained on: a LoRA file"):
        load_base_model(tmp_path / "style.safetensors")
    tensors = load_file(str(sd1_file))
    truncated = {k: v for k, v in tensors.items() if not k.startswith("cond_stage_model.")}
    save_file(truncated, str(tmp_path / "unet_vae.safetensors"))
    with pytest.raises(ModelLoadError, match="no text encoder this app knows"):
        load_base_model(tmp_path / "unet_vae.safetensors")


def test_v2_must_match_the_weights(sd1_file, sd2):
    with pytest.raises(ModelLoadError, match="v2 .* is an SD1.x model") as raised:
        load_base_model(sd1_file, v2=True)
    assert raised.value.setting == "v2"
    assert load_base_model(sd2[1], v2=True).family == "sd2"
    assert load_base_model(sd2[1], v_prediction=False).v_prediction is False  # the setting wins


def test_separate_vae_from_file_or_folder(sd1_file, sd2, tiny_model_dir, tmp_path):
    sd2_vae = load_base_model(sd2[0]).vae.state_dict()
    ldm = load_file(str(sd2[1]))
    save_file({k.removeprefix("first_stage_model."): v for k, v in ldm.items() if k.startswith("first_stage_model.")},
              str(tmp_path / "vae_ldm.safetensors"))
    save_file(sd2_vae, str(tmp_path / "vae_diffusers.safetensors"))
    default = load_base_model(sd1_file).vae.state_dict()
    assert not all(torch.equal(default[k], sd2_vae[k]) for k in default)  # the two tiny VAEs differ
    for source in (tmp_path / "vae_ldm.safetensors", tmp_path / "vae_diffusers.safetensors", sd2[0], sd2[1]):
        model = load_base_model(sd1_file, vae=source)
        assert model.vae_path == source
        loaded = model.vae.state_dict()
        assert all(torch.equal(loaded[k], sd2_vae[k]) for k in sd2_vae), source


def test_a_vae_that_is_not_a_vae_blames_the_vae_setting(sd1_file, tmp_path):
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4)}, str(tmp_path / "lora.safetensors"))
    for bad in (tmp_path / "lora.safetensors", tmp_path / "missing.safetensors"):
        with pytest.raises(ModelLoadError, match="VAE") as raised:
            load_base_model(sd1_file, vae=bad)
        assert raised.value.setting == "vae"
