from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def split_dataset(dataset: Input[Dataset], split_config: dict, seed: int, splits: Output[Dataset],
                  metrics: Output[Metrics]):
    """Split by observation id, stratified by species."""
    from mushroom import console, image_identity, stages

    console.setup_stage_logging("split")
    image_identity.record_image(splits)
    for key, value in stages.split(dataset.path, split_config, seed, splits.path).items():
        metrics.log_metric(f"photos_{key}", value)
