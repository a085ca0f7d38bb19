"""The dataset plan: the options, the bucket of every image, the balanced reg repeats, per-bucket counts
and steps per epoch.

``plan_dataset(scan, options)`` is the fast, pixel-free answer to "what will training see"; the plan panel,
``python -m trainer plan`` and the training data all use it. Follows sd-scripts ``DreamBoothDataset.__init__``
(reg balancing) and ``BaseDataset.make_buckets``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path

from trainer.data.batches import Size, balance_reg_repeats, steps_per_epoch
from trainer.data.buckets import (BucketChoice, make_bucket_resolutions, mean_ar_error, select_no_upscale_bucket,
                                  select_predefined_bucket, snap_bucket_limits)
from trainer.data.folders import DataError, DatasetScan, DataWarning, ImageRecord, image_extensions
from trainer.spec import fields
from trainer.spec.sections import Job


@dataclass
class DataOptions:
    """The dataset settings, as plain values (``data_options_from_job`` maps a job onto them)."""

    resolution: Size = (512, 512)
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = True
    random_crop: bool = False
    flip_aug: bool = False
    color_aug: bool = False
    caption_extension: str = ".caption"
    batch_size: int = 1
    prior_loss_weight: float = 1.0
    num_workers: int = 0
    persistent_workers: bool = False
    cache_latents: bool = False
    cache_latents_to_disk: bool = False
    vae_batch_size: int = 0

    @property
    def caching(self) -> bool:
        """cache_latents_to_disk implies cache_latents (as in sd-scripts)."""
        return self.cache_latents or self.cache_latents_to_disk

    @property
    def effective_vae_batch_size(self) -> int:
        """vae_batch_size, where 0 means train_batch_size."""
        return self.vae_batch_size if self.vae_batch_size > 0 else self.batch_size


def parse_resolution(text) -> Size:
    """``"512,768"`` → (512, 768) (width, height); ``"512"`` → (512, 512): the schema's rule
    (:func:`trainer.spec.fields.parse_resolution`), raised as a DataError naming max_resolution."""
    try:
        return fields.parse_resolution(text)
    except ValueError as error:
        raise DataError(f"max_resolution: {error}", "max_resolution") from None


def data_options_from_job(job: Job) -> DataOptions:
    """Map a job (any object with kohya_ss-named attributes) onto DataOptions."""
    return DataOptions(
        resolution=parse_resolution(job.data.max_resolution), enable_bucket=bool(job.data.enable_bucket),
        min_bucket_reso=int(job.data.min_bucket_reso), max_bucket_reso=int(job.data.max_bucket_reso),
        bucket_reso_steps=int(job.data.bucket_reso_steps), bucket_no_upscale=bool(job.data.bucket_no_upscale),
        random_crop=bool(job.data.random_crop), flip_aug=bool(job.data.flip_aug), color_aug=bool(job.data.color_aug),
        caption_extension=job.data.caption_extension or "", batch_size=int(job.data.train_batch_size),
        prior_loss_weight=float(job.noise_loss.prior_loss_weight),
        num_workers=int(job.data.max_data_loader_n_workers or 0),
        persistent_workers=bool(job.data.persistent_data_loader_workers),
        cache_latents=bool(job.data.cache_latents), cache_latents_to_disk=bool(job.data.cache_latents_to_disk),
        vae_batch_size=int(job.data.vae_batch_size or 0))


def option_errors(options: DataOptions) -> list[DataError]:
    """Every dataset-setting problem that must stop the run before it starts (empty = fine)."""
    errors = []
    if options.batch_size < 1:
        errors.append(DataError("train_batch_size must be at least 1.", "train_batch_size"))
    if options.bucket_reso_steps < 1:
        errors.append(DataError("bucket_reso_steps must be at least 1.", "bucket_reso_steps"))
    if options.vae_batch_size < 0:
        errors.append(DataError("vae_batch_size must be 0 (= train batch size) or more.", "vae_batch_size"))
    if options.num_workers < 0:
        errors.append(DataError("max_data_loader_n_workers must be 0 or more.", "max_data_loader_n_workers"))
    cache_setting = "cache_latents_to_disk" if options.cache_latents_to_disk else "cache_latents"
    for setting in ("color_aug", "random_crop"):
        if options.caching and getattr(options, setting):
            errors.append(DataError(
                f"{setting} cannot be combined with {cache_setting}: cached latents are encoded once, so they "
                f"cannot change every step. Turn one of them off.", setting))
    if options.enable_bucket and not options.bucket_no_upscale and options.bucket_reso_steps >= 1:
        low, high = snap_bucket_limits(options.min_bucket_reso, options.max_bucket_reso, options.bucket_reso_steps)
        if low < 1 or low > min(options.resolution):
            errors.append(DataError(f"min_bucket_reso ({low} after rounding to bucket_reso_steps) must be between 1 "
                                    f"and the smaller side of max_resolution ({min(options.resolution)}).",
                                    "min_bucket_reso"))
        if high < max(options.resolution):
            errors.append(DataError(f"max_bucket_reso ({high} after rounding to bucket_reso_steps) must be at least "
                                    f"the larger side of max_resolution ({max(options.resolution)}).",
                                    "max_bucket_reso"))
    return errors


def option_warnings(options: DataOptions) -> list[DataWarning]:
    found = []
    if options.enable_bucket and options.bucket_reso_steps % 8:
        found.append(DataWarning(f"bucket_reso_steps {options.bucket_reso_steps} is not a multiple of 8: bucket "
                                 f"sizes will not divide into whole latent pixels.", "bucket_reso_steps", None))
    return found


@dataclass(frozen=True)
class PlannedImage:
    """One image as it will be trained: its bucket, resize, effective repeats and loss weight."""

    path: str
    caption: str
    is_reg: bool
    repeats: int
    loss_weight: float
    original_size: Size
    bucket: Size
    resized: Size
    subset_index: int
    flip_aug: bool = False  # the subset's (dataset_config) or the job's flip_aug
    caption_options: tuple[bool, int] | None = None  # (shuffle_caption, keep_tokens) of a config subset
    mask_source: str | None = None  # "alpha" or the mask file's path (a config subset's masks), else None


@dataclass
class SubsetPlan:
    folder: str
    class_tokens: str
    is_reg: bool
    repeats: int  # from the folder name (or the config's num_repeats)
    images: int  # usable images
    samples: int  # per epoch, with repeats (after reg balancing for reg folders)
    # a dataset-config subset's own options (None: the job's)
    shuffle_caption: bool | None = None
    keep_tokens: int | None = None
    flip_aug: bool | None = None
    masks: str | None = None  # "alpha channel" or the mask folder


@dataclass
class BucketPlan:
    resolution: Size
    images: int
    samples: int  # with repeats
    batches: int  # ⌈samples ÷ batch⌉


@dataclass
class DatasetPlan:
    """Everything the plan panel shows, computed from headers only (no pixel is decoded)."""

    subsets: list[SubsetPlan]
    images: list[PlannedImage]
    buckets: list[BucketPlan]
    batch_size: int
    steps_per_epoch: int
    train_images: int
    train_samples: int
    reg_images: int
    reg_samples: int
    mean_ar_error: float
    warnings: list[DataWarning]

    def bucket_members(self) -> dict[Size, list[int]]:
        """Bucket → image indices, each repeated ``repeats`` times (the samples of one epoch)."""
        members: dict[Size, list[int]] = {}
        for index, item in enumerate(self.images):
            members.setdefault(item.bucket, []).extend([index] * item.repeats)
        return members

    def summary(self) -> dict:
        """A JSON-ready dict for the ``started`` event and the plan panel."""
        return {
            "train_images": self.train_images, "train_samples": self.train_samples,
            "reg_images": self.reg_images, "reg_samples": self.reg_samples,
            "batch_size": self.batch_size, "steps_per_epoch": self.steps_per_epoch,
            "mean_ar_error": round(self.mean_ar_error, 4),
            "subsets": [vars(s).copy() for s in self.subsets],
            "buckets": [{"resolution": list(b.resolution), "images": b.images, "samples": b.samples,
                         "batches": b.batches} for b in self.buckets],
            "warnings": [w.message for w in self.warnings],
        }


def plan_dataset(scan: DatasetScan, options: DataOptions) -> DatasetPlan:
    """Assign buckets, balance reg images and count steps. Raises DataError on bad options or when no
    image can be trained; skipped images and other problems are warnings in the plan."""
    errors = option_errors(options)
    if errors:
        raise errors[0]
    found_warnings = list(scan.warnings) + option_warnings(options)
    choose = _bucket_chooser(options, found_warnings)
    placed: list[tuple[int, ImageRecord, BucketChoice]] = []
    for subset_index, subset in enumerate(scan.subsets):
        for record in subset.images:
            choice = choose(record)
            if choice is not None:
                placed.append((subset_index, record, choice))
    if not any(not scan.subsets[s].is_reg for s, _, _ in placed):
        raise DataError("No training image can be used (see the warnings above).", "train_data_dir")
    repeats = _effective_repeats(scan, placed, found_warnings)
    images = [PlannedImage(record.path, record.caption, scan.subsets[s].is_reg, count,
                           options.prior_loss_weight if scan.subsets[s].is_reg else 1.0,
                           record.size, choice.bucket, choice.resized, s, *_subset_options(scan, s, options),
                           mask_source(scan.subsets[s], record.path))
              for (s, record, choice), count in zip(placed, repeats) if count > 0]
    return _assemble(scan, options, images, [c for _, _, c in placed], found_warnings)


def mask_source(subset, image_path: str) -> str | None:
    """Where an image's loss mask comes from: "alpha", the mask file of the same stem in the subset's mask
    folder (any image extension; a DataError naming masked_loss when there is none), or None."""
    own = subset.options
    if own is None or not (own.alpha_mask or own.mask_dir):
        return None
    if own.mask_dir:
        stem = Path(image_path).stem
        for candidate in sorted(Path(own.mask_dir).glob(f"{glob_escape(stem)}.*")):
            if candidate.suffix.lower() in image_extensions():
                return str(candidate)
        raise DataError(f"{image_path} has no mask in {own.mask_dir} (a mask image named {stem}.png, .jpg …); "
                        "every image of a subset with conditioning_data_dir needs one", "masked_loss", image_path)
    return "alpha"


def _subset_options(scan: DatasetScan, index: int, options: DataOptions) -> tuple[bool, tuple[bool, int] | None]:
    """(flip_aug, caption options) of a subset's images: a dataset-config subset's own, else the job's."""
    own = scan.subsets[index].options
    if own is None:
        return options.flip_aug, None
    return own.flip_aug, (own.shuffle_caption, own.keep_tokens)


