"""What ``mushroom identify`` says first and how it refuses a photo of no known species.

- The LiteRT runtime's ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` (C++ code
  writing to file descriptor 2) never comes before the safety notice: loading a model drops the
  runtime's INFO lines and passes on everything else it writes to stderr.
- A photo the open-set score refuses reads "this does not look like any of the N species this
  model knows"; the score and the threshold only with ``--verbose`` (and in ``--json``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mushroom.identify import NOTICE, UNKNOWN_SPECIES, Answer, SpeciesMatch, unknown_species_reason
from mushroom.identify_text import format_answer
from mushroom.tflite import runtime_info_dropped

REPO = Path(__file__).resolve().parents[1]
XNNPACK_INFO = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_runtime_info_lines_are_dropped_and_everything_else_is_passed_on(tmp_path):
    # In a child process, so that file descriptor 2 is the one the test reads.
    code = (
        "import os, sys\n"
        "from mushroom.tflite import runtime_info_dropped\n"
        "print('before', file=sys.stderr, flush=True)\n"
        "with runtime_info_dropped():\n"
        f"    os.write(2, b'{XNNPACK_INFO}\\n')\n"
        "    os.write(2, b'ERROR: the runtime failed\\nWARNING: a warning\\n')\n"
        "    print('from python', file=sys.stderr)\n"
        "print('after', file=sys.stderr, flush=True)\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["before", "ERROR: the runtime failed", "WARNING: a warning", "from python",
                                          "after"]


def test_an_exception_inside_still_restores_stderr(capfd):
    with pytest.raises(RuntimeError, match="boom"), runtime_info_dropped():
        os.write(2, b"ERROR: kept\n")
        raise RuntimeError("boom")
    os.write(2, b"back on stderr\n")
    assert capfd.readouterr().err == "ERROR: kept\nback on stderr\n"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A float32 TFLite classifier of 8 x 8 pixels: the runtime gives it the XNNPACK delegate."""
    import keras
    import tensorflow as tf

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    path = tmp_path_factory.mktemp("tiny") / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def test_loading_a_model_prints_no_runtime_info_line(tiny_model, tmp_path):
    raw = _python("from ai_edge_litert.interpreter import Interpreter\n"
                  f"Interpreter(model_path={str(tiny_model)!r}).allocate_tensors()\n", tmp_path)
    assert raw.returncode == 0, raw.stderr
    if XNNPACK_INFO not in raw.stderr:
        pytest.skip("this LiteRT prints no INFO line when it loads a model")
    ours = _python("import numpy as np\n"
                   "from mushroom.tflite import TFLiteClassifier\n"
                   f"c = TFLiteClassifier({str(tiny_model)!r}, num_threads=1)\n"
                   "print(c.predict(np.zeros((2, 8, 8, 3), np.uint8)).shape)\n", tmp_path)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.strip() == "(2, 3)" and ours.stderr == ""


def _refused(score: float = -26.7, threshold: float = -17.2) -> Answer:
    closest = (SpeciesMatch("Macrolepiota procera", "Parasol", 48407, 0.899, "edible"),)
    return Answer("paxillus.jpg", closest, verdict=UNKNOWN_SPECIES, reasons=(unknown_species_reason(6),),
                  open_set_score=score, open_set_threshold=threshold)


def test_a_refused_photo_is_said_in_words_and_the_score_only_with_verbose():
    text = format_answer(_refused())
    assert "why:       this does not look like any of the 6 species this model knows" in text
    assert "score" not in text and "-26.7" not in text and "Parasol" not in text
    verbose = format_answer(_refused(), verbose=True)
    assert "open-set score: -26.7, below this bundle's threshold -17.2" in verbose
    assert "closest known species (NOT an identification)" in verbose and "Parasol" in verbose
    as_json = _refused().to_dict()
    assert as_json["open_set_score"] == -26.7 and as_json["open_set_threshold"] == -17.2
    assert as_json["reasons"] == ["this does not look like any of the 6 species this model knows"]


@pytest.mark.slow
def test_identify_on_a_real_bundle_starts_with_the_notice_and_refuses_in_words(trained_run, tmp_path):
    """The command as a person runs it: nothing on stderr, the notice first; then a refusal."""
    from mushroom.datasets import load_split

    photo = load_split(trained_run["dataset"], trained_run["splits"], "test").paths[0]
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_run["calibrated_bundle"], bundle)
    command = [str(Path(sys.executable).with_name("mushroom")), "identify", str(photo), "--bundle", str(bundle)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[0] == NOTICE

    # Every photo below the open-set threshold: the same photo is refused, in words.
    calibration = json.loads((bundle / "calibration.json").read_text())
    variants = calibration["variants"]
    default = json.loads((bundle / "metadata.json").read_text())["default_variant"]
    if variants[default].get("open_set") is None:
        pytest.skip("the fixture bundle has no open-set rule")
    variants[default]["open_set"]["threshold"] = 1e9
    (bundle / "calibration.json").write_text(json.dumps(calibration))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "why:       this does not look like any of the 4 species this model knows" in result.stdout
    assert "open-set score" not in result.stdout and "1e+09" not in result.stdout
    verbose = subprocess.run([*command, "--verbose"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert "below this bundle's threshold 1e+09" in verbose.stdout
