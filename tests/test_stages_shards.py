"""quantize and evaluate read the prepare stage's shards: no photo file of a split, the same
results as decoding the photos, rows in the split's order; foreign shards stop them first."""

import json
import shutil

import numpy as np
import pytest

from mushroom import stages
from mushroom.datasets import load_images, load_split
from mushroom.manifest import read_splits
from mushroom.shards import ShardError
from tests.helpers import TINY_MODEL


@pytest.fixture(scope="module")
def without_split_photos(trained_run, tmp_path_factory):
    """A copy of the trained run's dataset with shards prepared, then every split photo deleted."""
    root = tmp_path_factory.mktemp("no-photos")
    dataset = root / "dataset"
    shutil.copytree(trained_run["dataset"], dataset)
    stages.prepare(dataset, trained_run["splits"], [TINY_MODEL], root / "shards")
    rows = read_splits(trained_run["splits"])
    for row in rows:
        (dataset / row.file).unlink()
    assert {r.split for r in rows} == {"train", "val", "test"}
    return dataset, root / "shards"


def _without_timings(value, drop=()):
    """``value`` without what timing changes: latencies, runs, and the keys in ``drop``."""
    if isinstance(value, dict):
        return {k: _without_timings(v, drop) for k, v in value.items()
                if "latency" not in k and not k.endswith("_ms") and k != "runs" and k not in drop}
    if isinstance(value, list):
        return [_without_timings(v, drop) for v in value]
    return value


def test_quantize_from_shards_reads_no_photo_and_builds_the_same_models(trained_run, without_split_photos,
                                                                        tmp_path):
    dataset, shards = without_split_photos
    out = tmp_path / "bundle"
    stages.quantize(dataset, trained_run["splits"], trained_run["model"], TINY_MODEL, 3, out, shards_dir=shards)
    # The fixture's bundle came from shards made from the photos; these come from the prepare
    # stage's shards with the photos gone: same representative sample, same validation photos.
    ours = json.loads((out / "quantization_report.json").read_text())
    theirs = json.loads((trained_run["bundle"] / "quantization_report.json").read_text())
    # (The choice among variants within tolerance goes by latency.)
    assert _without_timings(ours, {"chosen", "reason"}) == _without_timings(theirs, {"chosen", "reason"})
    for model in sorted(trained_run["bundle"].glob("*.tflite")):
        assert (out / model.name).read_bytes() == model.read_bytes(), model.name


def test_evaluate_from_shards_reads_no_photo_and_keeps_the_split_order(trained_run, without_split_photos,
                                                                       tmp_path):
    from mushroom.bundle import read_bundle
    from mushroom.evaluate import predict_variants
    from mushroom.models import load_model

    dataset, shards = without_split_photos
    splits = trained_run["splits"]
    out = tmp_path / "evaluation"
    stages.evaluate(dataset, splits, trained_run["model"], trained_run["bundle"], out, tmp_path / "calibrated",
                    latency_runs=1, shards_dir=shards)
    ours, theirs = (np.load(d / "predictions.npz") for d in (out, trained_run["evaluation"]))
    assert sorted(ours.files) == sorted(theirs.files)
    for key in ours.files:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    # Rows in the split's order, pixels as Pillow decodes the photos (the original files).
    val, test = (load_split(trained_run["dataset"], splits, name) for name in ("val", "test"))
    np.testing.assert_array_equal(ours["labels"], test.labels)
    np.testing.assert_array_equal(ours["val_labels"], val.labels)
    decoded = load_images(val.paths + test.paths, TINY_MODEL["image_size"])
    predicted = predict_variants(load_model(trained_run["model"] / "model.keras"), read_bundle(trained_run["bundle"]),
                                 {"photos": decoded})
    for key, by_set in predicted.probs.items():
        np.testing.assert_array_equal(ours[key], by_set["photos"][len(val):], err_msg=key)
        np.testing.assert_array_equal(ours[f"val_{key}"], by_set["photos"][:len(val)], err_msg=key)
    # The quality gate and the open-set answer saw the same photos and stored sizes.
    evaluation, reference = (json.loads((d / "evaluation.json").read_text()) for d in (out, trained_run["evaluation"]))
    assert _without_timings(evaluation) == _without_timings(reference)


def test_shards_of_another_split_table_stop_quantize_and_evaluate_before_any_work(trained_run, tmp_path):
    dataset, splits = trained_run["dataset"], trained_run["splits"]
    stages.prepare(dataset, splits, [TINY_MODEL], tmp_path / "shards")
    other = tmp_path / "other-splits"
    stages.split(dataset, {"train": 0.6, "val": 0.2, "test": 0.2}, 99, other)
    missing_model = tmp_path / "no-model"  # never read: the shards are refused first
    with pytest.raises(ShardError, match=f"the 'train' shards .* prepared from another split table than {other}"):
        stages.quantize(dataset, other, missing_model, TINY_MODEL, 3, tmp_path / "bundle",
                        shards_dir=tmp_path / "shards")
    with pytest.raises(ShardError, match=f"the 'train' shards .* prepared from another split table than {other}"):
        stages.evaluate(dataset, other, missing_model, trained_run["bundle"], tmp_path / "evaluation",
                        tmp_path / "calibrated", shards_dir=tmp_path / "shards")
    with pytest.raises(ShardError, match=r"no shards for image size 48 \(prepared: \[32\]\)"):
        stages.prepare(dataset, splits, [{**TINY_MODEL, "image_size": 32}], tmp_path / "small")
        stages.evaluate(dataset, splits, missing_model, trained_run["bundle"], tmp_path / "evaluation",
                        tmp_path / "calibrated", shards_dir=tmp_path / "small")
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "evaluation").exists()
