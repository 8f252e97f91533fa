"""What an iNaturalist acquisition leaves beside the photos: attributions, failures, dataset card.

* ``ATTRIBUTIONS.csv``: one row per photo with its licence and the attribution iNaturalist gives;
* ``failures.csv``: one row per photo that was offered but not kept, with the reason;
* ``dataset_card.json`` and ``DATASET_CARD.md``: photos per species and per licence, observation
  date range, query parameters, acquisition date, failures by reason.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mushroom.fileio import read_json, write_json_atomic, write_text_atomic
from mushroom.formatting import md_table
from mushroom.manifest import PhotoRecord
from mushroom.species import Species

ATTRIBUTIONS_NAME = "ATTRIBUTIONS.csv"
FAILURES_NAME = "failures.csv"
CARD_JSON_NAME = "dataset_card.json"
CARD_MD_NAME = "DATASET_CARD.md"
OBSERVATION_URL = "https://www.inaturalist.org/observations/{}"
PHOTO_PAGE_URL = "https://www.inaturalist.org/photos/{}"
ATTRIBUTION_FIELDS = (
    "file",
    "taxon_id",
    "scientific_name",
    "observation_id",
    "photo_id",
    "license",
    "attribution",
    "observation_url",
    "photo_url",
)
FAILURE_FIELDS = ("taxon_id", "scientific_name", "observation_id", "photo_id", "reason", "detail", "url")


@dataclass(frozen=True)
class Failure:
    """A photo that was offered but not kept."""

    taxon_id: int
    observation_id: str
    photo_id: str
    reason: str
    detail: str
    url: str


@dataclass
class TaxonResult:
    """What one species' acquisition gave."""

    species: Species
    target: int
    records: list[PhotoRecord] = field(default_factory=list)
    observed_on: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    downloaded: int = 0
    resumed: int = 0
    api_requests: int = 0
    seconds: float = 0.0

    @property
    def status(self) -> str:
        n = len(self.records)
        return "complete" if n >= self.target else ("missing" if n == 0 else "short")


def write_attributions(out_dir: Path, results: list[TaxonResult]) -> Path:
    rows = [
        {
            "file": r.file,
            "taxon_id": r.taxon_id,
            "scientific_name": res.species.scientific_name,
            "observation_id": r.observation_id,
            "photo_id": r.photo_id,
            "license": r.license,
            "attribution": r.attribution,
            "observation_url": OBSERVATION_URL.format(r.observation_id),
            "photo_url": PHOTO_PAGE_URL.format(r.photo_id),
        }
        for res in results
        for r in res.records
    ]
    return _write_csv(out_dir / ATTRIBUTIONS_NAME, ATTRIBUTION_FIELDS, rows)


def write_failures(out_dir: Path, results: list[TaxonResult]) -> Path:
    rows = [
        {**vars(f), "scientific_name": res.species.scientific_name} for res in results for f in res.failures
    ]
    return _write_csv(out_dir / FAILURES_NAME, FAILURE_FIELDS, rows)


def _write_csv(path: Path, names: tuple[str, ...], rows: list[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(names), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())
    return path


def build_card(results: list[TaxonResult], query: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The dataset card as a JSON-able dict (also what ``acquisition_report`` returns)."""
    records = [r for res in results for r in res.records]
    dates = sorted(d for res in results for d in res.observed_on if d)
    return {
        "source": "inaturalist",
        "acquired_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "query": query,
        "num_photos": len(records),
        "num_species": sum(1 for res in results if res.records),
        "photos_per_species": {str(res.species.taxon_id): len(res.records) for res in results},
        "photos_per_license": dict(sorted(Counter(r.license for r in records).items())),
        "observed_on": {"from": dates[0] if dates else None, "to": dates[-1] if dates else None},
        "failures_by_reason": dict(
            sorted(Counter(f.reason for res in results for f in res.failures).items())
        ),
        "species_short": [res.species.taxon_id for res in results if res.status == "short"],
        "species_missing": [res.species.taxon_id for res in results if res.status == "missing"],
        "species": [_species_entry(res) for res in results],
        "run": run,
    }


def _species_entry(res: TaxonResult) -> dict[str, Any]:
    dates = sorted(d for d in res.observed_on if d)
    return {
        "taxon_id": res.species.taxon_id,
        "scientific_name": res.species.scientific_name,
        "common_name": res.species.common_name,
        "photos": len(res.records),
        "target": res.target,
        "status": res.status,
        "observations": len({r.observation_id for r in res.records}),
        "observed_from": dates[0] if dates else None,
        "observed_to": dates[-1] if dates else None,
        "failures": len(res.failures),
    }


def write_card(out_dir: Path, card: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``dataset_card.json`` and ``DATASET_CARD.md``."""
    json_path, md_path = out_dir / CARD_JSON_NAME, out_dir / CARD_MD_NAME
    write_json_atomic(json_path, card)
    write_text_atomic(md_path, render_card(card))
    return json_path, md_path


def read_card(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / CARD_JSON_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no dataset card (was {out_dir} acquired from iNaturalist?)")
    return read_json(path)


def render_card(card: dict[str, Any]) -> str:
    """The dataset card as Markdown."""
    q, span = card["query"], card["observed_on"]
    lines = [
        "# Dataset card: mushroom photos from iNaturalist",
        "",
        f"- Acquired: {card['acquired_at']}",
        f"- Photos: {card['num_photos']} of {card['num_species']} species",
        f"- Observed between {span['from']} and {span['to']}",
        f"- Query: `{q['api_url']}/observations`, place_id={q['place_id']}, "
        f"quality_grade={q['quality_grade']}, "
        f"photo licences {', '.join(q['licenses'])}, up to {q['photos_per_species']} photos per species, "
        f"size {q['photo_size']}, at least {q['min_photo_side']} px a side",
    ]
    run = card.get("run") or {}
    if run:
        lines.append(
            f"- Last run: {run.get('api_requests', 0)} API and {run.get('photo_requests', 0)} photo requests sent "
            f"(retries included), {run.get('bytes_downloaded', 0) / 1e6:.1f} MB, {run.get('seconds', 0):.0f} s"
        )
    lines += [
        "",
        "Every photo keeps its own licence; `ATTRIBUTIONS.csv` lists the author attribution iNaturalist "
        "gives for each. Licences with NC allow non-commercial use only; SA requires sharing alike.",
        "",
        "## Photos per species",
        "",
        md_table(["taxon", "species", "common name", "photos", "target", "status", "observed"],
                 [[s["taxon_id"], f"*{s['scientific_name']}*", s["common_name"], s["photos"], s["target"],
                   s["status"], f"{s['observed_from'] or '-'} to {s['observed_to'] or '-'}"] for s in card["species"]]),
        "",
        "## Photos per licence",
        "",
        md_table(["licence", "photos"], list(card["photos_per_license"].items())),
        "",
        "## Photos not kept",
        "",
        md_table(["reason", "photos"], list(card["failures_by_reason"].items()) or [["(none)", 0]]),
        "",
        "Details per photo are in `failures.csv`.",
        "",
    ]
    return "\n".join(lines)
