"""Submit a configuration's pipeline to Kubeflow Pipelines or Vertex AI Pipelines.

    python -m pipelines.submit pipelines/configs/paper.yaml --host http://localhost:8080 \\
        --pipeline-root gs://mushroom-artifacts/pipeline-root
    python -m pipelines.submit pipelines/configs/paper.yaml --vertex --project P --region europe-west4 \\
        --pipeline-root gs://BUCKET/pipeline-root --publish-destination gs://BUCKET/published
    python -m pipelines.submit pipelines/configs/demo.yaml --host http://localhost:8080 \\
        --publish-destination gs://mushroom-artifacts/published --wait 3600    (kind, minikube)
    ... --dry-run    prints what would be submitted and submits nothing
    ... --wait 3600  waits for the run to finish, at most an hour (exit 1 unless it succeeded)

Before submitting, every gs:// location the run writes to (pipeline root, publish destination)
gets a test write; a missing bucket or a refused write stops here with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mushroom.config import ConfigError, load_config

KUBERNETES_SERVICE_ACCOUNT = "mushroom-pipeline-runner"  # manifests/base/runner
# Vertex AI runs a step as a Google service account, named by its email. The docs (docs/clusters.md,
# "Vertex AI Pipelines") create this one; on GKE the Kubernetes account above is bound to it (Workload Identity).
GOOGLE_SERVICE_ACCOUNT = "mushroom-pipeline-runner@{project}.iam.gserviceaccount.com"

_EMAIL = re.compile(r"[a-z0-9][a-z0-9._-]*@[a-z0-9][a-z0-9.-]*\.[a-z]{2,}")
_KUBERNETES_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # a DNS-1123 subdomain
_PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")


@dataclass
class Submission:
    """Everything that goes to the backend, printable for ``--dry-run``."""

    backend: str
    target: str
    run_name: str
    experiment: str
    pipeline_root: str | None
    # False: no task of the run uses or feeds the cache. None: each task as compiled, i.e. its
    # stage's cluster.stages.<stage>.caching (True would turn caching on for every task, publish too).
    enable_caching: bool | None
    service_account: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # stage -> the image it runs
    labels: dict[str, str] = field(default_factory=dict)  # Vertex AI only
    network: str | None = None  # Vertex AI only

    @property
    def project_region(self) -> tuple[str, str]:
        project, region = self.target.removeprefix("vertex:").split("/")
        return project, region


def _check_service_account(account: str, vertex: bool) -> None:
    if vertex and not _EMAIL.fullmatch(account):
        raise ConfigError(f"--service-account {account!r}: Vertex AI runs as a Google service account; give its "
                          "email, e.g. NAME@PROJECT.iam.gserviceaccount.com")
    if not vertex and not _KUBERNETES_NAME.fullmatch(account):
        hint = (" (a Google service-account email: KFP runs a Kubernetes service account, bound to the Google one "
                "by Workload Identity; see manifests/UPSTREAM.md)") if "@" in account else ""
        raise ConfigError(f"--service-account {account!r} is not a Kubernetes service account name{hint}")


def plan_submission(args: argparse.Namespace) -> Submission:
    """Validate the configuration and the target and assemble the submission (no network).

    Raises:
        ConfigError: One line naming what is wrong: the configuration, a missing or malformed
            flag, a service account of the wrong kind, a destination that is not ``gs://``.
    """
    from components.image import project_images
    from pipelines.pipeline import pipeline_arguments
    from pipelines.vertex import run_labels

    config = load_config(args.config)
    images = project_images().by_stage(config.cluster.stages)
    target_kind = "vertex" if args.vertex else "kfp"
    if args.vertex:
        missing = [flag for flag, value in (("--project", args.project), ("--region", args.region),
                                            ("--pipeline-root", args.pipeline_root)) if not value]
        if missing:
            raise ConfigError(f"--vertex needs {', '.join(missing)}")
        if not _PROJECT_ID.fullmatch(args.project):
            raise ConfigError(f"--project {args.project!r} is not a Google Cloud project id "
                              "(6-30 lowercase letters, digits and hyphens)")
        if not _REGION.fullmatch(args.region):
            raise ConfigError(f"--region {args.region!r} is not a Google Cloud region, e.g. europe-west4")
        if not args.pipeline_root.startswith("gs://"):
            raise ConfigError(f"--pipeline-root {args.pipeline_root!r}: Vertex AI needs a gs:// prefix")
        target = f"vertex:{args.project}/{args.region}"
        service_account = args.service_account or GOOGLE_SERVICE_ACCOUNT.format(project=args.project)
    else:
        if not args.host:
            raise ConfigError("give --host URL of the Kubeflow Pipelines API (or --vertex)")
        if args.network:
            raise ConfigError("--network is a Vertex AI setting (with --vertex)")
        target = args.host
        service_account = args.service_account or KUBERNETES_SERVICE_ACCOUNT
    _check_service_account(service_account, args.vertex)
    arguments = pipeline_arguments(config, target_kind)
    if args.publish_destination:
        arguments["publish_destination"] = args.publish_destination
    if not arguments["publish_destination"].startswith("gs://"):
        raise ConfigError(
            f"publish.destination {arguments['publish_destination']!r}: a cluster run needs a gs:// prefix "
            "(or give --publish-destination gs://...)"
        )
    return Submission(
        backend=target_kind,
        target=target,
        run_name=args.run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        experiment=args.experiment or config.name,
        pipeline_root=args.pipeline_root,
        enable_caching=False if args.no_cache else None,
        service_account=service_account,
        arguments=arguments,
        images=images,
        labels=run_labels(config.name) if args.vertex else {},
        network=args.network,
    )


def check_destinations(submission: Submission) -> None:
    """Write and delete a test object in every ``gs://`` location the run will write to, before
    anything is submitted (a missing bucket would otherwise fail the run at its last step).

    Raises:
        StorageError: One line naming the location and what is wrong.
    """
    from mushroom.storage import check_writable

    locations = [submission.arguments["publish_destination"]]
    if submission.pipeline_root and submission.pipeline_root.startswith("gs://"):
        locations.insert(0, submission.pipeline_root)
    for location in locations:
        check_writable(location)


def vertex_job(submission: Submission, package: Path, credentials=None):
    """aiplatform's ``PipelineJob`` for ``submission`` (see :func:`pipelines.vertex.pipeline_job`)."""
    from pipelines.vertex import pipeline_job

    project, region = submission.project_region
    return pipeline_job(package=package, project=project, region=region, display_name=submission.run_name,
                        pipeline_root=submission.pipeline_root, arguments=submission.arguments,
                        enable_caching=submission.enable_caching, labels=submission.labels, credentials=credentials)


