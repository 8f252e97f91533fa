"""Nothing lost in a pod: every task records the image it ran in, and W&B runs are an output artifact."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mushroom import image_identity, tracking
from mushroom.image_identity import image_environment, record_image, running_image

DIGEST = "sha256:" + "ab" * 32


# --- the image a task runs in -----------------------------------------------------------------------


def test_a_tag_names_the_reference_only():
    assert image_environment("ghcr.io/q/mushroom:0.1.0") == {"MUSHROOM_IMAGE_REF": "ghcr.io/q/mushroom:0.1.0"}
    # a registry port is not a tag, nor a digest
    assert image_environment("localhost:5000/mushroom:1") == {"MUSHROOM_IMAGE_REF": "localhost:5000/mushroom:1"}


def test_a_digest_pin_names_the_digest_too():
    reference = f"ghcr.io/q/mushroom@{DIGEST}"
    assert image_environment(reference) == {"MUSHROOM_IMAGE_REF": reference, "MUSHROOM_IMAGE_DIGEST": DIGEST}
    assert image_environment(f"ghcr.io/q/mushroom:0.1.0@{DIGEST}")["MUSHROOM_IMAGE_DIGEST"] == DIGEST


@pytest.mark.parametrize("reference", ["", "  ", "reg/img@sha256:abc", "reg/img@md5:" + "a" * 64,
                                       "reg/img@sha256:" + "A" * 64])
def test_a_malformed_reference_is_refused(reference):
    with pytest.raises(ValueError):
        image_environment(reference)


def test_every_image_the_cluster_settings_accept_gives_its_environment():
    from mushroom.cluster import parse_images

    for environ in ({"MUSHROOM_IMAGE": "reg/m:1"},
                    {"MUSHROOM_IMAGE": f"reg/m@{DIGEST}", "MUSHROOM_GPU_IMAGE": f"reg/m-gpu@{DIGEST}"}):
        images = parse_images(environ, "unused:1")
        for reference in (images.cpu, images.gpu):
            env = image_environment(reference)
            assert env["MUSHROOM_IMAGE_REF"] == reference
            assert ("MUSHROOM_IMAGE_DIGEST" in env) == ("@" in reference)


def test_the_environment_reads_back_as_the_identity():
    reference = f"reg/m@{DIGEST}"
    assert running_image(image_environment(reference)) == {"reference": reference, "digest": DIGEST}
    assert running_image({"MUSHROOM_IMAGE_REF": "reg/m:1", "MUSHROOM_IMAGE_ID": "sha256:1",
                          "MUSHROOM_IMAGE_DIGEST": ""}) == {"reference": "reg/m:1", "id": "sha256:1"}
    assert running_image({}) == {}


def test_record_image_writes_each_artifacts_metadata(monkeypatch):
    monkeypatch.setenv("MUSHROOM_IMAGE_REF", "reg/m:1")
    monkeypatch.setenv("MUSHROOM_IMAGE_ID", "sha256:" + "c" * 64)
    monkeypatch.delenv("MUSHROOM_IMAGE_DIGEST", raising=False)
    model, runs = SimpleNamespace(metadata={"framework": "keras"}), SimpleNamespace(metadata={})
    recorded = record_image(model, runs)
    assert recorded == {"reference": "reg/m:1", "id": "sha256:" + "c" * 64}
    assert model.metadata == {"framework": "keras", "image": recorded} and runs.metadata == {"image": recorded}


def test_record_image_says_when_nothing_names_the_image():
    artifact = SimpleNamespace(metadata={})
    record_image(artifact, environ={})
    assert artifact.metadata["image"] == {"unknown": image_identity.UNKNOWN}


def test_every_component_records_its_image():
    import components

    names = list(components.__all__)
    calls = ("image_identity.record_image(", "image_identity.write_image_record(")  # publish: its own artifact
    missing = [name for name in names
               if not any(call in inspect.getsource(getattr(components, name).python_func) for call in calls)]
    assert names and not missing, f"components that do not record their image: {missing}"


def test_the_stages_that_track_have_a_wandb_output():
    from components import evaluate_model, train_classifier

    for component in (train_classifier, evaluate_model):
        outputs = component.component_spec.outputs
        assert outputs["wandb"].type == "system.Artifact@0.0.1", component.name
        assert "tracking.runs_in(wandb.path, wandb.metadata)" in inspect.getsource(component.python_func)


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_a_local_task_records_its_image_among_its_outputs(tmp_path, monkeypatch):
    """kfp.local runs the acquire component (a subprocess: it inherits the environment)."""
    from kfp import local
    from kfp.local import config as local_config

    from components import acquire_dataset

    monkeypatch.setenv("MUSHROOM_IMAGE_REF", f"reg/m@{DIGEST}")
    monkeypatch.setenv("MUSHROOM_IMAGE_DIGEST", DIGEST)
    # kfp.local's settings are process-wide: put back whatever was there (usually nothing)
    monkeypatch.setattr(local_config.LocalExecutionConfig, "instance", local_config.LocalExecutionConfig.instance)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=True)
    task = acquire_dataset(dataset_config={"source": "synthetic", "species": ["Boletus edulis", "Amanita muscaria"],
                                           "synthetic": {"photos_per_species": 6, "image_size": 32}}, seed=1)
    expected = {"reference": f"reg/m@{DIGEST}", "digest": DIGEST}
    assert task.outputs["dataset"].metadata["image"] == expected
    [written] = tmp_path.glob("*/acquire-dataset/executor_output.json")
    recorded = json.loads(written.read_text())["artifacts"]["dataset"]["artifacts"][0]["metadata"]
    assert recorded["image"] == expected


# --- W&B runs as an output artifact -----------------------------------------------------------------


def _offline(monkeypatch, tmp_path: Path) -> None:
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)


def test_tracking_off_still_leaves_a_note(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    metadata: dict = {}
    with tracking.runs_in(tmp_path / "wandb", metadata) as folder:
        assert os.environ["WANDB_DIR"] == str(folder)
        tracking.log_training_history({"loss": [1.0]}, {"model_name": "x"})
    assert "WANDB_DIR" not in os.environ
    record = json.loads((tmp_path / "wandb" / tracking.RECORD).read_text())
    assert record["mode"] == "off" and record["reason"] == "WANDB_MODE=disabled" and record["runs"] == []
    assert "Tracking was off (WANDB_MODE=disabled)" in (tmp_path / "wandb" / tracking.README).read_text()
    assert metadata["wandb"] == record
    assert sorted(p.name for p in (tmp_path / "wandb").iterdir()) == [tracking.README, tracking.RECORD]


def test_offline_runs_land_in_the_artifact_with_the_image(monkeypatch, tmp_path):
    wandb = pytest.importorskip("wandb")
    _offline(monkeypatch, tmp_path)
    monkeypatch.setenv("MUSHROOM_IMAGE_REF", "reg/m:1")
    monkeypatch.setenv("MUSHROOM_IMAGE_ID", "sha256:" + "d" * 64)
    artifact = tmp_path / "train" / "wandb"
    metadata: dict = {}
    try:
        with tracking.runs_in(artifact, metadata):
            tracking.log_training_history({"loss": [1.0, 0.5], "val_accuracy": [0.3, 0.6]},
                                          {"model_name": "tiny", "learning_rate": 0.01})
    finally:
        wandb.teardown()
    [run] = (artifact / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))
    assert not [p for p in artifact.rglob("*") if p.is_symlink()], "an artifact holds files, not links"
    assert not (tmp_path / "elsewhere").exists() and os.environ["WANDB_DIR"] == str(tmp_path / "elsewhere")
    logged = b"".join(p.read_bytes() for p in run.glob("run-*.wandb"))  # the run's config, in its log
    assert b"reg/m:1" in logged and ("sha256:" + "d" * 64).encode() in logged
    record = json.loads((artifact / tracking.RECORD).read_text())
    assert record["mode"] == "offline" and record["runs"] == [f"wandb/{run.name}"] and record["synced"] is None
    assert record["image"]["reference"] == "reg/m:1" and metadata["wandb"] == record
    assert "Not synced (no `WANDB_API_KEY`)" in (artifact / tracking.README).read_text()


def test_a_failed_stage_keeps_its_runs_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(RuntimeError, match="stage failed"), tracking.runs_in(tmp_path / "w"):
        raise RuntimeError("stage failed")
    assert (tmp_path / "w" / tracking.RECORD).is_file()


def _fake_run(folder: Path) -> Path:
    run = folder / "wandb" / "offline-run-20260101_000000-abc"
    run.mkdir(parents=True)
    (run / "run-abc.wandb").write_bytes(b"x")
    return run


@pytest.mark.parametrize("script, synced, said", [
    ("print('synced')", True, "synced 1 run"),
    ("import sys; print('no route to host'); sys.exit(3)", False, "failed (exit 3): no route to host"),
    ("import time; time.sleep(60)", False, "gave no answer"),
])
def test_offline_runs_are_synced_when_a_key_is_present_and_a_failure_never_fails_the_stage(
        monkeypatch, tmp_path, caplog, script, synced, said):
    caplog.set_level(logging.INFO, logger="mushroom.tracking")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setattr(tracking, "SYNC_TIMEOUT_S", 2)
    commands = []

    def fake_command(runs):
        commands.append(runs)
        return [sys.executable, "-c", script]

    monkeypatch.setattr(tracking, "_sync_command", fake_command)
    run = _fake_run(tmp_path / "w")
    summary = tracking.finish_runs_folder(tmp_path / "w", "offline")
    assert commands == [[run]]
    assert summary["synced"] is synced
    assert said in caplog.text
    readme = (tmp_path / "w" / tracking.README).read_text()
    assert ("Synced to W&B" in readme) == synced and ("Syncing failed" in readme) == (not synced)


def test_no_sync_without_a_key_nor_for_online_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(tracking, "_sync_command", lambda runs: pytest.fail("synced"))
    _fake_run(tmp_path / "a")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert tracking.finish_runs_folder(tmp_path / "a", "offline")["synced"] is None
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert tracking.finish_runs_folder(tmp_path / "a", "online")["synced"] is None


def test_the_sync_command_is_wandb_sync_of_the_runs():
    runs = [Path("/x/wandb/offline-run-1")]
    assert tracking._sync_command(runs) == [sys.executable, "-m", "wandb", "sync", "/x/wandb/offline-run-1"]


def test_links_become_files(tmp_path):
    folder = tmp_path / "w"
    run = _fake_run(folder)
    outside = tmp_path / "core-debug.log"
    outside.write_text("core log")
    (run / "logs").mkdir()
    (run / "logs" / "debug-core.log").symlink_to(outside)
    (folder / "wandb" / "latest-run").symlink_to(run.name)
    (folder / "wandb" / "debug.log").symlink_to(run / "run-abc.wandb")
    (folder / "wandb" / "gone.log").symlink_to(tmp_path / "nothing")
    tracking.finish_runs_folder(folder, "offline")
    assert not [p for p in folder.rglob("*") if p.is_symlink()]
    assert (run / "logs" / "debug-core.log").read_text() == "core log"
    assert sorted(p.name for p in (folder / "wandb").iterdir()) == [run.name]


def test_a_record_artifact_holds_the_image_as_a_file_too(tmp_path):
    artifact = SimpleNamespace(metadata={}, path=str(tmp_path / "publication"))
    written = image_identity.write_image_record(artifact, environ={"MUSHROOM_IMAGE_REF": "reg/m:1"}, uri="gs://b/r")
    assert written == {"image": {"reference": "reg/m:1"}, "uri": "gs://b/r"} == artifact.metadata
    assert json.loads((tmp_path / "publication").read_text()) == written
