"""kohya_ss configs of the LyCORIS types and the regularizers: imported with every option, or refused as a whole
(nothing written) when LoRA Loom cannot train what they ask. Fixtures: tests/fixtures/kohya/*.json."""
import json
from pathlib import Path

import pytest

from trainer.kohya import KohyaImportError, export_kohya_config, import_kohya_config, import_kohya_to_toml
from trainer.network.from_job import network_config_from_job
from trainer.spec import job_from_values
from trainer.spec.checks import check_settings
from trainer.spec.catalog import SETTINGS

FIXTURES = Path(__file__).parent / "fixtures" / "kohya"

# file → settings it must import with exactly these values (read off the files by hand)
EXPECTED = {
    "lokr-sd15.json": {"LoRA_type": "LyCORIS/LoKr", "network_dim": 100000, "conv_dim": 100000, "factor": 6,
                       "use_cp": True, "decompose_both": True, "rank_dropout_scale": True, "train_norm": True,
                       "dora_wd": True, "scale_weight_norms": 1.0, "network_dropout": 0.1, "rank_dropout": 0.1,
                       "module_dropout": 0.1},
    "ia3-sd15.json": {"LoRA_type": "LyCORIS/iA3", "train_on_input": False, "LyCORIS_preset": "attn-mlp"},
    "glora-sd15.json": {"LoRA_type": "LyCORIS/GLoRA", "network_dim": 16, "conv_dim": 8, "use_tucker": True,
                        "module_dropout": 0.05},
    "boft-sd15.json": {"LoRA_type": "LyCORIS/BOFT", "constrain": 0.0001, "rescaled": True, "network_dim": 16},
    "diag-oft-sd15.json": {"LoRA_type": "LyCORIS/Diag-OFT", "network_dim": 100000, "conv_dim": 0,
                           "constrain": 0.0005, "rescaled": True, "LyCORIS_preset": "unet-transformer-only"},
    "native-ft-sd15.json": {"LoRA_type": "LyCORIS/Native Fine-Tuning", "train_norm": True, "text_encoder_lr": 0.0},
    "locon-dora-sd15.json": {"LoRA_type": "LoCon", "dora_wd": True, "use_scalar": True, "bypass_mode": True,
                             "scale_weight_norms": 2.5},
    "kohya-lokr-sdxl.json": {"LoRA_type": "Kohya LoKr", "network_dim": 48, "network_alpha": 24.0, "factor": 8,
                             "conv_dim": 1},
    "lora-fa-sd15.json": {"LoRA_type": "LoRA-FA", "network_dim": 48, "network_alpha": 24.0},
}
NETWORK_KEYS = {s.key for s in SETTINGS if s.group == "network"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_lycoris_config_imports_every_option_and_forms_a_valid_job(name):
    result = import_kohya_config(FIXTURES / name)
    for key, value in EXPECTED[name].items():
        assert result.values[key] == value and type(result.values[key]) is type(value), key
    lost = [u.key for u in result.unmapped if not u.neutral]
    assert not set(lost) & NETWORK_KEYS, lost
    job = job_from_values(result.values)
    assert not [p for p in check_settings(job, SETTINGS) if p.level == "error"]


def test_the_options_reach_the_network_as_kohya_ss_sends_them():
    lokr = network_config_from_job(job_from_values(import_kohya_config(FIXTURES / "lokr-sd15.json").values))
    assert (lokr.algo, lokr.factor, lokr.use_tucker, lokr.decompose_both, lokr.dim) == ("lokr", 6, True, True, 100000)
    assert (lokr.network_dropout, lokr.rank_dropout, lokr.module_dropout, lokr.scale_weight_norms) == (0.1, 0.1, 0.1, 1.0)
    ia3 = network_config_from_job(job_from_values(import_kohya_config(FIXTURES / "ia3-sd15.json").values))
    assert (ia3.algo, ia3.train_on_input, ia3.preset) == ("ia3", False, "attn-mlp")
    # kohya_ss sends use_cp for LyCORIS/LoKr only: on another type it changes nothing
    values = {**import_kohya_config(FIXTURES / "sd15-standard.json").values, "use_cp": True, "factor": 4}
    standard = network_config_from_job(job_from_values(values))
    assert (standard.algo, standard.use_tucker, standard.factor) == (None, False, -1)


def test_the_kohya_types_reach_the_network_as_kohya_ss_sends_them():
    lokr = network_config_from_job(job_from_values(import_kohya_config(FIXTURES / "kohya-lokr-sdxl.json").values),
                                   family="sdxl")
    assert (lokr.lora_type, lokr.algo, lokr.factor, lokr.dim, lokr.conv_dim) == ("Kohya LoKr", "lokr", 8, 48, 1)
    assert not any("SDXL only" in note for note in import_kohya_config(FIXTURES / "kohya-lokr-sdxl.json").notes)
    config = {**json.loads((FIXTURES / "kohya-lokr-sdxl.json").read_text()), "sdxl": False}
    assert any("SDXL only" in note for note in import_kohya_config(config).notes)
    fa = network_config_from_job(job_from_values(import_kohya_config(FIXTURES / "lora-fa-sd15.json").values))
    assert (fa.lora_type, fa.algo, fa.dim, fa.alpha) == ("LoRA-FA", None, 48, 24.0)


def test_a_type_lora_loom_does_not_train_is_refused_and_nothing_is_written(tmp_path):
    config = {**json.loads((FIXTURES / "lora-fa-sd15.json").read_text()), "LoRA_type": "Kohya SuperLoRA"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(KohyaImportError) as error:
        import_kohya_to_toml(tmp_path / "config.json", tmp_path / "job.toml")
    assert "LoRA_type" in str(error.value) and "not a type LoRA Loom trains" in str(error.value)
    assert not (tmp_path / "job.toml").exists()


@pytest.mark.parametrize("change, blamed", [({"network_dim": 100000}, "network_dim"),
                                            ({"rank_dropout": 1.5}, "rank_dropout"),
                                            ({"LyCORIS_preset": "no-such-preset"}, "LyCORIS_preset")])
def test_a_network_value_that_cannot_be_honoured_refuses_the_import(change, blamed, tmp_path):
    config = {**json.loads((FIXTURES / "locon-dora-sd15.json").read_text()), **change}
    with pytest.raises(KohyaImportError) as error:
        import_kohya_config(config)
    assert blamed in str(error.value)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_export_then_import_keeps_the_type_and_its_options(name):
    values = import_kohya_config(FIXTURES / name).values
    exported = export_kohya_config(values)
    assert exported["LoRA_type"] == json.loads((FIXTURES / name).read_text())["LoRA_type"]
    again = import_kohya_config(exported).values
    assert {k: again[k] for k in EXPECTED[name]} == EXPECTED[name]
