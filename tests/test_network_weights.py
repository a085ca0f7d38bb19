"""network_weights from a LoRA that trained both parts, continued on one part only: the other part's modules
are left out with a warning naming the setting (sd-scripts' users switch the text encoder off this way)."""
from __future__ import annotations

import torch

from tests.effects_runs import read_lora, run_demo
from trainer.session import parts_not_trained



def test_parts_not_trained_keeps_the_trained_part():
    tensors = {"lora_unet_a.lora_down.weight": torch.zeros(1), "lora_unet_a.alpha": torch.zeros(()),
               "lora_te_b.lora_down.weight": torch.zeros(1), "lora_te_b.alpha": torch.zeros(()),
               "lora_te_c.lora_up.weight": torch.zeros(1)}
    kept, dropped = parts_not_trained(tensors, train_unet=True, train_text_encoder=False)
    assert set(kept) == {"lora_unet_a.lora_down.weight", "lora_unet_a.alpha"} and dropped == {"text encoder": 2}
    kept, dropped = parts_not_trained(tensors, train_unet=False, train_text_encoder=True)
    assert all(k.startswith("lora_te_") for k in kept) and dropped == {"UNet": 1}
    assert parts_not_trained(tensors, True, True) == (tensors, {})


def test_a_both_parts_lora_continues_on_the_unet_only(demo_dir, tmp_path):
    first = run_demo(demo_dir, tmp_path / "first", network_dim=4, network_alpha=4.0)
    started, _ = read_lora(first.final_file)
    second = run_demo(demo_dir, tmp_path / "second", network_dim=4, network_alpha=4.0, text_encoder_lr=0.0,
                      network_weights=str(first.final_file))
    assert second.status == "completed", second.of("error")
    warning = [e for e in second.of("warning") if e["setting"] == "network_weights"]
    assert warning and "text encoder module(s) are not used" in warning[0]["message"]
    continued, _ = read_lora(second.final_file)
    assert continued and all(k.startswith("lora_unet_") for k in continued)
    assert continued.keys() <= started.keys()
    assert second.losses[0] != first.losses[0]  # it started from the trained UNet modules
