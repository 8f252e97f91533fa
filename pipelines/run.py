"""Run a configuration locally with ``kfp.local``: every stage as a subprocess of this Python
(``--runner subprocess``, the default), or in its container (``--runner docker``, kfp's
DockerRunner; needs a Docker daemon and the ``container`` extra).

    python -m pipelines.run pipelines/configs/demo.yaml [--output outputs/demo] [--verbose] [--no-cache]
    python -m pipelines.run pipelines/configs/demo.yaml --runner docker --image IMAGE:TAG

The console shows what the stages log, each line naming its stage and model configuration,
one line per epoch (a progress bar on a terminal), and a closing table of every configuration
and variant; everything else (kfp's executor input and task outputs, TensorFlow's and other
libraries' logs) goes only to the full log, OUTPUT/logs/run-TIME.log unless --log says
otherwise, whose path is printed first and last. When a stage fails: its last lines and the
log's path. --verbose shows every line as it comes.

A stage whose inputs, image and code are those of a stage that finished before in the same
output folder is not run again: kfp.local's cache (OUTPUT/cache) serves that run's outputs, and
the console says so. A failed run, run again, resumes at the stage that failed. --no-cache runs
every stage; ``cluster.stages.<stage>.caching: false`` always runs that one (docs/caching.md).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mushroom.config import ConfigError, load_config
from pipelines import containers
from pipelines.runlog import RunConsole

RUNNERS = ("subprocess", "docker")
CACHE_FOLDER = "cache"  # OUTPUT/cache: kfp.local's cache entries, one JSON file per finished task
# Set on every task of a local run: what code the stage runs, so that kfp.local's cache key covers it.
CODE_ID_ENV = "MUSHROOM_CODE_ID"
PYTHON_CODE = "python "  # how python_code_id's ids begin: stages run as subprocesses of this Python, in no image
# Artifacts whose content is their metadata: kfp's executor writes no file at their URI.
METADATA_ONLY_ARTIFACTS = ("system.Metrics", "system.ClassificationMetrics", "system.SlicedClassificationMetrics")


@dataclass
class TaskRun:
    """One container task of a local run, run or served from kfp.local's cache."""

    task: str  # kfp's task name, e.g. "train-classifier"
    stage: str  # its display name: the stage ("train"), or one of the tune stage's tasks (pipeline.TUNE_TASKS)
    iteration: int | None  # the per-model loop's iteration, i.e. the model configuration's index; None outside
    cached: bool  # True: kfp.local's cache served an earlier run's outputs, the task did not run
    succeeded: bool
    outputs: dict[str, Any] = field(default_factory=dict)  # output name -> artifact(s) or parameter value


def record_start_time(pipeline_spec) -> str:
    """Write the current UTC time wherever ``pipeline_spec`` asks for the run's creation time (in place).

    The publish task orders runs by ``dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER``, which KFP
    and Vertex resolve but kfp.local (2.17) fails on; a local run records its start time
    there instead, right before it runs.

    Args:
        pipeline_spec: The ``PipelineSpec`` of the pipeline about to run locally.

    Returns:
        The time written (ISO 8601, UTC).
    """
    from datetime import UTC, datetime

    from kfp import dsl

    now = datetime.now(UTC).isoformat()
    dags = [pipeline_spec.root.dag, *(c.dag for c in pipeline_spec.components.values() if c.HasField("dag"))]
    for dag in dags:
        for task in dag.tasks.values():
            for parameter in task.inputs.parameters.values():
                if parameter.runtime_value.constant.string_value == dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER:
                    parameter.runtime_value.constant.string_value = now
    return now


def python_code_id(package_dir: str | Path | None = None) -> str:
    """What a stage run as a subprocess of this Python runs: ``python sha256:HEX`` over the
    ``mushroom`` package's files (names and contents) and this environment's Python and
    distribution versions.

    Args:
        package_dir: The package folder (default: the installed ``mushroom``'s).
    """
    import hashlib
    import importlib.metadata
    import platform

    import mushroom

    root = Path(package_dir or Path(mushroom.__file__).parent)
    digest = hashlib.sha256(f"python {platform.python_version()}\0".encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for name in sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()):
        digest.update(name.encode() + b"\0")
    return f"{PYTHON_CODE}sha256:{digest.hexdigest()}"


