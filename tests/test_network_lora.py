"""Standard LoRA on the tiny UNet and text encoder: init, scale, groups, kohya state dict in and out."""
import json
import math
import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from trainer.models.tiny import tiny_text_encoder_config, tiny_unet_config
from trainer.network import NetworkConfig, apply_network

KOHYA_KEY = re.compile(r"^lora_(unet|te)_.*\.(lora_down\.weight|lora_up\.weight|alpha)$")
TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
PROJ_IN = "down_blocks.0.attentions.0.proj_in"


def tiny_models(seed: int = 0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config())
    text_encoder = CLIPTextModel(tiny_text_encoder_config())
    return unet, text_encoder


def perturb_up_weights(network, seed: int = 3) -> None:
    """Give every lora_up a non-zero value, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in network.adapters:
            up = adapter.layer.lora_B["default"].weight
            up.copy_(torch.randn(up.shape, generator=generator) * 0.1)


def unet_output(unet, seed: int = 5):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 7, 32, generator=generator)
    with torch.no_grad():
        return unet(latents, 10, context).sample


@pytest.fixture
def network_and_models():
    unet, text_encoder = tiny_models()
    network = apply_network(unet, [text_encoder], NetworkConfig(dim=4, alpha=2.0))
    return network, unet, text_encoder


def test_module_counts_and_keys(network_and_models):
    network, _, _ = network_and_models
    assert len(network.module_names("unet")) == 72 and len(network.module_names("text_encoder")) == 12
    tensors = network.kohya_state_dict()
    assert len(tensors) == 3 * 84
    assert all(KOHYA_KEY.match(key) for key in tensors), [k for k in tensors if not KOHYA_KEY.match(k)][:3]
    down = tensors[f"lora_unet_{TO_Q.replace('.', '_')}.lora_down.weight"]
    up = tensors[f"lora_unet_{TO_Q.replace('.', '_')}.lora_up.weight"]
    assert down.shape == (4, 32) and up.shape == (32, 4)
    conv_down = tensors[f"lora_unet_{PROJ_IN.replace('.', '_')}.lora_down.weight"]
    assert conv_down.shape == (4, 32, 1, 1)
    alpha = tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"]
    assert alpha.dim() == 0 and alpha.item() == 2.0 and alpha.dtype == torch.float32


def test_init_matches_kohya_and_changes_nothing():
    unet, text_encoder = tiny_models()
    reference = unet_output(unet)
    network = apply_network(unet, [text_encoder], NetworkConfig(dim=4, alpha=1.0))
    for name, tensor in network.kohya_state_dict().items():
        if name.endswith("lora_up.weight"):
            assert torch.count_nonzero(tensor) == 0, name
        elif name.endswith("lora_down.weight"):
            fan_in = tensor[0].numel()
            bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=√5): gain √(2/6) · √(3/fan_in)
            assert tensor.abs().max() <= bound + 1e-7, name
            assert tensor.abs().max() > 0.5 * bound, name
    assert torch.equal(unet_output(unet), reference)


def test_base_weights_are_frozen_and_only_adapters_train(network_and_models):
    network, unet, text_encoder = network_and_models
    trainable = {id(p) for p in network.trainable_parameters()}
    assert len(trainable) == 2 * 84
    frozen_base = [n for n, p in list(unet.named_parameters()) + list(text_encoder.named_parameters())
                   if p.requires_grad and id(p) not in trainable]
    assert frozen_base == []
    perturb_up_weights(network)
    generator = torch.Generator().manual_seed(0)
    latents, context = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 7, 32, generator=generator)
    loss = unet(latents, 10, context).sample.square().mean()
    loss.backward()
    unet_params = [p for a in network.adapters if a.part == "unet" for p in a.parameters()]
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in unet_params)


def test_scale_is_alpha_over_dim_for_linear_and_1x1_conv(network_and_models):
    network, unet, _ = network_and_models
    perturb_up_weights(network)
    tensors = network.kohya_state_dict()
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    layer = unet.get_submodule(TO_Q)
    name = f"lora_unet_{TO_Q.replace('.', '_')}"
    down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
    expected = layer.base_layer(x) + (2.0 / 4) * x @ down.T @ up.T
    assert torch.allclose(layer(x), expected, atol=1e-6)

    image = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(2))
    conv = unet.get_submodule(PROJ_IN)
    name = f"lora_unet_{PROJ_IN.replace('.', '_')}"
    down = tensors[f"{name}.lora_down.weight"][:, :, 0, 0]
    up = tensors[f"{name}.lora_up.weight"][:, :, 0, 0]
    delta = torch.einsum("or,ri,bihw->bohw", up, down, image) * 0.5
    assert torch.allclose(conv(image), conv.base_layer(image) + delta, atol=1e-6)


def test_alpha_zero_means_alpha_equals_dim():
    unet, text_encoder = tiny_models()
    network = apply_network(unet, [text_encoder], NetworkConfig(dim=4, alpha=0.0))
    alphas = {v.item() for k, v in network.kohya_state_dict().items() if k.endswith(".alpha")}
    assert alphas == {4.0}
    assert unet.get_submodule(TO_Q).scaling["default"] == 1.0


def test_param_groups_names_lrs_and_dropping(network_and_models):
    network, _, _ = network_and_models
    groups = network.param_groups(unet_lr=1e-4, text_encoder_lr=5e-5)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [("text_encoder", 5e-5, 24), ("unet", 1e-4, 144)]
    assert [g["name"] for g in network.param_groups(unet_lr=1e-4, text_encoder_lr=0)] == ["unet"]
    assert [g["name"] for g in network.param_groups(unet_lr=0, text_encoder_lr=1e-5)] == ["text_encoder"]


def test_parts_not_trained_get_no_modules():
    unet, text_encoder = tiny_models()
    network = apply_network(unet, [text_encoder], NetworkConfig(dim=2, train_text_encoder=False))
    assert network.module_names("text_encoder") == []
    assert not any(k.startswith("lora_te") for k in network.kohya_state_dict())
    assert not any("lora_" in n for n, _ in text_encoder.named_modules())
    unet, text_encoder = tiny_models()
    network = apply_network(unet, [text_encoder], NetworkConfig(dim=2, train_unet=False))
    assert network.module_names("unet") == [] and len(network.module_names("text_encoder")) == 12
    unet, _ = tiny_models()
    with pytest.raises(ValueError, match="no modules"):
        apply_network(unet, [], NetworkConfig(train_unet=False))


def test_stopping_text_encoder_training_keeps_its_effect(network_and_models):
    network, _, text_encoder = network_and_models
    perturb_up_weights(network)
    ids = torch.tensor([[49406, 320, 1929, 49407]])
    before = text_encoder(ids).last_hidden_state
    network.set_text_encoder_trainable(False)
    te_params = {id(p) for a in network.adapters if a.part == "text_encoder" for p in a.parameters()}
    assert not te_params & {id(p) for p in network.trainable_parameters()}
    assert len(network.trainable_parameters()) == 144
    assert torch.equal(text_encoder(ids).last_hidden_state, before)
    network.set_text_encoder_trainable(True)
    assert len(network.trainable_parameters()) == 168


def test_state_dict_dtype_casts_everything_and_copies(network_and_models):
    network, _, _ = network_and_models
    half = network.kohya_state_dict(dtype=torch.float16)
    assert {t.dtype for t in half.values()} == {torch.float16}
    tensors = network.kohya_state_dict()
    key = next(k for k in tensors if k.endswith("lora_down.weight"))
    tensors[key].add_(1.0)
    assert not torch.equal(network.kohya_state_dict()[key], tensors[key])


def test_round_trip_reproduces_tensors_and_outputs(network_and_models):
    network, unet, _ = network_and_models
    perturb_up_weights(network)
    saved = network.kohya_state_dict()
    other_unet, other_te = tiny_models()
    other = apply_network(other_unet, [other_te], NetworkConfig(dim=4, alpha=2.0))
    assert not torch.equal(unet_output(other_unet), unet_output(unet))
    other.load_kohya_state_dict(saved)
    loaded = other.kohya_state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert torch.equal(unet_output(other_unet), unet_output(unet))


def test_loaded_alpha_sets_the_scale(network_and_models):
    network, unet, _ = network_and_models
    perturb_up_weights(network)
    tensors = network.kohya_state_dict()
    name = f"lora_unet_{TO_Q.replace('.', '_')}"
    tensors[f"{name}.alpha"] = torch.tensor(1.0)
    network.load_kohya_state_dict(tensors)
    assert unet.get_submodule(TO_Q).scaling["default"] == 0.25
    assert network.kohya_state_dict()[f"{name}.alpha"].item() == 1.0


def test_load_names_keys_that_do_not_fit(network_and_models):
    network, _, _ = network_and_models
    tensors = network.kohya_state_dict()
    name = f"lora_unet_{TO_Q.replace('.', '_')}"
    missing = dict(tensors)
    del missing[f"{name}.lora_up.weight"]
    with pytest.raises(ValueError, match=f"missing 1 key.*{name}.lora_up.weight"):
        network.load_kohya_state_dict(missing)
    extra = dict(tensors, **{"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match="unexpected 1 key.*lora_unet_conv_in.lora_down.weight"):
        network.load_kohya_state_dict(extra)
    wrong = dict(tensors, **{f"{name}.lora_down.weight": torch.zeros(8, 32)})
    with pytest.raises(ValueError, match=rf"{name}.lora_down.weight is \[8, 32\], the network needs \[4, 32\]"):
        network.load_kohya_state_dict(wrong)


def test_metadata_names_module_dim_alpha_and_args(network_and_models):
    network, _, _ = network_and_models
    metadata = network.metadata()
    assert metadata["ss_network_module"] == "networks.lora"
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"
    assert json.loads(metadata["ss_network_args"]) == {}
    assert all(isinstance(v, str) for v in metadata.values())


def test_adapters_stay_float32_on_a_bf16_base():
    unet, text_encoder = tiny_models()
    unet.to(torch.bfloat16)
    network = apply_network(unet, [text_encoder], NetworkConfig(dim=4, alpha=4.0))
    assert {p.dtype for p in network.trainable_parameters()} == {torch.float32}
    perturb_up_weights(network)
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    layer = unet.get_submodule(TO_Q)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    tensors = network.kohya_state_dict()
    name = f"lora_unet_{TO_Q.replace('.', '_')}"
    delta = x.float() @ tensors[f"{name}.lora_down.weight"].T @ tensors[f"{name}.lora_up.weight"].T
    assert torch.allclose(out.float(), (layer.base_layer(x).float() + delta), atol=0.05)
    network.cast_adapters(torch.bfloat16)
    assert {p.dtype for p in network.trainable_parameters()} == {torch.bfloat16}
