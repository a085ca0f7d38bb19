"""Single files are read tensor by tensor into the model: each tensor once, none kept by the reader."""
from __future__ import annotations

import collections

import pytest
import torch
from safetensors.torch import load_file

from trainer.models.errors import ModelLoadError
from trainer.models.streamed_file import StreamedTensors


def test_streamed_tensors_equal_the_file_and_shapes_read_nothing(demo_dir):
    path = demo_dir / "model.safetensors"
    streamed, whole = StreamedTensors(path), load_file(str(path))
    assert sorted(streamed) == sorted(whole) and len(streamed) == len(whole)
    for name, tensor in whole.items():
        assert torch.equal(streamed[name], tensor) and streamed[name].dtype == tensor.dtype
    shapes = streamed.shapes()
    assert all(shapes[n].device.type == "meta" and shapes[n].shape == whole[n].shape for n in whole)


def test_the_loader_reads_each_tensor_once_and_the_model_takes_it_as_read(demo_dir, monkeypatch):
    from trainer.models import loading

    reads: collections.Counter = collections.Counter()
    taken: list[int] = []
    original = StreamedTensors.__getitem__

    def counting(self, name):
        reads[name] += 1
        tensor = original(self, name)
        taken.append(tensor.untyped_storage().data_ptr())
        return tensor

    monkeypatch.setattr(StreamedTensors, "__getitem__", counting)
    model = loading.load_base_model(demo_dir / "model.safetensors")
    assert reads and max(reads.values()) == 1  # nothing read twice: no second copy of any weight
    held = {p.untyped_storage().data_ptr() for part in (model.unet, model.vae, model.text_encoder)
            for p in part.parameters()}
    unet_reads = [name for name in reads if name.startswith("model.diffusion_model.")]
    assert unet_reads and len(held & set(taken)) >= len(unet_reads) * 0.9  # the UNet keeps the tensors read


def test_a_truncated_file_names_the_file(demo_dir, tmp_path):
    data = (demo_dir / "model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    from trainer.models.loading import load_base_model

    with pytest.raises(ModelLoadError, match="cut.safetensors"):
        load_base_model(cut)
