from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tune_model(dataset: Input[Dataset], splits: Input[Dataset], shards: Input[Dataset], model_config: dict,
               seed: int, hyperparameters: Output[Artifact], metrics: Output[Metrics]):
    """Search learning rate, dropout and label smoothing with keras-tuner."""
    from mushroom import console, stages

    console.setup_stage_logging("tune", model_config.get("model_name"))
    result = stages.tune(dataset.path, splits.path, model_config, seed, hyperparameters.path, shards_dir=shards.path)
    for key, value in result.items():
        metrics.log_metric(key, value)
