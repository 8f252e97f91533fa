"""kfp.local's cache as ``python -m pipelines.run`` uses it (docs/caching.md).

A second identical run is served from the cache; a new image tag, new code or a stage with
``caching: false`` runs again; a failed run resumes at the stage that failed; ``--no-cache`` runs
everything and records nothing.

The runs are real kfp.local runs of two of the project's own stages (acquire and split of a tiny
synthetic dataset), scheduled by ``pipelines.pipeline`` as the whole pipeline schedules them (the
image from ``MUSHROOM_IMAGE``, the stage's ``caching``), run by ``pipelines.run.run_pipeline``, the
function that runs the whole pipeline for ``python -m pipelines.run``. Whether a task ran is read
from kfp.local's own task dispatch, never from timing or log lines.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's parameter annotations as types.

import io
import shutil
from pathlib import Path

import pytest
from kfp import dsl, local

from components import acquire_dataset, split_dataset
from components.image import DEFAULT_IMAGE, project_images
from mushroom.cluster import ClusterConfig
from pipelines import run
from pipelines.pipeline import TUNE_TASKS, _schedule_common
from pipelines.runlog import RunConsole, format_run_log, parse_run_log

DATASET = {"source": "synthetic", "species": ["Boletus edulis", "Amanita muscaria"],
           "synthetic": {"photos_per_species": 6, "image_size": 32, "photos_per_observation": 2}}
SPLIT = {"train": 0.5, "val": 0.25, "test": 0.25}
REPOSITORY = DEFAULT_IMAGE.rsplit(":", 1)[0]
RAN, CACHED = {"acquire": "ran", "split": "ran"}, {"acquire": "cached", "split": "cached"}


def cluster_config(**stages) -> ClusterConfig:
    """The default scheduling, except that a failed acquire stops at once (no retries a minute apart)."""
    return ClusterConfig.model_validate({"stages": {"acquire": {"retries": 0}, **stages}})


def probe_pipeline(cluster: ClusterConfig):
    """acquire -> split, each scheduled as the project's pipeline schedules it."""
    images = project_images()

    @dsl.pipeline(name="cache-probe")
    def cache_probe(dataset_config: dict, split_config: dict, seed: int):
        acquire = acquire_dataset(dataset_config=dataset_config, seed=seed)
        _schedule_common(acquire, "acquire", cluster, images)
        split = split_dataset(dataset=acquire.outputs["dataset"], split_config=split_config, seed=seed)
        _schedule_common(split, "split", cluster, images)

    return cache_probe


class Probe:
    """Runs the probe pipeline into one output folder, as ``pipelines.run`` runs a configuration."""

    def __init__(self, out: Path):
        self.out = out
        self.cache = out / run.CACHE_FOLDER
        self.splits: Path | None = None  # the last run's split output folder

    def __call__(self, cache: bool = True, cluster: ClusterConfig | None = None, split: dict = SPLIT,
                 code_id: str = "python sha256:1") -> dict[str, str]:
        """Run once; return ``{stage: "ran" or "cached"}``."""
        served = []
        _, tasks = run.run_pipeline(
            probe_pipeline(cluster or cluster_config()), {"dataset_config": DATASET, "split_config": split, "seed": 7},
            self.out / "pipeline_root", local.SubprocessRunner(use_venv=False),
            cache_root=self.cache if cache else None, code_id=code_id, on_cached=lambda task: served.append(task.stage))
        assert all(t.succeeded for t in tasks)
        assert sorted(served) == sorted(t.stage for t in tasks if t.cached)  # the console hears of every one
        self.splits = Path(next(t for t in tasks if t.stage == "split").outputs["splits"].path)
        return {t.stage: "cached" if t.cached else "ran" for t in tasks}

    def entries(self) -> int:
        return len(list(self.cache.glob("*.json")))


