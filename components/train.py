from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_classifier(dataset: Input[Dataset], splits: Input[Dataset], hyperparameters: Input[Artifact],
                     model_config: dict, seed: int, model: Output[Model], metrics: Output[Metrics],
                     wandb: Output[Artifact], shards: Input[Dataset] = None, shards_uri: str = ""):
    """Train the head, then fine-tune the top of the backbone; best weights restored.

    ``wandb``: the W&B run (training curves), offline files; synced when ``WANDB_API_KEY`` is set.
    ``shards``/``shards_uri``: the prepare stage's shards, downloaded or read straight from their
    location (``cluster.shards``).
    """
    from mushroom import console, image_identity, stages, tracking

    console.setup_stage_logging("train", model_config.get("model_name"))
    image_identity.record_image(model, wandb)
    with tracking.runs_in(wandb.path, wandb.metadata):
        result = stages.train(dataset.path, splits.path, hyperparameters.path, model_config, seed, model.path,
                              shards_dir=shards.path if shards is not None else shards_uri)
    model.metadata["framework"] = "keras"
    for key, value in result.items():
        metrics.log_metric(key, value)
