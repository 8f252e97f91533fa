"""The model bundle: everything ``identify`` needs, in one folder.

::

    model_float32.tflite, model_int8.tflite   the converted models
    labels.json        class order: index -> taxon id and scientific name
    species.csv        the catalog rows of the classes (names, edibility, caution)
    calibration.json   the calibration (:class:`mushroom.policy.Calibration`): per variant the
                       temperature and thresholds, the answer levels' species and genus
                       thresholds (:mod:`mushroom.levels`), the open-set rule (with, for the ``mahalanobis``
                       score, its feature statistics as base64 float32 arrays) and how they were
                       fitted (:func:`write_calibration`, :func:`read_calibration`)
    metadata.json      architecture, input size, the shipped variant (``default_variant``: the
                       quantize stage's choice, ``identify``'s default), versions, config hash, and
                       ``provenance`` (:func:`build_provenance`): data source, species and photo
                       counts per split, licences of the training photos, run configuration,
                       project version and commit, build time
    month_prior.json   optional: P(month | species) fitted by the train stage and whether the
                       evaluation kept it for the shipped answer (:func:`write_month_prior`,
                       :func:`read_month_prior`; absent: no prior, the date is not used)

``metadata.json`` and ``calibration.json`` carry a ``schema_version``; a bundle written by a
newer schema than this code reads is refused with a clear message. Older bundles are read as
they are: a ``calibration.json`` of version 3 or older has no answer levels (every answer
names its species, none a genus), one of version 1 or 2 whose ``mahalanobis`` statistics lie in
``open_set_features.npz`` beside it, and a ``metadata.json`` without a recorded shipped variant
(resolved once, here, by :func:`shipped_variant`). Reading a bundle needs numpy and the standard
library (no TensorFlow).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np

from mushroom import variants as registry
from mushroom.fileio import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from mushroom.levels import LevelRule
from mushroom.openset import DEFAULT_KNOWN_KEPT, FEATURE_SCORES, FeatureStats, OpenSetRule
from mushroom.policy import Calibration, OpenSetFit, Policy, PolicyFit, VariantCalibration
from mushroom.species import Catalog, parse_catalog
from mushroom.versioning import SchemaVersionError, check_schema_version

LABELS = "labels.json"
SPECIES = "species.csv"
CALIBRATION = "calibration.json"
METADATA = "metadata.json"
QUANTIZATION_REPORT = "quantization_report.json"  # the quantize stage's measurements (optional)
REQUIRED = (LABELS, SPECIES, CALIBRATION, METADATA)
METADATA_SCHEMA_VERSION = 2  # 1: no schema_version field
# 1: no schema_version field, a copy of the default variant; 2: the mahalanobis statistics in
# FEATURES_FILE, no record of how the policies were fitted; 3: no answer levels (every answer
# names its species, no genus answers)
CALIBRATION_SCHEMA_VERSION = 4
FEATURES_FILE = "open_set_features.npz"  # version 2's feature statistics, per variant (read only)
# Bundles written before the shipped variant was recorded ship the first of these they hold.
_UNRECORDED_SHIPPED = (registry.FULL_INTEGER, registry.REFERENCE)


class BundleError(ValueError):
    """A bundle folder is incomplete or inconsistent."""


def model_filename(variant: str) -> str:
    return f"model_{variant}.tflite"


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a configuration dict."""
    import hashlib

    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version(package: str) -> str | None:
    from importlib import metadata  # only when writing: identify never needs it

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_bundle(
    out_dir: str | Path,
    models: dict[str, bytes],
    catalog: Catalog,
    model_config: dict[str, Any],
    extra_metadata: dict[str, Any] | None = None,
    *,
    shipped_variant: str,
) -> Path:
    """Write a bundle folder.

    Args:
        out_dir: Folder to write (created if missing).
        models: Variant name (see :mod:`mushroom.variants`) -> TFLite flatbuffer.
        catalog: The classes, in model output order.
        model_config: The model configuration the model was trained with.
        extra_metadata: Added to ``metadata.json``.
        shipped_variant: The variant the bundle ships, ``identify``'s default: the quantize
            stage's choice (recorded as ``default_variant``).
    """
    import platform

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for variant, data in models.items():
        write_bytes_atomic(out_dir / model_filename(variant), data)
    labels = [
        {"index": i, "taxon_id": s.taxon_id, "scientific_name": s.scientific_name}
        for i, s in enumerate(catalog)
    ]
    write_json_atomic(out_dir / LABELS, labels)
    write_text_atomic(out_dir / SPECIES, catalog.to_csv())
    if shipped_variant not in models:
        raise BundleError(f"shipped variant {shipped_variant!r} is not among the bundle's {sorted(models)}")
    meta = {
        "schema_version": METADATA_SCHEMA_VERSION,
        "model_name": model_config["model_name"],
        "architecture": model_config["architecture"],
        "image_size": model_config["image_size"],
        "input": "float32 RGB pixels in 0-255, resized with padding (mushroom.preprocess.load_image)",
        "num_classes": len(catalog),
        "variants": {v: model_filename(v) for v in models},
        "default_variant": shipped_variant,
        "config_hash": config_hash(model_config),
        "model_config": model_config,
        "versions": {
            "quantized-mushroom": _version("quantized-mushroom"),
            "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"),
            "keras": _version("keras"),
            "python": platform.python_version(),
        },
        **(extra_metadata or {}),
    }
    write_json_atomic(out_dir / METADATA, meta)
    # Until the evaluation fits one: temperature 1 and never the verdict "edible".
    write_calibration(out_dir, Calibration())
    return out_dir


