"""Shards read in place from a local folder or a gs:// prefix: only the files of the size and
split a task reads, each checked in the pass that reads it, bytes counted.

The gs:// tests run against a real fake-gcs-server on 127.0.0.1 (the ``gcs_server`` fixture),
reached by google-cloud-storage via STORAGE_EMULATOR_HOST; the bytes it sends are counted on
the client's HTTP session as well as by the source.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mushroom.shards import (
    MANIFEST_NAME,
    ShardError,
    ShardSource,
    open_split,
    prepare_shards,
    shard_arrays,
    shard_dataset,
)


@pytest.fixture(scope="module")
def shards(small_dataset, tmp_path_factory):
    """Shards at 32 and 40 px, 40 photos a file (train: 96 photos in 3 files)."""
    dataset, splits = small_dataset
    out = tmp_path_factory.mktemp("streamed") / "shards"
    prepare_shards(dataset, splits, out, [32, 40], examples_per_shard=40)
    return out


def _files(shards, size, split) -> dict[str, dict]:
    manifest = json.loads((shards / MANIFEST_NAME).read_text())
    return {n: e for n, e in manifest["files"].items() if e["size"] == size and e["split"] == split}


def _manifest_bytes(shards) -> int:
    return (shards / MANIFEST_NAME).stat().st_size


def _damage(path) -> None:
    data = bytearray(path.read_bytes())
    data[12 + 500] ^= 0xFF  # a pixel of the first record: the file still parses
    path.write_bytes(bytes(data))


def _labels(ds) -> np.ndarray:
    return np.concatenate([y.numpy() for _, y in ds])


# --------------------------------------------------------------------------- local folder


def test_opening_on_read_reads_the_manifest_only_and_reading_only_that_size_and_split(shards, caplog):
    source = ShardSource(shards)
    val = open_split(source, "val", 40, verify="on_read")
    assert source.bytes_read == _manifest_bytes(shards)
    images, labels = shard_arrays(val)
    wanted = _files(shards, 40, "val")
    assert source.bytes_read == _manifest_bytes(shards) + sum(e["bytes"] for e in wanted.values())
    assert source.reads() == {"manifest.json": (_manifest_bytes(shards), 1),
                              "size=40 val": (sum(e["bytes"] for e in wanted.values()), len(wanted))}
    expected, expected_labels = shard_arrays(open_split(shards, "val", 40))  # checked when opened, as before
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, expected_labels)
    before = source.bytes_read
    shard_arrays(val)  # checked already: read in place, not again from the location
    assert source.bytes_read == before
    line = source.summary()
    assert line.startswith("shards: read ") and "size=40 val: 1 file" in line and str(shards) in line
    assert source.metrics()["shards_bytes_read"] == before
    with caplog.at_level("INFO", logger="mushroom.shards.reads"):
        assert source.log_summary("evaluate m") == line
    assert [r.getMessage() for r in caplog.records if r.name == "mushroom.shards.reads"] == [f"evaluate m: {line}"]
    assert source.metrics()["shards_artifact_bytes"] == sum(p.stat().st_size for p in shards.rglob("*")
                                                            if p.is_file())


def test_rows_of_one_file_read_only_that_file(shards):
    source = ShardSource(shards)
    train = open_split(source, "train", 32, verify="on_read")
    names = sorted(_files(shards, 32, "train"))
    assert len(names) == 3
    images, _ = shard_arrays(train, indices=[45, 41])  # both in the second file (rows 40-79)
    assert source.reads()["size=32 train"] == (_files(shards, 32, "train")[names[1]]["bytes"], 1)
    np.testing.assert_array_equal(images, shard_arrays(open_split(shards, "train", 32))[0][[45, 41]])


def test_a_damaged_file_read_in_one_pass_stops_naming_it(shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    victim = copy / sorted(_files(shards, 32, "train"))[1]
    _damage(victim)
    train = open_split(copy, "train", 32, verify="on_read")  # nothing but the manifest read yet
    with pytest.raises(ShardError, match=f"{victim.name}: checksum mismatch .* rerun the prepare stage"):
        shard_arrays(train)
    with pytest.raises(ShardError, match=f"{victim.name}: checksum mismatch"):
        shard_arrays(train, indices=[41])  # the file is read whole for its checksum, not only the row
    shard_arrays(train, indices=[0, 95])  # rows of the other files: the damaged one is not read
    ds = shard_dataset(open_split(copy, "train", 32, verify="on_read"), 8, training=True, seed=1)
    with pytest.raises(Exception, match=f"{victim.name}: checksum mismatch") as err:
        _labels(ds)
    assert "ShardError" in str(err.value)  # TensorFlow's error carries the ShardError's message
    with pytest.raises(ShardError, match=f"{victim.name}: checksum mismatch"):
        open_split(copy, "train", 32)  # verify=True still checks every file when opened
    victim.write_bytes(victim.read_bytes()[:-100])  # cut short: the framing itself breaks
    with pytest.raises(ShardError, match=f"{victim.name}: damaged at byte .* rerun the prepare stage"):
        shard_arrays(open_split(copy, "train", 32, verify="on_read"), indices=[41])


def test_a_dataset_read_on_demand_is_the_dataset_read_in_place(shards):
    source = ShardSource(shards)
    lazy = open_split(source, "train", 32, verify="on_read")
    ds = shard_dataset(lazy, 8, training=True, seed=3, one_hot=False)
    assert source.bytes_read == _manifest_bytes(shards)  # building the dataset reads nothing
    eager = shard_dataset(open_split(shards, "train", 32), 8, training=True, seed=3, one_hot=False)
    for _ in range(2):  # the same shuffled order, epoch after epoch
        np.testing.assert_array_equal(_labels(ds), _labels(eager))
    train_bytes = sum(e["bytes"] for e in _files(shards, 32, "train").values())
    assert source.reads()["size=32 train"] == (train_bytes, 3)  # each file checked once, over two epochs
    val = shard_dataset(open_split(source, "val", 32, verify="on_read"), 8, training=False, one_hot=False)
    np.testing.assert_array_equal(_labels(val), open_split(shards, "val", 32).labels)


def test_other_schemes_are_refused_by_name():
    with pytest.raises(ShardError, match=r"minio://mlpipeline/v2/artifacts/x: .* not minio://"):
        ShardSource("minio://mlpipeline/v2/artifacts/x")


def test_a_missing_file_is_named(shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    victim = copy / sorted(_files(shards, 40, "test"))[0]
    victim.unlink()
    with pytest.raises(ShardError, match=f"{victim.name}: file missing"):
        shard_arrays(open_split(copy, "test", 40, verify="on_read"))


# --------------------------------------------------------------------------- gs:// (emulator)


@pytest.fixture
def gcs_shards(shards, gcs_bucket, gcs_client):
    """The shards uploaded to the emulator: their gs:// URI, the client, and the object bytes
    that reach the client over HTTP (Content-Length of each media download, appended as they come)."""
    from mushroom.storage import upload_folders

    uri = upload_folders({"shards": shards}, f"gs://{gcs_bucket.name}/root", "run", client=gcs_client) + "/shards"
    received = []

    def count(response, *args, **kwargs):
        if "/download/" in response.request.url:  # object media, not metadata
            received.append(int(response.headers.get("Content-Length", 0)))

    gcs_client._http.hooks["response"].append(count)
    return uri, gcs_client, received


def test_gs_reads_only_the_files_of_one_size_and_split(shards, gcs_shards):
    uri, client, received = gcs_shards
    with ShardSource(uri, client=client) as source:
        val = open_split(source, "val", 40, splits_dir=None, verify="on_read")
        images, labels = shard_arrays(val)
        expected, expected_labels = shard_arrays(open_split(shards, "val", 40))
        np.testing.assert_array_equal(images, expected)
        np.testing.assert_array_equal(labels, expected_labels)
        wanted = sum(e["bytes"] for e in _files(shards, 40, "val").values())
        assert source.bytes_read == sum(received) == _manifest_bytes(shards) + wanted
        assert f"of {source.artifact_bytes() / 1e6:.1f} MB in the artifact" in source.summary()
        assert source.artifact_bytes() == sum(p.stat().st_size for p in shards.rglob("*") if p.is_file())


def test_gs_training_streams_each_file_once_into_a_checked_scratch_copy(shards, gcs_shards):
    uri, client, received = gcs_shards
    source = ShardSource(uri, client=client)
    train = open_split(source, "train", 32, verify="on_read")
    ds = shard_dataset(train, 8, training=True, seed=3, one_hot=False)
    eager = shard_dataset(open_split(shards, "train", 32), 8, training=True, seed=3, one_hot=False)
    for _ in range(3):
        np.testing.assert_array_equal(_labels(ds), _labels(eager))
    train_bytes = sum(e["bytes"] for e in _files(shards, 32, "train").values())
    assert sum(received) == source.bytes_read == _manifest_bytes(shards) + train_bytes  # not 3 epochs' worth
    spool = source._spool
    assert sorted(p.relative_to(spool).as_posix() for p in spool.rglob("*.tfrecord")) == sorted(train.names)
    before = source.bytes_read
    shard_arrays(train)  # the checked copies serve later reads too
    assert source.bytes_read == before
    source.close()
    assert not spool.exists()


def test_gs_damaged_object_stops_naming_it(shards, gcs_shards, gcs_bucket):
    uri, client, _ = gcs_shards
    name = sorted(_files(shards, 32, "val"))[0]
    blob = gcs_bucket.blob(f"root/run/shards/{name}")
    data = bytearray(blob.download_as_bytes())
    data[12 + 500] ^= 0xFF
    blob.upload_from_string(bytes(data))
    source = ShardSource(uri, client=client)
    with pytest.raises(ShardError, match=f"{uri}/{name}: checksum mismatch"):
        shard_arrays(open_split(source, "val", 32, verify="on_read"))
    with pytest.raises(ShardError, match=f"{uri}/{name}: checksum mismatch"):
        open_split(source, "val", 32)  # checked when opened: the scratch copy is not kept
    assert not list(source._spool.rglob("*.tfrecord"))
    with pytest.raises(ShardError, match="no manifest.json"):
        open_split(ShardSource(f"{uri}-missing", client=client), "val", 32)
