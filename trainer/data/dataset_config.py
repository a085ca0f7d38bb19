"""sd-scripts' dataset TOML (``--dataset_config``, kohya_ss's "Dataset config file"): subsets given one by one
instead of the ``N_name`` folders of the image folder.

The file (sd-scripts ``library/config_util.py``)::

    [general]                      # defaults for every dataset and subset
    shuffle_caption = true
    caption_extension = ".txt"
    [[datasets]]                   # one dataset: resolution, batch size, buckets
    resolution = 512
    batch_size = 2
    [[datasets.subsets]]           # one folder: its own repeats, captions, keep tokens, flips
    image_dir = "/data/sks"
    num_repeats = 10
    class_tokens = "sks dog"
    keep_tokens = 1

Every value is looked up as sd-scripts' ``BlueprintGenerator`` does: the subset, then its dataset, then
``[general]``, then the job's own setting (sd-scripts' command line), then sd-scripts' default. The image
folder and the regularization folder are ignored while a dataset config is set (as in sd-scripts). Images are
listed, captions read and sizes taken exactly as for an ``N_name`` folder (``folders``).

Per subset, LoRA Loom honours ``image_dir``, ``num_repeats``, ``class_tokens``, ``caption_extension``,
``is_reg``, ``shuffle_caption``, ``keep_tokens``, ``flip_aug`` and the loss masks: ``alpha_mask`` (the images'
alpha channels, applied whether or not ``masked_loss`` is on, as sd-scripts does) and ``conditioning_data_dir``
(a mask image per image, same stem, its red channel; only with ``masked_loss``, as sd-scripts' schema); per dataset the bucket and size settings
and ``batch_size``. The options LoRA Loom applies to all images at once (``color_aug``, ``random_crop``,
the caption dropouts, ``prior_loss_weight``, ``max_token_length``) are taken when they equal the job's value
and refused otherwise; sd-scripts options LoRA Loom does not have (fine-tuning ``metadata_file``, ControlNet
caption prefix / suffix, …) are refused when set away from their default. Several ``[[datasets]]`` are merged when their dataset settings agree, refused when they differ (one
bucket plan here). Every refusal is a DataError naming ``dataset_config``.
"""
from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainer.data.dataset_plan import DataOptions, data_options_from_job, parse_resolution
from trainer.data.folders import (
    DataError, DatasetScan, DataWarning, Subset, SubsetOptions, _list_images, _read_image_record, _warn_other_caption_extension,
    normalize_caption_extension, scan_dataset,
)
from trainer.spec.sections import Job

SETTING = "dataset_config"
# Per-subset options honoured here (sd-scripts' defaults).
SUBSET_KEYS = {"image_dir": None, "num_repeats": 1, "class_tokens": None, "caption_extension": ".caption",
               "is_reg": False, "shuffle_caption": False, "keep_tokens": 0, "flip_aug": False, "alpha_mask": False,
               "conditioning_data_dir": None}
# Dataset options honoured here → the DataOptions field they set.
DATASET_KEYS = {"resolution": "resolution", "batch_size": "batch_size", "enable_bucket": "enable_bucket",
                "min_bucket_reso": "min_bucket_reso", "max_bucket_reso": "max_bucket_reso",
                "bucket_reso_steps": "bucket_reso_steps", "bucket_no_upscale": "bucket_no_upscale"}
# Options LoRA Loom applies to every image: taken when they equal the job's setting (the value here).
JOB_WIDE_KEYS = ("color_aug", "random_crop", "caption_dropout_rate", "caption_dropout_every_n_epochs",
                 "prior_loss_weight", "max_token_length")
# sd-scripts options LoRA Loom does not have, with their defaults: refused when set to anything else.
UNSUPPORTED_KEYS: dict[str, Any] = {
    "metadata_file": None, "caption_prefix": None,
    "caption_suffix": None, "caption_separator": ",", "keep_tokens_separator": None, "secondary_separator": None,
    "enable_wildcard": False, "caption_tag_dropout_rate": 0.0, "face_crop_aug_range": None, "token_warmup_min": 1,
    "token_warmup_step": 0, "custom_attributes": None, "validation_seed": None, "validation_split": 0.0,
    "resize_interpolation": None, "network_multiplier": 1.0, "cache_info": False, "debug_dataset": False,
}
NOT_SD_SCRIPTS = "is not an option of sd-scripts' dataset config"