def _bucket_chooser(options: DataOptions, found_warnings: list[DataWarning]):
    """A function ImageRecord → BucketChoice | None (None = skipped, with a warning)."""
    steps = options.bucket_reso_steps
    max_area = options.resolution[0] * options.resolution[1]
    if not options.enable_bucket:
        buckets = [fixed_training_size(options.resolution, found_warnings)]
    elif not options.bucket_no_upscale:
        low, high = snap_bucket_limits(options.min_bucket_reso, options.max_bucket_reso, steps)
        buckets = make_bucket_resolutions(options.resolution, low, high, steps)

    def choose(record: ImageRecord) -> BucketChoice | None:
        if options.enable_bucket and options.bucket_no_upscale:
            choice = select_no_upscale_bucket(record.size, max_area, steps)
            if choice is None:
                found_warnings.append(DataWarning(
                    f"Image {record.path} ({record.size[0]}x{record.size[1]}) is smaller than one bucket step "
                    f"({steps} px) and is skipped.", "bucket_reso_steps", record.path))
                return None
        else:
            choice = select_predefined_bucket(record.size, buckets)
        _warn_if_small(record, choice, options, found_warnings)
        return choice

    return choose


UNET_PIXEL_MULTIPLE = 64  # SD's VAE (÷8) then the UNet's three downsamplings (÷8)


