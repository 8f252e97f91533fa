"""Scheduling on a cluster: the ``cluster:`` section of a run configuration.

Images, per-stage requests, limits, accelerators, scratch space, timeouts and retries, the
node a run must fit on, and Vertex AI's machine limits. Read by ``pipelines/pipeline.py``
when it compiles a run for a cluster and by ``components/image.py``; local runs (kfp.local)
ignore it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mushroom.config_base import ConfigError, Strict, format_errors
from mushroom.stage_names import LOOP_STAGES, STAGES

CPU_IMAGE_ENV = "MUSHROOM_IMAGE"
GPU_IMAGE_ENV = "MUSHROOM_GPU_IMAGE"
GPU_TAG_SUFFIX = "-gpu"  # the GPU image is IMAGE:TAG-gpu beside the CPU image IMAGE:TAG

# The quantity formats kfp 2.17's PipelineTask.set_cpu_request/set_memory_request accept (this
# library does not import kfp; compiling the shipped configs in the tests would show a drift).
_CPU_FORMAT = re.compile(r"([0-9]*[.])?[0-9]+m?")
_MEMORY_FORMAT = re.compile(r"([0-9]+)(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?")
_MEMORY_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}

# Accelerator resource names a stage may request. The GPU image runs CUDA TensorFlow, so NVIDIA only.
ACCELERATOR_TYPES = {"nvidia.com/gpu": "NVIDIA GPUs through the NVIDIA device plugin (GKE, kind/minikube "
                                       "with the NVIDIA container runtime)"}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
# Vertex AI Pipelines names accelerators by its AcceleratorType enum instead (a test checks these
# against google-cloud-aiplatform's). The NVIDIA GPUs that the GPU image's CUDA 12.5 TensorFlow runs
# on (compute capability 6.0 to 9.0): not the retired K80, not the Blackwell B200/GB200/RTX PRO 6000
# (CUDA 12.8 and newer), not TPUs.
VERTEX_ACCELERATOR_TYPES = ("NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_T4",
                            "NVIDIA_TESLA_A100", "NVIDIA_A100_80GB", "NVIDIA_L4", "NVIDIA_H100_80GB",
                            "NVIDIA_H100_MEGA_80GB", "NVIDIA_H200_141GB")
# The largest machine Vertex AI Pipelines gives one step (its machine-types page).
VERTEX_MAX_CPU = "96"
VERTEX_MAX_MEMORY = "624G"


_HOUR = 3600
# Sized for the demo on one 4-CPU / 8 GB node next to Kubeflow Pipelines (docs/clusters.md, "Why the
# demo fits"): at parallelism 1 the loop requests at most 1 CPU, 2560Mi (half the node's free memory;
# parallelism 2 would request all of it, no headroom). Memory requests cover
# the peak resident memory measured per stage in `make demo` (tune 2.0 GiB, train 1.7 GiB,
# evaluate 0.9 GiB, the rest under 0.1 GiB) except quantize's (2.9 GiB: 2.5Gi asked, 4Gi allowed).
DEFAULT_STAGES: dict[str, dict[str, Any]] = {
    "acquire": {"cpu_request": "500m", "cpu_limit": "2", "memory_request": "1Gi", "memory_limit": "2Gi",
                "scratch_size": "1Gi", "timeout_s": 6 * _HOUR, "retries": 2},
    "split": {"cpu_request": "250m", "cpu_limit": "1", "memory_request": "512Mi", "memory_limit": "1Gi",
              "scratch_size": "1Gi", "timeout_s": _HOUR},
    # Decodes every photo once per model input size; its scratch holds nothing big (the shards are
    # its output artifact), memory is bounded (photos are streamed).
    "prepare": {"cpu_request": "500m", "cpu_limit": "2", "memory_request": "1Gi", "memory_limit": "2Gi",
                "scratch_size": "1Gi", "timeout_s": 6 * _HOUR},
    "tune": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2304Mi", "memory_limit": "3Gi",
             "scratch_size": "4Gi", "timeout_s": 12 * _HOUR},
    "train": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2Gi", "memory_limit": "3Gi",
              "scratch_size": "4Gi", "timeout_s": 24 * _HOUR},
    "quantize": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2560Mi", "memory_limit": "4Gi",
                 "scratch_size": "4Gi", "timeout_s": 6 * _HOUR},
    "evaluate": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "1Gi", "memory_limit": "2Gi",
                 "scratch_size": "2Gi", "timeout_s": 6 * _HOUR},
    "compare": {"cpu_request": "250m", "cpu_limit": "1", "memory_request": "512Mi", "memory_limit": "1Gi",
                "scratch_size": "1Gi", "timeout_s": _HOUR},
    "publish": {"cpu_request": "250m", "cpu_limit": "1", "memory_request": "512Mi", "memory_limit": "1Gi",
                "scratch_size": "2Gi", "timeout_s": _HOUR, "retries": 2, "caching": False},
}


def cpu_millis(quantity: str) -> int:
    """A CPU quantity (``"500m"``, ``"2"``, ``"0.5"``) in millicores."""
    if not _CPU_FORMAT.fullmatch(quantity):
        raise ValueError(f"{quantity!r} is not a CPU quantity: a number of CPUs ('2', '0.5') or millicores ('500m')")
    if quantity.endswith("m"):
        return round(float(quantity[:-1]))
    return round(float(quantity) * 1000)


def memory_bytes(quantity: str) -> int:
    """A memory or storage quantity (``"512Mi"``, ``"8Gi"``, ``"16G"``) in bytes."""
    match = _MEMORY_FORMAT.fullmatch(quantity)
    if not match:
        raise ValueError(f"{quantity!r} is not a memory quantity: a whole number with an optional unit "
                         f"({', '.join(u for u in _MEMORY_UNITS if u)}), e.g. '512Mi' or '8Gi'")
    return int(match.group(1)) * _MEMORY_UNITS[match.group(2) or ""]


def _as_text(value: Any) -> Any:
    """YAML reads ``cpu: 4`` as a number; a quantity is a string."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _checked(parse):
    def check(value: str) -> str:
        parse(value)
        return value

    return check


