"""The typed evaluation: what :mod:`mushroom.evaluate` builds and everything else reads.

``evaluation.json`` is :meth:`Evaluation.to_json` of these models; :func:`read_evaluation`
reads it back, the current and earlier schema versions, and refuses newer ones. Readers
(the report, ``compare``, tracking, the KFP components) use attributes, never string keys.

Fields are added as optional ones (absent when not measured) with a schema version bump, so
that files written before them still load: e.g. ``VariantEvaluation.validation`` holds the
validation split's figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mushroom import variants as registry
from mushroom.fileio import read_json, write_json_atomic
from mushroom.versioning import check_schema_version

# 1: no schema_version field, a default_variant copy of the bundle's choice; 2: the open-set rule
# repeated in open_set.rule, no shipped_variant; 3: no answer levels or FungiCLEF costs, no month prior
SCHEMA_VERSION = 4
EVALUATION = "evaluation.json"


class _Model(BaseModel):
    # Assignments are validated too: the evaluate stage fills size, latency and comparisons late.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- species ---------------------------------------------------------------------------------


class TopK(_Model):
    """Top-k accuracy: the true species among the k most probable."""

    top1: float
    top3: float
    top5: float


class SpeciesSummary(TopK):
    """Top-k and macro precision/recall/F1 over the species present."""

    macro_precision: float
    macro_recall: float
    macro_f1: float


class SpeciesRow(_Model):
    species: str
    edibility: str
    precision: float
    recall: float
    f1: float
    support: int


class ConfusedPair(_Model):
    species: list[str]
    count: int
    first_as_second: int
    second_as_first: int


class SpeciesMetrics(SpeciesSummary):
    """Everything about species on one split (the ranking, so calibration never changes it)."""

    per_species: list[SpeciesRow]
    confusion_matrix: list[list[int]]
    most_confused: list[ConfusedPair]


# --- calibration, edibility, the safety policy --------------------------------------------------


class ReliabilityBin(_Model):
    lower: float
    upper: float
    count: int
    accuracy: float | None
    confidence: float | None


class CalibrationMetrics(_Model):
    ece: float  # equal-width bins
    mce: float
    ece_interval: list[float] | None = None  # 95% percentile bootstrap over photos
    ece_equal_mass: float | None = None  # bins of equal photo counts
    photos: int | None = None
    bins: int
    mean_confidence: float
    std_confidence: float
    accuracy: float
    nll: float
    brier: float
    reliability: list[ReliabilityBin]


class DecisionScores(_Model):
    """Precision/recall/F1 of a yes/no decision; None where undefined."""

    precision: float | None
    recall: float | None
    f1: float | None


class NaiveEdible(DecisionScores):
    """"Edible" whenever P(edible) >= 0.5, as a plain classifier would say."""

    dangerous_as_edible_rate: float | None


class RocCurve(_Model):
    fpr: list[float]
    tpr: list[float]
    threshold: list[float]


class MeanPEdible(_Model):
    edible: float | None
    dangerous: float | None


class EdibilityMetrics(_Model):
    photos: int
    edible_photos: int
    dangerous_photos: int
    deadly_photos: int
    roc_auc: float | None
    roc_curve: RocCurve | None
    verdict_edible: DecisionScores
    dangerous_as_edible_rate: float | None
    deadly_top1_edible_rate: float | None
    dangerous_missing_from_top5_rate: float | None
    dangerous_missing_from_top5_share: float
    naive_edible: NaiveEdible
    mean_p_edible: MeanPEdible


class RiskCoverage(_Model):
    threshold: list[float]
    coverage: list[float]
    risk: list[float | None]
    selective_risk: list[float]
    edible_share: list[float]


class PolicyMetrics(_Model):
    """The fitted policy (on validation) and how it does on the test split."""

    temperature: float
    edible_threshold: float | None
    not_edible_below: float
    target: float
    confidence: float | None
    val_dangerous_as_edible_rate: float | None
    val_coverage: float
    coverage: float
    risk: float | None
    selective_risk: float | None
    verdicts: dict[str, int]
    risk_coverage: RiskCoverage


class Assessment(_Model):
    """Every probability-dependent figure of the test split under one calibration."""

    species: SpeciesSummary
    calibration: CalibrationMetrics
    edibility: EdibilityMetrics
    policy: PolicyMetrics


# --- speed and the comparison with the reference ------------------------------------------------


class LatencyStats(_Model):
    median_ms: float
    p90_ms: float
    mean_ms: float
    num_threads: int | None = None
    runs: int | None = None
    warmup: int | None = None
    # 95% interval of the median, and the interleaved rounds (mushroom.latency; absent before)
    median_low_ms: float | None = None
    median_high_ms: float | None = None
    rounds: int | None = None


class Latency(_Model):
    threads_1: LatencyStats
    threads_all: LatencyStats


class Change(_Model):
    absolute: float | None
    relative: float | None


class VsReference(_Model):
    """A variant against the TFLite float32 reference of the same configuration."""

    top1_agreement: float | None
    top1_change: Change
    top3_change: Change
    top5_change: Change
    macro_f1_change: Change
    ece_change: Change
    size_ratio: float | None = None
    latency_ratio_threads_1: float | None = None
    latency_ratio_threads_all: float | None = None


class TemperatureFit(_Model):
    """How the temperature was chosen: cross-validated on the validation split, kept only if it helps."""

    temperature: float
    kept: bool
    reason: str
    fitted: float | None
    folds: int
    photos: int
    heldout_nll_uncalibrated: float | None
    heldout_nll_calibrated: float | None


class ValNll(_Model):
    uncalibrated: float
    calibrated: float


class OpenSetKind(_Model):
    """One kind of photo that is not a known species, against the known test photos."""

    group: str  # non-mushroom (generated), non-mushroom (real photos), unknown species
    fit: bool  # the score was chosen on it (False: held out)
    photos: int
    auroc: float | None  # known test photos vs these, by the score alone
    fpr95: float | None  # share passing the threshold that keeps 95% of known validation photos
    auroc_gate_on: float | None  # with the quality gate's refusals counted as detected
    refused_gate_off: float
    refused_gate_on: float
    refused_by_gate: float | None = None
    named_as_known: float  # share identify would name as a known species (gate on)
    named_edible_share: float | None  # of those, share named as an edible species


class OpenSetGroup(_Model):
    """The held-out kinds of one group together."""

    kinds: list[str]
    photos: int
    auroc: float | None
    fpr95: float | None
    auroc_gate_on: float | None
    refused_gate_off: float
    refused_gate_on: float


class OpenSetCheck(_Model):
    """Whether the open-set rule ships: its score on unknown species, against validation photos."""

    checked: bool  # False: no unknown-species photos to check on (the rule ships unchecked)
    shipped: bool  # the rule has a threshold identify applies
    kinds: list[str]  # the held-out unknown taxa (those chosen on where none is held out)
    photos: int
    auroc: float | None
    interval: list[float] | None  # 95% Hanley-McNeil interval of the AUROC
    min_auroc: float
    reason: str  # one line: why it ships, does not, or was not checked


class OpenSetMetrics(_Model):
    """The open-set answer of one variant: the score chosen, its threshold and what it refuses."""

    score: str
    threshold: float | None
    known_kept: float
    fallback: str | None
    score_choice: dict[str, float | None]  # AUROC of each score on the kinds ranked on (fitted_on.ranked_on)
    # AUROC of each score on the fitting real non-mushroom photos, the choice's second constraint
    score_constraint: dict[str, float | None] | None = None
    unknown_check: OpenSetCheck | None = None  # absent: evaluated before the check existed
    fitted_on: dict[str, Any]
    val_refused: float
    test_photos: int
    test_refused_gate_off: float
    test_refused_gate_on: float
    test_refused_by_gate: float
    kinds: dict[str, OpenSetKind]
    groups: dict[str, OpenSetGroup]
    histogram: dict[str, list[float]]  # edges and counts per kind, for the report
    notes: list[str]
    # The mahalanobis score's feature statistics: dim, components, train photos, shrinkage (the
    # arrays are in the bundle's calibration)
    features: dict[str, Any] | None = None


# --- answer levels and the public benchmark's costs (mushroom.level_eval) ----------------------


class LevelShare(_Model):
    """One answer level on one split: how often it is given and how often it is right."""

    photos: int
    share: float
    accuracy: float | None  # the named species (genus) is the photo's; None: abstentions, or none given


class LevelRisk(_Model):
    """One row of the risk-coverage table over the levels."""

    answered: str  # "species", "species or genus", "species for every photo"
    coverage: float
    risk: float | None  # share of those answers that are wrong


class LevelFigures(_Model):
    photos: int
    species: LevelShare
    genus: LevelShare
    abstain: LevelShare
    risk_coverage: list[LevelRisk]


class AnswerLevels(_Model):
    """The answer levels (:mod:`mushroom.levels`): thresholds fitted on validation, figures on both splits."""

    species_threshold: float | None
    genus_threshold: float | None
    target: float | None
    min_photos: int | None
    notes: list[str]
    validation: LevelFigures
    test: LevelFigures


class FungiClefFigures(_Model):
    """FungiCLEF 2023's costs (:mod:`mushroom.fungiclef`) on the test split and held-out unknown species."""

    track1: float
    track2: float
    track3: float
    track4: float
    macro_f1: float
    photos: int
    known_photos: int
    unknown_photos: int
    unknown_edibility_unknown: int  # unknown-species photos whose edibility is not known (in N only)
    levels: dict[str, int]  # answers by level (refusals are abstentions)


