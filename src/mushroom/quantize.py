"""Post-training conversion to TFLite variants, a per-layer error report, and the choice.

Variants (all from one trained model; input is 0-255 RGB pixels as in training):

    float32         plain conversion, the reference
    float16         float16 weights
    dynamic_int8    int8 weights, float activations (dynamic range)
    int8            full integer (int8 weights and activations), float input/output
    int8_io         full integer with int8 input/output (NPUs, microcontrollers)
    int16x8         int16 activations, int8 weights
    int8_selective  full integer except the layers whose quantization error is largest

The representative data comes from the train split through the same preprocessing as
training (``mushroom.preprocess.load_image``), balanced across species, no augmentation.
The stage then picks, on the validation split, the fastest integer variant whose top-1
loss against float32 stays within a tolerance, and says why.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mushroom.tflite import TFLiteClassifier, measure_latency

log = logging.getLogger(__name__)

VARIANTS = ("float32", "float16", "dynamic_int8", "int8", "int8_io", "int16x8", "int8_selective")
INTEGER_VARIANTS = ("dynamic_int8", "int8", "int8_io", "int16x8", "int8_selective")
NEEDS_REPRESENTATIVE = ("int8", "int8_io", "int16x8", "int8_selective")


def export_saved_model(model, directory: str | Path) -> Path:
    """Export a Keras model as a TF SavedModel (the converter's most reliable input)."""
    directory = Path(directory)
    model.export(str(directory), format="tf_saved_model", verbose=False)
    return directory


def _samples(representative: np.ndarray):
    def generate():
        for image in representative:
            yield [image[None].astype(np.float32)]

    return generate


def make_converter(saved_model_dir: Path, variant: str, representative: np.ndarray | None = None):
    """A ``TFLiteConverter`` set up for ``variant`` (see the module docstring)."""
    import tensorflow as tf

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {list(VARIANTS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if variant == "float32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant in NEEDS_REPRESENTATIVE:
        if representative is None or len(representative) == 0:
            raise ValueError(f"{variant} quantization needs at least one representative image")
        converter.representative_dataset = _samples(representative)
        if variant == "int16x8":
            # Ops without a 16x8 kernel (e.g. MobileNetV3's HARD_SWISH) fall back to float.
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.int8 if variant == "int8_io" else tf.float32
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    return converter


def convert(saved_model_dir: Path, variant: str, representative: np.ndarray | None = None) -> bytes:
    return make_converter(saved_model_dir, variant, representative).convert()


@dataclass
class LayerError:
    """Quantization error of one layer's output, from the TFLite quantization debugger."""

    op_name: str
    tensor_name: str
    rmse_over_scale: float  # RMS error in units of the int8 step: ~0.29 is rounding alone
    mean_abs_error: float
    scale: float


def layer_error_report(saved_model_dir: Path, representative: np.ndarray, debug_samples: int):
    """Per-layer quantization error of full int8, worst first.

    Returns:
        ``(errors, debugger)``; the debugger can re-quantize with layers left in float.
    """
    import tensorflow as tf

    converter = make_converter(saved_model_dir, "int8", representative)
    debug_data = _samples(representative[:debug_samples])
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=debug_data)
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    errors = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row["scale"])
        mse = float(row["mean_squared_error"])
        ratio = math.sqrt(mse) / scale if scale > 0 and mse == mse else float("inf")
        errors.append(LayerError(row["op_name"], row["tensor_name"], ratio, float(row["mean_error"]), scale))
    errors.sort(key=lambda e: e.rmse_over_scale, reverse=True)
    return errors, debugger


def selective_int8(debugger, errors: list[LayerError], keep_float: int) -> bytes:
    """Full int8 with the ``keep_float`` worst layers left in float."""
    import tensorflow as tf

    names = [e.tensor_name for e in errors[:keep_float]]
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=names)
    return debugger.get_nondebug_quantized_model()


@dataclass
class Candidate:
    """One converted variant measured on the validation split."""

    name: str
    model: bytes
    top1: float
    agreement: float  # share of photos with the same top-1 as float32
    latency_ms: float
    predictions: np.ndarray  # top-1 class per validation photo
    extra: dict = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return len(self.model) / 1e6

    def summary(self, float_top1: float) -> dict:
        return {"top1": self.top1, "top1_loss_points": (float_top1 - self.top1) * 100,
                "agreement_with_float32": self.agreement, "latency_ms": self.latency_ms,
                "size_mb": self.size_mb, **self.extra}


