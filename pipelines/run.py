"""Run a configuration locally with ``kfp.local``: every stage as a subprocess of this Python
(``--runner subprocess``, the default), or in its container (``--runner docker``, kfp's
DockerRunner; needs a Docker daemon and the ``container`` extra).

    python -m pipelines.run pipelines/configs/demo.yaml [--output outputs/demo]
    python -m pipelines.run pipelines/configs/demo.yaml --runner docker --image IMAGE:TAG
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from mushroom import variants
from mushroom.bundle import METADATA
from mushroom.config import ConfigError, load_config
from mushroom.evaluation import read_evaluation
from pipelines import containers

RUNNERS = ("subprocess", "docker")


def run_local(config_path: str | Path, output_dir: str | Path, runner: str = "subprocess",
              image: str | None = None) -> dict:
    """Run the whole pipeline locally; return where the results are.

    Args:
        config_path: A YAML run configuration.
        output_dir: Holds ``pipeline_root`` (every artifact) and the published bundle.
        runner: ``subprocess`` (this Python's environment) or ``docker`` (every stage in its
            container, as the image's user; see :mod:`pipelines.containers`).
        image: With ``docker``: run every stage in this image (default: the one image the
            pipeline's stages name).

    Returns:
        ``{"published": URI, "evaluations": [paths], "bundles": [paths]}``.
    """
    from kfp import local

    from components.publish import record_start_time
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
    if runner == "docker":
        local_runner, uid = _docker_runner(pipeline, root, args["publish_destination"], image)
    else:
        local_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=local_runner, pipeline_root=str(root), raise_on_error=True)
    started = time.time()
    record_start_time(pipeline.pipeline_spec)  # kfp.local cannot resolve the create-time placeholder
    with _kfp_log_lines_kept():
        task = pipeline(**args)
    if runner == "docker":
        lines = containers.check_task_owners(containers.task_owners(root, started), uid)
        print(f"Every task wrote its files as the image's user {uid} (it ran in the container):", *lines, sep="\n")
    evaluations = sorted(p for p in root.rglob("evaluation.json") if p.stat().st_mtime >= started
                         and "evaluate-model" in str(p))
    bundles = sorted(p.parent for p in root.rglob(METADATA) if p.stat().st_mtime >= started
                     and "calibrated_bundle" in str(p))
    return {"published": task.output, "evaluations": [str(p) for p in evaluations],
            "bundles": [str(p) for p in bundles]}


def _docker_runner(pipeline, root: Path, publish_destination: str, image: str | None):
    """DockerRunner for ``pipeline``: one image for every stage, host folders mounted and writable."""
    if image:
        containers.pin_executor_images(pipeline.pipeline_spec, image)
    identity = containers.inspect_image(image or containers.single_image(pipeline.pipeline_spec))
    uid, gid = containers.parse_user(identity.user or "0")
    mounts = containers.host_mounts(root, [publish_destination])
    how = containers.prepare_host_folders([str(root), *mounts], uid, gid)
    print(f"Runner: kfp.local.DockerRunner; every stage in image {identity.reference} (id {identity.id}"
          f"{', digest ' + identity.digest if identity.digest else ''}, {identity.size_bytes / 1e6:.0f} MB) "
          f"as its user {identity.user or 'root'}")
    print(f"  mounted at the same path: {root} (pipeline root){''.join(f', {m}' for m in mounts)}; {how}")
    if uid == 0:
        print("  warning: the image runs as root", file=sys.stderr)
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
    args = parser.parse_args(argv)
    if args.image and args.runner != "docker":
        parser.error("--image needs --runner docker")
    try:
        name = load_config(args.config).name
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.monotonic()
    result = run_local(args.config, args.output or Path("outputs") / name, runner=args.runner, image=args.image)
    print(f"\nPipeline finished in {time.monotonic() - start:.0f}s.")
    for path in result["evaluations"]:
        e = read_evaluation(path)
        headline = ", ".join(f"{name} top-1 {e.variant(name).top1:.3f}" for name in variants.REQUIRED
                             if e.variant(name) is not None)
        print(f"  {e.model_name}: {headline}  ({path})")
        print(f"    report: {Path(path).parent / 'report.html'}")
    for path in result["bundles"]:
        print(f"  bundle: {path}")
    print(f"Published bundle and evaluation: {result['published']}")
    if "://" not in result["published"]:
        published = Path(result["published"]) / "evaluation"
        print(f"Report: {published / 'report.html'}\nComparison: {published / 'comparison.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