CpuQuantity = Annotated[str, BeforeValidator(_as_text), AfterValidator(_checked(cpu_millis))]
MemoryQuantity = Annotated[str, BeforeValidator(_as_text), AfterValidator(_checked(memory_bytes))]


def _pinned_image(reference: str) -> str:
    if not re.fullmatch(r"[a-z0-9][\w.\-/:@]*", reference):
        raise ValueError(f"{reference!r} is not an image reference")
    name, _, digest = reference.partition("@")
    if digest:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"{reference!r}: a digest is 'sha256:' and 64 hex digits")
        return reference
    tag = name.rsplit("/", 1)[-1].partition(":")[2]  # a registry port (host:5000/...) is not a tag
    if not tag or tag == "latest":
        raise ValueError(f"{reference!r} must be pinned by a tag other than 'latest' or by a digest (@sha256:...)")
    return reference


PinnedImage = Annotated[str, AfterValidator(_pinned_image)]


class ImagesConfig(Strict):
    """The project's two images: stages that request accelerators run ``gpu``, the others ``cpu``.

    Read from the environment (:func:`parse_images`), which ``make compile``/``make submit`` set
    from ``IMAGE`` and ``TAG``: ``MUSHROOM_IMAGE=IMAGE:TAG``, and the GPU image ``IMAGE:TAG-gpu``
    unless ``MUSHROOM_GPU_IMAGE`` names it (needed when the CPU image is pinned by digest).
    """

    cpu: PinnedImage = Field(alias=CPU_IMAGE_ENV)
    gpu: PinnedImage | None = Field(None, alias=GPU_IMAGE_ENV, validate_default=True)

    @field_validator("gpu")
    @classmethod
    def _derive_gpu(cls, v: str | None, info: ValidationInfo) -> str | None:
        cpu = info.data.get("cpu")
        if v is not None or cpu is None:  # named, or the CPU image is wrong (its own error says so)
            return v
        if "@" in cpu:
            raise ValueError(f"{GPU_IMAGE_ENV} is required when {CPU_IMAGE_ENV} is pinned by digest ({cpu!r}): "
                             "a digest names one image and the GPU image has its own")
        return cpu + GPU_TAG_SUFFIX

    def for_stage(self, stage: StageSchedule) -> str:
        """The image ``stage`` runs: the GPU image when it requests accelerators."""
        return self.gpu if stage.accelerator_count else self.cpu

    def by_stage(self, stages: StagesConfig) -> dict[str, str]:
        """Stage name -> the image it runs, in pipeline order."""
        return {stage: self.for_stage(stages.of(stage)) for stage in STAGES}


