from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_model(dataset: Input[Dataset], splits: Input[Dataset], model: Input[Model],
                   bundle: Input[Model], evaluation: Output[Artifact], calibrated_bundle: Output[Model],
                   metrics: Output[Metrics], confusion: Output[ClassificationMetrics],
                   edibility_roc: Output[ClassificationMetrics], report: Output[HTML], summary: Output[Markdown],
                   wandb: Output[Artifact], shards: Input[Dataset] = None, shards_uri: str = ""):
    """Evaluate Keras and every TFLite variant: species, edibility safety, calibration, size and CPU latency.

    Fits the temperature and edible threshold per variant on the validation split and outputs the
    bundle with that calibration; the confusion matrix and the ROC of P(edible) are those of the
    bundle's default variant (the one ``identify`` uses). ``wandb``: the W&B run (metrics, plots,
    report, the bundle), offline files; synced when ``WANDB_API_KEY`` is set. ``shards``/``shards_uri``:
    the prepare stage's shards, downloaded or read straight from their location (``cluster.shards``).
    """
    import shutil
    from pathlib import Path

    from mushroom import console, image_identity, stages, tracking
    from mushroom.report import REPORT, SUMMARY

    console.setup_stage_logging("evaluate", console.configuration_of_bundle(bundle.path))
    image_identity.record_image(evaluation, wandb)
    with tracking.runs_in(wandb.path, wandb.metadata):
        result = stages.evaluate(dataset.path, splits.path, model.path, bundle.path, evaluation.path,
                                 calibrated_bundle.path,
                                 shards_dir=shards.path if shards is not None else shards_uri)
    shown = stages.evaluation_outputs(result, calibrated_bundle.path)
    for key, value in shown.metrics.items():
        metrics.log_metric(key, value)
    confusion.log_confusion_matrix(shown.species, shown.confusion_matrix)
    if shown.roc:  # thresholds already clamped to <= 1
        edibility_roc.log_roc_curve(shown.roc.fpr, shown.roc.tpr, shown.roc.threshold)
    shutil.copyfile(Path(evaluation.path) / REPORT, report.path)
    shutil.copyfile(Path(evaluation.path) / SUMMARY, summary.path)
