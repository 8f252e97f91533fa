"""Histogram edges that show the data: a robust range, values beyond it clipped into the end bins.

A few scores far from the rest (an open-set score of -3000 against photos near 0) would otherwise
stretch equal-width bins until every photo falls into one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def robust_edges(samples: Iterable[np.ndarray], bins: int, keep: Iterable[float | None] = (),
                 tail: float = 0.02) -> tuple[np.ndarray, float, float]:
    """Equal-width edges over the pooled samples' ``tail``..``1 - tail`` quantiles.

    The range is widened to hold each finite value of ``keep`` (a threshold) and each sample's
    median, so no kind vanishes off the plot. Returns the edges and the pooled finite minimum and
    maximum (to say what was clipped).
    """
    arrays = [np.asarray(s, dtype=np.float64).ravel() for s in samples]
    arrays = [a[np.isfinite(a)] for a in arrays]
    pooled = np.concatenate(arrays) if arrays else np.zeros(0)
    if pooled.size == 0:
        return np.linspace(0.0, 1.0, bins + 1), 0.0, 1.0
    full_lo, full_hi = float(pooled.min()), float(pooled.max())
    lo, hi = (float(q) for q in np.quantile(pooled, [tail, 1 - tail]))
    extra = [float(k) for k in keep if k is not None and np.isfinite(k)]
    extra += [float(np.median(a)) for a in arrays if a.size]
    lo, hi = min([lo, *extra]), max([hi, *extra])
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        lo, hi = full_lo, full_hi
    if hi <= lo:
        hi = lo + 1.0
    pad = (hi - lo) * 0.02
    lo, hi = max(full_lo, lo - pad), min(full_hi, hi + pad)
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, bins + 1), full_lo, full_hi


def clipped_counts(values: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts per bin, values beyond the edges counted in the end bins."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0].tolist()
