"""Which modules get adapters, their kohya names, and the IN/MID/OUT block table."""
import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from trainer.models.tiny import tiny_text_encoder_config, tiny_unet_config
from trainer.network import BLOCK_LABELS, NetworkConfig, apply_network, block_index, describe_blocks
from trainer.network.targets import kohya_name, text_encoder_prefixes, text_encoder_targets, unet_targets

# The tiny UNet has 6 Transformer2DModels (down0 ×2, mid ×1, up1 ×3), each with proj_in, proj_out and
# one BasicTransformerBlock: attn1 q/k/v/out, attn2 q/k/v/out, ff.net.0.proj, ff.net.2 → 12 modules.
TRANSFORMER_MODULES = 12
TRANSFORMER_COUNT = 6


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(**tiny_unet_config())


@pytest.fixture(scope="module")
def text_encoder():
    torch.manual_seed(1)
    return CLIPTextModel(tiny_text_encoder_config())


def test_unet_targets_are_the_transformer_children(unet):
    targets = unet_targets(unet, include_conv_blocks=False)
    assert len(targets) == TRANSFORMER_MODULES * TRANSFORMER_COUNT
    suffixes = {t.path.split("transformer_blocks.0.")[-1].split("attentions.0.")[-1] for t in targets}
    expected = {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"}
    assert expected <= suffixes
    assert not any(t.is_conv3x3 for t in targets)
    assert not any("resnets" in t.path or "time_embedding" in t.path or "norm" in t.path for t in targets)
    first = next(t for t in targets if t.path == "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert first.kohya_name == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def test_conv_blocks_add_resnet_and_sampler_layers(unet):
    with_conv = unet_targets(unet, include_conv_blocks=True)
    paths = {t.path: t for t in with_conv}
    # 3×3 convs are conv targets; the time-embedding Linear and the 1×1 shortcut are not (sd-scripts' C3Lier rule).
    assert paths["down_blocks.0.resnets.0.conv1"].is_conv3x3
    assert paths["down_blocks.0.downsamplers.0.conv"].is_conv3x3
    assert paths["up_blocks.0.upsamplers.0.conv"].is_conv3x3
    assert not paths["down_blocks.0.resnets.0.time_emb_proj"].is_conv3x3
    assert not paths["down_blocks.1.resnets.0.conv_shortcut"].is_conv3x3
    assert "conv_in" not in paths and "conv_out" not in paths
    # Counted by hand: 12 ResnetBlock2D (down 2+2, mid 2, up 3+3) × (conv1, conv2, time_emb_proj),
    # 7 conv_shortcuts (down1.res0, up0 ×3, up1 ×3), 2 samplers, plus the 72 transformer modules.
    assert len(with_conv) == 72 + 12 * 3 + 7 + 2


def test_text_encoder_targets_use_kohya_text_model_names(text_encoder):
    targets = text_encoder_targets(text_encoder, "lora_te")
    assert len(targets) == 2 * 6  # 2 layers × q, k, v, out_proj, fc1, fc2
    names = {t.kohya_name for t in targets}
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2" in names
    assert all(t.part == "text_encoder" for t in targets)


def test_prefixes_and_name_rule():
    assert text_encoder_prefixes(1) == ["lora_te"]
    assert text_encoder_prefixes(2) == ["lora_te1", "lora_te2"]
    assert kohya_name("lora_unet", "mid_block.attentions.0.proj_in") == "lora_unet_mid_block_attentions_0_proj_in"


@pytest.mark.parametrize(
    "name, expected",
    [
        # Worked by hand from idx = 3i + j (resnets/attentions), 3i + 2 (samplers); down → 1+idx, up → 13+idx.
        ("down_blocks.0.attentions.0.proj_in", 1),
        ("down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k", 2),
        ("down_blocks.0.resnets.1.conv2", 2),
        ("down_blocks.0.downsamplers.0.conv", 3),
        ("down_blocks.1.resnets.0.conv_shortcut", 4),
        ("down_blocks.2.downsamplers.0.conv", 9),
        ("down_blocks.3.resnets.1.conv1", 11),
        ("mid_block.attentions.0.proj_out", 12),
        ("mid_block.resnets.1.time_emb_proj", 12),
        ("up_blocks.0.resnets.0.conv1", 13),
        ("up_blocks.0.resnets.2.conv1", 15),
        ("up_blocks.0.upsamplers.0.conv", 15),
        ("up_blocks.1.attentions.0.proj_in", 16),
        ("up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2", 24),
        ("lora_unet_up_blocks_2_attentions_1_proj_in", 20),
        ("lora_unet_down_blocks_1_attentions_1_proj_in", 5),
        ("lora_unet_mid_block_attentions_0_proj_in", 12),
    ],
)
def test_block_index_matches_the_kohya_table(name, expected):
    assert block_index(name) == expected


@pytest.mark.parametrize("name", ["conv_in", "time_embedding.linear_1", "conv_out", "up_blocks.4.resnets.0.conv1"])
def test_block_index_rejects_modules_outside_blocks(name):
    with pytest.raises(ValueError, match=name.split(".")[0]):
        block_index(name)


def test_describe_blocks_lists_every_module_once(unet):
    described = describe_blocks(unet, include_conv_blocks=True)
    assert list(described) == list(BLOCK_LABELS) and len(BLOCK_LABELS) == 25
    assert described["IN00"] == [] and described["IN06"] == [] and described["OUT11"] == []
    assert "down_blocks.0.downsamplers.0.conv" in described["IN03"]
    assert "up_blocks.0.upsamplers.0.conv" in described["OUT02"]
    assert "mid_block.attentions.0.proj_in" in described["MID"]
    listed = [path for paths in described.values() for path in paths]
    assert sorted(listed) == sorted(t.path for t in unet_targets(unet, include_conv_blocks=True))
    linear_only = describe_blocks(unet, include_conv_blocks=False)
    assert linear_only["IN03"] == [] and len(linear_only["IN01"]) == TRANSFORMER_MODULES


def test_targets_on_an_adapted_model_name_the_original_layers():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny_unet_config())
    before = [t.path for t in unet_targets(unet, include_conv_blocks=True)]
    apply_network(unet, [], NetworkConfig(lora_type="LoCon", dim=2, conv_dim=2, train_text_encoder=False))
    after = [t.path for t in unet_targets(unet, include_conv_blocks=True)]
    assert after == before


def test_full_size_sd1_unet_has_kohyas_192_modules_in_the_known_blocks():
    """SD1.5's UNet (built on the meta device: shapes only, no memory): 16 transformers × 12 = 192."""
    with torch.device("meta"):
        full = UNet2DConditionModel(cross_attention_dim=768)
    targets = unet_targets(full, include_conv_blocks=False)
    assert len(targets) == 192
    # Attention lives in down_blocks 0–2 (IN01, IN02, IN04, IN05, IN07, IN08), mid,
    # and up_blocks 1–3 (OUT03–OUT11).
    assert sorted({block_index(t.path) for t in targets}) == [1, 2, 4, 5, 7, 8, 12] + list(range(16, 25))
    with_conv = {block_index(t.path) for t in unet_targets(full, include_conv_blocks=True)}
    assert sorted(with_conv) == list(range(1, 25))
