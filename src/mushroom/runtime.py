"""Where tune and train run: GPUs, mixed precision, XLA, several GPUs, determinism.

:func:`resolve_runtime` turns a model configuration's ``train`` settings and the GPUs
TensorFlow sees into a :class:`TrainingRuntime`; :meth:`TrainingRuntime.activate` applies it
around model building and training. With no GPU and default settings nothing changes: float32,
no XLA, one replica.

- ``precision: auto`` is ``mixed_float16`` on GPUs of compute capability 7.0 or newer (tensor
  cores), else ``float32``. ``mixed_float16`` asked for without such a GPU is refused before
  training starts; ``mixed_bfloat16`` runs anywhere (slowly on CPUs without bfloat16 units).
  The model's output layer stays float32 (:mod:`mushroom.models`) and the saved model is
  rebuilt in float32 (:func:`as_float32`), so export and TFLite variants do not change.
- ``jit_compile: auto`` compiles the training step with XLA on GPUs only.
- ``multi_gpu: true`` trains with ``tf.distribute.MirroredStrategy`` over all visible GPUs when
  there are several. Each replica keeps ``batch_size`` photos per step, so the global batch is
  ``batch_size x replicas`` and the learning rate is scaled by ``replicas`` (the linear scaling
  rule; with ``warmup_epochs`` for stability).
- ``deterministic: true`` seeds Python, NumPy and TensorFlow and turns on TensorFlow's op
  determinism, so two runs on the same machine train to the same weights (slower on GPUs).

On a cluster, a stage that asks for GPUs (``cluster.stages.<stage>.accelerator_count``) learns it
from ``MUSHROOM_ACCELERATORS``, which the compiled pipeline sets on its task, and
:func:`resolve_runtime` checks it first (:func:`check_accelerators`): when TensorFlow sees no GPU
the stage stops at once with one line instead of training on CPU for hours, unless the stage says
``accelerator: optional`` (``MUSHROOM_ACCELERATOR=optional``), which trains on CPU with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

TENSOR_CORE_CAPABILITY = (7, 0)  # mixed_float16 pays off (and is numerically supported) from Volta on
_MIXED = ("mixed_float16", "mixed_bfloat16")


# Set by the compiled pipeline on the task of every stage that requests accelerators
# (pipelines/pipeline.py); unset (local runs, stages without accelerators): no check.
ACCELERATORS_ENV = "MUSHROOM_ACCELERATORS"  # the number of GPUs the stage's pod asked for
ACCELERATOR_ENV = "MUSHROOM_ACCELERATOR"  # "required" (default) or "optional": CPU allowed
ACCELERATOR_POLICIES = ("required", "optional")


class TrainingSettingError(ValueError):
    """A training setting this machine cannot honour (named, before training starts)."""


class NoAcceleratorError(SystemExit):
    """The stage asked for GPUs and TensorFlow sees none (:func:`check_accelerators`).

    A :class:`SystemExit`: nothing between the check and the process's end catches it, and
    Python prints its message alone (no traceback) and exits with status 1, so the task's log
    ends with one line that says what to check.
    """


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: tuple[int, int] | None


def visible_gpus() -> list[Gpu]:
    """The GPUs TensorFlow sees, with their compute capability."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(Gpu(details.get("device_name", device.name), details.get("compute_capability")))
    return gpus


@dataclass(frozen=True)
class TrainingRuntime:
    """How training runs here (see the module docstring)."""

    precision: str
    jit_compile: bool
    replicas: int
    deterministic: bool
    seed: int
    gpus: tuple[Gpu, ...] = ()
    augment_in_model: bool = False  # augmentation as the training model's first layers (on the accelerator)

    def global_batch(self, batch_size: int) -> int:
        """Photos per training step across replicas."""
        return batch_size * self.replicas

    def learning_rate(self, learning_rate: float) -> float:
        """``learning_rate`` scaled for the global batch (linear scaling rule)."""
        return learning_rate * self.replicas

    def describe(self) -> str:
        devices = ", ".join(g.name for g in self.gpus) or "CPU"
        augment = "model" if self.augment_in_model else "input pipeline"
        return (f"{devices}; precision {self.precision}, XLA {'on' if self.jit_compile else 'off'}, "
                f"{self.replicas} replica(s), augmentation in the {augment}"
                f"{', deterministic' if self.deterministic else ''}")

    @contextlib.contextmanager
    def activate(self) -> Iterator[Any]:
        """Apply the settings; yield the distribution strategy, whose scope is entered.

        The Keras dtype policy is restored on exit (it is process-wide). Op determinism, once
        on, stays on for the process: TensorFlow offers no public way back.
        """
        import keras
        import tensorflow as tf

        if self.deterministic:
            keras.utils.set_random_seed(self.seed)
            tf.config.experimental.enable_op_determinism()
        previous = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(self.precision)
        strategy = tf.distribute.MirroredStrategy() if self.replicas > 1 else tf.distribute.get_strategy()
        try:
            with strategy.scope():
                yield strategy
        finally:
            keras.mixed_precision.set_global_policy(previous)


