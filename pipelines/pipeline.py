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
from components.image import project_images
from mushroom.config import DEFAULT_GPU_TOLERATIONS, ClusterConfig, ImagesConfig, RunConfig

PIPELINE_NAME = "quantized-mushroom"


RUN_AS_USER = 10001  # the image's non-root user
SETTINGS_CONFIG_MAP = "mushroom-settings"  # manifests/base/runner; optional keys per overlay
SETTINGS_ENV = {key: key for key in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "WANDB_MODE")}
SCRATCH_PATH = "/tmp"  # the stages' temporary files (keras-tuner trials, SavedModel export, publish staging)


def _schedule(task: dsl.PipelineTask, stage: str, cluster: ClusterConfig, images: ImagesConfig,
              gpu_node_selector, gpu_tolerations) -> None:
    """Apply ``cluster.stages.<stage>`` to ``task``: image, resources, accelerators, scratch, timeout,
    retries, caching; then run it as non-root with the cluster's settings as environment."""
    schedule = cluster.stages.of(stage)
    task.set_display_name(stage).set_container_image(images.for_stage(schedule))
    task.set_cpu_request(schedule.cpu_request).set_memory_request(schedule.memory_request)
    if schedule.cpu_limit is not None:
        task.set_cpu_limit(schedule.cpu_limit)
    if schedule.memory_limit is not None:
        task.set_memory_limit(schedule.memory_limit)
    if schedule.accelerator_count:
        task.set_accelerator_type(cluster.accelerator_type).set_accelerator_limit(schedule.accelerator_count)
        kubernetes.add_node_selector_json(task, gpu_node_selector)
        kubernetes.add_toleration_json(task, gpu_tolerations)
    if schedule.scratch_size is not None:
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH_PATH,
                                   size_limit=schedule.scratch_size)
    if schedule.timeout_s is not None:
        kubernetes.set_timeout(task, schedule.timeout_s)  # KFP on Kubernetes only; Vertex ignores it
    if schedule.retries:
        backoff = cluster.retry_backoff
        task.set_retry(num_retries=schedule.retries, backoff_duration=f"{backoff.duration_s}s",
                       backoff_factor=backoff.factor, backoff_max_duration=f"{backoff.max_duration_s}s")
    task.set_caching_options(schedule.caching)
    kubernetes.set_security_context(task, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER, run_as_non_root=True)
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, SETTINGS_ENV, optional=True)


def build_pipeline(cluster: ClusterConfig | None = None, images: ImagesConfig | None = None):
    """Return the pipeline function.

    Args:
        cluster: Scheduling of every stage (the configuration's ``cluster:``); default: the
            schema's defaults.
        images: The CPU and GPU images; default: from the environment (:mod:`components.image`).

    Raises:
        ConfigError: ``MUSHROOM_IMAGE`` or ``MUSHROOM_GPU_IMAGE`` is not pinned.
    """
    cluster = cluster or ClusterConfig()
    images = images or project_images()

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, int8-quantize and evaluate a mushroom classifier.")
    def mushroom_pipeline(
        dataset_config: dict,
        model_configs: list,
        split_config: dict = {"train": 0.7, "val": 0.15, "test": 0.15},  # noqa: B006 - KFP default value
        seed: int = 42,
        publish_destination: str = "outputs/published",
        publish_gate: dict = {},  # noqa: B006 - KFP default value
        gpu_node_selector: dict = {},  # noqa: B006 - KFP default value
        gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,  # noqa: B006 - KFP default value
    ) -> str:
        def schedule(task: dsl.PipelineTask, stage: str) -> None:
            _schedule(task, stage, cluster, images, gpu_node_selector, gpu_tolerations)

        acquire = acquire_dataset(dataset_config=dataset_config, seed=seed)
        schedule(acquire, "acquire")
        split = split_dataset(dataset=acquire.outputs["dataset"], split_config=split_config, seed=seed)
        schedule(split, "split")
        dataset, splits = acquire.outputs["dataset"], split.outputs["splits"]

        # The loop body is mushroom.config.LOOP_STAGES (the node-fit arithmetic counts on it).
        with dsl.ParallelFor(model_configs, parallelism=cluster.parallelism, name="per-model") as config:
            tune = tune_model(dataset=dataset, splits=splits, model_config=config, seed=seed)
            schedule(tune, "tune")
            train = train_classifier(dataset=dataset, splits=splits, hyperparameters=tune.outputs["hyperparameters"],
                                     model_config=config, seed=seed)
            schedule(train, "train")
            quantize = quantize_to_bundle(dataset=dataset, splits=splits, model=train.outputs["model"],
                                          model_config=config, seed=seed)
            schedule(quantize, "quantize")
            evaluate = evaluate_model(dataset=dataset, splits=splits, model=train.outputs["model"],
                                      bundle=quantize.outputs["bundle"])
            schedule(evaluate, "evaluate")

        compare = compare_models(evaluations=dsl.Collected(evaluate.outputs["evaluation"]),
                                 bundles=dsl.Collected(evaluate.outputs["calibrated_bundle"]))
        schedule(compare, "compare")
        publish = publish_bundle(bundle=compare.outputs["best_bundle"], evaluation=compare.outputs["best_evaluation"],
                                 destination=publish_destination, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                 job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                 created=dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER, gate=publish_gate)
        schedule(publish, "publish")
        return publish.output

    return mushroom_pipeline


def pipeline_for(config: RunConfig):
    """The pipeline function with the cluster settings of ``config`` and the images of the environment."""
    return build_pipeline(config.cluster)


def pipeline_arguments(config: RunConfig) -> dict[str, Any]:
    """The pipeline's parameters from a validated configuration."""
    return {
        "dataset_config": config.dataset.model_dump(mode="json", exclude_none=True),
        "model_configs": [m.model_dump(mode="json", exclude_none=True) for m in config.models],
        "split_config": config.split.model_dump(mode="json", exclude_none=True),
        "seed": config.seed,
        "publish_destination": config.publish.destination,
        "publish_gate": config.publish.gate.model_dump(mode="json", exclude_none=True),
        "gpu_node_selector": dict(config.cluster.gpu_node_selector),
        "gpu_tolerations": [dict(t) for t in config.cluster.gpu_tolerations],
    }