def set_code_id(pipeline_spec, code_id: str) -> None:
    """Set :data:`CODE_ID_ENV` to ``code_id`` on every container executor of ``pipeline_spec`` (in place).

    kfp.local's cache key covers each task's image reference, command, arguments, inputs and the
    environment its executor sets, but not the code a subprocess stage imports from this Python,
    nor which image a tag stands for today. With the variable set to the package's digest or the
    image's id, a changed package or a rebuilt image makes every stage a cache miss.

    A subprocess stage runs in no image: the image variables the compiled pipeline sets
    (:mod:`mushroom.image_identity`) are dropped, so its outputs do not claim one; the Docker
    runner sets them to the local image's (:func:`pipelines.containers.docker_runner`).
    """
    from google.protobuf import json_format

    from mushroom.image_identity import IMAGE_ENV

    dropped = {CODE_ID_ENV} | (set(IMAGE_ENV.values()) if code_id.startswith(PYTHON_CODE) else set())
    spec = json_format.MessageToDict(pipeline_spec.deployment_spec)
    for executor in spec["executors"].values():
        if "container" in executor:
            env = [e for e in executor["container"].get("env", []) if e.get("name") not in dropped]
            executor["container"]["env"] = [*env, {"name": CODE_ID_ENV, "value": code_id}]
    pipeline_spec.deployment_spec.Clear()
    pipeline_spec.deployment_spec.update(spec)


def run_pipeline(pipeline, arguments: dict[str, Any], pipeline_root: str | Path, runner,
                 cache_root: str | Path | None = None, code_id: str | None = None,
                 on_cached: Callable[[TaskRun], None] | None = None) -> tuple[Any, list[TaskRun]]:
    """Run ``pipeline`` with kfp.local; return its task and every container task it ran or took from the cache.

    Args:
        pipeline: A ``@dsl.pipeline`` function (its ``pipeline_spec`` is changed in place: the
            start time, ``code_id``).
        arguments: Its parameters.
        pipeline_root: Where the artifacts go.
        runner: ``kfp.local.SubprocessRunner`` or ``DockerRunner``.
        cache_root: kfp.local's cache folder; None: no cache, every task runs and none is recorded.
            Tasks with caching off (``cluster.stages.<stage>.caching: false``) always run.
        code_id: What code the stages run (:func:`python_code_id`, or the image's id), set as
            :data:`CODE_ID_ENV` on every task so that it is part of each cache key.
        on_cached: Called with each task the cache served, as it is served.
    """
    from kfp import local

    local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=True,
               enable_caching=cache_root is not None, cache_root=None if cache_root is None else str(cache_root))
    if code_id:
        set_code_id(pipeline.pipeline_spec, code_id)
    record_start_time(pipeline.pipeline_spec)  # kfp.local cannot resolve the create-time placeholder
    with _kfp_log_lines_kept(), _metrics_artifacts_cacheable(), _tasks_recorded(on_cached) as tasks:
        task = pipeline(**arguments)
    return task, tasks


@contextmanager
def _metrics_artifacts_cacheable():
    """Let kfp.local (2.17) serve cache entries that hold metrics artifacts.

    kfp.local treats an entry that names a local artifact file that is not there as a miss, so
    that it never serves outputs someone deleted; but a metrics artifact
    (:data:`METADATA_ONLY_ARTIFACTS`) is its metadata and never has a file, so every stage with a
    ``metrics`` output (all but compare and publish) would run again every time. Such an artifact
    is served without its file; every other missing file still makes a miss.
    """
    from kfp.dsl import executor
    from kfp.local import cache

    deserialize = cache.LocalCache.__dict__["_deserialize_artifact"]

    def deserialize_metrics_without_file(data: dict):
        try:
            return deserialize.__func__(data)
        except cache._MissingArtifactError:
            if data.get("schema_title") not in METADATA_ONLY_ARTIFACTS:
                raise
            return executor.create_artifact_instance({
                "name": data.get("name", ""), "uri": data["uri"], "metadata": data.get("metadata") or {},
                "type": {"schemaTitle": data["schema_title"]}})

    cache.LocalCache._deserialize_artifact = staticmethod(deserialize_metrics_without_file)
    try:
        yield
    finally:
        cache.LocalCache._deserialize_artifact = deserialize


