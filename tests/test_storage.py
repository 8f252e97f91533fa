"""The storage layer: immutable verified uploads, downloads and the download cache, locally and on GCS.

The GCS tests run against a real fake-gcs-server on 127.0.0.1 (the ``gcs_server`` fixture),
reached by google-cloud-storage via STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.cloud import storage as gcs

from mushroom import storage as storage_module
from mushroom.storage import (
    ConflictError,
    GcsStore,
    StorageError,
    cache_path,
    compute_checksums,
    download_atomically,
    download_prefix,
    open_store,
    upload_folders,
    user_cache_dir,
)

BUNDLE_FILES = {
    "labels.json": b'["amanita_muscaria", "boletus_edulis"]\n',
    "model_int8.tflite": bytes(range(256)) * 64,
    "extra/species.csv": b"taxon_id,scientific_name\n48715,Amanita muscaria\n",
}


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def relative_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- local folder


def test_local_upload_lands_under_the_key_without_a_latest_pointer(tmp_path):
    bundle = write_files(tmp_path / "src", BUNDLE_FILES)
    dest = tmp_path / "cache"

    uri = upload_folders({"bundle": bundle}, str(dest), "dataset-1")

    assert uri == str((dest / "dataset-1").resolve())
    assert relative_files(dest / "dataset-1" / "bundle") == BUNDLE_FILES
    assert [p.name for p in dest.iterdir()] == ["dataset-1"]  # the pointer is publish's business
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.rglob("*")}
    assert upload_folders({"bundle": bundle}, str(dest), "dataset-1") == uri
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.rglob("*")} == before  # nothing rewritten


def test_local_upload_never_overwrites_different_or_extra_files(tmp_path):
    bundle = write_files(tmp_path / "src", BUNDLE_FILES)
    dest = tmp_path / "cache"
    upload_folders({"bundle": bundle}, str(dest), "k")

    (bundle / "labels.json").write_bytes(b'["changed"]\n')
    with pytest.raises(ConflictError, match=r"k/bundle/labels\.json \(size") as err:
        upload_folders({"bundle": bundle}, str(dest), "k")
    assert "species.csv" not in str(err.value)  # only the file that differs is named
    assert (dest / "k" / "bundle" / "labels.json").read_bytes() == BUNDLE_FILES["labels.json"]

    (bundle / "labels.json").write_bytes(BUNDLE_FILES["labels.json"])
    (bundle / "extra" / "species.csv").unlink()
    with pytest.raises(ConflictError, match=r"species\.csv \(not in the folders being uploaded\)"):
        upload_folders({"bundle": bundle}, str(dest), "k")


@pytest.mark.parametrize("key", ["", "a/b", "..", "../up", "-x", "x" * 129])
def test_bad_keys_folder_names_and_locations_are_rejected(tmp_path, key):
    bundle = write_files(tmp_path / "src", BUNDLE_FILES)
    with pytest.raises(ValueError, match="key"):
        upload_folders({"bundle": bundle}, str(tmp_path / "dest"), key)
    with pytest.raises(ValueError, match="folder name"):
        upload_folders({"../bundle": bundle}, str(tmp_path / "dest"), "k")
    with pytest.raises(ValueError, match="s3"):
        upload_folders({"bundle": bundle}, "s3://bucket/prefix", "k")
    assert not (tmp_path / "dest").exists()


def test_local_download_prefix_copies_an_uploaded_folder(tmp_path):
    bundle = write_files(tmp_path / "src", BUNDLE_FILES)
    uri = upload_folders({"bundle": bundle}, str(tmp_path / "published"), "run-001")

    out = download_prefix(f"{uri}/bundle", tmp_path / "cache")

    assert relative_files(out) == relative_files(bundle)
    with pytest.raises(FileNotFoundError, match="no files to download"):
        download_prefix(str(tmp_path / "missing"), tmp_path / "none")


@pytest.mark.parametrize("backend", ["folder", "gcs"])
def test_pointers_are_replaced_only_by_compare_and_swap(tmp_path, request, backend):
    location = str(tmp_path / "dest") if backend == "folder" else f"gs://{request.getfixturevalue('gcs_bucket').name}/p"
    store = open_store(location)
    with pytest.raises(FileNotFoundError):
        store.read_text("pointer")
    text, absent = store.read_pointer("pointer")
    assert text is None
    assert store.replace_pointer("pointer", "one", absent)
    assert not store.replace_pointer("pointer", "stale", absent)  # it exists now
    text, version = store.read_pointer("pointer")
    assert text == "one\n"
    assert store.replace_pointer("pointer", "two", version)
    assert not store.replace_pointer("pointer", "stale", version)  # changed since that read
    assert store.read_text("pointer") == "two\n"
    assert not store.is_folder("pointer")


def test_a_lock_left_by_a_crashed_writer_is_removed_once_stale(tmp_path, monkeypatch, caplog):
    store = open_store(str(tmp_path))
    lock = tmp_path / ".pointer.lock"
    lock.write_text("12345\n")
    monkeypatch.setattr(storage_module, "LOCK_TIMEOUT_S", 0.2)
    with pytest.raises(StorageError, match=r"\.pointer\.lock: still locked"):
        store.replace_pointer("pointer", "one", None)
    monkeypatch.setattr(storage_module, "STALE_LOCK_S", 0.0)
    assert store.replace_pointer("pointer", "one", None)
    assert "never released it" in caplog.text and not lock.exists()


# --------------------------------------------------------------------------- cache


def test_cache_path_mirrors_the_uri_and_stays_inside_the_cache(tmp_path):
    assert cache_path("gs://bucket/a//b/", tmp_path) == tmp_path / "bucket" / "a" / "b"
    assert cache_path("gs://bucket", tmp_path) == tmp_path / "bucket"
    for bad in ("gs://", "gs:///x", "gs://bucket/../up", "gs://bucket/a/./b", "/local/folder"):
        with pytest.raises(ValueError):
            cache_path(bad, tmp_path)


def test_user_cache_dir_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache_dir("bundles") == tmp_path / "quantized-mushroom" / "bundles"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir("bundles") == Path.home() / ".cache" / "quantized-mushroom" / "bundles"


def test_download_atomically_replaces_the_copy_only_when_complete(tmp_path):
    source = write_files(tmp_path / "src", BUNDLE_FILES)
    target = tmp_path / "cache" / "bucket" / "bundle"
    write_files(target, {"stale.txt": b"from an earlier download\n"})

    assert download_atomically(str(source), target) == target
    assert relative_files(target) == BUNDLE_FILES  # the earlier copy is replaced, not merged

    with pytest.raises(FileNotFoundError):
        download_atomically(str(tmp_path / "missing"), target)
    assert relative_files(target) == BUNDLE_FILES  # a failed refresh keeps the cached copy
    assert [p.name for p in target.parent.iterdir()] == ["bundle"]  # no partial folder left


# --------------------------------------------------------------------------- GCS (emulator)


def test_gcs_upload_lands_under_the_key_without_a_latest_pointer(tmp_path, gcs_client, gcs_bucket):
    bundle = write_files(tmp_path / "src", BUNDLE_FILES)
    destination = f"gs://{gcs_bucket.name}/datasets"

    uri = upload_folders({"dataset": bundle}, destination, "dataset-1", client=gcs_client)

    assert uri == f"{destination}/dataset-1"
    blobs = {b.name: b for b in gcs_client.list_blobs(gcs_bucket.name)}
    assert set(blobs) == {f"datasets/dataset-1/dataset/{rel}" for rel in BUNDLE_FILES}
    generations = {n: b.generation for n, b in blobs.items()}
    assert upload_folders({"dataset": bundle}, destination, "dataset-1", client=gcs_client) == uri
    assert {b.name: b.generation for b in gcs_client.list_blobs(gcs_bucket.name)} == generations
    store = open_store(destination, gcs_client)
    assert store.is_folder("dataset-1/dataset") and not store.is_folder("dataset-2")


def test_gcs_object_created_after_the_listing_is_not_overwritten(tmp_path, gcs_client, gcs_bucket):
    """The if_generation_match=0 guard: a concurrent writer's object is compared, not replaced."""
    path = tmp_path / "labels.json"
    path.write_bytes(b'["a", "b"]\n')
    sums = compute_checksums(path)
    target = GcsStore(f"gs://{gcs_bucket.name}/pub", gcs_client)

    gcs_bucket.blob("pub/run-001/bundle/labels.json").upload_from_string(b'["a", "b"]\n')
    assert target.write_new(path, "run-001/bundle/labels.json", sums) is False

    gcs_bucket.blob("pub/run-002/bundle/labels.json").upload_from_string(b'["x"]\n')
    with pytest.raises(ConflictError, match=f"gs://{gcs_bucket.name}/pub/run-002/bundle/labels.json"):
        target.write_new(path, "run-002/bundle/labels.json", sums)
    assert gcs_bucket.blob("pub/run-002/bundle/labels.json").download_as_bytes() == b'["x"]\n'


