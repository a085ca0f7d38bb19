"""kohya_ss's "Kohya LoKr" (sd-scripts' networks.lokr) and "LoRA-FA" (networks.lora_fa) on the tiny SD1 model, in
process: their layers, file keys, metadata, what trains, the regularizers, and the reload of their files through
LyCORIS's loader and our own. (The training runs: test_kohya_type_runs.py.)"""
import re

import pytest
import torch

from trainer.network import NetworkConfig, apply_network
from trainer.network.size import unet_network_size
from trainer.optim.loraplus import plus_markers, up_parameter_ids
from trainer.spec import SETTINGS, job_from_values
from trainer.spec.checks import check_settings
from trainer.spec.setting import SettingError

from .lycoris_reload import fixed_unet_output, load_with_lycoris
from .test_network_lycoris import tiny_models, trained

NAME = r"^lora_(unet|te)_[a-z0-9_]+\."
LOKR_KEYS = re.compile(NAME + r"(lokr_w1|lokr_w2|lokr_w2_a|lokr_w2_b|lokr_t2|alpha)$")
LORA_KEYS = re.compile(NAME + r"(lora_down\.weight|lora_up\.weight|alpha)$")
TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def _names(network, part="unet"):
    return set(network.module_names(part))


def _network(**config):
    unet, te = tiny_models()
    return apply_network(unet, [te], NetworkConfig(**config))


@pytest.mark.parametrize("lora_type, keys", [("Kohya LoKr", LOKR_KEYS), ("LoRA-FA", LORA_KEYS)])
def test_keys_metadata_and_reload_through_lycoris_reproduce_the_output(lora_type, keys):
    unet, te, network = trained(lora_type, factor=4) if lora_type == "Kohya LoKr" else trained(lora_type)
    tensors = network.kohya_state_dict()
    assert all(keys.match(key) for key in tensors), [k for k in tensors if not keys.match(k)][:3]
    out = fixed_unet_output(unet)
    fresh_unet, fresh_te = tiny_models()
    assert (fixed_unet_output(fresh_unet) - out).abs().max() > 1e-4
    load_with_lycoris(tensors, fresh_unet, [fresh_te])
    assert torch.allclose(fixed_unet_output(fresh_unet), out, atol=2e-5, rtol=1e-4)
    # and through our own loader (a resumed run or network_weights)
    again_unet, again_te = tiny_models()
    again = apply_network(again_unet, [again_te], network.config)
    again.load_kohya_state_dict(tensors)
    assert torch.allclose(fixed_unet_output(again_unet), out, atol=2e-5, rtol=1e-4)


def test_kohya_lokr_adapts_sd_scripts_lora_layers_not_the_lycoris_preset():
    """networks.lokr walks networks.lora's blocks (Transformer2DModel; with conv_dim the ResNet blocks and
    samplers), as our LoCon does; LyCORIS/LoKr's "full" preset also takes other layers."""
    locon = _network(lora_type="LoCon", dim=4, conv_dim=2)
    kohya = _network(lora_type="Kohya LoKr", dim=4, conv_dim=2)
    assert _names(kohya) == _names(locon) and _names(kohya, "text_encoder") == _names(locon, "text_encoder")
    no_conv = _network(lora_type="Kohya LoKr", dim=4, conv_dim=0)
    standard = _network(lora_type="Standard", dim=4)
    assert _names(no_conv) == _names(standard)
    meta = kohya.metadata()
    assert meta["ss_network_module"] == "networks.lokr"
    assert meta["ss_network_args"] == '{"conv_dim": "2", "conv_alpha": "1.0"}'


def test_kohya_lokr_options_reach_the_modules():
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type="Kohya LoKr", dim=4, conv_dim=2, factor=4,
                                                      use_tucker=True, rank_dropout=0.3, module_dropout=0.2))
    modules = {a.name: a.layer for a in network.adapters}
    to_q = modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    assert tuple(to_q.lokr_w1.shape) == (4, 4)  # 32 = 4 × 8 with factor 4
    conv = modules["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert hasattr(conv, "lokr_t2")  # Tucker on the 3×3 convolutions
    assert (to_q.rank_dropout, to_q.module_dropout, to_q.rank_dropout_scale) == (0.3, 0.2, True)
    assert to_q.dropout == 0  # networks.lokr never applies the network dropout
    args = network.metadata()["ss_network_args"]
    assert '"factor": "4"' in args and '"use_tucker": "True"' in args and '"rank_dropout": "0.3"' in args


def test_full_rank_kohya_lokr_is_a_full_matrix_with_scale_1():
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type="Kohya LoKr", dim=100000, alpha=1.0, conv_dim=0))
    tensors = network.kohya_state_dict()
    assert not any(key.endswith("lokr_w2_a") for key in tensors)
    assert all(float(v) == 100000 for k, v in tensors.items() if k.endswith(".alpha"))  # alpha = dim: scale 1


@pytest.mark.parametrize("name", ["network_dropout", "scale_weight_norms"])
def test_kohya_lokr_refuses_what_networks_lokr_never_applies(name):
    with pytest.raises(SettingError) as error:
        NetworkConfig(lora_type="Kohya LoKr", **{name: 0.1})
    assert error.value.setting == name
    # from a job: the setting is hidden for the type, ignored with a warning that names it
    job = job_from_values({"LoRA_type": "Kohya LoKr", name: 0.1})
    assert [p for p in check_settings(job, SETTINGS) if p.setting == name][0].level == "warning"


