"""kohya_ss configs train here what they train there: run length, the learning-rate rules and the
"Additional parameters" line, each as sd-scripts (or, for stop_text_encoder_training, the seed) reads them."""
import pytest

from tests.effects_runs import STEPS_PER_EPOCH, read_lora, run_demo
from trainer.kohya import import_kohya_config, report_lines
from trainer.plan import schedule
from trainer.spec import SETTINGS_BY_KEY, job_from_values, validate_values
from trainer.spec.extra_args import parse_extra_arguments, split_arguments
from trainer.spec.rules import effective_lrs


# --- run length -------------------------------------------------------------------------------


def test_max_train_epochs_replaces_epoch_even_when_larger():
    # sd-scripts: max_train_steps = max_train_epochs × steps per epoch; kohya_ss's "epoch" is not read then
    sched = schedule(batches_per_epoch=4, epoch=1, max_train_epochs=10)
    assert (sched.epochs, sched.total_steps, sched.governed_by) == (10, 40, "max_train_epochs")
    assert schedule(batches_per_epoch=4, epoch=5, max_train_epochs=2).total_steps == 8


def test_max_train_steps_sets_the_total_and_the_last_epoch_stops_part_way():
    sched = schedule(batches_per_epoch=4, epoch=1, max_train_steps=10, save_every_n_epochs=1)
    assert (sched.epochs, sched.total_steps, sched.governed_by) == (3, 10, "max_train_steps")
    assert sched.save_epochs == [1, 2]  # the last (partial) epoch is the final file
    both = schedule(batches_per_epoch=4, epoch=1, max_train_steps=10, max_train_epochs=2)
    assert (both.total_steps, both.governed_by) == (8, "max_train_epochs")
    assert schedule(batches_per_epoch=4, epoch=3).governed_by == "epoch"


def test_lr_warmup_steps_overrides_the_percent():
    assert schedule(batches_per_epoch=10, epoch=1, lr_warmup_percent=50).warmup_steps == 5
    assert schedule(batches_per_epoch=10, epoch=1, lr_warmup_percent=50, lr_warmup_steps=3).warmup_steps == 3
    assert schedule(batches_per_epoch=10, epoch=1, lr_scheduler="constant", lr_warmup_steps=3).warmup_steps == 0


def test_a_run_with_max_train_steps_stops_there_and_the_plan_says_why(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, epoch=1, max_train_steps=STEPS_PER_EPOCH + 2, lr_warmup_steps=2,
                   lr_scheduler="constant_with_warmup")
    plan = run.plan
    assert (plan["total_steps"], plan["epochs"], plan["governed_by"]) == (6, 2, "max_train_steps")
    assert [(e["step"], e["epoch"]) for e in run.steps] == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2)]
    lrs = [e["lr"]["unet"] for e in run.steps]
    assert lrs[0] == 0 and lrs[1] == pytest.approx(lrs[2] / 2) and lrs[2] == lrs[-1]  # 2 warmup steps
    _, metadata = read_lora(run.final_file)
    assert (metadata["ss_steps"], metadata["ss_max_train_steps"], metadata["ss_lr_warmup_steps"]) == ("6", "6", "2")


def test_run_length_settings_are_checked_by_name():
    for key, bad in (("max_train_steps", -1), ("lr_warmup_steps", -5), ("max_train_epochs", 0)):
        _, problems = validate_values({key: bad}, for_training=False)
        assert key in {p.setting for p in problems}, key


# --- learning rates ---------------------------------------------------------------------------


def test_both_part_rates_zero_train_both_at_the_learning_rate(demo_dir, tmp_path):
    job = job_from_values({"unet_lr": 0, "text_encoder_lr": 0, "learning_rate": 3e-4})
    assert effective_lrs(job.optimisation) == (3e-4, 3e-4)
    _, problems = validate_values({"unet_lr": 0, "text_encoder_lr": 0}, for_training=False)
    assert [p.level for p in problems if p.setting == "unet_lr"] == ["warning"]
    assert not [p for p in problems if p.level == "error"]
    run = run_demo(demo_dir, tmp_path, unet_lr=0, text_encoder_lr=0, learning_rate=3e-4, lr_scheduler="constant")
    assert run.steps[0]["lr"] == {"text_encoder": 3e-4, "unet": 3e-4}
    tensors, _ = read_lora(run.final_file)
    assert any(k.startswith("lora_te") for k in tensors) and any(k.startswith("lora_unet") for k in tensors)


def test_dadaptation_with_two_rates_warns_and_trains_at_the_first(demo_dir, tmp_path):
    values = dict(optimizer="DAdaptation", learning_rate=1.0, unet_lr=1.0, text_encoder_lr=0.5,
                  lr_scheduler="constant")
    _, problems = validate_values(values, for_training=False)
    (warning,) = [p for p in problems if p.setting == "text_encoder_lr"]
    assert warning.level == "warning" and "only the first" in warning.message
    run = run_demo(demo_dir, tmp_path, **values)
    assert run.status == "completed" and len(run.steps) == STEPS_PER_EPOCH
    assert run.steps[0]["lr"] == {"text_encoder": 0.5, "unet": 0.5}
    assert any("only the first" in m for m in run.warnings_for("text_encoder_lr"))


