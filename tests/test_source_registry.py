"""A data source is one module and its registration: a test source runs through the
configuration, the acquire stage, the bundle's provenance, the report and identify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import Field

from mushroom import stages
from mushroom.config import ConfigError, DatasetConfig, parse_config
from mushroom.config_base import Strict
from mushroom.manifest import PhotoRecord
from mushroom.sources import registry

SPECIES = ["Amanita muscaria", "Boletus edulis"]


class FieldGuideSettings(Strict):
    """``dataset.field_guide:`` of the test source."""

    photos_per_species: int = Field(3, ge=1)
    guide: str = "Pilzkompass"


def collect_field_guide(settings: FieldGuideSettings, catalog, out_dir, seed, ignore=None) -> list[PhotoRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for species in catalog:
        for i in range(settings.photos_per_species):
            file = f"images/{species.taxon_id}/guide-{i}.jpg"
            (out_dir / file).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(out_dir / file)
            records.append(PhotoRecord(f"{species.taxon_id}-{i}", f"{species.taxon_id}-{i}", species.taxon_id, file,
                                       "cc0", settings.guide))
    return records


@pytest.fixture
def field_guide():
    source = registry.register(registry.Source(
        "field_guide", lambda: FieldGuideSettings, collect_field_guide,
        lambda data: f"plates from the field guide {(data.get('guide') or '?')}",
        recorded=lambda settings: {"guide": settings.get("guide")},
        metrics=lambda dataset_dir: {"plates": float(len(list(Path(dataset_dir).glob("images/*/guide-*.jpg"))))}))
    yield source
    registry.unregister("field_guide")


def test_a_registered_source_runs_through_acquire_provenance_report_and_identify(field_guide, tmp_path):
    from mushroom.bundle import build_provenance
    from mushroom.evaluation import Evaluation
    from mushroom.identify_text import describe_source
    from mushroom.report.tables import data_source_line

    config = {"source": "field_guide", "species": SPECIES, "field_guide": {"photos_per_species": 4, "guide": "Gminder"}}
    metrics = stages.acquire(config, 3, tmp_path / "dataset")
    assert metrics["photos"] == 8 and metrics["species"] == 2 and metrics["plates"] == 8  # its own metrics too
    info = json.loads((tmp_path / "dataset" / "dataset.json").read_text())
    assert info["source"] == "field_guide" and info["config"]["field_guide"]["guide"] == "Gminder"

    stages.split(tmp_path / "dataset", {"train": 0.5, "val": 0.25, "test": 0.25}, 3, tmp_path / "splits")
    data = build_provenance(tmp_path / "dataset", tmp_path / "splits")["data"]
    assert data["source"] == "field_guide" and data["guide"] == "Gminder" and data["synthetic"] is False

    assert describe_source(data) == "trained on: plates from the field guide Gminder"
    evaluation = Evaluation.model_construct(data_source=data)
    assert data_source_line(evaluation) == "Data source: plates from the field guide Gminder."


def test_its_settings_are_validated_by_its_own_model(field_guide):
    models = [{"model_name": "m", "architecture": "mobilenetv3-large", "weights": "none"}]
    with pytest.raises(ConfigError,
                       match=r"dataset: field_guide.photos_per_species: Input should be greater than or equal to 1"):
        parse_config({"name": "x", "dataset": {"source": "field_guide", "species": SPECIES,
                                               "field_guide": {"photos_per_species": 0}}, "models": models})
    config = DatasetConfig.model_validate({"source": "field_guide", "species": SPECIES})
    assert config.settings() == FieldGuideSettings()


def test_unknown_sources_and_settings_are_refused_naming_the_registered_ones():
    models = [{"model_name": "m", "architecture": "mobilenetv3-large", "weights": "none"}]
    with pytest.raises(ConfigError, match=r"dataset.source: unknown source 'field_guide'; allowed: \['synthetic'"):
        parse_config({"name": "x", "dataset": {"source": "field_guide"}, "models": models})
    with pytest.raises(ConfigError, match=r"unknown field 'field_guide'"):
        parse_config({"name": "x", "dataset": {"source": "synthetic", "field_guide": {}}, "models": models})
    with pytest.raises(ConfigError, match=r"source 'folder' needs its settings: dataset.folder.root"):
        parse_config({"name": "x", "dataset": {"source": "folder"}, "models": models})


def test_the_built_in_sources_describe_themselves_once():
    assert registry.names() == ["synthetic", "folder", "inaturalist"]
    assert registry.is_synthetic({"source": "synthetic"}) and not registry.is_synthetic({"source": "folder"})
    line = registry.describe({"source": "inaturalist", "place_id": 7207, "acquired_at": "2026-11-30T10:00:00"})
    assert line == "iNaturalist research-grade photos (place 7207, acquired 2026-11-30)"
    assert registry.describe({"source": "folder", "root": "/photos"}) == "photos from a local folder (/photos)"
    assert registry.describe({}) == "not recorded"
