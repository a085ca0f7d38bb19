"""The plan's network size (module count and trainable parameters) matches the network a run builds."""
import pytest
import torch
from diffusers import UNet2DConditionModel

from trainer.models.tiny import tiny_unet_config
from trainer.network import NetworkConfig, apply_network
from trainer.network.size import unet_network_size
from trainer.plan import make_plan
from trainer.spec import job_from_values

from .effects_runs import demo_values


@pytest.mark.parametrize("lora_type, options", [
    ("Standard", {}), ("LoHa", {"use_tucker": True}), ("DyLoRA", {}), ("LyCORIS/LoKr", {"dora_wd": True}),
    ("LyCORIS/iA3", {}), ("LyCORIS/GLoRA", {}), ("LyCORIS/BOFT", {}), ("LyCORIS/Diag-OFT", {"rescaled": True}),
    ("LyCORIS/Native Fine-Tuning", {"train_norm": True}), ("LoCon", {"use_scalar": True, "use_tucker": True}),
])
def test_size_counted_on_the_meta_device_is_the_built_networks(lora_type, options):
    config = NetworkConfig(lora_type=lora_type, dim=4, conv_dim=4, train_text_encoder=False, **options)
    with torch.device("meta"):
        skeleton = UNet2DConditionModel(**tiny_unet_config())
    counted = unet_network_size(skeleton, config)
    network = apply_network(UNet2DConditionModel(**tiny_unet_config()), [], config)
    assert counted == {"modules": len(network), "parameters": sum(p.numel() for p in network.trainable_parameters())}


def test_the_plan_shows_the_types_size(demo_dir, tmp_path):
    plans = {t: make_plan(job_from_values(demo_values(demo_dir, tmp_path, LoRA_type=t)), with_memory=True)["network"]
             for t in ("Standard", "LyCORIS/iA3")}
    assert plans["Standard"]["type"] == "Standard" and plans["LyCORIS/iA3"]["type"] == "LyCORIS/iA3"
    assert plans["LyCORIS/iA3"]["modules"] > plans["Standard"]["modules"]  # iA3's preset also takes the ResNets
    assert 0 < plans["LyCORIS/iA3"]["parameters"] < plans["Standard"]["parameters"]


def test_the_plan_panel_shows_the_network_row():
    from gui.plan_panel import plan_markdown

    text = plan_markdown({"network": {"type": "LyCORIS/LoKr", "modules": 129, "parameters": 27776}})
    assert "| UNet network | LyCORIS/LoKr: 129 modules, 27,776 trainable parameters |" in text
    assert "UNet network" not in plan_markdown({})
