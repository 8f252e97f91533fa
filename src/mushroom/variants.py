"""The registry of TFLite variants: each one defined once, as a build function plus its facts.

Every other module (config validation, the quantize stage, the evaluation, the report, the
bundle, the safety policy and ``identify``) reads variants from here. A variant is added by
:func:`register`-ing a :class:`Variant`; nothing else has to change.

A build function gets the exported SavedModel and representative photos
(:class:`BuildInputs`) and yields one or more attempts (flatbuffer, facts). Most variants
yield one; a variant that escalates (``int8_selective``) yields better-but-bigger attempts
until the quantize stage accepts one. A build function may run the TFLite converter, a
post-conversion quantizer or anything else that produces a ``.tflite`` flatbuffer.

The build functions live in :mod:`mushroom.tflite_build` (with :mod:`mushroom.tflite_ranges`,
the activation-range surgery, and :mod:`mushroom.quant_diagnostics`, the error profile's op
groups); this module only names them, and imports them when a variant is built: reading the
registry (as ``identify`` does) imports neither TensorFlow nor the builders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mushroom.registry import Registry

REFERENCE = "float32"  # every other variant is compared with this one
FULL_INTEGER = "int8"  # the integer-only variant every run must build
REQUIRED = (REFERENCE, FULL_INTEGER)
KERAS_KEY = "keras"  # the evaluation's key for the Keras model itself
_KEY_PREFIX = "tflite_"


@dataclass(frozen=True)
class RangeRule:
    """One rule of an activation-range recipe (``quantize.recipe``, variant ``int8_recipe``).

    Attributes:
        tensors: Which activations: ``@logits`` (the softmax's input), ``@features`` (the input
            of the layer that computes the logits), an op type in capitals (e.g. ``LOGISTIC``:
            the outputs of every such op), or else a regular expression searched in the
            activation tensor names.
        method: ``minmax``, ``percentile`` or ``mse`` (:func:`activation_range`).
        percentile: For ``percentile``.
        photos: ``representative`` (the calibration photos) or ``held_out_like``
            (:func:`held_out_like`: the same photos shifted, as the model sees new photos).
    """

    tensors: str
    method: str = "minmax"
    percentile: float = 99.99
    photos: str = "representative"


@dataclass(frozen=True)
class BuildInputs:
    """What a build function may use.

    Attributes:
        saved_model: The trained model exported as a TF SavedModel.
        representative: Train photos, balanced across species, as ``(n, size, size, 3)`` 0-255.
        debug_samples: Photos for per-layer error analysis.
        escalation_steps: For escalating builds: how many layers to keep in float, in order.
        notes: Facts a build adds to the quantization report (e.g. the worst layers).
        recipe: Activation-range rules for ``int8_recipe`` (:class:`RangeRule`, the config's
            ``quantize.recipe``).
        shared: What builds of one model share (:func:`calibrated_model`: one int8 calibration
            for every int8 variant and the error profile, instead of one each).
    """

    saved_model: Path
    representative: np.ndarray
    debug_samples: int = 64
    escalation_steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    notes: dict[str, Any] = field(default_factory=dict)
    recipe: tuple[RangeRule, ...] = ()
    shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# A build yields (flatbuffer, facts) attempts; the quantize stage keeps the first acceptable one.
BuildFunction = Callable[[BuildInputs], Iterator[tuple[bytes, dict[str, Any]]]]


@dataclass(frozen=True)
class Variant:
    """One TFLite variant.

    Attributes:
        name: Short name: the bundle file is ``model_<name>.tflite``.
        build: The build function (see the module docstring).
        description: One line for reports and docs.
        integer: Uses integer arithmetic (a candidate for the quantize stage's choice).
        integer_only: Every op runs in integers (integer-only NPUs, Edge TPUs).
        needs_representative: The build needs representative photos.
        by_default: Built when the configuration does not list variants (``int8_recipe`` is
            built only when the configuration gives a recipe).
    """

    name: str
    build: BuildFunction
    description: str
    integer: bool = False
    integer_only: bool = False
    needs_representative: bool = False
    by_default: bool = True


_REGISTRY: Registry[Variant] = Registry("variant", protected=REQUIRED)


def register(variant: Variant) -> Variant:
    """Add ``variant`` after the registered ones (report order is registration order)."""
    if not variant.name.isidentifier():
        raise ValueError(f"variant name {variant.name!r} must be letters, digits and '_'")
    return _REGISTRY.register(variant)


unregister = _REGISTRY.unregister
get = _REGISTRY.get
names = _REGISTRY.names


def default_names() -> list[str]:
    """The variants a configuration builds when it does not list them."""
    return [v.name for v in _REGISTRY if v.by_default]


def integer_names() -> list[str]:
    """The variants the quantize stage may choose."""
    return [v.name for v in _REGISTRY if v.integer]


# --- evaluation keys: the Keras model and each variant ------------------------------------


def evaluation_key(name: str) -> str:
    """The evaluation's key for TFLite variant ``name`` (e.g. ``tflite_int8``)."""
    return f"{_KEY_PREFIX}{name}"


def variant_of_key(key: str) -> str | None:
    """The variant name of an evaluation key; None for the Keras model."""
    return key.removeprefix(_KEY_PREFIX) if key.startswith(_KEY_PREFIX) else None


REFERENCE_KEY = evaluation_key(REFERENCE)
FULL_INTEGER_KEY = evaluation_key(FULL_INTEGER)


def report_order(keys: Iterable[str]) -> list[str]:
    """Evaluation keys in report order: Keras, registered variants, then unknown ones by name."""
    order = [KERAS_KEY, *(evaluation_key(n) for n in names())]
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


# --- where answers flip: partial quantization from one calibration -------------------------


# --- activation ranges beyond min-max (issue 14) ------------------------------------------
#
# The calibration stores each activation's min/max over the representative photos in the
# calibrated flatbuffer; the quantizer turns them into int8 scales. Train photos can be far
# more confident than new ones (a model that has memorised them): the logits' min-max then
# spans 2-3x what new photos reach, and its int8 step swallows the small logit differences
# that decide close answers. These functions read activations, derive other ranges and write
# them into the calibrated model before :func:`quantize_full_integer`.


# --- recipes: activation ranges by rule, from the configuration (issue 14) ------------------


def _built_by(name: str) -> BuildFunction:
    """The build function ``mushroom.tflite_build.<name>``, imported when first called."""

    def build(inputs: BuildInputs):
        from mushroom import tflite_build

        return getattr(tflite_build, name)(inputs)

    build.__name__ = name
    return build


for _variant in (
    Variant("float32", _built_by("build_float32"), "plain conversion, the reference"),
    Variant("float16", _built_by("build_float16"), "float16 weights"),
    Variant("dynamic_int8", _built_by("build_dynamic_int8"), "int8 weights, float activations (dynamic range)",
            integer=True),
    Variant("int8", _built_by("build_int8"), "full integer (int8 weights and activations), float input/output",
            integer=True, integer_only=True, needs_representative=True),
    Variant("int8_io", _built_by("build_int8_io"), "full integer with int8 input/output (NPUs, microcontrollers)",
            integer=True, integer_only=True, needs_representative=True),
    Variant("int8_head_range", _built_by("build_int8_head_range"),
            "full integer; the logits' and pooled features' ranges from held-out-like (shifted) train photos",
            integer=True, integer_only=True, needs_representative=True),
    Variant("int16x8", _built_by("build_int16x8"), "int16 activations, int8 weights", integer=True,
            needs_representative=True),
    Variant("int8_selective", _built_by("build_int8_selective"),
            "full integer except the layers whose quantization error is largest", integer=True,
            needs_representative=True),
    Variant("int8_recipe", _built_by("build_int8_recipe"), "full integer with the activation ranges of quantize.recipe",
            integer=True, integer_only=True, needs_representative=True, by_default=False),
):
    register(_variant)
del _variant
