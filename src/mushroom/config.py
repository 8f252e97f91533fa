"""Typed run configuration, validated at the boundary.

A configuration file (``pipelines/configs/*.yaml``) is parsed into :class:`RunConfig`.
Every field is checked before any work starts; a bad value raises :class:`ConfigError`
naming the field and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mushroom import backbones, variants
from mushroom.species import load_catalog

DEFAULT_LICENSES = ["cc0", "cc-by", "cc-by-nc", "cc-by-sa", "cc-by-nc-sa"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _range(lo_name: str):
    def check(v: list[float]) -> list[float]:
        if len(v) != 2 or v[0] > v[1]:
            raise ValueError(f"{lo_name} must be [min, max] with min <= max")
        return v

    return check


class SyntheticSourceConfig(_Strict):
    photos_per_species: int = Field(120, ge=6)
    image_size: int = Field(96, ge=32, le=512)
    photos_per_observation: int = Field(2, ge=1, le=10)


class FolderSourceConfig(_Strict):
    root: str
    link: bool = Field(True, description="hard-link (or copy) photos into the dataset folder")

    @field_validator("root")
    @classmethod
    def _exists(cls, v: str) -> str:
        if not Path(v).expanduser().is_dir():
            raise ValueError(f"folder {v!r} does not exist or is not a directory")
        return str(Path(v).expanduser())


class INaturalistSourceConfig(_Strict):
    api_url: str = "https://api.inaturalist.org/v1"
    place_id: int = 7207  # Germany
    quality_grade: Literal["research", "needs_id", "casual"] = "research"
    photos_per_species: int = Field(1000, ge=1)
    photo_size: Literal["square", "small", "medium", "large"] = "small"
    licenses: list[str] = Field(default_factory=lambda: list(DEFAULT_LICENSES))
    requests_per_minute: int = Field(60, ge=1)
    concurrency: int = Field(4, ge=1, le=64)
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_factor: float = Field(0.5, ge=0)
    backoff_max: float = Field(60.0, gt=0)
    requests_per_day: int = Field(10_000, ge=2)
    media_bytes_per_hour: int = Field(4_000_000_000, ge=1, description="iNaturalist asks for under 5 GB/h")
    min_photo_side: int = Field(64, ge=1)
    allow_missing_species: bool = False
    user_agent: str = "quantized-mushroom/0.1 (+https://github.com/quantized-mushroom)"

    @model_validator(mode="after")
    def _rates(self):
        if self.requests_per_minute >= self.requests_per_day:
            raise ValueError("requests_per_minute must be below requests_per_day")
        return self

    @field_validator("licenses")
    @classmethod
    def _licenses(cls, v: list[str]) -> list[str]:
        allowed = {"cc0", "cc-by", "cc-by-nc", "cc-by-sa", "cc-by-nc-sa", "cc-by-nd", "cc-by-nc-nd"}
        bad = [x for x in v if x.lower() not in allowed]
        if bad or not v:
            raise ValueError(f"licenses {bad or v} not allowed; choose from {sorted(allowed)}")
        return [x.lower() for x in v]


class UnknownTaxon(_Strict):
    """A taxon outside the species catalog, acquired for open-set evaluation only."""

    taxon_id: int = Field(ge=1)
    scientific_name: str = Field(min_length=1)


class DatasetConfig(_Strict):
    source: Literal["synthetic", "folder", "inaturalist"]
    species: Literal["all"] | list[int | str] = "all"
    unknown_species: list[int | str | UnknownTaxon] = Field(
        default_factory=list,
        description="taxa acquired like the others but never trained on: photos for fitting and measuring "
                    "the open-set answer 'not one of the species this model knows'. Catalog species by "
                    "taxon id or scientific name, or {taxon_id, scientific_name} for taxa beyond the catalog")
    synthetic: SyntheticSourceConfig = SyntheticSourceConfig()
    folder: FolderSourceConfig | None = None
    inaturalist: INaturalistSourceConfig = INaturalistSourceConfig()
    cache_uri: str | None = Field(
        None, description="gs:// prefix (or folder) where the built dataset is kept and reused by later runs")

    @field_validator("cache_uri")
    @classmethod
    def _cache_uri(cls, v: str | None) -> str | None:
        if v is not None and "://" in v and not v.startswith("gs://"):
            raise ValueError("cache_uri must be a gs:// prefix or a local folder")
        return v

    @field_validator("species")
    @classmethod
    def _known_species(cls, v):
        if v == "all":
            return v
        if len(v) < 2:
            raise ValueError("at least two species are needed to train a classifier")
        catalog = load_catalog()
        unknown = [k for k in v if catalog.find(k) is None]
        if unknown:
            raise ValueError(
                f"unknown species {unknown}; use taxon ids or scientific names from the catalog "
                f"(`mushroom species` lists them)"
            )
        if len({catalog.find(k).taxon_id for k in v}) != len(v):
            raise ValueError("species listed twice")
        return v

    @model_validator(mode="after")
    def _source_settings(self):
        if self.source == "folder" and self.folder is None:
            raise ValueError("source 'folder' needs folder.root (an ImageFolder tree)")
        self.unknown_catalog()  # unknown_species: trained ones, duplicates and unresolvable names fail here
        return self

    def catalog(self):
        """The classes of this dataset in catalog order."""
        catalog = load_catalog()
        return catalog if self.species == "all" else catalog.subset(list(self.species))

    def unknown_catalog(self):
        """The ``unknown_species`` as a catalog (None when there are none).

        Taxa beyond the catalog get edibility ``unknown``. Raises ValueError naming an entry
        that is a trained species, is listed twice, or is a name beyond the catalog without a
        taxon id.
        """
        from mushroom.species import Catalog, Species

        if not self.unknown_species:
            return None
        full, trained = load_catalog(), self.catalog()
        taxa = []
        for entry in self.unknown_species:
            if isinstance(entry, UnknownTaxon):
                found = full.find(entry.taxon_id)
                taxa.append(found or Species(entry.taxon_id, entry.scientific_name, "", "unknown", ""))
                continue
            found = full.find(entry)
            if found is None and isinstance(entry, str):
                raise ValueError(f"unknown_species: {entry!r} is not in the catalog; give a taxon beyond it as "
                                 "{taxon_id: ..., scientific_name: ...}")
            taxa.append(found or Species(int(entry), f"taxon {entry}", "", "unknown", ""))
        clash = [t.scientific_name for t in taxa if t.taxon_id in trained]
        if clash:
            raise ValueError(f"unknown_species names trained species {clash}: a species the model is trained on "
                             "cannot stand for an unknown one; remove it from species or from unknown_species")
        if len({t.taxon_id for t in taxa}) != len(taxa):
            raise ValueError("unknown_species lists a taxon twice")
        return Catalog(taxa)


class SplitConfig(_Strict):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class TuneConfig(_Strict):
    max_trials: int = Field(8, ge=1)
    epochs: int = Field(2, ge=1)
    learning_rate: list[float] = [1e-4, 1e-2]
    dropout: list[float] = [0.0, 0.5]
    label_smoothing: list[float] = [0.0, 0.2]

    _lr = field_validator("learning_rate")(_range("learning_rate"))
    _do = field_validator("dropout")(_range("dropout"))
    _ls = field_validator("label_smoothing")(_range("label_smoothing"))

    @field_validator("learning_rate")
    @classmethod
    def _positive_lr(cls, v):
        if v[0] <= 0:
            raise ValueError("learning_rate bounds must be positive")
        return v


class TrainConfig(_Strict):
    head_epochs: int = Field(10, ge=1)
    fine_tune_epochs: int = Field(10, ge=0, description="0 skips phase two (head only)")
    fine_tune_fraction: float = Field(0.3, gt=0, le=1, description="share of backbone layers unfrozen")
    fine_tune_lr_factor: float = Field(0.1, gt=0, le=1)
    patience: int = Field(3, ge=1)
    # The recipe for real photos (README, "Training"); the defaults are what the demo needs.
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: decay to 0 over each phase, after warmup_epochs of linear warm-up")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up epochs at the start of each phase")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: loss weights n / (classes x count) against skewed species counts")
    augmentation: Literal["basic", "strong"] = Field(
        "basic", description="strong: RandAugment (2 ops, magnitude 0.5) on top of the basic flips, rotation, "
                             "zoom and contrast")
    head_features: Literal["cached", "pixels"] = Field(
        "cached", description="with weights: imagenet, the head phase and tune trials train on pooled features "
                              "the prepare stage computed once per photo and augmented view (cached); pixels: "
                              "run the frozen backbone every epoch")
    feature_views: int = Field(4, ge=1, le=32, description="cached features per train photo: the photo and "
                                                           "feature_views - 1 fixed augmentations of it")
    # Where it runs (mushroom.runtime); nothing changes without a GPU.
    augment_on: Literal["auto", "data", "model"] = Field(
        "auto", description="where augmentation runs: data (tf.data, on the CPU), model (the training model's "
                            "first layers, on the accelerator; the saved model has no such layers); auto: model "
                            "on GPUs, else data")
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto", description="auto: mixed_float16 on GPUs of compute capability 7.0+, else float32")
    jit_compile: Literal["auto", "on", "off"] = Field("auto", description="XLA; auto: on GPUs only")
    multi_gpu: bool = Field(True, description="MirroredStrategy over all visible GPUs (global batch and "
                                              "learning rate x GPUs)")
    deterministic: bool = Field(False, description="TensorFlow op determinism and fixed seeds (tune and train)")


RECIPE_VARIANT = "int8_recipe"


class RangeRuleConfig(_Strict):
    """One activation-range rule of ``quantize.recipe`` (:class:`mushroom.variants.RangeRule`)."""

    tensors: str = Field(description="@logits, @features, an op type in capitals (e.g. LOGISTIC), or a regular "
                                     "expression searched in the activation tensor names")
    method: Literal["minmax", "percentile", "mse"] = "minmax"
    percentile: float = Field(99.99, gt=50, lt=100, description="for method: percentile")
    photos: Literal["representative", "held_out_like"] = Field(
        "representative", description="held_out_like: the representative photos shifted by a sixth of their size")

    @field_validator("tensors")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("tensors must name @logits, @features, an op type or a pattern")
        if not v.startswith("@"):
            try:
                re.compile(v)
            except re.error as err:
                raise ValueError(f"tensors {v!r} is not a regular expression: {err}") from None
        elif v not in ("@logits", "@features"):
            raise ValueError(f"tensors {v!r}: the names starting with @ are @logits and @features")
        return v


class QuantizeConfig(_Strict):
    representative_samples: int = Field(300, ge=1, description="train photos, balanced across species")
    variants: list[str] = Field(default_factory=variants.default_names,
                                description="see mushroom.variants; int8_recipe is added when a recipe is given")
    recipe: list[RangeRuleConfig] = Field(default_factory=list, description=(
        "activation-range rules for the int8_recipe variant, applied in order (a later rule wins)"))
    tolerance_points: float = Field(1.0, ge=0, description="allowed top-1 loss vs float32 on val, in points")
    min_agreement: float = Field(0.97, ge=0, le=1, description="required top-1 agreement with float32 on val")
    debug_samples: int = Field(64, ge=1, description="photos for the per-layer error report")
    latency_runs: int = Field(20, ge=1)

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[str]) -> list[str]:
        known = variants.names()
        unknown = [x for x in v if x not in known]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; allowed: {known}")
        missing = [x for x in variants.REQUIRED if x not in v]
        if missing:
            raise ValueError(f"variants must include {missing} (the reference and full int8)")
        return sorted(set(v), key=known.index)

    @model_validator(mode="before")
    @classmethod
    def _recipe_variant(cls, data: Any) -> Any:
        """A recipe builds ``int8_recipe``; listing ``int8_recipe`` without a recipe is an error."""
        if not isinstance(data, dict):
            return data
        listed = data.get("variants")
        if data.get("recipe"):
            base = list(listed) if listed is not None else variants.default_names()
            return {**data, "variants": base if RECIPE_VARIANT in base else [*base, RECIPE_VARIANT]}
        if listed is not None and RECIPE_VARIANT in listed:
            raise ValueError(f"variants lists {RECIPE_VARIANT} but quantize.recipe is empty: give activation-range "
                             "rules (README, Quantization) or leave the variant out")
        return data


class ModelConfig(_Strict):
    model_name: str
    architecture: str = Field(description="a backbone of mushroom.backbones")
    image_size: int = Field(None, ge=32, le=1024, description="default: the backbone's default size")
    weights: str = "imagenet"
    batch_size: int = Field(32, ge=1)
    tune: TuneConfig = TuneConfig()
    train: TrainConfig = TrainConfig()
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)  # reads the registry when used

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, v: str) -> str:
        if v not in backbones.names():
            raise ValueError(f"unknown architecture {v!r}; allowed: {backbones.names()}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("image_size") is None and data.get("architecture") in backbones.names():
            return {**data, "image_size": backbones.get(data["architecture"]).default_size}
        return data

    @field_validator("model_name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", v):
            raise ValueError("model_name must be lower-case letters, digits, '-' or '_' (max 63)")
        return v

    @model_validator(mode="after")
    def _has_imagenet_weights(self) -> ModelConfig:
        if self.weights == "imagenet" and backbones.get(self.architecture).imagenet_weights is None:
            raise ValueError(f"{self.architecture} has no ImageNet weights: set weights: none, or choose one of "
                             f"{', '.join(backbones.pretrained_names())}")
        return self

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        if v in ("imagenet", "none"):
            return v
        if not Path(v).expanduser().is_file():
            raise ValueError(f"weights must be 'imagenet', 'none' or an existing file; {v!r} is none")
        return v


class PromotionGateConfig(_Strict):
    """When a published run may become ``latest`` (see :mod:`mushroom.promotion`)."""

    max_dangerous_as_edible: float | None = Field(
        None, ge=0, lt=1, description="the largest share of dangerous test photos the shipped variant may call "
                                      "edible; default: the target its evaluation was calibrated for")
    max_top1_drop_points: float = Field(
        1.0, ge=0, le=100, description="how many points of top-1 (each run on its own test split) a run may lose "
                                       "against the current latest and still replace it")


class PublishConfig(_Strict):
    destination: str = "outputs/published"
    gate: PromotionGateConfig = PromotionGateConfig()


# --------------------------------------------------------------------------- cluster scheduling
#
# Everything below is read by pipelines/pipeline.py when it compiles a run for a cluster; local
# runs (kfp.local) ignore it.

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

STAGES = ("acquire", "split", "prepare", "tune", "train", "quantize", "evaluate", "compare", "publish")
# The stages inside the pipeline's ParallelFor: up to `parallelism` model configurations run them
# at once, each configuration one stage after the other. The others run alone.
LOOP_STAGES = ("tune", "train", "quantize", "evaluate")

_HOUR = 3600
# Sized for the demo on one 4-CPU / 8 GB node next to Kubeflow Pipelines (README, "Run on a
# cluster"): at parallelism 2 the loop requests at most 2 x (1 CPU, 2560Mi). Memory requests cover
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


class ImagesConfig(_Strict):
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
        raise ConfigError(_format(err, "(image settings from the environment)")) from None


class StageSchedule(_Strict):
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
        return self


class StagesConfig(_Strict):
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


class RetryBackoffConfig(_Strict):
    """Waits between retries: ``duration_s``, times ``factor`` after each, for at most ``max_duration_s``."""

    duration_s: int = Field(60, ge=0)
    factor: float = Field(2.0, ge=1)
    max_duration_s: int = Field(3600, ge=1, description="retries stop this long after the first failure")


class NodeConfig(_Strict):
    """One cluster node the run must fit: what it can allocate and what other pods on it request.

    The defaults are the demo target, one 4-CPU / 8 GB node (minikube ``--cpus=4 --memory=8g``,
    whose kubelet allocates about 7.5 GiB) that also runs Kubernetes' own pods, standalone
    Kubeflow Pipelines and the GCS emulator; README "Run on a cluster" lists what ``reserved_*``
    is made of and where each figure comes from.
    """

    cpu: CpuQuantity = "4"
    memory: MemoryQuantity = "7680Mi"
    ephemeral_storage: MemoryQuantity | None = Field(None, description="checked against scratch_size when given")
    accelerators: int = Field(0, ge=0)
    reserved_cpu: CpuQuantity = Field("1800m", description="CPU requested by the other pods on the node")
    reserved_memory: MemoryQuantity = Field("2560Mi", description="memory requested by the other pods on the node")


class VertexConfig(_Strict):
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


class ClusterConfig(_Strict):
    """Scheduling on a cluster (images, requests, limits, accelerators, timeouts, retries, caching)."""

    parallelism: int = Field(2, ge=1, description="model configurations in flight at once")
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
    times its largest loop stage.
    """
    def largest(stages: tuple[str, ...], times: int) -> dict[str, int]:
        asked = [stage_requests(cluster.stages.of(stage)) for stage in stages]
        return {key: times * max(a[key] for a in asked) for key in asked[0]}

    phases = [largest((s,), 1) for s in STAGES if s not in LOOP_STAGES] + [largest(LOOP_STAGES, cluster.parallelism)]
    return {key: max(p[key] for p in phases) for key in phases[0]}


