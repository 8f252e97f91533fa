from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compare_models(evaluations: Input[List[Artifact]], bundles: Input[List[Model]], comparison: Output[Markdown],
                   best_bundle: Output[Model], best_evaluation: Output[Artifact]):
    """One table of every configuration, float vs int8; pick the best bundle."""
    from pathlib import Path

    from mushroom import stages

    stages.setup_logging()
    text = stages.compare([e.path for e in evaluations], [b.path for b in bundles],
                          best_bundle.path, best_evaluation.path)
    Path(comparison.path).write_text(text, encoding="utf-8")
