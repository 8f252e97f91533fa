from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def quantize_to_bundle(dataset: Input[Dataset], splits: Input[Dataset], model: Input[Model], model_config: dict,
                       seed: int, bundle: Output[Model], metrics: Output[Metrics], shards: Input[Dataset] = None,
                       shards_uri: str = ""):
    """Convert to TFLite float32 and full-integer int8; write the model bundle.

    ``shards``/``shards_uri``: the prepare stage's shards, downloaded as an input artifact or read
    straight from its location (``cluster.shards``); only this task's size and splits are read."""
    from mushroom import console, image_identity, stages

    console.setup_stage_logging("quantize", model_config.get("model_name"))
    image_identity.record_image(bundle)
    result = stages.quantize(dataset.path, splits.path, model.path, model_config, seed, bundle.path,
                             shards_dir=shards.path if shards is not None else shards_uri)
    bundle.metadata["framework"] = "tflite"
    for key, value in result.items():
        metrics.log_metric(key, value)
