"""KFP components: one per stage, thin typed wrappers around ``mushroom.stages``.

Every component runs in a project image (``components.image``: the GPU one for stages that request
accelerators, else the CPU one) with the ``mushroom`` package and kfp preinstalled, so nothing is
pip-installed at run time.
"""

from components.acquire import acquire_dataset
from components.compare import compare_models
from components.evaluate import evaluate_model
from components.prepare import prepare_shards
from components.publish import publish_bundle
from components.quantize import quantize_to_bundle
from components.split import split_dataset
from components.train import train_classifier
from components.tune import plan_trials, select_trials, train_trials

__all__ = [
    "acquire_dataset",
    "compare_models",
    "evaluate_model",
    "plan_trials",
    "prepare_shards",
    "publish_bundle",
    "quantize_to_bundle",
    "select_trials",
    "split_dataset",
    "train_classifier",
    "train_trials",
]
