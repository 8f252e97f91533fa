"""Run a configuration locally with ``kfp.local``: every stage as a subprocess of this Python
(``--runner subprocess``, the default), or in its container (``--runner docker``, kfp's
DockerRunner; needs a Docker daemon and the ``container`` extra).

    python -m pipelines.run pipelines/configs/demo.yaml [--output outputs/demo] [--verbose]
    python -m pipelines.run pipelines/configs/demo.yaml --runner docker --image IMAGE:TAG

The console shows what the stages log, each line naming its stage and model configuration,
one line per epoch (a progress bar on a terminal), and a closing table of every configuration
and variant; everything else (kfp's executor input and task outputs, TensorFlow's and other
libraries' logs) goes only to the full log, OUTPUT/logs/run-TIME.log unless --log says
otherwise, whose path is printed first and last. When a stage fails: its last lines and the
log's path. --verbose shows every line as it comes.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from mushroom.bundle import METADATA
from mushroom.config import ConfigError, load_config
from pipelines import containers
from pipelines.runlog import RunConsole

RUNNERS = ("subprocess", "docker")


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


def run_local(config_path: str | Path, output_dir: str | Path, runner: str = "subprocess",
              image: str | None = None, say: Callable[..., None] | None = None) -> dict:
    """Run the whole pipeline locally; return where the results are.

    Args:
        config_path: A YAML run configuration.
        output_dir: Holds ``pipeline_root`` (every artifact) and the published bundle.
        runner: ``subprocess`` (this Python's environment) or ``docker`` (every stage in its
            container, as the image's user; see :mod:`pipelines.containers`).
        image: With ``docker``: run every stage in this image (default: the one image the
            pipeline's stages name).
        say: Prints what the runner itself has to say (``say(text, err=False)``; default: print).

    Returns:
        ``{"published": URI, "evaluations": [paths], "bundles": [paths], "comparison": path or None}``.
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
        local_runner, uid = _docker_runner(pipeline, root, args["publish_destination"], image, say)
    else:
        local_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=local_runner, pipeline_root=str(root), raise_on_error=True)
    started = time.time()
    record_start_time(pipeline.pipeline_spec)  # kfp.local cannot resolve the create-time placeholder
    with _kfp_log_lines_kept():
        task = pipeline(**args)
    if runner == "docker":
        lines = containers.check_task_owners(containers.task_owners(root, started), uid)
        say("\n".join([f"Every task wrote its files as the image's user {uid} (it ran in the container):", *lines]))
    evaluations = sorted(p for p in root.rglob("evaluation.json") if p.stat().st_mtime >= started
                         and "evaluate-model" in str(p))
    bundles = sorted(p.parent for p in root.rglob(METADATA) if p.stat().st_mtime >= started
                     and "calibrated_bundle" in str(p))
    comparisons = sorted(p for p in root.rglob("comparison.json") if p.stat().st_mtime >= started
                         and "compare-models" in str(p))
    return {"published": task.output, "evaluations": [str(p) for p in evaluations],
            "bundles": [str(p) for p in bundles], "comparison": str(comparisons[-1]) if comparisons else None}


def _print(text: str = "", err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout)


def _docker_runner(pipeline, root: Path, publish_destination: str, image: str | None, say=_print):
    """DockerRunner for ``pipeline``: one image for every stage, host folders mounted and writable."""
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
    return containers.docker_runner(identity, mounts), uid


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
            result = run_local(args.config, output, runner=args.runner, image=args.image, say=console.say)
        except Exception as err:  # a failed stage, or the runner could not start one
            _report_failure(console, err, log_path, args.verbose)
            return 1
        except KeyboardInterrupt:
            console.say(f"\ninterrupted; full log: {log_path}", err=True)
            return 130
        console.say(f"\nPipeline finished in {time.monotonic() - start:.0f}s. Full log: {log_path}")
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