GIT_COMMIT_ENV = "MUSHROOM_GIT_COMMIT"  # set where the code runs outside a git checkout (images)


def git_commit() -> dict[str, Any] | None:
    """The commit of the code that runs: ``$MUSHROOM_GIT_COMMIT``, else ``git`` in the source checkout.

    Returns:
        ``{"commit": sha, "dirty": bool | None}`` or None when it cannot be told (an installed
        wheel without the variable).
    """
    import os
    import subprocess

    if os.environ.get(GIT_COMMIT_ENV):
        return {"commit": os.environ[GIT_COMMIT_ENV], "dirty": None}
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(status.strip())} if sha else None


def build_provenance(dataset_dir: str | Path, splits_dir: str | Path, run_config: dict[str, Any] | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a bundle's model was trained on and how it was built (``metadata.json``'s ``provenance``).

    Args:
        dataset_dir: The dataset folder (its ``dataset.json`` names the source and configuration).
        splits_dir: The folder of ``splits.csv``.
        run_config: The configuration the run used (recorded as is).
        extra: Added as is (e.g. ``image``: the container image).

    Returns:
        ``data`` (source, synthetic or not, iNaturalist place and acquisition time, the
        dataset configuration), ``splits`` (species and photo counts per split), ``species``
        (taxon ids and names the model knows), ``unknown_species`` (taxa acquired for open-set
        evaluation only), ``training_licenses`` (photo counts per licence of the train split),
        ``run_config``, ``project`` (version and commit) and ``built_at`` (UTC, ISO 8601).
    """
    from collections import Counter
    from datetime import datetime

    from mushroom.manifest import DATASET_INFO_NAME, read_splits

    info = read_json(Path(dataset_dir) / DATASET_INFO_NAME)
    config = info.get("config") or {}
    source = info.get("source")
    from mushroom.sources import registry as sources

    data: dict[str, Any] = {"source": source, "synthetic": sources.is_synthetic({"source": source}),
                            "acquired_at": info.get("acquired_at"), "seed": info.get("seed"), "config": config}
    if source in sources.names():
        data.update(sources.get(source).recorded(config.get(source) or {}))
    rows = read_splits(splits_dir)
    splits = {}
    for name in ("train", "val", "test"):
        part = [r for r in rows if r.split == name]
        splits[name] = {"photos": len(part), "species": len({r.taxon_id for r in part}),
                        "observations": len({r.observation_id for r in part})}
    licenses = Counter(r.license or "unknown" for r in rows if r.split == "train")
    return {
        "data": data,
        "splits": splits,
        "species": [{"taxon_id": int(row["taxon_id"]), "scientific_name": row["scientific_name"]}
                    for row in info.get("species", [])],
        "unknown_species": info.get("unknown_species", []),
        "training_licenses": dict(sorted(licenses.items())),
        "run_config": run_config,
        "project": {"name": "quantized-mushroom", "version": _version("quantized-mushroom"), "git": git_commit()},
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def shipped_variant(metadata: dict[str, Any]) -> str:
    """The variant a bundle ships, from its ``metadata.json``: the quantize stage's recorded choice.

    A bundle written before the choice was recorded ships the first of int8 and float32 it
    holds: resolved here, once, when the bundle is read.

    Args:
        metadata: The bundle's ``metadata.json``.

    Returns:
        A variant name (``int8``, ...).
    """
    if metadata.get("default_variant"):
        return metadata["default_variant"]
    held = list(metadata["variants"])
    if not held:
        raise ValueError("the bundle holds no variants")
    return next((name for name in _UNRECORDED_SHIPPED if name in held), held[0])


# --------------------------------------------------------------------------- calibration.json


def _array_to_json(array: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"dtype": "float32", "shape": list(data.shape), "base64": base64.b64encode(data.tobytes()).decode("ascii")}


def _array_from_json(entry: dict[str, Any]) -> np.ndarray:
    if not isinstance(entry, dict) or entry.get("dtype") != "float32":
        raise ValueError("feature statistics: an array is not a float32 {dtype, shape, base64} entry")
    flat = np.frombuffer(base64.b64decode(entry["base64"]), dtype="<f4")
    return flat.reshape([int(n) for n in entry["shape"]]).astype(np.float64)


def _stats_to_json(stats: FeatureStats) -> dict[str, Any]:
    return {"train_photos": int(stats.train_photos), "shrinkage": float(stats.shrinkage),
            "residual_variance": float(stats.residual_variance), "means": _array_to_json(stats.means),
            "components": _array_to_json(stats.components), "variances": _array_to_json(stats.variances)}


def _stats_from_json(entry: dict[str, Any]) -> FeatureStats:
    try:
        return FeatureStats(_array_from_json(entry["means"]), _array_from_json(entry["components"]),
                            _array_from_json(entry["variances"]), float(entry["residual_variance"]),
                            int(entry.get("train_photos", 0)), float(entry.get("shrinkage", 0.0)))
    except (KeyError, TypeError) as err:
        raise ValueError(f"feature statistics lack {err}") from None


def _legacy_stats(root: Path, variant: str) -> FeatureStats:
    """Version 2's statistics of ``variant``, from :data:`FEATURES_FILE` (arrays named ``<variant>.<name>``)."""
    path = root / FEATURES_FILE
    if not path.is_file():
        raise ValueError(f"the open-set score needs {FEATURES_FILE}, which the bundle lacks")
    prefix = f"{variant}."
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k.removeprefix(prefix): data[k] for k in data.files if k.startswith(prefix)}
    except (OSError, ValueError) as err:
        raise ValueError(f"{FEATURES_FILE} is unreadable: {err}") from None
    if not arrays:
        raise ValueError(f"{FEATURES_FILE} has no statistics for variant {variant!r}")
    try:
        return FeatureStats(np.asarray(arrays["means"], np.float64), np.asarray(arrays["components"], np.float64),
                            np.asarray(arrays["variances"], np.float64),
                            float(np.asarray(arrays["residual_variance"]).reshape(-1)[0]),
                            int(np.asarray(arrays["train_photos"]).reshape(-1)[0]),
                            float(np.asarray(arrays["shrinkage"]).reshape(-1)[0]))
    except KeyError as err:
        raise ValueError(f"{FEATURES_FILE}: the statistics of {variant!r} lack {err}") from None


