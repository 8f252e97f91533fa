from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish_bundle(bundle: Input[Model], evaluation: Input[Artifact], destination: str, run_id: str) -> str:
    """Publish the chosen bundle and its evaluation to a folder or gs:// prefix; return its URI."""
    from mushroom import stages

    stages.setup_logging()
    return stages.publish(bundle.path, evaluation.path, destination, run_id)