_ITERATION = re.compile(r"-iteration-(\d+)(?:/|$)")


@contextmanager
def _tasks_recorded(on_cached: Callable[[TaskRun], None] | None = None):
    """Record every container task kfp.local (2.17) runs or serves from its cache, in the order they end.

    kfp.local tells a cache hit only in a log line that names the task but not its loop
    iteration, and a served task's outputs lie in the earlier run's folder; this wraps its task
    executor to keep each task's outputs and whether it ran (it ran if it was dispatched to the runner).
    """
    from kfp.local import status, task_dispatcher
    from kfp.local.orchestrator import task_executor

    execute, dispatch = task_executor.execute_single_task, task_dispatcher.run_single_task_implementation
    tasks: list[TaskRun] = []
    dispatched = threading.local()  # each task runs in one thread

    def dispatch_recorded(*args, **kwargs):
        dispatched.value = True
        return dispatch(*args, **kwargs)

    def execute_recorded(**kwargs):
        dispatched.value = False
        outputs, task_status = execute(**kwargs)
        spec, iteration = kwargs["task_spec"], _ITERATION.search(kwargs["pipeline_resource_name"])
        record = TaskRun(task=kwargs["task_name"], stage=spec.task_info.name or kwargs["task_name"],
                         iteration=int(iteration.group(1)) if iteration else None, cached=not dispatched.value,
                         succeeded=task_status == status.Status.SUCCESS, outputs=dict(outputs or {}))
        tasks.append(record)
        if record.cached and record.succeeded and on_cached:
            on_cached(record)
        return outputs, task_status

    task_executor.execute_single_task, task_dispatcher.run_single_task_implementation = (
        execute_recorded, dispatch_recorded)
    try:
        yield tasks
    finally:
        task_executor.execute_single_task, task_dispatcher.run_single_task_implementation = execute, dispatch


def run_local(config_path: str | Path, output_dir: str | Path, runner: str = "subprocess",
              image: str | None = None, say: Callable[..., None] | None = None, cache: bool = True,
              on_cached: Callable[[str, str], None] | None = None) -> dict:
    """Run the whole pipeline locally; return where the results are.

    Args:
        config_path: A YAML run configuration.
        output_dir: Holds ``pipeline_root`` (every artifact), the published bundle and kfp.local's
            cache (``cache``).
        runner: ``subprocess`` (this Python's environment) or ``docker`` (every stage in its
            container, as the image's user; see :mod:`pipelines.containers`).
        image: With ``docker``: run every stage in this image (default: the one image the
            pipeline's stages name).
        say: Prints what the runner itself has to say (``say(text, err=False)``; default: print).
        cache: Reuse the outputs of stages that finished before with the same cache key
            (docs/caching.md) and record this run's; False runs every stage.
        on_cached: Called with a task's stage tag (``"acquire"``, ``"tune CONFIGURATION"``) and
            kfp's task name (``"train-trial"``) when the cache serves the task (default: ``say``s so).

    Returns:
        ``{"published": URI, "evaluations": [paths], "bundles": [paths], "comparison": path or None,
        "tasks": [TaskRun], "cache": folder or None}``.
    """
    from kfp import local

    from pipelines.pipeline import pipeline_arguments, pipeline_for

    if runner not in RUNNERS:
        raise ValueError(f"runner {runner!r}: allowed {list(RUNNERS)}")
    config = load_config(config_path)  # fails before any work on a bad configuration
    output_dir = Path(output_dir).resolve()
    root = output_dir / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    args = pipeline_arguments(config)
    destination = config.publish.destination
    if "://" not in destination and not Path(destination).is_absolute():
        args["publish_destination"] = str(output_dir / destination)
    pipeline = pipeline_for(config)
    say = say or _print
    if runner == "docker":
        local_runner, uid, code_id = _docker_runner(pipeline, root, args["publish_destination"], image, say)
    else:
        local_runner, code_id = local.SubprocessRunner(use_venv=False), python_code_id()
    names = [m.model_name for m in config.models]
    on_cached = on_cached or (lambda tag, name: say(f"{tag}: {name} from the cache (an earlier run's outputs)"))
    cache_root = output_dir / CACHE_FOLDER if cache else None
    started = time.time()
    task, tasks = run_pipeline(pipeline, args, root, local_runner, cache_root=cache_root, code_id=code_id,
                               on_cached=lambda t: on_cached(stage_tag(t, names), t.task))
    if runner == "docker":
        lines = containers.check_task_owners(containers.task_owners(root, started), uid)
        say("\n".join([f"Every task wrote its files as the image's user {uid} (it ran in the container):", *lines]))
    evaluate = sorted((t for t in tasks if t.stage == "evaluate" and t.succeeded), key=lambda t: t.iteration or 0)
    compare = [t for t in tasks if t.stage == "compare" and t.succeeded]
    return {"published": task.output,
            "evaluations": [str(Path(t.outputs["evaluation"].path) / "evaluation.json") for t in evaluate],
            "bundles": [str(t.outputs["calibrated_bundle"].path) for t in evaluate],
            "comparison": str(Path(compare[-1].outputs["best_evaluation"].path) / "comparison.json") if compare
            else None,
            "tasks": tasks, "cache": str(cache_root) if cache_root else None}


