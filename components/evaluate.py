from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_model(dataset: Input[Dataset], splits: Input[Dataset], model: Input[Model], bundle: Input[Model],
                   evaluation: Output[Artifact], metrics: Output[Metrics]):
    """Top-1/top-5 on the test split for Keras, TFLite float32 and int8; model sizes."""
    from mushroom import stages

    stages.setup_logging()
    result = stages.evaluate(dataset.path, splits.path, model.path, bundle.path, evaluation.path)
    for key, value in stages.flat_metrics(result).items():
        metrics.log_metric(key, value)
