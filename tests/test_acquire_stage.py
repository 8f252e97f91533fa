"""The acquire stage: metrics, the dataset cache, and the iNaturalist path end to end."""

from mushroom import stages
from mushroom.manifest import read_manifest
from mushroom.testing.inat_server import FakeINaturalist


def _synthetic(cache_uri=None):
    config = {"source": "synthetic", "species": ["Amanita muscaria", "Boletus edulis"],
              "synthetic": {"photos_per_species": 6, "image_size": 48}}
    if cache_uri:
        config["cache_uri"] = cache_uri
    return config


def test_dataset_cache_builds_once_then_reuses(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = stages.acquire(_synthetic(cache), 1, tmp_path / "a")
    assert first["photos"] == 12

    def no_build(*args, **kwargs):
        raise AssertionError("the cached dataset should have been reused")

    monkeypatch.setattr("mushroom.sources.build_dataset", no_build)
    second = stages.acquire(_synthetic(cache), 1, tmp_path / "b")
    assert second == first
    assert read_manifest(tmp_path / "b") == read_manifest(tmp_path / "a")
    for record in read_manifest(tmp_path / "b"):
        assert (tmp_path / "b" / record.file).read_bytes() == (tmp_path / "a" / record.file).read_bytes()


def test_inaturalist_source_through_the_stage(tmp_path):
    taxa = [48715, 63401]  # Amanita muscaria, Macrolepiota procera
    with FakeINaturalist.with_taxa(taxa, observations_per_taxon=4, photos_per_observation=2) as server:
        config = {"source": "inaturalist", "species": taxa,
                  "inaturalist": {"api_url": server.api_url, "photos_per_species": 6, "requests_per_minute": 600,
                                  "backoff_factor": 0.01, "timeout_s": 5}}
        metrics = stages.acquire(config, 0, tmp_path / "ds")
    assert metrics["photos"] == 12 and metrics["species"] == 2 and metrics["species_short"] == 0
    assert metrics["photos_amanita_muscaria"] == 6 and metrics["photos_macrolepiota_procera"] == 6
    records = read_manifest(tmp_path / "ds")
    assert all(r.license in {"cc0", "cc-by", "cc-by-nc", "cc-by-sa", "cc-by-nc-sa"} for r in records)
    assert all(r.attribution for r in records)
    assert (tmp_path / "ds" / "ATTRIBUTIONS.csv").is_file()
