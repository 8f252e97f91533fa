"""Run a TFLite classifier with ai-edge-litert (no TensorFlow needed).

Models take RGB pixels in 0-255. A model with an integer input gets them quantized with
its scale and zero point, rounded and clipped (never wrapped); an integer output is
dequantized. Callers always see ``float32`` probabilities.

Output contract: bundles built since the feature-space open-set score have two outputs,
``probabilities`` (the classes) and ``features`` (the backbone's pooled feature vector, before
dropout and the classifier); older bundles have the probabilities only. Outputs are told apart
by their signature names (:data:`PROBABILITIES`, :data:`FEATURES`), never by position: the
converter orders them by name, so the features come first.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def quantize_input(pixels: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Map real values to an integer tensor: round, then clip to the dtype's range."""
    info = np.iinfo(dtype)
    q = np.round(pixels.astype(np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


PROBABILITIES = "probabilities"  # the output names of the serving signature
FEATURES = "features"


def _named_outputs(interpreter) -> dict[str, int]:
    """Output name -> tensor index from the model's (first) signature; {} without signatures."""
    try:
        signatures = interpreter.get_signature_list()
        if not signatures:
            return {}
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        return {name: int(d["index"]) for name, d in runner.get_output_details().items()}
    except (ValueError, RuntimeError, KeyError, AttributeError):
        return {}


def find_outputs(interpreter) -> tuple[int, int | None]:
    """The tensor indices of the probabilities output and of the features output (None: absent).

    The signature's output names decide; a model with one output is a classifier without
    features (older bundles); several outputs without those names are refused.

    Raises:
        ValueError: Several outputs and none named :data:`PROBABILITIES`.
    """
    details = interpreter.get_output_details()
    named = _named_outputs(interpreter)
    if PROBABILITIES in named:
        return named[PROBABILITIES], named.get(FEATURES)
    if len(details) == 1:
        return int(details[0]["index"]), None
    raise ValueError(f"the model has {len(details)} outputs ({sorted(named) or [d['name'] for d in details]}) "
                     f"and none is named {PROBABILITIES!r}")


def _dequantized(out: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(out.dtype, np.integer):
        scale, zero_point = detail["quantization"]
        out = (out.astype(np.float32) - zero_point) * scale
    return out.astype(np.float32)


RUNTIME_INFO_PREFIX = b"INFO: "  # how the LiteRT runtime's C++ logger starts an INFO line
_STDERR_LOCK = threading.Lock()


@contextmanager
def runtime_info_dropped() -> Iterator[None]:
    """Drop the INFO lines the LiteRT runtime prints on stderr while the block runs; pass on the rest.

    The runtime's C++ logger writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``
    straight to file descriptor 2 the first time a process allocates an interpreter's tensors,
    and no setting of the Python package (nor ``TF_CPP_MIN_LOG_LEVEL``) turns it off. Here file
    descriptor 2 points at a temporary file for the duration of the block; afterwards every line
    written there that is not an ``INFO:`` line (a warning, an error, Python's own output) is
    written to the real stderr, in order. Process-wide, so serialised by a lock.
    """
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to keep clean
            saved = None
        if saved is None:
            yield
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError, AttributeError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                kept = [line for line in capture.read().splitlines(keepends=True)
                        if not line.startswith(RUNTIME_INFO_PREFIX)]
                if kept:
                    with open(2, "wb", closefd=False) as err:
                        err.write(b"".join(kept))


class TFLiteClassifier:
    """A loaded ``.tflite`` classifier.

    Args:
        path: The model file.
        num_threads: CPU threads for the interpreter (None: the runtime's default).
    """

    def __init__(self, path: str | Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        with runtime_info_dropped():  # the first allocation in a process prints an XNNPACK INFO line
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output_index, self._features_index = find_outputs(self.interpreter)
        self._refresh_outputs()
        self._batch = 1

    def _refresh_outputs(self) -> None:
        by_index = {int(d["index"]): d for d in self.interpreter.get_output_details()}
        self._output = by_index[self._output_index]
        self._features = None if self._features_index is None else by_index[self._features_index]

    @property
    def has_features(self) -> bool:
        """The model also outputs the backbone's pooled features."""
        return self._features is not None

    @property
    def feature_dim(self) -> int | None:
        return None if self._features is None else int(self._features["shape"][-1])

    @property
    def image_size(self) -> int:
        return int(self._input["shape"][1])

    @property
    def num_classes(self) -> int:
        return int(self._output["shape"][-1])

    @property
    def input_dtype(self):
        return self._input["dtype"]

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            shape = [batch, *self._input["shape"][1:]]
            self.interpreter.resize_tensor_input(self._input["index"], shape)
            self.interpreter.allocate_tensors()
            self._input = self.interpreter.get_input_details()[0]
            self._refresh_outputs()
            self._batch = batch

    def _prepare(self, pixels: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero_point = self._input["quantization"]
            return quantize_input(pixels, scale, zero_point, dtype)
        return pixels.astype(dtype)

    def predict(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities for ``uint8``/float pixels shaped ``(n, size, size, 3)``."""
        return self.predict_with_features(pixels, batch_size, features=False)[0]

    def predict_with_features(self, pixels: np.ndarray, batch_size: int = 32,
                              features: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and pooled features (``float32``; None when the model has none)."""
        probs, feats = [], []
        want = features and self.has_features
        for start in range(0, len(pixels), batch_size):
            chunk = pixels[start : start + batch_size]
            self._resize(len(chunk))
            self.interpreter.set_tensor(self._input["index"], self._prepare(chunk))
            self.interpreter.invoke()
            probs.append(_dequantized(self.interpreter.get_tensor(self._output["index"]), self._output))
            if want:
                feats.append(_dequantized(self.interpreter.get_tensor(self._features["index"]), self._features))
        out = np.concatenate(probs) if probs else np.zeros((0, self.num_classes), np.float32)
        if not want:
            return out, None
        return out, (np.concatenate(feats) if feats else np.zeros((0, self.feature_dim), np.float32))


def measure_latency(
    path: str | Path, image: np.ndarray, num_threads: int | None = None, warmup: int = 3, runs: int = 20
) -> dict[str, float]:
    """CPU latency of one image (batch 1), after warm-up.

    Args:
        path: The ``.tflite`` model.
        image: One ``(size, size, 3)`` image in 0-255.
        num_threads: Interpreter threads (1 for a single core; None for the runtime default).
        warmup: Untimed invocations first (allocation, caches, XNNPACK packing).
        runs: Timed invocations.

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms"}``.
    """
    import time

    classifier = TFLiteClassifier(path, num_threads=num_threads)
    batch = image[None]
    for _ in range(warmup):
        classifier.predict(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        classifier.predict(batch)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(np.mean(times)),
    }
