from datetime import UTC, datetime

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components.image import IMAGE


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
    now = datetime.now(UTC).isoformat()
    dags = [pipeline_spec.root.dag, *(c.dag for c in pipeline_spec.components.values() if c.HasField("dag"))]
    for dag in dags:
        for task in dag.tasks.values():
            for parameter in task.inputs.parameters.values():
                if parameter.runtime_value.constant.string_value == dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER:
                    parameter.runtime_value.constant.string_value = now
    return now


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish_bundle(bundle: Input[Model], evaluation: Input[Artifact], destination: str, run_name: str,
                   job_id: str = "", created: str = "", gate: dict = {}) -> str:  # noqa: B006 - KFP default
    """Publish the chosen bundle and its evaluation to a folder or gs:// prefix; return the run's URI.

    ``latest`` moves to the run only if it is newer (``created``) and passes ``gate``
    (``publish.gate`` of the configuration).
    """
    from mushroom import console, stages

    console.setup_stage_logging("publish")
    return stages.publish(bundle.path, evaluation.path, destination, run_name, job_id, created, gate)
