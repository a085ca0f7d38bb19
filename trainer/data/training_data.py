"""The training data the loop iterates: built from a scan, its plan, the options and a seed.

``TrainingData(scan, options, seed)`` plans the dataset (see ``dataset_plan.plan_dataset``), optionally
caches latents (in memory, and in ``.npz`` files with ``disk=True``), and yields one ``Batch`` per
step with ``epoch(n)``. Every random choice (order, flip, random crop, colour) comes from generators
seeded by ``seed``, the epoch and the sample's place, so two runs with one seed see the same batches,
with or without data-loader workers.

With cached latents only latents are kept (no pixels): for SD's 8× VAE that is 4·(H/8)·(W/8) values
per image instead of 3·H·W, 48× less (see bench/bench_latent_cache_memory.py).
"""
from __future__ import annotations

import os
import random
from typing import Callable, Iterator

import torch

from trainer.data import images, latent_cache
from trainer.data.batches import Batch, BatchSlot, epoch_batch_slots, sample_rng
from trainer.data.dataset_plan import DataOptions, DatasetPlan, PlannedImage, plan_dataset
from trainer.data.buckets import crop_offsets
from trainer.data.folders import DataError, DatasetScan

Progress = Callable[[int, int], None]


class TrainingData:
    """Batches for the training loop. ``steps_per_epoch`` = Σ_buckets ⌈samples ÷ batch⌉."""

    def __init__(self, scan: DatasetScan, options: DataOptions, seed: int | None = None):
        self.options = options
        self.plan: DatasetPlan = plan_dataset(scan, options)
        # No seed given: draw one, and keep it visible so the run can record it.
        self.seed: int = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self._latents: list[torch.Tensor] | None = None
        self._latents_flipped: list[torch.Tensor] | None = None
        self._loader: torch.utils.data.DataLoader | None = None
        self._sampler: _EpochSampler | None = None

    def __getstate__(self) -> dict:
        """Worker processes started by spawn/forkserver get the data, never the loader that holds them."""
        state = self.__dict__.copy()
        state["_loader"] = state["_sampler"] = None
        return state

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def warnings(self):
        return self.plan.warnings

    # ---- latent cache -------------------------------------------------------------------------

    def cache_latents(self, encode: Callable[[torch.Tensor], torch.Tensor], vae_batch_size: int = 0,
                      disk: bool = False, progress: Progress | None = None, encoder_id: str = "",
                      cache_suffix: str = "sd", skip_cache_check: bool = False) -> tuple[int, int]:
        """Encode every planned image once (plus its mirror image with flip_aug) and keep the latents.
        Returns (images encoded now, images whose latents came from valid disk files).

        ``encode(pixels)``: (B, 3, H, W) in [-1, 1] → (B, C, H/f, W/f) *unscaled* latents.
        ``vae_batch_size`` 0 means train_batch_size. ``disk`` reuses and writes
        ``<stem>_<W>x<H>_<cache_suffix>.npz`` files beside the images (see latent_cache for validity).
        ``encoder_id`` names the VAE (e.g. the model path); a different id invalidates disk files.
        ``progress(done, total)`` is called after each image group. ``skip_cache_check``: reuse a disk file of
        the right bucket without checking the image and the VAE (``latent_cache.stale_reason``).
        """
        for setting in ("color_aug", "random_crop"):
            if getattr(self.options, setting):
                raise DataError(f"cache_latents cannot be used with {setting}: cached latents are encoded once, "
                                f"so per-step {setting.replace('_', ' ')} is impossible. Turn one of them off.",
                                setting)
        chunk = vae_batch_size if vae_batch_size > 0 else self.options.batch_size
        keys = [self._cache_key(item, encoder_id) for item in self.plan.images]
        latents: list[torch.Tensor | None] = [None] * len(keys)
        flipped: list[torch.Tensor | None] = [None] * len(keys)
        any_flip = any(item.flip_aug for item in self.plan.images)
        paths = [latent_cache.cache_file_path(i.path, i.original_size, cache_suffix) for i in self.plan.images]
        if disk:
            for index, item in enumerate(self.plan.images):
                found = latent_cache.load_valid(paths[index], item.path, keys[index], skip_cache_check)
                if found is not None:
                    latents[index], flipped[index] = found
        missing = [index for index, latent in enumerate(latents) if latent is None]
        done = len(keys) - len(missing)
        for group in self._groups_by_bucket(missing):
            self._encode_group(group, encode, chunk, latents, flipped)
            if disk:
                for index in group:
                    self._save_cache_file(paths[index], self.plan.images[index], keys[index],
                                          latents[index], flipped[index])
            done += len(group)
            if progress is not None:
                progress(done, len(keys))
        if progress is not None and not missing:
            progress(done, len(keys))
        self._latents = latents
        self._latents_flipped = flipped if any_flip else None
        self._loader = None  # workers made before caching hold no latents
        return len(missing), len(keys) - len(missing)

    @staticmethod
    def _save_cache_file(path, item: PlannedImage, key, latent, flipped) -> None:
        try:
            latent_cache.save(path, item.path, key, item.original_size, latent, flipped)
        except OSError as err:
            raise DataError(f"Cannot write the latent cache file {path} ({err.strerror or err}); make the image "
                            f"folder writable or turn off cache_latents_to_disk.", "cache_latents_to_disk",
                            path) from err

    def cached_bytes(self) -> int:
        """Bytes held by the in-memory latent cache (0 when nothing is cached)."""
        held = (self._latents or []) + (self._latents_flipped or [])
        return sum(t.numel() * t.element_size() for t in held)

    def _cache_key(self, item: PlannedImage, encoder_id: str) -> latent_cache.CacheEntryKey:
        return latent_cache.CacheEntryKey(item.bucket, item.resized, crop_offsets(item.resized, item.bucket),
                                          item.flip_aug, encoder_id)

    def _groups_by_bucket(self, indices: list[int]) -> list[list[int]]:
        """Images sharing a bucket (so they stack), smallest bucket area first as sd-scripts does."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index in indices:
            groups.setdefault(self.plan.images[index].bucket, []).append(index)
        return [groups[b] for b in sorted(groups, key=lambda b: (b[0] * b[1], b))]

    def _encode_group(self, group: list[int], encode, chunk: int, latents: list, flipped: list) -> None:
        for start in range(0, len(group), chunk):
            part = group[start:start + chunk]
            pixels = [self._centre_pixels(index, flip=False) for index in part]
            for index, latent in zip(part, self._encode(encode, pixels, chunk)):
                latents[index] = latent
            flipping = [k for k, index in enumerate(part) if self.plan.images[index].flip_aug]
            if flipping:
                mirrored = [torch.flip(pixels[k], dims=[2]) for k in flipping]
                for k, latent in zip(flipping, self._encode(encode, mirrored, chunk)):
                    flipped[part[k]] = latent

    def _encode(self, encode, pixels: list[torch.Tensor], chunk: int) -> list[torch.Tensor]:
        try:
            return latent_cache.encode_chunks(encode, pixels, chunk)
        except ValueError as err:
            raise DataError(f"Caching latents failed: {err}.", "cache_latents") from err

    def _centre_pixels(self, index: int, flip: bool) -> torch.Tensor:
        item = self.plan.images[index]
        return images.prepare_pixels(item.path, item.resized, item.bucket,
                                     crop_offsets(item.resized, item.bucket), flip)

    # ---- batches ------------------------------------------------------------------------------

    def batch_slots(self, epoch: int) -> list[BatchSlot]:
        """The batches of a 1-based epoch, in order (which images, which bucket)."""
        if epoch < 1:
            raise ValueError("epochs are numbered from 1")
        return epoch_batch_slots(self.plan.bucket_members(), self.options.batch_size, self.seed, epoch)

    def load_batch(self, epoch: int, slot: BatchSlot) -> Batch:
        """Build one batch: cached latents (flipped per sample) or decoded, augmented pixels."""
        samples = [self._load_sample(epoch, slot, k, index) for k, index in enumerate(slot.image_indices)]
        items = [self.plan.images[index] for index in slot.image_indices]
        cached = self._latents is not None
        stacked = torch.stack([tensor for tensor, _, _ in samples])
        return Batch(
            latents=stacked if cached else None,
            pixels=None if cached else stacked,
            captions=[item.caption for item in items],
            loss_weights=torch.tensor([item.loss_weight for item in items], dtype=torch.float32),
            image_paths=[item.path for item in items],
            bucket=slot.bucket,
            is_reg=[item.is_reg for item in items],
            flipped=[flip for _, flip, _ in samples],
            original_sizes=[item.original_size for item in items],
            crop_top_lefts=[offsets for _, _, offsets in samples],
            caption_options=[item.caption_options for item in items],
            masks=self._masks(items, slot.bucket, samples),
        )

    @staticmethod
    def _masks(items: list[PlannedImage], bucket, samples) -> torch.Tensor | None:
        """The batch's loss masks (sd-scripts: a sample without one gets all ones), or None when none has."""
        if not any(item.mask_source for item in items):
            return None
        masks = []
        for item, (_, flip, offsets) in zip(items, samples):
            if item.mask_source is None:
                masks.append(torch.ones(bucket[1], bucket[0]))
                continue
            unflipped = (item.resized[0] - item.bucket[0] - offsets[0], offsets[1]) if flip else offsets
            masks.append(images.prepare_mask(item.path, item.mask_source, item.resized, item.bucket, unflipped, flip))
        return torch.stack(masks)

    def _load_sample(self, epoch: int, slot: BatchSlot, k: int, index: int):
        item = self.plan.images[index]
        rng = sample_rng(self.seed, epoch, slot.position, k)
        flip = item.flip_aug and rng.random() < 0.5
        offsets = crop_offsets(item.resized, item.bucket, rng if self.options.random_crop else None)
        if self._latents is not None:
            tensor = self._latents_flipped[index] if flip and self._latents_flipped is not None else self._latents[index]
        else:
            color_rng = rng if self.options.color_aug else None
            tensor = images.prepare_pixels(item.path, item.resized, item.bucket, offsets, flip, color_rng)
        if flip:  # the window's left edge, seen in the mirrored image
            offsets = (item.resized[0] - item.bucket[0] - offsets[0], offsets[1])
        return tensor, flip, offsets

    def epoch(self, epoch: int, select: Callable[[list[BatchSlot]], list[BatchSlot]] | None = None) -> Iterator[Batch]:
        """Yield the batches of a 1-based epoch; deterministic from seed and epoch. ``select`` picks this
        process's share of the epoch's batches in a multi-process run (``trainer.distributed``).

        With ``num_workers`` > 0 the batches are built in data-loader worker processes
        (``min(num_workers, cpu count)``), kept between epochs with ``persistent_workers``.
        """
        slots = self.batch_slots(epoch)
        if select is not None:
            slots = select(slots)
        workers = min(self.options.num_workers, os.cpu_count() or 1)
        if workers <= 0:
            for slot in slots:
                yield self.load_batch(epoch, slot)
            return
        loader = self._worker_loader(workers)
        assert self._sampler is not None  # made with the loader
        self._sampler.set(epoch, slots)
        yield from loader
        if not self.options.persistent_workers:
            self._loader = None

    def _worker_loader(self, workers: int) -> torch.utils.data.DataLoader:
        if self._loader is None:
            self._sampler = _EpochSampler()
            self._loader = torch.utils.data.DataLoader(
                _SlotDataset(self), batch_size=None, sampler=self._sampler, num_workers=workers,
                persistent_workers=self.options.persistent_workers, collate_fn=_unchanged)
        return self._loader


class _SlotDataset(torch.utils.data.Dataset):
    """Map-style dataset whose keys are (epoch, BatchSlot): workers build whole batches."""

    def __init__(self, data: TrainingData):
        self.data = data

    def __getitem__(self, key: tuple[int, BatchSlot]) -> Batch:
        epoch, slot = key
        return self.data.load_batch(epoch, slot)

    def __len__(self) -> int:
        return self.data.steps_per_epoch


class _EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, slot) keys; lives in the main process, so persistent workers see each new epoch."""

    def __init__(self):
        self.epoch = 1
        self.slots: list[BatchSlot] = []

    def set(self, epoch: int, slots: list[BatchSlot]) -> None:
        self.epoch, self.slots = epoch, slots

    def __iter__(self):
        return iter([(self.epoch, slot) for slot in self.slots])

    def __len__(self) -> int:
        return len(self.slots)


def _unchanged(batch: Batch) -> Batch:
    return batch
