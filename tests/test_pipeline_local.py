"""Run the whole pipeline locally with kfp.local on a tiny configuration, as `make demo` does.

One run (``python -m pipelines.run``'s ``main``) serves every test of the module: its artifacts,
what it printed on the console and its full log.
"""

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
import yaml

from mushroom.bundle import read_bundle
from mushroom.console import CONFIGURATION_STAGES, parse_line
from mushroom.fileio import read_json
from mushroom.publish import read_latest

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
NAMES = ("tiny-a", "tiny-b")
# A console line of a stage: "HH:MM:SS  STAGE [CONFIGURATION]  text".
STAGE_LINE = re.compile(r"^\d\d:\d\d:\d\d  (\w+)(?: (\S+))?\s+(.*)$")
# Library noise every task prints, planted by the test: TensorFlow's own oneDNN notice (a C++ log
# line on stderr at import) appears only on CPUs where oneDNN is on by default, so the run's full
# log cannot be checked for it. A sitecustomize writes this one, in the same format, to the raw
# stderr of every Python process the run starts.
PLANTED_NOISE = ("I0000 00:00:1795840261.942340   29610 port.cc:153] oneDNN custom operations are on. "
                 "(planted by test_pipeline_local)")


def _tiny_config(tmp_path: Path) -> Path:
    config = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    config["name"] = "tiny"
    config["dataset"]["species"] = ["Boletus edulis", "Amanita muscaria", "Amanita phalloides"]
    config["dataset"]["synthetic"] = {"photos_per_species": 24, "image_size": 48, "photos_per_observation": 2}
    base = config["models"][0]
    small = {
        **base,
        "image_size": 32,
        "batch_size": 16,
        "tune": {**base["tune"], "max_trials": 2, "epochs": 1, "rounds": 2},  # 2 trials, then the better one
        "train": {**base["train"], "head_epochs": 1, "fine_tune_epochs": 1},
        "quantize": {"representative_samples": 10},
    }
    config["models"] = [{**small, "model_name": "tiny-a"}, {**small, "model_name": "tiny-b", "image_size": 40}]
    config["publish"] = {"destination": str(tmp_path / "published")}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _plant_noise(folder: Path) -> Path:
    """A sitecustomize module in ``folder`` that writes :data:`PLANTED_NOISE` to file descriptor 2."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import os\nos.write(2, {(PLANTED_NOISE + chr(10)).encode()!r})\n")
    return folder


def _run_main(args: list[str]) -> tuple[int, str, str]:
    from pipelines.run import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The tiny configuration run end to end through ``python -m pipelines.run``."""
    tmp_path = tmp_path_factory.mktemp("local-run")
    planted = _plant_noise(tmp_path / "noise")
    with pytest.MonkeyPatch.context() as env:  # the tasks are subprocesses: they inherit it
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(planted), os.environ.get("PYTHONPATH")])))
        code, out, err = _run_main([str(_tiny_config(tmp_path)), "--output", str(tmp_path / "out")])
    assert code == 0, f"the run failed:\n{out}\n{err}"
    root = tmp_path / "out" / "pipeline_root"
    iterations = {}  # configuration -> its ParallelFor iteration folder
    for path in root.rglob("evaluate-model/evaluation/evaluation.json"):
        iterations[read_json(path)["model_name"]] = path.parents[2]
    logs = list((tmp_path / "out" / "logs").glob("run-*.log"))
    return {"tmp": tmp_path, "root": root, "out": out, "err": err, "iterations": iterations, "logs": logs}


