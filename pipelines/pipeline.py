"""The quantized-mushroom pipeline.

acquire -> split -> ParallelFor(model configurations: tune -> train -> quantize -> evaluate)
-> Collected -> compare -> publish
"""

# No `from __future__ import annotations`: KFP reads the parameter annotations as types.

from typing import Any

from kfp import dsl, kubernetes

from components import (
    acquire_dataset,
    compare_models,
    evaluate_model,
    publish_bundle,
    quantize_to_bundle,
    split_dataset,
    train_classifier,
    tune_model,
)
from mushroom.config import DEFAULT_GPU_TOLERATIONS, RunConfig

PIPELINE_NAME = "quantized-mushroom"


RUN_AS_USER = 10001  # the image's non-root user
SETTINGS_CONFIG_MAP = "mushroom-settings"  # manifests/base/runner; optional keys per overlay
SETTINGS_ENV = {key: key for key in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "WANDB_MODE")}


def _request_gpu(task: dsl.PipelineTask, accelerator_type: str, count: int, node_selector, tolerations) -> None:
    task.set_cpu_request("4").set_memory_request("16G")
    if count > 0:
        task.set_accelerator_type(accelerator_type).set_accelerator_limit(count)
        kubernetes.add_node_selector_json(task, node_selector)
        kubernetes.add_toleration_json(task, tolerations)


def _configure(*tasks: dsl.PipelineTask) -> None:
    """Non-root, and the cluster's settings (e.g. the GCS emulator on kind) as environment."""
    for task in tasks:
        kubernetes.set_security_context(task, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER,
                                        run_as_non_root=True)
        kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, SETTINGS_ENV, optional=True)


def build_pipeline(parallelism: int = 4, accelerator_type: str = "nvidia.com/gpu", accelerator_count: int = 1):
    """Return the pipeline function.

    Args:
        parallelism: How many model configurations run at once (ParallelFor limit).
        accelerator_type: Accelerator resource that tune and train request.
        accelerator_count: Accelerators per tune/train task (0 for CPU-only clusters).
    """

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, int8-quantize and evaluate a mushroom classifier.")
    def mushroom_pipeline(
        dataset_config: dict,
        model_configs: list,
        split_config: dict = {"train": 0.7, "val": 0.15, "test": 0.15},  # noqa: B006 - KFP default value
        seed: int = 42,
        publish_destination: str = "outputs/published",
        gpu_node_selector: dict = {},  # noqa: B006 - KFP default value
        gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,  # noqa: B006 - KFP default value
    ) -> str:
        acquire = acquire_dataset(dataset_config=dataset_config, seed=seed).set_retry(num_retries=2)
        acquire.set_display_name("acquire")
        split = split_dataset(dataset=acquire.outputs["dataset"], split_config=split_config, seed=seed)
        split.set_display_name("split")
        dataset, splits = acquire.outputs["dataset"], split.outputs["splits"]

        with dsl.ParallelFor(model_configs, parallelism=parallelism, name="per-model") as config:
            tune = tune_model(dataset=dataset, splits=splits, model_config=config, seed=seed)
            _request_gpu(tune.set_display_name("tune"), accelerator_type, accelerator_count,
                         gpu_node_selector, gpu_tolerations)
            train = train_classifier(dataset=dataset, splits=splits, hyperparameters=tune.outputs["hyperparameters"],
                                     model_config=config, seed=seed)
            _request_gpu(train.set_display_name("train"), accelerator_type, accelerator_count,
                         gpu_node_selector, gpu_tolerations)
            quantize = quantize_to_bundle(dataset=dataset, splits=splits, model=train.outputs["model"],
                                      model_config=config, seed=seed)
            quantize.set_display_name("quantize").set_cpu_request("2").set_memory_request("8G")
            evaluate = evaluate_model(dataset=dataset, splits=splits, model=train.outputs["model"],
                                      bundle=quantize.outputs["bundle"])
            evaluate.set_display_name("evaluate").set_cpu_request("2").set_memory_request("8G")
            _configure(tune, train, quantize, evaluate)

        compare = compare_models(evaluations=dsl.Collected(evaluate.outputs["evaluation"]),
                                 bundles=dsl.Collected(evaluate.outputs["calibrated_bundle"]))
        compare.set_display_name("compare")
        publish = publish_bundle(bundle=compare.outputs["best_bundle"], evaluation=compare.outputs["best_evaluation"],
                                 destination=publish_destination, run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        publish.set_display_name("publish").set_retry(num_retries=2).set_caching_options(False)
        _configure(acquire, split, compare, publish)
        return publish.output

    return mushroom_pipeline


def pipeline_for(config: RunConfig):
    """The pipeline function with the cluster settings of ``config``."""
    return build_pipeline(config.cluster.parallelism, config.cluster.accelerator_type,
                          config.cluster.accelerator_count)


def pipeline_arguments(config: RunConfig) -> dict[str, Any]:
    """The pipeline's parameters from a validated configuration."""
    return {
        "dataset_config": config.dataset.model_dump(mode="json", exclude_none=True),
        "model_configs": [m.model_dump(mode="json", exclude_none=True) for m in config.models],
        "split_config": config.split.model_dump(mode="json", exclude_none=True),
        "seed": config.seed,
        "publish_destination": config.publish.destination,
        "gpu_node_selector": dict(config.cluster.gpu_node_selector),
        "gpu_tolerations": [dict(t) for t in config.cluster.gpu_tolerations],
    }