def stage_tag(task: TaskRun, names: list[str]) -> str:
    """How the console names a task, as the stage's own lines do: its stage (``tune`` for the tune
    stage's plan, trial and select tasks) and, inside the per-model loop, the model configuration."""
    from pipelines.pipeline import TUNE_TASKS

    stage = "tune" if task.stage in TUNE_TASKS else task.stage
    if task.iteration is None or task.iteration >= len(names):
        return stage
    return f"{stage} {names[task.iteration]}"


def _print(text: str = "", err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout)


def _docker_runner(pipeline, root: Path, publish_destination: str, image: str | None, say=_print):
    """DockerRunner for ``pipeline``: one image for every stage, host folders mounted and writable;
    with the image's user and code id (``image sha256:...``, the image's id)."""
    if image:
        containers.pin_executor_images(pipeline.pipeline_spec, image)
    identity = containers.inspect_image(image or containers.single_image(pipeline.pipeline_spec))
    uid, gid = containers.parse_user(identity.user or "0")
    mounts = containers.host_mounts(root, [publish_destination])
    how = containers.prepare_host_folders([str(root), *mounts], uid, gid)
    say(f"Runner: kfp.local.DockerRunner; every stage in image {identity.reference} (id {identity.id}"
        f"{', digest ' + identity.digest if identity.digest else ''}, {identity.size_bytes / 1e6:.0f} MB) "
        f"as its user {identity.user or 'root'}")
    say(f"  mounted at the same path: {root} (pipeline root){''.join(f', {m}' for m in mounts)}; {how}")
    if uid == 0:
        say("  warning: the image runs as root", err=True)
    return containers.docker_runner(identity, mounts), uid, f"image {identity.id}"