def test_gcs_download_prefix_fetches_an_uploaded_folder(tmp_path, gcs_client, gcs_bucket):
    bundle = write_files(tmp_path / "src", BUNDLE_FILES)
    uri = upload_folders({"bundle": bundle}, f"gs://{gcs_bucket.name}", "run-001", client=gcs_client)
    assert uri == f"gs://{gcs_bucket.name}/run-001"

    out = download_prefix(f"{uri}/bundle", tmp_path / "cache", client=gcs_client)

    assert out == tmp_path / "cache"
    assert relative_files(out) == relative_files(bundle)
    with pytest.raises(FileNotFoundError, match="no objects"):
        download_prefix(f"gs://{gcs_bucket.name}/run-404/bundle", tmp_path / "none", client=gcs_client)


def test_gcs_damaged_download_is_refused_and_never_cached(tmp_path, gcs_client, gcs_bucket, monkeypatch):
    bundle = write_files(tmp_path / "src", BUNDLE_FILES)
    uri = upload_folders({"bundle": bundle}, f"gs://{gcs_bucket.name}", "run-001", client=gcs_client)
    real_download = gcs.Blob.download_to_filename

    def damaging_download(self, filename, *args, **kwargs):
        real_download(self, filename, *args, **kwargs)
        if self.name.endswith("species.csv"):  # simulate bytes damaged on the way
            Path(filename).write_bytes(Path(filename).read_bytes() + b"!")

    monkeypatch.setattr(gcs.Blob, "download_to_filename", damaging_download)
    target = tmp_path / "cache" / "run-001"
    with pytest.raises(StorageError, match=r"species\.csv: downloaded CRC32C .* does not match"):
        download_atomically(f"{uri}/bundle", target, client=gcs_client)
    assert not target.exists() and not list(target.parent.iterdir())  # nothing half-downloaded stays

    monkeypatch.setattr(gcs.Blob, "download_to_filename", real_download)
    download_atomically(f"{uri}/bundle", target, client=gcs_client)
    assert relative_files(target) == BUNDLE_FILES


