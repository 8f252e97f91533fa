"""Shared fixtures: small synthetic datasets built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("WANDB_MODE", "disabled")

DEMO_SPECIES = ["Amanita muscaria", "Boletus edulis", "Amanita phalloides", "Pleurotus ostreatus"]


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A synthetic dataset folder (4 species x 30 photos at 64 px) and its split table."""
    from mushroom import stages

    root = tmp_path_factory.mktemp("small")
    config = {
        "source": "synthetic",
        "species": DEMO_SPECIES,
        "synthetic": {"photos_per_species": 30, "image_size": 64, "photos_per_observation": 2},
    }
    stages.acquire(config, 7, root / "dataset")
    stages.split(root / "dataset", {"train": 0.6, "val": 0.2, "test": 0.2}, 7, root / "splits")
    return root / "dataset", root / "splits"