@pytest.mark.slow
def test_local_run_produces_bundles_evaluations_and_publishes(local_run):
    tmp_path, iterations = local_run["tmp"], local_run["iterations"]

    # One bundle and one evaluation per configuration, each complete.
    assert set(iterations) == set(NAMES)
    for name, folder in iterations.items():
        bundle = read_bundle(folder / "evaluate-model" / "calibrated_bundle")
        assert bundle.metadata["model_name"] == name
        assert [s.scientific_name for s in bundle.catalog] == [
            "Amanita muscaria", "Boletus edulis", "Amanita phalloides"]  # catalog order
        for variant in ("float32", "int8"):
            assert bundle.model_path(variant).stat().st_size > 10_000
        evaluation = read_json(folder / "evaluate-model" / "evaluation" / "evaluation.json")
        for variant in ("keras", "tflite_float32", "tflite_int8"):
            assert 0.0 <= evaluation["variants"][variant]["top1"] <= 1.0
            assert evaluation["variants"][variant]["top5"] == 1.0  # 3 classes: top-5 holds them all
        assert evaluation["variants"]["tflite_int8"]["size_mb"] < evaluation["variants"]["tflite_float32"]["size_mb"]

    # The published run folder holds the chosen bundle and the comparison of both configs.
    latest = read_latest(str(tmp_path / "published"))
    published = tmp_path / "published" / latest.run
    assert f"Published bundle and evaluation: {published}" in local_run["out"]
    assert latest.created is not None  # the recorded start time
    assert latest.run.startswith("quantized-mushroom-")  # kfp.local's run name, with its job id
    read_bundle(published / "bundle")
    comparison = read_json(published / "evaluation" / "comparison.json")
    assert {e["model_name"] for e in comparison["evaluations"]} == set(NAMES)
    assert read_json(published / "evaluation" / "evaluation.json")["model_name"] == comparison["best"]


@pytest.mark.slow
def test_console_is_short_and_the_full_log_keeps_everything(local_run):
    out = local_run["out"]
    lines = out.splitlines()
    assert len(lines) < 150, f"{len(lines)} console lines"
    for noise in ("executor_input", "oneDNN", "absl", "XNNPACK", "cpu_feature_guard", "metadata=", "Streamed logs",
                  "planted by"):
        assert noise not in out, noise
    assert not any(line.lstrip().startswith(('"', "{", "}")) for line in lines)  # no JSON dump
    assert "\x1b[" not in out  # not a terminal: no colours, no progress bar

    # The full log's path is printed first and last, and it holds everything kfp and the libraries said.
    [log] = local_run["logs"]
    assert str(log) in lines[0] and f"Full log: {log}" in out
    text = log.read_text(encoding="utf-8")
    tasks = len(re.findall(r" - INFO - Executing task ", text))
    assert tasks >= 12 and text.count("Got executor_input") == tasks  # every task's, in the log only
    # Every task process wrote the planted TensorFlow-style line to its stderr: each one is in the log.
    assert sum(line.strip() == PLANTED_NOISE for line in text.splitlines()) >= tasks
    assert "metadata=" in text
    assert len(text.splitlines()) > 5 * len(lines)
    assert "configuration  variant" in text and "Published bundle and evaluation:" in text  # the summary too


@pytest.mark.slow
def test_every_stage_line_names_its_configuration(local_run):
    # In the full log: every line a stage logged carries its stage, and the configuration's own.
    stage_lines = [parse_line(line) for line in local_run["logs"][0].read_text(encoding="utf-8").splitlines()
                   if re.match(r"\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ mushroom", line)]
    assert stage_lines and None not in stage_lines
    seen = {(line.stage, line.configuration) for line in stage_lines}
    assert {(stage, name) for stage in CONFIGURATION_STAGES for name in NAMES} <= seen
    assert {configuration for stage, configuration in seen if stage in CONFIGURATION_STAGES} == set(NAMES)
    assert {configuration for stage, configuration in seen if stage not in CONFIGURATION_STAGES} == {None}

    # On the console: every line of a configuration's stage names it.
    shown = [m.groups() for m in map(STAGE_LINE.match, local_run["out"].splitlines()) if m]
    per_configuration = [(stage, name) for stage, name, _ in shown if stage in CONFIGURATION_STAGES]
    assert len(per_configuration) > 40
    assert {name for _, name in per_configuration} == set(NAMES)


@pytest.mark.slow
def test_one_progress_line_per_epoch_and_trial(local_run):
    shown = [m.groups() for m in map(STAGE_LINE.match, local_run["out"].splitlines()) if m]
    for name, folder in local_run["iterations"].items():
        history = read_json(folder / "train-classifier" / "model" / "history.json")
        epochs = [text for stage, n, text in shown if (stage, n) == ("train", name) and text.startswith("epoch ")]
        assert [e.split(":")[0] for e in epochs] == ["epoch 1/2 (phase 1)", "epoch 2/2 (phase 2)"]
        assert len(epochs) == len(history["loss"])
        trials = sorted(text.split(":")[0] for stage, n, text in shown if (stage, n) == ("tune", name)
                        and text.startswith("trial ") and ", epoch " in text)
        # Round 1: both trials (two tasks at once); round 2: the better one with twice the epochs.
        first, second = ([t for t in trials if f"(round {r})" in t] for r in (1, 2))
        assert first == ["trial 1 (round 1), epoch 1/1", "trial 2 (round 1), epoch 1/1"] and len(trials) == 4
        assert {t.split(" (")[0] for t in second} in ({"trial 1"}, {"trial 2"})
        assert [t.split("), ")[1] for t in second] == ["epoch 1/2", "epoch 2/2"]
        chosen = read_json(folder / "select-trials-2" / "hyperparameters" / "hyperparameters.json")
        assert chosen == read_json(folder / "train-classifier" / "model" / "hyperparameters.json")


