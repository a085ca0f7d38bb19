"""The latent cache: encoding images once with the VAE, in memory and in ``.npz`` files beside them.

File name as sd-scripts ≥ v0.10: ``<image stem>_<W:04d>x<H:04d>_<suffix>.npz`` (W×H = the image's
size, suffix "sd" or "sdxl"), with sd-scripts' keys ``latents`` (C, h, w float32), ``latents_flipped``,
``original_size`` [W, H] and ``crop_ltrb``, so sd-scripts can read our files.

Validity, stricter than sd-scripts on purpose (sd-scripts only checks that the keys exist, so a changed
resolution silently trains on stale latents): a file is reused only when the image is the same (byte
size plus modification time, or else byte size plus SHA-256), the bucket, resized size and crop are the
same, the flipped latent exists when flip_aug is on, and the encoder id matches. Anything else is
re-encoded and the file rewritten (through a temporary name, so a crash never leaves a half file).
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

Size = tuple[int, int]
Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CacheEntryKey:
    """Everything a cached latent depends on, besides the image bytes."""

    bucket: Size
    resized: Size
    crop_left_top: tuple[int, int]
    with_flipped: bool
    encoder_id: str = ""


@dataclass(frozen=True)
class SourceStamp:
    """The identity of the image file a latent came from."""

    size_bytes: int
    mtime_ns: int
    sha256: str

    @staticmethod
    def of(path, with_hash: bool = True) -> "SourceStamp":
        stat = Path(path).stat()
        return SourceStamp(stat.st_size, stat.st_mtime_ns, file_sha256(path) if with_hash else "")


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_file_path(image_path, original_size: Size, suffix: str = "sd") -> Path:
    """``<folder>/<stem>_<W:04d>x<H:04d>_<suffix>.npz``, as sd-scripts names it."""
    image_path = Path(image_path)
    width, height = original_size
    return image_path.with_name(f"{image_path.stem}_{width:04d}x{height:04d}_{suffix}.npz")


def _read_npz(cache_path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(cache_path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def stale_reason(stored: dict[str, np.ndarray] | None, image_path, key: CacheEntryKey,
                 skip_check: bool = False) -> str | None:
    """Why a cache file cannot be reused (a short phrase), or None when it can.

    ``skip_check`` (sd-scripts' ``--skip_cache_check``): trust a readable file of the right bucket without
    checking that the image, the crop or the VAE are still those it was made from (faster with many images;
    an edited image then trains on its old latent)."""
    if stored is None:
        return "no readable cache file"
    if "latents" not in stored or "loom_bucket" not in stored:
        return "cache file written by another tool or version"
    if key.with_flipped and "latents_flipped" not in stored:
        return "flip_aug is on and the file has no flipped latent"
    if tuple(stored["loom_bucket"].tolist()) != key.bucket or tuple(stored["loom_resized"].tolist()) != key.resized:
        return "the bucket resolution changed"
    if skip_check:
        return None
    if tuple(stored["crop_ltrb"][:2].tolist()) != key.crop_left_top:
        return "the crop changed"
    if str(stored["loom_encoder"]) != key.encoder_id:
        return "the VAE changed"
    return _source_change(stored, image_path)


def _source_change(stored: dict[str, np.ndarray], image_path) -> str | None:
    now = SourceStamp.of(image_path, with_hash=False)
    if int(stored["loom_source_size_bytes"]) != now.size_bytes:
        return "the image changed"
    if int(stored["loom_source_mtime_ns"]) == now.mtime_ns:
        return None
    # Same length, new timestamp (copied, touched): the content decides.
    return None if file_sha256(image_path) == str(stored["loom_source_sha256"]) else "the image changed"


def load_valid(cache_path, image_path, key: CacheEntryKey,
               skip_check: bool = False) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(latents, flipped latents or None) from a valid cache file, else None (``skip_check``: see stale_reason)."""
    stored = _read_npz(Path(cache_path)) if Path(cache_path).is_file() else None
    if stored is None or stale_reason(stored, image_path, key, skip_check) is not None:
        return None
    flipped = torch.from_numpy(stored["latents_flipped"]) if key.with_flipped else None
    return torch.from_numpy(stored["latents"]), flipped


def save(cache_path, image_path, key: CacheEntryKey, original_size: Size,
         latents: torch.Tensor, latents_flipped: torch.Tensor | None) -> None:
    """Write one cache file atomically (temporary name, then rename)."""
    cache_path = Path(cache_path)
    stamp = SourceStamp.of(image_path)
    left, top = key.crop_left_top
    arrays = {
        "latents": latents.detach().float().cpu().numpy(),
        "original_size": np.array(original_size, dtype=np.int64),
        "crop_ltrb": np.array([left, top, left + key.bucket[0], top + key.bucket[1]], dtype=np.int64),
        "loom_bucket": np.array(key.bucket, dtype=np.int64),
        "loom_resized": np.array(key.resized, dtype=np.int64),
        "loom_encoder": np.array(key.encoder_id),
        "loom_source_size_bytes": np.array(stamp.size_bytes, dtype=np.int64),
        "loom_source_mtime_ns": np.array(stamp.mtime_ns, dtype=np.int64),
        "loom_source_sha256": np.array(stamp.sha256),
    }
    if latents_flipped is not None:
        arrays["latents_flipped"] = latents_flipped.detach().float().cpu().numpy()
    temporary = cache_path.with_name(cache_path.name + ".tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, cache_path)


def encode_chunks(encode: Encoder, pixels: list[torch.Tensor], chunk_size: int) -> list[torch.Tensor]:
    """Encode same-shaped (3, H, W) tensors ``chunk_size`` at a time; one (C, h, w) CPU latent per input.

    The encoder's output is checked: a wrong batch size or NaN/inf values raise ValueError naming the
    problem, because a silently corrupt cache poisons every later run.
    """
    latents: list[torch.Tensor] = []
    for start in range(0, len(pixels), chunk_size):
        chunk = torch.stack(pixels[start:start + chunk_size])
        with torch.no_grad():
            encoded = encode(chunk)
        if encoded.shape[0] != chunk.shape[0]:
            raise ValueError(f"the VAE returned {encoded.shape[0]} latents for {chunk.shape[0]} images")
        if not torch.isfinite(encoded).all():
            raise ValueError("the VAE returned NaN or infinite latents (try a VAE in float32)")
        latents.extend(encoded.detach().to("cpu").contiguous().unbind(0))
    return [latent.clone() for latent in latents]