def _plural(count: int) -> str:
    return f"{count} GPU{'' if count == 1 else 's'}"


def check_accelerators(gpus: list[Gpu], environ: Mapping[str, str] | None = None) -> None:
    """Stop a stage that asked for GPUs where TensorFlow sees none.

    Args:
        gpus: The GPUs TensorFlow sees (:func:`visible_gpus`).
        environ: Where ``MUSHROOM_ACCELERATORS`` and ``MUSHROOM_ACCELERATOR`` are read; default:
            the process's environment.

    Raises:
        NoAcceleratorError: GPUs asked for, none seen, and ``MUSHROOM_ACCELERATOR`` is not
            ``optional``; or either variable holds a value it cannot (named).
    """
    environ = os.environ if environ is None else environ
    asked_text = environ.get(ACCELERATORS_ENV, "").strip()
    if not asked_text:
        return
    if not asked_text.isdigit():
        raise NoAcceleratorError(f"{ACCELERATORS_ENV}={asked_text!r} is not a number of GPUs")
    policy = environ.get(ACCELERATOR_ENV, "").strip() or "required"
    if policy not in ACCELERATOR_POLICIES:
        raise NoAcceleratorError(f"{ACCELERATOR_ENV}={policy!r}: allowed values are {', '.join(ACCELERATOR_POLICIES)}")
    asked = int(asked_text)
    if asked == 0:
        return
    if not gpus:
        if policy == "optional":
            log.warning("asked for %s, TensorFlow sees none: running on CPU (accelerator: optional)", _plural(asked))
            return
        raise NoAcceleratorError(f"asked for {_plural(asked)}, TensorFlow sees none: check the node pool and driver")
    if len(gpus) < asked:
        log.warning("asked for %s, TensorFlow sees %d: running on %d", _plural(asked), len(gpus), len(gpus))


def resolve_runtime(train: Any, seed: int, gpus: list[Gpu] | None = None,
                    environ: Mapping[str, str] | None = None) -> TrainingRuntime:
    """The runtime for a model configuration's ``train`` settings on this machine.

    Args:
        train: ``ModelConfig.train`` (``precision``, ``jit_compile``, ``multi_gpu``,
            ``deterministic``).
        seed: The run's seed (used when ``deterministic``).
        gpus: The visible GPUs; default: :func:`visible_gpus`.
        environ: Read by :func:`check_accelerators`; default: the process's environment.

    Raises:
        NoAcceleratorError: the stage's pod asked for GPUs and TensorFlow sees none
            (:func:`check_accelerators`).
        TrainingSettingError: ``mixed_float16`` without a GPU of compute capability 7.0 or newer, or XLA
            asked for where it cannot compile.
    """
    gpus = visible_gpus() if gpus is None else gpus
    check_accelerators(gpus, environ)
    capable = [g for g in gpus if g.compute_capability and tuple(g.compute_capability) >= TENSOR_CORE_CAPABILITY]
    precision = train.precision
    if precision == "auto":
        precision = "mixed_float16" if gpus and len(capable) == len(gpus) else "float32"
    elif precision == "mixed_float16" and (not gpus or len(capable) < len(gpus)):
        found = ", ".join(f"{g.name} ({'.'.join(map(str, g.compute_capability or ('?',)))})" for g in gpus) or "none"
        raise TrainingSettingError(f"train.precision mixed_float16 needs NVIDIA GPUs of compute capability "
                            f"{'.'.join(map(str, TENSOR_CORE_CAPABILITY))} or newer (found: {found}); use "
                            "precision: auto, float32 or mixed_bfloat16")
    jit = train.jit_compile
    jit_compile = bool(gpus) if jit == "auto" else jit == "on"
    replicas = len(gpus) if train.multi_gpu and len(gpus) > 1 else 1
    where = getattr(train, "augment_on", "auto")
    return TrainingRuntime(precision=precision, jit_compile=jit_compile, replicas=replicas,
                           deterministic=train.deterministic, seed=seed, gpus=tuple(gpus),
                           augment_in_model=bool(gpus) if where == "auto" else where == "model")


def as_float32(model):
    """``model`` rebuilt with every layer in float32, holding the same weights.

    A model trained under a mixed policy keeps float32 variables but computes in float16 or
    bfloat16 and records that policy per layer; the saved model, the TFLite export and identify
    expect float32 throughout.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("class_name") == "DTypePolicy" and value.get("config", {}).get("name") in _MIXED:
                return {**value, "config": {**value["config"], "name": "float32"}}
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return "float32" if value in _MIXED else value

    if all(layer.dtype_policy.name not in _MIXED for layer in _all_layers(model)):
        return model
    rebuilt = model.__class__.from_config(plain(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _all_layers(model) -> list:
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if hasattr(layer, "layers"):
            layers += _all_layers(layer)
    return layers
