"""A ``.safetensors`` file read one tensor at a time, for loading a whole model without holding the file.

``StreamedTensors(path)`` is a read-only mapping name → tensor: keys and shapes come from the header (no
data read), and each access reads that one tensor with plain file reads into a fresh, aligned allocation
(no memory map, whose touched pages would count as the process's own memory until the file is closed).
A model filled from it holds its weights once: the peak while loading is the model plus one tensor.
``shapes()`` gives the same names as meta tensors, for the code that derives configs from shapes.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from trainer.models.detect import read_safetensors_header
from trainer.models.errors import ModelLoadError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class StreamedTensors(Mapping):
    """name → tensor of a ``.safetensors`` file, each read from disk when asked for (never cached)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header, self.metadata = read_safetensors_header(self.path)
        with self.path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
        self._data_start = 8 + header_size
        unknown = sorted({entry["dtype"] for entry in self.header.values()} - set(DTYPES))
        if unknown:
            raise ModelLoadError(f"{self.path} holds tensors of types this loader cannot read: {', '.join(unknown)}")

    def __getitem__(self, name: str) -> torch.Tensor:
        entry = self.header[name]
        start, end = entry["data_offsets"]
        raw = torch.empty(end - start, dtype=torch.uint8)
        with self.path.open("rb", buffering=0) as handle:
            handle.seek(self._data_start + start)
            view = memoryview(raw.numpy())
            done = 0
            while done < len(view):
                count = handle.readinto(view[done:])
                if not count:
                    raise ModelLoadError(f"{self.path} is truncated: {name} ends past the end of the file")
                done += count
        dtype = DTYPES[entry["dtype"]]
        tensor = raw.view(dtype) if end > start else torch.empty(0, dtype=dtype)
        return tensor.reshape(entry["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.header)

    def __len__(self) -> int:
        return len(self.header)

    def __contains__(self, name: object) -> bool:
        return name in self.header

    def shapes(self) -> dict[str, torch.Tensor]:
        """The same names as meta tensors of the stored shapes and dtypes (nothing read)."""
        return {name: torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]], device="meta")
                for name, entry in self.header.items()}

    def subset(self, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The tensors whose names start with one of ``prefixes``, read now."""
        return {name: self[name] for name in self.header if name.startswith(prefixes)}