@pytest.mark.slow
def test_closing_table_names_every_configuration_variant_and_the_choice(local_run):
    lines = local_run["out"].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("configuration  variant"))
    header = lines[start].split()
    assert header[:4] == ["configuration", "variant", "size", "MB"] and header[-1] == "chosen"
    for column in ("latency", "top-1", "top-5", "dangerous", "coverage"):
        assert column in header
    rows = [line.split() for line in lines[start + 2:] if line.split() and line.split()[0] in NAMES]
    comparison = read_json(next(local_run["root"].rglob("compare-models/best_evaluation/comparison.json")))
    for name, folder in local_run["iterations"].items():
        bundle = read_bundle(folder / "evaluate-model" / "calibrated_bundle")
        evaluation = read_json(folder / "evaluate-model" / "evaluation" / "evaluation.json")
        mine = {row[1]: row for row in rows if row[0] == name}
        assert set(mine) == set(bundle.metadata["variants"])
        for variant, row in mine.items():
            figures = evaluation["variants"][f"tflite_{variant}"]
            assert row[2] == f"{figures['size_mb']:.2f}"
            assert f"{figures['top1']:.3f}" in row and f"{figures['top5']:.3f}" in row
    chosen = [row[:2] for row in rows if row[-1] == "CHOSEN"]
    assert chosen == [[comparison["best"], comparison["shipped_variant"]]]
    assert f"Chosen: {comparison['best']}, variant {comparison['shipped_variant']}" in local_run["out"]


@pytest.mark.slow
def test_kfp_metrics_hold_a_short_list_of_headline_figures(local_run):
    for folder in local_run["iterations"].values():
        output = read_json(folder / "evaluate-model" / "executor_output.json")
        [metrics] = output["artifacts"]["metrics"]["artifacts"]
        headline = metrics["metadata"]
        shipped = f"tflite_{read_bundle(folder / 'evaluate-model' / 'calibrated_bundle').shipped_variant}"
        evaluation = read_json(folder / "evaluate-model" / "evaluation" / "evaluation.json")
        assert 10 <= len(headline) <= 30  # the full set (hundreds) stays in evaluation.json
        assert headline[f"{shipped}_top1"] == evaluation["variants"][shipped]["top1"]
        assert headline[f"{shipped}_calibrated_policy_coverage"] == \
            evaluation["variants"][shipped]["calibrated"]["policy"]["coverage"]


def _failing_config(tmp_path: Path) -> Path:
    """A configuration that passes validation and fails in its first stage (a folder no species names)."""
    photos = tmp_path / "photos" / "Not a species"
    photos.mkdir(parents=True)
    config = yaml.safe_load(_tiny_config(tmp_path).read_text())
    config["dataset"] = {"source": "folder", "species": config["dataset"]["species"],
                         "folder": {"root": str(tmp_path / "photos")}}
    config["cluster"]["stages"] = {"acquire": {"retries": 0}}  # fail at once (the default retries twice)
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_failed_stage_shows_its_last_lines_and_the_log(tmp_path):
    code, out, err = _run_main([str(_failing_config(tmp_path)), "--output", str(tmp_path / "out")])
    assert code == 1
    [log] = (tmp_path / "out" / "logs").glob("run-*.log")
    assert "Last lines of acquire-dataset:" in err
    assert "match no catalog species" in err  # the stage's own error, from its last lines
    assert "executor_input" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "acquire-dataset" in errors[0]
    assert err.rstrip().endswith(f"Full log: {log}")
    assert "match no catalog species" in log.read_text(encoding="utf-8")


def test_verbose_shows_everything(tmp_path):
    log = tmp_path / "full.log"
    code, out, err = _run_main([str(_failing_config(tmp_path)), "--output", str(tmp_path / "out"),
                                "--verbose", "--log", str(log)])
    assert code == 1
    assert "Got executor_input" in out and "match no catalog species" in out
    assert f"Full log: {log}" in err and log.is_file()
