"""kohya_ss config import and export, on LoRA Loom's own kohya_ss-format configs in tests/fixtures/kohya and,
when the shared/ folder is beside the checkout, on the real kohya_ss presets in shared/fixtures/kohya_presets."""
import csv
import dataclasses
import json
from pathlib import Path

import pytest

from trainer.kohya import (
    LORA_TYPE_FROM_KOHYA,
    LORA_TYPE_TO_KOHYA,
    RENAMED_KEYS,
    KohyaImportError,
    export_kohya_config,
    import_kohya_config,
    import_kohya_to_toml,
    refused_family,
    report_lines,
)
from trainer.spec import SETTINGS_BY_KEY, job_from_values, job_to_values, load_job

from .shared_refs import shared_path

OWN_FIXTURES = Path(__file__).parent / "fixtures" / "kohya"
SHARED = "shared:"  # names with this prefix are real kohya_ss presets in shared/fixtures/kohya_presets

# Our own configs (see tests/fixtures/kohya/README.md).
SD15 = "sd15-standard.json"
SD2_LOCON = "sd2-locon.json"
LOHA = "loha-sd15.json"
DYLORA = "dylora-sd15.json"
SDXL_LOHA = "sdxl-loha.json"
SDXL_PRODIGY = "sdxl-prodigy.json"
OLD_GUI = "locon-old-gui.json"
FLUX = "flux1-dev.json"
OWN_IMPORTABLE = [SD15, SD2_LOCON, LOHA, DYLORA, SDXL_LOHA, SDXL_PRODIGY, OLD_GUI]

# The real kohya_ss presets in shared/.
EDG_LORA = SHARED + "sd15 - EDG_LoraOptiSettings.json"
EDG_LOCON = SHARED + "sd15 - EDG_LoConOptiSettings.json"
SHARED_DYLORA = SHARED + "DyLoRA-Adafactor-toml.json"
SHARED_LOHA = SHARED + "loha-sd15.json"
SHARED_SDXL_LOHA = SHARED + "SDXL - LoHA AI_Characters v1.0.json"
SHARED_SDXL_STANDARD = SHARED + "SDXL - LoRA AI_characters standard v1.1.json"
SHARED_SDXL_PRODIGY = SHARED + "SDXL - LoRA kudou-reira prodigy v4.0.json"
SHARED_FLUX = SHARED + "flux1D - adamw8bit fp8.json"
SHARED_IMPORTABLE = [EDG_LORA, EDG_LOCON, SHARED_DYLORA, SHARED_LOHA, SHARED_SDXL_LOHA, SHARED_SDXL_STANDARD,
                     SHARED_SDXL_PRODIGY]


def on_both(own, shared):
    """Test parameters: our cases, then the shared files' cases, marked ``shared`` (they skip without shared/)."""
    def marked(case):
        return pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=pytest.mark.shared)
    return [*own, *map(marked, shared)]


IMPORTABLE = on_both(OWN_IMPORTABLE, SHARED_IMPORTABLE)

