"""What a person reads: the run console's routing, `make help`, and the documented `folder` example.

The console of a real pipeline run is checked in test_pipeline_local.py; these feed
:class:`pipelines.runlog.RunConsole` the lines kfp.local and the stages write.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mushroom.console import parse_line, progress_of
from pipelines.runlog import RunConsole, parse_run_log

ROOT = Path(__file__).resolve().parents[1]


def stage(tag: str, message: str, logger: str = "mushroom", level: str = "INFO") -> str:
    """A line as a stage logs it (mushroom.console.FORMAT), indented as kfp.local streams it."""
    return f"    2026-11-28 04:31:36,203 {level} {logger}: [{tag}] {message}"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_console(lines: list[str], tmp_path: Path, **kwargs) -> tuple[RunConsole, str, str]:
    out, err = kwargs.pop("console", io.StringIO()), io.StringIO()
    with RunConsole(tmp_path / "run.log", console=out, errors=err, **kwargs) as console:
        for line in lines:
            print(line)
    return console, out.getvalue(), err.getvalue()


def test_executor_input_and_library_noise_go_to_the_log_only(tmp_path):
    lines = [
        "12:00:00.000 - INFO - Executing task \x1b[96m'train-classifier'\x1b[0m",
        "    [KFP Executor 2026-11-28 04:31:00,656 INFO]: Got executor_input:",
        "    {",
        '        "inputs": {"parameterValues": {"note": "a } and a { in a string", "q": "\\"}"}},',
        '        "outputs": [',
        "            {}",
        "        ]",
        "    }",
        "    I0000 00:00:1795840261.942340   29610 port.cc:153] oneDNN custom operations are on.",
        "    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "    INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
        stage("train tiny-a", "train tiny-a: started"),
        stage("train tiny-a", "upload: wrote x", logger="mushroom.storage"),
        stage("train tiny-a", "too few photos", logger="mushroom.evaluate", level="WARNING"),
        "12:00:09.000 - INFO - Task \x1b[96m'train-classifier'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m",
    ]
    console, out, _ = run_console(lines, tmp_path, tags=["train tiny-a"])
    assert out.splitlines() == ["04:31:36  train tiny-a  started", "04:31:36  train tiny-a  warning: too few photos"]
    assert (tmp_path / "run.log").read_text().splitlines() == lines  # everything, unchanged
    assert console.failures() == []


def test_lines_of_parallel_tasks_never_mix(tmp_path):
    # kfp.local prints a line's indentation and the line in two writes; two tasks write at once.
    out = io.StringIO()
    barrier = threading.Barrier(2)

    def task(name: str) -> None:
        barrier.wait()
        for i in range(200):
            sys.stdout.write("    ")
            sys.stdout.write(stage(f"train {name}", f"epoch {i + 1}/200: loss 1.0").strip() + "\n")

    with RunConsole(tmp_path / "run.log", console=out, errors=io.StringIO()):
        threads = [threading.Thread(target=task, args=(n,)) for n in ("tiny-a", "tiny-b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    shown = out.getvalue().splitlines()
    assert len(shown) == 400
    for name in ("tiny-a", "tiny-b"):
        mine = [line for line in shown if f"train {name}" in line]
        assert [line.split("epoch ")[1].split(":")[0] for line in mine] == [f"{i}/200" for i in range(1, 201)]


def test_progress_is_a_bar_on_a_terminal_and_a_line_per_epoch_otherwise(tmp_path):
    lines = [stage("train tiny-a", f"epoch {i}/4 (phase 1): loss 1.000 (3s)", logger="mushroom.training")
             for i in (1, 2)]
    lines += [stage("tune tiny-b", "trial 2 (round 1), epoch 1/3: loss 1.000 (3s)", logger="mushroom.training"),
              stage("train tiny-a", "train tiny-a: finished in 9.0s")]
    _, plain, _ = run_console(lines, tmp_path)
    assert len(plain.splitlines()) == 4 and "\r" not in plain and "\x1b" not in plain

    _, drawn, _ = run_console(lines, tmp_path, console=Terminal())
    assert "train tiny-a [##########----------] 2/4" in drawn  # 2 of 4 epochs
    assert "tune tiny-b [#######-------------] 1/3" in drawn  # the trial's epoch 1 of 3
    assert [line for line in drawn.replace("\r\x1b[K", "\n").splitlines() if line.startswith("04:")] == [
        "04:31:36  train tiny-a  finished in 9.0s"]  # epoch lines only as the bar
    assert drawn.endswith("\r\x1b[K")  # the bar is cleared at the end


def test_a_failed_task_keeps_its_last_lines(tmp_path):
    lines = [
        "12:00:00.000 - INFO - Executing task \x1b[96m'evaluate-model'\x1b[0m",
        stage("evaluate tiny-b", "evaluate: started"),
        "    Traceback (most recent call last):",
        '      File "x.py", line 1, in <module>',
        "    ValueError: boom",
        "12:00:01.000 - ERROR - Task \x1b[96m'evaluate-model'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m",
        "12:00:01.100 - INFO - Skipping task compare-models: upstream task(s) ['for-loop-1'] failed.",
    ]
    console, _, _ = run_console(lines, tmp_path)
    [(task, configuration, tail)] = console.failures()
    assert (task, configuration) == ("evaluate-model", "tiny-b")
    assert tail[-3:] == ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "ValueError: boom"]


def test_stage_lines_read_back():
    line = parse_line(stage("tune mobilenetv3-demo", "trial 3 (round 2), epoch 4/5: loss 1.000", "mushroom.training"))
    assert (line.stage, line.configuration, line.logger) == ("tune", "mobilenetv3-demo", "mushroom.training")
    assert (progress_of(line).done, progress_of(line).total) == (4, 5)
    assert parse_line(stage("acquire", "acquire: started")).configuration is None
    assert parse_line("[KFP Executor 2026-11-28 04:31:00,656 INFO]: acquire: started") is None
    # pipelines.runlog still times the stages from such a log.
    log = parse_run_log([stage("evaluate tiny-a", "evaluate: finished in 2.5s"),
                         stage("train tiny-a", "train tiny-a: finished in 9.0s")])
    assert log.stages == [("evaluate tiny-a", 2.5), ("train tiny-a", 9.0)]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_help_is_plain_when_not_on_a_terminal():
    result = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    assert "\x1b" not in result.stdout
    assert "  demo            Run the demo pipeline" in result.stdout


def test_documented_folder_example_builds_its_dataset(tmp_path, monkeypatch, capsys):
    """docs/sources.md "Your own photos": stand-in photos, then `mushroom dataset examples/folder.yaml ...`."""
    from mushroom.cli import main
    from mushroom.manifest import read_manifest

    monkeypatch.chdir(tmp_path)  # a checkout root: the example's photo folder is relative to it
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from make_photo_folder import main as make_photos
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert make_photos(["outputs/folder-example/photos", "--photos-per-species", "12"]) == 0
    assert main(["dataset", str(ROOT / "examples" / "folder.yaml"), "outputs/folder-example/dataset"]) == 0
    assert "dataset: 48 photos of 4 species" in capsys.readouterr().out
    records = read_manifest(tmp_path / "outputs" / "folder-example" / "dataset")
    assert len(records) == 48 and len({r.taxon_id for r in records}) == 4
    assert len({r.observation_id for r in records}) == 16  # 3 photos an observation, kept together
