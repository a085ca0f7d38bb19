"""What an epoch holds and in which order: reg balancing, batches of one bucket, steps per epoch
(the plan that decides each image's bucket is ``trainer.data.dataset_plan``).

Follows sd-scripts ``DreamBoothDataset.__init__`` (reg balancing) and ``BaseDataset.make_buckets`` /
``shuffle_buckets`` (every image appears ``repeats`` times in its bucket; each bucket is cut into
⌈n/batch⌉ batches, the last one partial; order reshuffled every epoch from ``seed + epoch``).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch


Size = tuple[int, int]


@dataclass
class Batch:
    """One training step's data, all samples from one bucket.

    ``latents``: (B, 4, h, w) *unscaled* VAE latents when cached, else None.
    ``pixels``: (B, 3, H, W) in [-1, 1] when not cached, else None.
    ``captions``: raw captions (before shuffle / dropout / prefix).
    ``loss_weights``: (B,) prior_loss_weight for regularization samples, 1.0 otherwise.
    ``original_sizes`` / ``crop_top_lefts``: (w, h) of the source image and the (left, top) of the
    window actually cut from the resized image (SDXL size conditioning).
    """

    latents: torch.Tensor | None
    pixels: torch.Tensor | None
    captions: list[str]
    loss_weights: torch.Tensor
    image_paths: list[str]
    bucket: Size
    is_reg: list[bool] = field(default_factory=list)
    flipped: list[bool] = field(default_factory=list)
    original_sizes: list[Size] = field(default_factory=list)
    crop_top_lefts: list[tuple[int, int]] = field(default_factory=list)
    # per sample: (shuffle_caption, keep_tokens) of its dataset-config subset, or None for the job's
    caption_options: list[tuple[bool, int] | None] = field(default_factory=list)
    # (B, H, W) loss masks in [0, 1] when a sample has one (the others all ones), else None
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.image_paths)


@dataclass(frozen=True)
class BatchSlot:
    """Which samples make one batch: indices into the plan's image list (repeats already expanded)."""

    bucket: Size
    image_indices: tuple[int, ...]
    position: int  # the batch's place in its epoch, 0-based; seeds per-sample augmentation


def balance_reg_repeats(train_samples: int, reg_repeats: list[int]) -> list[int]:
    """Repeats for each reg image so that reg samples ≈ train samples (sd-scripts' loop, exactly).

    First pass: reg images are taken in order with their own repeats, stopping as soon as the running
    total reaches ``train_samples`` (later images get 0 = unused). Further passes add +1 to each image
    in order until the total reaches ``train_samples``. No train samples → no reg samples.
    """
    balanced = [0] * len(reg_repeats)
    if not reg_repeats or train_samples <= 0:
        return balanced
    total = 0
    for index, repeats in enumerate(reg_repeats):
        balanced[index] = repeats
        total += repeats
        if total >= train_samples:
            return balanced
    while True:
        for index in range(len(reg_repeats)):
            balanced[index] += 1
            total += 1
            if total >= train_samples:
                return balanced


def steps_per_epoch(bucket_sample_counts: dict[Size, int] | list[int], batch_size: int) -> int:
    """Σ over buckets of ⌈samples_in_bucket ÷ batch_size⌉ (samples counted with repeats).

    Gradient accumulation is not applied here: the caller divides (sd-scripts train_network.py).
    """
    if batch_size < 1:
        raise ValueError("train_batch_size must be at least 1")
    counts = bucket_sample_counts.values() if isinstance(bucket_sample_counts, dict) else bucket_sample_counts
    return sum(math.ceil(count / batch_size) for count in counts)


def epoch_batch_slots(bucket_members: dict[Size, list[int]], batch_size: int, seed: int, epoch: int) -> list[BatchSlot]:
    """The batches of one epoch, in training order.

    ``bucket_members`` maps a bucket to its sample list (an image index repeated ``repeats`` times).
    With ``random.Random(seed + epoch)``: each bucket's samples are shuffled, cut into batches of
    ``batch_size`` (last one partial), and the list of all batches is shuffled. Buckets are visited in
    sorted order first, so the result depends only on the inputs.
    """
    rng = random.Random(seed + epoch)
    batches: list[tuple[Size, tuple[int, ...]]] = []
    for bucket in sorted(bucket_members):
        samples = list(bucket_members[bucket])
        rng.shuffle(samples)
        for start in range(0, len(samples), batch_size):
            batches.append((bucket, tuple(samples[start:start + batch_size])))
    rng.shuffle(batches)
    return [BatchSlot(bucket, indices, position) for position, (bucket, indices) in enumerate(batches)]


def sample_rng(seed: int, epoch: int, position: int, slot_in_batch: int) -> random.Random:
    """The generator for one sample's augmentation (flip, crop, colour): a pure function of where
    the sample sits, so data-loader workers produce the same batches as the main process."""
    return random.Random(f"{seed}:{epoch}:{position}:{slot_in_batch}")
