"""Block-wise dims/alphas/LR weights, LoCon, LoHa and DyLoRA on the tiny models."""
import json
import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from trainer.models.tiny import tiny_text_encoder_config, tiny_unet_config
from trainer.network import BLOCK_LABELS, NetworkConfig, apply_network, block_index, read_lora_file, save_lora_file

TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
RESNET_CONV = "down_blocks.0.resnets.0.conv1"
KOHYA_KEY = re.compile(r"^lora_(unet|te)_.*\.(lora_down\.weight|lora_up\.weight|alpha)$")
LOHA_KEY = re.compile(r"^lora_(unet|te)_.*\.(hada_w1_a|hada_w1_b|hada_w2_a|hada_w2_b|alpha)$")


def tiny_models(seed: int = 0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_unet_config()), CLIPTextModel(tiny_text_encoder_config())


def kohya(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def per_block(default, **overrides):
    """25 values, ``default`` everywhere except the named blocks (IN01=…, MID=…)."""
    return tuple(overrides.get(label, default) for label in BLOCK_LABELS)


def modules_in_file(tensors) -> dict[str, int]:
    """kohya module name → rank read from lora_down (LoRA) files."""
    return {k[: -len(".lora_down.weight")]: v.shape[0] for k, v in tensors.items() if k.endswith(".lora_down.weight")}


# --- block dims, alphas, LR weights ----------------------------------------------------------


def test_block_dims_and_alphas_set_each_module():
    unet, te = tiny_models()
    config = NetworkConfig(
        dim=4, alpha=4.0, block_dims=per_block(2, IN01=0, MID=6), block_alphas=per_block(1.0, MID=3.0)
    )
    network = apply_network(unet, [te], config)
    tensors = network.kohya_state_dict()
    ranks = modules_in_file(tensors)
    unet_ranks = {name: rank for name, rank in ranks.items() if name.startswith("lora_unet")}
    assert not any(block_index(name) == 1 for name in unet_ranks)  # IN01 has dim 0: no modules
    assert len(unet_ranks) == 72 - 12
    assert {rank for name, rank in unet_ranks.items() if block_index(name) == 12} == {6}
    assert {rank for name, rank in unet_ranks.items() if block_index(name) != 12} == {2}
    assert tensors[kohya("mid_block.attentions.0.proj_in") + ".alpha"].item() == 3.0
    assert tensors[kohya("up_blocks.1.attentions.0.proj_in") + ".alpha"].item() == 1.0
    # The text encoder keeps network_dim / network_alpha.
    te_down = tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]
    assert te_down.shape[0] == 4 and tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"].item() == 4.0
    assert unet.get_submodule("mid_block.attentions.0.proj_in").scaling["default"] == 0.5
    args = json.loads(network.metadata()["ss_network_args"])
    assert args["block_dims"].split(",")[:3] == ["2", "0", "2"] and len(args["block_dims"].split(",")) == 25


def test_block_lr_weights_make_groups_and_drop_zero_blocks():
    unet, te = tiny_models()
    weights = per_block(1.0, IN02=0.0, MID=0.5, OUT04=2.0)
    network = apply_network(unet, [te], NetworkConfig(dim=2, block_lr_weights=weights))
    assert not any(block_index(name) == 2 for name in network.module_names("unet"))
    groups = {g["name"]: g for g in network.param_groups(unet_lr=1e-3, text_encoder_lr=1e-4)}
    # Transformers live in IN01, IN02, MID, OUT03, OUT04, OUT05; IN02 is gone.
    assert list(groups) == ["text_encoder", "unet_IN01", "unet_MID", "unet_OUT03", "unet_OUT04", "unet_OUT05"]
    assert groups["unet_MID"]["lr"] == pytest.approx(5e-4) and groups["unet_OUT04"]["lr"] == pytest.approx(2e-3)
    assert groups["unet_IN01"]["lr"] == pytest.approx(1e-3) and groups["text_encoder"]["lr"] == 1e-4
    assert all(len(groups[name]["params"]) == 24 for name in groups if name.startswith("unet_"))
    args = json.loads(network.metadata()["ss_network_args"])
    assert args["mid_lr_weight"] == "0.5" and args["down_lr_weight"].split(",")[2] == "0.0"