# Final states: KFP's run states (V2beta1RuntimeState) and Vertex AI's PipelineState names.
KFP_FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "ERROR")
VERTEX_FINAL_STATES = ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED")
SUCCEEDED = ("SUCCEEDED", "PIPELINE_STATE_SUCCEEDED")
POLL_S = {"kfp": 5, "vertex": 15}  # seconds between state requests while waiting


class WaitTimeout(Exception):
    """``--wait`` ran out before the run finished; the run goes on (its last state is ``state``)."""

    def __init__(self, state: str):
        super().__init__(state)
        self.state = state


def wait_for(state: Callable[[], str], final: tuple[str, ...], wait_s: float, poll_s: float,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """Ask ``state()`` every ``poll_s`` seconds until it is one of ``final``, for at most ``wait_s``.

    The client-side timeout of ``--wait``: neither ``kfp.Client`` (it raises a bare
    ``TimeoutError('Run timeout')``) nor aiplatform's ``PipelineJob.wait()`` (no timeout at all)
    gives one that says what happened.

    Returns:
        The final state.

    Raises:
        WaitTimeout: ``wait_s`` passed first (with the last state seen).
    """
    deadline = clock() + wait_s
    while True:
        current = state()
        if current in final:
            return current
        left = deadline - clock()
        if left <= 0:
            raise WaitTimeout(current)
        sleep(min(poll_s, left))


def submit(submission: Submission, package: Path, wait_s: int | None = None) -> str | None:
    """Submit a compiled package and print where the run is.

    Args:
        submission: What to submit, and where.
        package: The compiled pipeline, in the flavour of ``submission.backend``.
        wait_s: Wait up to this many seconds for the run to finish (None: return at once).

    Returns:
        The run's final state when waited for, else None.

    Raises:
        WaitTimeout: ``wait_s`` passed before the run finished.
    """
    if submission.backend == "vertex":
        job = vertex_job(submission, package)
        job.submit(service_account=submission.service_account, network=submission.network,
                   experiment=submission.experiment)
        _submitted(submission, job.resource_name)
        if wait_s is None:
            return None
        return wait_for(lambda: job.state.name, VERTEX_FINAL_STATES, wait_s, POLL_S["vertex"])
    import kfp

    if submission.enable_caching is False:
        turn_caching_off(package)
    client = kfp.Client(host=submission.target)
    result = client.create_run_from_pipeline_package(
        str(package), arguments=submission.arguments, run_name=submission.run_name,
        experiment_name=submission.experiment, pipeline_root=submission.pipeline_root,
        enable_caching=submission.enable_caching, service_account=submission.service_account,
    )
    _submitted(submission, f"{submission.target.rstrip('/')}/#/runs/details/{result.run_id}")
    if wait_s is None:
        return None
    return wait_for(lambda: str(client.get_run(result.run_id).state).upper(), KFP_FINAL_STATES, wait_s,
                    POLL_S["kfp"])


def turn_caching_off(package: Path) -> None:
    """Turn caching off for every task of a compiled KFP package, in every DAG (in place).

    ``kfp.Client``'s ``enable_caching=False`` (kfp 2.17) reaches only the tasks of the root DAG;
    the tasks inside the per-model loop (tune, train, quantize, evaluate) keep their compiled
    ``enableCache``. aiplatform's ``PipelineJob`` changes every DAG's tasks, as this does.
    """
    import yaml

    documents = list(yaml.safe_load_all(package.read_text(encoding="utf-8")))
    spec = documents[0]  # the pipeline spec; a platform spec (Kubernetes settings) may follow
    for component in [spec["root"], *spec.get("components", {}).values()]:
        for task in component.get("dag", {}).get("tasks", {}).values():
            task["cachingOptions"] = {"enableCache": False}
    package.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")


def _submitted(submission: Submission, where: str) -> None:
    print(f"submitted {submission.run_name} to {submission.target}: {where}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="run configuration (YAML)")
    parser.add_argument("--host", help="Kubeflow Pipelines API URL, e.g. http://localhost:8080")
    parser.add_argument("--vertex", action="store_true", help="submit to Vertex AI Pipelines instead")
    parser.add_argument("--project", help="Google Cloud project id (with --vertex)")
    parser.add_argument("--region", help="Vertex AI region, e.g. europe-west4 (with --vertex)")
    parser.add_argument("--network", help="VPC network to peer, projects/NUMBER/global/networks/NAME (with --vertex; "
                                          "optional)")
    parser.add_argument("--pipeline-root", help="where artifacts go, e.g. gs://BUCKET/pipeline-root (Vertex: "
                                                "required; KFP standalone default: its own object store)")
    parser.add_argument("--publish-destination", help="gs:// prefix to publish to instead of the config's "
                                                      "publish.destination, e.g. gs://mushroom-artifacts/published")
    parser.add_argument("--experiment", help="experiment name (default: the config's name)")
    parser.add_argument("--run-name", help="run name (default: <config name>-<timestamp>)")
    parser.add_argument("--service-account",
                        help=f"the account the run's steps act as. KFP: a Kubernetes service account name "
                             f"(default: {KUBERNETES_SERVICE_ACCOUNT}); Vertex: a Google service-account email "
                             f"(default: {GOOGLE_SERVICE_ACCOUNT.format(project='PROJECT')})")
    parser.add_argument("--no-cache", action="store_true",
                        help="turn caching off for every task of this run (default: each stage's "
                             "cluster.stages.<stage>.caching; docs/caching.md)")
    parser.add_argument("--wait", type=_positive_seconds, metavar="SECONDS",
                        help="wait at most SECONDS for the run to finish (exit 1 unless it succeeds; when SECONDS "
                             "pass first, one line says so and the run goes on)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be submitted (Vertex: the CreatePipelineJob request, its pipeline "
                             "spec summarized); submit nothing, touch no bucket")
    return parser


def _positive_seconds(text: str) -> int:
    seconds = int(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text}: give the seconds to wait, more than 0")
    return seconds


def _dry_run(submission: Submission, config: str) -> None:
    """Say on stderr that this is a dry run; print on stdout what would be sent. KFP: the
    submission. Vertex: the CreatePipelineJob request aiplatform would send (parameters, pipeline
    root, service account, labels, network) and the experiment it joins; aiplatform's own log
    lines, which speak of a job created, are not printed (:func:`pipelines.vertex.create_request`)."""
    what = "the CreatePipelineJob request" if submission.backend == "vertex" else "the submission"
    print(f"dry run: nothing is submitted and no bucket is touched; {what} to {submission.target} follows",
          file=sys.stderr)
    if submission.backend != "vertex":
        print(json.dumps(asdict(submission), indent=2, sort_keys=True))
        return
    from google.auth.credentials import AnonymousCredentials

    from pipelines.compile import compile_pipeline
    from pipelines.vertex import create_request, summarized

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(config, Path(tmp) / "pipeline.yaml", target="vertex")
        job = vertex_job(submission, package, credentials=AnonymousCredentials())
        request = create_request(job, service_account=submission.service_account, network=submission.network)
    print(json.dumps({"experiment": submission.experiment, "create_pipeline_job_request": summarized(request)},
                     indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    from mushroom.storage import StorageError

    args = build_parser().parse_args(argv)
    try:
        submission = plan_submission(args)
        if args.dry_run:
            _dry_run(submission, args.config)
            return 0
        check_destinations(submission)
    except (ConfigError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"error: submitting needs the pipeline extra ({err.name} is not installed): pip install '.[pipeline]' "
              "in a quantized-mushroom checkout", file=sys.stderr)
        return 2
    from pipelines.compile import compile_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(args.config, Path(tmp) / "pipeline.yaml", target=submission.backend)
        try:
            state = submit(submission, package, args.wait)
        except WaitTimeout as late:
            print(f"error: run {submission.run_name} did not finish within --wait {args.wait} s (last state: "
                  f"{late.state}); it goes on running on {submission.target}: stopped waiting, nothing was cancelled",
                  file=sys.stderr)
            return 1
    if state is None:
        return 0
    print(f"run {submission.run_name} finished: {state}")
    return 0 if state in SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
