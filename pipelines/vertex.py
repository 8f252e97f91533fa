"""Vertex AI Pipelines: the PipelineJob a submission makes, and the request it sends.

:func:`pipeline_job` builds google-cloud-aiplatform's own ``PipelineJob`` from the Vertex flavour
of the compiled pipeline (``pipelines.compile --target vertex``). :func:`create_request` runs that
job's ``submit()`` against a recording client, so ``submit --vertex --dry-run`` prints exactly the
``CreatePipelineJob`` request a real submission would send, service account and network included
(aiplatform sets them only inside ``submit()``), and sends nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mushroom import __version__

AIPLATFORM_LOGGER = "google.cloud.aiplatform"  # every aiplatform module logs under it
# Vertex AI label keys and values: lowercase letters, digits, '_' and '-', at most 63 characters.
_LABEL_BAD = re.compile(r"[^a-z0-9_-]+")


def label_value(text: str) -> str:
    """``text`` as a Vertex AI label value (``0.1.0`` -> ``0-1-0``)."""
    return _LABEL_BAD.sub("-", text.lower()).strip("-")[:63] or "none"


def run_labels(config_name: str) -> dict[str, str]:
    """The labels every run carries: what made it and from which configuration (billing reports
    and the Vertex console filter by them)."""
    return {"app": "quantized-mushroom", "config": label_value(config_name), "version": label_value(__version__)}


def pipeline_job(*, package: Path, project: str, region: str, display_name: str, pipeline_root: str,
                 arguments: dict[str, Any], enable_caching: bool | None, labels: dict[str, str], credentials=None):
    """aiplatform's ``PipelineJob`` for a compiled Vertex-flavour package (no network).

    Args:
        package: The compiled pipeline (one YAML document).
        project: Google Cloud project id.
        region: Vertex AI region, e.g. ``europe-west4``.
        display_name: The run's display name.
        pipeline_root: ``gs://`` prefix for the run's artifacts.
        arguments: Pipeline parameter values.
        enable_caching: False turns caching off for every task of the run; None leaves each task's
            compiled caching option (``cluster.stages.<stage>.caching``).
        labels: Vertex AI labels.
        credentials: Google credentials; default: the environment's (application default).
    """
    from google.cloud import aiplatform

    return aiplatform.PipelineJob(
        display_name=display_name, template_path=str(package), pipeline_root=pipeline_root,
        parameter_values=arguments, enable_caching=enable_caching, labels=labels,
        project=project, location=region, credentials=credentials,
    )


class _RecordingClient:
    """Stands in for the pipeline service client: keeps the create request, sends nothing."""

    def __init__(self) -> None:
        self.request: dict[str, Any] | None = None

    def create_pipeline_job(self, *, parent, pipeline_job, pipeline_job_id, timeout=None):
        self.request = {"parent": parent, "pipeline_job_id": pipeline_job_id, "pipeline_job": pipeline_job}
        created = type(pipeline_job)(pipeline_job)
        created.name = f"{parent}/pipelineJobs/{pipeline_job_id}"
        return created


@contextmanager
def _skipped(module, function: str):
    """``module.function`` does nothing inside the block (aiplatform's bucket creation in a dry run)."""
    original = getattr(module, function)
    setattr(module, function, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        setattr(module, function, original)


@contextmanager
def _quiet_aiplatform():
    """aiplatform's INFO lines are not printed inside the block (its loggers, each with its own
    stdout handler, are raised to WARNING, then restored)."""
    loggers = [logging.getLogger(AIPLATFORM_LOGGER)]  # the ones made later inherit its level
    loggers += [logging.getLogger(name) for name in sorted(logging.Logger.manager.loggerDict)
                if name.startswith(AIPLATFORM_LOGGER + ".")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def create_request(job, *, service_account: str | None, network: str | None = None) -> dict[str, Any]:
    """The ``CreatePipelineJob`` request ``job.submit(service_account, network)`` would send, as JSON.

    ``submit()`` also creates the pipeline root's bucket when it is missing; a dry run does not:
    that call is replaced, and the request is recorded instead of sent. aiplatform's own lines
    ("Creating PipelineJob", "PipelineJob created. Resource name: ...", "View Pipeline Job: ...")
    would claim a job that does not exist, so they are not printed.
    """
    from google.cloud.aiplatform.utils import gcs_utils

    recorder = _RecordingClient()
    job.api_client = recorder
    with _skipped(gcs_utils, "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist"), _quiet_aiplatform():
        job.submit(service_account=service_account, network=network)
    assert recorder.request is not None, "PipelineJob.submit() sent no create request"
    message = recorder.request["pipeline_job"]
    return {
        "parent": recorder.request["parent"],
        "pipeline_job_id": recorder.request["pipeline_job_id"],
        "pipeline_job": json.loads(type(message).to_json(message, always_print_fields_with_no_presence=False,
                                                           use_integers_for_enums=False)),
    }


def summarized(request: dict[str, Any]) -> dict[str, Any]:
    """``request`` with its pipeline spec (tens of kilobytes) replaced by a summary for printing:
    the pipeline name, its tasks with their images and machine resources, and a digest."""
    job = dict(request["pipeline_job"])
    spec = job.pop("pipelineSpec")
    executors = spec["deploymentSpec"]["executors"]
    job["pipelineSpec (summary)"] = {
        "name": spec["pipelineInfo"]["name"],
        "sha256": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
        "executors": {name: {"image": e["container"]["image"], **_resources(e["container"].get("resources", {}))}
                      for name, e in sorted(executors.items())},
    }
    return {**request, "pipeline_job": job}


def _resources(resources: dict[str, Any]) -> dict[str, Any]:
    shown = {key: resources[key] for key in ("resourceCpuLimit", "resourceMemoryLimit") if key in resources}
    accelerator = resources.get("accelerator")
    if accelerator:
        shown["accelerator"] = f"{accelerator.get('resourceCount', '1')} x {accelerator.get('resourceType')}"
    return shown
