from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_classifier(dataset: Input[Dataset], splits: Input[Dataset], shards: Input[Dataset],
                     hyperparameters: Input[Artifact], model_config: dict, seed: int, model: Output[Model],
                     metrics: Output[Metrics]):
    """Train the head, then fine-tune the top of the backbone; best weights restored."""
    from mushroom import console, stages

    console.setup_stage_logging("train", model_config.get("model_name"))
    result = stages.train(dataset.path, splits.path, hyperparameters.path, model_config, seed, model.path,
                          shards_dir=shards.path)
    model.metadata["framework"] = "keras"
    for key, value in result.items():
        metrics.log_metric(key, value)
