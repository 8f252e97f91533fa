from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def acquire_dataset(dataset_config: dict, seed: int, dataset: Output[Dataset], metrics: Output[Metrics]):
    """Build the photo dataset (synthetic, ImageFolder or iNaturalist) with its manifest."""
    from mushroom import console, image_identity, stages

    console.setup_stage_logging("acquire")
    image_identity.record_image(dataset)
    for key, value in stages.acquire(dataset_config, seed, dataset.path).items():
        metrics.log_metric(key, value)
