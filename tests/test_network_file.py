"""The LoRA file: atomic save, sshs hashes, read back, and loading it with diffusers' own loader."""
import hashlib
import json
import re
import struct

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer

from trainer.network import NetworkConfig, apply_network, read_lora_file, save_lora_file, sshs_hashes

KOHYA_KEY = re.compile(r"^lora_(unet|te)_.*\.(lora_down\.weight|lora_up\.weight|alpha)$")


def small_tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "lora_unet_a.lora_down.weight": torch.randn(2, 8, generator=generator),
        "lora_unet_a.lora_up.weight": torch.randn(8, 2, generator=generator),
        "lora_unet_a.alpha": torch.tensor(1.0),
    }


def test_save_and_read_back(tmp_path):
    tensors = small_tensors()
    path = save_lora_file(tmp_path / "out" / "lora.safetensors", tensors, {"ss_network_dim": "2", "other": "x"})
    assert path == tmp_path / "out" / "lora.safetensors"
    loaded, metadata = read_lora_file(path)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert loaded["lora_unet_a.alpha"].dim() == 0
    assert metadata["ss_network_dim"] == "2" and metadata["other"] == "x"
    assert set(metadata) == {"ss_network_dim", "other", "sshs_model_hash", "sshs_legacy_hash"}
    assert [p.name for p in path.parent.iterdir()] == ["lora.safetensors"]


def test_sshs_hashes_follow_the_sd_scripts_recipe(tmp_path):
    """Hash worked independently: re-serialize with only ss_* metadata, parse the header length by hand."""
    tensors = small_tensors()
    metadata = {"ss_network_dim": "2", "modelspec.title": "not hashed"}
    path = save_lora_file(tmp_path / "lora.safetensors", tensors, metadata)
    _, written = read_lora_file(path)

    from safetensors.torch import save

    buffer = save(tensors, metadata={"ss_network_dim": "2"})
    header_length = int.from_bytes(buffer[:8], "little")
    assert written["sshs_model_hash"] == hashlib.sha256(buffer[8 + header_length:]).hexdigest()
    assert written["sshs_legacy_hash"] == hashlib.sha256(b"").hexdigest()[:8]  # file < 1 MiB: empty slice
    # The hash covers tensor data only, so metadata outside ss_* does not change it, tensor data does.
    assert sshs_hashes(tensors, {"ss_network_dim": "2", "other": "y"}) == sshs_hashes(tensors, {"ss_network_dim": "2"})
    changed = dict(tensors, **{"lora_unet_a.alpha": torch.tensor(2.0)})
    assert sshs_hashes(changed, {})["sshs_model_hash"] != written["sshs_model_hash"]


