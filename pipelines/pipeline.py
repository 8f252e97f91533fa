"""The quantized-mushroom pipeline.

acquire -> split -> prepare -> ParallelFor(model configurations:
    tune [plan -> per round: ParallelFor(trial tasks) -> select] -> train -> quantize -> evaluate)
-> Collected -> compare -> publish
"""

# No `from __future__ import annotations`: KFP reads the parameter annotations as types.

from typing import Any

from kfp import dsl, kubernetes

from components import (
    acquire_dataset,
    compare_models,
    evaluate_model,
    plan_trials,
    prepare_shards,
    publish_bundle,
    quantize_to_bundle,
    select_trials,
    split_dataset,
    train_classifier,
    train_trials,
)
from components.image import project_images
from mushroom.cluster import DEFAULT_GPU_TOLERATIONS, ClusterConfig, ImagesConfig, vertex_problems
from mushroom.config import ConfigError, RunConfig
from mushroom.image_identity import image_environment
from mushroom.runtime import ACCELERATOR_ENV, ACCELERATORS_ENV

PIPELINE_NAME = "quantized-mushroom"


RUN_AS_USER = 10001  # the image's non-root user
SETTINGS_CONFIG_MAP = "mushroom-settings"  # manifests/base/runner; optional keys per overlay
SETTINGS_ENV = {key: key for key in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "WANDB_MODE")}
# The W&B key, where the cluster has one: a task's offline runs are then synced when it ends.
WANDB_SECRET, WANDB_SECRET_ENV = "wandb", {"api_key": "WANDB_API_KEY"}
SCRATCH_PATH = "/tmp"  # the stages' temporary files (keras-tuner trials, SavedModel export, publish staging)


TARGETS = ("kfp", "vertex")  # Kubeflow Pipelines on Kubernetes; Vertex AI Pipelines


# The tune stage's bookkeeping tasks (sampling, selecting) need no accelerator and little memory:
# they run with the compare stage's schedule; its trial tasks with the tune stage's.
TUNE_TASKS = {"tune-plan": "compare", "tune-trials": "tune", "tune-select": "compare"}


def _schedule_common(task: dsl.PipelineTask, stage: str, cluster: ClusterConfig, images: ImagesConfig) -> None:
    """What both targets read: display name, image, retries, caching; on a stage that requests
    accelerators, the count and ``accelerator`` as environment, which the stage checks against
    the GPUs TensorFlow sees before any work (:func:`mushroom.runtime.check_accelerators`); the
    image's reference (and digest where pinned by one) as environment, which each task records
    in its outputs (:mod:`mushroom.image_identity`).

    ``stage`` is a stage of :data:`mushroom.stage_names.STAGES` or a task of :data:`TUNE_TASKS`."""
    schedule = cluster.stages.of(TUNE_TASKS.get(stage, stage))
    task.set_display_name(stage).set_container_image(images.for_stage(schedule))
    for name, value in image_environment(images.for_stage(schedule)).items():
        task.set_env_variable(name, value)
    if schedule.accelerator_count:
        task.set_env_variable(ACCELERATORS_ENV, str(schedule.accelerator_count))
        task.set_env_variable(ACCELERATOR_ENV, schedule.accelerator)
    if schedule.retries:
        backoff = cluster.retry_backoff
        task.set_retry(num_retries=schedule.retries, backoff_duration=f"{backoff.duration_s}s",
                       backoff_factor=backoff.factor, backoff_max_duration=f"{backoff.max_duration_s}s")
    task.set_caching_options(schedule.caching)


def _schedule_kfp(task: dsl.PipelineTask, stage: str, cluster: ClusterConfig, images: ImagesConfig,
                  gpu_node_selector, gpu_tolerations) -> None:
    """Apply ``cluster.stages.<stage>`` to ``task`` for Kubernetes: resources, accelerators, GPU node
    selector and tolerations, scratch, timeout; then run it as non-root with the cluster's settings
    as environment."""
    _schedule_common(task, stage, cluster, images)
    schedule = cluster.stages.of(TUNE_TASKS.get(stage, stage))
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
        kubernetes.set_timeout(task, schedule.timeout_s)
    kubernetes.set_security_context(task, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER, run_as_non_root=True)
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, SETTINGS_ENV, optional=True)
    kubernetes.use_secret_as_env(task, WANDB_SECRET, WANDB_SECRET_ENV, optional=True)