# --------------------------------------------------------------------------- base install


def test_gcs_store_without_google_cloud_storage_raises_import_error(monkeypatch):
    """Even once imported elsewhere in the process, a blocked google-cloud-storage is not used."""
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    with pytest.raises(ImportError):
        open_store("gs://bucket/prefix")


def test_storage_publish_and_identify_import_without_google_packages(tmp_path):
    """The base install has no Google packages: importing and reading local folders must not need them."""
    code = textwrap.dedent("""
        import pathlib, sys

        class Blocker:  # any import of a Google package fails, as on the base install
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("google", "google_crc32c"):
                    raise ImportError(f"blocked: {name}")

        sys.meta_path.insert(0, Blocker())
        import mushroom.identify, mushroom.publish, mushroom.storage

        root = pathlib.Path(sys.argv[1])
        (root / "run-1" / "bundle").mkdir(parents=True)
        (root / "latest").write_text("run-1\\n")
        assert mushroom.publish.read_latest(str(root)).run == "run-1"
        assert mushroom.identify.resolve_bundle(root) == root / "run-1" / "bundle"
        try:
            mushroom.storage.open_store("gs://bucket/prefix")
        except ImportError as err:
            assert "blocked: google" in str(err), err
        else:
            raise AssertionError("a gs:// store opened without google-cloud-storage")
        # The bare namespace packages `google` and `google.cloud` are created at interpreter start by
        # the *-nspkg.pth files some Google distributions install; no Google code is imported.
        google = sorted(m for m in sys.modules if m.split(".")[0] in ("google", "google_crc32c")
                        and m not in ("google", "google.cloud"))
        assert not google, google
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "published")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
