"""How a LoRA names the base model it was trained on: sd-scripts' version strings and the SAI model spec."""
import hashlib

import pytest

from trainer.saving import base_model_version, file_hashes, modelspec_architecture, modelspec_implementation


@pytest.mark.parametrize("family, v, version, architecture", [
    ("sd1", False, "sd_v1", "stable-diffusion-v1/lora"),
    ("sd2", False, "sd_v2", "stable-diffusion-v2-512/lora"),
    ("sd2", True, "sd_v2_v", "stable-diffusion-v2-768-v/lora"),
    ("sdxl", False, "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
])
def test_version_and_architecture(family, v, version, architecture):
    assert base_model_version(family, v) == version
    assert modelspec_architecture(family, v) == architecture
    sgm = "https://github.com/Stability-AI/generative-models"  # sd-scripts' word for SDXL LoRAs
    assert modelspec_implementation(family) == (sgm if family == "sdxl" else "diffusers")


def test_file_hashes_of_a_file_and_none_for_a_folder(tmp_path):
    data = bytes(range(256)) * 8192  # 2 MiB: the legacy window (64 KiB at 1 MiB) lies inside
    (tmp_path / "m.safetensors").write_bytes(data)
    hashes = file_hashes(str(tmp_path / "m.safetensors"), "sd_model")
    assert hashes == {"ss_sd_model_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8],
                      "ss_new_sd_model_hash": hashlib.sha256(data).hexdigest()}
    assert file_hashes(str(tmp_path), "vae") == {}
