"""The pieces of ``make container-demo`` that need no Docker: the runner options, the mounts,
the image pinning, the run-log summary, the Dockerfiles' base-image argument, the scripts, and
the image provenance the quantize stage records. The container run itself (minutes, a Docker
daemon) is ``make container-demo``, outside the test suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines import containers, run
from pipelines.runlog import format_run_log, parse_run_log

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
SCRIPTS = [IMAGES / "build-base-image.sh", IMAGES / "container-demo.sh"]


# --------------------------------------------------------------------------- run.py options


@pytest.mark.parametrize("argv", [["cfg.yaml", "--image", "x:1"], ["cfg.yaml", "--runner", "kubernetes"]])
def test_run_refuses_bad_runner_options(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run.main(argv)
    assert exc.value.code == 2
    assert "--image needs --runner docker" in capsys.readouterr().err or "kubernetes" in argv


def test_run_local_refuses_an_unknown_runner_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="runner 'podman'"):
        run.run_local(ROOT / "pipelines" / "configs" / "demo.yaml", tmp_path, runner="podman")
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- mounts and folders


def test_host_mounts_add_only_folders_outside_the_pipeline_root(tmp_path):
    root = tmp_path / "out" / "pipeline_root"
    published = tmp_path / "out" / "published"
    assert containers.host_mounts(root, [str(published)]) == [str(published)]
    assert containers.host_mounts(root, [str(root / "published")]) == []  # DockerRunner mounts the root
    assert containers.host_mounts(root, [str(root)]) == []
    assert containers.host_mounts(root, ["gs://bucket/published"]) == []
    # A folder and one inside it: the outer one covers both.
    assert containers.host_mounts(root, [str(published / "a"), str(published)]) == [str(published)]
    assert containers.host_mounts(root, [str(published), str(published / "a")]) == [str(published)]


def test_parse_user():
    assert containers.parse_user("10001:10001") == (10001, 10001)
    assert containers.parse_user("10001") == (10001, 10001)
    assert containers.parse_user("0") == (0, 0)
    with pytest.raises(ValueError, match="not numeric"):
        containers.parse_user("mushroom")


def test_prepare_host_folders_lets_the_image_user_write(tmp_path):
    folders = [str(tmp_path / "pipeline_root"), str(tmp_path / "published")]
    how = containers.prepare_host_folders(folders, 10001, 10001)
    for folder in folders:
        st = Path(folder).stat()
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (10001, 10001), how
        else:
            assert st.st_mode & 0o777 == 0o777, how


def test_task_owners_groups_files_by_task_folder(tmp_path):
    run_dir = tmp_path / "quantized-mushroom-2026-01-01-00-00-00-000000"
    for rel in ("acquire-dataset/dataset/a.jpg", "acquire-dataset/dataset/b.jpg",
                "for-loop-1-iteration-0/select-trials/hyperparameters/h.json",
                "for-loop-1-iteration-0/for-loop-2-iteration-1/train-trial/result/result.json",
                "publish-bundle/executor_output.json"):
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_text("x")
    old = tmp_path / "older-run" / "acquire-dataset" / "old.jpg"
    old.parent.mkdir(parents=True)
    old.write_text("x")
    os.utime(old, (1, 1))
    me = os.geteuid()
    tasks = containers.task_owners(tmp_path, since=1000)
    assert tasks == {"acquire-dataset": {me: 2}, "for-loop-1-iteration-0/select-trials": {me: 1},
                     "for-loop-1-iteration-0/for-loop-2-iteration-1/train-trial": {me: 1}, "publish-bundle": {me: 1}}
    assert len(containers.check_task_owners(tasks, me)) == 4
    with pytest.raises(RuntimeError, match="another user"):
        containers.check_task_owners(tasks, me + 1)
    with pytest.raises(RuntimeError, match="no task"):
        containers.check_task_owners({}, me)


def test_image_identity_environment_names_what_the_stages_read():
    from mushroom.image_identity import IMAGE_ENV

    identity = containers.ImageIdentity("reg/img:1", "sha256:" + "a" * 64, None, "10001:10001", 1)
    assert identity.environment() == {IMAGE_ENV["reference"]: "reg/img:1", IMAGE_ENV["id"]: "sha256:" + "a" * 64}
    pushed = containers.ImageIdentity("reg/img:1", "sha256:1", "sha256:2", "", 1)
    assert pushed.environment()[IMAGE_ENV["digest"]] == "sha256:2"


# --------------------------------------------------------------------------- image pinning


def test_pin_executor_images_points_every_stage_at_one_image():
    from mushroom.config import load_config
    from pipelines.pipeline import pipeline_for

    pipeline = pipeline_for(load_config(ROOT / "pipelines" / "configs" / "demo.yaml"))
    spec = pipeline.pipeline_spec
    before = containers.executor_images(spec)
    assert {"exec-acquire-dataset", "exec-quantize-to-bundle", "exec-publish-bundle"} <= set(before)
    assert containers.pin_executor_images(spec, "local/mushroom:test") == before
    assert set(containers.executor_images(pipeline.pipeline_spec).values()) == {"local/mushroom:test"}
    assert containers.single_image(spec) == "local/mushroom:test"


def test_single_image_asks_for_a_choice_between_several():
    from google.protobuf import struct_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = pipeline_spec_pb2.PipelineSpec()
    spec.deployment_spec.update({"executors": {"exec-a": {"container": {"image": "img:1"}},
                                               "exec-b": {"container": {"image": "img:1-gpu"}},
                                               "exec-i": {"importer": {}}}})
    assert isinstance(spec.deployment_spec, struct_pb2.Struct)
    with pytest.raises(ValueError, match="--image"):
        containers.single_image(spec)


# --------------------------------------------------------------------------- run log

LOG = """\
23:59:58.000 - INFO - Running pipeline: \x1b[95m'quantized-mushroom'\x1b[0m
23:59:58.100 - INFO - Executing task \x1b[96m'acquire-dataset'\x1b[0m
    Found image 'reg/img:1'
    2026-01-01 00:00:01,000 INFO mushroom: acquire: finished in 2.5s
00:00:08.100 - INFO - Task \x1b[96m'acquire-dataset'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
00:00:08.200 - INFO - Executing task \x1b[96m'tune-model'\x1b[0m
    Found image 'reg/img:1'
00:00:09.200 - INFO - Executing task \x1b[96m'tune-model'\x1b[0m
    Found image 'reg/img:1'
            [KFP Executor 2026-01-01 00:00:20,000 INFO]: tune mobilenetv3-demo: finished in 10.0s
00:00:28.200 - INFO - Task \x1b[96m'tune-model'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
00:00:39.200 - INFO - Task \x1b[96m'tune-model'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
"""


def test_parse_run_log_times_each_task_across_midnight():
    log = parse_run_log(LOG.splitlines())
    assert [(name, round(seconds, 1), status) for name, seconds, status in log.tasks] == [
        ("acquire-dataset", 10.0, "SUCCESS"), ("tune-model", 20.0, "SUCCESS"), ("tune-model", 30.0, "SUCCESS")]
    assert log.docker_images == ["reg/img:1"] * 3
    assert log.stages == [("acquire", 2.5), ("tune mobilenetv3-demo", 10.0)]
    text = format_run_log(log)
    assert "tune-model" in text and "20s + 30s" in text and "3 task containers" in text
    assert log.started == 3


def test_parse_run_log_lists_a_task_whose_end_is_missing():
    lines = [line for line in LOG.splitlines() if not line.startswith("00:00:39.200")]
    log = parse_run_log(lines)
    assert log.started == 3 and ("tune-model", None, "no end line") in log.tasks
    assert "20s + ?" in format_run_log(log)


def test_runlog_cli_requires_a_container_for_every_task(tmp_path, capsys):
    from pipelines.runlog import main

    path = tmp_path / "run.log"
    path.write_text(LOG)
    assert main([str(path), "--require-docker"]) == 0
    path.write_text(LOG.replace("    Found image 'reg/img:1'\n", "", 1))
    assert main([str(path), "--require-docker"]) == 1
    assert "3 tasks started but DockerRunner started 2 containers" in capsys.readouterr().err
    path.write_text("nothing ran\n")
    assert main([str(path)]) == 1


# --------------------------------------------------------------------------- Dockerfiles and scripts


@pytest.mark.parametrize("dockerfile", [IMAGES / "Dockerfile", IMAGES / "Dockerfile.gpu"], ids=lambda p: p.name)
def test_dockerfile_base_image_is_a_build_argument(dockerfile):
    text = dockerfile.read_text(encoding="utf-8")
    assert "# syntax=" not in text, "a syntax line makes BuildKit pull a frontend image"
    first_from = text.index("\nFROM ")
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", text[:first_from], re.M)
    assert default and default.group(1) == "python:3.11.14-slim-bookworm"
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(image == "${BASE_IMAGE}" for image in froms), froms
    assert 'org.opencontainers.image.base.name="${BASE_IMAGE}"' in text
    assert "COPY images/wheelhouse/ /wheelhouse/" in text and "PIP_FIND_LINKS=/wheelhouse" in text


def test_wheelhouse_is_in_the_build_context_but_not_in_git():
    from tests.helpers import dockerignore_excludes, dockerignore_patterns

    patterns = dockerignore_patterns()
    assert not dockerignore_excludes(patterns, "images/wheelhouse/tensorflow_cpu-2.21.0-cp311-cp311.whl")
    assert dockerignore_excludes(patterns, "images/build-base-image.sh")
    proc = subprocess.run(["git", "check-ignore", "-q", "images/wheelhouse/x-1.0-py3-none-any.whl"], cwd=ROOT)
    if proc.returncode == 128:
        pytest.skip("not a git checkout")
    assert proc.returncode == 0, "wheels in images/wheelhouse/ must stay out of git"
    assert (IMAGES / "wheelhouse" / "README.md").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script):
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_base_image_script_names_the_packages_debootstrap_cannot_resolve():
    text = (IMAGES / "build-base-image.sh").read_text(encoding="utf-8")
    packages = re.search(r"^packages=(\S+)$", text, re.M).group(1).split(",")
    # python3.11-venv depends on the virtual python3.11-distutils: name its provider.
    assert {"python3.11", "python3.11-venv", "python3-distutils", "ca-certificates"} <= set(packages)
    assert "/usr/local/bin/python" in text  # the Dockerfiles run `python`


# --------------------------------------------------------------------------- provenance


@pytest.mark.slow
def test_quantize_records_the_image_it_ran_in(trained_run, tmp_path, monkeypatch):
    from mushroom import stages, variants
    from mushroom.bundle import read_bundle
    from mushroom.image_identity import IMAGE_ENV
    from tests.helpers import TINY_MODEL

    assert "image" not in read_bundle(trained_run["bundle"]).metadata["provenance"]  # no runner said
    for key, var in IMAGE_ENV.items():
        monkeypatch.setenv(var, {"reference": "reg/img:1", "id": "sha256:" + "b" * 64}.get(key, ""))
    config = {**TINY_MODEL, "quantize": {"variants": [variants.REFERENCE, variants.FULL_INTEGER],
                                         "representative_samples": 16}}
    stages.quantize(trained_run["dataset"], trained_run["splits"], trained_run["model"], config, 3, tmp_path / "b")
    assert read_bundle(tmp_path / "b").metadata["provenance"]["image"] == {
        "reference": "reg/img:1", "id": "sha256:" + "b" * 64}