@contextmanager
def _kfp_log_lines_kept():
    """Keep every line kfp.local logs, also when tasks run in parallel.

    kfp.local swaps the root logger's handlers and level for each task and restores them when
    the task ends; with two tasks at once, the first to end silences the other's remaining
    lines (its "Task ... finished"). With a handler of kfp's format in place for the whole
    run, the restored state logs them as well.
    """
    from kfp.local.logging_utils import MillisecondFormatter

    logger = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(MillisecondFormatter(fmt="%(asctime)s - %(levelname)s - %(message)s",
                                              datefmt="%H:%M:%S.%f"))
    level, handlers = logger.level, logger.handlers[:]
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="run configuration (YAML), e.g. pipelines/configs/demo.yaml")
    parser.add_argument("--output", default=None, help="output folder (default: outputs/<config name>)")
    parser.add_argument("--runner", choices=RUNNERS, default="subprocess",
                        help="subprocess: stages in this Python (default); docker: each stage in its container")
    parser.add_argument("--image", default=None,
                        help="with --runner docker: run every stage in this local image (default: the pipeline's)")
    parser.add_argument("--log", default=None, help="the full log (default: OUTPUT/logs/run-YYYYmmdd-HHMMSS.log)")
    parser.add_argument("--verbose", action="store_true",
                        help="show every line on the console: kfp's executor input and task outputs, library logs")
    parser.add_argument("--no-cache", action="store_true",
                        help="run every stage: neither reuse nor record kfp.local's cache (OUTPUT/cache) this run")
    args = parser.parse_args(argv)
    if args.image and args.runner != "docker":
        parser.error("--image needs --runner docker")
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    output = Path(args.output or Path("outputs") / config.name)
    log_path = Path(args.log) if args.log else output / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    names = [m.model_name for m in config.models]
    tags = [f"{stage} {name}" for stage in ("quantize", "evaluate") for name in names]
    start = time.monotonic()
    with RunConsole(log_path, verbose=args.verbose, tags=tags) as console:
        console.say(f"Running {args.config}: {len(names)} model configuration(s) ({', '.join(names)}); "
                    f"full log: {log_path}")
        try:
            result = run_local(args.config, output, runner=args.runner, image=args.image, say=console.say,
                               cache=not args.no_cache,
                               on_cached=lambda tag, name: console.stage_line(
                                   tag, f"from the cache: {name}, finished in an earlier run"))
        except Exception as err:  # a failed stage, or the runner could not start one
            _report_failure(console, err, log_path, args.verbose)
            return 1
        except KeyboardInterrupt:
            console.say(f"\ninterrupted; full log: {log_path}", err=True)
            return 130
        console.say(f"\nPipeline finished in {time.monotonic() - start:.0f}s. Full log: {log_path}")
        cached = [t for t in result["tasks"] if t.cached]
        if cached:
            console.say(f"{len(cached)} of {len(result['tasks'])} tasks came from the cache ({result['cache']}); "
                        "--no-cache runs them all")
        _summarize(console, result)
    return 0


def _report_failure(console: RunConsole, err: Exception, log_path: Path, verbose: bool) -> None:
    """The last lines of each failed stage, one error line, and where the full log is."""
    for task, configuration, tail in console.failures():
        if not verbose:
            console.say(f"\nLast lines of {task}{f' ({configuration})' if configuration else ''}:", err=True)
            console.say("\n".join(f"  {line}" for line in tail), err=True)
    if verbose:
        console.say("".join(traceback.format_exception(err)).rstrip(), err=True)
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines() or [type(err).__name__]
    console.say(f"error: {message[0]}", err=True)
    console.say(f"Full log: {log_path}", err=True)


def _summarize(console: RunConsole, result: dict) -> None:
    """Every configuration and variant in one table, the choice, and where everything is."""
    from mushroom.console import closing_table
    from mushroom.evaluation import read_evaluation
    from mushroom.fileio import read_json

    evaluations = [read_evaluation(p) for p in result["evaluations"]]  # each records its shipped variant
    comparison = read_json(result["comparison"]) if result.get("comparison") else {}
    best, shipped_variant = comparison.get("best"), comparison.get("shipped_variant")
    console.say()
    console.say(closing_table(evaluations, best, shipped_variant))
    if best:
        console.say(f"Chosen: {best}, variant {shipped_variant}: {comparison.get('reason', '')}")
    console.say()
    # Where each configuration's files are, what was published, and the identify command to try it.
    from mushroom.console import closing_locations, configuration_of_bundle

    shipped_variants = {e.model_name: e.shipped_variant for e in evaluations}
    bundles = [(name, path, shipped_variants.get(name) or "?") for path in result["bundles"]
               for name in [configuration_of_bundle(path) or "?"]]
    console.say("\n".join(closing_locations(
        [(e.model_name, path) for path, e in zip(result["evaluations"], evaluations, strict=True)],
        bundles, result["published"], best, shipped_variant)))


if __name__ == "__main__":
    sys.exit(main())
