"""Presets: the built-in files, user presets (save, list, load), kohya_ss JSON as a preset, applying one."""
import json
import tomllib
from pathlib import Path

import pytest

from trainer.kohya import import_kohya_config
from trainer.optim.optimizers import check_optimizer_args, parse_optimizer_args
from trainer.presets import (
    BUILTIN_DIR,
    PresetError,
    apply_preset,
    find_preset,
    list_presets,
    load_preset,
    read_preset,
    safe_file_stem,
    save_preset,
)
from trainer.spec import SETTINGS_BY_KEY, defaults, validate_values

from .shared_refs import shared_path

KOHYA_FIXTURES = Path(__file__).parent / "fixtures" / "kohya"  # our own kohya_ss-format configs
BUILTIN_NAMES = ["Fast test run", "Low memory (8-bit, checkpointing)", "Prodigy (adaptive learning rate)",
                 "SD1.5 character (balanced)", "SD1.5 style", "SDXL character (UNet only)"]
# Settings the preset files may use (the core ones named in the design of the built-ins).
CORE_SETTINGS = {
    "network_dim", "network_alpha", "learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler",
    "lr_scheduler_num_cycles", "lr_warmup", "optimizer", "optimizer_args", "epoch", "train_batch_size",
    "flip_aug", "shuffle_caption", "keep_tokens", "noise_offset", "min_snr_gamma", "gradient_checkpointing",
    "caption_extension", "max_resolution", "min_bucket_reso", "max_bucket_reso", "mixed_precision", "save_precision",
}


def builtin_presets():
    return [info for info in list_presets(None) if info.builtin]


# ---------------------------------------------------------------- built-ins


def test_the_builtin_presets_are_listed_by_name():
    assert [info.name for info in builtin_presets()] == BUILTIN_NAMES
    for info in builtin_presets():
        assert info.path.parent == BUILTIN_DIR and info.path.suffix == ".toml"


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_each_builtin_preset_is_a_valid_sparse_commented_file(name):
    path = find_preset(name, None).path
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"# {name}: "), "the first line says what the preset is for"
    raw = tomllib.loads(text)
    assert raw.pop("spec_version") == 1
    assert set(raw) <= CORE_SETTINGS
    for key, value in raw.items():
        assert value != SETTINGS_BY_KEY[key].default, f"{key} repeats the default"
    assert load_preset(path) == raw
    job, problems = validate_values(apply_preset(defaults(), raw), for_training=False)
    assert job is not None, problems
    errors = [p for p in problems if p.level == "error" and "not implemented yet" not in p.message]
    assert errors == []
    check_optimizer_args(job.optimisation.optimizer, parse_optimizer_args(job.optimisation.optimizer_args))


def test_builtin_presets_hold_what_their_names_promise():
    sdxl = apply_preset(defaults(), load_preset(find_preset("SDXL character (UNet only)", None).path))
    assert (sdxl["text_encoder_lr"], sdxl["max_resolution"], sdxl["mixed_precision"]) == (0.0, "1024,1024", "bf16")
    low = apply_preset(defaults(), load_preset(find_preset("Low memory (8-bit, checkpointing)", None).path))
    assert (low["optimizer"], low["gradient_checkpointing"], low["train_batch_size"]) == ("AdamW8bit", True, 1)
    prodigy = apply_preset(defaults(), load_preset(find_preset("Prodigy (adaptive learning rate)", None).path))
    assert prodigy["optimizer"] == "Prodigy"
    assert prodigy["learning_rate"] == prodigy["unet_lr"] == prodigy["text_encoder_lr"] == 1.0
    fast = apply_preset(defaults(), load_preset(find_preset("Fast test run", None).path))
    assert (fast["epoch"], fast["max_resolution"], fast["lr_warmup"]) == (1, "256,256", 0.0)


# ---------------------------------------------------------------- user presets


