"""The model bundle: everything ``identify`` needs, in one folder.

::

    model_float32.tflite, model_int8.tflite   the converted models
    labels.json        class order: index -> taxon id and scientific name
    species.csv        the catalog rows of the classes (names, edibility, caution)
    calibration.json   temperature and thresholds per variant (see ``mushroom.policy``)
    open_set_features.npz  per variant whose open-set score is ``mahalanobis``: class means and
                       the low-rank shared covariance of its pooled features (``mushroom.openset``);
                       absent in older bundles and where a probability score was chosen
    metadata.json      architecture, input size, the default variant, versions, config hash, and
                       ``provenance`` (:func:`build_provenance`): data source, species and photo
                       counts per split, licences of the training photos, run configuration,
                       project version and commit, build time

``metadata.json`` and ``calibration.json`` carry a ``schema_version``; a bundle written by a
newer schema than this code reads is refused with a clear message. Reading a bundle needs only
the standard library (no TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from datetime import UTC
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from mushroom import variants as registry
from mushroom.fileio import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from mushroom.openset import FEATURE_SCORES, FEATURES_FILE, FeatureStats, OpenSetRule, rule_from_dict
from mushroom.policy import CALIBRATION_SCHEMA_VERSION, DEFAULT_CALIBRATION, Policy, policy_for
from mushroom.species import Catalog, parse_catalog
from mushroom.versioning import SchemaVersionError, check_schema_version

LABELS = "labels.json"
SPECIES = "species.csv"
CALIBRATION = "calibration.json"
METADATA = "metadata.json"
REQUIRED = (LABELS, SPECIES, CALIBRATION, METADATA)
METADATA_SCHEMA_VERSION = 2  # 1: no schema_version field


class BundleError(ValueError):
    """A bundle folder is incomplete or inconsistent."""


def model_filename(variant: str) -> str:
    return f"model_{variant}.tflite"


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a configuration dict."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version(package: str) -> str | None:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None


def write_bundle(
    out_dir: str | Path,
    models: dict[str, bytes],
    catalog: Catalog,
    model_config: dict[str, Any],
    extra_metadata: dict[str, Any] | None = None,
    default_variant: str | None = None,
) -> Path:
    """Write a bundle folder.

    Args:
        out_dir: Folder to write (created if missing).
        models: Variant name (see :mod:`mushroom.variants`) -> TFLite flatbuffer.
        catalog: The classes, in model output order.
        model_config: The model configuration the model was trained with.
        extra_metadata: Added to ``metadata.json``.
        default_variant: The variant ``identify`` uses by default (the quantize stage's
            choice); default: the registry's fallback among ``models``.
    """
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
    default_variant = default_variant or registry.fallback_variant(models)
    if default_variant not in models:
        raise BundleError(f"default variant {default_variant!r} is not among the bundle's {sorted(models)}")
    meta = {
        "schema_version": METADATA_SCHEMA_VERSION,
        "model_name": model_config["model_name"],
        "architecture": model_config["architecture"],
        "image_size": model_config["image_size"],
        "input": "float32 RGB pixels in 0-255, resized with padding (mushroom.preprocess.load_image)",
        "num_classes": len(catalog),
        "variants": {v: model_filename(v) for v in models},
        "default_variant": default_variant,
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
    write_json_atomic(out_dir / CALIBRATION, DEFAULT_CALIBRATION)
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
    """The variant a bundle ships, from its ``metadata.json``: the run's choice, else the registry's fallback.

    Args:
        metadata: The bundle's ``metadata.json``.

    Returns:
        A variant name (``int8``, ...).
    """
    return metadata.get("default_variant") or registry.fallback_variant(metadata["variants"])


@dataclass(frozen=True)
class Bundle:
    """A bundle read from disk."""

    root: Path
    catalog: Catalog
    calibration: dict[str, Any]
    metadata: dict[str, Any]

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
    def default_variant(self) -> str:
        """The variant ``identify`` uses by default (:func:`shipped_variant` of its metadata)."""
        return shipped_variant(self.metadata)

    def policy(self, variant: str | None = None) -> Policy:
        """The calibrated safety policy of ``variant`` (default: :attr:`default_variant`)."""
        return policy_for(self.calibration, variant or self.default_variant)

    def open_set_rule(self, variant: str | None = None) -> OpenSetRule | None:
        """The open-set rule of ``variant`` (None: the bundle has none, e.g. before the evaluate stage).

        Raises:
            BundleError: The entry names an unknown score, its prototypes do not fit the classes,
                or its feature statistics are missing or do not fit.
        """
        variant = variant or self.default_variant
        entry = self.calibration.get("variants", {}).get(variant, {}).get("open_set")
        try:
            stats = self.feature_stats(variant) if entry and entry.get("score") in FEATURE_SCORES else None
            rule = rule_from_dict(entry, stats)
            if stats is not None and stats.means.shape[0] != len(self.catalog):
                raise ValueError(f"open-set feature statistics of {stats.means.shape[0]} classes do not match "
                                 f"{len(self.catalog)} species")
            if rule is not None and rule.prototypes is not None and rule.prototypes.shape != (len(self.catalog),) * 2:
                raise ValueError(f"open-set prototypes of shape {rule.prototypes.shape} do not match "
                                 f"{len(self.catalog)} species")
        except ValueError as err:
            raise BundleError(f"bundle {self.root}: {CALIBRATION}: {err}") from None
        return rule

    def feature_stats(self, variant: str) -> FeatureStats:
        """The open-set feature statistics of ``variant`` (from :data:`mushroom.openset.FEATURES_FILE`).

        Raises:
            ValueError: The file is missing, unreadable, or has none for ``variant``.
        """
        import numpy as np

        path = self.root / FEATURES_FILE
        if not path.is_file():
            raise ValueError(f"the open-set score needs {FEATURES_FILE}, which the bundle lacks")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k.startswith(f"{variant}.")}
        except (OSError, ValueError) as err:
            raise ValueError(f"{FEATURES_FILE} is unreadable: {err}") from None
        if not arrays:
            raise ValueError(f"{FEATURES_FILE} has no statistics for variant {variant!r}")
        return FeatureStats.from_arrays(arrays, f"{variant}.")

    @property
    def provenance(self) -> dict[str, Any]:
        """``metadata.json``'s ``provenance`` ({} for bundles written before it was recorded)."""
        return dict(self.metadata.get("provenance") or {})


