"""Post-training conversion to TFLite: float32 and full-integer int8.

The representative data for int8 calibration comes from the train split through the same
preprocessing as training (``mushroom.preprocess.load_image``: 0-255 RGB), without
augmentation. Input and output stay float by default, so callers feed the same pixels to
every variant.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VARIANTS = ("float32", "int8")


def export_saved_model(model, directory: str | Path) -> Path:
    """Export a Keras model as a TF SavedModel (the converter's most reliable input)."""
    directory = Path(directory)
    model.export(str(directory), format="tf_saved_model", verbose=False)
    return directory


def _converter(saved_model_dir: Path):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))


def convert_float32(saved_model_dir: Path) -> bytes:
    return _converter(saved_model_dir).convert()


def convert_int8(saved_model_dir: Path, representative: np.ndarray) -> bytes:
    """Full-integer quantization (int8 weights and activations) with float input/output.

    Args:
        saved_model_dir: The exported model.
        representative: ``uint8`` or float pixels ``(n, size, size, 3)`` in 0-255.
    """
    import tensorflow as tf

    if len(representative) == 0:
        raise ValueError("int8 quantization needs at least one representative image")

    def samples():
        for image in representative:
            yield [image[None].astype(np.float32)]

    converter = _converter(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.float32
    converter.inference_output_type = tf.float32
    return converter.convert()


def convert_variants(model, representative: np.ndarray) -> dict[str, bytes]:
    """Convert ``model`` to every variant in :data:`VARIANTS`; returns name -> flatbuffer."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="mushroom-savedmodel-") as tmp:
        saved = export_saved_model(model, Path(tmp) / "saved_model")
        for name, convert in (("float32", lambda: convert_float32(saved)),
                              ("int8", lambda: convert_int8(saved, representative))):
            start = time.monotonic()
            out[name] = convert()
            log.info("converted %s: %.2f MB in %.0fs", name, len(out[name]) / 1e6, time.monotonic() - start)
    return out