def test_save_writes_only_what_differs_and_never_a_secret(tmp_path):
    values = defaults() | {"network_dim": 24, "flip_aug": True, "wandb_api_key": "secret-key",
                           "train_data_dir": "/data/cats"}
    path = save_preset("My cats", values, tmp_path)
    assert path == tmp_path / "My cats.toml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# LoRA Loom preset: My cats\n")
    assert "secret-key" not in text
    assert tomllib.loads(text) == {"spec_version": 1, "train_data_dir": "/data/cats", "network_dim": 24,
                                   "flip_aug": True}
    assert load_preset(path) == {"train_data_dir": "/data/cats", "network_dim": 24, "flip_aug": True}
    listed = list_presets(tmp_path)
    assert [(i.name, i.builtin) for i in listed[-1:]] == [("My cats", False)]
    assert [i.name for i in listed[:-1]] == BUILTIN_NAMES


def test_saving_again_replaces_the_user_preset(tmp_path):
    save_preset("mine", {"network_dim": 4}, tmp_path)
    save_preset("mine", {"network_dim": 12}, tmp_path)
    assert load_preset(tmp_path / "mine.toml") == {"network_dim": 12}
    assert [p.name for p in tmp_path.iterdir()] == ["mine.toml"]


@pytest.mark.parametrize("name, stem", [
    ("a/b: c?", "a_b_ c_"),
    ("  ../../etc/passwd ", "_.._etc_passwd"),
    ("SDXL 1.0 (v2) + dims", "SDXL 1.0 (v2) + dims"),
])
def test_preset_names_become_safe_file_names(name, stem):
    assert safe_file_stem(name) == stem


@pytest.mark.parametrize("name", ["", "   ", "///", "..."])
def test_names_without_letters_or_digits_are_refused(name, tmp_path):
    with pytest.raises(PresetError, match="cannot be a preset name"):
        save_preset(name, {}, tmp_path)


def test_a_builtin_preset_cannot_be_overwritten(tmp_path):
    with pytest.raises(PresetError, match="built-in preset"):
        save_preset("fast TEST run", {"network_dim": 4}, tmp_path)
    with pytest.raises(PresetError, match="built-in presets folder"):
        save_preset("new one", {"network_dim": 4}, BUILTIN_DIR)
    assert not (BUILTIN_DIR / "new one.toml").exists()


def test_invalid_values_are_not_saved_and_the_setting_is_named(tmp_path):
    with pytest.raises(PresetError, match="network_dim"):
        save_preset("bad", {"network_dim": 0}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_blank_text_encoder_rate_is_saved_as_the_learning_rate(tmp_path):
    path = save_preset("blank te", {"learning_rate": 0.0003, "text_encoder_lr": None}, tmp_path)
    assert load_preset(path) == {"learning_rate": 0.0003, "text_encoder_lr": 0.0003}


# ---------------------------------------------------------------- reading files


def shared_kohya_preset(name):
    """A real kohya_ss preset in shared/ (the test must be marked ``shared``; it skips without shared/)."""
    return shared_path("fixtures", "kohya_presets", name)


def check_kohya_preset(path, unmapped, seed):
    loaded = read_preset(path)
    assert loaded.from_kohya
    assert loaded.values == import_kohya_config(path).values
    assert {u.key for u in loaded.unmapped} == unmapped - set(SETTINGS_BY_KEY)
    assert load_preset(path)["seed"] == seed


def test_a_kohya_config_loads_as_a_preset_with_its_report():
    check_kohya_preset(KOHYA_FIXTURES / "locon-old-gui.json", {"save_model_as", "training_comment"}, 99)


@pytest.mark.shared
def test_a_real_kohya_preset_loads_as_a_preset_with_its_report():
    check_kohya_preset(shared_kohya_preset("sd15 - EDG_LoraOptiSettings.json"),
                       {"training_comment", "v2", "v_parameterization"}, 1234)


def test_a_flux_kohya_config_is_refused_as_a_preset():
    with pytest.raises(PresetError, match="Flux.1 model family is not supported"):
        load_preset(KOHYA_FIXTURES / "flux1-dev.json")


@pytest.mark.shared
def test_a_real_flux_kohya_preset_is_refused_as_a_preset():
    with pytest.raises(PresetError, match="Flux.1 model family is not supported"):
        load_preset(shared_kohya_preset("flux1D - adamw8bit fp8.json"))


def test_our_json_preset_is_read_strictly(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"spec_version": 1, "network_dim": 16, "flip_aug": True}))
    assert load_preset(good) == {"network_dim": 16, "flip_aug": True}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"spec_version": 1, "netwrok_dim": 16}))
    with pytest.raises(PresetError, match="netwrok_dim") as caught:
        load_preset(bad)
    assert "bad.json" in str(caught.value)


