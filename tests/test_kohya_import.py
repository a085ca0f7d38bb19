"""kohya_ss config import and export, on the real kohya_ss preset files in shared/fixtures/kohya_presets."""
import csv
import dataclasses
import json
from pathlib import Path

import pytest

from trainer.kohya import (
    LORA_TYPE_TO_KOHYA,
    RENAMED_KEYS,
    KohyaImportError,
    export_kohya_config,
    import_kohya_config,
    import_kohya_to_toml,
    report_lines,
)
from trainer.spec import SETTINGS_BY_KEY, job_from_values, job_to_values, load_job

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = next((d for d in (Path(__file__).parent / "fixtures" / "kohya_presets",
                             SHARED / "fixtures" / "kohya_presets") if d.is_dir()),
                SHARED / "fixtures" / "kohya_presets")
SEED_TSV = SHARED / "reference" / "seed-settings.tsv"

EDG_LORA = "sd15 - EDG_LoraOptiSettings.json"
EDG_LOCON = "sd15 - EDG_LoConOptiSettings.json"
DYLORA = "DyLoRA-Adafactor-toml.json"
LOHA_SD15 = "loha-sd15.json"
SDXL_LOHA = "SDXL - LoHA AI_Characters v1.0.json"
SDXL_STANDARD = "SDXL - LoRA AI_characters standard v1.1.json"
SDXL_PRODIGY = "SDXL - LoRA kudou-reira prodigy v4.0.json"
FLUX = "flux1D - adamw8bit fp8.json"
IMPORTABLE = [EDG_LORA, EDG_LOCON, DYLORA, LOHA_SD15, SDXL_LOHA, SDXL_STANDARD, SDXL_PRODIGY]

