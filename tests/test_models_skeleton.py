"""The UNet skeleton (meta device, config from a folder or a single file's header) has exactly the loaded
model's LoRA targets, so the plan's per-block LR groups are the run's."""
import pytest

from trainer.models.loading import load_base_model
from trainer.models.skeleton import unet_skeleton
from trainer.network.targets import unet_targets


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("source", ["model", "model.safetensors"])
def test_skeleton_has_the_loaded_models_targets(family, source, demo_dir, sd2_demo_dir, sdxl_demo_dir):
    demo = {"sd1": demo_dir, "sd2": sd2_demo_dir, "sdxl": sdxl_demo_dir}[family]
    skeleton, found_family = unet_skeleton(demo / source)
    assert found_family == family
    assert next(skeleton.parameters()).device.type == "meta"  # nothing was read or allocated
    loaded = load_base_model(demo / source).unet
    for conv in (False, True):
        assert [t.kohya_name for t in unet_targets(skeleton, conv)] == [t.kohya_name for t in unet_targets(loaded, conv)]


def test_no_skeleton_for_what_has_no_readable_layout(tmp_path, demo_dir):
    (tmp_path / "old.ckpt").write_bytes(b"")
    assert unet_skeleton(tmp_path / "old.ckpt") is None
    assert unet_skeleton(tmp_path / "missing.safetensors") is None
    assert unet_skeleton(demo_dir / "data") is None
