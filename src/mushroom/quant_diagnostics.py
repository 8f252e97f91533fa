"""Where full int8 changes answers: the op groups and blocks of a calibrated model, and the
models with only some of them quantized (the quantization report's error profile)."""

from __future__ import annotations

from mushroom.tflite_build import quantize_calibrated
from mushroom.tflite_ranges import QuantizableOp


def blocks_in_order(ops: list[QuantizableOp]) -> list[str]:
    """The distinct blocks of ``ops`` in execution order (stem first, head last)."""
    return list(dict.fromkeys(o.block for o in ops))


def first_blocks_quantized(calibrated: bytes, ops: list[QuantizableOp], k: int) -> bytes:
    """int8 for the first ``k`` blocks (:func:`blocks_in_order`), float for the rest."""
    keep = set(blocks_in_order(ops)[:k])
    return quantize_calibrated(calibrated, [o.tensor_name for o in ops if o.block not in keep])


def group_in_float(calibrated: bytes, ops: list[QuantizableOp], group: str) -> bytes:
    """int8 everywhere except the ops of ``group`` (one of :data:`mushroom.tflite_ranges.OP_GROUPS`)."""
    return quantize_calibrated(calibrated, [o.tensor_name for o in ops if o.group == group])