# Spot values, read off each file by hand: file value → what LoRA Loom must hold.
SPOT_VALUES = {
    SD15: {
        "learning_rate": 0.0002,          # "0.0002"
        "unet_lr": 0.0002,                # "0.0002"
        "text_encoder_lr": 0.0001,        # "0.0001"
        "seed": 4242,                     # "4242"
        "noise_offset": 0.03,             # "0.03"
        "clip_skip": 2,
        "max_resolution": "512,768",
        "bucket_reso_steps": 64,          # 64.0
        "gradient_accumulation_steps": 2,  # 2.0
        "keep_tokens": 1,                 # "1"
        "max_token_length": 150,          # "150"
        "max_data_loader_n_workers": 2,   # "2"
        "lr_warmup": 5.0,                 # "5"
        "train_batch_size": 2,            # "2"
        "network_dim": 48,
        "network_alpha": 24.0,
        "min_snr_gamma": 5.0,             # 5
        "max_train_epochs": None,         # ""
        "lr_scheduler_num_cycles": None,  # ""
        "lr_scheduler_power": None,       # ""
        "block_lr_zero_threshold": None,  # ""
        "network_weights": "",
        "xformers": True,
        "flip_aug": True,
        "optimizer": "AdamW8bit",         # the optimizer key wins over the old use_8bit_adam
        "optimizer_args": "weight_decay=0.05",
        "sample_sampler": "dpmsolver++",
        "log_with": "tensorboard",        # "" = kohya's default
        "output_name": "tabby-cat-v3",
        "pretrained_model_name_or_path": "C:/sd/models/Stable-diffusion/v1-5-pruned-emaonly.safetensors",
    },
    SD2_LOCON: {
        "LoRA_type": "LoCon",             # "LyCORIS/LoCon"
        "v2": True,
        "v_parameterization": True,
        "max_resolution": "768,768",
        "conv_dim": 16,
        "conv_alpha": 8.0,                # "8"
        "conv_block_dims": "",
        "network_alpha": 16.0,            # 16
        "mixed_precision": "bf16",
        "save_precision": "bf16",
        "optimizer": "Lion",
        "learning_rate": 3e-05,           # "0.00003"
        "text_encoder_lr": 1.5e-05,       # "0.000015"
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 3,     # "3"
        "max_train_epochs": 16,           # "16"
        "seed": 31337,                    # "31337"
        "caption_extension": ".caption",
        "caption_dropout_rate": 0.02,
        "persistent_data_loader_workers": True,
        "xformers": True,                 # "xformers"
    },
    LOHA: {
        "LoRA_type": "LoHa",              # "LyCORIS/LoHa"
        "clip_skip": 2,                   # "2"
        "network_dim": 32,
        "network_alpha": 8.0,             # 8
        "conv_dim": 4,
        "conv_alpha": 2.0,                # 2
        "conv_block_dims": "",            # conv_dims ""
        "conv_block_alphas": "",          # conv_alphas ""
        "network_weights": "",            # lora_network_weights ""
        "lr_scheduler": "polynomial",
        "lr_scheduler_power": None,       # ""
        "seed": None,                     # ""
        "keep_tokens": 1,                 # "1"
        "multires_noise_iterations": 6,
        "multires_noise_discount": 0.25,
        "gradient_accumulation_steps": 2,
        "caption_dropout_every_n_epochs": 0,  # 0.0
        "log_with": "tensorboard",        # ""
        "max_resolution": "576,576",
        "xformers": True,
    },
    DYLORA: {
        "LoRA_type": "DyLoRA",            # "LyCORIS/DyLoRA"
        "unit": 8,
        "network_dim": 64,
        "seed": None,                     # ""
        "clip_skip": 1,                   # "1"
        "optimizer": "Adafactor",
        "optimizer_args": "scale_parameter=False relative_step=False warmup_init=False",
        "lr_scheduler": "adafactor",
        "learning_rate": 3e-06,
        "text_encoder_lr": 1.5e-06,
        "multires_noise_discount": 0.25,  # "0.25"
        "max_grad_norm": 0.0,
        "caption_dropout_every_n_epochs": 0,  # 0.0
        "stop_text_encoder_training": 25.0,  # stop_text_encoder_training_pct "25"
        "xformers": True,                 # "xformers"
        "pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5",
        "min_bucket_reso": 320,
        "max_data_loader_n_workers": 0,   # "0"
        "sample_every_n_steps": 50,
        "sample_prompts": "an ink drawing of a lighthouse in a storm, by the test suite",
        "logging_dir": "./runs/logs",
        "max_train_epochs": None,         # ""
    },
    SDXL_LOHA: {
        "LoRA_type": "LoHa",
        "max_resolution": "1024,1024",
        "bucket_reso_steps": 32,
        "min_bucket_reso": 512,
        "max_bucket_reso": 2048,
        "lr_scheduler_num_cycles": 2,     # "2"
        "max_train_epochs": 40,           # "40"
        "stop_text_encoder_training": 0.0,  # stop_text_encoder_training_pct 0
        "text_encoder_lr": 0.0,
        "learning_rate": 0.0005,
        "train_batch_size": 4,
        "gradient_checkpointing": True,
        "seed": 77,                       # "77"
        "mixed_precision": "bf16",
    },
    SDXL_PRODIGY: {
        "max_token_length": 225,          # "225"
        "noise_offset": 0.0411,
        "keep_tokens": 1,
        "log_with": "wandb",
        "seed": 2024,                     # "2024"
        "optimizer": "Prodigy",
        "optimizer_args": "decouple=True weight_decay=0.1 d_coef=1.5 use_bias_correction=True safeguard_warmup=True",
        "learning_rate": 1.0,
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": None,  # ""
        "network_dim": 128,
        "network_alpha": 64.0,
        "xformers": False,                # "sdpa"
        "gradient_accumulation_steps": 1,  # "1"
    },
    OLD_GUI: {
        "LoRA_type": "LoCon",             # the legacy "LoCon"
        "optimizer": "AdamW8bit",         # use_8bit_adam true, no optimizer key
        "log_with": "wandb",              # use_wandb true, no log_with key
        "network_weights": "C:/lora/start-from.safetensors",  # lora_network_weights
        "conv_block_dims": "",            # conv_dims
        "stop_text_encoder_training": 10.0,  # stop_text_encoder_training_pct "10"
        "noise_offset": 0.0,              # "" for a setting that cannot be blank: the default
        "learning_rate": 0.0001,          # "0.0001"
        "text_encoder_lr": 5e-05,         # "5e-05"
        "seed": 99,                       # "99"
        "bucket_reso_steps": 64,          # 64.0
        "gradient_accumulation_steps": 1,  # 1.0
        "lr_warmup": 0.0,                 # "0"
        "mem_eff_attn": True,
        "conv_dim": 8,
    },
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
    SHARED_DYLORA: {
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
    SHARED_LOHA: {
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
    SHARED_SDXL_LOHA: {
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
    SHARED_SDXL_STANDARD: {
        "gradient_accumulation_steps": 1,  # "1"
        "max_train_epochs": 50,            # "50"
        "learning_rate": 3e-05,
        "xformers": True,                  # "xformers"
        "bucket_no_upscale": False,
    },
    SHARED_SDXL_PRODIGY: {
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
# Settings a file carries with a value LoRA Loom refuses: reported, left at our default.
REFUSED_VALUES: dict[str, set[str]] = {}


def kohya_file(name):
    """The path of one of our configs, or of a shared one ("shared:NAME"; the test skips without shared/)."""
    if name.startswith(SHARED):
        return shared_path("fixtures", "kohya_presets", name.removeprefix(SHARED))
    path = OWN_FIXTURES / name
    assert path.is_file(), f"missing fixture {path}"
    return path


def raw_config(name):
    return json.loads(kohya_file(name).read_text(encoding="utf-8"))


def seed_keys():
    with shared_path("reference", "seed-settings.tsv").open(encoding="utf-8") as handle:
        return {row["key"] for row in csv.DictReader(handle, delimiter="\t")}


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", on_both([FLUX], [SHARED_FLUX]))
def test_the_flux_config_is_refused_with_a_clear_message(name):
    path = kohya_file(name)
    with pytest.raises(KohyaImportError) as caught:
        import_kohya_config(path)
    message = str(caught.value)
    assert "Flux.1 model family is not supported; LoRA Loom trains SD1.x, SD2.x and SDXL" in message
    assert path.name in message


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


# ---------------------------------------------------------------- whole configs


def test_our_fixtures_cover_what_kohya_ss_files_hold():
    """The kinds of value and file the importer must handle are all in tests/fixtures/kohya."""
    configs = {name: raw_config(name) for name in OWN_IMPORTABLE}
    values = [v for config in configs.values() for v in config.values()]
    assert any(isinstance(v, str) and v.replace(".", "", 1).isdigit() for v in values), "numbers as strings"
    assert any(isinstance(v, float) and v.is_integer() and v > 1 for v in values), "floats for whole numbers"
    assert {"LyCORIS/LoCon", "LyCORIS/LoHa", "LyCORIS/DyLoRA", "Standard", "LoCon"} <= {
        c["LoRA_type"] for c in configs.values()}
    assert set(RENAMED_KEYS) <= {key for config in configs.values() for key in config}, "every old key name"
    assert sum(c.get("sdxl") is True for c in configs.values()) >= 2
    for blank in ("seed", "max_train_epochs", "lr_scheduler_num_cycles", "lr_scheduler_power",
                  "block_lr_zero_threshold"):
        assert any(c.get(blank) == "" for c in configs.values()), f"a blank {blank}"
    assert max(len(c) for c in configs.values()) > 150, "a file from a recent kohya_ss with its full key set"
    assert raw_config(FLUX)["flux1_checkbox"] is True


def legacy_flags_applied(result):
    """The old flags (use_8bit_adam, use_wandb) the import turned into settings, read off its notes."""
    return {note.split("=")[0].removeprefix("the old flag ") for note in result.notes
            if note.startswith("the old flag ")}


@pytest.mark.parametrize("name", IMPORTABLE)
def test_every_key_is_either_mapped_or_reported(name):
    config = raw_config(name)
    result = import_kohya_config(kohya_file(name))
    job_from_values(result.values)  # must not raise
    reported = [u.key for u in result.unmapped]
    assert len(reported) == len(set(reported)), "a key is reported twice"
    applied = legacy_flags_applied(result)
    for key in config:
        mapped = RENAMED_KEYS.get(key, key) in result.values or key in applied
        assert mapped != (key in reported), f"{key}: mapped={mapped}, reported={key in reported}"
    assert set(result.values) <= set(SETTINGS_BY_KEY)
    for item in result.unmapped:
        assert len(item.reason) > 20 and item.value == config[item.key]


def carried_settings(name, ours):
    """(settings among ``ours`` the file carries, those of them it carries with a value we refuse)."""
    config = raw_config(name)
    file_key_of = {RENAMED_KEYS.get(key, key): key for key in config}
    carried = set(file_key_of) & ours
    refused = set(REFUSED_VALUES.get(name, ()))
    # a setting the trainer cannot honour yet is imported only at its default
    refused |= {k for k in carried if not SETTINGS_BY_KEY[k].implemented
                and k not in import_kohya_config({k: config[file_key_of[k]]}).values}
    return carried, refused


@pytest.mark.parametrize("name", IMPORTABLE)
def test_every_setting_the_file_carries_is_imported(name):
    carried, refused = carried_settings(name, set(SETTINGS_BY_KEY))
    assert len(carried) > 55
    values = import_kohya_config(kohya_file(name)).values
    assert carried - refused <= set(values)
    assert not refused & set(values)


@pytest.mark.shared
@pytest.mark.parametrize("name", IMPORTABLE)
def test_every_seed_setting_the_file_carries_is_mapped(name):
    carried, refused = carried_settings(name, seed_keys())
    assert len(carried) > 55
    values = import_kohya_config(kohya_file(name)).values
    assert carried - refused <= set(values)
    assert not refused & set(values)


@pytest.mark.parametrize("name", IMPORTABLE)
def test_spot_values_are_converted_exactly(name):
    values = import_kohya_config(kohya_file(name)).values
    for key, expected in SPOT_VALUES[name].items():
        assert values[key] == expected, key
        assert type(values[key]) is type(expected), key


@pytest.mark.parametrize("name, epochs", on_both([(SDXL_PRODIGY, 24)], [(SHARED_SDXL_PRODIGY, 30)]))
def test_sd_scripts_arguments_in_additional_parameters_are_taken(name, epochs):
    result = import_kohya_config(kohya_file(name))
    assert "additional_parameters" not in {u.key for u in result.unmapped}
    job = job_from_values(result.values)
    assert job.optimisation.text_encoder_lr == 0  # --network_train_unet_only
    assert job.optimisation.lr_scheduler_type == "CosineAnnealingLR"
    assert job.optimisation.lr_scheduler_args.startswith("T_max=")
    assert any(f"epoch count ({epochs})" in note for note in result.notes)


@pytest.mark.parametrize("name", on_both([SDXL_LOHA], [SHARED_SDXL_LOHA]))
def test_sdxl_configs_import_with_a_note_and_sdxl_reported(name):
    result = import_kohya_config(kohya_file(name))
    by_key = {u.key: u for u in result.unmapped}
    assert by_key["sdxl"].neutral and "reads the model family from the checkpoint's weights" in by_key["sdxl"].reason
    assert by_key["sdxl_no_half_vae"].neutral and "fp32" in by_key["sdxl_no_half_vae"].reason
    assert result.values["scale_weight_norms"] in (1.5, 2.5)  # a real choice, imported (LyCORIS max-norm)
    assert result.values["factor"] == -1  # kohya's -1 (automatic)
    assert import_kohya_config(kohya_file(name)).values["full_bf16"] is False  # a setting now
    assert any(note.startswith("this is an SDXL config") for note in result.notes)
    assert any("'LyCORIS/LoHa' was imported as 'LoHa'" in note for note in result.notes)


def test_sdpa_attention_is_imported_as_xformers_off_with_a_note():
    result = import_kohya_config(kohya_file(SDXL_PRODIGY))
    assert result.values["xformers"] is False
    assert "xformers 'sdpa' was imported as off (PyTorch attention)" in result.notes


def test_a_hub_model_id_gets_a_note_that_nothing_is_downloaded():
    notes = import_kohya_config(kohya_file(DYLORA)).notes
    assert any("'runwayml/stable-diffusion-v1-5' looks like a Hugging Face id" in note for note in notes)


@pytest.mark.parametrize("name, neutral", on_both(
    [(OLD_GUI, ["save_model_as", "training_comment"])],
    [(EDG_LORA, ["training_comment", "v2", "v_parameterization"])]))
def test_report_groups_the_neutral_keys_on_one_line(name, neutral):
    # only the keys of the file that are not settings (v2 and v_parameterization may be, as the schema grows)
    neutral = [k for k in neutral if k not in SETTINGS_BY_KEY]
    result = import_kohya_config(kohya_file(name))
    lines = report_lines(result)
    grouped = ["not imported, kohya_ss's off/default values (nothing lost): " + ", ".join(neutral)] if neutral else []
    assert lines == [*grouped, *(f"note: {note}" for note in result.notes)]


def test_report_names_what_is_lost_first_then_the_neutral_keys():
    lines = report_lines(import_kohya_config(kohya_file(SD15)))
    assert lines[0].startswith("not imported: use_8bit_adam = True: an old kohya_ss flag")
    assert lines[1].startswith("not imported, kohya_ss's off/default values (nothing lost): async_upload, ")
    assert len(lines) == 2


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
    # (a refused value of the network's settings refuses the whole import: test_kohya_lycoris_import.py)
    result = import_kohya_config({"network_dim": "16", "mixed_precision": "fp8", "unet_lr": "fast",
                                  "additional_parameters": "--max_grad_norm 5000"})
    assert result.values == {"network_dim": 16}
    reasons = {u.key: u.reason for u in result.unmapped}
    assert "'fp8' is not one of no, fp16, bf16" in reasons["mixed_precision"]
    assert "left at the default ('fp16')" in reasons["mixed_precision"]
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


@pytest.mark.parametrize("name, expected", on_both([(SD2_LOCON, ("LoCon", 16, 31337, "768,768"))],
                                                  [(EDG_LOCON, ("LoCon", 32, 1234, "512,650"))]))
def test_import_to_toml_writes_a_job_file_with_the_imported_values(tmp_path, name, expected):
    result = import_kohya_to_toml(kohya_file(name), tmp_path / "out" / "job.toml")
    job = load_job(tmp_path / "out" / "job.toml")
    assert job_to_values(job) == job_to_values(job_from_values(result.values))
    assert (job.network.LoRA_type, job.network.conv_dim, job.optimisation.seed, job.data.max_resolution) == expected


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
    values = import_kohya_config(kohya_file(name)).values
    exported = export_kohya_config(values)
    assert json.loads(json.dumps(exported)) == exported
    assert exported["LoRA_type"] == LORA_TYPE_TO_KOHYA[values["LoRA_type"]]
    again = import_kohya_config(exported)
    assert job_to_values(job_from_values(again.values)) == blanks_made_explicit(job_to_values(job_from_values(values)))
    assert export_kohya_config(again.values) == exported
    assert {u.key for u in again.unmapped} == {"sdxl"}
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


@pytest.mark.shared
def test_every_sd_family_kohya_preset_imports_with_nothing_lost():
    """All of kohya_ss's presets in shared/ (issue 14): each SD-family one imports, every key it holds that is not
    a setting is kohya_ss's off/default value (nothing training-relevant lost), and the job it makes is valid;
    the Flux one stays refused."""
    folder = shared_path("fixtures", "kohya_presets")
    presets = sorted(folder.glob("*.json"))
    assert len(presets) >= 8
    imported = 0
    for preset in presets:
        config = json.loads(preset.read_text(encoding="utf-8"))
        if refused_family(config):
            with pytest.raises(KohyaImportError):
                import_kohya_config(preset)
            continue
        result = import_kohya_config(preset)
        lost = [(u.key, u.value) for u in result.unmapped if not u.neutral]
        assert not lost, f"{preset.name}: {lost}"
        job = job_from_values(result.values)
        assert job.network.LoRA_type == LORA_TYPE_FROM_KOHYA[config.get("LoRA_type", "Standard")], preset.name
        imported += 1
    assert imported == len(presets) - 1  # the Flux preset is the one refused