class VariantEvaluation(TopK):
    """One model variant (Keras or a TFLite variant) on the test split."""

    temperature: float
    temperature_fit: TemperatureFit | None = None
    val_nll: ValNll
    species: SpeciesMetrics
    uncalibrated: Assessment
    calibrated: Assessment
    size_mb: float | None = None  # TFLite variants only
    latency: Latency | None = None
    vs_float32: VsReference | None = None
    validation: TopK | None = None  # the validation split, where the figures were fitted
    open_set: OpenSetMetrics | None = None  # absent: evaluated before the open-set answer existed
    levels: AnswerLevels | None = None  # absent: evaluated before answer levels
    fungiclef: FungiClefFigures | None = None  # absent: before, or measured without the open-set inputs


class Int8VsFloat32(_Model):
    """Full int8 against float32, the headline of the project."""

    top1_agreement: float | None
    top1_change: float
    top5_change: float
    top1_relative_change: float | None
    size_ratio: float
    latency_ratio_threads_1: float | None = None
    latency_ratio_threads_all: float | None = None


class LatencySettings(_Model):
    batch: int
    runs: int
    warmup: int
    threads_all: int
    # mushroom.latency.measure_interleaved's (absent for figures timed variant by variant)
    rounds: int | None = None
    interleaved: bool = False
    load_before: float | None = None
    load_after: float | None = None
    busy: bool = False