def test_kohya_lokr_loraplus_group_is_the_scale_factor():
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type="Kohya LoKr", dim=4, conv_dim=0))
    named = [(n, p) for a in network.adapters for n, p in a.layer.named_parameters()]
    ids = up_parameter_ids(named, plus_markers("Kohya LoKr"))
    assert ids and ids == {id(p) for n, p in named if n == "lokr_w1"}


def test_lora_fa_trains_the_up_matrix_only_and_its_down_matrix_follows_the_paper():
    unet, te = tiny_models()
    network = apply_network(unet, [te], NetworkConfig(lora_type="LoRA-FA", dim=4, alpha=2.0))
    adapter = next(a.layer for a in network.adapters if a.plan.target.path == TO_Q)
    down_before = adapter.lora_down.clone()
    assert torch.count_nonzero(adapter.lora_up) == 0 and torch.count_nonzero(down_before) == down_before.numel()
    assert abs(float(down_before.std()) - (2.0 / (32 + 4)) ** 0.5) < 0.1  # normal, std √(2 / (in + rank))
    trainable = network.trainable_parameters()
    assert all(p.shape[1] == 4 for p in trainable)  # up matrices (out, rank) only
    network.set_text_encoder_trainable(True)  # cannot unfreeze the down matrices
    assert len(network.trainable_parameters()) == len(trainable)
    assert sum(p.numel() for g in network.param_groups(1e-3, 1e-3) for p in g["params"]) == \
        sum(p.numel() for p in trainable)
    optimizer = torch.optim.SGD(network.trainable_parameters(), lr=0.1)
    unet.train()
    latents, states = torch.randn(1, 4, 16, 16), torch.randn(1, 8, unet.config.cross_attention_dim)
    unet(latents, torch.tensor([10]), states).sample.square().mean().backward()
    optimizer.step()
    assert torch.equal(adapter.lora_down, down_before) and torch.count_nonzero(adapter.lora_up) > 0
    size = unet_network_size(tiny_models()[0], network.config)
    assert size["parameters"] == sum(p.numel() for a in network.adapters if a.part == "unet" for p in a.parameters())
    meta = network.metadata()
    assert meta["ss_network_module"] == "networks.lora_fa" and meta["ss_network_args"] == "{}"


def test_lora_fa_regularizers():
    """module_dropout = 1: no module changes the output in training mode; scale_weight_norms: every module's
    ΔW norm is at most the limit after the step, with sd-scripts' statistics."""
    unet, te, network = trained("LoRA-FA", module_dropout=1.0, rank_dropout=0.5, network_dropout=0.5)
    fresh_unet, _ = tiny_models()
    latents, states = torch.randn(1, 4, 16, 16), torch.randn(1, 8, unet.config.cross_attention_dim)
    unet.train()
    network.set_training(True)
    with torch.no_grad():
        trained_out = unet(latents, torch.tensor([10]), states).sample
        assert torch.allclose(trained_out, fresh_unet(latents, torch.tensor([10]), states).sample, atol=1e-6)
    unet, te, network = trained("LoRA-FA", seed=3, scale_weight_norms=0.01)
    scaled, average, largest = network.apply_max_norm(0.01)
    norms = [float(a.layer.delta_weight().norm()) for a in network.adapters]
    assert scaled > 0 and max(norms) <= 0.01 + 1e-6 and abs(largest - max(norms)) < 1e-6
    assert abs(average - sum(norms) / len(norms)) < 1e-6


def test_lora_fa_rank_dropout_rescales_the_kept_ranks():
    layer = torch.nn.Linear(8, 8)
    from trainer.network.lora_fa import LoraFaAdapter

    adapter = LoraFaAdapter(layer, 1, 1.0, torch.Generator().manual_seed(0), rank_dropout=0.5)  # one rank
    with torch.no_grad():
        adapter.lora_up.fill_(1.0)
    x = torch.ones(4000, 8)
    adapter.eval()
    plain = adapter(x) - layer(x)
    adapter.train()
    torch.manual_seed(0)
    dropped = adapter(x) - layer(x)
    kept = dropped[:, 0] != 0
    assert torch.allclose(dropped[kept], 2 * plain[kept])  # a kept rank is scaled by 1/(1 − p)
    assert abs(float(kept.float().mean()) - 0.5) < 0.05 and torch.all(dropped[~kept] == 0)


def test_lora_fa_takes_no_lora_plus_and_the_plan_preview_agrees():
    from trainer.plan import lr_preview, schedule

    values = {"LoRA_type": "LoRA-FA", "loraplus_lr_ratio": 16.0, "text_encoder_lr": 0.0, "unet_lr": 1e-4}
    job = job_from_values(values)
    assert [p.level for p in check_settings(job, SETTINGS) if p.setting == "loraplus_lr_ratio"] == ["warning"]
    plan = schedule(batches_per_epoch=4, epoch=1, lr_scheduler="constant", lr_warmup_percent=0)
    assert set(lr_preview(job, plan)) == {"unet"}  # no unet_plus group: sd-scripts' lora_fa reads no ratio
    standard = job_from_values({**values, "LoRA_type": "Standard"})
    assert set(lr_preview(standard, plan)) == {"unet", "unet_plus"}
