"""Typed run configuration, validated at the boundary.

A configuration file (``pipelines/configs/*.yaml``) is parsed into :class:`RunConfig`.
Every field is checked before any work starts; a bad value raises :class:`ConfigError`
naming the field and what is allowed. Scheduling on a cluster (images, requests, limits,
accelerators, retries) is :mod:`mushroom.cluster`, the ``cluster:`` section.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mushroom import backbones, variants
from mushroom.calibration import DEFAULT_TARGET
from mushroom.cluster import ClusterConfig
from mushroom.config_base import ConfigError, Strict, format_errors
from mushroom.latency import LATENCY_ROUNDS, LATENCY_RUNS
from mushroom.openset import DEFAULT_KNOWN_KEPT
from mushroom.sources import registry as source_registry
from mushroom.sources.settings import FolderSourceConfig, INaturalistSourceConfig, SyntheticSourceConfig
from mushroom.species import load_catalog

__all__ = ["ConfigError", "RunConfig", "ModelConfig", "DatasetConfig", "SplitConfig", "load_config",
           "parse_config", "parse_model_config"]



def _range(lo_name: str):
    def check(v: list[float]) -> list[float]:
        if len(v) != 2 or v[0] > v[1]:
            raise ValueError(f"{lo_name} must be [min, max] with min <= max")
        return v

    return check


class UnknownTaxon(Strict):
    """A taxon outside the species catalog, acquired for open-set evaluation only."""

    taxon_id: int = Field(ge=1)
    scientific_name: str = Field(min_length=1)


class DatasetConfig(Strict):
    """The ``dataset:`` section. ``source`` names a registered source (:mod:`mushroom.sources.registry`);
    its settings are ``dataset.<source>:`` (the built-in ones are fields here; another source's
    are validated with the settings model it registered)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    source: str
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

    @field_validator("source")
    @classmethod
    def _registered_source(cls, v: str) -> str:
        source_registry.get(v)  # an unknown name: the registry's error, listing the allowed ones
        return v

    @model_validator(mode="before")
    @classmethod
    def _registered_settings(cls, data: Any) -> Any:
        """Settings of sources registered beyond the built-in ones: ``dataset.<name>:`` validated
        by the source's settings model; any other unknown key is an error naming it."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in [k for k in data if k not in cls.model_fields]:
            if key not in source_registry.names():
                raise ValueError(f"unknown field {key!r} (sources: {source_registry.names()})")
            try:
                data[key] = source_registry.get(key).settings_model().model_validate(data[key])
            except ValidationError as err:
                problems = "; ".join(f"{key}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
                raise ValueError(problems) from None
        return data

    def _given(self, name: str):
        return getattr(self, name) if name in type(self).model_fields else (self.model_extra or {}).get(name)

    def settings(self, source: str | None = None):
        """The settings model of ``source`` (default: this dataset's source), defaults if not given."""
        name = source or self.source
        value = self._given(name)
        return value if value is not None else source_registry.get(name).settings_model()()

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
        source = source_registry.get(self.source)
        if source.settings_required and self._given(self.source) is None:
            required = [f"dataset.{self.source}.{name}" for name, f in source.settings_model().model_fields.items()
                        if f.is_required()]
            raise ValueError(f"source {self.source!r} needs its settings: {', '.join(required)}")
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


class SplitConfig(Strict):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        return self


class TuneConfig(Strict):
    """The search: ``max_trials`` sampled by keras-tuner, trained ``epochs`` each in round 1; with
    ``rounds`` above 1, successive halving: the best ``halving_fraction`` of a round's trials
    continue in the next with ``1 / halving_fraction`` times the epochs (:mod:`mushroom.trials`).
    On a cluster each trial is its own task (``cluster.trial_parallelism`` at once)."""

    max_trials: int = Field(8, ge=1, description="trials sampled for round 1")
    epochs: int = Field(2, ge=1, description="epochs of a round-1 trial")
    rounds: int = Field(1, ge=1, le=5, description="successive-halving rounds (1: every trial once)")
    halving_fraction: float = Field(0.5, gt=0, lt=1, description="share of a round's trials that continue")
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

    @model_validator(mode="after")
    def _every_round_narrows(self):
        from mushroom.trials import round_sizes

        sizes = round_sizes(self.max_trials, self.rounds, self.halving_fraction)
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"rounds {self.rounds} with max_trials {self.max_trials} and halving_fraction "
                             f"{self.halving_fraction:g} gives rounds of {sizes} trials: a round must keep fewer "
                             f"trials than the one before (raise max_trials or lower rounds)")
        return self


class TrainConfig(Strict):
    head_epochs: int = Field(10, ge=1)
    fine_tune_epochs: int = Field(10, ge=0, description="0 skips phase two (head only)")
    fine_tune_fraction: float = Field(0.3, gt=0, le=1, description="share of backbone layers unfrozen")
    fine_tune_lr_factor: float = Field(0.1, gt=0, le=1)
    patience: int = Field(3, ge=1)
    # The recipe for real photos (docs/training.md); the defaults are what the demo needs.
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


