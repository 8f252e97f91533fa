"""Decode once into shards: pixels identical to identify's, checked files, bounded reading."""

import json
import os

import numpy as np
import pytest

from mushroom.datasets import balanced_sample, load_split
from mushroom.preprocess import load_image
from mushroom.quality import photo_size
from mushroom.shards import MANIFEST_NAME, ShardError, open_split, prepare_shards, shard_arrays, shard_dataset


@pytest.fixture(scope="module")
def shards(small_dataset, tmp_path_factory):
    dataset, splits = small_dataset
    out = tmp_path_factory.mktemp("shards")
    prepare_shards(dataset, splits, out, [48, 64, 48], examples_per_shard=40)
    return out


@pytest.mark.parametrize("size", [48, 64])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_shard_pixels_are_bit_identical_to_load_image(small_dataset, shards, split, size):
    dataset, splits = small_dataset
    examples = load_split(dataset, splits, split)
    opened = open_split(shards, split, size)
    images, labels = shard_arrays(opened)
    assert len(images) == len(examples) == len(opened)
    np.testing.assert_array_equal(labels, examples.labels)
    np.testing.assert_array_equal(opened.labels, examples.labels)
    for i, path in enumerate(examples.paths):
        np.testing.assert_array_equal(images[i], load_image(path, size), err_msg=path)
    # The tf.data path, unshuffled, gives the same pixels as float32.
    batches = list(shard_dataset(opened, batch_size=16, training=False, one_hot=False))
    pixels = np.concatenate([x.numpy() for x, _ in batches])
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, images.astype(np.float32))
    # What the quality gate checks besides the pixels: each photo's stored size, from its header.
    assert opened.photo_sizes.tolist() == [list(photo_size(p)) for p in examples.paths]


def test_chosen_rows_in_one_pass_in_the_order_asked(small_dataset, shards):
    opened = open_split(shards, "train", 48)  # 96 photos in 3 files of 40
    images, labels = shard_arrays(opened)
    picked = balanced_sample(opened.labels, 30, 5)  # ascending, spread over every file
    sample, sample_labels = shard_arrays(opened, indices=picked)
    np.testing.assert_array_equal(sample, images[picked])
    np.testing.assert_array_equal(sample_labels, labels[picked])
    rows = np.array([95, 0, 41, 0, 39])  # any order, repeats, both ends, across file boundaries
    np.testing.assert_array_equal(shard_arrays(opened, indices=rows)[0], images[rows])
    out = np.zeros((len(opened) + 1, 48, 48, 3), np.uint8)
    shard_arrays(opened, out=out[1:])
    np.testing.assert_array_equal(out[1:], images)
    assert not out[0].any()
    assert len(shard_arrays(opened, indices=[])[0]) == 0
    with pytest.raises(IndexError, match="outside the split's 96 photos"):
        shard_arrays(opened, indices=[96])


def test_manifest_lists_every_file_with_its_checksum_and_sizes_once(shards, small_dataset):
    manifest = json.loads((shards / MANIFEST_NAME).read_text())
    assert manifest["sizes"] == [48, 64]
    on_disk = sorted(p.relative_to(shards).as_posix() for p in shards.glob("size=*/*.tfrecord"))
    assert sorted(manifest["files"]) == on_disk
    train = [e for e in manifest["files"].values() if e["split"] == "train" and e["size"] == 48]
    assert len(train) > 1 and sum(e["count"] for e in train) == manifest["splits"]["train"]["count"]


def test_training_order_is_shuffled_each_epoch_and_covers_every_photo_once(shards):
    opened = open_split(shards, "train", 48)
    ds = shard_dataset(opened, batch_size=8, training=True, seed=3, one_hot=False)
    epochs = [np.concatenate([y.numpy() for _, y in ds]) for _ in range(2)]
    for labels in epochs:
        assert sorted(labels.tolist()) == sorted(opened.labels.tolist())
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[0], opened.labels)
    x, y = next(iter(shard_dataset(opened, batch_size=8, training=True, seed=3)))
    assert x.shape == (8, 48, 48, 3) and y.shape == (8, opened.num_classes)


def test_rerun_with_the_same_inputs_does_nothing(small_dataset, shards):
    dataset, splits = small_dataset
    before = {p: p.stat().st_mtime_ns for p in shards.rglob("*") if p.is_file()}
    prepare_shards(dataset, splits, shards, [64, 48], examples_per_shard=40)
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*") if p.is_file()} == before


def test_a_damaged_shard_another_size_or_no_manifest_stop_with_the_name(small_dataset, tmp_path):
    dataset, splits = small_dataset
    out = tmp_path / "shards"
    prepare_shards(dataset, splits, out, [48], examples_per_shard=40)
    with pytest.raises(ShardError, match=r"no shards for image size 64 \(prepared: \[48\]\)"):
        open_split(out, "train", 64)
    with pytest.raises(ShardError, match="no 'holdout' split"):
        open_split(out, "holdout", 48)
    victim = sorted(out.glob("size=48/val-*.tfrecord"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"{victim.name}: checksum mismatch"):
        open_split(out, "val", 48)
    open_split(out, "train", 48)  # other files are fine
    # Preparing again repairs it: the damaged file fails verification and everything is rewritten.
    prepare_shards(dataset, splits, out, [48], examples_per_shard=40)
    open_split(out, "val", 48)
    os.remove(out / MANIFEST_NAME)
    with pytest.raises(ShardError, match="no manifest.json"):
        open_split(out, "val", 48)


def test_preparing_other_sizes_removes_the_old_files(small_dataset, tmp_path):
    dataset, splits = small_dataset
    out = tmp_path / "shards"
    prepare_shards(dataset, splits, out, [48], examples_per_shard=40)
    prepare_shards(dataset, splits, out, [32], examples_per_shard=40)
    assert not list(out.glob("size=48/*.tfrecord")) and list(out.glob("size=32/*.tfrecord"))


def test_shards_of_another_split_table_stop_naming_the_split(small_dataset, tmp_path):
    from mushroom import stages

    dataset, splits = small_dataset
    out = tmp_path / "shards"
    prepare_shards(dataset, splits, out, [32], examples_per_shard=40)
    for split in ("train", "val", "test"):
        open_split(out, split, 32, splits_dir=splits)  # the table they were made from
    other = tmp_path / "other-splits"
    stages.split(dataset, {"train": 0.6, "val": 0.2, "test": 0.2}, 8, other)  # another seed
    for split in ("train", "val", "test"):
        with pytest.raises(ShardError, match=rf"the '{split}' shards \(\d+ photos\) were prepared from another "
                                             rf"split table than {other} \(\d+ {split} photos"):
            open_split(out, split, 32, splits_dir=other)


def test_shards_of_the_earlier_format_ask_for_prepare_again(small_dataset, tmp_path):
    dataset, splits = small_dataset
    out = tmp_path / "shards"
    prepare_shards(dataset, splits, out, [32], examples_per_shard=40)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    (out / MANIFEST_NAME).write_text(json.dumps({**manifest, "schema_version": 1}))
    with pytest.raises(ShardError, match="shards of schema version 1 .* rerun the prepare stage"):
        open_split(out, "val", 32)
    prepare_shards(dataset, splits, out, [32], examples_per_shard=40)  # the fingerprint differs: rewritten
    assert json.loads((out / MANIFEST_NAME).read_text())["schema_version"] == 2