def test_stop_text_encoder_training_is_applied_and_the_kohya_import_says_so():
    result = import_kohya_config({"stop_text_encoder_training": 30, "epoch": 2})
    assert result.values["stop_text_encoder_training"] == 30
    (line,) = [line for line in report_lines(result) if "stop_text_encoder_training" in line]
    assert "kohya_ss's LoRA tab ignores it" in line and "LoRA Loom applies it" in line
    assert not any("stop_text_encoder" in line for line in report_lines(import_kohya_config({"epoch": 2})))
    sched = schedule(batches_per_epoch=10, epoch=1, stop_text_encoder_percent=30)
    assert sched.text_encoder_stop_step == 3


# --- additional parameters --------------------------------------------------------------------


def parse(text):
    return parse_extra_arguments(text, SETTINGS_BY_KEY)


def test_additional_parameters_take_both_forms_and_sd_scripts_names():
    assert parse("--max_grad_norm=1") == ({"max_grad_norm": 1.0}, [])
    assert parse("--max_grad_norm 0.5 --flip_aug") == ({"max_grad_norm": 0.5, "flip_aug": True}, [])
    assert parse("--network_train_unet_only") == ({"text_encoder_lr": 0.0}, [])
    assert parse("--network_train_text_encoder_only") == ({"unet_lr": 0.0}, [])
    assert parse("--optimizer_type=AdamW --resolution 768,768 --lr-warmup-steps 5") == (
        {"optimizer": "AdamW", "max_resolution": "768,768", "lr_warmup_steps": 5}, [])
    assert parse('--lr_scheduler_type "CosineAnnealingLR" --lr_scheduler_args T_max=1000 eta_min=0') == (
        {"lr_scheduler_type": "CosineAnnealingLR", "lr_scheduler_args": "T_max=1000 eta_min=0"}, [])
    assert parse("--optimizer_args weight_decay=0.1 betas=(0.9,0.99)")[0] == {
        "optimizer_args": "weight_decay=0.1 betas=(0.9,0.99)"}
    assert parse("--no_half_vae --sdpa") == ({"xformers": False}, [])
    assert split_arguments("--a=b=c --d") == [("a", ["b=c"]), ("d", [])]


def test_additional_parameters_refuse_what_maps_to_nothing_naming_it():
    _, problems = parse("--log_prefix=xyz --max_grad_norm one --clip_skip 1 2")
    messages = [p.message for p in problems]
    assert {p.setting for p in problems} == {"additional_parameters"}
    assert "--log_prefix is neither a LoRA Loom setting" in messages[0]
    assert "--max_grad_norm: expected a number" in messages[1]
    assert "--clip_skip takes one value" in messages[2]
    _, problems = validate_values({"additional_parameters": "--max_grad_norm=5000"}, for_training=False)
    blamed = [p for p in problems if p.level == "error"]  # the field holds another value: the line is blamed
    assert [p.setting for p in blamed] == ["additional_parameters"] and "--max_grad_norm" in blamed[0].message


def test_kohya_presets_additional_parameters_become_settings():
    result = import_kohya_config({"additional_parameters": "--network_train_unet_only --max_grad_norm=0 "
                                                          "--lr_scheduler_type CosineAnnealingLR "
                                                          "--lr_scheduler_args T_max=1000"})
    job = job_from_values(result.values)
    assert not result.unmapped
    assert (job.optimisation.text_encoder_lr, job.optimisation.max_grad_norm) == (0, 0)
    assert (job.optimisation.lr_scheduler_type, job.optimisation.lr_scheduler_args) == ("CosineAnnealingLR", "T_max=1000")


# --- scheduler type ---------------------------------------------------------------------------


def test_an_lr_scheduler_type_with_its_arguments_drives_the_run(demo_dir, tmp_path):
    run = run_demo(demo_dir, tmp_path, lr_scheduler_type="StepLR", lr_scheduler_args="step_size=2 gamma=0.5",
                   learning_rate=1e-4, unet_lr=1e-4, text_encoder_lr=1e-4)
    assert [e["lr"]["unet"] for e in run.steps] == pytest.approx([1e-4, 1e-4, 5e-5, 5e-5])
    assert [lr for _, lr in run.plan["lr_curve"]["unet"]] == pytest.approx([1e-4, 1e-4, 5e-5, 5e-5])


def test_a_bad_lr_scheduler_type_or_argument_is_named():
    def blamed(**values):
        _, problems = validate_values(values, for_training=False)
        return {p.setting: p.message for p in problems if p.level == "error"}

    assert "not a learning-rate scheduler class" in blamed(lr_scheduler_type="NoSuchLR")["lr_scheduler_type"]
    assert "cannot import" in blamed(lr_scheduler_type="nosuchmodule.Thing")["lr_scheduler_type"]
    assert "does not take T_maxx" in blamed(lr_scheduler_type="CosineAnnealingLR",
                                            lr_scheduler_args="T_maxx=10")["lr_scheduler_args"]
    assert "key=value" in blamed(lr_scheduler_type="CosineAnnealingLR", lr_scheduler_args="T_max")["lr_scheduler_args"]
    assert blamed(lr_scheduler_type="torch.optim.lr_scheduler.CosineAnnealingLR", lr_scheduler_args="T_max=10") == {}
    _, problems = validate_values({"lr_scheduler_args": "T_max=10"}, for_training=False)
    assert ("lr_scheduler_args", "warning") in {(p.setting, p.level) for p in problems}  # unread without a type
