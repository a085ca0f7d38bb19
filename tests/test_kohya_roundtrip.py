"""A kohya_ss config that sets every key added for issue 15 to a non-default value imports with nothing lost
and exports back to the same values."""
import json
from pathlib import Path

from trainer.kohya import export_kohya_config, import_kohya_config, report_lines
from trainer.spec import SETTINGS_BY_KEY, job_from_values, job_to_values

FIXTURE = Path(__file__).parent / "fixtures" / "kohya" / "every-new-key.json"
NEW_KEYS = {  # kohya-lora-tab-gap.md §2.3–§2.12 keys this project now declares
    "max_train_steps", "lr_warmup_steps", "min_timestep", "max_timestep", "ip_noise_gamma",
    "ip_noise_gamma_random_strength", "noise_offset_random_strength", "debiased_estimation_loss",
    "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss", "loss_type", "huber_schedule", "huber_c",
    "huber_scale", "lr_scheduler_type", "lr_scheduler_args", "save_model_as", "training_comment",
    "metadata_title", "metadata_author", "metadata_description", "metadata_license", "metadata_tags",
    "save_last_n_epochs", "save_last_n_epochs_state", "save_last_n_steps_state", "save_state_on_train_end",
    "wandb_run_name", "log_tracker_name", "log_tracker_config", "log_config", "full_bf16",
    "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
}


def test_the_fixture_sets_every_new_key_off_its_default():
    config = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert NEW_KEYS <= set(config) and NEW_KEYS <= set(SETTINGS_BY_KEY)
    at_default = {k for k in NEW_KEYS if config[k] == SETTINGS_BY_KEY[k].default}
    assert at_default == {"save_model_as"}  # its other value, ckpt, is not written by LoRA Loom


def test_every_key_imports_with_nothing_lost_and_exports_back():
    config = json.loads(FIXTURE.read_text(encoding="utf-8"))
    result = import_kohya_config(FIXTURE)
    assert result.unmapped == [] and not [line for line in report_lines(result) if line.startswith("not imported")]
    job = job_from_values(result.values)
    for key, value in config.items():
        if key not in ("LoRA_type", "additional_parameters"):
            assert job.get(key) == value, key
    # the additional parameters are kept as written and also act: --max_grad_norm=0.5 overrides the form
    assert result.values["additional_parameters"] == config["additional_parameters"]
    assert job.optimisation.max_grad_norm == 0.5
    exported = export_kohya_config(result.values)
    for key, value in config.items():
        assert exported[key] == value, key
    again = job_from_values(import_kohya_config(exported).values)
    blanks_written_as_1 = ("lr_scheduler_power", "lr_scheduler_num_cycles")  # kohya_ss has no blank for these
    assert {k: v for k, v in job_to_values(again).items() if k not in blanks_written_as_1} == {
        k: v for k, v in job_to_values(job).items() if k not in blanks_written_as_1}