def _schedule_vertex(task: dsl.PipelineTask, stage: str, cluster: ClusterConfig, images: ImagesConfig) -> None:
    """Apply ``cluster.stages.<stage>`` to ``task`` for Vertex AI, which picks each step's machine
    from its limits: the limit, or the request where no limit is set; accelerators by Vertex's
    enum (``cluster.vertex.accelerator_type``). No Kubernetes platform config."""
    _schedule_common(task, stage, cluster, images)
    schedule = cluster.stages.of(TUNE_TASKS.get(stage, stage))
    task.set_cpu_request(schedule.cpu_request).set_memory_request(schedule.memory_request)
    task.set_cpu_limit(schedule.cpu_limit or schedule.cpu_request)
    task.set_memory_limit(schedule.memory_limit or schedule.memory_request)
    if schedule.accelerator_count:
        task.set_accelerator_type(cluster.vertex.accelerator_type).set_accelerator_limit(schedule.accelerator_count)


def _tune(schedule, dataset, splits, shards: dict, config, seed, rounds: int, trial_parallelism: int):
    """The tune stage as tasks: plan, then per round a nested loop of up to ``trial_parallelism``
    trial tasks (each trains its share of the round's trials) and a selection that reads the
    round's results (``rounds`` is compiled in; every configuration has it). Returns the last
    selection, whose ``hyperparameters`` train reads."""
    plan = plan_trials(model_config=config, seed=seed, tasks=trial_parallelism)
    schedule(plan, "tune-plan")
    shares, previous = plan.outputs["Output"], plan.outputs["plan"]
    for round_number in range(1, rounds + 1):
        with dsl.ParallelFor(shares, parallelism=trial_parallelism, name=f"round-{round_number}-trials") as share:
            # The share carries its model configuration: nothing is read from the outer loop (components.tune).
            task = train_trials(dataset=dataset, splits=splits, share=share, seed=seed, **shards)
            schedule(task, "tune-trials")
        select = select_trials(results=dsl.Collected(task.outputs["results"]), previous=previous,
                               model_config=config, tasks=trial_parallelism)
        schedule(select, "tune-select")
        shares, previous = select.outputs["Output"], select.outputs["hyperparameters"]
    return select


def _compose(schedule, dataset_config, model_configs, split_config, seed, publish_destination, publish_gate,
             parallelism: int, rounds: int = 1, trial_parallelism: int = 1, shards_access: str = "stream") -> str:
    """The run's DAG, the same for every target; ``schedule(task, stage)`` applies the target's settings."""
    acquire = acquire_dataset(dataset_config=dataset_config, seed=seed)
    schedule(acquire, "acquire")
    split = split_dataset(dataset=acquire.outputs["dataset"], split_config=split_config, seed=seed)
    schedule(split, "split")
    dataset, splits = acquire.outputs["dataset"], split.outputs["splits"]
    # Every photo decoded once, for every model input size of the run; tune, train, quantize and
    # evaluate read these.
    prepare = prepare_shards(dataset=dataset, splits=splits, model_configs=model_configs, seed=seed)
    schedule(prepare, "prepare")
    # Streamed: the later tasks get the shards' location and read their size and splits from it;
    # downloaded: the artifact, which KFP's launcher copies whole into each task (cluster.shards).
    shards = {"shards_uri": prepare.outputs["Output"]} if shards_access == "stream" else \
        {"shards": prepare.outputs["shards"]}

    # The loop body is mushroom.stage_names.LOOP_STAGES (the node-fit arithmetic counts on it); tune
    # is itself a nested loop of up to `trial_parallelism` trial tasks per round.
    with dsl.ParallelFor(model_configs, parallelism=parallelism, name="per-model") as config:
        tune = _tune(schedule, dataset, splits, shards, config, seed, rounds, trial_parallelism)
        train = train_classifier(dataset=dataset, splits=splits, hyperparameters=tune.outputs["hyperparameters"],
                                 model_config=config, seed=seed, **shards)
        schedule(train, "train")
        quantize = quantize_to_bundle(dataset=dataset, splits=splits, model=train.outputs["model"],
                                      model_config=config, seed=seed, **shards)
        schedule(quantize, "quantize")
        evaluate = evaluate_model(dataset=dataset, splits=splits, model=train.outputs["model"],
                                  bundle=quantize.outputs["bundle"], **shards)
        schedule(evaluate, "evaluate")

    compare = compare_models(evaluations=dsl.Collected(evaluate.outputs["evaluation"]),
                             bundles=dsl.Collected(evaluate.outputs["calibrated_bundle"]))
    schedule(compare, "compare")
    publish = publish_bundle(bundle=compare.outputs["best_bundle"], evaluation=compare.outputs["best_evaluation"],
                             destination=publish_destination, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                             job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                             created=dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER, gate=publish_gate)
    schedule(publish, "publish")
    return publish.outputs["Output"]