def parse_images(environ: Mapping[str, str], default: str) -> ImagesConfig:
    """The two images from ``MUSHROOM_IMAGE`` (else ``default``) and ``MUSHROOM_GPU_IMAGE``.

    Raises:
        ConfigError: an image is not pinned (untagged, ``:latest``, malformed digest), or the CPU
            image is a digest and no GPU image is named; the message names the variable.
    """
    data = {CPU_IMAGE_ENV: environ.get(CPU_IMAGE_ENV) or default}
    if environ.get(GPU_IMAGE_ENV):
        data[GPU_IMAGE_ENV] = environ[GPU_IMAGE_ENV]
    try:
        return ImagesConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, "(image settings from the environment)")) from None


class StageSchedule(Strict):
    """How one stage's pod is scheduled on a cluster."""

    cpu_request: CpuQuantity = Field(description="CPUs the scheduler sets aside, e.g. '500m' or '2'")
    cpu_limit: CpuQuantity | None = Field(None, description="CPUs it may use (throttled above); none: no limit")
    memory_request: MemoryQuantity = Field(description="memory the scheduler sets aside, e.g. '2304Mi'")
    memory_limit: MemoryQuantity | None = Field(
        None, description="memory it may use (the pod is OOM-killed above); Vertex sizes machines from limits")
    scratch_size: MemoryQuantity | None = Field(
        None, description="size limit of the emptyDir mounted at /tmp (keras-tuner trials, SavedModel export, "
                          "publish staging); the pod is evicted above it. KFP 2.17 cannot set a container's "
                          "ephemeral-storage request or limit, so the scheduler does not count it")
    accelerator_count: int = Field(0, ge=0, le=8, description="accelerators of cluster.accelerator_type; "
                                                               "more than 0 runs the GPU image")
    accelerator: Literal["required", "optional"] = Field(
        "required", description="required: a stage with accelerator_count above 0 whose TensorFlow sees no GPU "
                                "stops at once (mushroom.runtime.check_accelerators); optional: it runs on CPU")
    timeout_s: int | None = Field(None, ge=60, description="the pod's activeDeadlineSeconds (KFP on Kubernetes)")
    retries: int = Field(0, ge=0, le=3, description="re-runs after a failure, with cluster.retry_backoff; a retry "
                                                    "cannot tell a preempted node from a bug, so keep it for stages "
                                                    "that talk to the network")
    caching: bool = Field(True, description="reuse a previous run's outputs for identical inputs")

    @model_validator(mode="after")
    def _requests_within_limits(self):
        for resource, parse in (("cpu", cpu_millis), ("memory", memory_bytes)):
            request, limit = getattr(self, f"{resource}_request"), getattr(self, f"{resource}_limit")
            if limit is not None and parse(request) > parse(limit):
                raise ValueError(f"{resource}_request {request} is above {resource}_limit {limit}")
        if self.accelerator == "optional" and not self.accelerator_count:
            raise ValueError("accelerator: optional needs accelerator_count above 0 (a stage without one runs on CPU)")
        return self


