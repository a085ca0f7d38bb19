"""Acceptance of kohya_ss's "Kohya LoKr" and "LoRA-FA": each trains 5 steps on the tiny SD1 and SDXL models with a
finite loss, and its saved file, loaded through LyCORIS's loader onto a fresh copy of the base model, gives the
trained model's UNet output. The runs go through the session API (what ``python -m trainer train`` runs, the
trained model kept for the comparison); one run per type goes through the CLI itself."""
import json
import tomllib
from pathlib import Path

import pytest
import torch

from trainer.models.loading import load_base_model

from .lycoris_reload import fixed_unet_output, load_with_lycoris
from .test_lycoris_runs import _reload_matches, cli_five_steps, five_step_file

SUFFIXES = {"Kohya LoKr": r"(lokr_w1|lokr_w2|lokr_w2_a|lokr_w2_b|lokr_t2|alpha)",
            "LoRA-FA": r"(lora_down\.weight|lora_up\.weight|alpha)"}
MODULES = {"Kohya LoKr": "networks.lokr", "LoRA-FA": "networks.lora_fa"}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("lora_type", ["Kohya LoKr", "LoRA-FA"])
def test_each_type_trains_five_steps_and_reloads_through_lycoris(lora_type, family, demo_dir, sdxl_demo_dir, tmp_path):
    demo = demo_dir if family == "sd1" else sdxl_demo_dir
    run, tensors, metadata = five_step_file(lora_type, SUFFIXES[lora_type], family, demo, tmp_path)
    assert metadata["ss_network_module"] == MODULES[lora_type]
    _reload_matches(run, tensors)


@pytest.mark.parametrize("family, lora_type, extra", [
    ("sdxl", "Kohya LoKr", {"factor": 4, "use_tucker": True, "rank_dropout": 0.2, "module_dropout": 0.2}),
    ("sd1", "LoRA-FA", {"scale_weight_norms": 0.01, "network_dropout": 0.1, "rank_dropout": 0.1}),
])
def test_cli_runs_with_the_types_options(family, lora_type, extra, demo_dir, sdxl_demo_dir, tmp_path):
    """Through ``python -m trainer train``, text encoders included: the file has the type's keys and metadata,
    LyCORIS's loader and ours give the same model from it, and (LoRA-FA) the max-norm statistics are in the
    step events and within the limit."""
    job, steps, tensors, metadata = cli_five_steps(lora_type, Path(demo_dir if family == "sd1" else sdxl_demo_dir),
                                                   tmp_path, extra)
    assert metadata["ss_network_module"] == MODULES[lora_type]
    assert any(k.startswith("lora_te") for k in tensors) and any(k.startswith("lora_unet") for k in tensors)
    args = json.loads(metadata["ss_network_args"])
    if lora_type == "Kohya LoKr":
        assert args == {"conv_dim": "4", "conv_alpha": "1.0", "use_tucker": "True", "factor": "4",
                        "rank_dropout": "0.2", "module_dropout": "0.2"}
        assert any(k.endswith(".lokr_t2") for k in tensors)
    else:
        assert all({"keys_scaled", "average_key_norm", "max_key_norm"} <= s.keys() for s in steps)
        assert max(s["max_key_norm"] for s in steps) <= 0.01 + 1e-6
    base_path = tomllib.loads(job.read_text())["pretrained_model_name_or_path"]
    ours = _ours(base_path, tensors, lora_type, family)
    if lora_type == "LoRA-FA":  # LyCORIS's loader (Tucker LoKr's factor guess fails on the tiny widths)
        fresh = load_base_model(base_path)
        load_with_lycoris(tensors, fresh.unet, fresh.text_encoders)
        assert torch.allclose(fixed_unet_output(fresh.unet), ours, atol=2e-5, rtol=1e-4)


def _ours(base_path, tensors, lora_type, family):
    """The UNet output with the file loaded through our own network (as network_weights or a resume would)."""
    from trainer.network import NetworkConfig, apply_network

    fresh = load_base_model(base_path)
    before = fixed_unet_output(fresh.unet)
    options = {"factor": 4, "use_tucker": True, "conv_dim": 4} if lora_type == "Kohya LoKr" else {}
    config = NetworkConfig(lora_type=lora_type, dim=4, alpha=2.0, conv_alpha=1.0, family=family, **options)
    network = apply_network(fresh.unet, fresh.text_encoders, config)
    network.load_kohya_state_dict(tensors)
    out = fixed_unet_output(fresh.unet)
    assert (out - before).abs().max() > 1e-5
    return out