def test_block_settings_are_checked():
    with pytest.raises(ValueError, match="block_dims needs 25 values"):
        NetworkConfig(block_dims=(4,) * 12)
    with pytest.raises(ValueError, match="block_lr_weights has negative values for block.* MID"):
        NetworkConfig(block_lr_weights=per_block(1.0, MID=-1.0))
    with pytest.raises(ValueError, match="LoRA_type 'LoKr'"):
        NetworkConfig(lora_type="LoKr")


# --- LoCon ----------------------------------------------------------------------------------


def test_locon_adapts_convs_with_conv_dim_and_their_linears_with_dim(tmp_path):
    unet, te = tiny_models()
    config = NetworkConfig(lora_type="LoCon", dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0,
                           conv_block_dims=per_block(2, OUT02=3))
    network = apply_network(unet, [te], config)
    path = save_lora_file(tmp_path / "locon.safetensors", network.kohya_state_dict(), network.metadata())
    tensors, metadata = read_lora_file(path)
    assert all(KOHYA_KEY.match(k) for k in tensors)
    assert tensors[kohya(RESNET_CONV) + ".lora_down.weight"].shape == (2, 32, 3, 3)
    assert tensors[kohya(RESNET_CONV) + ".lora_up.weight"].shape == (32, 2, 1, 1)
    assert tensors[kohya(RESNET_CONV) + ".alpha"].item() == 1.0
    assert tensors[kohya("up_blocks.0.upsamplers.0.conv") + ".lora_down.weight"].shape[0] == 3
    assert tensors[kohya("down_blocks.0.resnets.0.time_emb_proj") + ".lora_down.weight"].shape[0] == 4
    shortcut = tensors[kohya("down_blocks.1.resnets.0.conv_shortcut") + ".lora_down.weight"]
    assert shortcut.shape == (4, 32, 1, 1) and tensors[kohya("down_blocks.1.resnets.0.conv_shortcut") + ".alpha"] == 2.0
    assert len(modules_in_file(tensors)) == 117 + 12
    assert json.loads(metadata["ss_network_args"])["conv_dim"] == "2"
    # The 3×3 adapter computes base + conv(up, conv(down, x)) · conv_alpha / conv_dim, stride and padding kept.
    layer = unet.get_submodule("down_blocks.0.downsamplers.0.conv")
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(2))
    down, up = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    delta = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, stride=2, padding=1), up) * 0.5
    assert torch.allclose(layer(x), layer.base_layer(x) + delta, atol=1e-5)


def test_standard_ignores_conv_dim():
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type="Standard", dim=2, conv_dim=8))
    assert len(network.module_names("unet")) == 72


# --- LoHa -----------------------------------------------------------------------------------


def test_loha_keys_shapes_and_delta(tmp_path):
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type="LoHa", dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0))
    tensors = network.kohya_state_dict()
    assert all(LOHA_KEY.match(k) for k in tensors)
    assert len(tensors) == 5 * (117 + 12)
    name = kohya(TO_Q)
    assert tensors[f"{name}.hada_w1_a"].shape == (32, 4) and tensors[f"{name}.hada_w1_b"].shape == (4, 32)
    conv = kohya(RESNET_CONV)
    assert tensors[f"{conv}.hada_w1_a"].shape == (32, 2) and tensors[f"{conv}.hada_w2_b"].shape == (2, 32 * 9)
    assert network.metadata()["ss_network_module"] == "lycoris.kohya"
    assert json.loads(network.metadata()["ss_network_args"])["algo"] == "loha"

    with torch.no_grad():  # make the product non-zero (init sets w2_b to zero)
        for adapter in network.adapters:
            adapter.layer.hada_w2_b["default"].normal_(generator=torch.Generator().manual_seed(4))
    tensors = network.kohya_state_dict()
    layer = unet.get_submodule(TO_Q)
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    w1 = tensors[f"{name}.hada_w1_a"] @ tensors[f"{name}.hada_w1_b"]
    w2 = tensors[f"{name}.hada_w2_a"] @ tensors[f"{name}.hada_w2_b"]
    delta_weight = w1 * w2 * (2.0 / 4)  # LoHa: ΔW = (w1a·w1b) ⊙ (w2a·w2b) · alpha / dim
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ delta_weight.T, atol=1e-5)

    path = save_lora_file(tmp_path / "loha.safetensors", tensors, network.metadata())
    other_unet, other_te = tiny_models()
    loha = NetworkConfig(lora_type="LoHa", dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0)
    other = apply_network(other_unet, [other_te], loha)
    other.load_kohya_state_dict(read_lora_file(path)[0])
    assert all(torch.equal(other.kohya_state_dict()[k], tensors[k]) for k in tensors)