def fixed_training_size(resolution: Size, found_warnings: list[DataWarning]) -> Size:
    """Without buckets every image is cut to one size; sides are floored to a multiple of 64 px so the
    latents pass the UNet's downsamplings evenly (kohya configs carry sizes such as 512,650)."""
    width, height = (max(UNET_PIXEL_MULTIPLE, side // UNET_PIXEL_MULTIPLE * UNET_PIXEL_MULTIPLE)
                     for side in resolution)
    if (width, height) != tuple(resolution):
        found_warnings.append(DataWarning(
            f"max_resolution {resolution[0]},{resolution[1]} is trained as {width},{height} (sides must be "
            f"multiples of {UNET_PIXEL_MULTIPLE} px without buckets)", "max_resolution", None))
    return width, height


def _warn_if_small(record: ImageRecord, choice: BucketChoice, options: DataOptions,
                   found_warnings: list[DataWarning]) -> None:
    width, height = record.size
    if choice.resized[0] > width:
        found_warnings.append(DataWarning(
            f"Image {record.path} ({width}x{height}) is smaller than its bucket {choice.bucket[0]}x{choice.bucket[1]} "
            f"and is upscaled x{choice.resized[0] / width:.2f}; it may look soft.", "max_resolution", record.path))
    elif options.enable_bucket and min(width, height) < options.min_bucket_reso:
        found_warnings.append(DataWarning(
            f"Image {record.path} ({width}x{height}) is smaller than the smallest bucket (min_bucket_reso "
            f"{options.min_bucket_reso}); it trains in its own small bucket {choice.bucket[0]}x{choice.bucket[1]}.",
            "min_bucket_reso", record.path))


def _effective_repeats(scan: DatasetScan, placed, found_warnings: list[DataWarning]) -> list[int]:
    """Folder repeats for train images; balanced repeats (sd-scripts' loop) for reg images."""
    repeats = [scan.subsets[s].repeats for s, _, _ in placed]
    train_samples = sum(r for (s, _, _), r in zip(placed, repeats) if not scan.subsets[s].is_reg)
    reg_positions = [i for i, (s, _, _) in enumerate(placed) if scan.subsets[s].is_reg]
    balanced = balance_reg_repeats(train_samples, [repeats[i] for i in reg_positions])
    for position, count in zip(reg_positions, balanced):
        repeats[position] = count
    unused = [placed[p][1].path for p, count in zip(reg_positions, balanced) if count == 0]
    if unused:
        found_warnings.append(DataWarning(
            f"{len(unused)} regularization image(s) are not used (e.g. {unused[0]}): reg samples are capped at "
            f"the number of training samples per epoch ({train_samples}).", "reg_data_dir", unused[0]))
    return repeats


def _assemble(scan: DatasetScan, options: DataOptions, images: list[PlannedImage],
              choices: list[BucketChoice], found_warnings: list[DataWarning]) -> DatasetPlan:
    subsets = []
    for index, subset in enumerate(scan.subsets):
        mine = [i for i in images if i.subset_index == index]
        own = subset.options
        masks = None if own is None else own.mask_dir or ("alpha channel" if own.alpha_mask else None)
        subsets.append(SubsetPlan(subset.folder, subset.class_tokens, subset.is_reg, subset.repeats,
                                  len(mine), sum(i.repeats for i in mine),
                                  *((own.shuffle_caption, own.keep_tokens, own.flip_aug, masks) if own else ())))
    buckets = []
    for resolution in sorted({i.bucket for i in images}):
        mine = [i for i in images if i.bucket == resolution]
        samples = sum(i.repeats for i in mine)
        buckets.append(BucketPlan(resolution, len(mine), samples, math.ceil(samples / options.batch_size)))
    train = [i for i in images if not i.is_reg]
    reg = [i for i in images if i.is_reg]
    return DatasetPlan(
        subsets=subsets, images=images, buckets=buckets, batch_size=options.batch_size,
        steps_per_epoch=steps_per_epoch([b.samples for b in buckets], options.batch_size),
        train_images=len(train), train_samples=sum(i.repeats for i in train),
        reg_images=len(reg), reg_samples=sum(i.repeats for i in reg),
        mean_ar_error=mean_ar_error(choices), warnings=found_warnings)
