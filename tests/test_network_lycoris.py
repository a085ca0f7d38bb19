"""The LyCORIS types and options on the tiny SD1 model, in process: keys, options' effects, reload through
LyCORIS's loader, and the regularizers. (Training runs through the CLI: test_lycoris_runs.py.)"""
import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from .lycoris_reload import fixed_unet_output, load_with_lycoris
from trainer.models.tiny import tiny_text_encoder_config, tiny_unet_config
from trainer.network import NetworkConfig, apply_network
from trainer.spec.setting import SettingError

NAME = r"^lora_(unet|te)_[a-z0-9_]+\."
# LyCORIS's key suffixes per algorithm (lycoris/modules/*.py weight_list).
SUFFIXES = {
    "LyCORIS/LoKr": r"(lokr_w1|lokr_w1_a|lokr_w1_b|lokr_w2|lokr_w2_a|lokr_w2_b|lokr_t2|alpha|dora_scale)",
    "LyCORIS/iA3": r"(weight|on_input)",
    "LyCORIS/GLoRA": r"(a1\.weight|a2\.weight|b1\.weight|b2\.weight|bm\.weight|alpha)",
    "LyCORIS/BOFT": r"(oft_blocks|rescale|alpha)",
    "LyCORIS/Diag-OFT": r"(oft_blocks|rescale|alpha)",
    "LyCORIS/Native Fine-Tuning": r"(diff|diff_b)",
    "LoCon": r"(lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha|dora_scale)",
    "LoHa": r"(hada_w1_a|hada_w1_b|hada_w2_a|hada_w2_b|hada_t1|hada_t2|alpha|dora_scale)",
}
NEW_TYPES = ["LyCORIS/LoKr", "LyCORIS/iA3", "LyCORIS/GLoRA", "LyCORIS/BOFT", "LyCORIS/Diag-OFT",
             "LyCORIS/Native Fine-Tuning"]
TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
RESNET_CONV = "down_blocks.0.resnets.0.conv1"


def tiny_models(seed: int = 0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_unet_config()), CLIPTextModel(tiny_text_encoder_config())


def trained(lora_type: str, seed: int = 1, **options):
    """A network on fresh tiny models with every trainable weight moved off its start (as training would)."""
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type=lora_type, dim=4, alpha=2.0, conv_dim=2,
                                                      conv_alpha=1.0, **options))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in network.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=generator).to(param.dtype) * 0.05)
    return unet, te, network


def suffixes(tensors) -> set[str]:
    return {key.split(".", 1)[1] for key in tensors}


@pytest.mark.parametrize("lora_type, options", [(t, {}) for t in NEW_TYPES] + [
    ("LoCon", {"dora_wd": True}), ("LoHa", {"dora_wd": True}), ("LyCORIS/LoKr", {"dora_wd": True})])
def test_file_keys_follow_lycoris_and_reload_through_lycoris_reproduces_the_output(lora_type, options):
    unet, te, network = trained(lora_type, **options)
    tensors = network.kohya_state_dict()
    pattern = re.compile(NAME + SUFFIXES[lora_type] + "$")
    assert all(pattern.match(key) for key in tensors), [k for k in tensors if not pattern.match(k)][:3]
    assert network.metadata()["ss_network_module"] == "lycoris.kohya"
    if options.get("dora_wd"):
        assert "dora_scale" in suffixes(tensors)  # DoRA's magnitude is saved
    expected = fixed_unet_output(unet)
    fresh_unet, fresh_te = tiny_models()
    base = fixed_unet_output(fresh_unet)
    assert (expected - base).abs().max() > 1e-4  # the adapters change the output
    load_with_lycoris(tensors, fresh_unet, [fresh_te])
    assert torch.allclose(fixed_unet_output(fresh_unet), expected, atol=1e-5, rtol=1e-4)


def test_lycoris_own_loader_reads_an_sd1_file():
    """LyCORIS's create_lycoris_from_weights on the diffusers UNet, an SD1 file's UNet modules named as its
    module paths. (Its kohya-side create_network_from_weights trips over diffusers' time_embedding, which its
    full preset names twice: "duplicated lora name" in 4.1.3.)"""
    from lycoris.wrapper import LycorisNetwork, create_lycoris_from_weights

    unet, te, network = trained("LyCORIS/LoKr")
    expected = fixed_unet_output(unet)
    fresh_unet, _ = tiny_models()
    unet_tensors = {k: v for k, v in network.kohya_state_dict().items() if k.startswith("lora_unet_")}
    prefix = LycorisNetwork.LORA_PREFIX
    LycorisNetwork.LORA_PREFIX = "lora_unet"  # a class attribute: LyCORIS's own way to name a UNet's modules
    try:
        loaded, _ = create_lycoris_from_weights(1.0, None, fresh_unet, weights_sd=unet_tensors)
    finally:
        LycorisNetwork.LORA_PREFIX = prefix
    assert len(loaded.loras) == len(network.module_names("unet"))
    for module in loaded.loras:
        module.apply_to()
    assert torch.allclose(fixed_unet_output(fresh_unet), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lora_type, options", [("LyCORIS/GLoRA", {}), ("LyCORIS/Native Fine-Tuning", {}),
                                                ("LyCORIS/iA3", {}), ("LyCORIS/LoKr", {"use_scalar": True}),
                                                ("LoHa", {"dora_wd": True, "train_norm": True})])
