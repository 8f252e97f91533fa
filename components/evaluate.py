from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_model(dataset: Input[Dataset], splits: Input[Dataset], model: Input[Model], bundle: Input[Model],
                   evaluation: Output[Artifact], calibrated_bundle: Output[Model], metrics: Output[Metrics]):
    """Evaluate Keras and the TFLite variants on the test split; output the calibrated bundle."""
    from mushroom import stages

    stages.setup_logging()
    result = stages.evaluate(dataset.path, splits.path, model.path, bundle.path, evaluation.path,
                             calibrated_bundle.path)
    for key, value in stages.flat_metrics(result).items():
        metrics.log_metric(key, value)
