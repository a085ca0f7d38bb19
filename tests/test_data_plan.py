"""The plan: buckets and counts, reg balancing and steps per epoch, worked out by hand."""
import pytest

from tests.test_data_folders import write_image
from trainer.data.batches import balance_reg_repeats, steps_per_epoch
from trainer.data.dataset_plan import DataOptions, data_options_from_job, option_errors, parse_resolution, plan_dataset
from trainer.data.folders import DataError, scan_dataset


def test_steps_per_epoch_counts_partial_batches_per_bucket():
    # ⌈10/4⌉ + ⌈13/4⌉ + ⌈1/4⌉ = 3 + 4 + 1 = 8, not ⌈24/4⌉ = 6.
    assert steps_per_epoch([10, 13, 1], 4) == 8
    assert steps_per_epoch({(64, 64): 6}, 3) == 2
    with pytest.raises(ValueError):
        steps_per_epoch([1], 0)


@pytest.mark.parametrize("train_samples, reg_repeats, expected", [
    # 5 reg images × 1 repeat vs 23 train samples: passes of +1 each: 5, 10, 15, 20, then 3 more → [5,5,5,4,4].
    (23, [1, 1, 1, 1, 1], [5, 5, 5, 4, 4]),
    # More reg than train: the first pass stops at 2 + 2 = 4 ≥ 3; the third image is unused.
    (3, [2, 2, 2], [2, 2, 0]),
    # Reg images with their own repeats: 3 + 3 = 6, then 7, 8, 9, 10 → [5, 5].
    (10, [3, 3], [5, 5]),
    (0, [1, 1], [0, 0]),
    (5, [], []),
])
def test_reg_balancing_follows_sd_scripts_loop(train_samples, reg_repeats, expected):
    assert balance_reg_repeats(train_samples, reg_repeats) == expected


def make_dataset(root):
    """10_dog: 640x480, 300x500, 48x40 (tiny); 3_cat: 640x480; reg 1_dog: five 512x512."""
    write_image(root / "img" / "10_dog" / "a.png", 640, 480)
    write_image(root / "img" / "10_dog" / "b.png", 300, 500)
    write_image(root / "img" / "10_dog" / "tiny.png", 48, 40)
    write_image(root / "img" / "3_cat" / "c.png", 640, 480)
    for i in range(5):
        write_image(root / "reg" / "1_dog" / f"r{i}.png", 512, 512)
    return scan_dataset(root / "img", root / "reg", ".txt")


def test_plan_with_predefined_buckets(tmp_path):
    scan = make_dataset(tmp_path)
    options = DataOptions(resolution=(512, 512), bucket_no_upscale=False, batch_size=4, prior_loss_weight=0.5)
    plan = plan_dataset(scan, options)
    # a, c (640x480) → 576x448; b (300x500, AR 0.6) → 384x640; tiny 48x40 (AR 1.2) → nearest 576/448 = 1.286
    # (512/512 errs by 0.2), upscaled. Train samples: 3·10 + 1·3 = 33; reg balanced to 33: seven passes of
    # +1 over 5 images = 35 ≥ 33 stops at 33 → [7, 7, 7, 6, 6].
    by_name = {i.path.rsplit("/", 1)[1]: i for i in plan.images}
    assert by_name["a.png"].bucket == (576, 448) and by_name["a.png"].resized == (597, 448)
    assert by_name["b.png"].bucket == (384, 640)
    assert by_name["tiny.png"].bucket == (576, 448) and by_name["tiny.png"].resized == (576, 480)
    assert (plan.train_images, plan.train_samples, plan.reg_images, plan.reg_samples) == (4, 33, 5, 33)
    assert [by_name[f"r{i}.png"].repeats for i in range(5)] == [7, 7, 7, 6, 6]
    assert by_name["r0.png"].loss_weight == 0.5 and by_name["a.png"].loss_weight == 1.0
    counts = {b.resolution: (b.images, b.samples, b.batches) for b in plan.buckets}
    # 576x448: a 10 + tiny 10 + c 3 = 23 samples → 6 batches; 384x640: 10 → 3; 512x512: 33 → 9.
    assert counts == {(576, 448): (3, 23, 6), (384, 640): (1, 10, 3), (512, 512): (5, 33, 9)}
    assert plan.steps_per_epoch == 18
    assert any("tiny.png" in w.message and "upscaled" in w.message for w in plan.warnings)
    assert plan.summary()["steps_per_epoch"] == 18


def test_plan_with_no_upscale_skips_images_smaller_than_a_step(tmp_path):
    make_dataset(tmp_path)
    write_image(tmp_path / "img" / "3_cat" / "small.png", 100, 200)
    scan = scan_dataset(tmp_path / "img", tmp_path / "reg", ".txt")
    plan = plan_dataset(scan, DataOptions(resolution=(512, 512), bucket_no_upscale=True, batch_size=1))
    by_name = {i.path.rsplit("/", 1)[1]: i for i in plan.images}
    assert "tiny.png" not in by_name
    assert any("tiny.png" in w.message and "skipped" in w.message for w in plan.warnings)
    # 640x480 = 307200 > 262144 → shrunk: w = √(A·4/3) = 591.2 → 576, h = 432 → 384 (AR 1.5, err .167);
    # h = 443.4 → 384, w = 512 (AR 1.333, err 0) → height wins: resized (512, 384), bucket (512, 384).
    assert by_name["a.png"].resized == (512, 384) and by_name["a.png"].bucket == (512, 384)
    # 300x500 fits (area 150000 ≤ A): bucket = floor to 64 = (256, 448), no warning.
    assert by_name["b.png"].bucket == (256, 448)
    # 100x200 is below min_bucket_reso 256: its own small bucket (64, 192), with a warning naming it.
    assert by_name["small.png"].bucket == (64, 192)
    small_warnings = [w for w in plan.warnings if "smallest bucket" in w.message]
    assert [w.path.rsplit("/", 1)[1] for w in small_warnings] == ["small.png"]
    # Train 2·10 + 2·3 = 26 samples, reg balanced to 26; batch 1 → one step per sample.
    assert plan.steps_per_epoch == plan.train_samples + plan.reg_samples == 26 + 26


