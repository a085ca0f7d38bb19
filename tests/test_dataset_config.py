"""``dataset_config``: sd-scripts' dataset TOML. Several subsets with their own repeats, captions, keep tokens and
flips; values looked up subset → dataset → [general] → the job; what LoRA Loom cannot honour refused, naming
the setting; the plan lists each subset; a short run trains on it."""
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer.data.dataset_config import scan_job_dataset
from trainer.data.dataset_plan import plan_dataset
from trainer.data.folders import DataError
from trainer.data.training_data import TrainingData
from trainer.kohya import import_kohya_config
from trainer.loop import processed_captions
from trainer.plan import make_plan
from trainer.spec import SETTINGS, job_from_values
from trainer.spec.checks import check_paths, check_settings

from .effects_runs import run_in_session
from .test_data_folders import write_image


def two_folders(root: Path) -> tuple[Path, Path]:
    """a/: 2 images captioned "a, b, c, d"; b/: 3 images captioned "x, y, z" (as .txt)."""
    for name, count, caption in (("a", 2, "a, b, c, d"), ("b", 3, "x, y, z")):
        for i in range(count):
            write_image(root / name / f"{i}.png", 64, 64, seed=i)
            (root / name / f"{i}.txt").write_text(caption)
    return root / "a", root / "b"