def _fail(path: str, message: str) -> DataError:
    return DataError(f"dataset_config {path}: {message}", SETTING, path)


def read_dataset_toml(path: str) -> dict:
    file = Path(path).expanduser()
    if not file.is_file():
        raise _fail(path, "no such file")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise _fail(path, f"cannot be read as TOML ({error})") from None
    unknown = set(data) - {"general", "datasets"}
    if unknown:
        raise _fail(path, f"{', '.join(sorted(unknown))} {NOT_SD_SCRIPTS} (it has [general] and [[datasets]])")
    if not isinstance(data.get("datasets"), list) or not data["datasets"]:
        raise _fail(path, "has no [[datasets]] table")
    return data


def _job_value(job: Job, key: str) -> Any:
    """The job's value for an sd-scripts dataset key (sd-scripts' command-line fallback)."""
    return {"batch_size": job.data.train_batch_size, "resolution": job.data.max_resolution,
            "prior_loss_weight": job.noise_loss.prior_loss_weight}.get(key, job.get(key) if key in _JOB_KEYS else None)


_JOB_KEYS = {"caption_extension", "shuffle_caption", "keep_tokens", "flip_aug", "color_aug", "random_crop",
             "caption_dropout_rate", "caption_dropout_every_n_epochs", "max_token_length", "enable_bucket",
             "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale"}


def _lookup(key: str, tables: list[dict], job: Job, default: Any) -> Any:
    """sd-scripts' ``search_value``: the first table holding a value (not None), then the job, then the default."""
    for table in tables:
        if table.get(key) is not None:
            return table[key]
    value = _job_value(job, key)
    return default if value is None else value


def _check_keys(path: str, where: str, table: dict, allowed: set[str], job: Job) -> None:
    for key, value in table.items():
        if key in allowed or key == "subsets":
            continue
        if key in JOB_WIDE_KEYS:
            mine = _job_value(job, key)
            if value != mine and not (isinstance(value, (int, float)) and isinstance(mine, (int, float))
                                      and float(value) == float(mine)):
                raise _fail(path, f"{where}: {key} = {value!r} differs from the job's {key} ({mine!r}); LoRA Loom "
                                  f"applies {key} to every image: set it in the job instead")
        elif key in UNSUPPORTED_KEYS:
            if value != UNSUPPORTED_KEYS[key]:
                raise _fail(path, f"{where}: {key} = {value!r} is not supported by LoRA Loom (only the default "
                                  f"{UNSUPPORTED_KEYS[key]!r})")
        else:
            raise _fail(path, f"{where}: {key} {NOT_SD_SCRIPTS}")


def dataset_options(path: str, datasets: list[dict], general: dict, job: Job) -> DataOptions:
    """The DataOptions of the file's datasets (merged: they must agree)."""
    base = data_options_from_job(job)
    found: list[DataOptions] = []
    for dataset in datasets:
        values: dict[str, Any] = {}
        for key, field_name in DATASET_KEYS.items():
            value = _lookup(key, [dataset, general], job, None)
            if key == "resolution":
                value = parse_resolution(",".join(str(v) for v in value) if isinstance(value, list) else str(value))
            values[field_name] = value
        found.append(replace(base, **values))
    if any(options != found[0] for options in found[1:]):
        raise _fail(path, "its [[datasets]] differ in resolution, batch size or bucket settings; LoRA Loom trains "
                          "one dataset: give them the same values or train them separately")
    return found[0]


