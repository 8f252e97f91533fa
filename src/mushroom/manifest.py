"""The dataset folder contract shared by every data source.

A dataset folder holds::

    manifest.csv     one row per photo (see ``MANIFEST_FIELDS``; ``observed_on`` is the
                     observation's date, YYYY-MM-DD, or empty where unknown: manifests
                     written before it was kept have no such column and still read)
    dataset.json     source, species (catalog order = class order), counts
    images/...       the photos, at the paths the manifest names (relative)

A split table (``splits.csv``) is the manifest plus a ``split`` column.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mushroom.fileio import read_json, write_json_atomic, write_text_atomic
from mushroom.species import Catalog, Species

MANIFEST_NAME = "manifest.csv"
DATASET_INFO_NAME = "dataset.json"
SPLITS_NAME = "splits.csv"
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class PhotoRecord:
    """One photo in a dataset."""

    observation_id: str
    photo_id: str
    taxon_id: int
    file: str
    license: str
    attribution: str
    observed_on: str = ""  # the observation's date, YYYY-MM-DD ("": unknown)
    split: str = ""


MANIFEST_FIELDS = tuple(f.name for f in fields(PhotoRecord) if f.name != "split")
OPTIONAL_FIELDS = ("observed_on",)  # absent from manifests written before it was kept


def records_to_csv(records: list[PhotoRecord], with_split: bool = False) -> str:
    names = list(MANIFEST_FIELDS) + (["split"] if with_split else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow(asdict(r))
    return buf.getvalue()


def parse_records(text: str, source: str) -> list[PhotoRecord]:
    reader = csv.DictReader(io.StringIO(text))
    missing = set(MANIFEST_FIELDS) - set(OPTIONAL_FIELDS) - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{source}: missing columns {sorted(missing)}")
    records = []
    for row in reader:
        records.append(
            PhotoRecord(
                observation_id=row["observation_id"],
                photo_id=row["photo_id"],
                taxon_id=int(row["taxon_id"]),
                file=row["file"],
                license=row["license"],
                attribution=row["attribution"],
                observed_on=row.get("observed_on", "") or "",
                split=row.get("split", "") or "",
            )
        )
    return records


def _write_records(path: Path, records: list[PhotoRecord], with_split: bool = False) -> Path:
    write_text_atomic(path, records_to_csv(records, with_split=with_split))
    return path


def _read_records(path: Path, missing: str) -> list[PhotoRecord]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {missing}")
    return parse_records(path.read_text(encoding="utf-8"), str(path))


def write_manifest(root: str | Path, records: list[PhotoRecord]) -> Path:
    return _write_records(Path(root) / MANIFEST_NAME, records)


def read_manifest(root: str | Path) -> list[PhotoRecord]:
    return _read_records(Path(root) / MANIFEST_NAME, f"no dataset manifest (is {root} a dataset folder?)")


def write_splits(root: str | Path, records: list[PhotoRecord]) -> Path:
    return _write_records(Path(root) / SPLITS_NAME, records, with_split=True)


def read_splits(root: str | Path) -> list[PhotoRecord]:
    return _read_records(Path(root) / SPLITS_NAME, "no split table")


def write_dataset_info(root: str | Path, catalog: Catalog, records: list[PhotoRecord], **extra) -> dict:
    """Write ``dataset.json``: the class list (catalog order) and per-species counts."""
    counts = Counter(r.taxon_id for r in records)
    info = {
        "species": catalog.to_rows(),
        "num_photos": len(records),
        "photos_per_species": {str(s.taxon_id): counts.get(s.taxon_id, 0) for s in catalog},
        **extra,
    }
    write_json_atomic(Path(root) / DATASET_INFO_NAME, info)
    return info


def read_dataset_catalog(root: str | Path) -> Catalog:
    """The class list of a dataset, as a catalog in class-index order."""
    path = Path(root) / DATASET_INFO_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no dataset description (is {root} a dataset folder?)")
    rows = read_json(path)["species"]
    return Catalog([Species(**{**row, "taxon_id": int(row["taxon_id"])}) for row in rows])
