"""Latency measured once, interleaved, with an interval; the run's ``evaluate:`` settings reach the stages."""

import json

import numpy as np
import pytest
import yaml

from mushroom import latency
from mushroom.config import ConfigError, EvaluateConfig, load_config, parse_config


def test_the_median_interval_brackets_the_median_and_narrows_with_more_runs():
    rng = np.random.default_rng(0)
    few, many = rng.exponential(1.0, 15) + 1, rng.exponential(1.0, 400) + 1
    for times in (few, many):
        low, high = latency.median_interval(times)
        assert low <= np.median(times) <= high
        assert low in times and high in times  # order statistics, not a model of the distribution
    assert np.subtract(*latency.median_interval(many)[::-1]) < np.subtract(*latency.median_interval(few)[::-1])
    assert latency.median_interval(np.array([3.0])) == (3.0, 3.0)


def _tiny_tflite(path, scale: float):
    import tensorflow as tf

    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Flatten()(inputs)
    outputs = tf.keras.layers.Dense(3, activation="softmax")(x * scale)
    model = tf.keras.Model(inputs, outputs)
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def test_every_model_is_timed_in_every_round_in_a_rotated_order(tmp_path, monkeypatch):
    from mushroom import tflite

    models = {name: _tiny_tflite(tmp_path / f"{name}.tflite", i + 1.0) for i, name in enumerate(("a", "b", "c"))}
    order = []
    real = tflite.TFLiteClassifier.predict

    def predict(self, batch):
        order.append(self.path.stem)
        return real(self, batch)

    monkeypatch.setattr(tflite.TFLiteClassifier, "predict", predict)
    monkeypatch.delenv("MUSHROOM_LATENCY_RUNS", raising=False)
    setup = latency.LatencySetup(runs=6, rounds=3, warmup=1, threads_all=2)
    figures, settings = latency.measure_interleaved(models, np.zeros((8, 8, 3), np.uint8), setup)

    timed_1 = order[3:3 + 18]  # one warm-up each, then 3 rounds of 2 runs per model, 1 thread
    rounds = [timed_1[i:i + 6] for i in range(0, 18, 6)]
    assert [r[::2] for r in rounds] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert len(order) == 2 * (3 + 18)  # the same again with every core
    for name in models:
        one, every = figures[name]["threads_1"], figures[name]["threads_all"]
        assert one["num_threads"] == 1 and every["num_threads"] == 2 and one["runs"] == 6 and one["rounds"] == 3
        assert 0 < one["median_low_ms"] <= one["median_ms"] <= one["median_high_ms"]
    assert settings["interleaved"] and settings["runs"] == 6 and settings["rounds"] == 3
    assert isinstance(settings["busy"], bool)


def test_bad_latency_settings_are_refused_with_their_values(monkeypatch):
    monkeypatch.setenv("MUSHROOM_LATENCY_RUNS", "0")
    with pytest.raises(ValueError, match="runs 0"):
        latency.LatencySetup().resolved()
    monkeypatch.setenv("MUSHROOM_LATENCY_RUNS", "4")
    assert latency.LatencySetup(rounds=10).resolved().rounds == 4  # never more rounds than runs


def _demo():
    return yaml.safe_load(open("pipelines/configs/demo.yaml"))


def test_the_evaluate_section_has_one_default_each_and_reaches_every_model_configuration():
    config = load_config("pipelines/configs/demo.yaml")
    assert config.evaluate == EvaluateConfig() and all(m.evaluate == EvaluateConfig() for m in config.models)
    data = _demo()
    data["evaluate"] = {"target_dangerous_as_edible": 0.01, "open_set_known_kept": 0.9, "latency_runs": 12}
    data["models"][1]["evaluate"] = {"latency_runs": 3}
    config = parse_config(data)
    first, second = config.models
    assert (first.evaluate.target_dangerous_as_edible, first.evaluate.open_set_known_kept,
            first.evaluate.latency_runs) == (0.01, 0.9, 12)
    assert second.evaluate.latency_runs == 3 and second.evaluate.target_dangerous_as_edible == 0.005  # its own


@pytest.mark.parametrize("section, message", [
    ({"target_dangerous_as_edible": 1.5}, "evaluate.target_dangerous_as_edible"),
    ({"open_set_known_kept": 0.2}, "evaluate.open_set_known_kept"),
    ({"latency_runs": 0}, "evaluate.latency_runs"),
    ({"latency_run": 5}, "evaluate.latency_run: unknown field"),
])
def test_a_bad_evaluate_section_is_named_once(section, message):
    data = _demo()
    data["evaluate"] = section
    with pytest.raises(ConfigError) as err:
        parse_config(data, "demo.yaml")
    assert message in str(err.value) and "models.0" not in str(err.value)


def test_the_evaluation_reports_the_latency_the_quantize_stage_chose_on(certified_run):
    from mushroom.evaluation import read_evaluation

    report = json.loads((certified_run["bundle"] / "quantization_report.json").read_text())
    evaluation = read_evaluation(certified_run["evaluation"])
    assert report["latency_settings"]["interleaved"] and evaluation.latency_settings.interleaved
    for variant, figures in report["latency"].items():
        measured = evaluation.variant(variant).latency
        assert measured.threads_1.median_ms == figures["threads_1"]["median_ms"]  # the same figures, not retimed
        assert measured.threads_1.median_low_ms <= measured.threads_1.median_ms <= measured.threads_1.median_high_ms
        assert report["variants"][variant]["latency_ms"] == figures["threads_1"]["median_ms"]  # what it chose on
