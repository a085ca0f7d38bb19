"""full_bf16: the LoRA weights, gradients and optimizer state in bf16 (sd-scripts' --full_bf16)."""
import math

import pytest
import torch

from tests.effects_runs import run_in_session
from trainer.precision import choose_precision
from trainer.spec import validate_values


def test_full_bf16_keeps_the_adapters_in_bf16():
    choice = choose_precision("bf16", False, "cpu", full_bf16=True)
    assert (choice.adapter_dtype, choice.autocast_dtype, choice.use_grad_scaler) == (torch.bfloat16, torch.bfloat16, False)
    assert choose_precision("bf16", False, "cpu").adapter_dtype == torch.float32
    fallback = choose_precision("bf16", False, "cuda", bf16_supported=False, full_bf16=True)
    assert fallback.adapter_dtype == torch.float32 and "full_bf16" in {s for s, _ in fallback.warnings}
    with pytest.raises(ValueError, match="full_bf16 needs mixed precision bf16"):
        choose_precision("fp16", False, "cpu", full_bf16=True)


def test_a_full_bf16_run_trains_bf16_adapters(demo_dir, tmp_path):
    run = run_in_session(demo_dir, tmp_path, max_train_steps=2, mixed_precision="bf16", full_bf16=True,
                         optimizer="AdamW")
    params = run.session.network.trainable_parameters()
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert len(run.losses) == 2 and all(math.isfinite(loss) for loss in run.losses)


def test_full_bf16_needs_bf16_mixed_precision():
    _, problems = validate_values({"full_bf16": True, "mixed_precision": "fp16"}, for_training=False)
    assert ("full_bf16", "error") in {(p.setting, p.level) for p in problems}
    _, problems = validate_values({"full_bf16": "maybe"}, for_training=False)
    assert "full_bf16" in {p.setting for p in problems}