@pytest.mark.parametrize("file_name, content, expected", [
    ("broken.toml", "network_dim = ", "is not valid TOML"),
    ("range.toml", "network_dim = 0", "network_dim"),
    ("list.json", "[1]", "expected a JSON object"),
    ("notes.txt", "network_dim = 8", "a .toml or .json file"),
])
def test_bad_preset_files_are_refused_naming_the_file(tmp_path, file_name, content, expected):
    path = tmp_path / file_name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PresetError, match=expected) as caught:
        load_preset(path)
    assert file_name in str(caught.value)


def test_unknown_preset_names_and_missing_user_folders():
    assert [i.name for i in list_presets("/nonexistent/presets")] == BUILTIN_NAMES
    with pytest.raises(PresetError, match="no preset called 'nope'"):
        find_preset("nope", None)


# ---------------------------------------------------------------- applying


def test_apply_keeps_paths_prompts_and_secrets_and_resets_the_rest():
    current = defaults() | {
        "pretrained_model_name_or_path": "/models/sd15.safetensors", "train_data_dir": "/data/cats",
        "output_dir": "/out", "output_name": "cats", "logging_dir": "/logs", "reg_data_dir": "/reg",
        "sample_prompts": "a cat --w 512", "wandb_api_key": "k", "network_dim": 99, "flip_aug": True,
        "epoch": 7,
    }
    result = apply_preset(current, {"network_dim": 16, "epoch": 3, "sample_every_n_epochs": 1})
    kept = ("pretrained_model_name_or_path", "train_data_dir", "output_dir", "output_name", "logging_dir",
            "reg_data_dir", "sample_prompts", "wandb_api_key")
    assert {k: result[k] for k in kept} == {k: current[k] for k in kept}
    assert (result["network_dim"], result["epoch"], result["sample_every_n_epochs"]) == (16, 3, 1)
    assert result["flip_aug"] is False  # not in the preset: back to the default
    assert set(result) == set(defaults())


def test_a_preset_that_sets_a_kept_setting_wins():
    result = apply_preset({"train_data_dir": "/mine", "sample_prompts": "old"},
                          {"train_data_dir": "/preset", "spec_version": 1})
    assert (result["train_data_dir"], result["sample_prompts"]) == ("/preset", "old")
    assert "spec_version" not in result


def check_blank_paths_are_kept(preset, output_dir, epoch):
    assert preset["train_data_dir"] == "" and preset["output_dir"] == output_dir
    result = apply_preset({"train_data_dir": "/data/cats", "output_dir": "/out"}, preset)
    assert (result["train_data_dir"], result["output_dir"]) == ("/data/cats", output_dir)
    assert (result["LoRA_type"], result["epoch"]) == ("DyLoRA", epoch)


def test_blank_paths_in_a_kohya_config_do_not_wipe_the_current_ones():
    check_blank_paths_are_kept(load_preset(KOHYA_FIXTURES / "dylora-sd15.json"), "./runs/output", 40)


@pytest.mark.shared
def test_blank_paths_in_a_real_kohya_preset_do_not_wipe_the_current_ones():
    check_blank_paths_are_kept(load_preset(shared_kohya_preset("DyLoRA-Adafactor-toml.json")), "./test/output", 150)