# --- DyLoRA ---------------------------------------------------------------------------------


def test_dylora_trains_one_rank_group_per_call_and_saves_as_lora(tmp_path):
    unet, te = tiny_models()
    config = NetworkConfig(lora_type="DyLoRA", dim=4, alpha=2.0, unit=2, conv_dim=2, conv_alpha=1.0, seed=11)
    network = apply_network(unet, [te], config)
    layer = unet.get_submodule(TO_Q)
    with torch.no_grad():
        for group in layer.up_groups:
            group.normal_(generator=torch.Generator().manual_seed(6))
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(7))
    down, up = layer.full_down().detach(), layer.full_up().detach()

    replay = torch.Generator().set_state(layer.generator.get_state())
    chosen = int(torch.randint(0, 2, (1,), generator=replay).item())
    out = layer(x)
    rank = (chosen + 1) * 2  # paper: use the first b ranks, scale alpha / b
    expected = layer.base_layer(x) + x @ down[:rank].T @ up[:, :rank].T * (2.0 / rank)
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    with_grad = [i for i, group in enumerate(layer.down_groups) if group.grad is not None]
    assert with_grad == [chosen]
    assert [i for i, group in enumerate(layer.up_groups) if group.grad is not None] == [chosen]

    with torch.no_grad():  # inference: every rank, scale alpha / dim
        full = layer.base_layer(x) + x @ down.T @ up.T * (2.0 / 4)
        assert torch.allclose(layer(x), full, atol=1e-6)

    tensors = network.kohya_state_dict()
    assert all(KOHYA_KEY.match(k) for k in tensors)
    assert tensors[f"{kohya(TO_Q)}.lora_down.weight"].shape == (4, 32)
    assert torch.equal(tensors[f"{kohya(TO_Q)}.lora_up.weight"], up)
    assert network.metadata()["ss_network_module"] == "networks.dylora"
    path = save_lora_file(tmp_path / "dylora.safetensors", tensors, network.metadata())
    other_unet, other_te = tiny_models(seed=1)
    other = apply_network(other_unet, [other_te], config)
    other.load_kohya_state_dict(read_lora_file(path)[0])
    assert all(torch.equal(other.kohya_state_dict()[k], tensors[k]) for k in tensors)


def test_dylora_on_a_strided_3x3_conv():
    unet, _ = tiny_models()
    config = NetworkConfig(lora_type="DyLoRA", dim=2, unit=2, conv_dim=4, conv_alpha=2.0, train_text_encoder=False)
    network = apply_network(unet, [], config)
    assert len(network.module_names()) == 117
    layer = unet.get_submodule("down_blocks.0.downsamplers.0.conv")
    with torch.no_grad():
        for group in layer.up_groups:
            group.normal_(generator=torch.Generator().manual_seed(8))
        x = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(9))
        down, up = layer.full_down(), layer.full_up()
        assert down.shape == (4, 32, 3, 3) and up.shape == (32, 4, 1, 1)
        hidden = torch.nn.functional.conv2d(x, down, stride=2, padding=1)
        expected = layer.base_layer(x) + torch.nn.functional.conv2d(hidden, up) * (2.0 / 4)
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_dylora_draws_vary_and_follow_the_seed():
    def draws(seed):
        unet, _ = tiny_models()
        apply_network(unet, [], NetworkConfig(lora_type="DyLoRA", dim=8, unit=1, seed=seed, train_text_encoder=False))
        layer = unet.get_submodule(TO_Q)
        return [layer._draw_group() for _ in range(40)]

    first = draws(3)
    assert first == draws(3)
    assert first != draws(4)
    assert len(set(first)) > 4 and all(0 <= d < 8 for d in first)


def test_dylora_dim_must_be_a_multiple_of_unit():
    with pytest.raises(ValueError, match=r"network_dim \(6\) must be a multiple of unit \(4\)"):
        NetworkConfig(lora_type="DyLoRA", dim=6, unit=4, conv_dim=4)
    with pytest.raises(ValueError, match=r"conv_dim \(1\) must be a multiple of unit \(4\)"):
        NetworkConfig(lora_type="DyLoRA", dim=8, unit=4)
    assert NetworkConfig(lora_type="DyLoRA", dim=8, unit=4, conv_dim=0).adapts_conv_layers is False
