"""Data sources behind one interface (:mod:`mushroom.sources.registry`).

Every source writes photos under ``<out_dir>/images/`` and returns one
:class:`~mushroom.manifest.PhotoRecord` per photo, with ``file`` relative to ``out_dir``.
:func:`build_dataset` then writes the manifest and ``dataset.json``, so every source
produces the same dataset folder.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mushroom.fileio import write_text_atomic
from mushroom.manifest import PhotoRecord, records_to_csv, write_dataset_info, write_manifest
from mushroom.sources import registry
from mushroom.species import Catalog

if TYPE_CHECKING:
    from mushroom.config import DatasetConfig

log = logging.getLogger(__name__)


UNKNOWN_FOLDER = "unknown"  # photos of the unknown_species, under the dataset folder
UNKNOWN_MANIFEST = "unknown.csv"  # their manifest (files relative to the dataset folder); never split or trained on


def collect_photos(config: DatasetConfig, catalog: Catalog, out_dir: Path, seed: int,
                   ignore: Catalog | None = None) -> list[PhotoRecord]:
    """Run the configured source; return its records (files relative to ``out_dir``).

    ``ignore``: taxa a folder source skips without complaint (the unknown species' folders).
    """
    return registry.get(config.source).collect(config.settings(), catalog, out_dir, seed, ignore)


def build_dataset(config: DatasetConfig, out_dir: str | Path, seed: int = 42) -> list[PhotoRecord]:
    """Build a dataset folder at ``out_dir`` from the configured source.

    Args:
        config: The validated dataset configuration.
        out_dir: The dataset folder to write (created if missing).
        seed: Seed for sources that draw at random (synthetic).

    Returns:
        The manifest records, in a stable order (taxon, then photo id).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = config.catalog()
    start = time.monotonic()
    log.info("building dataset from source %r for %d species into %s", config.source, len(catalog), out_dir)
    unknown = config.unknown_catalog()
    records = collect_photos(config, catalog, out_dir, seed, ignore=unknown)
    order = {t: i for i, t in enumerate(catalog.taxon_ids)}
    records = sorted(records, key=lambda r: (order[r.taxon_id], r.observation_id, r.photo_id))
    present = {r.taxon_id for r in records}
    # Classes are the species that actually have photos, in catalog order.
    classes = Catalog([s for s in catalog if s.taxon_id in present]) if present else None
    if classes is None or len(classes) < 2:
        raise ValueError(
            f"dataset from source {config.source!r} has photos of {len(present)} species; at least 2 are needed"
        )
    write_manifest(out_dir, records)
    extra = {}
    if unknown is not None:
        extra["unknown_species"] = _collect_unknown(config, unknown, out_dir, seed)
    write_dataset_info(out_dir, classes, records, source=config.source, seed=seed,
                       config=config.model_dump(mode="json"),
                       acquired_at=datetime.now(UTC).isoformat(timespec="seconds"), **extra)
    log.info("dataset: %d photos of %d species in %.1fs", len(records), len(classes), time.monotonic() - start)
    return records


def _collect_unknown(config: DatasetConfig, unknown: Catalog, out_dir: Path, seed: int) -> list[dict]:
    """Acquire the unknown species into ``unknown/`` and write ``unknown.csv``; return their rows with counts."""
    from dataclasses import replace

    start = time.monotonic()
    records = collect_photos(config, unknown, out_dir / UNKNOWN_FOLDER, seed)
    records = [replace(r, file=f"{UNKNOWN_FOLDER}/{r.file}") for r in records]
    write_text_atomic(out_dir / UNKNOWN_MANIFEST, records_to_csv(records))
    counts = Counter(r.taxon_id for r in records)
    log.info("dataset: %d photos of %d unknown species (open-set evaluation only) in %.1fs", len(records),
             len(counts), time.monotonic() - start)
    return [{**row, "photos": counts.get(int(row["taxon_id"]), 0)} for row in unknown.to_rows()]