def test_plan_without_buckets_uses_the_resolution(tmp_path):
    scan = make_dataset(tmp_path)
    plan = plan_dataset(scan, DataOptions(resolution=(512, 512), enable_bucket=False, batch_size=2))
    assert {i.bucket for i in plan.images} == {(512, 512)}
    # The seed's example: 1536x1024 would become 768x512; here 640x480 → scale 512/480 → (683, 512).
    assert {i.path.rsplit("/", 1)[1]: i.resized for i in plan.images}["a.png"] == (683, 512)
    assert plan.steps_per_epoch == (33 + 33 + 1) // 2


def test_unused_reg_images_are_reported(tmp_path):
    write_image(tmp_path / "img" / "1_x" / "a.png", 64, 64)
    for i in range(3):
        write_image(tmp_path / "reg" / "1_y" / f"r{i}.png", 64, 64)
    plan = plan_dataset(scan_dataset(tmp_path / "img", tmp_path / "reg", ".txt"),
                        DataOptions(resolution=(64, 64), min_bucket_reso=64, max_bucket_reso=128))
    assert plan.reg_samples == 1 and plan.reg_images == 1
    assert any("2 regularization image(s) are not used" in w.message for w in plan.warnings)


@pytest.mark.parametrize("changes, setting", [
    ({"cache_latents": True, "color_aug": True}, "color_aug"),
    ({"cache_latents_to_disk": True, "random_crop": True}, "random_crop"),
    ({"bucket_no_upscale": False, "min_bucket_reso": 640}, "min_bucket_reso"),
    ({"bucket_no_upscale": False, "max_bucket_reso": 256}, "max_bucket_reso"),
    ({"batch_size": 0}, "train_batch_size"),
    ({"vae_batch_size": -1}, "vae_batch_size"),
])
def test_option_conflicts_are_reported_before_start(tmp_path, changes, setting):
    options = DataOptions(resolution=(512, 512), **changes)
    assert [e.setting for e in option_errors(options)] == [setting]
    write_image(tmp_path / "img" / "1_x" / "a.png", 64, 64)
    with pytest.raises(DataError) as caught:
        plan_dataset(scan_dataset(tmp_path / "img", None, ".txt"), options)
    assert caught.value.setting == setting


def test_parse_resolution():
    assert parse_resolution("512,768") == (512, 768)
    assert parse_resolution("640") == (640, 640)
    assert parse_resolution(" 512 , 512 ") == (512, 512)
    for bad in ("", "a,b", "512,512,3", "0,512"):
        with pytest.raises(DataError) as caught:
            parse_resolution(bad)
        assert caught.value.setting == "max_resolution"


def test_options_from_a_job_with_every_data_setting_changed():
    from trainer.spec import job_from_values

    job = job_from_values(dict(
        max_resolution="768,512", enable_bucket=True, min_bucket_reso=320, max_bucket_reso=1024,
        bucket_reso_steps=32, bucket_no_upscale=False, flip_aug=True, caption_extension=".txt",
        train_batch_size=3, prior_loss_weight=0.7, max_data_loader_n_workers=2,
        persistent_data_loader_workers=True, cache_latents=True, cache_latents_to_disk=False, vae_batch_size=0))
    options = data_options_from_job(job)
    assert options.resolution == (768, 512) and options.batch_size == 3 and options.flip_aug
    assert (options.min_bucket_reso, options.bucket_reso_steps, options.bucket_no_upscale) == (320, 32, False)
    assert options.prior_loss_weight == 0.7 and options.caption_extension == ".txt"
    assert options.effective_vae_batch_size == 3 and options.num_workers == 2 and options.caching


def test_options_from_the_real_job_defaults():
    from trainer.spec import job_from_values

    job = job_from_values({"flip_aug": True, "train_batch_size": 2})
    options = data_options_from_job(job)
    assert options.resolution == parse_resolution(job.data.max_resolution)
    assert options.caption_extension == job.data.caption_extension
    assert options.flip_aug and options.batch_size == 2 and options.effective_vae_batch_size == 2


def test_without_buckets_the_size_is_floored_to_what_the_unet_takes(tmp_path):
    """kohya configs carry sizes such as 512,650: trained as 512,640 with a warning naming max_resolution."""
    from PIL import Image

    from trainer.data.dataset_plan import DataOptions, plan_dataset
    from trainer.data.folders import scan_dataset

    folder = tmp_path / "data" / "2_thing"
    folder.mkdir(parents=True)
    Image.new("RGB", (700, 900)).save(folder / "a.png")
    plan = plan_dataset(scan_dataset(tmp_path / "data", None, ".txt"),
                        DataOptions(resolution=(512, 650), enable_bucket=False))
    assert [b.resolution for b in plan.buckets] == [(512, 640)]
    assert any(w.setting == "max_resolution" for w in plan.warnings)
