"""Helpers shared by several test modules (test modules never import each other).

``from tests.helpers import ...``: the repository root is on ``sys.path`` (pytest's
``pythonpath``). Fixtures live in ``conftest.py``; plain values and functions live here.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- a tiny model

TINY_MODEL = {
    "model_name": "tiny-mobilenet",
    "architecture": "mobilenetv3-large",
    "image_size": 48,
    "weights": "none",
    "batch_size": 16,
    "tune": {"max_trials": 1, "epochs": 1, "learning_rate": [0.003, 0.003], "dropout": [0.0, 0.0],
             "label_smoothing": [0.0, 0.0]},
    "train": {"head_epochs": 15, "fine_tune_epochs": 0, "patience": 15},  # learns: val top-1 ~0.8
    # The strictest choice: the answer users get must match float32 on every validation photo.
    "quantize": {"representative_samples": 200, "tolerance_points": 0.0, "min_agreement": 1.0},
}

# One edible and two dangerous species whose drawings differ most from the edible one's (cap hues
# 0.97 vs 0.43 and 0.73): a small model separates them almost perfectly, so a validation split
# of a few hundred dangerous photos can certify the 0.5% dangerous-as-edible target.
CERTIFIED_SPECIES = ["Pleurotus ostreatus", "Amanita phalloides", "Coprinopsis picacea"]
CERTIFIED_MODEL = {
    "model_name": "certified-mobilenet",
    "architecture": "mobilenetv3-large",
    "image_size": 32,  # the photos are stored at 64 px: identify's quality gate takes them
    "weights": "none",
    "batch_size": 32,
    "tune": {"max_trials": 1, "epochs": 1, "learning_rate": [0.002, 0.002], "dropout": [0.0, 0.0],
             "label_smoothing": [0.0, 0.0]},
    "train": {"head_epochs": 12, "fine_tune_epochs": 0, "patience": 4},  # val top-1 ~0.98
    "quantize": {"variants": ["float32", "int8"], "representative_samples": 64, "debug_samples": 8},
    "evaluate": {"latency_runs": 2, "latency_rounds": 1},
}

# --------------------------------------------------------------------------- evaluations without TensorFlow


def synthetic_evaluation(tmp_path: Path, n_classes: int = 12, seed: int = 0, extra_variant: str | None = None):
    """An evaluation of made-up predictions (no TensorFlow) over real catalog species.

    ``extra_variant``: a registered variant evaluated too (in the bundle, timed).
    """
    from mushroom import variants as registry
    from mushroom.bundle import read_bundle, write_bundle
    from mushroom.calibrate import calibrate
    from mushroom.evaluate import evaluate_predictions
    from mushroom.species import load_catalog

    rng = np.random.default_rng(seed)
    catalog = load_catalog()
    catalog = catalog.subset([s.scientific_name for s in catalog][:n_classes])
    extra = [extra_variant] if extra_variant else []
    models = {"float32": b"f" * 40_000, "int8": b"q" * 11_000, **{v: b"x" * 20_000 for v in extra}}
    write_bundle(tmp_path / "bundle", models, catalog,
                 {"model_name": f"synthetic-{seed}", "architecture": "none", "image_size": 64},
                 shipped_variant="int8")
    bundle = read_bundle(tmp_path / "bundle")

    def probs(labels, strength):
        logits = rng.normal(size=(len(labels), n_classes))
        logits[np.arange(len(labels)), labels] += strength
        e = np.exp(logits * 2.5)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    val_labels, test_labels = rng.integers(0, n_classes, 400), rng.integers(0, n_classes, 300)
    strengths = {"keras": 2.2, "tflite_float32": 2.2, "tflite_int8": 2.0,
                 **{registry.evaluation_key(v): 1.8 for v in extra}}
    medians = {"tflite_float32": 9.0 + seed, "tflite_int8": 4.0 + seed,
               **{registry.evaluation_key(v): 6.0 + seed for v in extra}}
    latency = {v: {"threads_1": {"median_ms": m, "p90_ms": 1.3 * m, "mean_ms": m},
                   "threads_all": {"median_ms": m / 2, "p90_ms": m, "mean_ms": m / 2}}
               for v, m in medians.items()}
    test = {v: probs(test_labels, s) for v, s in strengths.items()}
    calibration = calibrate(val_labels, {v: probs(val_labels, s) for v, s in strengths.items()}, catalog, target=0.02)
    return evaluate_predictions(test_labels, test, bundle, calibration, latency)


def copy_evaluation(evaluation, name: str, variant: str | None = None, *, val_top1: float | None = None,
                    **test_figures):
    """``evaluation`` under another model name, with some figures of ``variant`` (default: full
    integer) changed."""
    from mushroom import variants as registry

    copy = evaluation.model_copy(deep=True)
    copy.model_name = name
    changed = copy.variant(variant or registry.FULL_INTEGER)
    if val_top1 is not None:
        changed.validation.top1 = val_top1
    for field, value in test_figures.items():
        setattr(changed, field, value)
    return copy


def write_old_calibration(bundle_dir: Path, calibration, version: int = 2) -> None:
    """``calibration`` in the form bundles had before calibration.json version 3, as the evaluate
    stage wrote them: the policy and open-set rule per variant in ``calibration.json`` (version 1:
    without ``schema_version`` and with a copy of the default variant), the ``mahalanobis``
    statistics in ``open_set_features.npz`` beside it, named ``<variant>.<array>``."""
    import json

    from mushroom import variants as registry

    variants, arrays = {}, {}
    for key, v in calibration.variants.items():
        name = registry.variant_of_key(key)
        if name is None:
            continue
        entry = v.policy.to_dict()
        rule = v.open_set
        if rule is not None:
            entry["open_set"] = {"score": rule.score, "threshold": rule.threshold, "known_kept": rule.known_kept,
                                 "fallback": rule.fallback}
            if rule.prototypes is not None:
                entry["open_set"]["prototypes"] = np.asarray(rule.prototypes).tolist()
            if rule.features is not None:
                stats = rule.features
                entry["open_set"]["features"] = {"file": "open_set_features.npz", **stats.describe()}
                arrays.update({f"{name}.means": np.asarray(stats.means, np.float32),
                               f"{name}.components": np.asarray(stats.components, np.float32),
                               f"{name}.variances": np.asarray(stats.variances, np.float32),
                               f"{name}.residual_variance": np.asarray([stats.residual_variance], np.float32),
                               f"{name}.train_photos": np.asarray([stats.train_photos], np.int64),
                               f"{name}.shrinkage": np.asarray([stats.shrinkage], np.float32)})
            if v.open_set_fit is not None:
                entry["open_set"].update(fitted_on=v.open_set_fit.fitted_on, unknown_check=v.open_set_fit.unknown_check)
        variants[name] = entry
    data = {"variants": variants, "target_dangerous_as_edible": calibration.target_dangerous_as_edible,
            "fitted_on": calibration.fitted_on, "warnings": list(calibration.warnings)}
    data = {"schema_version": 2, **data} if version == 2 else {**data, "default_variant": "float32"}
    (Path(bundle_dir) / "calibration.json").write_text(json.dumps(data), encoding="utf-8")
    if arrays:
        np.savez_compressed(Path(bundle_dir) / "open_set_features.npz", **arrays)


# --------------------------------------------------------------------------- published runs

# Above google-cloud-storage's 8 MiB multipart limit, so the resumable upload path runs too.
LARGE_SIZE = 9 * 1024 * 1024
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def run(name: str = "run", job_id: str = "001", minutes: float = 0):
    """A run created ``minutes`` after T0; ``run("run", "001")`` lands in folder ``run-001``."""
    from mushroom.publish import RunIdentity

    return RunIdentity(name, job_id, T0 + timedelta(minutes=minutes))


def make_run_folders(root: Path, *, label: str = "v1", large: bool = False) -> tuple[Path, Path]:
    """A small bundle (nested files) and evaluation folder; ``label`` changes labels.json."""
    bundle = root / "bundle"
    evaluation = root / "evaluation"
    (bundle / "extra").mkdir(parents=True)
    evaluation.mkdir(parents=True)
    (bundle / "model_int8.tflite").write_bytes(bytes(range(256)) * 64)
    (bundle / "labels.json").write_text(f'["amanita_muscaria", "boletus_edulis", "{label}"]\n')
    (bundle / "metadata.json").write_text('{"architecture": "efficientnetv2-b0", "input_size": 224}\n')
    (bundle / "extra" / "species.csv").write_text("taxon_id,scientific_name\n48715,Amanita muscaria\n")
    if large:
        (bundle / "model_float32.tflite").write_bytes(os.urandom(LARGE_SIZE))
    (evaluation / "metrics.json").write_text('{"top1": 0.81, "top5": 0.95}\n')
    (evaluation / "report.md").write_text("# Evaluation\n\nAll good.\n")
    return bundle, evaluation


def relative_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- .dockerignore


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a pattern that matches a
    folder also matches everything inside it; ``!`` re-includes."""

    def to_regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        cleaned = pattern[1:] if negate else pattern
        cleaned = cleaned.strip().strip("/")
        if not cleaned:
            continue
        regex = to_regex(cleaned)
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing at the repository root (the build context)"
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]
