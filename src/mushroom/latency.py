"""CPU latency of TFLite variants, measured once, quietly, the same way for the choice and the report.

Every variant is timed in the same rounds: one interpreter per variant and thread count, all
warmed up, then ``rounds`` passes that each time every variant in turn (the order rotated from
pass to pass) for ``runs / rounds`` invocations. A burst of other work on the machine then
slows every variant alike instead of the one that happened to be timed during it. Each figure
is the median over all timed invocations, with a 95% distribution-free interval for that
median (order statistics), and the machine's load average before and after is recorded so that
a report can say when the figures were taken on a busy machine.

The quantize stage measures its candidates here and chooses on the 1-thread medians; it stores
the figures in the bundle (``quantization_report.json`` ``latency``) and the evaluate stage
reports them from there instead of timing the same files again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("mushroom.latency")

LATENCY_RUNS = 30
LATENCY_ROUNDS = 5
LATENCY_WARMUP = 5
#: A load average above this share of the cores, beyond the measurement's own thread, marks the
#: figures as taken on a busy machine.
BUSY_LOAD_PER_CORE = 0.5


@dataclass(frozen=True)
class LatencySetup:
    """How latency is measured (the ``evaluate:`` section's ``latency_runs`` and ``latency_rounds``)."""

    runs: int = LATENCY_RUNS
    rounds: int = LATENCY_ROUNDS
    warmup: int = LATENCY_WARMUP
    threads_all: int = 0  # 0: every core of this machine

    def resolved(self) -> LatencySetup:
        """``MUSHROOM_LATENCY_RUNS`` overrides ``runs`` (tests, quick runs); ``threads_all`` filled in."""
        runs = int(os.environ.get("MUSHROOM_LATENCY_RUNS", self.runs))
        if runs < 1 or self.rounds < 1 or self.warmup < 0:
            raise ValueError(f"latency runs and rounds must be >= 1 and warm-up >= 0, got runs {runs}, "
                             f"rounds {self.rounds}, warm-up {self.warmup}")
        return LatencySetup(runs, min(self.rounds, runs), self.warmup, self.threads_all or os.cpu_count() or 1)


def median_interval(times: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of ``times``: the order statistics whose ranks
    bracket n/2 by the normal approximation of the binomial (the whole range for very few runs)."""
    ordered = np.sort(np.asarray(times, dtype=np.float64))
    n = len(ordered)
    half = _z(confidence) * math.sqrt(n) / 2
    low = max(1, math.floor(n / 2 - half))  # 1-based ranks
    high = min(n, math.ceil(1 + n / 2 + half))
    return float(ordered[low - 1]), float(ordered[high - 1])


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _stats(times: list[float], threads: int, setup: LatencySetup) -> dict:
    array = np.asarray(times)
    low, high = median_interval(array)
    return {"median_ms": float(np.median(array)), "p90_ms": float(np.percentile(array, 90)),
            "mean_ms": float(np.mean(array)), "median_low_ms": low, "median_high_ms": high,
            "num_threads": threads, "runs": len(times), "warmup": setup.warmup, "rounds": setup.rounds}


def _load() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # not on every platform
        return None


def measure_interleaved(models: dict[str, str | Path], image: np.ndarray,
                        setup: LatencySetup | None = None) -> tuple[dict[str, dict], dict]:
    """Time every model with one thread and with every core, interleaved (see the module).

    Args:
        models: Name -> ``.tflite`` file.
        image: One ``(size, size, 3)`` input in 0-255 (batch 1).
        setup: Runs, rounds, warm-up and the all-cores thread count (default :class:`LatencySetup`).

    Returns:
        ``(latency, settings)``: per name ``{"threads_1": stats, "threads_all": stats}``, each
        with ``median_ms``, ``median_low_ms`` / ``median_high_ms`` (95% interval of the median),
        ``p90_ms``, ``mean_ms``, ``num_threads``, ``runs``, ``warmup`` and ``rounds``; and the
        settings (``batch``, ``runs``, ``rounds``, ``warmup``, ``threads_all``, ``interleaved``,
        ``load_before`` / ``load_after``, ``busy``).
    """
    from mushroom.tflite import TFLiteClassifier

    setup = (setup or LatencySetup()).resolved()
    batch = np.asarray(image)[None]
    threads = {"threads_1": 1, "threads_all": setup.threads_all}
    load_before = _load()
    names = list(models)
    out: dict[str, dict] = {name: {} for name in names}
    for key, count in threads.items():
        classifiers = {name: TFLiteClassifier(models[name], num_threads=count) for name in names}
        for classifier in classifiers.values():
            for _ in range(setup.warmup):
                classifier.predict(batch)
        times: dict[str, list[float]] = {name: [] for name in names}
        per_round = [setup.runs // setup.rounds + (r < setup.runs % setup.rounds) for r in range(setup.rounds)]
        for r, runs in enumerate(per_round):
            for name in names[r % len(names):] + names[:r % len(names)]:
                classifier = classifiers[name]
                for _ in range(runs):
                    start = time.perf_counter()
                    classifier.predict(batch)
                    times[name].append((time.perf_counter() - start) * 1000)
        for name in names:
            out[name][key] = _stats(times[name], count, setup)
        del classifiers
    load_after = _load()
    loads = [x for x in (load_before, load_after) if x is not None]
    busy = bool(loads) and max(loads) > 1 + BUSY_LOAD_PER_CORE * setup.threads_all
    settings = {"batch": 1, **{k: v for k, v in asdict(setup).items()}, "interleaved": True,
                "load_before": load_before, "load_after": load_after, "busy": busy}
    for name in names:
        one, every = out[name]["threads_1"], out[name]["threads_all"]
        log.info("latency %s: %.2f ms (%.2f-%.2f) with 1 thread, %.2f ms with %d threads", name,
                 one["median_ms"], one["median_low_ms"], one["median_high_ms"], every["median_ms"],
                 setup.threads_all)
    if busy:
        log.warning("latency measured on a busy machine (load average %s on %d cores): the figures are not "
                    "comparable with a quiet run", "/".join(f"{x:.1f}" for x in loads), setup.threads_all)
    return out, settings


def measure_variants_latency(bundle, image: np.ndarray, setup: LatencySetup | None = None
                             ) -> tuple[dict[str, dict], dict]:
    """:func:`measure_interleaved` for every TFLite variant of a bundle, keyed by evaluation key
    (:func:`mushroom.variants.evaluation_key`); for bundles whose quantize stage recorded none."""
    from mushroom import variants as registry

    latency, settings = measure_interleaved({v: bundle.model_path(v) for v in bundle.variants}, image, setup)
    return {registry.evaluation_key(v): figures for v, figures in latency.items()}, settings