class StagesConfig(Strict):
    """Per-stage scheduling; a stage given in part keeps :data:`DEFAULT_STAGES` for the rest."""

    acquire: StageSchedule
    split: StageSchedule
    prepare: StageSchedule
    tune: StageSchedule
    train: StageSchedule
    quantize: StageSchedule
    evaluate: StageSchedule
    compare: StageSchedule
    publish: StageSchedule

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = {**data}
        for stage in STAGES:
            given = data.get(stage, {})
            merged[stage] = {**DEFAULT_STAGES[stage], **given} if isinstance(given, dict) else given
        return merged

    def of(self, stage: str) -> StageSchedule:
        """The schedule of ``stage`` (one of :data:`STAGES`)."""
        return getattr(self, stage)


class RetryBackoffConfig(Strict):
    """Waits between retries: ``duration_s``, times ``factor`` after each, for at most ``max_duration_s``."""

    duration_s: int = Field(60, ge=0)
    factor: float = Field(2.0, ge=1)
    max_duration_s: int = Field(3600, ge=1, description="retries stop this long after the first failure")


class NodeConfig(Strict):
    """One cluster node the run must fit: what it can allocate and what other pods on it request.

    The defaults are the demo target, one 4-CPU / 8 GB node (minikube ``--cpus=4 --memory=8g``,
    whose kubelet allocates about 7.5 GiB) that also runs Kubernetes' own pods, standalone
    Kubeflow Pipelines and the GCS emulator; docs/clusters.md lists what ``reserved_*``
    is made of and where each figure comes from.
    """

    cpu: CpuQuantity = "4"
    memory: MemoryQuantity = "7680Mi"
    ephemeral_storage: MemoryQuantity | None = Field(None, description="checked against scratch_size when given")
    accelerators: int = Field(0, ge=0)
    count: int = Field(1, ge=1, description="nodes like this one (a node pool's size): with fit: stage, the tune "
                                            "trials in flight at once must fit on them")
    reserved_cpu: CpuQuantity = Field("1800m", description="CPU requested by the other pods on the node")
    reserved_memory: MemoryQuantity = Field("2560Mi", description="memory requested by the other pods on the node")
    memory_headroom: float = Field(
        0.1, ge=0, lt=1, description="with fit: run, the share of the node's free memory (memory - reserved_memory) "
                                     "the run's peak requests leave unrequested: stages use more than they request "
                                     "(quantize's measured peak is above its request) and reserved_memory is an "
                                     "estimate")


class VertexConfig(Strict):
    """What the Vertex AI flavour of the pipeline asks for where Kubernetes names differ.

    Vertex sizes each step's machine from its CPU and memory limits (a stage without a limit is
    given its request as the limit) and ``accelerator_type`` for every stage with
    ``accelerator_count`` above 0. Node selectors, tolerations, scratch volumes and timeouts are
    Kubernetes settings and are not part of the Vertex flavour.
    """

    accelerator_type: str = "NVIDIA_L4"

    @field_validator("accelerator_type")
    @classmethod
    def _accelerator(cls, v: str) -> str:
        if v not in VERTEX_ACCELERATOR_TYPES:
            raise ValueError(f"Vertex AI accelerator {v!r} is not one the GPU image runs on; allowed: "
                             f"{list(VERTEX_ACCELERATOR_TYPES)}")
        return v


