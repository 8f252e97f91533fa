"""The species catalog: the one place that knows classes, their order, names and edibility."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

EDIBILITY_VALUES = ("edible", "inedible", "poisonous", "deadly")
DANGEROUS = frozenset({"poisonous", "deadly"})


@dataclass(frozen=True)
class Species:
    """One catalog row."""

    taxon_id: int
    scientific_name: str
    common_name: str
    edibility: str
    caution: str = ""

    @property
    def is_edible(self) -> bool:
        return self.edibility == "edible"

    @property
    def is_dangerous(self) -> bool:
        return self.edibility in DANGEROUS

    @property
    def genus(self) -> str:
        """The genus: the first word of the scientific name (``Amanita`` for ``Amanita muscaria``)."""
        return self.scientific_name.split()[0]

    @property
    def slug(self) -> str:
        """A filesystem-safe name, e.g. ``amanita_muscaria``."""
        return self.scientific_name.lower().replace(" ", "_")


class Catalog:
    """An ordered set of species; the order is the model's class index order."""

    def __init__(self, species: list[Species]):
        if not species:
            raise ValueError("species catalog is empty")
        self.species = list(species)
        self._by_id = {s.taxon_id: s for s in self.species}
        self._by_name = {_norm(s.scientific_name): s for s in self.species}
        if len(self._by_id) != len(self.species):
            raise ValueError("species catalog has duplicate taxon ids")
        if len(self._by_name) != len(self.species):
            raise ValueError("species catalog has duplicate scientific names")

    def __len__(self) -> int:
        return len(self.species)

    def __iter__(self):
        return iter(self.species)

    def __contains__(self, taxon_id: object) -> bool:
        return taxon_id in self._by_id

    def genera(self) -> dict[str, list[int]]:
        """Genus -> the class indices of its species, genera in the order they first appear."""
        groups: dict[str, list[int]] = {}
        for index, species in enumerate(self.species):
            groups.setdefault(species.genus, []).append(index)
        return groups

    def worst_edibility(self, indices) -> str:
        """The most dangerous edibility among the species at ``indices`` (deadly > poisonous >
        inedible > edible): what a genus answer must assume."""
        return max((self.species[i].edibility for i in indices), key=EDIBILITY_VALUES.index)

    @property
    def taxon_ids(self) -> list[int]:
        return [s.taxon_id for s in self.species]

    def by_taxon_id(self, taxon_id: int) -> Species:
        try:
            return self._by_id[int(taxon_id)]
        except (KeyError, ValueError):
            raise KeyError(f"taxon id {taxon_id!r} is not in the species catalog") from None

    def index_of(self, taxon_id: int) -> int:
        """Class index of a taxon in this catalog's order."""
        return self.species.index(self.by_taxon_id(taxon_id))

    def find(self, key: str | int) -> Species | None:
        """Look a species up by taxon id, scientific name or slug (case-insensitive)."""
        text = str(key).strip()
        if text.isdigit():
            return self._by_id.get(int(text))
        return self._by_name.get(_norm(text))

    def resolve(self, key: str | int) -> Species:
        """Like :meth:`find` but raise a clear error for an unknown species."""
        found = self.find(key)
        if found is None:
            raise KeyError(
                f"unknown species {key!r}: give a taxon id or scientific name from the "
                f"catalog ({len(self)} species, e.g. {self.species[0].scientific_name!r})"
            )
        return found

    def subset(self, keys: list[str | int]) -> Catalog:
        """The catalog restricted to ``keys``, keeping catalog order (not the order given)."""
        wanted = {self.resolve(k).taxon_id for k in keys}
        return Catalog([s for s in self.species if s.taxon_id in wanted])

    def to_rows(self) -> list[dict[str, str]]:
        return [
            {
                "taxon_id": str(s.taxon_id),
                "scientific_name": s.scientific_name,
                "common_name": s.common_name,
                "edibility": s.edibility,
                "caution": s.caution,
            }
            for s in self.species
        ]

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.to_rows())
        return buf.getvalue()


CSV_FIELDS = ("taxon_id", "scientific_name", "common_name", "edibility", "caution")


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def parse_catalog(text: str, source: str = "species.csv") -> Catalog:
    """Parse catalog CSV text, validating every row."""
    reader = csv.DictReader(io.StringIO(text))
    missing = set(CSV_FIELDS) - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{source}: missing columns {sorted(missing)}")
    species = []
    for line, row in enumerate(reader, start=2):
        edibility = row["edibility"].strip()
        if edibility not in EDIBILITY_VALUES:
            raise ValueError(
                f"{source}:{line}: edibility {edibility!r} is not one of {list(EDIBILITY_VALUES)}"
            )
        try:
            taxon_id = int(row["taxon_id"])
        except ValueError:
            raise ValueError(f"{source}:{line}: taxon_id {row['taxon_id']!r} is not an integer") from None
        species.append(
            Species(
                taxon_id=taxon_id,
                scientific_name=row["scientific_name"].strip(),
                common_name=row["common_name"].strip(),
                edibility=edibility,
                caution=(row.get("caution") or "").strip(),
            )
        )
    return Catalog(species)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load the packaged species catalog, or a catalog CSV at ``path``."""
    if path is None:
        text = resources.files("mushroom").joinpath("data/species.csv").read_text(encoding="utf-8")
        return parse_catalog(text, "mushroom/data/species.csv")
    return parse_catalog(Path(path).read_text(encoding="utf-8"), str(path))