class MonthPriorEffect(_Model):
    """The month prior (:mod:`mushroom.month_prior`) on the dated photos, for the shipped variant:
    top-1 and the safety figures without and with it (the forms of
    :func:`mushroom.month_prior.measure_prior`), and whether the shipped answer uses it (judged on
    validation, recorded in the bundle's ``month_prior.json``)."""

    variant: str
    fitted_species: int  # species with enough dated train observations (the others: flat)
    num_species: int
    used: bool
    reason: str
    validation: dict[str, Any]
    test: dict[str, Any]


class Evaluation(_Model):
    """One configuration's evaluation: every variant, on the test split."""

    schema_version: int = SCHEMA_VERSION
    model_name: str
    architecture: str
    image_size: int
    num_test_photos: int
    num_val_photos: int
    num_classes: int
    species: list[str]
    edibility: list[str]
    target_dangerous_as_edible: float
    ece_bins: int
    variants: dict[str, VariantEvaluation]
    # The TFLite variant the bundle ships (identify's default): the quantize stage's choice, recorded
    # in the bundle and here (None: an evaluation written before it was recorded)
    shipped_variant: str | None = None
    warnings: list[str] | None = None  # what the validation split is too small to support
    data_source: dict[str, Any] | None = None  # what the model was trained on (bundle provenance)
    backbone_weights: dict[str, Any] | None = None  # where the backbone's starting weights came from
    latency_settings: LatencySettings | None = None
    int8_vs_float32: Int8VsFloat32 | None = None
    month_prior: MonthPriorEffect | None = None  # the date as evidence (absent: the bundle has no prior)

    def variant(self, name: str) -> VariantEvaluation | None:
        """The evaluation of TFLite variant ``name`` (``int8``, ...); None if not evaluated."""
        return self.variants.get(registry.evaluation_key(name))

    @property
    def reference(self) -> VariantEvaluation | None:
        """The TFLite float32 reference."""
        return self.variant(registry.REFERENCE)

    def tflite_variants(self) -> dict[str, VariantEvaluation]:
        """TFLite variants by variant name (no Keras), in report order."""
        return {registry.variant_of_key(k): self.variants[k] for k in registry.report_order(self.variants)
                if registry.variant_of_key(k) is not None}

    def ordered(self) -> dict[str, VariantEvaluation]:
        """Every evaluated model by evaluation key, in report order."""
        return {k: self.variants[k] for k in registry.report_order(self.variants)}

    @property
    def shipped_key(self) -> str | None:
        """The evaluation key of :attr:`shipped_variant` (None: not recorded, or not evaluated)."""
        key = None if self.shipped_variant is None else registry.evaluation_key(self.shipped_variant)
        return key if key in self.variants else None

    def to_json(self) -> dict[str, Any]:
        """The JSON form (``evaluation.json``); fields never measured are left out."""
        return self.model_dump(mode="json", exclude_unset=True) | {"schema_version": self.schema_version}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """An ``evaluation.json`` dict of this or an earlier schema version in the current form.

    Version 1 kept a copy of the bundle's default variant (dropped: the bundle's ``metadata.json``
    records it); version 2 repeated each open-set rule in ``open_set.rule`` (dropped, its feature
    statistics' description kept as ``open_set.features``). Neither records the shipped variant.
    """
    data = dict(data)
    version = data.get("schema_version", 1)
    if version == 1:
        data.pop("default_variant", None)
    if version <= 2 and isinstance(data.get("variants"), dict):
        variants = {}
        for key, variant in data["variants"].items():
            if isinstance(variant, dict) and isinstance(variant.get("open_set"), dict):
                open_set = dict(variant["open_set"])
                rule = open_set.pop("rule", None) or {}
                if rule.get("features"):
                    open_set["features"] = {k: v for k, v in rule["features"].items() if k != "file"}
                variant = {**variant, "open_set": open_set}
            variants[key] = variant
        data["variants"] = variants
    data["schema_version"] = SCHEMA_VERSION
    return data


def parse_evaluation(data: dict[str, Any], source: str = "evaluation") -> Evaluation:
    """Validate an ``evaluation.json`` dict (current or an earlier schema version)."""
    check_schema_version(data, SCHEMA_VERSION, source, oldest=1)
    try:
        return Evaluation.model_validate(migrate(data))
    except ValidationError as err:
        raise ValueError(f"{source} is not a valid evaluation: {err}") from None


def read_evaluation(folder_or_file: str | Path) -> Evaluation:
    """Read ``evaluation.json`` from a file or the evaluation folder holding it."""
    path = Path(folder_or_file)
    path = path / EVALUATION if path.is_dir() else path
    return parse_evaluation(read_json(path), str(path))


def write_evaluation(evaluation: Evaluation, folder: str | Path) -> Path:
    """Write ``evaluation.json`` into ``folder`` atomically; returns its path."""
    path = Path(folder) / EVALUATION
    write_json_atomic(path, evaluation.to_json())
    return path