# Spot values, read off each file by hand: file value → what LoRA Loom must hold.
SPOT_VALUES = {
    EDG_LORA: {
        "learning_rate": 0.0001,          # "0.0001"
        "clip_skip": 2,
        "max_resolution": "512,650",
        "noise_offset": 0.05,             # "0.05"
        "seed": 1234,                     # "1234"
        "text_encoder_lr": 5e-05,         # "5e-05"
        "bucket_reso_steps": 64,          # 64.0
        "gradient_accumulation_steps": 1,  # 1.0
        "keep_tokens": 0,                 # "0"
        "max_token_length": 75,           # "75"
        "max_data_loader_n_workers": 1,   # "1"
        "lr_warmup": 0.0,                 # "0"
        "max_train_epochs": None,         # ""
        "lr_scheduler_num_cycles": None,  # ""
        "block_lr_zero_threshold": None,  # ""
        "network_weights": "",            # lora_network_weights ""
        "xformers": True,
        "LoRA_type": "Standard",
        "enable_bucket": False,
        "mem_eff_attn": True,
        "train_batch_size": 3,
        "network_alpha": 64.0,
    },
    EDG_LOCON: {
        "LoRA_type": "LoCon",             # "LyCORIS/LoCon"
        "conv_dim": 32,
        "conv_alpha": 1.0,
        "conv_block_dims": "",            # conv_dims ""
        "mixed_precision": "bf16",
        "save_precision": "bf16",
        "unet_lr": 0.0001,                # "0.0001"
    },
    DYLORA: {
        "seed": None,                     # ""
        "LoRA_type": "DyLoRA",            # "LyCORIS/DyLoRA"
        "clip_skip": 1,                   # "1"
        "learning_rate": 4e-07,
        "epoch": 150,
        "noise_offset_type": "Multires",
        "multires_noise_iterations": 6,
        "multires_noise_discount": 0.1,
        "max_grad_norm": 0.0,
        "caption_dropout_every_n_epochs": 0,  # 0.0
        "caption_dropout_rate": 0.1,
        "save_every_n_epochs": 15,
        "sample_every_n_steps": 25,
        "sample_prompts": "a painting of a gas mask , by darius kawasaki",
        "shuffle_caption": True,
        "keep_tokens": 1,
        "xformers": True,                 # "xformers"
        "logging_dir": "./test/logs",
        "output_name": "DyLoRA-Adafactor-toml",
        "pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5",
        "max_data_loader_n_workers": 0,   # "0"
        "optimizer": "Adafactor",
    },
    LOHA_SD15: {
        "LoRA_type": "LoHa",              # "LyCORIS/LoHa"
        "caption_extension": ".none-use-foldername",
        "gradient_accumulation_steps": 4,
        "min_snr_gamma": 10.0,
        "multires_noise_discount": 0.2,
        "network_alpha": 16.0,
        "conv_dim": 8,
        "conv_alpha": 4.0,
        "log_with": "tensorboard",        # "" = kohya's default
        "lr_scheduler_power": None,       # ""
    },
    SDXL_LOHA: {
        "stop_text_encoder_training": 0.0,  # stop_text_encoder_training_pct 0
        "lr_scheduler_num_cycles": 1,       # "1"
        "max_train_epochs": 100,            # "100"
        "max_resolution": "1024,1024",
        "train_batch_size": 8,
        "caption_dropout_rate": 0.05,
        "bucket_reso_steps": 32,
        "learning_rate": 0.001,
        "gradient_checkpointing": True,
    },
    SDXL_STANDARD: {
        "gradient_accumulation_steps": 1,  # "1"
        "max_train_epochs": 50,            # "50"
        "learning_rate": 3e-05,
        "xformers": True,                  # "xformers"
        "bucket_no_upscale": False,
    },
    SDXL_PRODIGY: {
        "max_token_length": 225,          # "225"
        "noise_offset": 0.0357,
        "keep_tokens": 2,
        "log_with": "wandb",
        "seed": 1337,                     # "1337"
        "optimizer": "Prodigy",
        "optimizer_args": "decouple=True weight_decay=0.45 d_coef=2 use_bias_correction=True safeguard_warmup=True",
        "learning_rate": 1.0,
        "lr_scheduler": "cosine_with_restarts",
        "network_dim": 256,
        "network_alpha": 256.0,
    },
}
# Seed settings a file carries with a value LoRA Loom refuses: reported, left at our default.
REFUSED_SEED_VALUES = {SDXL_PRODIGY: {"additional_parameters"}}


def fixture(name):
    path = FIXTURES / name
    assert path.is_file(), f"missing fixture {path} (shared/ must sit beside the checkout)"
    return path


def raw_config(name):
    return json.loads(fixture(name).read_text(encoding="utf-8"))


def seed_keys():
    with SEED_TSV.open(encoding="utf-8") as handle:
        return {row["key"] for row in csv.DictReader(handle, delimiter="\t")}


# ---------------------------------------------------------------- refusals


def test_the_flux_config_is_refused_with_a_clear_message():
    with pytest.raises(KohyaImportError) as caught:
        import_kohya_config(fixture(FLUX))
    message = str(caught.value)
    assert "Flux.1 model family is not supported; LoRA Loom trains SD1.x, SD2.x and SDXL" in message
    assert FLUX in message


@pytest.mark.parametrize("config, family", [
    ({"sd3_checkbox": True, "network_dim": 8}, "SD3"),
    ({"lumina_checkbox": "True"}, "Lumina"),
    ({"LoRA_type": "HunyuanImage-2.1"}, "HunyuanImage-2.1"),
    ({"anima_checkbox": True}, "Anima"),
])
def test_other_unsupported_families_are_refused(config, family):
    with pytest.raises(KohyaImportError, match=f"{family} model family is not supported"):
        import_kohya_config(config)


def test_a_family_checkbox_that_is_off_is_only_reported():
    result = import_kohya_config({"flux1_checkbox": False, "network_dim": 8})
    assert result.values == {"network_dim": 8}
    assert [(u.key, u.neutral) for u in result.unmapped] == [("flux1_checkbox", True)]


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_unreadable_files_are_refused_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(KohyaImportError, match=expected) as caught:
        import_kohya_config(path)
    assert "broken.json" in str(caught.value)
    with pytest.raises(KohyaImportError, match="no such file"):
        import_kohya_config(tmp_path / "absent.json")


