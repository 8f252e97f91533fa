from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish_bundle(bundle: Input[Model], evaluation: Input[Artifact], destination: str, run_name: str,
                   publication: Output[Artifact], job_id: str = "", created: str = "",
                   gate: dict = {}) -> str:  # noqa: B006 - KFP default
    """Publish the chosen bundle and its evaluation to a folder or gs:// prefix; return the run's URI.

    ``latest`` moves to the run only if it is newer (``created``) and passes ``gate``
    (``publish.gate`` of the configuration). ``publication``: the run's URI and the image that
    published it (metadata, and the same as JSON in its file).
    """
    from mushroom import console, image_identity, stages

    console.setup_stage_logging("publish")
    uri = stages.publish(bundle.path, evaluation.path, destination, run_name, job_id, created, gate)
    image_identity.write_image_record(publication, uri=uri)
    return uri