_DESCRIPTION = "Train, int8-quantize and evaluate a mushroom classifier."
_SPLIT_DEFAULT = {"train": 0.7, "val": 0.15, "test": 0.15}


def build_pipeline(cluster: ClusterConfig | None = None, images: ImagesConfig | None = None, target: str = "kfp",
                   tune_rounds: int = 1):
    """Return the pipeline function for ``target``.

    Args:
        cluster: Scheduling of every stage (the configuration's ``cluster:``); default: the
            schema's defaults.
        images: The CPU and GPU images; default: from the environment (:mod:`components.image`).
        target: ``"kfp"`` (Kubernetes: node selectors, tolerations, scratch volumes, timeouts,
            security context, settings from a ConfigMap; GPU scheduling as pipeline parameters)
            or ``"vertex"`` (one YAML document: Vertex accelerator enums, limits from the schema).
        tune_rounds: Rounds of trial tasks (successive halving; the configurations' ``tune.rounds``).

    Raises:
        ConfigError: ``MUSHROOM_IMAGE`` or ``MUSHROOM_GPU_IMAGE`` is not pinned, or a stage asks
            Vertex AI for more than its largest machine.
    """
    cluster = cluster or ClusterConfig()
    images = images or project_images()
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}; allowed: {list(TARGETS)}")

    if target == "vertex":
        problems = vertex_problems(cluster)
        if problems:
            raise ConfigError("cluster: " + "; ".join(problems))

        @dsl.pipeline(name=PIPELINE_NAME, description=_DESCRIPTION)
        def mushroom_pipeline_vertex(
            dataset_config: dict,
            model_configs: list,
            split_config: dict = _SPLIT_DEFAULT,  # noqa: B006 - KFP default value
            seed: int = 42,
            publish_destination: str = "outputs/published",
            publish_gate: dict = {},  # noqa: B006 - KFP default value
        ) -> str:
            return _compose(lambda task, stage: _schedule_vertex(task, stage, cluster, images), dataset_config,
                            model_configs, split_config, seed, publish_destination, publish_gate, cluster.parallelism,
                            tune_rounds, cluster.trial_parallelism, cluster.shards)

        return mushroom_pipeline_vertex

    @dsl.pipeline(name=PIPELINE_NAME, description=_DESCRIPTION)
    def mushroom_pipeline(
        dataset_config: dict,
        model_configs: list,
        split_config: dict = _SPLIT_DEFAULT,  # noqa: B006 - KFP default value
        seed: int = 42,
        publish_destination: str = "outputs/published",
        publish_gate: dict = {},  # noqa: B006 - KFP default value
        gpu_node_selector: dict = {},  # noqa: B006 - KFP default value
        gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,  # noqa: B006 - KFP default value
    ) -> str:
        def schedule(task: dsl.PipelineTask, stage: str) -> None:
            _schedule_kfp(task, stage, cluster, images, gpu_node_selector, gpu_tolerations)

        return _compose(schedule, dataset_config, model_configs, split_config, seed, publish_destination,
                        publish_gate, cluster.parallelism, tune_rounds, cluster.trial_parallelism, cluster.shards)

    return mushroom_pipeline


def pipeline_for(config: RunConfig, target: str = "kfp"):
    """The pipeline function for ``target`` with the cluster settings of ``config`` and the images
    of the environment."""
    return build_pipeline(config.cluster, target=target, tune_rounds=config.tune_rounds)


def pipeline_arguments(config: RunConfig, target: str = "kfp") -> dict[str, Any]:
    """The pipeline's parameters from a validated configuration (Vertex: no GPU scheduling ones)."""
    arguments = {
        "dataset_config": config.dataset.model_dump(mode="json", exclude_none=True),
        "model_configs": [m.model_dump(mode="json", exclude_none=True) for m in config.models],
        "split_config": config.split.model_dump(mode="json", exclude_none=True),
        "seed": config.seed,
        "publish_destination": config.publish.destination,
        "publish_gate": config.publish.gate.model_dump(mode="json", exclude_none=True),
    }
    if target == "kfp":
        arguments["gpu_node_selector"] = dict(config.cluster.gpu_node_selector)
        arguments["gpu_tolerations"] = [dict(t) for t in config.cluster.gpu_tolerations]
    return arguments
