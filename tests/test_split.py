from collections import Counter

import pytest

from mushroom.manifest import PhotoRecord
from mushroom.split import split_by_observation


def _records(n_taxa=3, n_obs=20, photos_per_obs=(1, 2, 3)):
    records = []
    for t in range(n_taxa):
        for o in range(n_obs):
            for p in range(photos_per_obs[o % len(photos_per_obs)]):
                records.append(PhotoRecord(f"o{t}-{o}", f"p{t}-{o}-{p}", 100 + t, f"images/{t}/{o}-{p}.jpg",
                                           "cc-by", "someone"))
    return records


def test_observations_never_straddle_splits():
    result = split_by_observation(_records(), seed=1)
    split_of = {}
    for r in result:
        assert split_of.setdefault(r.observation_id, r.split) == r.split


def test_every_species_in_every_split_near_requested_fractions():
    records = _records(n_obs=40)
    result = split_by_observation(records, (0.7, 0.15, 0.15), seed=3)
    for taxon in {r.taxon_id for r in records}:
        counts = Counter(r.split for r in result if r.taxon_id == taxon)
        total = sum(counts.values())
        assert set(counts) == {"train", "val", "test"}
        assert abs(counts["train"] / total - 0.7) < 0.06
        assert abs(counts["val"] / total - 0.15) < 0.06


def test_seeded_and_order_preserving():
    records = _records()
    a = split_by_observation(records, seed=5)
    assert a == split_by_observation(records, seed=5)
    assert [r.photo_id for r in a] == [r.photo_id for r in records]
    assert [r.split for r in a] != [r.split for r in split_by_observation(records, seed=6)]


def test_bad_fractions_and_mixed_observations_rejected():
    with pytest.raises(ValueError, match="summing to 1"):
        split_by_observation(_records(), (0.5, 0.2, 0.2))
    bad = _records(n_taxa=1) + [PhotoRecord("o0-0", "x", 999, "f.jpg", "cc0", "a")]
    with pytest.raises(ValueError, match="more than one species"):
        split_by_observation(bad)
