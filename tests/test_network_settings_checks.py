"""Bad values of the LyCORIS options and regularizers are refused naming the setting (validate and the page
use the same checks); settings a type ignores get a warning."""
import pytest

from trainer.spec import JobError, job_from_values
from trainer.spec.catalog import SETTINGS
from trainer.spec.checks import check_settings


@pytest.mark.parametrize("bad, key", [
    ({"factor": 100}, "factor"), ({"rank_dropout": 1.5}, "rank_dropout"), ({"module_dropout": -0.1}, "module_dropout"),
    ({"network_dropout": 2}, "network_dropout"), ({"scale_weight_norms": 11}, "scale_weight_norms"),
    ({"constrain": -1}, "constrain"), ({"network_dim": 100001}, "network_dim"), ({"conv_dim": -1}, "conv_dim"),
])
def test_out_of_range_values_are_refused_naming_the_setting(bad, key):
    with pytest.raises(JobError) as caught:
        job_from_values(bad)
    assert [p.setting for p in caught.value.problems] == [key]


@pytest.mark.parametrize("values, key, level", [
    ({"LoRA_type": "LoCon", "network_dim": 2048}, "network_dim", "error"),
    ({"LoRA_type": "LoHa", "conv_dim": 100000}, "conv_dim", "error"),
    ({"LoRA_type": "DyLoRA", "scale_weight_norms": 1.0}, "scale_weight_norms", "error"),
    ({"LoRA_type": "DyLoRA", "rank_dropout": 0.1}, "rank_dropout", "error"),
    ({"LoRA_type": "LyCORIS/LoKr", "LyCORIS_preset": "everything"}, "LyCORIS_preset", "error"),
    ({"LoRA_type": "LyCORIS/iA3", "block_dims": ",".join(["4"] * 25)}, "block_dims", "warning"),
    ({"LoRA_type": "LyCORIS/GLoRA", "down_lr_weight": "sine"}, "down_lr_weight", "warning"),
    ({"LoRA_type": "Standard", "use_cp": True}, "use_cp", "warning"),
    ({"LoRA_type": "LyCORIS/iA3", "module_dropout": 0.1}, "module_dropout", "warning"),
    ({"LoRA_type": "LyCORIS/GLoRA", "scale_weight_norms": 1.0}, "scale_weight_norms", "warning"),
])
def test_cross_setting_faults_name_the_setting(values, key, level):
    problems = [p for p in check_settings(job_from_values(values), SETTINGS) if p.setting == key]
    assert problems and problems[0].level == level, problems


def test_full_rank_is_allowed_where_lycoris_means_it():
    for lora_type in ("LyCORIS/LoKr", "LyCORIS/BOFT", "LyCORIS/Diag-OFT"):
        job = job_from_values({"LoRA_type": lora_type, "network_dim": 100000, "conv_dim": 100000})
        assert not [p for p in check_settings(job, SETTINGS) if p.level == "error"]