def test_saved_network_loads_back_into_our_network_for_resume(lora_type, options):
    unet, te, network = trained(lora_type, **options)
    tensors = network.kohya_state_dict()
    fresh_unet, fresh_te = tiny_models()
    again = apply_network(fresh_unet, [fresh_te], network.config)
    again.load_kohya_state_dict(tensors)
    assert torch.allclose(fixed_unet_output(fresh_unet), fixed_unet_output(unet), atol=1e-5)


# --- options ---------------------------------------------------------------------------------------


def _shapes(lora_type, **options) -> dict[str, tuple]:
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type=lora_type, **{"dim": 4, "alpha": 1.0, "conv_dim": 2,
                                                                               **options}))
    return {k: tuple(v.shape) for k, v in network.kohya_state_dict().items()}


def test_lokr_factor_decompose_both_and_cp():
    stem = "lora_unet_" + TO_Q.replace(".", "_")
    auto, two = _shapes("LyCORIS/LoKr"), _shapes("LyCORIS/LoKr", factor=2)
    assert auto[f"{stem}.lokr_w1"] == (4, 4) and two[f"{stem}.lokr_w1"] == (2, 2)  # 32 = 4·8 or 2·16
    assert f"{stem}.lokr_w1_a" in _shapes("LyCORIS/LoKr", factor=8, decompose_both=True, dim=1)
    conv = "lora_unet_" + RESNET_CONV.replace(".", "_")
    assert f"{conv}.lokr_t2" not in auto and f"{conv}.lokr_t2" in _shapes("LyCORIS/LoKr", use_tucker=True, dim=1)


def test_rank_100000_means_full_matrix_for_lokr_and_is_refused_elsewhere():
    stem = "lora_unet_" + TO_Q.replace(".", "_")
    full = _shapes("LyCORIS/LoKr", dim=100000)
    assert f"{stem}.lokr_w2" in full and f"{stem}.lokr_w2_a" not in full
    with pytest.raises(SettingError) as error:
        NetworkConfig(lora_type="LoCon", dim=100000)
    assert error.value.setting == "network_dim"


def test_conv_dim_0_leaves_the_3x3_convs_alone():
    names = set(_shapes("LyCORIS/LoKr", conv_dim=0))
    assert not any(RESNET_CONV.replace(".", "_") + "." in n for n in names)
    assert any("resnets_0_time_emb_proj" in n for n in names)  # LyCORIS keeps the ResNet's Linear layers


def test_ia3_trains_on_input_by_default_or_on_output():
    stem = "lora_unet_" + "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2".replace(".", "_")
    on_input, on_output = _shapes("LyCORIS/iA3"), _shapes("LyCORIS/iA3", train_on_input=False)
    assert on_input[f"{stem}.weight"] == (128,) and on_output[f"{stem}.weight"] == (32,)  # ff.net.2: 128 → 32


def test_use_scalar_adds_a_trainable_scale_and_train_norm_the_norm_layers():
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type="LoCon", dim=4, use_scalar=True, train_norm=True))
    names = [n for a in network.adapters for n, _ in a.layer.named_parameters()]
    assert "scalar" in names and "w_norm" in names
    assert any(k.endswith(".w_norm") for k in network.kohya_state_dict())


def test_oft_constrain_and_rescaled_reach_lycoris():
    for lora_type in ("LyCORIS/Diag-OFT", "LyCORIS/BOFT"):
        shapes = _shapes(lora_type, rescaled=True, constrain=0.5)
        assert any(k.endswith(".rescale") for k in shapes)
        unet, te = tiny_models()
        network = apply_network(unet, [te], NetworkConfig(lora_type=lora_type, dim=4, conv_dim=4, constrain=0.5))
        assert network.adapters[0].layer.constraint == pytest.approx(0.5 * network.adapters[0].layer.dim)


def test_bypass_mode_gives_the_same_output_another_way():
    unet, te, network = trained("LyCORIS/LoKr")
    tensors = network.kohya_state_dict()
    fresh_unet, fresh_te = tiny_models()
    bypass = apply_network(fresh_unet, [fresh_te], NetworkConfig(lora_type="LyCORIS/LoKr", dim=4, alpha=2.0,
                                                                 conv_dim=2, bypass_mode=True))
    bypass.load_kohya_state_dict(tensors)
    assert all(a.layer.bypass_mode for a in bypass.adapters)
    assert torch.allclose(fixed_unet_output(fresh_unet), fixed_unet_output(unet), atol=1e-5)