def _policy_to_json(fitted: PolicyFit) -> dict[str, Any]:
    return {**fitted.policy.to_dict(), "target": fitted.target, "confidence": fitted.confidence,
            "val_dangerous_as_edible_rate": fitted.val_dangerous_as_edible_rate, "val_coverage": fitted.val_coverage}


def _policy_from_json(entry: dict[str, Any], fit: dict[str, Any] | None = None) -> PolicyFit:
    """A policy from its entry; its fit from ``fit`` (default: the entry itself)."""
    fit = entry if fit is None else fit
    threshold = entry.get("edible_threshold")
    policy = Policy(float(entry.get("temperature", 1.0)), None if threshold is None else float(threshold),
                    float(entry.get("not_edible_below", 0.5)))
    return PolicyFit(policy, fit.get("target"), fit.get("confidence"), fit.get("val_dangerous_as_edible_rate"),
                     fit.get("val_coverage"))


_OPEN_SET_FIT = ("score_choice", "score_constraint", "unknown_check", "fitted_on", "val_refused", "val_quantile")


def _variant_to_json(calibration: VariantCalibration) -> dict[str, Any]:
    entry: dict[str, Any] = calibration.policy.to_dict()
    fitted = _policy_to_json(calibration.calibrated)
    baseline = calibration.uncalibrated
    entry["fit"] = {**{k: fitted[k] for k in fitted if k not in entry},
                    "uncalibrated": None if baseline is None else _policy_to_json(baseline),
                    "temperature": calibration.temperature_fit, "val_nll": calibration.val_nll,
                    "validation": calibration.validation}
    rule, fit = calibration.open_set, calibration.open_set_fit
    if rule is not None:
        open_set: dict[str, Any] = {"score": rule.score, "threshold": rule.threshold, "known_kept": rule.known_kept,
                                    "fallback": rule.fallback}
        if rule.prototypes is not None:
            open_set["prototypes"] = np.round(np.asarray(rule.prototypes, dtype=np.float64), 6).tolist()
        if rule.features is not None:
            open_set["features"] = _stats_to_json(rule.features)
        if fit is not None:
            open_set.update({k: getattr(fit, k) for k in _OPEN_SET_FIT}, notes=list(fit.notes))
        entry["open_set"] = open_set
    if calibration.levels is not None and calibration.levels.fitted:
        entry["levels"] = calibration.levels.to_dict()
    return entry


