"""Epochs of batches: one bucket per batch, repeats honoured, seeded order and augmentation, workers."""
from collections import Counter

import pytest
import torch

from tests.test_data_folders import write_image
from trainer.data import images
from trainer.data.batches import epoch_batch_slots
from trainer.data.dataset_plan import DataOptions
from trainer.data.buckets import crop_offsets
from trainer.data.folders import DataError, scan_dataset
from trainer.data.training_data import TrainingData

# Buckets for 64x64, steps 16, 32..128: 96x64 (AR 1.5) → (80, 48), resized (80, 53), so its crop top can move;
# 64x96 → (48, 80), resized (53, 80); 64x64 → (64, 64).
OPTIONS = dict(resolution=(64, 64), min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=16,
               bucket_no_upscale=False, caption_extension=".txt")


def small_dataset(root):
    """3_a: two 96x64 landscapes (one captioned) and a 64x64 square; 2_b: a 64x96 portrait; reg 1_r: one square."""
    write_image(root / "img" / "3_a" / "land1.png", 96, 64, seed=1)
    (root / "img" / "3_a" / "land1.txt").write_text("a red thing", encoding="utf-8")
    write_image(root / "img" / "3_a" / "land2.png", 96, 64, seed=2)
    write_image(root / "img" / "3_a" / "square.png", 64, 64, seed=3)
    write_image(root / "img" / "2_b" / "tall.png", 64, 96, seed=4)
    write_image(root / "reg" / "1_r" / "reg.png", 64, 64, seed=5)
    return scan_dataset(root / "img", root / "reg", ".txt")


def collect(data, epoch):
    return list(data.epoch(epoch))


def test_epoch_slots_shuffle_within_and_across_buckets():
    members = {(64, 64): [0, 0, 1, 1, 2], (96, 64): [3, 3, 3]}
    slots = epoch_batch_slots(members, 2, seed=7, epoch=1)
    assert [len(s.image_indices) for s in slots].count(1) == 2  # one partial batch per bucket
    assert sorted(i for s in slots for i in s.image_indices) == [0, 0, 1, 1, 2, 3, 3, 3]
    assert all(set(s.image_indices) <= set(members[s.bucket]) for s in slots)
    assert [s.position for s in slots] == list(range(len(slots)))
    assert slots == epoch_batch_slots(members, 2, seed=7, epoch=1)
    orders = {tuple(s.image_indices for s in epoch_batch_slots(members, 2, seed=7, epoch=e)) for e in range(1, 9)}
    assert len(orders) > 1


def test_an_epoch_holds_every_sample_repeats_times_in_single_bucket_batches(tmp_path):
    data = TrainingData(small_dataset(tmp_path), DataOptions(batch_size=2, prior_loss_weight=0.25, **OPTIONS), seed=3)
    batches = collect(data, 1)
    assert len(batches) == data.steps_per_epoch == data.plan.steps_per_epoch
    counts = Counter(path.rsplit("/", 1)[1] for b in batches for path in b.image_paths)
    # train samples: 3·3 + 1·2 = 11; the one reg image is balanced up to 11 repeats.
    assert counts == {"land1.png": 3, "land2.png": 3, "square.png": 3, "tall.png": 2, "reg.png": 11}
    planned_bucket = {i.path: i.bucket for i in data.plan.images}
    assert set(planned_bucket.values()) == {(80, 48), (48, 80), (64, 64)}
    for batch in batches:
        assert batch.latents is None
        assert batch.pixels.shape == (len(batch), 3, batch.bucket[1], batch.bucket[0])
        assert all(planned_bucket[p] == batch.bucket for p in batch.image_paths)
        assert batch.pixels.min() >= -1.0 and batch.pixels.max() <= 1.0
        for path, caption, weight, is_reg in zip(batch.image_paths, batch.captions, batch.loss_weights, batch.is_reg):
            assert weight.item() == (0.25 if is_reg else 1.0)
            assert caption == {"land1.png": "a red thing", "reg.png": "r", "tall.png": "b"}.get(
                path.rsplit("/", 1)[1], "a")


