"""Our diffusers ↔ original (LDM) layout converter: hand-worked names, and round trips on tiny models."""
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from trainer.models.errors import ModelLoadError
from trainer.models.ldm_layout import LayoutError, UNetLayout, VaeLayout, unet_name_to_ldm, vae_name_to_ldm
from trainer.models.ldm_text import hf_to_openclip, openclip_to_hf
from trainer.models.loading import save_as_single_file
from trainer.models.single_file import heads_metadata, ldm_state_dict, models_from_ldm
from trainer.models.tiny import build_tiny_sd2

# SD1.5's UNet: 4 levels, 2 resnets each, attention on the first three.
SD15 = UNetLayout(layers_per_block=2, attention_levels=(True, True, True, False))


@pytest.mark.parametrize("diffusers_name, ldm_name", [
    ("conv_in.weight", "input_blocks.0.0.weight"),
    ("time_embedding.linear_2.bias", "time_embed.2.bias"),
    ("down_blocks.0.resnets.1.norm1.weight", "input_blocks.2.0.in_layers.0.weight"),
    ("down_blocks.0.attentions.1.proj_in.weight", "input_blocks.2.1.proj_in.weight"),
    ("down_blocks.1.resnets.0.conv_shortcut.weight", "input_blocks.4.0.skip_connection.weight"),
    ("down_blocks.1.downsamplers.0.conv.weight", "input_blocks.6.0.op.weight"),
    ("down_blocks.3.resnets.1.time_emb_proj.bias", "input_blocks.11.0.emb_layers.1.bias"),
    ("mid_block.resnets.1.conv2.weight", "middle_block.2.out_layers.3.weight"),
    ("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
     "middle_block.1.transformer_blocks.0.attn2.to_k.weight"),
    ("up_blocks.0.resnets.2.conv1.weight", "output_blocks.2.0.in_layers.2.weight"),
    ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight"),  # no attention at that level
    ("up_blocks.1.upsamplers.0.conv.bias", "output_blocks.5.2.conv.bias"),  # after the attention
    ("up_blocks.3.attentions.2.proj_out.weight", "output_blocks.11.1.proj_out.weight"),
    ("conv_norm_out.weight", "out.0.weight"),
])
def test_unet_names_match_the_original_numbering(diffusers_name, ldm_name):
    assert unet_name_to_ldm(diffusers_name, SD15) == ldm_name


@pytest.mark.parametrize("diffusers_name, ldm_name", [
    ("encoder.down_blocks.0.resnets.1.conv2.weight", "encoder.down.0.block.1.conv2.weight"),
    ("encoder.down_blocks.1.resnets.0.conv_shortcut.bias", "encoder.down.1.block.0.nin_shortcut.bias"),
    ("encoder.down_blocks.2.downsamplers.0.conv.weight", "encoder.down.2.downsample.conv.weight"),
    ("encoder.mid_block.attentions.0.to_out.0.weight", "encoder.mid.attn_1.proj_out.weight"),
    ("decoder.mid_block.attentions.0.group_norm.bias", "decoder.mid.attn_1.norm.bias"),
    ("decoder.mid_block.resnets.1.norm1.weight", "decoder.mid.block_2.norm1.weight"),
    ("decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.up.3.upsample.conv.weight"),  # reversed levels
    ("decoder.up_blocks.3.resnets.2.conv1.bias", "decoder.up.0.block.2.conv1.bias"),
    ("decoder.conv_norm_out.weight", "decoder.norm_out.weight"),
    ("post_quant_conv.weight", "post_quant_conv.weight"),
])
def test_vae_names_match_the_original_numbering(diffusers_name, ldm_name):
    assert vae_name_to_ldm(diffusers_name, VaeLayout(level_count=4)) == ldm_name


def test_unknown_names_are_refused():
    with pytest.raises(LayoutError, match="unknown UNet parameter"):
        unet_name_to_ldm("controlnet_cond_embedding.conv_in.weight", SD15)
    with pytest.raises(LayoutError, match="mid-block"):
        unet_name_to_ldm("mid_block.resnets.2.conv1.weight", SD15)


