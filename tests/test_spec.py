"""The schema: every seed setting declared once with its documented default; strict job files."""
import csv
import dataclasses

import pytest

from trainer.spec import (
    SETTINGS,
    SETTINGS_BY_KEY,
    JobError,
    check_job,
    check_settings,
    defaults,
    job_from_values,
    job_to_values,
    load_job,
    sparse_values,
    toml_text,
    validate_values,
    write_job_toml,
)

from .shared_refs import shared_path


def seed_rows():
    with shared_path("reference", "seed-settings.tsv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def expected_default(raw: str, setting):
    """The seed's default, read the way its table writes it ("" = blank)."""
    if raw == "":
        return None if setting.optional else ""
    if setting.kind == "bool":
        return raw == "true"
    if setting.kind == "int" or (setting.kind == "choice" and isinstance(setting.default, int)):
        return int(raw)
    if setting.kind == "float":
        return float(raw)
    return raw


@pytest.mark.shared
def test_every_seed_setting_is_declared_with_its_documented_default():
    rows = seed_rows()
    assert len(rows) == 86
    for row in rows:
        setting = SETTINGS_BY_KEY.get(row["key"])
        assert setting is not None, f"{row['key']} is not declared"
        assert setting.default == expected_default(row["default"], setting), row["key"]


def test_every_setting_has_words_for_people_and_a_tab():
    keys = [s.key for s in SETTINGS]
    assert len(keys) == len(set(keys)), "a setting is declared twice"
    for setting in SETTINGS:
        assert setting.label and len(setting.help) > 20, setting.key
        assert setting.tab in ("model", "folders", "basic", "advanced", "weights", "blocks", "conv", "samples")


@pytest.mark.parametrize("bad, key", [
    ({"network_alpha": "abc"}, "network_alpha"),
    ({"train_batch_size": 0}, "train_batch_size"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"max_token_length": 100}, "max_token_length"),
    ({"max_resolution": "big"}, "max_resolution"),
    ({"block_dims": "1,2,3"}, "block_dims"),
    ({"down_lr_weight": "wobbly"}, "down_lr_weight"),
    ({"flip_aug": 1}, "flip_aug"),
    ({"no_such_setting": 3}, "no_such_setting"),
    ({"additional_parameters": "--bogus 3"}, "additional_parameters"),
])
def test_bad_values_are_refused_naming_the_setting(bad, key):
    with pytest.raises(JobError) as caught:
        job_from_values(bad)
    assert [p.setting for p in caught.value.problems] == [key]
    assert str(caught.value).startswith(f"error: {key}: ")


def test_toml_round_trip_keeps_every_value_and_never_writes_secrets(tmp_path):
    values = {**defaults(), "network_dim": 32, "seed": 7, "down_lr_weight": "sine+0.1",
              "wandb_api_key": "very-secret", "max_token_length": 150}
    path = write_job_toml(values, tmp_path / "job.toml")
    text = path.read_text()
    assert "very-secret" not in text and "wandb_api_key" not in text
    assert text.startswith("spec_version = 1")
    job = load_job(path)
    expected = {**values, "wandb_api_key": ""}
    assert {k: v for k, v in job_to_values(job).items() if k != "spec_version"} == expected


def test_blank_values_round_trip_as_blank(tmp_path):
    path = write_job_toml({"seed": None, "lr_scheduler_num_cycles": None, "unet_lr": None}, tmp_path / "job.toml")
    job = load_job(path)
    assert job.optimisation.seed is None and job.optimisation.lr_scheduler_num_cycles is None
    assert job.optimisation.unet_lr is None, "a blank unet_lr means 'use learning_rate' and must not become the default"


def test_job_file_errors_are_clear(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("network_dim = [", encoding="utf-8")
    with pytest.raises(JobError, match="not valid TOML"):
        load_job(broken)
    newer = tmp_path / "newer.toml"
    newer.write_text("spec_version = 99\n", encoding="utf-8")
    with pytest.raises(JobError, match="newer LoRA Loom"):
        load_job(newer)


def test_sparse_values_hold_only_what_differs_and_no_secret():
    values = {**defaults(), "network_dim": 16, "wandb_api_key": "k"}
    assert sparse_values(values) == {"network_dim": 16}


def test_additional_parameters_override_known_settings_only():
    job = job_from_values({"additional_parameters": "--max_grad_norm 0.5 --flip_aug --network_dim 4"})
    assert (job.optimisation.max_grad_norm, job.data.flip_aug, job.network.network_dim) == (0.5, True, 4)
    with pytest.raises(JobError, match="expected a whole number"):
        job_from_values({"additional_parameters": "--network_dim four"})


def test_cross_setting_rules():
    _, problems = validate_values({"color_aug": True, "cache_latents": True}, for_training=False)
    assert ("color_aug", "error") in {(p.setting, p.level) for p in problems}
    _, problems = validate_values({"network_alpha": 16, "network_dim": 8}, for_training=False)
    assert ("network_alpha", "warning") in {(p.setting, p.level) for p in problems}
    _, problems = validate_values({"unet_lr": 0, "text_encoder_lr": 0, "learning_rate": 0}, for_training=False)
    assert "learning_rate" in {p.setting for p in problems if p.level == "error"}
    _, problems = validate_values({"sample_prompts": "a cat --w big"}, for_training=False)
    assert "sample_prompts" in {p.setting for p in problems}


def test_paths_are_checked_only_for_training(tmp_path):
    job = job_from_values({"train_data_dir": str(tmp_path / "missing")})
    settings = {p.setting for p in check_job(job, for_training=True) if p.level == "error"}
    assert {"pretrained_model_name_or_path", "train_data_dir", "output_dir"} <= settings
    assert not [p for p in check_job(job, for_training=False) if p.setting == "train_data_dir"]


def test_a_setting_marked_not_implemented_is_refused_away_from_its_default():
    # Shown on a catalog with two more of them marked not implemented (fp8_base is the one that is today).
    marked = {"flip_aug", "optimizer"}
    catalog = [dataclasses.replace(s, implemented=False) if s.key in marked else s for s in SETTINGS]
    changed = job_from_values({"flip_aug": True, "optimizer": "Lion"})
    assert {p.setting for p in check_settings(changed, catalog) if p.level == "error"} >= marked
    at_default = job_from_values({})
    assert not marked & {p.setting for p in check_settings(at_default, catalog) if p.level == "error"}
    assert [s.key for s in SETTINGS if not s.implemented] == ["fp8_base"]  # the README's "156 of 157"


def test_toml_text_lists_settings_in_schema_order():
    text = toml_text(defaults())
    positions = [text.index(f"\n{s.key} = ") for s in SETTINGS if s.default is not None and not s.secret]
    assert positions == sorted(positions)
