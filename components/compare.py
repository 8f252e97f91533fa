from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compare_models(evaluations: Input[list[Artifact]], bundles: Input[list[Model]],
                   comparison: Output[Markdown], best_bundle: Output[Model],
                   best_evaluation: Output[Artifact], report: Output[HTML]):
    """Every configuration and variant side by side (float32 vs int8: accuracy, size, latency); pick one."""
    import shutil
    from pathlib import Path

    from mushroom import console, image_identity, stages
    from mushroom.report import COMPARISON_REPORT

    console.setup_stage_logging("compare")
    image_identity.record_image(comparison)
    text = stages.compare([e.path for e in evaluations], [b.path for b in bundles],
                          best_bundle.path, best_evaluation.path)
    Path(comparison.path).write_text(text, encoding="utf-8")
    shutil.copyfile(Path(best_evaluation.path) / COMPARISON_REPORT, report.path)