def _measure(name: str, model: bytes, images: np.ndarray, labels: np.ndarray, float_pred: np.ndarray | None,
             threads: int, runs: int, extra: dict | None = None) -> Candidate:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.tflite"
        path.write_bytes(model)
        probs = TFLiteClassifier(path, num_threads=threads).predict(images)
        latency = measure_latency(path, images[0], num_threads=threads, runs=runs)["median_ms"]
    pred = probs.argmax(1)
    agreement = 1.0 if float_pred is None else float(np.mean(pred == float_pred))
    return Candidate(name, model, float(np.mean(pred == labels)), agreement, latency, pred, extra or {})


def _acceptable(c: Candidate, reference: Candidate, tolerance_points: float, min_agreement: float) -> bool:
    return (reference.top1 - c.top1) * 100 <= tolerance_points + 1e-9 and c.agreement >= min_agreement - 1e-9


def choose_variant(candidates: dict[str, Candidate], tolerance_points: float,
                   min_agreement: float = 0.0) -> tuple[str, str]:
    """The fastest integer variant within ``tolerance_points`` of float32 top-1 (ties: smaller).

    A variant must also agree with float32's top-1 on at least ``min_agreement`` of the
    validation photos: on a small validation split, top-1 alone can hide many changed answers.

    Returns:
        ``(name, reason)``; falls back to float32 when no integer variant qualifies.
    """
    reference = candidates["float32"]
    ok = {n: c for n, c in candidates.items() if n in INTEGER_VARIANTS
          and _acceptable(c, reference, tolerance_points, min_agreement)}
    if not ok:
        return "float32", (f"no integer variant is within {tolerance_points:g} point(s) of float32 top-1 "
                           f"({reference.top1:.3f}) with agreement >= {min_agreement:.2f} on the validation split; "
                           "keeping float32")
    best = min(ok.values(), key=lambda c: (c.latency_ms, c.size_mb))
    others = ", ".join(f"{c.name} {c.latency_ms:.2f} ms" for c in sorted(ok.values(), key=lambda c: c.latency_ms)
                       if c.name != best.name)
    rejected = ", ".join(f"{n} ({(c.top1 - reference.top1) * 100:+.1f} pts, agreement {c.agreement:.3f})"
                         for n, c in candidates.items() if n in INTEGER_VARIANTS and n not in ok)
    reason = (f"{best.name}: fastest integer variant within {tolerance_points:g} point(s) of float32 on the "
              f"validation split (top-1 {best.top1:.3f} vs {reference.top1:.3f}, agreement {best.agreement:.3f}, "
              f"{best.latency_ms:.2f} ms, {best.size_mb:.2f} MB)")
    if best.latency_ms > 1.05 * reference.latency_ms:
        reason += (f"; note: on this CPU it is slower than float32 ({reference.latency_ms:.2f} ms), "
                   "e.g. hard-swish without fast int8 kernels")
    if others:
        reason += f"; also within tolerance but slower: {others}"
    if rejected:
        reason += f"; outside tolerance: {rejected}"
    return best.name, reason


