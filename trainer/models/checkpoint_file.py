"""Reading and writing the tensors of a single checkpoint file: ``.safetensors``, or a pickled ``.ckpt``
read with ``torch.load(weights_only=True)`` only (a pickle that needs more could run arbitrary code)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainer.models.detect import read_safetensors_header
from trainer.models.errors import ModelLoadError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors by name, metadata) of a checkpoint file; ModelLoadError names the file when it cannot be read."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        _, metadata = read_safetensors_header(path)  # clear messages for truncated or corrupt headers
        try:
            return load_file(str(path), device="cpu"), metadata
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelLoadError(f"{path} is corrupt and cannot be read: {error}") from error
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _read_pickled(path), {}
    raise ModelLoadError(f"{path}: unknown checkpoint type; expected .safetensors or .ckpt")


def _read_pickled(path: Path) -> dict[str, torch.Tensor]:
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"{path} refuses to load safely: it is a pickle that needs more than plain tensors "
            f"(torch.load with weights_only=True said: {str(error).splitlines()[0]}). Loading it fully could "
            "run code hidden in the file. Convert it to .safetensors with a tool you trust, or use a "
            ".safetensors version of the model.") from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ModelLoadError(f"{path} is corrupt or not a PyTorch checkpoint: {error}") from error
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict):
        raise ModelLoadError(f"{path} holds a {type(content).__name__}, not a table of weights")
    return {name: value for name, value in content.items() if isinstance(value, torch.Tensor)}


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write through a temporary name and rename, so an interrupted write never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    contiguous = {name: tensor.detach().contiguous() for name, tensor in tensors.items()}
    save_file(contiguous, str(partial), metadata=metadata)
    os.replace(partial, path)
    return path
