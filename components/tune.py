"""The tune stage as tasks: plan the trials, train them in up to ``trial_parallelism`` tasks at
once, select after each round.

A trial task's loop item carries its model configuration beside its trials (``{"model_config":
..., "trials": [...]}``): kfp 2.17's local runner resolves an outer loop's item inside a nested
loop to the inner loop's item, so the trial task reads nothing from the outer loop.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_trials(model_config: dict, seed: int, tasks: int, plan: Output[Artifact]) -> list:
    """Sample round 1's trials with keras-tuner (seeded), dealt to at most ``tasks`` trial tasks."""
    from mushroom import console, image_identity, stages

    console.setup_stage_logging("tune", model_config.get("model_name"))
    image_identity.record_image(plan)
    return [{"model_config": model_config, "trials": share}
            for share in stages.tune_plan(model_config, seed, plan.path, tasks=tasks)]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_trials(dataset: Input[Dataset], splits: Input[Dataset], share: dict, seed: int,
                 results: Output[Artifact], metrics: Output[Metrics], shards: Input[Dataset] = None,
                 shards_uri: str = ""):
    """Train this task's share of a round (``share``: its model configuration and trials) for the
    round's epochs, one after the other; each one's score is its best validation accuracy.
    ``shards``/``shards_uri``: the prepare stage's shards, downloaded or read straight from their
    location (``cluster.shards``)."""
    from mushroom import console, image_identity, stages

    model_config = share["model_config"]
    console.setup_stage_logging("tune", model_config.get("model_name"))
    image_identity.record_image(results)
    for key, value in stages.tune_trials(dataset.path, splits.path, model_config, share["trials"], seed,
                                         results.path,
                                         shards_dir=shards.path if shards is not None else shards_uri).items():
        metrics.log_metric(key, value)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_trials(results: Input[list[Artifact]], previous: Input[Artifact], model_config: dict, tasks: int,
                  hyperparameters: Output[Artifact], metrics: Output[Metrics]) -> list:
    """Rank a round's trials: the best fraction continue (successive halving); the best so far is written
    as the hyperparameters train reads. Returns the next round's trials dealt to at most ``tasks``
    tasks (none after the last round)."""
    from mushroom import console, image_identity, stages

    console.setup_stage_logging("tune", model_config.get("model_name"))
    image_identity.record_image(hyperparameters)
    next_trials, shown = stages.tune_select([r.path for r in results], previous.path, model_config,
                                            hyperparameters.path, tasks=tasks)
    for key, value in shown.items():
        metrics.log_metric(key, value)
    return [{"model_config": model_config, "trials": share} for share in next_trials]
