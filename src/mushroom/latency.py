"""CPU latency of a bundle's TFLite variants: batch 1, one thread and all cores, after warm-up."""

from __future__ import annotations

import logging
import os

import numpy as np

from mushroom import variants as registry
from mushroom.bundle import Bundle
from mushroom.tflite import measure_latency

log = logging.getLogger("mushroom.evaluate")  # the evaluate stage's detail (full log only)

LATENCY_RUNS = 30
LATENCY_WARMUP = 5


def latency_settings(runs: int | None = None) -> dict[str, int]:
    """Timed runs (``MUSHROOM_LATENCY_RUNS`` overrides the default), warm-up and thread counts."""
    runs = runs if runs is not None else int(os.environ.get("MUSHROOM_LATENCY_RUNS", LATENCY_RUNS))
    return {"runs": runs, "warmup": LATENCY_WARMUP, "threads_all": os.cpu_count() or 1}


def measure_variants_latency(bundle: Bundle, image: np.ndarray, runs: int | None = None) -> dict[str, dict]:
    """Latency of every TFLite variant with one thread and with all cores (batch 1, after warm-up).

    Returns:
        Per evaluation key (:func:`mushroom.variants.evaluation_key`): ``threads_1`` and
        ``threads_all``, each with ``median_ms``, ``p90_ms`` and ``mean_ms``
        (:func:`mushroom.tflite.measure_latency`) and the ``num_threads``, ``runs`` and ``warmup``
        it was measured with.
    """
    settings = latency_settings(runs)
    runs, warmup = max(1, settings["runs"]), settings["warmup"]
    out = {}
    for variant in bundle.variants:
        path = bundle.model_path(variant)
        key = registry.evaluation_key(variant)
        out[key] = {
            f"threads_{key}": {**measure_latency(path, image, num_threads=threads, warmup=warmup, runs=runs),
                               "num_threads": threads, "runs": runs, "warmup": warmup}
            for key, threads in (("1", 1), ("all", settings["threads_all"]))
        }
        log.info("latency %s: %.2f ms (1 thread), %.2f ms (%d threads)", variant,
                 out[key]["threads_1"]["median_ms"], out[key]["threads_all"]["median_ms"], settings["threads_all"])
    return out
