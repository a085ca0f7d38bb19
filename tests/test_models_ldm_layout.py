"""Our diffusers ↔ original (LDM) layout converter: hand-worked names, and round trips on tiny models."""
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from trainer.models.errors import ModelLoadError
from trainer.models.ldm_layout import LayoutError, UNetLayout, VaeLayout, unet_name_to_ldm, vae_name_to_ldm
from trainer.models.ldm_text import hf_to_openclip, openclip_to_hf
from trainer.models.loading import save_as_single_file
from trainer.models.single_file import heads_metadata, ldm_state_dict, models_from_ldm
from trainer.models.tiny import build_tiny_sd2

# SD1.5's UNet: 4 levels, 2 resnets each, attention on the first three.
SD15 = UNetLayout(layers_per_block=2, attention_levels=(True, True, True, False))
# SDXL's UNet: 3 levels, 2 resnets each, attention on the lower two.
SDXL = UNetLayout(layers_per_block=2, attention_levels=(False, True, True))


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
    ("down_blocks.0.resnets.0.conv1.weight", "input_blocks.1.0.in_layers.2.weight"),
    ("down_blocks.0.downsamplers.0.conv.weight", "input_blocks.3.0.op.weight"),
    ("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight",
     "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"),
    ("down_blocks.2.resnets.1.conv2.weight", "input_blocks.8.0.out_layers.3.weight"),
    ("add_embedding.linear_1.weight", "label_emb.0.0.weight"),
    ("up_blocks.0.attentions.2.proj_out.bias", "output_blocks.2.1.proj_out.bias"),
    ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.2.conv.weight"),  # after the attention
    ("up_blocks.1.upsamplers.0.conv.weight", "output_blocks.5.2.conv.weight"),
    ("up_blocks.2.resnets.2.conv_shortcut.weight", "output_blocks.8.0.skip_connection.weight"),
])
def test_sdxl_unet_names_match_the_original_numbering(diffusers_name, ldm_name):
    assert unet_name_to_ldm(diffusers_name, SDXL) == ldm_name


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


def _parts(folder, family="sd1"):
    """(unet, vae, text encoders…) of a tiny folder."""
    parts = (UNet2DConditionModel.from_pretrained(folder / "unet"), AutoencoderKL.from_pretrained(folder / "vae"),
             CLIPTextModel.from_pretrained(folder / "text_encoder"))
    if family == "sdxl":
        parts += (CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"),)
    return parts


def _assert_same_weights(first, second):
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different[:5]


@pytest.fixture(scope="module")
def tiny_sd2_dir(tmp_path_factory):
    return build_tiny_sd2(tmp_path_factory.mktemp("sd2") / "model", v_prediction=True)


@pytest.fixture
def folder_of(tiny_model_dir, tiny_sd2_dir, sdxl_demo_dir):
    return lambda family: {"sd1": tiny_model_dir, "sd2": tiny_sd2_dir, "sdxl": sdxl_demo_dir / "model"}[family]


TEXT_PREFIXES = {"sd1": ("cond_stage_model.transformer.text_model.",),
                 "sd2": ("cond_stage_model.model.transformer.",),
                 "sdxl": ("conditioner.embedders.0.transformer.text_model.",
                          "conditioner.embedders.1.model.transformer.")}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_round_trip_through_the_original_layout_keeps_every_tensor(family, folder_of):
    unet, vae, *encoders = _parts(folder_of(family), family)
    tensors = ldm_state_dict(unet, vae, encoders, family)
    for prefix in TEXT_PREFIXES[family]:
        assert any(name.startswith(prefix) for name in tensors), prefix
    assert all(name.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))
               for name in tensors)
    assert sum(t.numel() for t in tensors.values()) == sum(
        p.numel() for part in (unet, vae, *encoders) for p in part.state_dict().values())
    assert tensors["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1×1 conv in LDM
    unet2, vae2, encoders2 = models_from_ldm(tensors, heads_metadata(unet, encoders), family)
    assert len(encoders2) == len(encoders)
    for original, rebuilt in ((unet, unet2), (vae, vae2), *zip(encoders, encoders2)):
        _assert_same_weights(original, rebuilt)
    assert unet2.config.use_linear_projection == (family != "sd1")
    assert encoders2[-1].config.hidden_act == ("quick_gelu" if family == "sd1" else "gelu")
    if family == "sdxl":
        assert isinstance(encoders2[1], CLIPTextModelWithProjection)
        for key in ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
                    "cross_attention_dim", "down_block_types"):
            value = unet.config[key]
            assert unet2.config[key] == (tuple(value) if isinstance(value, list) else value), key
        assert tuple(unet2.config.transformer_layers_per_block) == tuple(unet.config.transformer_layers_per_block)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_diffusers_reads_our_single_file_bit_exact(family, folder_of, tmp_path):
    """An independent check of our names: diffusers' own converter, given the folder's configs."""
    folder = folder_of(family)
    path = save_as_single_file(folder, tmp_path / "model.safetensors")
    if family == "sdxl":
        theirs = StableDiffusionXLPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
        rebuilt = (theirs.unet, theirs.vae, theirs.text_encoder, theirs.text_encoder_2)
    else:
        theirs = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True,
                                                          safety_checker=None, requires_safety_checker=False)
        rebuilt = (theirs.unet, theirs.vae, theirs.text_encoder)
    for original, mine in zip(_parts(folder, family), rebuilt, strict=True):
        _assert_same_weights(original, mine)


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