def test_legacy_hash_reads_the_second_mebibyte():
    tensors = {"big": torch.arange(600_000, dtype=torch.float32)}  # 2.4 MB of data
    from safetensors.torch import save

    buffer = save(tensors, metadata={})
    expected = hashlib.sha256(buffer[0x100000:0x110000]).hexdigest()[:8]
    assert sshs_hashes(tensors, {})["sshs_legacy_hash"] == expected
    assert len(buffer[0x100000:0x110000]) == 0x10000
    assert struct.unpack("<Q", buffer[:8])[0] < 200


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "lora.safetensors"
    save_lora_file(target, small_tensors(), {"ss_version": "old"})
    before = target.read_bytes()
    with pytest.raises(TypeError, match="ss_bad"):
        save_lora_file(target, small_tensors(), {"ss_bad": 3})
    with pytest.raises(TypeError, match="lora_unet_b"):
        save_lora_file(target, dict(small_tensors(), lora_unet_b=[1, 2]), {})
    # A failure after the data was written: the destination is a folder, so the rename fails.
    folder_target = tmp_path / "taken.safetensors"
    folder_target.mkdir()
    with pytest.raises(OSError):
        save_lora_file(folder_target, small_tensors(), {})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors", "taken.safetensors"]
    assert list(folder_target.iterdir()) == []


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_lora_file(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(ValueError, match="junk.safetensors"):
        read_lora_file(junk)


# --- acceptance: diffusers loads what we write -------------------------------------------------


def load_pipeline(model_dir):
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe):
    generator = torch.Generator().manual_seed(7)
    result = pipe("a red square", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np")
    return np.asarray(result.images[0])


def adapted_layers(model) -> int:
    return sum(1 for module in model.modules() if isinstance(module, BaseTunerLayer))


def perturb_up_weights(network, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in network.adapters:
            up = adapter.layer.lora_B["default"].weight
            up.copy_(torch.randn(up.shape, generator=generator) * 0.2)


def test_diffusers_loads_every_module_of_our_file(tiny_model_dir, tmp_path):
    trained = load_pipeline(tiny_model_dir)
    network = apply_network(trained.unet, [trained.text_encoder], NetworkConfig(dim=4, alpha=2.0))
    perturb_up_weights(network)
    path = save_lora_file(tmp_path / "lora.safetensors", network.kohya_state_dict(), network.metadata())
    ours_image = generate(trained)

    tensors, metadata = read_lora_file(path)
    assert all(KOHYA_KEY.match(key) for key in tensors)
    file_modules = {key.rsplit(".", 2)[0] if "weight" in key else key.rsplit(".", 1)[0] for key in tensors}
    unet_modules = {m for m in file_modules if m.startswith("lora_unet_")}
    te_modules = {m for m in file_modules if m.startswith("lora_te_")}
    assert len(unet_modules) == 72 and len(te_modules) == 12
    assert json.loads(metadata["ss_network_args"]) == {} and metadata["ss_network_dim"] == "4"

    pipe = load_pipeline(tiny_model_dir)
    plain_image = generate(pipe)
    pipe.load_lora_weights(str(path))
    assert adapted_layers(pipe.unet) == len(unet_modules)
    assert adapted_layers(pipe.text_encoder) == len(te_modules)
    lora_image = generate(pipe)
    assert np.abs(lora_image - plain_image).max() > 1e-3
    # diffusers applies the same scale (alpha / dim) as our adapters: same picture.
    assert np.allclose(lora_image, ours_image, atol=1e-4)


def perturbed_file(network, path, seed: int = 3):
    """The network's file with random lora_up weights (a fresh network's are zero), loaded back into it."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {key: torch.randn(t.shape, generator=generator) * 0.2 if key.endswith("lora_up.weight") else t
               for key, t in network.kohya_state_dict().items()}
    network.load_kohya_state_dict(tensors)
    return save_lora_file(path, tensors, network.metadata())


BLOCK_DIMS = tuple([2] * 6 + [0] * 6 + [4] + [3] * 12)
VARIANTS = {
    "locon": NetworkConfig(lora_type="LoCon", dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0),
    "dylora": NetworkConfig(lora_type="DyLoRA", dim=4, alpha=4.0, conv_dim=2, conv_alpha=2.0, unit=2),
    # One alpha for every block: diffusers 0.42 drops per-module alphas of some attention modules (its
    # alpha_pattern keys keep old processor names; peft warns "did not match"), so a file with block_alphas
    # that differ loads with the wrong scale there. Ranks may differ freely.
    "block_dims": NetworkConfig(lora_type="LoCon", dim=4, alpha=4.0, block_dims=BLOCK_DIMS,
                                block_alphas=tuple(1.5 for _ in BLOCK_DIMS), conv_dim=0),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_diffusers_loads_locon_dylora_and_per_block_ranks_exactly(variant, tiny_model_dir, tmp_path):
    """Every module placed (no key skipped), per-module rank and alpha honoured: diffusers' picture is ours."""
    ours = load_pipeline(tiny_model_dir)
    network = apply_network(ours.unet, [ours.text_encoder], VARIANTS[variant])
    path = perturbed_file(network, tmp_path / "lora.safetensors")
    ours.unet.eval(), ours.text_encoder.eval()
    ours_image = generate(ours)
    tensors, _ = read_lora_file(path)
    modules = {key.rsplit(".", 2)[0] if "weight" in key else key.rsplit(".", 1)[0] for key in tensors}
    if variant != "block_dims":
        assert any(tensors[f"{m}.lora_down.weight"].ndim == 4 and tensors[f"{m}.lora_down.weight"].shape[-1] == 3
                   for m in modules)  # 3×3 conv adapters are in the file
    else:
        ranks = {tensors[f"{m}.lora_down.weight"].shape[0] for m in modules if m.startswith("lora_unet_")}
        assert ranks == {2, 3, 4}

    pipe = load_pipeline(tiny_model_dir)
    plain = generate(pipe)
    pipe.load_lora_weights(str(path))
    assert adapted_layers(pipe.unet) + adapted_layers(pipe.text_encoder) == len(modules)
    loaded = generate(pipe)
    assert np.abs(loaded - plain).max() > 1e-3
    assert np.allclose(loaded, ours_image, atol=1e-4)
