"""Hyperparameter search (keras-tuner) and two-phase training.

Phase one trains the head with the backbone frozen (with pretrained weights; a model
trained from scratch trains everything). Phase two unfreezes the top part of the backbone
at a lower learning rate. Both use early stopping with the best weights restored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras

from mushroom.config import ModelConfig
from mushroom.models import build_model, set_backbone_trainable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hyperparameters:
    """What the tune stage chooses and the train stage uses."""

    learning_rate: float
    dropout: float
    label_smoothing: float

    def to_dict(self) -> dict:
        return asdict(self)


def compile_model(model: keras.Model, learning_rate: float, label_smoothing: float) -> None:
    num_classes = model.output_shape[-1]
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        ],
    )


def _new_model(config: ModelConfig, num_classes: int, hp: Hyperparameters) -> keras.Model:
    model = build_model(config.architecture, num_classes, config.image_size, config.weights, hp.dropout)
    if config.weights != "none":
        set_backbone_trainable(model, None)
    compile_model(model, hp.learning_rate, hp.label_smoothing)
    return model


def _snapshot(model: keras.Model) -> dict:
    # Keyed by variable path: unfreezing layers may reorder ``model.weights``.
    return {v.path: v.numpy() for v in model.weights}


def _restore(model: keras.Model, snapshot: dict) -> None:
    for v in model.weights:
        v.assign(snapshot[v.path])


def tune_hyperparameters(
    config: ModelConfig, num_classes: int, train_ds, val_ds, work_dir: str | Path, seed: int = 42
) -> tuple[Hyperparameters, list[dict]]:
    """Search learning rate, dropout and label smoothing with keras-tuner.

    Each trial trains phase one for ``config.tune.epochs`` epochs; the objective is
    validation accuracy. The budget is ``config.tune.max_trials``.

    Returns:
        The best hyperparameters and one summary row per trial.
    """
    import keras_tuner as kt

    t = config.tune

    def build(hp: kt.HyperParameters) -> keras.Model:
        chosen = Hyperparameters(
            learning_rate=hp.Float("learning_rate", t.learning_rate[0], t.learning_rate[1], sampling="log"),
            dropout=hp.Float("dropout", t.dropout[0], t.dropout[1]),
            label_smoothing=hp.Float("label_smoothing", t.label_smoothing[0], t.label_smoothing[1]),
        )
        return _new_model(config, num_classes, chosen)

    tuner = kt.RandomSearch(
        build,
        objective="val_accuracy",
        max_trials=t.max_trials,
        seed=seed,
        directory=str(work_dir),
        project_name=config.model_name,
        overwrite=True,
    )
    start = time.monotonic()
    tuner.search(train_ds, validation_data=val_ds, epochs=t.epochs, verbose=2)
    trials = [
        {"trial": tr.trial_id, "score": tr.score, "status": tr.status, **tr.hyperparameters.values}
        for tr in tuner.oracle.trials.values()
    ]
    if not any(tr["score"] is not None for tr in trials):
        raise RuntimeError(f"tuning {config.model_name}: all {len(trials)} trials failed (see the log above)")
    best = tuner.get_best_hyperparameters(1)[0]
    chosen = Hyperparameters(**{k: float(best.get(k)) for k in ("learning_rate", "dropout", "label_smoothing")})
    log.info("tuned %s in %.0fs over %d trials: %s", config.model_name, time.monotonic() - start, len(trials), chosen)
    return chosen, trials


def train_model(
    config: ModelConfig, num_classes: int, hp: Hyperparameters, train_ds, val_ds
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train in two phases; return the model (best weights restored) and the history.

    The history has one entry per epoch across both phases plus a ``phase`` list.
    """
    tc = config.train
    model = _new_model(config, num_classes, hp)
    history: dict[str, list[float]] = {}

    def fit(epochs: int, phase: int) -> None:
        stop = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=tc.patience, restore_best_weights=True, verbose=1
        )
        start = time.monotonic()
        result = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=[stop], verbose=2)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        history.setdefault("phase", []).extend([phase] * len(result.history["loss"]))
        log.info("phase %d: %d epochs in %.0fs, best val_accuracy %.3f", phase,
                 len(result.history["loss"]), time.monotonic() - start, max(result.history["val_accuracy"]))

    log.info("phase 1 (%s): %d epochs at lr %.2g", "head" if config.weights != "none" else "from scratch",
             tc.head_epochs, hp.learning_rate)
    fit(tc.head_epochs, 1)
    if tc.fine_tune_epochs > 0:
        phase_one_best, phase_one_weights = max(history["val_accuracy"]), _snapshot(model)
        n = set_backbone_trainable(model, tc.fine_tune_fraction)
        lr = hp.learning_rate * tc.fine_tune_lr_factor
        log.info("phase 2 (fine-tune): %d backbone layers trainable, %d epochs at lr %.2g",
                 n, tc.fine_tune_epochs, lr)
        compile_model(model, lr, hp.label_smoothing)
        fit(tc.fine_tune_epochs, 2)
        phase_two = [a for a, p in zip(history["val_accuracy"], history["phase"], strict=True) if p == 2]
        if max(phase_two) < phase_one_best:
            log.info("fine-tuning did not beat phase 1 (%.3f < %.3f): keeping phase 1 weights",
                     max(phase_two), phase_one_best)
            _restore(model, phase_one_weights)
    else:
        log.info("phase 2 skipped (fine_tune_epochs = 0)")
    return model, history
