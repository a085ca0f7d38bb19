"""LoRA+: the up matrices learn at ratio × their part's learning rate (sd-scripts' loraplus_* ratios)."""
import pytest
import torch

from tests.effects_runs import read_lora, run_demo
from trainer.optim.loraplus import loraplus_groups, loraplus_ratios, preview_groups, up_parameter_ids
from trainer.spec import validate_values


def test_ratios_and_groups():
    assert loraplus_ratios(16, 0, 0) == (16, 16)
    assert loraplus_ratios(16, 4, 0) == (4, 16) and loraplus_ratios(0, 0, 2) == (0, 2)
    down, up, te_down, te_up = (torch.nn.Parameter(torch.zeros(1)) for _ in range(4))
    ids = up_parameter_ids([("lora_A.default.weight", down), ("lora_B.default.weight", up),
                            ("lora_A.default.weight", te_down), ("lora_B.default.weight", te_up)])
    groups = [{"name": "text_encoder", "params": [te_down, te_up], "lr": 1e-5},
              {"name": "unet", "params": [down, up], "lr": 1e-4}]
    split = loraplus_groups(groups, ids, 4.0, 0.0)
    assert [(g["name"], g["lr"]) for g in split] == [("text_encoder", 1e-5), ("unet", 1e-4), ("unet_plus", 4e-4)]
    assert split[1]["params"] == [down] and split[2]["params"] == [up]
    assert preview_groups({"text_encoder": 1e-5, "unet_IN04": 1e-4}, 2.0, 3.0) == pytest.approx({
        "text_encoder": 1e-5, "unet_IN04": 1e-4, "text_encoder_plus": 3e-5, "unet_IN04_plus": 2e-4})


def test_a_loraplus_run_trains_the_up_matrices_faster(demo_dir, tmp_path):
    common = dict(max_train_steps=2, lr_scheduler="constant", optimizer="AdamW", seed=3, unet_lr=1e-4,
                  text_encoder_lr=5e-5)
    plus = run_demo(demo_dir, tmp_path / "plus", loraplus_lr_ratio=8, loraplus_text_encoder_lr_ratio=2, **common)
    plain = run_demo(demo_dir, tmp_path / "plain", **common)
    assert plus.steps[0]["lr"] == {"text_encoder": 5e-5, "text_encoder_plus": 1e-4, "unet": 1e-4, "unet_plus": 8e-4}
    assert plus.plan["lr_curve"]["unet_plus"][0][1] == 8e-4
    with_plus, _ = read_lora(plus.final_file)
    without, _ = read_lora(plain.final_file)
    ups = [k for k in with_plus if k.startswith("lora_unet") and k.endswith("lora_up.weight")]
    grown = sum(with_plus[k].float().abs().sum() for k in ups) / sum(without[k].float().abs().sum() for k in ups)
    assert grown > 4  # AdamW's step is about lr-sized: 8× the lr, several times the distance from zero


def test_bad_ratios_are_named():
    for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        _, problems = validate_values({key: -1}, for_training=False)
        assert key in {p.setting for p in problems}
        _, problems = validate_values({key: 200}, for_training=False)
        assert key in {p.setting for p in problems}
    _, problems = validate_values({"loraplus_lr_ratio": 16, "LoRA_type": "LoHa"}, for_training=False)
    assert ("loraplus_lr_ratio", "warning") in {(p.setting, p.level) for p in problems}
