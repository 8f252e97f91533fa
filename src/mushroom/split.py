"""Split a dataset by observation: photos of one observation never straddle splits."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np

from mushroom.manifest import SPLIT_NAMES, PhotoRecord

log = logging.getLogger(__name__)


def split_by_observation(
    records: list[PhotoRecord],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 42,
) -> list[PhotoRecord]:
    """Assign every photo to train/val/test, grouping by observation, stratified by species.

    Per species, observations are shuffled (seeded) and dealt to the splits so that each
    split's share of that species' *photos* is as close as possible to ``fractions``.
    Every species with at least three observations gets at least one in each split.

    Args:
        records: Manifest rows.
        fractions: Train, validation and test shares (summing to 1).
        seed: Shuffle seed; the same seed gives the same split.

    Returns:
        The records with ``split`` set, in the input order.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions}")
    observations: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    taxa_of_obs: dict[str, set[int]] = defaultdict(set)
    for i, r in enumerate(records):
        observations[r.taxon_id][r.observation_id].append(i)
        taxa_of_obs[r.observation_id].add(r.taxon_id)
    mixed = sorted(o for o, t in taxa_of_obs.items() if len(t) > 1)
    if mixed:
        raise ValueError(f"observations labelled with more than one species: {mixed[:5]}")

    assignment: dict[int, str] = {}
    for taxon_id in sorted(observations):
        obs = observations[taxon_id]
        ids = sorted(obs)
        rng = np.random.default_rng([seed, taxon_id])
        ids = [ids[j] for j in rng.permutation(len(ids))]
        for obs_id, split in zip(ids, _deal(ids, obs, fractions), strict=True):
            for i in obs[obs_id]:
                assignment[i] = split
    result = [replace(r, split=assignment[i]) for i, r in enumerate(records)]
    counts = Counter(r.split for r in result)
    log.info("split %d photos: %s", len(result), ", ".join(f"{s}={counts[s]}" for s in SPLIT_NAMES))
    return result


def _deal(ids: list[str], obs: dict[str, list[int]], fractions) -> list[str]:
    """Greedy: each observation goes to the split furthest below its photo target."""
    total = sum(len(obs[o]) for o in ids)
    targets = np.array(fractions) * total
    filled = np.zeros(3)
    splits = []
    # Seed val and test with one observation each first, so small species appear everywhere.
    order = [1, 2] if len(ids) >= 3 else []
    for k, obs_id in enumerate(ids):
        n = len(obs[obs_id])
        j = order[k] if k < len(order) else int(np.argmax(targets - filled))
        filled[j] += n
        splits.append(SPLIT_NAMES[j])
    return splits
