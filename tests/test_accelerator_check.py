"""A stage that asks for GPUs where TensorFlow sees none stops at once, unless the stage says
``accelerator: optional`` (mushroom.runtime.check_accelerators; the compiled pipeline sets
MUSHROOM_ACCELERATORS and MUSHROOM_ACCELERATOR on the stage's task)."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from mushroom import runtime, stages
from mushroom.cluster import ClusterConfig
from mushroom.config import TrainConfig
from mushroom.runtime import (
    ACCELERATOR_ENV,
    ACCELERATORS_ENV,
    Gpu,
    NoAcceleratorError,
    check_accelerators,
    resolve_runtime,
)
from tests.helpers import TINY_MODEL

STOP = "asked for 1 GPU, TensorFlow sees none: check the node pool and driver"
L4 = Gpu("NVIDIA L4", (8, 9))


def test_asked_for_a_gpu_and_none_seen_stops_with_one_line():
    with pytest.raises(NoAcceleratorError) as stop:
        resolve_runtime(TrainConfig(), seed=1, gpus=[], environ={ACCELERATORS_ENV: "1"})
    assert stop.value.code == STOP  # SystemExit: Python prints the message alone and exits with 1
    with pytest.raises(NoAcceleratorError, match="^asked for 2 GPUs, TensorFlow sees none: check the node pool"):
        check_accelerators([], {ACCELERATORS_ENV: "2", ACCELERATOR_ENV: "required"})


def test_optional_runs_on_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mushroom.runtime"):
        cpu = resolve_runtime(TrainConfig(), seed=1, gpus=[],
                              environ={ACCELERATORS_ENV: "1", ACCELERATOR_ENV: "optional"})
    assert (cpu.gpus, cpu.precision, cpu.replicas) == ((), "float32", 1)
    assert "asked for 1 GPU, TensorFlow sees none: running on CPU (accelerator: optional)" in caplog.text


def test_no_request_no_check_and_gpus_seen_pass():
    assert resolve_runtime(TrainConfig(), seed=1, gpus=[], environ={}).gpus == ()  # local runs, CPU stages
    assert resolve_runtime(TrainConfig(), seed=1, gpus=[], environ={ACCELERATORS_ENV: "0"}).gpus == ()
    assert resolve_runtime(TrainConfig(), seed=1, gpus=[L4], environ={ACCELERATORS_ENV: "1"}).gpus == (L4,)


@pytest.mark.parametrize("environ, message", [
    ({ACCELERATORS_ENV: "one"}, "MUSHROOM_ACCELERATORS='one' is not a number of GPUs"),
    ({ACCELERATORS_ENV: "1", ACCELERATOR_ENV: "maybe"},
     "MUSHROOM_ACCELERATOR='maybe': allowed values are required, optional"),
])
def test_a_bad_value_is_named(environ, message):
    with pytest.raises(NoAcceleratorError) as stop:
        check_accelerators([], environ)
    assert stop.value.code == message


def test_optional_is_a_stage_setting_and_needs_an_accelerator():
    cluster = ClusterConfig.model_validate({"node": {"accelerators": 1}, "fit": "stage", "stages": {
        "train": {"accelerator_count": 1, "accelerator": "optional"}, "tune": {"accelerator_count": 1}}})
    assert (cluster.stages.train.accelerator, cluster.stages.tune.accelerator) == ("optional", "required")
    with pytest.raises(ValidationError, match="accelerator: optional needs accelerator_count above 0"):
        ClusterConfig.model_validate({"stages": {"tune": {"accelerator": "optional"}}})


def test_the_tune_stage_stops_before_any_work_in_its_own_process(small_dataset, tmp_path):
    """The stage as a task runs it: a fresh Python whose TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES
    empty), with the variables the compiled pipeline sets. One line, exit 1, nothing written."""
    dataset, splits = small_dataset
    script = textwrap.dedent(f"""
        from mushroom import console, stages
        console.setup_stage_logging("tune", "tiny-mobilenet")
        stages.tune({str(dataset)!r}, {str(splits)!r}, {TINY_MODEL!r}, 3, {str(tmp_path / "hp")!r})
    """)
    env = {**os.environ, ACCELERATORS_ENV: "1", ACCELERATOR_ENV: "required", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1] == STOP and "Traceback" not in done.stderr
    assert STOP not in done.stdout and not (tmp_path / "hp").exists()


def test_optional_tunes_on_cpu(small_dataset, tmp_path, monkeypatch, caplog):
    """accelerator: optional where TensorFlow sees no GPU (faked, so the test means the same on a
    GPU machine): the stage runs on CPU and writes its hyperparameters."""
    dataset, splits = small_dataset
    monkeypatch.setenv(ACCELERATORS_ENV, "1")
    monkeypatch.setenv(ACCELERATOR_ENV, "optional")
    monkeypatch.setattr(runtime, "visible_gpus", lambda: [])
    with caplog.at_level(logging.INFO):
        result = stages.tune(dataset, splits, TINY_MODEL, 3, tmp_path / "hp")
    assert "running on CPU (accelerator: optional)" in caplog.text
    assert "CPU; precision float32" in caplog.text  # the runtime it trained with
    written = json.loads((tmp_path / "hp" / "hyperparameters.json").read_text())
    assert written["learning_rate"] == pytest.approx(0.003) and 0 <= result["best_val_accuracy"] <= 1
