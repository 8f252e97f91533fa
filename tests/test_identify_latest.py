"""``identify`` follows a publish destination's ``latest``: one small read per call, and only
the bundle of the run it points at is downloaded, verified, and cached for offline use.

The bundles here are file layouts only (``resolve_bundle`` never loads a model); answering
photos from a followed ``latest`` is tested in test_identify.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from google.cloud import storage

from mushroom import locate
from mushroom.bundle import BundleError
from mushroom.locate import resolve_bundle
from mushroom.publish import publish_run
from tests.helpers import make_run_folders, relative_files, run


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """Object names downloaded to files (bundle files; pointers are read into memory)."""
    names: list[str] = []
    real = storage.Blob.download_to_filename

    def recording(self, filename, *args, **kwargs):
        names.append(self.name)
        return real(self, filename, *args, **kwargs)

    monkeypatch.setattr(storage.Blob, "download_to_filename", recording)
    return names


def test_a_gcs_publish_root_is_followed_on_every_call_and_one_run_is_downloaded(
        tmp_path, gcs_client, gcs_bucket, downloads, monkeypatch, caplog):
    root = f"gs://{gcs_bucket.name}/published"
    cache = tmp_path / "cache"
    first = make_run_folders(tmp_path / "a")
    second = make_run_folders(tmp_path / "b", label="v2")
    publish_run(*first, root, run(job_id="001"), client=gcs_client)
    publish_run(*make_run_folders(tmp_path / "old", label="old"), root, run(job_id="000", minutes=-5),
                client=gcs_client)  # an older run beside it: never downloaded

    bundle = resolve_bundle(root, cache)

    assert bundle == cache / gcs_bucket.name / "published" / "run-001" / "bundle"
    assert relative_files(bundle) == relative_files(first[0])
    assert sorted(downloads) == sorted(f"published/run-001/bundle/{k}" for k in relative_files(first[0]))
    assert sorted(p.name for p in (cache / gcs_bucket.name / "published").iterdir()) == ["latest", "run-001"]

    downloads.clear()
    assert resolve_bundle(root, cache) == bundle and downloads == []  # same latest: nothing downloaded

    publish_run(*second, root, run(job_id="002", minutes=1), client=gcs_client)
    newer = resolve_bundle(root, cache)  # the next call picks up the new latest

    assert newer == cache / gcs_bucket.name / "published" / "run-002" / "bundle"
    assert relative_files(newer) == relative_files(second[0])
    assert sorted(downloads) == sorted(f"published/run-002/bundle/{k}" for k in relative_files(second[0]))

    # Offline (here: no storage library): the bundle cached last answers, with a notice.
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    with caplog.at_level(logging.WARNING, logger="mushroom.identify"):
        assert resolve_bundle(root, cache) == newer
    assert f"notice: {root}: reading a gs:// bundle needs google-cloud-storage" in caplog.text
    assert f"using the bundle cached at {newer}, which may be out of date" in caplog.text


def test_an_unreachable_server_falls_back_to_the_cache_quickly(tmp_path, gcs_client, gcs_bucket, monkeypatch,
                                                              caplog):
    root = f"gs://{gcs_bucket.name}/published"
    cache = tmp_path / "cache"
    publish_run(*make_run_folders(tmp_path / "a"), root, run(), client=gcs_client)
    bundle = resolve_bundle(root, cache)

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(locate, "LATEST_TIMEOUT_S", 1.0)
    with caplog.at_level(logging.WARNING, logger="mushroom.identify"):
        assert resolve_bundle(root, cache) == bundle
    assert "notice: " in caplog.text and "cannot be read" in caplog.text

    with pytest.raises(BundleError, match=f"{root}: cannot be read .*; no cached copy in"):
        resolve_bundle(root, tmp_path / "empty-cache")


def test_a_downloaded_file_that_fails_its_checksum_is_never_used(tmp_path, gcs_client, gcs_bucket, monkeypatch):
    root = f"gs://{gcs_bucket.name}/published"
    publish_run(*make_run_folders(tmp_path / "a"), root, run(), client=gcs_client)
    real = storage.Blob.download_to_filename

    def damaging(self, filename, *args, **kwargs):
        real(self, filename, *args, **kwargs)
        Path(filename).write_bytes(b"damaged")

    monkeypatch.setattr(storage.Blob, "download_to_filename", damaging)
    with pytest.raises(BundleError, match=r"downloaded CRC32C .* does not match"):
        resolve_bundle(root, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("metadata.json"))


def test_a_gcs_run_folder_is_downloaded_once_then_read_offline(tmp_path, gcs_client, gcs_bucket, downloads,
                                                              monkeypatch):
    root = f"gs://{gcs_bucket.name}/published"
    folders = make_run_folders(tmp_path / "a")
    publish_run(*folders, root, run(), client=gcs_client)

    bundle = resolve_bundle(f"{root}/run-001", tmp_path / "cache")

    assert bundle == tmp_path / "cache" / gcs_bucket.name / "published" / "run-001" / "bundle"
    assert all(name.startswith("published/run-001/bundle/") for name in downloads)  # not the evaluation
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # a published run never changes
    assert resolve_bundle(f"{root}/run-001", tmp_path / "cache") == bundle


def test_a_folder_publish_root_is_followed_on_every_call(tmp_path):
    root = tmp_path / "published"
    publish_run(*make_run_folders(tmp_path / "a"), str(root), run(job_id="001"))
    assert resolve_bundle(root) == root / "run-001" / "bundle"
    publish_run(*make_run_folders(tmp_path / "b", label="v2"), str(root), run(job_id="002", minutes=1))
    assert resolve_bundle(root) == root / "run-002" / "bundle"