def read_bundle(root: str | Path) -> Bundle:
    """Read and check a bundle folder: all files present, labels consistent with species."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a folder")
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise BundleError(f"bundle {root} is missing {missing}")
    try:
        labels = read_json(root / LABELS)
        catalog = parse_catalog((root / SPECIES).read_text(encoding="utf-8"), str(root / SPECIES))
        calibration = read_json(root / CALIBRATION)
        meta = read_json(root / METADATA)
        check_schema_version(meta, METADATA_SCHEMA_VERSION, f"bundle {root}: {METADATA}")
        check_schema_version(calibration, CALIBRATION_SCHEMA_VERSION, f"bundle {root}: {CALIBRATION}")
    except SchemaVersionError as err:
        raise BundleError(str(err)) from None
    except (ValueError, OSError) as err:
        raise BundleError(f"bundle {root} has an unreadable file: {err}") from None
    # Version 1 kept a copy of the default variant here; metadata.json is the one record of it.
    calibration = {**DEFAULT_CALIBRATION, **{k: v for k, v in calibration.items() if k != "default_variant"}}
    if [row["taxon_id"] for row in labels] != catalog.taxon_ids:
        raise BundleError(f"bundle {root}: {LABELS} and {SPECIES} list different classes or orders")
    return Bundle(root, catalog, calibration, meta)