class RangeRuleConfig(Strict):
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


class QuantizeConfig(Strict):
    representative_samples: int = Field(300, ge=1, description="train photos, balanced across species")
    variants: list[str] = Field(default_factory=variants.default_names,
                                description="see mushroom.variants; int8_recipe is added when a recipe is given")
    recipe: list[RangeRuleConfig] = Field(default_factory=list, description=(
        "activation-range rules for the int8_recipe variant, applied in order (a later rule wins)"))
    tolerance_points: float = Field(1.0, ge=0, description="allowed top-1 loss vs float32 on val, in points")
    min_agreement: float = Field(0.97, ge=0, le=1, description="required top-1 agreement with float32 on val")
    debug_samples: int = Field(64, ge=1, description="photos for the per-layer error report")

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
                             "rules (docs/quantization.md) or leave the variant out")
        return data


class EvaluateConfig(Strict):
    """What the evaluation aims for and how it measures (the run's ``evaluate:`` section).

    The quantize stage times the variants (it chooses on latency) and the evaluate stage reports
    those figures; the evaluate stage fits the safety threshold and the open-set rule with these
    targets on the validation split.
    """

    target_dangerous_as_edible: float = Field(
        DEFAULT_TARGET, ge=0, lt=1, description="the largest share of dangerous validation photos the edible "
                                                "threshold may call edible (certified at 95% confidence)")
    open_set_known_kept: float = Field(
        DEFAULT_KNOWN_KEPT, gt=0.5, le=1, description="the share of known validation photos the open-set "
                                                      "threshold keeps (the rest are refused as unknown)")
    latency_runs: int = Field(LATENCY_RUNS, ge=1, description="timed runs per variant and thread count")
    latency_rounds: int = Field(LATENCY_ROUNDS, ge=1, description=(
        "interleaved rounds the runs are split into (every variant timed in every round)"))


class ModelConfig(Strict):
    model_name: str
    architecture: str = Field(description="a backbone of mushroom.backbones")
    image_size: int = Field(None, ge=32, le=1024, description="default: the backbone's default size")
    weights: str = "imagenet"
    batch_size: int = Field(32, ge=1)
    tune: TuneConfig = TuneConfig()
    train: TrainConfig = TrainConfig()
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)  # reads the registry when used
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description=(
        "filled from the run's evaluate: section unless the configuration sets its own"))

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, v: str) -> str:
        backbones.get(v)  # an unknown name: the registry's error, listing the allowed ones
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


class PromotionGateConfig(Strict):
    """When a published run may become ``latest`` (see :mod:`mushroom.promotion`)."""

    max_dangerous_as_edible: float | None = Field(
        None, ge=0, lt=1, description="the largest share of dangerous test photos the shipped variant may call "
                                      "edible; default: the target its evaluation was calibrated for")
    max_top1_drop_points: float = Field(
        1.0, ge=0, le=100, description="how many points of top-1 (each run on its own test split) a run may lose "
                                       "against the current latest and still replace it")


class PublishConfig(Strict):
    destination: str = "outputs/published"
    gate: PromotionGateConfig = PromotionGateConfig()


class RunConfig(Strict):
    name: str
    seed: int = 42
    dataset: DatasetConfig
    split: SplitConfig = SplitConfig()
    models: list[ModelConfig]
    publish: PublishConfig = PublishConfig()
    cluster: ClusterConfig = ClusterConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="before")
    @classmethod
    def _evaluate_settings(cls, data: Any) -> Any:
        """Each model configuration takes the run's ``evaluate:`` settings unless it sets its own (the
        stages read them from the model configuration they are given)."""
        if not isinstance(data, dict) or not isinstance(data.get("models"), list) or data.get("evaluate") is None:
            return data
        try:
            EvaluateConfig.model_validate(data["evaluate"])
        except ValidationError:
            return data  # reported once, as evaluate.<field>
        models = [{**m, "evaluate": data["evaluate"]} if isinstance(m, dict) and "evaluate" not in m else m
                  for m in data["models"]]
        return {**data, "models": models}

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[ModelConfig]):
        if not v:
            raise ValueError("at least one model configuration is needed")
        names = [m.model_name for m in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model_name must be unique; repeated: {dupes}")
        rounds = {m.model_name: m.tune.rounds for m in v}
        if len(set(rounds.values())) > 1:
            raise ValueError(f"tune.rounds differs between configurations ({rounds}): the pipeline compiles the "
                             f"rounds as tasks, one graph for every configuration; give them the same rounds")
        return v

    @property
    def tune_rounds(self) -> int:
        """The tuning rounds of every configuration (the compiled graph's rounds of trial tasks)."""
        return self.models[0].tune.rounds


def parse_model_config(data: dict[str, Any]) -> ModelConfig:
    """Validate one model configuration (as passed to a pipeline component)."""
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, "(model configuration)")) from None


def parse_config(data: dict[str, Any], source: str = "(dict)") -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {source}: expected a mapping at the top level")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source)) from None


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
