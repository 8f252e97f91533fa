"""The head phase on cached features: computed once by the prepare stage, checksummed, read by
tune and train; the same head as training on pixels through the frozen backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mushroom import stages
from mushroom.config import parse_model_config
from mushroom.features import FEATURES_FOLDER, cache_key, load_features
from mushroom.shards import ShardError

pytestmark = pytest.mark.slow

LITE = {
    "model_name": "lite",
    "architecture": "efficientnet-lite0",
    "image_size": 48,
    "weights": "imagenet",
    "batch_size": 16,
    "tune": {"max_trials": 2, "epochs": 2, "learning_rate": [0.003, 0.01], "dropout": [0.0, 0.2],
             "label_smoothing": [0.0, 0.0]},
    "train": {"head_epochs": 6, "fine_tune_epochs": 1, "patience": 6, "feature_views": 2},
}


@pytest.fixture(scope="module")
def prepared(small_dataset, tmp_path_factory):
    dataset, splits = small_dataset
    shards = tmp_path_factory.mktemp("lite") / "shards"
    stages.prepare(dataset, splits, [LITE], shards, seed=5)
    return dataset, splits, shards


def test_prepare_caches_features_of_every_view_with_checksums(prepared):
    from mushroom.models import build_feature_extractor
    from mushroom.shards import open_split, shard_arrays

    _, splits, shards = prepared
    config = parse_model_config(LITE)
    folder = shards / FEATURES_FOLDER / cache_key(config, 5)
    manifest = json.loads((folder / "manifest.json").read_text())
    train = load_features(shards, config, 5, "train")
    val = load_features(shards, config, 5, "val")
    assert train.shape[:2] == (2, manifest["splits"]["train"]["shape"][1]) and train.shape[2] == 1280
    assert val.shape[0] == 1
    assert not np.allclose(train[0], train[1], atol=1e-2)  # view 1 is augmented
    # view 0 is exactly what the backbone gives for the shards' pixels
    pixels, _ = shard_arrays(open_split(shards, "val", 48, splits_dir=splits))
    expected = build_feature_extractor("efficientnet-lite0", 48)(pixels[:8].astype(np.float32), training=False)
    np.testing.assert_allclose(val[0, :8].astype(np.float32), np.asarray(expected), rtol=0.01, atol=0.01)


def test_a_damaged_feature_file_stops_the_stage_naming_it(prepared, tmp_path):
    import shutil

    _, _, shards = prepared
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    config = parse_model_config(LITE)
    path = copy / FEATURES_FOLDER / cache_key(config, 5) / "train.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="train.npy: missing or checksum mismatch"):
        load_features(copy, config, 5, "train")


def test_tune_and_train_run_the_head_phase_on_cached_features(prepared, tmp_path, caplog):
    dataset, splits, shards = prepared
    caplog.set_level("INFO")
    stages.tune(dataset, splits, LITE, 5, tmp_path / "hp", shards_dir=shards)
    result = stages.train(dataset, splits, tmp_path / "hp", LITE, 5, tmp_path / "model", shards_dir=shards)
    assert "phase 1 (head on cached features)" in caplog.text
    assert "head phase on cached features: " in caplog.text and "computing them now" not in caplog.text
    history = json.loads((tmp_path / "model" / "history.json").read_text())
    assert history["phase"].count(1) >= 1 and history["phase"][-1] == 2
    # ImageNet features separate 4 drawn species well above chance (0.25) after a few head epochs
    assert result["val_accuracy"] >= 0.6


def test_the_head_trained_on_features_matches_the_head_trained_on_pixels(prepared):
    """Same data, views off: the cached path and the backbone-every-epoch path reach the same accuracy."""
    from mushroom.runtime import resolve_runtime
    from mushroom.training import Hyperparameters, train_model

    dataset, splits, shards = prepared
    accuracies = {}
    for mode in ("cached", "pixels"):
        raw = {**LITE, "train": {**LITE["train"], "fine_tune_epochs": 0, "head_features": mode, "feature_views": 1,
                                 "head_epochs": 8, "patience": 8}}
        config = parse_model_config(raw)
        runtime = resolve_runtime(config.train, 5)
        train, val = stages._open_shards(shards, splits, ("train", "val"), 48)
        from mushroom.shards import shard_dataset

        train_ds = shard_dataset(train, 16, training=True, seed=5)
        val_ds = shard_dataset(val, 16, training=False, seed=5)
        head = stages._head_data(shards, splits, config, 5, runtime, train, val)
        assert (head is None) == (mode == "pixels")
        _, history = train_model(config, train.num_classes, Hyperparameters(0.005, 0.0, 0.0), train_ds, val_ds,
                                 runtime, train.labels, None, 5, head)
        accuracies[mode] = max(history["val_accuracy"])
    assert abs(accuracies["cached"] - accuracies["pixels"]) <= 0.15, accuracies