# ---------------------------------------------------------------- the seven real configs


@pytest.mark.parametrize("name", IMPORTABLE)
def test_every_key_is_either_mapped_or_reported(name):
    config = raw_config(name)
    result = import_kohya_config(fixture(name))
    job_from_values(result.values)  # must not raise
    reported = [u.key for u in result.unmapped]
    assert len(reported) == len(set(reported)), "a key is reported twice"
    for key in config:
        mapped = RENAMED_KEYS.get(key, key) in result.values
        assert mapped != (key in reported), f"{key}: mapped={mapped}, reported={key in reported}"
    assert set(result.values) <= set(SETTINGS_BY_KEY)
    for item in result.unmapped:
        assert len(item.reason) > 20 and item.value == config[item.key]


@pytest.mark.parametrize("name", IMPORTABLE)
def test_every_seed_setting_the_file_carries_is_mapped(name):
    config = raw_config(name)
    file_key_of = {RENAMED_KEYS.get(key, key): key for key in config}
    carried = set(file_key_of) & seed_keys()
    assert len(carried) > 55
    refused = set(REFUSED_SEED_VALUES.get(name, ()))
    # a setting the trainer cannot honour yet is imported only at its default
    refused |= {k for k in carried if not SETTINGS_BY_KEY[k].implemented
                and k not in import_kohya_config({k: config[file_key_of[k]]}).values}
    values = import_kohya_config(config).values
    assert carried - refused <= set(values)
    assert not refused & set(values)


@pytest.mark.parametrize("name", IMPORTABLE)
def test_spot_values_are_converted_exactly(name):
    values = import_kohya_config(fixture(name)).values
    for key, expected in SPOT_VALUES[name].items():
        assert values[key] == expected, key
        assert type(values[key]) is type(expected), key


def test_sd_scripts_arguments_in_additional_parameters_are_reported_not_fatal():
    result = import_kohya_config(fixture(SDXL_PRODIGY))
    (item,) = [u for u in result.unmapped if u.key == "additional_parameters"]
    assert "--lr_scheduler_type" in item.reason and "--network_train_unet_only" in item.reason
    assert "left at the default ('')" in item.reason and not item.neutral
    assert any("epoch count (30)" in note for note in result.notes)


def test_sdxl_configs_import_with_a_note_and_sdxl_reported():
    result = import_kohya_config(fixture(SDXL_LOHA))
    by_key = {u.key: u for u in result.unmapped}
    assert by_key["sdxl"].neutral and "reads the model family from the checkpoint's weights" in by_key["sdxl"].reason
    assert by_key["sdxl_no_half_vae"].neutral and "fp32" in by_key["sdxl_no_half_vae"].reason
    assert "does not support yet" in by_key["scale_weight_norms"].reason
    assert not by_key["scale_weight_norms"].neutral  # 2.5 is a real choice that is lost
    assert by_key["full_bf16"].neutral and by_key["factor"].neutral  # False and kohya's -1
    assert any(note.startswith("this is an SDXL config") for note in result.notes)
    assert any("'LyCORIS/LoHa' was imported as 'LoHa'" in note for note in result.notes)


def test_report_groups_the_neutral_keys_on_one_line():
    # the keys of this file that are not settings (v2 and v_parameterization may be, as the schema grows)
    neutral = [k for k in ("training_comment", "v2", "v_parameterization") if k not in SETTINGS_BY_KEY]
    lines = report_lines(import_kohya_config(fixture(EDG_LORA)))
    assert lines == ["not imported, kohya_ss's off/default values (nothing lost): " + ", ".join(neutral)]