def test_openclip_fused_attention_splits_into_q_k_v_rows():
    width = 2
    state = {"embeddings.token_embedding.weight": torch.zeros(5, width),
             "embeddings.position_embedding.weight": torch.zeros(3, width),
             "final_layer_norm.weight": torch.ones(width), "final_layer_norm.bias": torch.zeros(width)}
    for index, part in enumerate("qkv"):
        state[f"encoder.layers.0.self_attn.{part}_proj.weight"] = torch.full((width, width), float(index + 1))
        state[f"encoder.layers.0.self_attn.{part}_proj.bias"] = torch.full((width,), 10.0 * (index + 1))
    for name in ("self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
        state[f"encoder.layers.0.{name}.weight"] = torch.ones(width, width)
        state[f"encoder.layers.0.{name}.bias"] = torch.ones(width)
    ldm = hf_to_openclip(state, "m.")
    fused = ldm["m.transformer.resblocks.0.attn.in_proj_weight"]
    assert fused.shape == (6, 2)
    assert fused[:, 0].tolist() == [1, 1, 2, 2, 3, 3]  # q rows, then k, then v
    assert ldm["m.transformer.resblocks.0.attn.in_proj_bias"].tolist() == [10, 10, 20, 20, 30, 30]
    assert "m.positional_embedding" in ldm and "m.transformer.resblocks.0.mlp.c_fc.weight" in ldm
    back = openclip_to_hf(ldm, "m.", keep_layers=1, with_projection=False)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[name], state[name]) for name in state)
    assert not any("layers.0" in name for name in openclip_to_hf(ldm, "m.", keep_layers=0, with_projection=False))


def _parts(folder):
    return (UNet2DConditionModel.from_pretrained(folder / "unet"), AutoencoderKL.from_pretrained(folder / "vae"),
            CLIPTextModel.from_pretrained(folder / "text_encoder"))


def _assert_same_weights(first, second):
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different[:5]


@pytest.fixture(scope="module")
def tiny_sd2_dir(tmp_path_factory):
    return build_tiny_sd2(tmp_path_factory.mktemp("sd2") / "model", v_prediction=True)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_round_trip_through_the_original_layout_keeps_every_tensor(family, tiny_model_dir, tiny_sd2_dir):
    folder = tiny_model_dir if family == "sd1" else tiny_sd2_dir
    unet, vae, text_encoder = _parts(folder)
    tensors = ldm_state_dict(unet, vae, [text_encoder], family)
    prefixes = {"sd1": "cond_stage_model.transformer.text_model.", "sd2": "cond_stage_model.model.transformer."}
    assert any(name.startswith(prefixes[family]) for name in tensors)
    assert sum(t.numel() for t in tensors.values()) == sum(
        p.numel() for part in (unet, vae, text_encoder) for p in part.state_dict().values())
    assert tensors["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1×1 conv in LDM
    unet2, vae2, (text_encoder2,) = models_from_ldm(tensors, heads_metadata(unet, [text_encoder]), family)
    for original, rebuilt in ((unet, unet2), (vae, vae2), (text_encoder, text_encoder2)):
        _assert_same_weights(original, rebuilt)
    assert unet2.config.use_linear_projection == (family == "sd2")
    assert text_encoder2.config.hidden_act == ("gelu" if family == "sd2" else "quick_gelu")


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_diffusers_reads_our_single_file_bit_exact(family, tiny_model_dir, tiny_sd2_dir, tmp_path):
    """An independent check of our names: diffusers' own converter, given the folder's configs."""
    folder = tiny_model_dir if family == "sd1" else tiny_sd2_dir
    path = save_as_single_file(folder, tmp_path / "model.safetensors")
    theirs = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True,
                                                      safety_checker=None, requires_safety_checker=False)
    for original, rebuilt in zip(_parts(folder), (theirs.unet, theirs.vae, theirs.text_encoder)):
        _assert_same_weights(original, rebuilt)


def test_missing_weights_are_named(tiny_model_dir):
    unet, vae, text_encoder = _parts(tiny_model_dir)
    tensors = ldm_state_dict(unet, vae, [text_encoder], "sd1")
    del tensors["model.diffusion_model.out.2.weight"]
    with pytest.raises(ModelLoadError, match="out.2.weight"):
        models_from_ldm(tensors, {}, "sd1")
    tensors = ldm_state_dict(unet, vae, [text_encoder], "sd1")
    del tensors["first_stage_model.decoder.up.0.block.1.conv1.weight"]
    with pytest.raises(ModelLoadError, match="VAE lacks 1 weights"):
        models_from_ldm(tensors, {}, "sd1")