def _shown(key: str, value: int) -> str:
    return f"{value}m" if key == "cpu" else f"{value // 2**20}Mi" if key in ("memory", "scratch") else str(value)


def fit_problems(cluster: ClusterConfig) -> list[str]:
    """Why ``cluster``'s stages cannot be scheduled on ``cluster.node`` (see :attr:`ClusterConfig.fit`)."""
    node = cluster.node
    free = {"cpu": cpu_millis(node.cpu) - cpu_millis(node.reserved_cpu),
            "memory": memory_bytes(node.memory) - memory_bytes(node.reserved_memory),
            "accelerators": node.accelerators}
    if node.ephemeral_storage is not None:
        free["scratch"] = memory_bytes(node.ephemeral_storage)
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
        problems += [f"with fit: run, the run's peak {key} ({_shown(key, peak[key])}: parallelism "
                     f"{cluster.parallelism} x the largest loop stage, or the largest other stage) is more than "
                     f"{free_text[key]}" for key in free if peak[key] > free[key]]
    return problems


class RunConfig(_Strict):
    name: str
    seed: int = 42
    dataset: DatasetConfig
    split: SplitConfig = SplitConfig()
    models: list[ModelConfig]
    publish: PublishConfig = PublishConfig()
    cluster: ClusterConfig = ClusterConfig()

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[ModelConfig]):
        if not v:
            raise ValueError("at least one model configuration is needed")
        names = [m.model_name for m in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model_name must be unique; repeated: {dupes}")
        return v


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_model_config(data: dict[str, Any]) -> ModelConfig:
    """Validate one model configuration (as passed to a pipeline component)."""
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, "(model configuration)")) from None


def parse_config(data: dict[str, Any], source: str = "(dict)") -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {source}: expected a mapping at the top level")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run configuration."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"configuration file {path} is not valid YAML: {err}") from None
    return parse_config(data, str(path))