def _variant_from_json(entry: dict[str, Any], variant: str, root: Path, version: int,
                       num_classes: int | None) -> VariantCalibration:
    fit = entry.get("fit") or {}
    open_set = entry.get("open_set")
    rule = rule_fit = None
    if open_set:
        score = open_set.get("score", "msp")
        stats = None
        if score in FEATURE_SCORES:
            if version >= 3:
                if not open_set.get("features"):
                    raise ValueError(f"open-set score {score!r} without feature statistics")
                stats = _stats_from_json(open_set["features"])
            else:
                stats = _legacy_stats(root, variant)
        prototypes = open_set.get("prototypes")
        threshold = open_set.get("threshold")
        rule = OpenSetRule(score, None if threshold is None else float(threshold),
                           None if prototypes is None else np.asarray(prototypes, dtype=np.float64),
                           float(open_set.get("known_kept", DEFAULT_KNOWN_KEPT)), open_set.get("fallback"), stats)
        rule.check(num_classes)
        if any(k in open_set for k in _OPEN_SET_FIT):  # how it was fitted (version 2: in part)
            rule_fit = OpenSetFit(**{k: open_set.get(k) for k in _OPEN_SET_FIT},
                                  notes=tuple(open_set.get("notes", ())))
    uncalibrated = fit.get("uncalibrated")
    levels = entry.get("levels")  # version 4 on; before it: no levels (species answers only)
    return VariantCalibration(
        calibrated=_policy_from_json(entry, fit), open_set=rule, open_set_fit=rule_fit,
        uncalibrated=None if uncalibrated is None else _policy_from_json(uncalibrated),
        temperature_fit=fit.get("temperature"), val_nll=fit.get("val_nll"), validation=fit.get("validation"),
        levels=LevelRule.from_dict(levels) if levels else None)


