from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components.image import IMAGE


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
