"""The synthetic source: deterministic, well-formed and learnable photos."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mushroom.config import DatasetConfig, SyntheticSourceConfig
from mushroom.manifest import MANIFEST_FIELDS, PhotoRecord, read_dataset_catalog, read_manifest
from mushroom.sources import build_dataset
from mushroom.sources.synthetic import CAP_SHAPES, CAP_TEXTURES, generate_synthetic, species_style
from mushroom.species import load_catalog

SEED = 7


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def three(catalog):
    return catalog.subset(catalog.taxon_ids[:3])


@pytest.fixture(scope="module")
def small_config():
    return SyntheticSourceConfig(photos_per_species=7, image_size=40, photos_per_observation=3)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, three, small_config):
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate_synthetic(small_config, three, out, SEED)


def _file_bytes(root: Path, records: list[PhotoRecord]) -> dict[str, bytes]:
    return {r.photo_id: (root / r.file).read_bytes() for r in records}


def test_counts_ids_and_manifest_fields(small_run, three, small_config):
    out, records = small_run
    assert len(records) == len(three) * small_config.photos_per_species
    assert Counter(r.taxon_id for r in records) == {t: 7 for t in three.taxon_ids}
    # Species come in catalog order.
    assert list(dict.fromkeys(r.taxon_id for r in records)) == three.taxon_ids
    assert len({r.photo_id for r in records}) == len(records)
    for r in records:
        assert set(MANIFEST_FIELDS) <= set(vars(r))
        assert r.license == "cc0"
        assert r.attribution == f"synthetic (quantized-mushroom generator, seed {SEED})"
        assert r.split == ""
        assert r.file == f"images/{r.taxon_id}/{r.photo_id}.jpg"
        assert str(r.taxon_id) in r.photo_id and str(r.taxon_id) in r.observation_id
        assert (out / r.file).is_file()


def test_build_dataset_writes_a_readable_synthetic_dataset(tmp_path, catalog):
    species = catalog.taxon_ids[:2]
    config = DatasetConfig(
        source="synthetic",
        species=species,
        synthetic=SyntheticSourceConfig(photos_per_species=6, image_size=32, photos_per_observation=2),
    )
    records = build_dataset(config, tmp_path, seed=SEED)
    assert read_manifest(tmp_path) == records
    assert read_dataset_catalog(tmp_path).taxon_ids == species
    assert all((tmp_path / r.file).is_file() for r in records)


def test_writes_only_the_photos(small_run):
    out, records = small_run
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(r.file for r in records)  # no temporary files left behind


def test_images_decode_as_rgb_at_the_configured_size(small_run, small_config):
    out, records = small_run
    for r in records:
        with Image.open(out / r.file) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (small_config.image_size, small_config.image_size)
            pixels = np.asarray(image)
        assert pixels.std() > 10  # a picture, not a flat fill


def test_photos_are_grouped_into_observations(small_run, three):
    out, records = small_run
    groups = defaultdict(list)
    for r in records:
        groups[r.observation_id].append(r)
    for taxon_id in three.taxon_ids:
        sizes = sorted((len(g) for g in groups.values() if g[0].taxon_id == taxon_id), reverse=True)
        assert sizes == [3, 3, 1]  # 7 photos, 3 per observation
    for group in groups.values():
        assert len({r.taxon_id for r in group}) == 1
        # Different views of one mushroom, not copies of one photo.
        assert len({(out / r.file).read_bytes() for r in group}) == len(group)


def test_same_seed_gives_identical_bytes_and_records(tmp_path, small_run, three, small_config):
    out, records = small_run
    again = generate_synthetic(small_config, three, tmp_path, SEED)
    assert again == records
    assert _file_bytes(tmp_path, again) == _file_bytes(out, records)


def test_regenerating_in_place_is_safe(tmp_path, three, small_config):
    first = generate_synthetic(small_config, three, tmp_path, SEED)
    before = _file_bytes(tmp_path, first)
    second = generate_synthetic(small_config, three, tmp_path, SEED)
    assert second == first
    assert _file_bytes(tmp_path, second) == before
    assert sum(1 for p in tmp_path.rglob("*") if p.is_file()) == len(first)


@pytest.mark.parametrize("other_seed", [SEED + 1, -SEED])
def test_a_different_seed_gives_different_photos(tmp_path, small_run, three, small_config, other_seed):
    out, records = small_run
    other = generate_synthetic(small_config, three, tmp_path, other_seed)
    assert [r.photo_id for r in other] == [r.photo_id for r in records]
    assert other[0].attribution.endswith(f"seed {other_seed})")
    ours, theirs = _file_bytes(out, records), _file_bytes(tmp_path, other)
    assert all(ours[k] != theirs[k] for k in ours)


def test_a_species_looks_the_same_whichever_subset_is_generated(tmp_path, catalog):
    config = SyntheticSourceConfig(photos_per_species=6, image_size=32, photos_per_observation=2)
    target = catalog.taxon_ids[10]
    alone = catalog.subset([target])
    with_others = catalog.subset([catalog.taxon_ids[0], target, catalog.taxon_ids[20]])
    assert alone.index_of(target) != with_others.index_of(target)
    a = generate_synthetic(config, alone, tmp_path / "a", SEED)
    b = [r for r in generate_synthetic(config, with_others, tmp_path / "b", SEED) if r.taxon_id == target]
    assert a == b
    assert _file_bytes(tmp_path / "a", a) == _file_bytes(tmp_path / "b", b)
    assert species_style(target) == species_style(target)


def _salient_differences(a, b) -> int:
    hue_gap = abs(a.cap_hsv[0] - b.cap_hsv[0]) % 1.0
    return sum(
        [
            a.shape != b.shape,
            a.texture != b.texture,
            min(hue_gap, 1.0 - hue_gap) >= 0.05,
            a.stem_rgb != b.stem_rgb,
            a.gill_rgb != b.gill_rgb,
            a.texture_rgb != b.texture_rgb,
        ]
    )


def test_species_styles_are_valid_and_distinct(catalog):
    styles = {t: species_style(t) for t in catalog.taxon_ids}
    assert {s.shape for s in styles.values()} == set(CAP_SHAPES)
    assert {s.texture for s in styles.values()} == set(CAP_TEXTURES)
    ids = list(styles)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            assert _salient_differences(styles[a], styles[b]) >= 2, f"taxa {a} and {b} look alike"


def _random_conv_features(images: np.ndarray, n_filters: int = 96, k: int = 5) -> np.ndarray:
    """Fixed random 5x5 filters, ReLU-like pooling over the image: a cheap, shift-invariant learner.

    Colour histograms alone cannot tell two same-coloured species apart by cap shape or texture.
    """
    rng = np.random.default_rng(0)
    kernels = rng.normal(size=(3 * k * k, n_filters)).astype(np.float32)
    kernels -= kernels.mean(axis=0)
    bias = rng.uniform(-1, 1, n_filters).astype(np.float32)
    x = images.astype(np.float32) / 255.0 - 0.5
    patches = sliding_window_view(x, (k, k), axis=(1, 2)).reshape(len(x), -1, 3 * k * k)
    activations = patches @ kernels + bias
    return np.concatenate([activations.max(axis=1), (activations > 0).mean(axis=1)], axis=1)


def test_species_are_learnable_from_held_out_observations(tmp_path, catalog):
    six = catalog.subset(catalog.taxon_ids[:6])
    config = SyntheticSourceConfig(photos_per_species=40, image_size=32, photos_per_observation=2)
    records = generate_synthetic(config, six, tmp_path, SEED)
    images = np.stack([np.asarray(Image.open(tmp_path / r.file)) for r in records])
    features = _random_conv_features(images)
    labels = np.array([six.index_of(r.taxon_id) for r in records])
    # Hold out whole observations (the last 6 of 20 per species), as the real split does.
    held_out = np.array([int(r.observation_id.rsplit("-", 1)[1]) >= 14 for r in records])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    model.fit(features[~held_out], labels[~held_out])
    accuracy = model.score(features[held_out], labels[held_out])
    assert accuracy >= 0.8, f"held-out accuracy {accuracy:.2f}"
