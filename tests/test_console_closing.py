"""The lines a local run ends with, and ``make identify-demo``.

They say which configuration each bundle path belongs to, what was published, and give a
``mushroom identify`` command for the published bundle and one test photo that works as typed
from the checkout root. The run folders here are laid out as kfp.local lays them out
(``PIPELINE_ROOT/<run>/acquire-dataset/dataset``, ``split-dataset/splits``,
``for-loop-1-iteration-N/evaluate-model/calibrated_bundle``).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from mushroom.cli import build_parser
from mushroom.console import closing_locations, configuration_of_bundle, demo_photo, mushroom_command, run_folder_of
from mushroom.manifest import read_splits

NAMES = ("mobilenetv3-demo", "efficientnet-lite0-demo")


@pytest.fixture
def output(small_dataset, tmp_path) -> Path:
    """``outputs/demo`` after a run: its pipeline root, two calibrated bundles and a published run."""
    dataset, splits = small_dataset
    out = tmp_path / "outputs" / "demo"
    run = out / "pipeline_root" / "quantized-mushroom-2026-12-03-17-37-24-666544"
    shutil.copytree(dataset, run / "acquire-dataset" / "dataset")
    shutil.copytree(splits, run / "split-dataset" / "splits")
    for i, name in enumerate(NAMES):
        bundle = run / f"for-loop-1-iteration-{i}" / "evaluate-model" / "calibrated_bundle"
        bundle.mkdir(parents=True)
        (bundle / "metadata.json").write_text(json.dumps({"model_name": name}))
    published = out / "published"
    folder = published / "quantized-mushroom-2026-12-03-17-37-24-666544-94711099"
    (folder / "bundle").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run": folder.name, "run_name": run.name}))
    (published / "latest").write_text(json.dumps({"schema_version": 2, "run": folder.name, "run_name": run.name,
                                                  "created": "2026-12-03T17:37:24.664310Z"}))
    return out


def _bundles(output: Path) -> list[tuple[str, str, str]]:
    paths = sorted(output.glob("pipeline_root/*/for-loop-1-iteration-*/evaluate-model/calibrated_bundle"))
    return [(configuration_of_bundle(p), str(p), variant) for p, variant in zip(paths, ("dynamic_int8", "int8"),
                                                                                 strict=True)]


def test_closing_lines_name_each_bundles_configuration_and_give_a_working_identify_command(output, tmp_path):
    bundles = _bundles(output)
    [published] = [p for p in (output / "published").iterdir() if p.is_dir()]
    evaluations = [(name, f"{path}/../evaluation/evaluation.json") for name, path, _ in bundles]
    lines = closing_locations(evaluations, bundles, str(published), "mobilenetv3-demo", "dynamic_int8", cwd=tmp_path)
    text = "\n".join(lines)
    for name, path, variant in bundles:
        assert f"  {name}: bundle {path} (ships {variant})" in lines
        assert f"  {name}: evaluation {path}/../evaluation/evaluation.json" in lines
    # images/container-demo.sh reads the published folder from the end of this line.
    assert f"Published bundle and evaluation: {published}" in lines
    assert "the mobilenetv3-demo bundle, variant dynamic_int8: the compare stage's choice" in text
    assert f"Report: {published / 'evaluation' / 'report.html'}" in lines
    assert "synthetic drawing" in text and "drawings, not mushrooms" in text

    # The command: relative to where the person stands, a photo of the test split, parsed by identify.
    [command] = [line.strip() for line in lines if " identify " in line]
    argv = shlex.split(command)
    assert argv[0] == mushroom_command(tmp_path)
    args = build_parser().parse_args(argv[1:])
    assert args.command == "identify" and args.bundle == str(published.relative_to(tmp_path))
    [photo] = args.photos
    assert not Path(photo).is_absolute() and (tmp_path / photo).is_file()
    run = run_folder_of(bundles[0][1])
    test_files = {r.file for r in read_splits(run / "split-dataset" / "splits") if r.split == "test"}
    assert str(Path(photo).relative_to(run.relative_to(tmp_path) / "acquire-dataset" / "dataset")) in test_files


def test_no_photo_line_without_a_local_dataset_and_no_report_for_gcs(tmp_path):
    bundle = tmp_path / "elsewhere" / "calibrated_bundle"
    bundle.mkdir(parents=True)
    lines = closing_locations([("a", "e.json")], [("a", str(bundle), "int8")], "gs://bucket/published/run", None,
                              None, cwd=tmp_path)
    assert lines[-1] == "Published bundle and evaluation: gs://bucket/published/run"
    assert run_folder_of(bundle) is None and demo_photo(tmp_path) is None


def test_mushroom_command_is_the_one_beside_this_python(tmp_path):
    script = Path(sys.executable).with_name("mushroom")
    if not script.is_file():
        assert mushroom_command(tmp_path) == "mushroom"
    else:
        assert Path(mushroom_command(tmp_path)) == script.resolve()  # outside the folder: absolute
        assert mushroom_command(script.parents[2]) == str(script.resolve().relative_to(script.parents[2].resolve()))


def test_identify_demo_runs_identify_on_a_test_photo_with_the_published_destination(output, monkeypatch, capsys):
    from pipelines import identify_demo

    calls = []
    monkeypatch.setattr("mushroom.cli.main", lambda argv: calls.append(argv) or 0)
    assert identify_demo.main([str(output)]) == 0
    [argv] = calls
    assert argv[0] == "identify" and argv[2:] == ["--bundle", str(output / "published")]
    photo = Path(argv[1])
    assert photo.is_file() and "acquire-dataset/dataset/images" in str(photo)
    out = capsys.readouterr().out
    assert "$ " in out and " identify " in out and "synthetic drawing of" in out
    assert identify_demo.main([str(output.parent / "nothing")]) == 2
    assert "run `make demo` first" in capsys.readouterr().err
