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


def test_fp8_base_is_refused_naming_it_and_an_import_reports_it():
    """fp8_base is declared (kohya_ss's key) but not implemented: on, it is an error naming it, never ignored;
    a kohya_ss config that turns it on imports with it reported and left off."""
    from trainer.kohya import import_kohya_config

    _, problems = validate_values({"fp8_base": True})
    errors = [p for p in problems if p.setting == "fp8_base" and p.level == "error"]
    assert errors and "not implemented yet" in errors[0].message
    result = import_kohya_config({"LoRA_type": "Standard", "fp8_base": True})
    lost = {u.key: u for u in result.unmapped}
    assert not lost["fp8_base"].neutral and "not implemented yet" in lost["fp8_base"].reason
    assert "fp8_base" not in result.values
    assert import_kohya_config({"LoRA_type": "Standard", "fp8_base": False}).values["fp8_base"] is False


def test_highvram_is_accepted_and_changes_nothing(demo_dir):
    """sd-scripts' --highvram only skips freeing the CUDA cache while caching latents, which LoRA Loom never
    frees: on, the job is valid without a note, plans the same run, and a kohya_ss config keeps it."""
    import tomllib
    from pathlib import Path

    from trainer.kohya import export_kohya_config, import_kohya_config
    from trainer.plan import make_plan
    from trainer.spec import job_from_values

    values = tomllib.loads((Path(demo_dir) / "job.toml").read_text())
    values.pop("spec_version", None)
    _, problems = validate_values({**values, "highvram": True})
    assert not [p for p in problems if p.setting == "highvram"]
    plans = [make_plan(job_from_values({**values, "highvram": on})) for on in (False, True)]
    assert plans[0] == plans[1]
    imported = import_kohya_config({"LoRA_type": "Standard", "highvram": True}).values
    assert imported["highvram"] is True and export_kohya_config(imported)["highvram"] is True
