from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_classifier(dataset: Input[Dataset], splits: Input[Dataset], shards: Input[Dataset],
                     hyperparameters: Input[Artifact], model_config: dict, seed: int, model: Output[Model],
                     metrics: Output[Metrics], wandb: Output[Artifact]):
    """Train the head, then fine-tune the top of the backbone; best weights restored.

    ``wandb``: the W&B run (training curves), offline files; synced when ``WANDB_API_KEY`` is set.
    """
    from mushroom import console, image_identity, stages, tracking

    console.setup_stage_logging("train", model_config.get("model_name"))
    image_identity.record_image(model, wandb)
    with tracking.runs_in(wandb.path, wandb.metadata):
        result = stages.train(dataset.path, splits.path, hyperparameters.path, model_config, seed, model.path,
                              shards_dir=shards.path)
    model.metadata["framework"] = "keras"
    for key, value in result.items():
        metrics.log_metric(key, value)
