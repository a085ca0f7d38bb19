"""The LoRA file: safetensors with ``ss_*`` metadata, written atomically, with sd-webui hashes.

``sshs_model_hash`` / ``sshs_legacy_hash`` follow sd-scripts' ``precalculate_safetensors_hashes``
(the hashes sd-webui-additional-networks shows): serialize the tensors in memory with only the
``ss_*`` metadata; the model hash is the SHA-256 of everything after the header (the 8-byte
little-endian header length n, then n header bytes), the legacy hash the first 8 hex digits of the
SHA-256 of the 0x10000 bytes at offset 0x100000 of that buffer (empty for files under 1 MiB).
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000


def _check_metadata(metadata: dict) -> dict[str, str]:
    bad = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
    if bad:
        raise TypeError(f"LoRA file metadata must map str to str; not so for: {', '.join(map(str, bad))}")
    return dict(metadata)


def _check_tensors(tensors: dict) -> dict[str, torch.Tensor]:
    bad = [key for key, value in tensors.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise TypeError(f"LoRA file values must be tensors; not so for: {', '.join(map(str, bad[:5]))}")
    return {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}


def model_hash(serialized: bytes) -> str:
    """SHA-256 hex of the tensor data of a safetensors buffer (everything after its header)."""
    (header_length,) = struct.unpack("<Q", serialized[:8])
    return hashlib.sha256(serialized[8 + header_length :]).hexdigest()


def legacy_hash(serialized: bytes) -> str:
    """First 8 hex digits of SHA-256 over bytes 0x100000 … 0x10FFFF (A1111's old addnet hash)."""
    chunk = serialized[LEGACY_HASH_OFFSET : LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH]
    return hashlib.sha256(chunk).hexdigest()[:8]


def sshs_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """{"sshs_model_hash": …, "sshs_legacy_hash": …} computed over the tensors with only ss_* metadata."""
    ss_only = {key: value for key, value in metadata.items() if key.startswith("ss_")}
    serialized = save(tensors, metadata=ss_only)
    return {"sshs_model_hash": model_hash(serialized), "sshs_legacy_hash": legacy_hash(serialized)}


def save_lora_file(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` and ``metadata`` (+ sshs hashes) to ``path`` as safetensors, atomically.

    The file is written under a temporary name in the same folder and renamed over ``path``, so a
    failure never leaves a partial file (and an older file at ``path`` stays as it was).
    """
    path = Path(path)
    tensors = _check_tensors(tensors)
    metadata = _check_metadata(metadata)
    metadata.update(sshs_hashes(tensors, metadata))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temp_name, metadata=metadata)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def read_lora_file(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors LoRA file; a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as opened:
            metadata = dict(opened.metadata() or {})
            tensors = {key: opened.get_tensor(key) for key in opened.keys()}
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a readable .safetensors file: {error}") from error
    return tensors, metadata