def scan_dataset_config(path: str, job: Job) -> tuple[DatasetScan, DataOptions]:
    """The subsets of a dataset TOML scanned like ``N_name`` folders, and the options its datasets set."""
    data = read_dataset_toml(path)
    general = data.get("general") or {}
    datasets = data["datasets"]
    _check_keys(path, "[general]", general, set(SUBSET_KEYS) | set(DATASET_KEYS), job)
    found_warnings: list[DataWarning] = []
    subsets: list[Subset] = []
    for d, dataset in enumerate(datasets, 1):
        _check_keys(path, f"dataset {d}", dataset, set(SUBSET_KEYS) | set(DATASET_KEYS), job)
        if not dataset.get("subsets"):
            raise _fail(path, f"dataset {d} has no [[datasets.subsets]]")
        for s, table in enumerate(dataset["subsets"], 1):
            where = f"dataset {d} subset {s}"
            _check_keys(path, where, table, set(SUBSET_KEYS), job)
            subsets.append(_scan_config_subset(path, where, [table, dataset, general], job, found_warnings))
    options = dataset_options(path, datasets, general, job)
    if not any(s.images and not s.is_reg for s in subsets):
        raise _fail(path, "none of its training subsets holds a usable image (see the warnings)")
    return DatasetScan([s for s in subsets if s.images], found_warnings), options


def _scan_config_subset(path: str, where: str, tables: list[dict], job: Job,
                        found_warnings: list[DataWarning]) -> Subset:
    image_dir = tables[0].get("image_dir")
    if not image_dir:
        raise _fail(path, f"{where} has no image_dir")
    folder = Path(str(image_dir)).expanduser()
    if not folder.is_dir():
        raise _fail(path, f"{where}: image_dir {folder} is not a folder")
    repeats = int(_lookup("num_repeats", tables, job, 1))
    if repeats < 1:
        raise _fail(path, f"{where}: num_repeats must be at least 1, got {repeats}")
    class_tokens = str(_lookup("class_tokens", tables, job, "") or "")
    caption_ext = normalize_caption_extension(_lookup("caption_extension", tables, job, ".caption"))
    keep_tokens = int(_lookup("keep_tokens", tables, job, 0))
    if keep_tokens < 0:
        raise _fail(path, f"{where}: keep_tokens must be 0 or more, got {keep_tokens}")
    mask_dir = _lookup("conditioning_data_dir", tables, job, None)
    if mask_dir is not None:
        if not job.noise_loss.masked_loss:
            raise _fail(path, f"{where}: conditioning_data_dir (a mask folder) needs masked_loss on (sd-scripts reads "
                              "mask folders only with it)")
        if not Path(str(mask_dir)).expanduser().is_dir():
            raise _fail(path, f"{where}: conditioning_data_dir {mask_dir} is not a folder")
        mask_dir = str(Path(str(mask_dir)).expanduser())
    options = SubsetOptions(bool(_lookup("shuffle_caption", tables, job, False)), keep_tokens,
                            bool(_lookup("flip_aug", tables, job, False)),
                            bool(_lookup("alpha_mask", tables, job, False)), mask_dir)
    subset = Subset(str(folder), repeats, class_tokens, bool(_lookup("is_reg", tables, job, False)), options=options)
    setting = SETTING
    for image in _list_images(folder, setting, found_warnings):
        record = _read_image_record(image, class_tokens, caption_ext, setting, found_warnings)
        if record is not None:
            subset.images.append(record)
    if not subset.images:
        found_warnings.append(DataWarning(f"{where} ({folder}) has no usable images and is skipped.", setting,
                                          str(folder)))
    _warn_other_caption_extension(subset, caption_ext, found_warnings)
    return subset


def scan_job_dataset(job: Job) -> tuple[DatasetScan, DataOptions]:
    """The dataset a job trains on: its dataset config when set, else the ``N_name`` folders of the image (and
    regularization) folder with the job's options."""
    if job.data.dataset_config.strip():
        scan, options = scan_dataset_config(job.data.dataset_config.strip(), job)
    else:
        scan = scan_dataset(job.data.train_data_dir, job.data.reg_data_dir or None,
                            job.data.caption_extension or ".caption")
        options = data_options_from_job(job)
    if job.noise_loss.masked_loss and not any(s.options and (s.options.alpha_mask or s.options.mask_dir)
                                              for s in scan.subsets):
        raise DataError("masked_loss needs masks, and no image has one: as in sd-scripts, give a dataset config "
                        "(dataset_config) whose subsets set alpha_mask = true (the images' alpha channels) or "
                        "conditioning_data_dir (a folder of mask images), or turn masked_loss off", "masked_loss")
    return scan, options