def calibration_to_json(calibration: Calibration) -> dict[str, Any]:
    """``calibration.json``: the calibration of the bundle's TFLite variants (the Keras model's is left out)."""
    variants = {}
    for key, entry in calibration.variants.items():
        name = registry.variant_of_key(key)
        if name is not None:
            variants[name] = _variant_to_json(entry)
    return {"schema_version": CALIBRATION_SCHEMA_VERSION, "variants": variants,
            "target_dangerous_as_edible": calibration.target_dangerous_as_edible,
            "fitted_on": calibration.fitted_on, "warnings": list(calibration.warnings)}


def calibration_from_json(data: dict[str, Any], root: Path, num_classes: int | None = None) -> Calibration:
    """The calibration in a ``calibration.json`` dict of any version this code reads.

    Args:
        data: The file's contents.
        root: The bundle folder (version 2 keeps feature statistics in :data:`FEATURES_FILE` there).
        num_classes: The classes prototypes and feature statistics must match (None: not checked
            here; ``identify`` checks the variant it uses, after its model and labels).

    Raises:
        ValueError: An entry that cannot be used (an unknown score, statistics missing or not fitting).
    """
    version = int(data.get("schema_version", 1))
    variants = {}
    for name, entry in (data.get("variants") or {}).items():
        try:
            variants[registry.evaluation_key(name)] = _variant_from_json(entry or {}, name, root, version,
                                                                         num_classes)
        except ValueError as err:
            raise ValueError(f"variant {name}: {err}") from None
    # Version 1 kept a copy of the default variant here; metadata.json is the one record of it.
    return Calibration(variants, data.get("target_dangerous_as_edible"), data.get("fitted_on"),
                       tuple(data.get("warnings") or ()))


def write_calibration(bundle_dir: str | Path, calibration: Calibration) -> Path:
    """Write ``calibration`` into a bundle folder (``calibration.json``; an older bundle's
    :data:`FEATURES_FILE` is removed: the statistics are inside). Returns the file's path."""
    root = Path(bundle_dir)
    path = root / CALIBRATION
    write_json_atomic(path, calibration_to_json(calibration))
    (root / FEATURES_FILE).unlink(missing_ok=True)
    return path


def read_calibration(bundle_dir: str | Path, num_classes: int | None = None) -> Calibration:
    """The calibration of a bundle folder (any version this code reads; see :func:`calibration_from_json`).

    Raises:
        BundleError: The file is missing, of a newer version, or holds an entry that cannot be used.
    """
    root = Path(bundle_dir)
    try:
        data = read_json(root / CALIBRATION)
        check_schema_version(data, CALIBRATION_SCHEMA_VERSION, f"bundle {root}: {CALIBRATION}", oldest=1)
        return calibration_from_json(data, root, num_classes)
    except SchemaVersionError as err:
        raise BundleError(str(err)) from None
    except (ValueError, OSError) as err:
        raise BundleError(f"bundle {root}: {CALIBRATION}: {err}") from None


