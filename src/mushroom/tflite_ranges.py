"""Reading and rewriting a calibrated int8 model before the converter's quantizer runs: its
quantizable ops (and the op group and block of each), and its activation ranges, measured on
photos and replaced in the flatbuffer (``int8_head_range``, and the rules of
``quantize.recipe`` for ``int8_recipe``)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the registry imports this module's users lazily; no import back at run time
    from mushroom.variants import RangeRule

RANGE_METHODS = ("minmax", "percentile", "mse")


@dataclass(frozen=True)
class HeadTensors:
    """The classifier head of a calibrated model: the softmax's input (logits) and its op."""

    logits: str  # the tensor the final SOFTMAX reads
    features: str | None  # the input of the op that produces the logits (e.g. pooled features)
    producer: str  # that op's type, e.g. FULLY_CONNECTED


def _flatbuffer(model: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model))


def _op_types(fb) -> list[str]:
    from tensorflow.lite.python import schema_py_generated as schema

    names_ = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names_.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in fb.operatorCodes]


def _tensor_name(t) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def head_tensors(calibrated: bytes) -> HeadTensors:
    """The logits tensor: the input of the SOFTMAX that produces a model output.

    Raises:
        ValueError: The model has no SOFTMAX producing an output (no logits tensor to find).
    """
    fb = _flatbuffer(calibrated)
    graph, types = fb.subgraphs[0], _op_types(fb)
    outputs = set(int(i) for i in graph.outputs)
    producers = {int(t): op for op in graph.operators for t in op.outputs}
    for op in graph.operators:
        if types[op.opcodeIndex] == "SOFTMAX" and int(op.outputs[0]) in outputs:
            logits = int(op.inputs[0])
            before = producers.get(logits)
            features = _tensor_name(graph.tensors[int(before.inputs[0])]) if before is not None else None
            return HeadTensors(_tensor_name(graph.tensors[logits]), features,
                               types[before.opcodeIndex] if before is not None else "model input")
    raise ValueError("cannot find the logits: the model has no SOFTMAX op producing an output "
                     f"(its op types: {sorted(set(types))}); give the tensor's ranges by name instead")


def calibrated_ranges(calibrated: bytes) -> dict[str, tuple[float, float]]:
    """Every calibrated activation's recorded (min, max), by tensor name."""
    graph = _flatbuffer(calibrated).subgraphs[0]
    ranges = {}
    for t in graph.tensors:
        q = t.quantization
        if q is not None and q.min is not None and len(q.min) == 1 and q.max is not None:
            ranges[_tensor_name(t)] = (float(q.min[0]), float(q.max[0]))
    return ranges


def with_ranges(calibrated: bytes, ranges: dict[str, tuple[float, float]]) -> bytes:
    """The calibrated model with the activation ranges of the named tensors replaced.

    Raises:
        ValueError: A tensor the model has no calibrated range for, or a range that does not
            hold 0 with min < max (int8 needs zero exactly representable), before any change.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    known = calibrated_ranges(calibrated)
    unknown = sorted(set(ranges) - set(known))
    if unknown:
        raise ValueError(f"the model has no calibrated activation named {unknown[:5]}; "
                         f"e.g. {sorted(known)[-3:]}")
    bad = {n: r for n, r in ranges.items() if not (r[0] <= 0 <= r[1] and r[0] < r[1])}
    if bad:
        raise ValueError(f"activation range(s) must hold 0 with min < max: {bad}")
    fb = _flatbuffer(calibrated)
    for t in fb.subgraphs[0].tensors:
        name = _tensor_name(t)
        if name in ranges:
            t.quantization.min = np.array([ranges[name][0]], np.float32)
            t.quantization.max = np.array([ranges[name][1]], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fb))


def activation_values(calibrated: bytes, photos: np.ndarray, tensors: Iterable[str]) -> dict[str, np.ndarray]:
    """The float values of the named activations on ``photos``, stacked along a first axis."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    index = {t["name"]: t["index"] for t in interpreter.get_tensor_details()}
    tensors = list(tensors)
    missing = [t for t in tensors if t not in index]
    if missing:
        raise ValueError(f"the model has no tensor(s) {missing[:5]}")
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [1, *photos.shape[1:]])
    interpreter.allocate_tensors()
    values: dict[str, list] = {t: [] for t in tensors}
    for photo in photos:
        interpreter.set_tensor(detail["index"], photo[None].astype(np.float32))
        interpreter.invoke()
        for t in tensors:
            values[t].append(interpreter.get_tensor(index[t]).copy())
    return {t: np.concatenate(v) for t, v in values.items()}