def test_a_value_the_trainer_cannot_honour_yet_is_reported_not_imported(monkeypatch):
    flip = SETTINGS_BY_KEY["flip_aug"]
    monkeypatch.setitem(SETTINGS_BY_KEY, "flip_aug", dataclasses.replace(flip, implemented=False))
    result = import_kohya_config({"flip_aug": True, "network_dim": 4})
    assert result.values == {"network_dim": 4}
    (item,) = result.unmapped
    assert item.key == "flip_aug" and "not implemented yet" in item.reason
    assert import_kohya_config({"flip_aug": False}).values == {"flip_aug": False}


# ---------------------------------------------------------------- odd values, old names, legacy flags


def test_a_refused_value_is_reported_and_left_at_the_default():
    result = import_kohya_config({"conv_dim": 0, "network_dim": "16", "mixed_precision": "fp8",
                                  "LoRA_type": "LyCORIS/LoKr", "unet_lr": "fast",
                                  "additional_parameters": "--max_grad_norm 5000"})
    assert result.values == {"network_dim": 16}
    reasons = {u.key: u.reason for u in result.unmapped}
    assert "from 1 to 512 (got 0)" in reasons["conv_dim"] and "left at the default (1)" in reasons["conv_dim"]
    assert "'fp8' is not one of no, fp16, bf16" in reasons["mixed_precision"]
    assert "'LyCORIS/LoKr'" in reasons["LoRA_type"] and "left at the default ('Standard')" in reasons["LoRA_type"]
    assert "expected a number, got 'fast'" in reasons["unet_lr"]
    assert "--max_grad_norm must be a number from 0 to 1000" in reasons["additional_parameters"]


def test_old_key_names_are_renamed_and_the_new_name_wins_when_both_are_there():
    result = import_kohya_config({"lora_network_weights": "old.safetensors", "conv_dims": "",
                                  "stop_text_encoder_training_pct": "20"})
    assert result.values == {"network_weights": "old.safetensors", "conv_block_dims": "",
                             "stop_text_encoder_training": 20.0}
    both = import_kohya_config({"lora_network_weights": "old.safetensors", "network_weights": "new.safetensors"})
    assert both.values == {"network_weights": "new.safetensors"}
    assert [u.key for u in both.unmapped] == ["lora_network_weights"]


@pytest.mark.parametrize("raw, expected", [
    (True, True), (False, False), ("xformers", True), ("sdpa", False), ("none", False)])
def test_xformers_accepts_the_old_bool_and_the_new_names(raw, expected):
    assert import_kohya_config({"xformers": raw}).values == {"xformers": expected}


def test_kohya_zero_means_blank_for_seed_and_epoch_cap_and_one_for_clip_skip():
    values = import_kohya_config({"seed": 0, "max_train_epochs": "0", "clip_skip": 0}).values
    assert values == {"seed": None, "max_train_epochs": None, "clip_skip": 1}


def test_legacy_flags_choose_the_optimizer_and_logger_only_without_newer_keys():
    assert import_kohya_config({"use_8bit_adam": True}).values == {"optimizer": "AdamW8bit"}
    assert import_kohya_config({"use_8bit_adam": False}).values == {"optimizer": "AdamW"}
    assert import_kohya_config({"use_wandb": True}).values == {"log_with": "wandb"}
    newer = import_kohya_config({"use_8bit_adam": True, "optimizer": "Lion"})
    assert newer.values == {"optimizer": "Lion"} and [u.key for u in newer.unmapped] == ["use_8bit_adam"]


def test_blank_unet_and_text_encoder_rates_become_the_learning_rate_and_survive_the_job_file(tmp_path):
    config = tmp_path / "blank-rates.json"
    config.write_text(json.dumps({"learning_rate": "0.0002", "unet_lr": "", "text_encoder_lr": ""}))
    result = import_kohya_to_toml(config, tmp_path / "job.toml")
    assert result.values == {"learning_rate": 0.0002, "unet_lr": 0.0002, "text_encoder_lr": 0.0002}
    job = load_job(tmp_path / "job.toml")
    assert (job.optimisation.unet_lr, job.optimisation.text_encoder_lr) == (0.0002, 0.0002)


