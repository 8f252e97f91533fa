"""Hyperparameter trials (keras-tuner) and two-phase training.

Phase one trains the head with the backbone frozen (with pretrained weights; a model
trained from scratch trains everything); given cached features (:mod:`mushroom.features`), it
and every tune trial train the head alone on them instead of running the backbone each epoch.
Phase two unfreezes the top part of the backbone at a lower learning rate. Both use early
stopping with the best weights restored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from mushroom.config import ModelConfig
from mushroom.models import build_model, feature_head, set_backbone_trainable
from mushroom.runtime import TrainingRuntime, as_float32, resolve_runtime
from mushroom.trials import FAILED, FINISHED, Trial, TrialResult

log = logging.getLogger(__name__)
# Each trial's hyperparameters and result: the full log (the select stage's line names every score).
trial_log = logging.getLogger("mushroom.trials")


@dataclass(frozen=True)
class Hyperparameters:
    """What the tune stage chooses and the train stage uses."""

    learning_rate: float
    dropout: float
    label_smoothing: float

    def to_dict(self) -> dict:
        return asdict(self)


def compile_model(model: keras.Model, learning_rate, label_smoothing: float, jit_compile: bool = False) -> None:
    """Compile with Adam at ``learning_rate`` (a number or a schedule), categorical cross-entropy
    and top-1/top-5 metrics; ``jit_compile`` compiles the step with XLA."""
    num_classes = model.output_shape[-1]
    model.compile(
        jit_compile=jit_compile,
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ],
    )


def with_augmentation(model: keras.Model, strength: str, seed: int) -> keras.Model:
    """A training model: ``model`` behind the augmentation layers, sharing its layers and weights.

    The random layers run where the model runs (on the GPU, inside the compiled step) and only
    while training; validation and prediction pass photos through unchanged. The layers are
    float32 whatever the mixed-precision policy. Fit this model; save :func:`classifier_of` it.
    """
    from mushroom.datasets import augmentation

    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        augment = augmentation(seed, strength)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    trainer = keras.Model(inputs, model(augment(inputs)), name=f"{model.name}_training")
    trainer.classifier = model
    return trainer


def classifier_of(model: keras.Model) -> keras.Model:
    """The classifier inside a training model (:func:`with_augmentation`), else ``model`` itself."""
    return getattr(model, "classifier", model)


def _new_model(config: ModelConfig, num_classes: int, hp: Hyperparameters, runtime: TrainingRuntime,
               learning_rate=None) -> keras.Model:
    model = build_model(config.architecture, num_classes, config.image_size, config.weights, hp.dropout)
    if config.weights != "none":
        set_backbone_trainable(model, None)
    if runtime.augment_in_model:
        model = with_augmentation(model, config.train.augmentation, runtime.seed)
    compile_model(model, learning_rate or runtime.learning_rate(hp.learning_rate), hp.label_smoothing,
                  runtime.jit_compile)
    return model


def learning_rate_schedule(config: ModelConfig, learning_rate: float, epochs: int, steps_per_epoch: int | None):
    """``learning_rate`` as the configured schedule for one phase of ``epochs`` epochs.

    ``constant`` (the default) is the number itself. ``cosine`` decays it to 0 over the phase
    after ``warmup_epochs`` of linear warm-up from 0 (Keras' ``CosineDecay``); it needs the
    number of steps per epoch.
    """
    tc = config.train
    if tc.lr_schedule == "constant" and not tc.warmup_epochs:
        return learning_rate
    if not steps_per_epoch:
        raise ValueError(f"{config.model_name}: lr_schedule {tc.lr_schedule!r} with warmup_epochs "
                         f"{tc.warmup_epochs} needs the number of steps per epoch")
    warmup = min(tc.warmup_epochs, max(epochs - 1, 0)) * steps_per_epoch
    total = max(epochs * steps_per_epoch - warmup, 1)
    if tc.lr_schedule == "constant":  # warm-up, then flat: a cosine that never decays
        return keras.optimizers.schedules.CosineDecay(0.0, 10**12, alpha=1.0, warmup_target=learning_rate,
                                                      warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(0.0 if warmup else learning_rate, total,
                                                  warmup_target=learning_rate if warmup else None,
                                                  warmup_steps=warmup)


def class_weights(config: ModelConfig, labels: np.ndarray | None, num_classes: int) -> dict[int, float] | None:
    """Loss weights ``n / (classes x count)`` per class with ``class_weights: balanced``, else None."""
    if config.train.class_weights == "none":
        return None
    if labels is None:
        raise ValueError(f"{config.model_name}: class_weights 'balanced' needs the training labels")
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    return {c: float(len(labels) / (num_classes * n)) if n else 0.0 for c, n in enumerate(counts)}


def _snapshot(model: keras.Model) -> dict:
    # Keyed by variable path: unfreezing layers may reorder ``model.weights``.
    return {v.path: v.numpy() for v in model.weights}


def _restore(model: keras.Model, snapshot: dict) -> None:
    for v in model.weights:
        v.assign(snapshot[v.path])


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch: ``epoch 3/14 (phase 1): loss ..., val_accuracy ... (4s)``.

    ``prefix`` goes before it (``trial 1/2, `` while tuning); a runner reads these lines as
    progress (:func:`mushroom.console.progress_of`).
    """

    def __init__(self, epochs: int, prefix: str = "", suffix: str = "", first_epoch: int = 0):
        super().__init__()
        self.epochs, self.prefix, self.suffix, self.first_epoch = epochs, prefix, suffix, first_epoch
        self._start = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        shown = ", ".join(f"{k} {float(v):.3f}" for k, v in (logs or {}).items()
                          if k in ("loss", "accuracy", "val_loss", "val_accuracy"))
        log.info("%sepoch %d/%d%s: %s (%.0fs)", self.prefix, self.first_epoch + epoch + 1, self.epochs,
                 self.suffix, shown, time.monotonic() - self._start)


class LearningRateLog(keras.callbacks.Callback):
    """Adds the learning rate at the end of each epoch to the logs (and so to the history)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _head_only(num_classes: int, feature_dim: int, dropout: float) -> keras.Model:
    """Phase one's trainable part on its own: features -> dropout -> softmax (a tune trial)."""
    inputs = keras.Input((feature_dim,), name="features")
    x = keras.layers.Dropout(dropout, name="dropout")(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="head")


def _declare_space(hp, tune) -> Hyperparameters:
    """The search space on keras-tuner's ``hp``: learning rate (log-uniform), dropout, label smoothing."""
    return Hyperparameters(
        learning_rate=hp.Float("learning_rate", tune.learning_rate[0], tune.learning_rate[1], sampling="log"),
        dropout=hp.Float("dropout", tune.dropout[0], tune.dropout[1]),
        label_smoothing=hp.Float("label_smoothing", tune.label_smoothing[0], tune.label_smoothing[1]),
    )


def sample_trials(config: ModelConfig, seed: int, work_dir: str | Path) -> list[dict[str, float]]:
    """``config.tune.max_trials`` sets of hyperparameters, sampled by keras-tuner's random search, seeded.

    keras-tuner's own trial loop runs with a trial that records its hyperparameters instead of
    training, so the sampling is keras-tuner's, and the same for a seed whoever trains the trials.
    """
    import keras_tuner as kt

    space = kt.HyperParameters()
    _declare_space(space, config.tune)
    sampled: list[dict[str, float]] = []

    class Sampler(kt.RandomSearch):
        def run_trial(self, trial, *args, **kwargs):
            sampled.append({k: float(v) for k, v in trial.hyperparameters.values.items()})
            return 0.0  # the objective of a trial that is only sampled

    Sampler(None, objective=kt.Objective("score", "max"), max_trials=config.tune.max_trials, seed=seed,
            hyperparameters=space, directory=str(work_dir), project_name=f"{config.model_name}-plan",
            overwrite=True).search(verbose=0)
    return sampled


def train_trial(
    config: ModelConfig, num_classes: int, trial: Trial, train_ds, val_ds, work_dir: str | Path, seed: int = 42,
    runtime: TrainingRuntime | None = None, train_labels: np.ndarray | None = None, feature_dim: int | None = None,
) -> TrialResult:
    """Train one trial (phase one, ``trial.epochs`` epochs) through keras-tuner's trial loop; the
    objective is the best validation accuracy.

    The hyperparameters are fixed to the trial's; keras-tuner builds, fits and scores the model.
    With ``feature_dim``, the datasets hold cached features (:func:`mushroom.features.feature_datasets`)
    and the trial trains the head alone on them.

    Raises:
        RuntimeError: the trial failed (its error named): a task that trains it can be retried.
    """
    import keras_tuner as kt

    runtime = runtime or resolve_runtime(config.train, seed)
    fixed = kt.HyperParameters()
    for name, value in trial.hyperparameters.items():
        fixed.Fixed(name, value)

    def build(hp: kt.HyperParameters) -> keras.Model:
        chosen = _declare_space(hp, config.tune)
        if feature_dim is not None:
            head = _head_only(num_classes, feature_dim, chosen.dropout)
            compile_model(head, runtime.learning_rate(chosen.learning_rate), chosen.label_smoothing,
                          runtime.jit_compile)
            return head
        return _new_model(config, num_classes, chosen, runtime)

    prefix = f"{trial.name}, "
    trial_log.info("%shyperparameters: %s, %d epochs, on %s", prefix,
             ", ".join(f"{k} {v:.3g}" for k, v in trial.hyperparameters.items()), trial.epochs, runtime.describe())
    tuner = kt.RandomSearch(build, objective="val_accuracy", max_trials=1, seed=trial.seed(seed),
                            hyperparameters=fixed, tune_new_entries=False, directory=str(work_dir),
                            project_name=f"{config.model_name}-trial-{trial.number}", overwrite=True,
                            max_consecutive_failed_trials=1)
    start = time.monotonic()
    try:
        with runtime.activate():
            tuner.search(train_ds, validation_data=val_ds, epochs=trial.epochs, verbose=0,
                         class_weight=class_weights(config, train_labels, num_classes),
                         callbacks=[EpochLog(trial.epochs, prefix)])
    except Exception as err:  # keras-tuner re-raises a failed trial
        raise RuntimeError(f"tuning {config.model_name}: {trial.name} failed: {err}") from err
    [done] = tuner.oracle.trials.values()
    metrics = done.metrics.metrics
    history = {name: [float(np.ravel(o.value)[-1]) for o in metrics[name].get_history()]
               for name in ("loss", "val_loss", "val_accuracy") if name in metrics}
    score = None if done.score is None else float(done.score)
    status = FINISHED if score is not None and np.isfinite(score) else FAILED
    result = TrialResult(trial=trial, status=status, score=score, seconds=time.monotonic() - start,
                         error=None if status == FINISHED else "no finite validation accuracy (diverged?)",
                         epochs_run=len(history.get("val_accuracy", [])), history=history)
    trial_log.info("%s%s: validation accuracy %s in %.0fs", prefix, status,
             "n/a" if score is None else f"{score:.3f}", result.seconds)
    return result


def train_model(
    config: ModelConfig, num_classes: int, hp: Hyperparameters, train_ds, val_ds,
    runtime: TrainingRuntime | None = None, train_labels: np.ndarray | None = None,
    steps_per_epoch: int | None = None, seed: int = 42, head_data: tuple | None = None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train in two phases; return the model (best weights restored, float32) and the history.

    The history has one entry per epoch across both phases plus a ``phase`` list.

    Args:
        config: The model configuration (``train`` holds the recipe and where it runs).
        num_classes: Output classes.
        hp: Learning rate, dropout and label smoothing from the tune stage.
        train_ds, val_ds: Batched datasets of ``(pixels, one-hot label)``, batched for the
            global batch (:meth:`mushroom.runtime.TrainingRuntime.global_batch`).
        runtime: Precision, XLA, replicas, determinism; default: resolved for this machine.
        train_labels: Class index of every training photo (for ``class_weights: balanced``).
        steps_per_epoch: Batches per epoch (for ``lr_schedule: cosine`` and warm-up).
        seed: The run's seed (determinism).
        head_data: ``(train, val)`` datasets of cached features and one-hot labels
            (:func:`mushroom.features.feature_datasets`): phase one trains the head on them.
    """
    tc = config.train
    runtime = runtime or resolve_runtime(tc, seed)
    log.info("train %s on %s", config.model_name, runtime.describe())
    with runtime.activate():
        model, history = _train_phases(config, num_classes, hp, train_ds, val_ds, runtime,
                                       class_weights(config, train_labels, num_classes), steps_per_epoch,
                                       head_data)
    return as_float32(classifier_of(model)), history


def _train_phases(config: ModelConfig, num_classes: int, hp: Hyperparameters, train_ds, val_ds,
                  runtime: TrainingRuntime, weights: dict[int, float] | None, steps_per_epoch: int | None,
                  head_data: tuple | None = None):
    tc = config.train
    base_lr = runtime.learning_rate(hp.learning_rate)
    model = _new_model(config, num_classes, hp, runtime,
                       learning_rate_schedule(config, base_lr, tc.head_epochs, steps_per_epoch))
    history: dict[str, list[float]] = {}

    total = tc.head_epochs + tc.fine_tune_epochs

    def fit(epochs: int, phase: int, trained=None, data=(train_ds, val_ds)) -> None:
        stop = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=tc.patience, restore_best_weights=True, verbose=1
        )
        start = time.monotonic()
        # Epochs count across both phases: phase 2 starts at head_epochs + 1 even when phase 1 stopped early.
        progress = EpochLog(total, suffix=f" (phase {phase})", first_epoch=0 if phase == 1 else tc.head_epochs)
        result = (trained or model).fit(data[0], validation_data=data[1], epochs=epochs, verbose=0,
                                        class_weight=weights, callbacks=[LearningRateLog(), stop, progress])
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        history.setdefault("phase", []).extend([phase] * len(result.history["loss"]))
        log.info("phase %d: %d epochs in %.0fs, best val_accuracy %.3f", phase,
                 len(result.history["loss"]), time.monotonic() - start, max(result.history["val_accuracy"]))

    kind = "from scratch" if config.weights == "none" else "head on cached features" if head_data else "head"
    log.info("phase 1 (%s): %d epochs at lr %.2g (%s)", kind, tc.head_epochs, base_lr, tc.lr_schedule)
    if head_data is not None:
        head = feature_head(classifier_of(model))
        compile_model(head, learning_rate_schedule(config, base_lr, tc.head_epochs, steps_per_epoch),
                      hp.label_smoothing, runtime.jit_compile)
        fit(tc.head_epochs, 1, head, head_data)
    else:
        fit(tc.head_epochs, 1)
    if tc.fine_tune_epochs > 0:
        phase_one_best, phase_one_weights = max(history["val_accuracy"]), _snapshot(model)
        n = set_backbone_trainable(classifier_of(model), tc.fine_tune_fraction)
        lr = base_lr * tc.fine_tune_lr_factor
        log.info("phase 2 (fine-tune): %d backbone layers trainable, %d epochs at lr %.2g (%s)",
                 n, tc.fine_tune_epochs, lr, tc.lr_schedule)
        compile_model(model, learning_rate_schedule(config, lr, tc.fine_tune_epochs, steps_per_epoch),
                      hp.label_smoothing, runtime.jit_compile)
        fit(tc.fine_tune_epochs, 2)
        phase_two = [a for a, p in zip(history["val_accuracy"], history["phase"], strict=True) if p == 2]
        if max(phase_two) < phase_one_best:
            log.info("fine-tuning did not beat phase 1 (%.3f < %.3f): keeping phase 1 weights",
                     max(phase_two), phase_one_best)
            _restore(model, phase_one_weights)
    else:
        log.info("phase 2 skipped (fine_tune_epochs = 0)")
    return model, history
