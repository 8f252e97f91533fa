"""Evaluate the Keras model and its TFLite variants on the test split (first cut).

Reports top-1 and top-5 accuracy per variant, the int8 model's agreement with float, and
model file sizes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import top_k_accuracy_score

from mushroom.bundle import read_bundle
from mushroom.tflite import TFLiteClassifier

log = logging.getLogger(__name__)


def topk_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the ``k`` most probable (k capped at #classes)."""
    n = probs.shape[1]
    return float(top_k_accuracy_score(labels, probs, k=min(k, n), labels=np.arange(n)))


def summarize(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {
        "top1": topk_accuracy(labels, probs, 1),
        "top5": topk_accuracy(labels, probs, 5),
    }


def predict_variants(keras_model, bundle_dir: str | Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities from the Keras model and every TFLite variant in the bundle."""
    bundle = read_bundle(bundle_dir)
    probs = {}
    if keras_model is not None:
        probs["keras"] = np.asarray(keras_model.predict(images.astype(np.float32), batch_size=32, verbose=0))
    for variant in bundle.metadata["variants"]:
        start = time.monotonic()
        probs[f"tflite_{variant}"] = TFLiteClassifier(bundle.model_path(variant)).predict(images)
        log.info("tflite %s: %d images in %.1fs", variant, len(images), time.monotonic() - start)
    return probs


def evaluate_predictions(
    labels: np.ndarray, probs: dict[str, np.ndarray], bundle_dir: str | Path
) -> dict:
    """Metrics per variant, int8 vs float agreement and file sizes."""
    bundle = read_bundle(bundle_dir)
    result: dict = {
        "model_name": bundle.metadata["model_name"],
        "architecture": bundle.metadata["architecture"],
        "image_size": bundle.image_size,
        "num_test_photos": int(len(labels)),
        "num_classes": len(bundle.catalog),
        "variants": {},
    }
    for name, p in probs.items():
        result["variants"][name] = summarize(labels, p)
    for variant in bundle.metadata["variants"]:
        result["variants"][f"tflite_{variant}"]["size_mb"] = bundle.model_path(variant).stat().st_size / 1e6
    if "tflite_float32" in probs and "tflite_int8" in probs:
        f, q = probs["tflite_float32"], probs["tflite_int8"]
        result["int8_vs_float32"] = {
            "top1_agreement": float(np.mean(f.argmax(1) == q.argmax(1))),
            "top1_change": result["variants"]["tflite_int8"]["top1"] - result["variants"]["tflite_float32"]["top1"],
            "top5_change": result["variants"]["tflite_int8"]["top5"] - result["variants"]["tflite_float32"]["top5"],
            "size_ratio": result["variants"]["tflite_int8"]["size_mb"] / result["variants"]["tflite_float32"]["size_mb"],
        }
    return result