def test_import_to_toml_writes_a_job_file_with_the_imported_values(tmp_path):
    result = import_kohya_to_toml(fixture(EDG_LOCON), tmp_path / "out" / "job.toml")
    job = load_job(tmp_path / "out" / "job.toml")
    assert job_to_values(job) == job_to_values(job_from_values(result.values))
    assert (job.network.LoRA_type, job.network.conv_dim, job.optimisation.seed, job.data.max_resolution) == ("LoCon", 32, 1234, "512,650")


# ---------------------------------------------------------------- export


# Blanks the export writes as kohya_ss's explicit equivalent (see export_kohya_config's docstring).
def blanks_made_explicit(values):
    out = dict(values)
    for key, explicit in {"lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1.0}.items():
        if out[key] is None:
            out[key] = explicit
    for key in ("unet_lr", "text_encoder_lr"):
        if out[key] is None:
            out[key] = out["learning_rate"]
    return out


@pytest.mark.parametrize("name", IMPORTABLE)
def test_export_then_import_gives_the_same_settings(name):
    values = import_kohya_config(fixture(name)).values
    exported = export_kohya_config(values)
    assert json.loads(json.dumps(exported)) == exported
    assert exported["LoRA_type"] == LORA_TYPE_TO_KOHYA[values["LoRA_type"]]
    again = import_kohya_config(exported)
    assert job_to_values(job_from_values(again.values)) == blanks_made_explicit(job_to_values(job_from_values(values)))
    assert export_kohya_config(again.values) == exported
    assert {u.key for u in again.unmapped} == {"max_train_steps", "lr_warmup_steps", "sdxl"}
    assert all(u.neutral for u in again.unmapped)


def test_export_writes_kohya_names_and_never_the_secret():
    exported = export_kohya_config({"LoRA_type": "LoCon", "xformers": False, "seed": None,
                                    "wandb_api_key": "secret-key", "text_encoder_lr": None,
                                    "learning_rate": 0.0003})
    assert exported["LoRA_type"] == "Kohya LoCon"
    assert exported["xformers"] == "sdpa"
    assert exported["seed"] == 0 and exported["max_train_epochs"] == 0  # kohya's "random" / "no cap"
    assert exported["text_encoder_lr"] == 0.0003
    assert exported["max_train_steps"] == 0  # else kohya_ss keeps its 1600-step default
    assert "secret-key" not in json.dumps(exported)
    assert list(exported) == sorted(exported)
    assert {LORA_TYPE_TO_KOHYA[t] for t in ("Standard", "LoHa", "DyLoRA")} == {
        "Standard", "LyCORIS/LoHa", "Kohya DyLoRA"}


def test_export_marks_sdxl_models_for_kohya_ss(demo_dir, sdxl_demo_dir, tmp_path):
    """kohya_ss chooses its SDXL trainer by the ``sdxl`` flag; the export reads the family from the model."""
    assert export_kohya_config({"pretrained_model_name_or_path": str(sdxl_demo_dir / "model.safetensors")})["sdxl"]
    assert export_kohya_config({"pretrained_model_name_or_path": str(sdxl_demo_dir / "model")})["sdxl"]
    assert not export_kohya_config({"pretrained_model_name_or_path": str(demo_dir / "model.safetensors")})["sdxl"]
    assert not export_kohya_config({"pretrained_model_name_or_path": str(tmp_path / "missing.safetensors")})["sdxl"]


def test_other_sdxl_options_are_reported_as_options_we_do_not_have():
    result = import_kohya_config({"sdxl_fused_backward_pass": True, "v2": True})
    assert result.values["v2"] is True  # v2 is one of our settings now
    reason = {u.key: u.reason for u in result.unmapped}["sdxl_fused_backward_pass"]
    assert reason.startswith("an SDXL option LoRA Loom does not have")
