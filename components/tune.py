"""The tune stage as tasks: plan the trials, train each in its own task, select after each round."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_trials(model_config: dict, seed: int, plan: Output[Artifact]) -> list:
    """Sample round 1's trials with keras-tuner (seeded): one task per trial follows."""
    from mushroom import console, stages

    console.setup_stage_logging("tune", model_config.get("model_name"))
    return stages.tune_plan(model_config, seed, plan.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_trial(dataset: Input[Dataset], splits: Input[Dataset], shards: Input[Dataset], model_config: dict,
                trial: dict, seed: int, result: Output[Artifact], metrics: Output[Metrics]):
    """Train one trial's hyperparameters for its round's epochs; its score is the best validation accuracy."""
    from mushroom import console, stages

    console.setup_stage_logging("tune", model_config.get("model_name"))
    for key, value in stages.tune_trial(dataset.path, splits.path, model_config, trial, seed, result.path,
                                        shards_dir=shards.path).items():
        metrics.log_metric(key, value)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_trials(results: Input[list[Artifact]], previous: Input[Artifact], model_config: dict,
                  hyperparameters: Output[Artifact], metrics: Output[Metrics]) -> list:
    """Rank a round's trials: the best fraction continue (successive halving); the best so far is written
    as the hyperparameters train reads. Returns the next round's trials (none after the last)."""
    from mushroom import console, stages

    console.setup_stage_logging("tune", model_config.get("model_name"))
    next_trials, shown = stages.tune_select([r.path for r in results], previous.path, model_config,
                                            hyperparameters.path)
    for key, value in shown.items():
        metrics.log_metric(key, value)
    return next_trials
