"""Submit a configuration's pipeline to Kubeflow Pipelines or Vertex AI Pipelines.

    python -m pipelines.submit pipelines/configs/paper.yaml --host http://localhost:8080 \\
        --pipeline-root gs://mushroom-artifacts/pipeline-root
    python -m pipelines.submit pipelines/configs/paper.yaml --vertex --project P --region europe-west4 \\
        --pipeline-root gs://BUCKET/pipeline-root
    python -m pipelines.submit pipelines/configs/demo.yaml --host http://localhost:8080 \\
        --publish-destination gs://mushroom-artifacts/published --wait 3600    (kind, minikube)
    ... --dry-run    prints what would be submitted and submits nothing
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mushroom.config import ConfigError, load_config

DEFAULT_SERVICE_ACCOUNT = "mushroom-pipeline-runner"  # manifests/base/runner


@dataclass
class Submission:
    """Everything that goes to the backend, printable for ``--dry-run``."""

    backend: str
    target: str
    run_name: str
    experiment: str
    pipeline_root: str | None
    enable_caching: bool
    service_account: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # stage -> the image it runs


def plan_submission(args: argparse.Namespace) -> Submission:
    """Validate the configuration and assemble the submission (no network)."""
    from components.image import project_images
    from pipelines.pipeline import pipeline_arguments

    config = load_config(args.config)
    images = project_images().by_stage(config.cluster.stages)
    if args.vertex:
        missing = [flag for flag, value in (("--project", args.project), ("--region", args.region),
                                            ("--pipeline-root", args.pipeline_root)) if not value]
        if missing:
            raise ConfigError(f"--vertex needs {', '.join(missing)}")
        target = f"vertex:{args.project}/{args.region}"
    else:
        if not args.host:
            raise ConfigError("give --host URL of the Kubeflow Pipelines API (or --vertex)")
        target = args.host
    arguments = pipeline_arguments(config)
    if args.publish_destination:
        arguments["publish_destination"] = args.publish_destination
    if not arguments["publish_destination"].startswith("gs://"):
        raise ConfigError(
            f"publish.destination {arguments['publish_destination']!r}: a cluster run needs a gs:// prefix "
            "(or give --publish-destination gs://...)"
        )
    return Submission(
        backend="vertex" if args.vertex else "kfp",
        target=target,
        run_name=args.run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        experiment=args.experiment or config.name,
        pipeline_root=args.pipeline_root,
        enable_caching=not args.no_cache,
        service_account=args.service_account,
        arguments=arguments,
        images=images,
    )


def submit(submission: Submission, package: Path, wait_s: int | None = None) -> str | None:
    """Submit a compiled package and print where the run is.

    Args:
        submission: What to submit, and where.
        package: The compiled pipeline.
        wait_s: Wait up to this many seconds for the run to finish (None: return at once).

    Returns:
        The run's final state when waited for, else None.
    """
    if submission.backend == "vertex":
        try:
            from google.cloud import aiplatform
        except ImportError:
            raise SystemExit("--vertex needs google-cloud-aiplatform: pip install google-cloud-aiplatform") from None
        project, region = submission.target.removeprefix("vertex:").split("/")
        aiplatform.init(project=project, location=region, experiment=submission.experiment)
        job = aiplatform.PipelineJob(
            display_name=submission.run_name, template_path=str(package),
            pipeline_root=submission.pipeline_root, parameter_values=submission.arguments,
            enable_caching=submission.enable_caching,
        )
        job.submit(service_account=submission.service_account)
        _submitted(submission, job.resource_name)
        if wait_s is None:
            return None
        job.wait()  # no client-side timeout for Vertex; the job's own limits apply
        return job.state.name
    import kfp

    client = kfp.Client(host=submission.target)
    result = client.create_run_from_pipeline_package(
        str(package), arguments=submission.arguments, run_name=submission.run_name,
        experiment_name=submission.experiment, pipeline_root=submission.pipeline_root,
        enable_caching=submission.enable_caching, service_account=submission.service_account,
    )
    _submitted(submission, f"{submission.target.rstrip('/')}/#/runs/details/{result.run_id}")
    if wait_s is None:
        return None
    return str(client.wait_for_run_completion(result.run_id, timeout=wait_s).state)


def _submitted(submission: Submission, where: str) -> None:
    print(f"submitted {submission.run_name} to {submission.target}: {where}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="run configuration (YAML)")
    parser.add_argument("--host", help="Kubeflow Pipelines API URL, e.g. http://localhost:8080")
    parser.add_argument("--vertex", action="store_true", help="submit to Vertex AI Pipelines instead")
    parser.add_argument("--project", help="Google Cloud project (with --vertex)")
    parser.add_argument("--region", help="Google Cloud region (with --vertex)")
    parser.add_argument("--pipeline-root", help="where artifacts go, e.g. gs://BUCKET/pipeline-root (default: the "
                                                "backend's; KFP standalone: its own object store)")
    parser.add_argument("--publish-destination", help="gs:// prefix to publish to instead of the config's "
                                                      "publish.destination, e.g. gs://mushroom-artifacts/published")
    parser.add_argument("--experiment", help="experiment name (default: the config's name)")
    parser.add_argument("--run-name", help="run name (default: <config name>-<timestamp>)")
    parser.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT,
                        help=f"Kubernetes/GCP service account for the run (default: {DEFAULT_SERVICE_ACCOUNT})")
    parser.add_argument("--no-cache", action="store_true", help="disable caching for every task of this run")
    parser.add_argument("--wait", type=int, metavar="SECONDS", help="wait for the run to finish (exit 1 unless it "
                                                                   "succeeds)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        submission = plan_submission(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(asdict(submission), indent=2, sort_keys=True))
        return 0
    from pipelines.compile import compile_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(args.config, Path(tmp) / "pipeline.yaml")
        state = submit(submission, package, args.wait)
    if state is None:
        return 0
    print(f"run {submission.run_name} finished: {state}")
    return 0 if state in ("SUCCEEDED", "PIPELINE_STATE_SUCCEEDED") else 1


if __name__ == "__main__":
    sys.exit(main())