class ClusterConfig(Strict):
    """Scheduling on a cluster (images, requests, limits, accelerators, timeouts, retries, caching)."""

    parallelism: int = Field(1, ge=1, description="model configurations in flight at once")
    trial_parallelism: int = Field(1, ge=1, description="tune trial tasks in flight at once in each configuration "
                                                        "(1: one after the other)")
    shards: Literal["stream", "download"] = Field(
        "stream", description="how tune, train, quantize and evaluate get the prepare stage's shards: stream: read "
                              "the files of their size and splits straight from the pipeline root (gs://, or a "
                              "local folder); download: as an input artifact, which KFP's launcher copies whole "
                              "(a minio:// pipeline root, as on kind and minikube, cannot be streamed)")
    accelerator_type: str = Field("nvidia.com/gpu", description="the Kubernetes resource GPU stages request "
                                                                "(KFP); Vertex AI: vertex.accelerator_type")
    vertex: VertexConfig = VertexConfig()
    # e.g. {"cloud.google.com/gke-accelerator": "nvidia-l4"} on GKE; GPU stages only
    gpu_node_selector: dict[str, str] = Field(default_factory=dict)
    gpu_tolerations: list[dict[str, str]] = Field(default_factory=lambda: list(DEFAULT_GPU_TOLERATIONS))
    retry_backoff: RetryBackoffConfig = RetryBackoffConfig()
    stages: StagesConfig = Field(default_factory=lambda: StagesConfig())
    node: NodeConfig = NodeConfig()
    fit: Literal["run", "stage"] = Field(
        "run", description="run: the whole run's peak requests fit on the one node (kind, minikube); "
                           "stage: each stage fits on a node by itself (node pools, e.g. GKE)")

    @field_validator("accelerator_type")
    @classmethod
    def _accelerator(cls, v: str) -> str:
        if v not in ACCELERATOR_TYPES:
            hint = " (a Vertex AI accelerator: set it as cluster.vertex.accelerator_type)" \
                if v in VERTEX_ACCELERATOR_TYPES else ""
            raise ValueError(f"unknown accelerator {v!r}{hint}; allowed: {sorted(ACCELERATOR_TYPES)}")
        return v

    @field_validator("gpu_tolerations")
    @classmethod
    def _tolerations(cls, v: list[dict[str, str]]) -> list[dict[str, str]]:
        allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
        for i, t in enumerate(v):
            unknown = sorted(set(t) - allowed)
            if unknown:
                raise ValueError(f"toleration {i} has unknown keys {unknown}; allowed: {sorted(allowed)}")
            if t.get("operator", "Equal") not in ("Equal", "Exists"):
                raise ValueError(f"toleration {i}: operator must be 'Equal' or 'Exists'")
        return v

    @model_validator(mode="after")
    def _fits_the_node(self):
        problems = fit_problems(self)
        if problems:
            raise ValueError("does not fit its node: " + "; ".join(problems))
        return self


def vertex_problems(cluster: ClusterConfig) -> list[str]:
    """Why a stage cannot get a Vertex AI machine: a limit (or, without one, the request) above
    the largest machine Vertex gives a pipeline step."""
    problems = []
    for stage in STAGES:
        schedule = cluster.stages.of(stage)
        for resource, parse, largest in (("cpu", cpu_millis, VERTEX_MAX_CPU), ("memory", memory_bytes,
                                                                                VERTEX_MAX_MEMORY)):
            limit = getattr(schedule, f"{resource}_limit")
            field, asked = (f"{resource}_limit", limit) if limit else (f"{resource}_request",
                                                                        getattr(schedule, f"{resource}_request"))
            if parse(asked) > parse(largest):
                problems.append(f"stages.{stage}.{field} {asked} is more than Vertex AI's largest step machine "
                                f"({resource} {largest})")
    return problems


def stage_requests(schedule: StageSchedule) -> dict[str, int]:
    """What a stage asks of its node: ``cpu`` (millicores), ``memory`` and ``scratch`` (bytes), ``accelerators``."""
    return {"cpu": cpu_millis(schedule.cpu_request), "memory": memory_bytes(schedule.memory_request),
            "scratch": memory_bytes(schedule.scratch_size or "0"), "accelerators": schedule.accelerator_count}


def peak_requests(cluster: ClusterConfig) -> dict[str, int]:
    """The most a run asks of one node at once, in the units of :func:`stage_requests`.

    The stages before and after the loop run one at a time; inside it up to ``parallelism``
    configurations run, each at any of the loop's stages, so each resource counts ``parallelism``
    times its largest loop stage, where tune counts ``trial_parallelism`` times (its trial tasks).
    """
    def asked(stage: str) -> dict[str, int]:
        times = cluster.trial_parallelism if stage == "tune" else 1
        return {key: times * value for key, value in stage_requests(cluster.stages.of(stage)).items()}

    loop = [asked(stage) for stage in LOOP_STAGES]
    phases = [stage_requests(cluster.stages.of(s)) for s in STAGES if s not in LOOP_STAGES]
    phases.append({key: cluster.parallelism * max(a[key] for a in loop) for key in loop[0]})
    return {key: max(p[key] for p in phases) for key in phases[0]}