# --------------------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class Bundle:
    """A bundle read from disk.

    Attributes:
        root: The folder.
        catalog: The classes, in model output order.
        calibration: The fitted calibration of its variants (safe defaults before the evaluate stage).
        metadata: ``metadata.json``.
        shipped_variant: The variant it ships, ``identify``'s default (:func:`shipped_variant`).
    """

    root: Path
    catalog: Catalog
    calibration: Calibration
    metadata: dict[str, Any]
    shipped_variant: str

    def model_path(self, variant: str) -> Path:
        path = self.root / model_filename(variant)
        if not path.is_file():
            have = sorted(p.name for p in self.root.glob("*.tflite"))
            raise BundleError(f"bundle {self.root} has no {path.name} (it has {have})")
        return path

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def variants(self) -> list[str]:
        """The TFLite variants the bundle holds."""
        return list(self.metadata["variants"])

    @property
    def provenance(self) -> dict[str, Any]:
        """``metadata.json``'s ``provenance`` ({} for bundles written before it was recorded)."""
        return dict(self.metadata.get("provenance") or {})

    def recorded_latency(self) -> tuple[dict[str, dict], dict[str, Any]] | None:
        """The latency the quantize stage measured (:mod:`mushroom.latency`), keyed by evaluation key,
        and how; None for a bundle without those figures (older, or not written by that stage)."""
        path = self.root / QUANTIZATION_REPORT
        report = read_json(path) if path.is_file() else {}
        latency, settings = report.get("latency"), report.get("latency_settings")
        if not latency or not settings or any(v not in latency for v in self.variants):
            return None
        return {registry.evaluation_key(v): latency[v] for v in self.variants}, settings


def read_metadata(root: str | Path) -> dict[str, Any]:
    """A bundle folder's ``metadata.json`` alone (to tell bundles apart without reading them)."""
    return read_json(Path(root) / METADATA)


def read_bundle(root: str | Path) -> Bundle:
    """Read and check a bundle folder: all files present, labels consistent with species, a usable calibration."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a folder")
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise BundleError(f"bundle {root} is missing {missing}")
    try:
        labels = read_json(root / LABELS)
        catalog = parse_catalog((root / SPECIES).read_text(encoding="utf-8"), str(root / SPECIES))
        meta = read_json(root / METADATA)
        check_schema_version(meta, METADATA_SCHEMA_VERSION, f"bundle {root}: {METADATA}")
        shipped = shipped_variant(meta)
    except SchemaVersionError as err:
        raise BundleError(str(err)) from None
    except (ValueError, OSError, KeyError) as err:
        raise BundleError(f"bundle {root} has an unreadable file: {err}") from None
    if [row["taxon_id"] for row in labels] != catalog.taxon_ids:
        raise BundleError(f"bundle {root}: {LABELS} and {SPECIES} list different classes or orders")
    return Bundle(root, catalog, read_calibration(root), meta, shipped)


# --------------------------------------------------------------------------- month_prior.json

MONTH_PRIOR = "month_prior.json"  # optional: P(month | species) (mushroom.month_prior); absent: no prior


def write_month_prior(bundle_dir: str | Path, prior) -> Path:
    """Write a :class:`mushroom.month_prior.MonthPrior` (with the evaluation's decision, if judged)
    into a bundle or model folder; returns the file's path."""
    path = Path(bundle_dir) / MONTH_PRIOR
    write_json_atomic(path, prior.to_json())
    return path


def read_month_prior(bundle_dir: str | Path, catalog: Catalog | None = None):
    """The month prior of a bundle folder (or a train stage's model folder); None when it has none.

    Raises:
        BundleError: The file is unreadable, of a newer version, or its classes are not ``catalog``'s.
    """
    from mushroom.month_prior import MonthPrior

    path = Path(bundle_dir) / MONTH_PRIOR
    if not path.is_file():
        return None
    try:
        prior = MonthPrior.from_json(read_json(path))
        if catalog is not None:
            prior.check(catalog.taxon_ids)
    except (ValueError, OSError) as err:
        raise BundleError(f"bundle {bundle_dir}: {MONTH_PRIOR}: {err}") from None
    return prior
