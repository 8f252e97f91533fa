import numpy as np
import pytest
from PIL import Image

from mushroom.config import DatasetConfig
from mushroom.manifest import read_dataset_catalog, read_manifest
from mushroom.sources import build_dataset


def _photo(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 50, 3), colour, np.uint8)).save(path)


def test_imagefolder_by_name_slug_and_taxon_id(tmp_path):
    root = tmp_path / "photos"
    _photo(root / "Amanita muscaria" / "a1.jpg", (200, 0, 0))
    _photo(root / "Amanita muscaria" / "a2.jpg", (200, 0, 0))
    _photo(root / "boletus_edulis" / "obs7" / "b1.jpg", (120, 80, 40))
    _photo(root / "boletus_edulis" / "obs7" / "b2.png", (120, 80, 40))
    _photo(root / "48767" / "h1.jpg", (220, 200, 0))  # Hypholoma fasciculare by taxon id
    (root / "48767" / "notes.txt").write_text("not a photo")
    (root / "48767" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    config = DatasetConfig(source="folder", folder={"root": str(root)})
    records = build_dataset(config, tmp_path / "ds")

    assert len(records) == 5
    assert read_manifest(tmp_path / "ds") == records
    catalog = read_dataset_catalog(tmp_path / "ds")
    assert [s.scientific_name for s in catalog] == ["Amanita muscaria", "Hypholoma fasciculare", "Boletus edulis"]
    boletus = [r for r in records if r.taxon_id == catalog.resolve("Boletus edulis").taxon_id]
    assert len({r.observation_id for r in boletus}) == 1  # sub-folder = one observation
    for r in records:
        assert (tmp_path / "ds" / r.file).is_file()


def test_unknown_species_folder_is_a_clear_error(tmp_path):
    root = tmp_path / "photos"
    _photo(root / "Amanita muscaria" / "a.jpg", (1, 2, 3))
    _photo(root / "Mystery mushroom" / "m.jpg", (1, 2, 3))
    config = DatasetConfig(source="folder", folder={"root": str(root)})
    with pytest.raises(ValueError, match=r"\['Mystery mushroom'\] match no catalog species"):
        build_dataset(config, tmp_path / "ds")


def test_configured_subset_skips_other_species_and_needs_two(tmp_path):
    root = tmp_path / "photos"
    _photo(root / "Amanita muscaria" / "a.jpg", (1, 2, 3))
    _photo(root / "Boletus edulis" / "b.jpg", (1, 2, 3))
    config = DatasetConfig(source="folder", folder={"root": str(root)},
                           species=["Amanita muscaria", "Amanita phalloides"])
    with pytest.raises(ValueError, match="at least 2 are needed"):
        build_dataset(config, tmp_path / "ds")