@pytest.fixture
def probe(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSHROOM_IMAGE", f"{REPOSITORY}:0.1.0")
    monkeypatch.delenv("MUSHROOM_GPU_IMAGE", raising=False)
    return Probe(tmp_path / "out")


def test_an_identical_run_is_served_from_the_cache_and_a_new_image_tag_runs_again(probe, monkeypatch):
    assert probe() == RAN
    first_splits = probe.splits
    assert any(first_splits.iterdir())
    assert probe.entries() == 2  # one per finished task, outside the pipeline root

    # Same configuration, image and code: nothing runs; split's outputs are the first run's own
    # (acquire and split both have a metrics output, which kfp.local alone would never serve).
    assert probe() == CACHED
    assert probe.splits == first_splits

    monkeypatch.setenv("MUSHROOM_IMAGE", f"{REPOSITORY}:0.1.1")  # the image every stage names
    assert probe() == RAN
    assert probe.splits != first_splits
    assert probe.entries() == 4

    monkeypatch.setenv("MUSHROOM_IMAGE", f"{REPOSITORY}:0.1.0")  # back: the first run's entries still serve
    assert probe() == CACHED
    assert probe.splits == first_splits


def test_new_code_a_stage_with_caching_off_and_no_cache_run_again(probe):
    assert probe(code_id="python sha256:1") == RAN
    assert probe(code_id="python sha256:2") == RAN  # the package changed (or, with docker, the image id)
    assert probe.entries() == 4

    # cluster.stages.split.caching: false: split runs however often its inputs were seen, and
    # records nothing; acquire is still served.
    assert probe(cluster=cluster_config(split={"caching": False})) == {"acquire": "cached", "split": "ran"}
    assert probe.entries() == 4

    # --no-cache: every stage runs, and the cache is neither read nor written.
    assert probe(cache=False) == RAN
    assert probe.entries() == 4
    assert probe() == CACHED  # what was there before still serves


def test_a_failed_run_resumes_at_the_stage_that_failed(probe):
    with pytest.raises(RuntimeError, match="split-dataset"):
        probe(split={"train": 0.9, "val": 0.3, "test": 0.3})  # the split stage refuses shares summing to 1.5
    assert probe.entries() == 1  # acquire's; a failed task records nothing
    assert probe() == {"acquire": "cached", "split": "ran"}


def test_a_served_entry_whose_files_are_gone_runs_again(probe):
    assert probe() == RAN
    shutil.rmtree(probe.splits)  # someone deleted split's output folder
    assert probe() == {"acquire": "cached", "split": "ran"}


def test_the_code_id_follows_the_package_files(tmp_path):
    package = tmp_path / "mushroom"
    (package / "__pycache__").mkdir(parents=True)
    (package / "stages.py").write_text("A = 1\n")
    first = run.python_code_id(package)
    assert first.startswith("python sha256:") and len(first) == len("python sha256:") + 64
    (package / "__pycache__" / "stages.cpython-311.pyc").write_bytes(b"\0")
    assert run.python_code_id(package) == first  # bytecode is not code
    (package / "stages.py").write_text("A = 2\n")
    assert run.python_code_id(package) != first
    assert run.python_code_id() != first  # the installed package


def test_the_code_id_is_in_every_task_environment():
    pipeline = probe_pipeline(cluster_config())
    run.set_code_id(pipeline.pipeline_spec, "image sha256:abc")
    run.set_code_id(pipeline.pipeline_spec, "image sha256:def")  # replaced, not added
    executors = pipeline.pipeline_spec.deployment_spec["executors"]
    assert len(executors) == 2
    for name in executors:
        env = [dict(e) for e in executors[name]["container"]["env"]]
        assert [e for e in env if e["name"] == run.CODE_ID_ENV] == [{"name": run.CODE_ID_ENV,
                                                                      "value": "image sha256:def"}]
        assert len(env) > 1  # the pipeline's own variables stay
        assert "MUSHROOM_IMAGE_REF" in {e["name"] for e in env}  # the Docker runner replaces it


def test_a_subprocess_stage_claims_no_image():
    """The compiled pipeline tells each task its image; a stage run as a subprocess of this Python ran in none."""
    from mushroom.image_identity import IMAGE_ENV

    pipeline = probe_pipeline(cluster_config())
    run.set_code_id(pipeline.pipeline_spec, "python sha256:1")
    for executor in pipeline.pipeline_spec.deployment_spec["executors"].values():
        names = {dict(e)["name"] for e in executor["container"]["env"]}
        assert run.CODE_ID_ENV in names and not names & set(IMAGE_ENV.values())


# --------------------------------------------------------------------------- what a person sees


def test_a_served_stage_gets_one_console_line_in_the_stages_format(tmp_path):
    out = io.StringIO()
    with RunConsole(tmp_path / "run.log", console=out, errors=io.StringIO(), tags=["evaluate tiny-a"]) as console:
        print("12:00:00.000 - INFO - Task train-trial cache hit (key=0123456789ab); skipping execution.")  # log only
        console.stage_line("tune tiny-a", "from the cache: train-trial, finished in an earlier run")
    [line] = out.getvalue().splitlines()
    assert line[8:] == f"  {'tune tiny-a':<15}  from the cache: train-trial, finished in an earlier run"
    assert line[2] == line[5] == ":"  # HH:MM:SS, as the stages' lines begin
    text = (tmp_path / "run.log").read_text()
    assert "cache hit" in text and line in text


def test_the_run_log_summary_counts_the_served_tasks():
    log = parse_run_log([
        "12:00:00.000 - INFO - Task acquire-dataset cache hit (key=0123456789ab); skipping execution.",
        "12:00:00.001 - INFO - Executing task 'publish-bundle'",
        "12:00:02.000 - INFO - Task 'publish-bundle' finished with status SUCCESS",
    ])
    assert log.cached == ["acquire-dataset"] and log.started == 1
    assert "1 from the cache, not run: acquire-dataset" in format_run_log(log)


def test_stage_tags_name_the_configuration_inside_the_loop():
    names = ["tiny-a", "tiny-b"]
    for tune_task in TUNE_TASKS:  # the tune stage's tasks are shown as the tune stage
        task = run.TaskRun(task="train-trials", stage=tune_task, iteration=1, cached=True, succeeded=True)
        assert run.stage_tag(task, names) == "tune tiny-b"
    task = run.TaskRun(task="evaluate-model", stage="evaluate", iteration=0, cached=True, succeeded=True)
    assert run.stage_tag(task, names) == "evaluate tiny-a"
    assert run.stage_tag(run.TaskRun(task="acquire-dataset", stage="acquire", iteration=None, cached=True,
                                     succeeded=True), names) == "acquire"


@pytest.mark.parametrize(("argv", "cache"), [([], True), (["--no-cache"], False)])
def test_run_no_cache_turns_the_cache_off_for_that_run(argv, cache, tmp_path, monkeypatch):
    seen = {}

    def fake_run_local(config, output, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(run, "run_local", fake_run_local)
    config = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "demo.yaml"
    assert run.main([str(config), "--output", str(tmp_path / "out"), *argv]) == 1
    assert seen["cache"] is cache