def test_rank_dropout_scale_reaches_the_modules():
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type="LyCORIS/LoKr", dim=4, rank_dropout=0.5,
                                                      rank_dropout_scale=True))
    assert all(a.layer.rank_dropout_scale and a.layer.rank_dropout == 0.5 for a in network.adapters)


@pytest.mark.parametrize("preset, unet_has, te_modules", [
    ("attn-only", r"attn[12]_to_(q|k|v|out_0)$", True),
    ("unet-transformer-only", r"(attentions|transformer)", False),
    ("unet-convblock-only", r"(resnets|samplers)", False),
    ("full-lin", r"(attentions|resnets)", True),
])
def test_presets_choose_the_layers(preset, unet_has, te_modules):
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type="LyCORIS/LoKr", dim=4, conv_dim=2, preset=preset))
    assert all(re.search(unet_has, n) for n in network.module_names("unet"))
    assert bool(network.module_names("text_encoder")) == te_modules
    if preset == "full-lin":
        assert not any(n.endswith(("conv1", "conv2")) for n in network.module_names("unet"))


def test_a_custom_preset_file_is_read_and_what_it_cannot_honour_is_refused(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('enable_conv = false\nunet_target_module = ["ResnetBlock2D"]\ntext_encoder_target_module = []\n'
                    'exclude_name = ["*time_emb_proj"]\n')
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type="LyCORIS/LoKr", dim=4, preset=str(good)))
    names = network.module_names()
    assert names and all("conv_shortcut" in n for n in names)  # only the 1×1 shortcuts are left
    bad = tmp_path / "names.toml"
    bad.write_text('unet_target_name = ["conv_in"]\n')
    with pytest.raises(SettingError) as error:
        apply_network(*[m for m in tiny_models()][:1], [], NetworkConfig(lora_type="LyCORIS/LoKr", preset=str(bad)))
    assert error.value.setting == "LyCORIS_preset" and "unet_target_name" in str(error.value)


def test_block_settings_are_refused_for_lycoris_types_and_regularizers_for_dylora():
    with pytest.raises(SettingError) as error:
        NetworkConfig(lora_type="LyCORIS/iA3", block_dims=(4,) * 25)
    assert error.value.setting == "block_dims"
    with pytest.raises(SettingError) as error:
        NetworkConfig(lora_type="DyLoRA", module_dropout=0.1)
    assert error.value.setting == "module_dropout"


# --- regularizers ----------------------------------------------------------------------------------


def _delta_norm(module) -> float:
    """‖ΔW‖ of a module, as LyCORIS computes ΔW."""
    with torch.no_grad():
        return float(module.get_diff_weight()[0].norm())


def test_scale_weight_norms_caps_every_module_and_reports_sd_scripts_statistics():
    unet, te, network = trained("Standard", scale_weight_norms=0.01)
    before = [_delta_norm(a.layer) for a in network.adapters]
    scaled, average, largest = network.apply_max_norm(0.01)
    after = [_delta_norm(a.layer) for a in network.adapters]
    assert scaled == sum(n > 0.01 for n in before) > 0
    assert max(after) <= 0.01 + 1e-6 and largest == pytest.approx(max(after), rel=1e-4)
    assert average == pytest.approx(sum(after) / len(after), rel=1e-3)
    saved = network.kohya_state_dict()  # the scaled weights are what is saved
    name = network.adapters[0].name
    delta = saved[f"{name}.lora_up.weight"].flatten(1) @ saved[f"{name}.lora_down.weight"].flatten(1)
    assert float(delta.norm() * network.adapters[0].layer.scale) <= 0.01 + 1e-6


def _train_mode_outputs(lora_type="Standard", calls=2, **options):
    unet, te, network = trained(lora_type, **options)
    unet.eval()
    network.set_training(True)
    generator_free = [fixed_unet_output_train(unet) for _ in range(calls)]
    return unet, network, generator_free


def fixed_unet_output_train(unet) -> torch.Tensor:
    """fixed_unet_output, but leaving the adapters' train flags as they are (dropouts active)."""
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(1, unet.config.in_channels, 16, 16, generator=generator)
    states = torch.randn(1, 8, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), states).sample


def test_module_dropout_1_turns_every_module_off_in_training_mode_only():
    unet, network, outputs = _train_mode_outputs(module_dropout=1.0)
    base_unet, _ = tiny_models()
    assert torch.allclose(outputs[0], fixed_unet_output(base_unet), atol=1e-6)  # no module changes the output
    network.set_training(False)
    assert not torch.allclose(fixed_unet_output_train(unet), outputs[0], atol=1e-4)


@pytest.mark.parametrize("options", [{"network_dropout": 0.5}, {"rank_dropout": 0.5}])
def test_dropouts_act_in_training_mode_and_not_in_eval(options):
    unet, network, outputs = _train_mode_outputs(**options)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-6)  # a fresh mask each call
    network.set_training(False)
    assert torch.allclose(fixed_unet_output_train(unet), fixed_unet_output_train(unet))
    _, quiet, same = _train_mode_outputs()
    assert torch.allclose(same[0], same[1])  # without dropout training mode is deterministic
