"""Run the whole pipeline locally with kfp.local on a tiny configuration."""

from pathlib import Path

import pytest
import yaml

from mushroom.bundle import read_bundle
from mushroom.fileio import read_json
from mushroom.publish import read_latest

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"


def _tiny_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    config["name"] = "tiny"
    config["dataset"]["species"] = ["Boletus edulis", "Amanita muscaria", "Amanita phalloides"]
    config["dataset"]["synthetic"] = {"photos_per_species": 24, "image_size": 48, "photos_per_observation": 2}
    base = config["models"][0]
    small = {
        **base,
        "image_size": 32,
        "batch_size": 16,
        "tune": {**base["tune"], "max_trials": 1, "epochs": 1},
        "train": {**base["train"], "head_epochs": 1, "fine_tune_epochs": 1},
        "quantize": {"representative_samples": 10},
    }
    config["models"] = [{**small, "model_name": "tiny-a"}, {**small, "model_name": "tiny-b", "image_size": 40}]
    config["publish"] = {"destination": str(tmp_path / "published")}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_local_run_produces_bundles_evaluations_and_publishes(tmp_path):
    from pipelines.run import run_local

    result = run_local(_tiny_config(tmp_path), tmp_path / "out")

    # One bundle and one evaluation per configuration, each complete.
    assert len(result["bundles"]) == 2 and len(result["evaluations"]) == 2
    names = set()
    for bundle_dir in result["bundles"]:
        bundle = read_bundle(bundle_dir)
        names.add(bundle.metadata["model_name"])
        assert [s.scientific_name for s in bundle.catalog] == [
            "Amanita muscaria", "Boletus edulis", "Amanita phalloides"]  # catalog order
        for variant in ("float32", "int8"):
            assert bundle.model_path(variant).stat().st_size > 10_000
    assert names == {"tiny-a", "tiny-b"}
    for path in result["evaluations"]:
        evaluation = read_json(path)
        for variant in ("keras", "tflite_float32", "tflite_int8"):
            assert 0.0 <= evaluation["variants"][variant]["top1"] <= 1.0
            assert evaluation["variants"][variant]["top5"] == 1.0  # 3 classes: top-5 holds them all
        assert evaluation["variants"]["tflite_int8"]["size_mb"] < evaluation["variants"]["tflite_float32"]["size_mb"]

    # The published run folder holds the chosen bundle and the comparison of both configs.
    published = Path(result["published"])
    assert published.parent == tmp_path / "published"
    latest = read_latest(str(tmp_path / "published"))
    assert latest.run == published.name and latest.created is not None  # the recorded start time
    assert latest.run.startswith("quantized-mushroom-")  # kfp.local's run name, with its job id
    read_bundle(published / "bundle")
    comparison = read_json(published / "evaluation" / "comparison.json")
    assert {e["model_name"] for e in comparison["evaluations"]} == {"tiny-a", "tiny-b"}
    assert read_json(published / "evaluation" / "evaluation.json")["model_name"] == comparison["best"]
