"""evaluation.json keeps its shape and its numbers: a golden file written by the code before the
typed evaluation existed (plus ``schema_version``, ``shipped_variant`` since schema version 3 and
each variant's ``levels`` since 4),
compared value for value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mushroom.species import Catalog, Species

GOLDEN = Path(__file__).parent / "golden" / "evaluation.json"

CATALOG = Catalog([
    Species(1, "Edulis primus", "First", "edible"),
    Species(2, "Toxica vulgaris", "Toxic", "poisonous"),
    Species(3, "Mortalis alba", "Deadly", "deadly"),
    Species(4, "Amara dura", "Bitter", "inedible"),
])


def golden_evaluation(tmp_path: Path) -> dict:
    """An evaluation of fixed made-up predictions of three variants (keras, float32, int8)."""
    from mushroom.bundle import read_bundle, write_bundle
    from mushroom.calibrate import calibrate
    from mushroom.evaluate import evaluate_predictions

    rng = np.random.default_rng(11)
    write_bundle(tmp_path / "bundle", {"float32": b"f" * 4000, "int8": b"q" * 1000}, CATALOG,
                 {"model_name": "golden", "architecture": "none", "image_size": 64}, shipped_variant="int8")
    bundle = read_bundle(tmp_path / "bundle")

    def probs(labels, strength):
        logits = rng.normal(size=(len(labels), len(CATALOG)))
        logits[np.arange(len(labels)), labels] += strength
        e = np.exp(logits * 2.0)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    val_labels, test_labels = rng.integers(0, 4, 60), rng.integers(0, 4, 40)
    strengths = {"keras": 1.5, "tflite_float32": 1.5, "tflite_int8": 1.3}
    val = {v: probs(val_labels, s) for v, s in strengths.items()}
    test = {v: probs(test_labels, s) for v, s in strengths.items()}
    latency = {v: {f"threads_{t}": {"median_ms": m / n, "p90_ms": m, "mean_ms": m / n, "num_threads": n,
                                    "runs": 5, "warmup": 2} for t, n in (("1", 1), ("all", 2))}
               for v, m in (("tflite_float32", 8.0), ("tflite_int8", 3.0))}
    return evaluate_predictions(test_labels, test, bundle, calibrate(val_labels, val, CATALOG, target=0.05), latency)


def _compare(actual, expected, path="$"):
    assert type(actual) is type(expected) or {type(actual), type(expected)} <= {int, float}, \
        f"{path}: {type(actual).__name__} != {type(expected).__name__}"
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), f"{path}: keys differ: {sorted(set(actual) ^ set(expected))}"
        for key in expected:
            _compare(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _compare(a, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-6, abs=1e-9), path
    else:
        assert actual == expected, path


def test_evaluation_json_matches_the_golden_file(tmp_path):
    result = json.loads(json.dumps(golden_evaluation(tmp_path).to_json()))
    _compare(result, json.loads(GOLDEN.read_text(encoding="utf-8")))