def node_free(node: NodeConfig) -> dict[str, int]:
    """What a node leaves the run, in the units of :func:`stage_requests`: CPU and memory beside
    its other pods, accelerators, and scratch where ``node.ephemeral_storage`` is given."""
    free = {"cpu": cpu_millis(node.cpu) - cpu_millis(node.reserved_cpu),
            "memory": memory_bytes(node.memory) - memory_bytes(node.reserved_memory),
            "accelerators": node.accelerators}
    if node.ephemeral_storage is not None:
        free["scratch"] = memory_bytes(node.ephemeral_storage)
    return free


def tasks_per_node(cluster: ClusterConfig, stage: str) -> int:
    """How many tasks of ``stage`` one node holds by their requests (:func:`node_free`)."""
    free, need = node_free(cluster.node), stage_requests(cluster.stages.of(stage))
    return min((free[key] // need[key] for key in free if need[key] > 0), default=0)


def _shown(key: str, value: int) -> str:
    return f"{value}m" if key == "cpu" else f"{value // 2**20}Mi" if key in ("memory", "scratch") else str(value)


def fit_problems(cluster: ClusterConfig) -> list[str]:
    """Why ``cluster``'s stages cannot be scheduled on ``cluster.node`` (see :attr:`ClusterConfig.fit`)."""
    node = cluster.node
    free = node_free(node)
    free_text = {"cpu": f"node.cpu {node.cpu} - node.reserved_cpu {node.reserved_cpu} = {_shown('cpu', free['cpu'])}",
                 "memory": f"node.memory {node.memory} - node.reserved_memory {node.reserved_memory} = "
                           f"{_shown('memory', free['memory'])}",
                 "accelerators": f"node.accelerators {node.accelerators}",
                 "scratch": f"node.ephemeral_storage {node.ephemeral_storage}"}
    field = {"cpu": "cpu_request", "memory": "memory_request", "accelerators": "accelerator_count",
             "scratch": "scratch_size"}
    problems = []
    for stage in STAGES:
        schedule = cluster.stages.of(stage)
        asked = stage_requests(schedule)
        problems += [f"stages.{stage}.{field[key]} {getattr(schedule, field[key])} is more than {free_text[key]}"
                     for key in free if asked[key] > free[key]]
    if cluster.fit == "run" and not problems:
        peak = peak_requests(cluster)
        usable = {**free, "memory": int(free["memory"] * (1 - node.memory_headroom))}
        if node.memory_headroom:
            free_text["memory"] = (f"{_shown('memory', usable['memory'])}, what node.memory_headroom "
                                   f"{node.memory_headroom:g} leaves of {free_text['memory']}")
        trials = f" (tune: trial_parallelism {cluster.trial_parallelism} x its requests)" \
            if cluster.trial_parallelism > 1 else ""
        problems += [f"with fit: run, the run's peak {key} ({_shown(key, peak[key])}: parallelism "
                     f"{cluster.parallelism} x the largest loop stage{trials}, or the largest other stage) is more "
                     f"than {free_text[key]}" for key in free if peak[key] > usable[key]]
    if cluster.fit == "stage" and not problems:
        for stage in LOOP_STAGES:  # up to parallelism configurations at once, tune with its trial tasks
            trials = cluster.trial_parallelism if stage == "tune" else 1
            at_once, per_node = cluster.parallelism * trials, tasks_per_node(cluster, stage)
            if at_once > per_node * node.count:
                cause = (f"trial_parallelism {trials} x parallelism {cluster.parallelism} = {at_once} tune trials"
                         if stage == "tune" else f"parallelism {cluster.parallelism}: {at_once} {stage} tasks")
                problems.append(f"{cause} at once, but node.count {node.count} node(s) hold "
                                f"{per_node * node.count} ({per_node} a node by stages.{stage}'s requests)")
    return problems


