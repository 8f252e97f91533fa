from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_shards(dataset: Input[Dataset], splits: Input[Dataset], model_configs: list, seed: int,
                   shards: Output[Dataset], metrics: Output[Metrics]) -> str:
    """Decode every photo once for every model input size of the run into checksummed shards, and
    cache the pooled features of every frozen pretrained backbone beside them; return the shards'
    location (``gs://...`` on a cluster), where the later tasks can read them without a download."""
    from mushroom import console, image_identity, stages

    console.setup_stage_logging("prepare")
    image_identity.record_image(shards)
    for key, value in stages.prepare(dataset.path, splits.path, model_configs, shards.path, seed).items():
        metrics.log_metric(key, value)
    return shards.uri
