"""The training recipe and where it runs, from the config: schedules, class weights, strong
augmentation, mixed precision, determinism; tune and train read shards."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from mushroom import stages
from mushroom.config import parse_model_config
from mushroom.runtime import TrainingSettingError
from mushroom.training import class_weights, learning_rate_schedule

TINY = {
    "model_name": "tiny",
    "architecture": "mobilenetv3-large",
    "image_size": 32,
    "weights": "none",
    "batch_size": 16,
    "tune": {"max_trials": 1, "epochs": 1, "learning_rate": [0.003, 0.003], "dropout": [0.0, 0.0],
             "label_smoothing": [0.0, 0.0]},
    "train": {"head_epochs": 3, "fine_tune_epochs": 0, "patience": 3},
}


def _config(**train):
    return {**TINY, "train": {**TINY["train"], **train}}


def test_balanced_class_weights_undo_skewed_counts():
    config = parse_model_config(_config(class_weights="balanced"))
    weights = class_weights(config, np.array([0, 1, 1, 1]), 3)
    assert weights == {0: pytest.approx(4 / 3), 1: pytest.approx(4 / 9), 2: 0.0}
    assert class_weights(parse_model_config(TINY), np.array([0, 1]), 2) is None


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = parse_model_config(_config(lr_schedule="cosine", warmup_epochs=1))
    schedule = learning_rate_schedule(config, 0.01, epochs=4, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert rates[0] == pytest.approx(0.0) and rates[1] == pytest.approx(0.005)
    assert rates[2] == pytest.approx(0.01) and 0 < rates[3] < 0.01 and rates[4] == pytest.approx(0.0, abs=1e-9)
    assert learning_rate_schedule(parse_model_config(TINY), 0.01, 4, None) == 0.01
    with pytest.raises(ValueError, match="needs the number of steps per epoch"):
        learning_rate_schedule(config, 0.01, 4, None)


def test_the_full_recipe_in_mixed_bfloat16_trains_from_shards_and_saves_float32(small_dataset, tmp_path):
    dataset, splits = small_dataset
    shards = tmp_path / "shards"
    config = _config(lr_schedule="cosine", warmup_epochs=1, class_weights="balanced", augmentation="strong",
                     precision="mixed_bfloat16")
    assert stages.prepare(dataset, splits, [config, {**TINY, "model_name": "b", "image_size": 48}], shards)[
        "sizes"] == 2
    stages.tune(dataset, splits, config, 3, tmp_path / "hp", shards_dir=shards)
    result = stages.train(dataset, splits, tmp_path / "hp", config, 3, tmp_path / "model", shards_dir=shards)
    assert result["epochs"] >= 1
    model = keras.models.load_model(tmp_path / "model" / "model.keras", compile=False)
    policies = {layer.dtype_policy.name for layer in model.layers}
    policies |= {layer.dtype_policy.name for layer in model.get_layer("backbone").layers}
    assert policies == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training
    history = __import__("json").loads((tmp_path / "model" / "history.json").read_text())
    rates = history["learning_rate"]
    assert rates[-1] < rates[0], "cosine decay over the phase"


def test_mixed_float16_without_a_gpu_stops_before_any_work(small_dataset, tmp_path):
    dataset, splits = small_dataset
    with pytest.raises(TrainingSettingError, match="mixed_float16 needs NVIDIA GPUs"):
        stages.tune(dataset, splits, _config(precision="mixed_float16"), 3, tmp_path / "hp")
    assert not (tmp_path / "hp").exists()


def test_a_stage_whose_size_has_no_shards_names_it(small_dataset, tmp_path):
    from mushroom.shards import ShardError

    dataset, splits = small_dataset
    stages.prepare(dataset, splits, [TINY], tmp_path / "shards")
    with pytest.raises(ShardError, match=r"no shards for image size 48 \(prepared: \[32\]\)"):
        stages.tune(dataset, splits, {**TINY, "image_size": 48}, 3, tmp_path / "hp", shards_dir=tmp_path / "shards")


def test_deterministic_training_gives_identical_weights(small_dataset, tmp_path):
    """Two trainings with deterministic: true, in a fresh process (op determinism is process-wide)."""
    dataset, splits = small_dataset
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from mushroom import stages
        config = {_config(deterministic=True, head_epochs=1)!r}
        hp = {str(tmp_path / "hp")!r}
        stages.prepare({str(dataset)!r}, {str(splits)!r}, [config], {str(tmp_path / "shards")!r})
        import pathlib
        pathlib.Path(hp).mkdir()
        pathlib.Path(hp, "hyperparameters.json").write_text(json.dumps(
            {{"learning_rate": 0.003, "dropout": 0.0, "label_smoothing": 0.0}}))
        weights = []
        for run in ("a", "b"):
            stages.train({str(dataset)!r}, {str(splits)!r}, hp, config, 5, {str(tmp_path)!r} + "/" + run,
                         shards_dir={str(tmp_path / "shards")!r})
            import keras
            model = keras.models.load_model({str(tmp_path)!r} + "/" + run + "/model.keras", compile=False)
            weights.append(model.get_weights())
        print("MAXDIFF", max(float(np.max(np.abs(a - b))) for a, b in zip(*weights)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    diff = float(out.stdout.split("MAXDIFF")[-1])
    assert diff == 0.0


def test_augmentation_inside_the_model_trains_and_saves_the_classifier_alone(small_dataset, tmp_path, caplog):
    """augment_on: model (the GPU default) on CPU: the random layers are the training model's first
    layers, the input pipeline does not augment, and the saved model is the plain classifier."""
    import logging

    from mushroom.runtime import resolve_runtime
    from mushroom.training import classifier_of, with_augmentation

    dataset, splits = small_dataset
    config = _config(augment_on="model", augmentation="strong")
    parsed = parse_model_config(config)
    assert resolve_runtime(parsed.train, 3, gpus=[]).augment_in_model
    assert not resolve_runtime(parse_model_config(TINY).train, 3, gpus=[]).augment_in_model  # auto, no GPU: data
    with caplog.at_level(logging.INFO):
        stages.tune(dataset, splits, config, 3, tmp_path / "hp")
        stages.train(dataset, splits, tmp_path / "hp", config, 3, tmp_path / "model")
    assert "augmentation in the model" in caplog.text
    model = keras.models.load_model(tmp_path / "model" / "model.keras", compile=False)
    assert model.name == "mobilenetv3_large" and model.input_shape == (None, 32, 32, 3)
    assert not any(layer.name == "augmentation" for layer in model.layers)

    # The training model shares the classifier's weights and, outside training, changes nothing.
    trainer = with_augmentation(model, "strong", seed=3)
    assert classifier_of(trainer) is model and classifier_of(model) is model
    photos = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(trainer.predict(photos, verbose=0), model.predict(photos, verbose=0), atol=1e-6)
    augmented = trainer.get_layer("augmentation")(photos, training=True)
    assert not np.allclose(np.asarray(augmented), photos), "training=True changes the photos"