def write_config(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def config_text(a: Path, b: Path, extra_general: str = "", extra_subset: str = "") -> str:
    return f"""
[general]
caption_extension = ".txt"
shuffle_caption = true
{extra_general}
[[datasets]]
resolution = 64
batch_size = 2
bucket_reso_steps = 8
[[datasets.subsets]]
image_dir = "{a}"
num_repeats = 3
keep_tokens = 2
flip_aug = true
{extra_subset}
[[datasets.subsets]]
image_dir = "{b}"
num_repeats = 1
shuffle_caption = false
class_tokens = "thing"
"""


def job_with(config: str, **values):
    return job_from_values({"dataset_config": config, "train_data_dir": "", "keep_tokens": 0, **values})


def test_each_subset_has_its_own_repeats_captions_and_flips(tmp_path):
    a, b = two_folders(tmp_path)
    job = job_with(write_config(tmp_path / "ds.toml", config_text(a, b)))
    scan, options = scan_job_dataset(job)
    assert (options.resolution, options.batch_size, options.bucket_reso_steps) == ((64, 64), 2, 8)
    plan = plan_dataset(scan, options)
    first, second = plan.subsets
    assert (first.repeats, first.images, first.samples, first.keep_tokens, first.shuffle_caption, first.flip_aug) == \
        (3, 2, 6, 2, True, True)  # shuffle_caption from [general]
    assert (second.repeats, second.samples, second.keep_tokens, second.shuffle_caption, second.flip_aug) == \
        (1, 3, 0, False, False)  # keep_tokens from the job (0)
    assert plan.train_samples == 9 and plan.steps_per_epoch == math.ceil(9 / 2)
    assert plan.images[0].caption == "a, b, c, d"  # caption_extension .txt from [general]
    # the plan shows each subset
    summary = make_plan(job)["dataset"]["subsets"]
    assert [(Path(s["folder"]).name, s["repeats"], s["keep_tokens"]) for s in summary] == [("a", 3, 2), ("b", 1, 0)]


def test_the_batches_carry_each_subsets_options(tmp_path):
    a, b = two_folders(tmp_path)
    job = job_with(write_config(tmp_path / "ds.toml", config_text(a, b)))
    data = TrainingData(*scan_job_dataset(job), seed=1)
    flips = {"a": set(), "b": set()}
    session = SimpleNamespace(job=job, seed=1)
    for epoch in (1, 2, 3):
        for step, batch in enumerate(data.epoch(epoch)):
            captions = processed_captions(session, batch, epoch, step)
            for path, flipped, caption, options in zip(batch.image_paths, batch.flipped, captions,
                                                       batch.caption_options):
                folder = Path(path).parent.name
                flips[folder].add(flipped)
                if folder == "a":
                    assert options == (True, 2) and caption.startswith("a, b, ")  # 2 kept, the rest shuffled
                else:
                    assert options == (False, 0) and caption == "x, y, z"
    assert flips == {"a": {True, False}, "b": {False}}


@pytest.mark.parametrize("extra_general, extra_subset, words", [
    ("", "enable_wildcard = true", "enable_wildcard = True is not supported"),
    ("", 'caption_prefix = "photo of"', "caption_prefix"),
    ("color_aug = true", "", "color_aug = True differs from the job's color_aug (False)"),
    ("", "no_such_option = 1", "no_such_option is not an option of sd-scripts' dataset config"),
    ("", "num_repeats = 0", "num_repeats must be at least 1"),
])
def test_what_cannot_be_honoured_is_refused_naming_dataset_config(tmp_path, extra_general, extra_subset, words):
    a, b = two_folders(tmp_path)
    text = config_text(a, b, extra_general, extra_subset).replace("num_repeats = 3\n", "") \
        if "num_repeats" in extra_subset else config_text(a, b, extra_general, extra_subset)
    job = job_with(write_config(tmp_path / "ds.toml", text))
    with pytest.raises(DataError) as error:
        scan_job_dataset(job)
    assert error.value.setting == "dataset_config" and words in str(error.value)
    problems = [p for p in check_paths(job) if p.setting == "dataset_config"]  # validate and the page
    assert problems and words in problems[0].message


def test_a_job_wide_option_equal_to_the_jobs_is_taken(tmp_path):
    a, b = two_folders(tmp_path)
    job = job_with(write_config(tmp_path / "ds.toml", config_text(a, b, "color_aug = true")), color_aug=True,
                   cache_latents=False)
    assert scan_job_dataset(job)[0].subsets


def test_datasets_that_disagree_are_refused_and_agreeing_ones_merged(tmp_path):
    a, b = two_folders(tmp_path)
    two = f"""
[[datasets]]
resolution = 64
[[datasets.subsets]]
image_dir = "{a}"
[[datasets]]
resolution = {{RES}}
[[datasets.subsets]]
image_dir = "{b}"
"""
    merged = scan_job_dataset(job_with(write_config(tmp_path / "same.toml", two.replace("{RES}", "64"))))
    assert len(merged[0].subsets) == 2
    with pytest.raises(DataError) as error:
        scan_job_dataset(job_with(write_config(tmp_path / "differ.toml", two.replace("{RES}", "128"))))
    assert "differ in resolution" in str(error.value)


def test_the_folders_are_not_needed_and_a_missing_file_is_named(tmp_path):
    a, b = two_folders(tmp_path)
    job = job_with(write_config(tmp_path / "ds.toml", config_text(a, b)))
    assert not [p for p in check_paths(job) if p.setting in ("train_data_dir", "dataset_config")]
    missing = job_with(str(tmp_path / "nope.toml"))
    data_problems = [p.setting for p in check_paths(missing) if p.setting in ("dataset_config", "train_data_dir")]
    assert data_problems == ["dataset_config"]
    assert not [p for p in check_settings(missing, SETTINGS) if p.setting == "train_data_dir"]


def test_a_kohya_config_with_a_dataset_config_imports_it(tmp_path):
    result = import_kohya_config({"LoRA_type": "Standard", "dataset_config": "./test/config/dataset.toml",
                                  "train_data_dir": ""})
    assert result.values["dataset_config"] == "./test/config/dataset.toml"
    assert "dataset_config" not in {u.key for u in result.unmapped}


def test_a_run_trains_on_the_subsets(demo_dir, tmp_path):
    source = Path(demo_dir) / "data" / "10_shapes"
    folders = [tmp_path / "one", tmp_path / "two"]
    for folder, pngs in zip(folders, (sorted(source.glob("*.png"))[:2], sorted(source.glob("*.png"))[2:3])):
        folder.mkdir()
        for png in pngs:
            shutil.copyfile(png, folder / png.name)
            shutil.copyfile(png.with_suffix(".txt"), folder / f"{png.stem}.txt")
    config = write_config(tmp_path / "ds.toml", f"""
[general]
caption_extension = ".txt"
[[datasets]]
[[datasets.subsets]]
image_dir = "{folders[0]}"
num_repeats = 2
[[datasets.subsets]]
image_dir = "{folders[1]}"
num_repeats = 1
keep_tokens = 1
""")
    run = run_in_session(demo_dir, tmp_path / "work", dataset_config=config, train_data_dir="", epoch=1,
                         train_batch_size=1, max_train_steps=0, save_every_n_epochs=0, sample_every_n_epochs=0,
                         sample_every_n_steps=0, network_dim=4)
    assert run.status == "completed" and len(run.losses) == 5  # 2 × 2 + 1 × 1 samples, batch 1
    assert all(math.isfinite(loss) for loss in run.losses)