def activation_range(values: np.ndarray, method: str = "minmax", percentile: float = 99.99) -> tuple[float, float]:
    """A range for ``values`` that holds 0.

    ``minmax``: the extremes; ``percentile``: the ``percentile``-th and ``100 - percentile``-th
    percentiles; ``mse``: the min-max range shrunk by the factor (0.05-1) whose int8 rounding
    and clipping error is smallest.
    """
    x = np.asarray(values, np.float64).ravel()
    if method == "minmax":
        lo, hi = x.min(), x.max()
    elif method == "percentile":
        lo, hi = np.percentile(x, 100 - percentile), np.percentile(x, percentile)
    elif method == "mse":
        if len(x) > 200_000:
            x = np.random.default_rng(0).choice(x, 200_000, replace=False)
        lo0, hi0, best = min(0.0, x.min()), max(0.0, x.max()), None
        for f in np.linspace(0.05, 1.0, 96):
            lo, hi = lo0 * f, hi0 * f
            step = (hi - lo) / 255
            if step <= 0:
                continue
            zero = np.round(-128 - lo / step)
            err = np.mean(((np.clip(np.round(x / step) + zero, -128, 127) - zero) * step - x) ** 2)
            if best is None or err < best[0]:
                best = (err, lo, hi)
        lo, hi = (best[1], best[2]) if best else (x.min(), x.max())
    else:
        raise ValueError(f"unknown range method {method!r}; allowed: {RANGE_METHODS}")
    lo, hi = min(0.0, float(lo)), max(0.0, float(hi))
    return (lo, hi) if hi > lo else (lo, lo + 1e-6)