def quantize_model(model, representative: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
                   variants: list[str], tolerance_points: float = 1.0, min_agreement: float = 0.97,
                   selective_steps=(1, 2, 4, 8, 16, 32, 64), debug_samples: int = 64,
                   latency_runs: int = 20) -> tuple[dict[str, bytes], dict]:
    """Convert ``model`` to ``variants``, report per-layer int8 error and choose a variant.

    Returns:
        ``(models, report)``: variant -> flatbuffer, and a JSON-able report with each
        variant's validation figures, the worst layers, the choice and its reason.
    """
    threads = os.cpu_count() or 1
    candidates: dict[str, Candidate] = {}
    report: dict = {"tolerance_points": tolerance_points, "min_agreement": min_agreement,
                    "representative_samples": int(len(representative)),
                    "validation_photos": int(len(val_images)), "latency_threads": threads}
    with tempfile.TemporaryDirectory(prefix="mushroom-savedmodel-") as tmp:
        saved = export_saved_model(model, Path(tmp) / "saved_model")
        ordered = ["float32"] + [v for v in variants if v != "float32"]
        float_pred = None
        for name in ordered:
            start = time.monotonic()
            try:
                candidates[name] = _convert_and_measure(
                    name, saved, representative, val_images, val_labels, float_pred,
                    (tolerance_points, min_agreement), selective_steps, debug_samples, threads, latency_runs,
                    candidates, report)
            except Exception as err:  # noqa: BLE001 - one optional variant must not sink the stage
                if name in ("float32", "int8"):
                    raise
                log.warning("variant %s failed to convert, left out: %s", name, str(err).splitlines()[0])
                report.setdefault("failed", {})[name] = str(err).splitlines()[0][:300]
                continue
            c = candidates[name]
            if name == "float32":
                float_pred = c.predictions
            log.info("%-15s %6.2f MB  val top-1 %.3f  agree %.3f  %.2f ms  (%.0fs)", name, c.size_mb, c.top1,
                     c.agreement, c.latency_ms, time.monotonic() - start)
    float_top1 = candidates["float32"].top1
    report["variants"] = {n: c.summary(float_top1) for n, c in candidates.items()}
    chosen, reason = choose_variant(candidates, tolerance_points, min_agreement)
    report["chosen"], report["reason"] = chosen, reason
    log.info("chosen variant: %s", reason)
    return {n: c.model for n, c in candidates.items()}, report


def _convert_and_measure(name, saved, representative, val_images, val_labels, float_pred, acceptance,
                         selective_steps, debug_samples, threads, runs, candidates, report) -> Candidate:
    if name == "int8_selective":
        return _selective(saved, representative, val_images, val_labels, float_pred, candidates["float32"],
                          acceptance, selective_steps, debug_samples, threads, runs, report)
    data = convert(saved, name, representative if name in NEEDS_REPRESENTATIVE else None)
    return _measure(name, data, val_images, val_labels, float_pred, threads, runs)


def _selective(saved, representative, val_images, val_labels, float_pred, reference, acceptance, steps,
               debug_samples, threads, runs, report) -> Candidate:
    """Leave the worst 1, 2, 4, ... layers in float until the result is acceptable."""
    errors, debugger = layer_error_report(saved, representative, debug_samples)
    report["layer_errors"] = [vars(e) for e in errors[:20]]
    report["layers_checked"] = len(errors)
    best = None
    for k in [s for s in steps if s <= len(errors)] or [len(errors)]:
        data = selective_int8(debugger, errors, k)
        cand = _measure("int8_selective", data, val_images, val_labels, float_pred, threads, runs,
                        {"float_layers": [e.tensor_name for e in errors[:k]]})
        log.info("int8_selective with %d float layers: val top-1 %.3f, agreement %.3f", k, cand.top1,
                 cand.agreement)
        best = cand
        if _acceptable(cand, reference, *acceptance):
            break
    return best


def format_report(report: dict) -> str:
    """The quantization report as Markdown."""
    lines = ["# Quantization report", "",
             f"Validation photos: {report['validation_photos']}; representative photos: "
             f"{report['representative_samples']}; latency with {report['latency_threads']} thread(s).", "",
             "| variant | size MB | val top-1 | loss (points) | agreement with float32 | latency ms |",
             "|---|---|---|---|---|---|"]
    for name, v in report["variants"].items():
        lines.append(f"| {name} | {v['size_mb']:.2f} | {v['top1']:.3f} | {v['top1_loss_points']:+.1f} | "
                     f"{v['agreement_with_float32']:.3f} | {v['latency_ms']:.2f} |")
    lines += ["", f"**Chosen:** {report['reason']}", ""]
    if report.get("layer_errors"):
        lines += ["## Worst layers under full int8", "",
                  "RMS error of the layer output in units of its int8 step (rounding alone gives ~0.29).", "",
                  "| op | tensor | RMSE / scale |", "|---|---|---|"]
        lines += [f"| {e['op_name']} | `{e['tensor_name']}` | {e['rmse_over_scale']:.2f} |"
                  for e in report["layer_errors"][:10]]
    return "\n".join(lines) + "\n"