def test_same_seed_same_batches_other_epoch_other_order(tmp_path):
    scan = small_dataset(tmp_path)
    options = DataOptions(batch_size=2, flip_aug=True, random_crop=True, color_aug=True, **OPTIONS)
    first = collect(TrainingData(scan, options, seed=11), 1)
    again = collect(TrainingData(scan, options, seed=11), 1)
    assert [b.image_paths for b in first] == [b.image_paths for b in again]
    assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(first, again))
    second_epoch = collect(TrainingData(scan, options, seed=11), 2)
    assert [b.image_paths for b in first] != [b.image_paths for b in second_epoch]


def test_flip_and_random_crop_reproduce_from_the_reported_window(tmp_path):
    scan = small_dataset(tmp_path)
    data = TrainingData(scan, DataOptions(batch_size=1, flip_aug=True, random_crop=True, **OPTIONS), seed=5)
    planned = {i.path: i for i in data.plan.images}
    flips, windows = Counter(), set()
    for epoch in (1, 2, 3):
        for batch in data.epoch(epoch):
            item = planned[batch.image_paths[0]]
            flipped = batch.flipped[0]
            left, top = batch.crop_top_lefts[0]
            if flipped:  # the window was reported in mirrored coordinates
                left = item.resized[0] - item.bucket[0] - left
            expected = images.prepare_pixels(item.path, item.resized, item.bucket, (left, top), flipped)
            assert torch.equal(batch.pixels[0], expected)
            flips[flipped] += 1
            if item.path.endswith("land1.png"):
                windows.add((left, top))
    assert flips[True] > 5 and flips[False] > 5
    assert len(windows) > 1 and all(left == 0 and 0 <= top <= 5 for left, top in windows)


def test_centre_crop_without_random_crop(tmp_path):
    data = TrainingData(small_dataset(tmp_path), DataOptions(batch_size=1, **OPTIONS), seed=0)
    for batch in data.epoch(1):
        item = next(i for i in data.plan.images if i.path == batch.image_paths[0])
        assert batch.crop_top_lefts[0] == crop_offsets(item.resized, item.bucket)
        assert batch.flipped == [False]


def test_color_aug_changes_some_samples_only(tmp_path):
    scan = small_dataset(tmp_path)
    plain = TrainingData(scan, DataOptions(batch_size=1, **OPTIONS), seed=2)
    coloured = TrainingData(scan, DataOptions(batch_size=1, color_aug=True, **OPTIONS), seed=2)
    changed = [not torch.equal(a.pixels, b.pixels) for a, b in zip(plain.epoch(1), coloured.epoch(1))]
    assert 0 < sum(changed) < len(changed)  # p = 0.33 per sample, 22 samples


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_give_the_same_batches(tmp_path, persistent):
    scan = small_dataset(tmp_path)
    base = DataOptions(batch_size=2, flip_aug=True, random_crop=True, **OPTIONS)
    in_process = TrainingData(scan, base, seed=4)
    workers = TrainingData(scan, DataOptions(**{**vars(base), "num_workers": 1, "persistent_workers": persistent}),
                           seed=4)
    for epoch in (1, 2):
        expected, got = collect(in_process, epoch), collect(workers, epoch)
        assert [b.image_paths for b in got] == [b.image_paths for b in expected]
        assert all(torch.equal(a.pixels, b.pixels) for a, b in zip(got, expected))
    assert (workers._loader is not None) == persistent


def test_an_image_broken_after_the_scan_names_the_file(tmp_path):
    scan = small_dataset(tmp_path)
    data = TrainingData(scan, DataOptions(batch_size=1, **OPTIONS), seed=0)
    broken = tmp_path / "img" / "2_b" / "tall.png"
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(DataError) as caught:
        collect(data, 1)
    assert str(broken) in caught.value.message and caught.value.path == str(broken)


def test_epochs_are_numbered_from_one(tmp_path):
    data = TrainingData(small_dataset(tmp_path), DataOptions(**OPTIONS), seed=0)
    with pytest.raises(ValueError):
        data.batch_slots(0)