def held_out_like(photos: np.ndarray) -> np.ndarray:
    """Train photos the model has not seen as such: shifted by a sixth of their size (wrapping).

    A model that memorised its train photos answers them with logits 2-3x larger than new
    photos; shifted copies (seams and all) bring back the activations of photos it has not
    seen, without touching the validation or test split.
    """
    shift = max(1, photos.shape[1] // 6)
    return np.roll(photos, (shift, shift), axis=(1, 2))


def head_ranges_from(calibrated: bytes, photos: np.ndarray, method: str = "minmax",
                     percentile: float = 99.99) -> dict[str, tuple[float, float]]:
    """The ranges of the logits and of the features the logits are computed from, over ``photos``.

    Raises:
        ValueError: The model has no logits tensor (:func:`head_tensors`).
    """
    head = head_tensors(calibrated)
    tensors = [head.logits] + ([head.features] if head.features in calibrated_ranges(calibrated) else [])
    values = activation_values(calibrated, photos, tensors)
    return {t: activation_range(values[t], method, percentile) for t in tensors}


class RecipeError(ValueError):
    """A recipe that does not fit the model or its representative photos (raised before quantizing)."""


_HEAD_ALIASES = ("@logits", "@features")


_OP_TYPE = re.compile(r"[A-Z][A-Z0-9_]*")


def _min_values(rule: RangeRule) -> int:
    """How many values a rule's method needs to be more than the extremes (percentile) or a guess."""
    if rule.method == "percentile":
        return math.ceil(100.0 / (100.0 - rule.percentile))
    return 256 if rule.method == "mse" else 1  # mse: at least one value per int8 level


def recipe_targets(calibrated: bytes, rule: RangeRule, index: int = 0) -> list[str]:
    """The calibrated activations a rule applies to.

    Raises:
        RecipeError: The rule names no activation of this model (with examples of what it has).
    """
    known = calibrated_ranges(calibrated)
    where = f"quantize.recipe[{index}] (tensors {rule.tensors!r})"
    if rule.tensors in _HEAD_ALIASES:
        try:
            head = head_tensors(calibrated)
        except ValueError as err:
            raise RecipeError(f"{where}: {err}") from None
        name = head.logits if rule.tensors == "@logits" else head.features
        found = [name] if name in known else []
    elif _OP_TYPE.fullmatch(rule.tensors):
        ops = quantizable_ops(calibrated)
        found = [o.tensor_name for o in ops if o.op_name == rule.tensors and o.tensor_name in known]
        if not found:
            raise RecipeError(f"{where}: the model has no {rule.tensors} op with a calibrated output; "
                              f"its op types: {sorted({o.op_name for o in ops})}")
    else:
        pattern = re.compile(rule.tensors)
        found = [n for n in known if pattern.search(n)]
    if not found:
        raise RecipeError(f"{where}: matches no calibrated activation of the model; e.g. "
                          f"{sorted(known)[:2] + sorted(known)[-2:]}")
    return found


def _values_per_photo(calibrated: bytes) -> dict[str, int]:
    graph = _flatbuffer(calibrated).subgraphs[0]
    return {_tensor_name(t): int(np.prod(t.shape[1:])) if t.shape is not None and len(t.shape) > 1 else 1
            for t in graph.tensors}


def check_recipe(calibrated: bytes, photos: int, recipe: Iterable[RangeRule]) -> list[tuple[RangeRule, list[str]]]:
    """Each rule with the activations it names, checked against the model and the photo count.

    Raises:
        RecipeError: A rule that names nothing in the model, or ``photos`` representative
            photos too few for its method (before any activation is read or quantized).
    """
    recipe = list(recipe)
    n = photos
    per_photo = _values_per_photo(calibrated)
    plans = []
    for i, rule in enumerate(recipe):
        if rule.method not in RANGE_METHODS:
            raise RecipeError(f"quantize.recipe[{i}]: unknown method {rule.method!r}; allowed: {RANGE_METHODS}")
        if rule.photos not in ("representative", "held_out_like"):
            raise RecipeError(f"quantize.recipe[{i}]: photos must be 'representative' or 'held_out_like', "
                              f"not {rule.photos!r}")
        targets = recipe_targets(calibrated, rule, i)
        need = _min_values(rule)
        smallest = min(targets, key=lambda t: per_photo.get(t, 1))
        have = n * per_photo.get(smallest, 1)
        if have < need:
            needed = math.ceil(need / per_photo.get(smallest, 1))
            what = f"the {rule.percentile:g}th percentile" if rule.method == "percentile" else f"{rule.method} ranges"
            raise RecipeError(f"quantize.recipe[{i}] (tensors {rule.tensors!r}): {what} of `{smallest}` need at "
                              f"least {need:,} values; {n} representative photos give {have:,}: set "
                              f"quantize.representative_samples to at least {needed} or choose another method")
        plans.append((rule, targets))
    return plans


def recipe_ranges(calibrated: bytes, representative: np.ndarray, recipe: Iterable[RangeRule],
                  chunk_bytes: int = 256 << 20) -> tuple[dict[str, tuple[float, float]], list[dict]]:
    """The activation ranges a recipe gives (a later rule wins for a tensor two rules name).

    Every rule is checked against the model and the photos before any activation is read.
    Activations are read a few tensors at a time (at most ``chunk_bytes`` of values at once).

    Returns:
        ``(ranges, notes)``: tensor -> (min, max), and per rule what it matched.

    Raises:
        RecipeError: A rule that names nothing in the model, or a representative set too small
            for its method (e.g. the 99.99th percentile of the logits of 6 species needs
            10,000 values: 1,667 photos).
    """
    n = len(representative)
    per_photo = _values_per_photo(calibrated)
    plans = check_recipe(calibrated, n, recipe)
    values: dict[tuple[int, str], tuple[float, float]] = {}
    for photos_kind in ("representative", "held_out_like"):
        wanted = list(dict.fromkeys(t for rule, targets in plans if rule.photos == photos_kind for t in targets))
        if not wanted:
            continue
        photos = representative if photos_kind == "representative" else held_out_like(representative)
        chunk, size = [], 0
        for t in wanted + [None]:
            if t is not None and (not chunk or size + n * per_photo.get(t, 1) * 4 <= chunk_bytes):
                chunk.append(t)
                size += n * per_photo.get(t, 1) * 4
                continue
            read = activation_values(calibrated, photos, chunk)
            for i, (rule, targets) in enumerate(plans):
                if rule.photos == photos_kind:
                    for name in set(targets) & set(read):
                        values[(i, name)] = activation_range(read[name], rule.method, rule.percentile)
            chunk, size = ([t], n * per_photo.get(t, 1) * 4) if t is not None else ([], 0)
    ranges: dict[str, tuple[float, float]] = {}
    notes = []
    for i, (rule, targets) in enumerate(plans):  # in order: a later rule wins
        ranges.update({name: values[(i, name)] for name in targets})
        notes.append({"tensors": rule.tensors, "method": rule.method, "photos": rule.photos,
                      "matched": len(targets), "examples": targets[:3]})
    return ranges, notes


# Block names of the Keras applications' backbones: EfficientNetV2 (block1a_...), ResNet50
# (conv2_block1_...), MobileNetV3 (expanded_conv_3_...). Ops before the first block are the
# stem (with the input scaling), ops after the last are the head.
_BLOCK = re.compile(r"(conv\d+_block\d+|block\d+[a-z]|expanded_conv(?:_\d+)?)(?=_)")


STEM, HEAD = "stem", "head"


# Op groups for the by-type measurement, in report order.
OP_GROUPS = ("input and stem", "squeeze-excite", "activations", "depthwise convolutions", "convolutions",
             "residual adds", "head")


@dataclass(frozen=True)
class QuantizableOp:
    """One op of the calibrated float model, located in the backbone."""

    index: int
    op_name: str  # TFLite builtin, e.g. CONV_2D
    tensor_name: str  # its output tensor: the name the quantizer's denylist takes
    block: str  # stem, a backbone block (e.g. block2a, conv3_block1), or head
    group: str  # one of OP_GROUPS


def _op_group(op_name: str, tensor_name: str, block: str) -> str:
    lowered = tensor_name.lower()
    if block == STEM:
        return "input and stem"
    if block == HEAD:
        return "head"
    if "_se_" in lowered or "/se_" in lowered:
        return "squeeze-excite"
    if op_name in ("LOGISTIC", "HARD_SWISH", "RELU", "RELU6", "TANH", "MUL", "GELU"):
        return "activations"
    if op_name == "DEPTHWISE_CONV_2D":
        return "depthwise convolutions"
    if op_name == "ADD":
        return "residual adds"
    return "convolutions"


def quantizable_ops(calibrated: bytes) -> list[QuantizableOp]:
    """The calibrated model's ops in execution order, each with its block and group."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=calibrated)
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    raw = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the debugger reads op order the same way
        if op["outputs"] is None or len(op["outputs"]) == 0:
            continue
        name = tensors.get(int(op["outputs"][0]), "")
        match = _BLOCK.search(name)
        raw.append((int(op["index"]), op["op_name"], name, match.group(1) if match else None))
    named = [i for i, (*_, block) in enumerate(raw) if block]
    first, last = (named[0], named[-1]) if named else (len(raw), len(raw))
    ops, current = [], STEM
    for i, (index, op_name, name, block) in enumerate(raw):
        current = STEM if i < first else HEAD if i > last else (block or current)
        ops.append(QuantizableOp(index, op_name, name, current, _op_group(op_name, name, current)))
    return ops
