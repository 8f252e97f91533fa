"""Identify a mushroom offline from a photo with a published TFLite bundle.

For each photo, in this order:

1. "not a usable photo" (:mod:`mushroom.quality`): too small, near-uniform, far over- or
   under-exposed; the model is not asked;
2. "not one of the N species this model knows" (:mod:`mushroom.openset`): the photo's open-set
   score is below the threshold the evaluate stage fitted (it travels in ``calibration.json``);
3. otherwise the top-5 species with calibrated probabilities, P(edible), the verdict of the
   bundle's safety policy (``mushroom.policy``), the top answer's own danger ("top answer is
   POISONOUS") and warnings about poisonous or deadly lookalikes among the other answers;
   and the answer's level (:mod:`mushroom.levels`): the species, or when only its genus is
   certain enough the genus (its species in the catalog and their worst edibility, which is
   then the verdict's worst case: "not edible" for a genus that holds an inedible, poisonous
   or deadly species), or neither.

Every abstention says why (not certain enough, a dangerous species above 1% among the top 5,
unknown species, unusable photo). The veto stays: a poisonous or deadly species above 1% in the
top 5, the top answer included, means the verdict is never "edible". Every answer says that it
never gives permission to eat.

Only numpy, Pillow and ai-edge-litert are needed: this module (and the ``mushroom identify``
command) never imports TensorFlow, Keras, kfp, pydantic or PyYAML, and a one-photo call imports
little else (``benchmarks/identify.py`` times it). Where the bundle is (a folder, a publish
destination's ``latest`` run, a ``gs://`` prefix cached locally, which needs google-cloud-storage)
is :mod:`mushroom.locate`'s; how answers read on the console and in ``--json`` is
:mod:`mushroom.identify_text`'s.

    from mushroom.identify import identify
    for answer in identify(["cep.jpg"], "outputs/demo/published"):
        print(answer.verdict_text, answer.candidates[0].scientific_name)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from mushroom.bundle import LABELS, Bundle, BundleError, read_bundle, read_month_prior
from mushroom.levels import ABSTAIN, GENUS, Genera, LevelRule, answer_levels
from mushroom.locate import resolve_bundle
from mushroom.month_prior import DateEvidence, PhotoDate, date_evidence, exif_date
from mushroom.openset import OpenSetRule
from mushroom.policy import (
    EDIBLE,
    NOT_EDIBLE,
    UNCERTAIN,
    Policy,
    apply_temperature,
    edible_probability,
    top_classes,
)
from mushroom.preprocess import ImageError, expand_photos, load_image, read_photo
from mushroom.quality import check_photo
from mushroom.species import DANGEROUS, Species
from mushroom.tflite import TFLiteClassifier

log = logging.getLogger(__name__)

TOP_K = 5
LOOKALIKE_MIN_PROBABILITY = 0.01  # dangerous species in the top 5 above this are named

NOTICE = (
    "This tool only informs. It NEVER gives permission to eat a wild mushroom: "
    "have every find checked in person by a mushroom expert before eating it."
)
ANSWER_NOTICE = "Not permission to eat: a photo model can be wrong, and one mistake can kill."
UNKNOWN_SPECIES = "unknown species"  # verdicts of identify beyond the policy's
UNUSABLE_PHOTO = "unusable photo"
VERDICT_TEXT = {
    EDIBLE: "edible species (by the model; NOT permission to eat)",
    NOT_EDIBLE: "not edible",
    UNCERTAIN: "uncertain - ask an expert",
    UNKNOWN_SPECIES: "not one of the species this model knows - ask an expert",
    UNUSABLE_PHOTO: "not a usable photo - take another one",
}


def unknown_species_reason(n_species: int) -> str:
    """Why a photo the open-set score refused gets no species (its score is for ``--verbose`` and ``--json``)."""
    return f"this does not look like any of the {n_species} species this model knows"


SYNTHETIC_BANNER = ("THIS MODEL WAS TRAINED ON SYNTHETIC DRAWINGS, NOT ON PHOTOS OF MUSHROOMS: "
                    "its answers on real photos mean nothing.")


# --------------------------------------------------------------------------- answers


def _rounded(answer_part) -> dict[str, Any]:
    """A dataclass's fields as a dict, the probability rounded for JSON output."""
    fields = asdict(answer_part)
    return {**fields, "probability": round(fields["probability"], 6)}


@dataclass(frozen=True)
class SpeciesMatch:
    """One of the top-5 species for a photo."""

    scientific_name: str
    common_name: str
    taxon_id: int
    probability: float  # calibrated
    edibility: str
    caution: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _rounded(self)


@dataclass(frozen=True)
class Lookalike:
    """A poisonous or deadly species in the top 5 above :data:`LOOKALIKE_MIN_PROBABILITY`."""

    scientific_name: str
    common_name: str
    edibility: str  # poisonous or deadly
    probability: float
    caution: str = ""

    @property
    def message(self) -> str:
        text = (f"possible {self.edibility.upper()} lookalike among the other answers: {self.scientific_name} "
                f"({self.common_name}), {format_probability(self.probability)}")
        return f"{text} - {self.caution}" if self.caution else text

    def to_dict(self) -> dict[str, Any]:
        return {**_rounded(self), "message": self.message}


@dataclass(frozen=True)
class GenusMatch:
    """A genus answer: the species is not certain enough, the genus is."""

    genus: str
    probability: float  # the summed calibrated probability of its species
    species: tuple[str, ...]  # its species in the catalog (scientific names)
    worst_edibility: str  # the most dangerous edibility among them
    threshold: float | None = None  # the genus threshold it cleared

    @property
    def message(self) -> str:
        worst = self.worst_edibility
        holds = {"deadly": "this genus holds DEADLY species", "poisonous": "this genus holds POISONOUS species",
                 "inedible": "this genus holds inedible species"}.get(worst, "every species of it this model knows "
                                                                            "is edible")
        return f"{holds}; its species this model knows: {', '.join(self.species)}"

    def to_dict(self) -> dict[str, Any]:
        return {"genus": self.genus, "probability": round(self.probability, 6), "species": list(self.species),
                "worst_edibility": self.worst_edibility,
                "threshold": None if self.threshold is None else round(self.threshold, 6), "message": self.message}


@dataclass(frozen=True)
class Answer:
    """The answer for one photo; ``error`` is set (and nothing else) when it failed.

    ``verdict`` is one of :data:`mushroom.policy.VERDICTS` for a species answer, or
    :data:`UNKNOWN_SPECIES` / :data:`UNUSABLE_PHOTO` for a refusal. ``level`` is what the
    answer names (:data:`mushroom.levels.LEVELS`): ``species`` (the top candidate), ``genus``
    (``genus`` says which, its species and their worst edibility) or ``abstain`` (neither, and
    every refusal). ``reasons`` says why the
    answer abstains (empty for "edible" and "not edible"). ``lookalikes`` are the dangerous
    species among the other answers; ``top_danger`` is the top answer's own edibility when it
    is poisonous or deadly. For an unknown species, ``candidates`` are the closest known
    species (not an identification); an unusable photo has none.
    """

    photo: str
    candidates: tuple[SpeciesMatch, ...] = ()
    p_edible: float | None = None
    verdict: str | None = None
    lookalikes: tuple[Lookalike, ...] = ()
    error: str | None = None
    notice: str = ANSWER_NOTICE
    top_danger: str | None = None
    reasons: tuple[str, ...] = ()
    open_set_score: float | None = None
    open_set_threshold: float | None = None  # set when the open-set score refused the photo
    date: DateEvidence | None = None  # the date as evidence: used or why not (None: no date, nothing to say)
    level: str = ABSTAIN
    genus: GenusMatch | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def refused(self) -> bool:
        """The photo is not usable or not one of the known species: no species is named."""
        return self.verdict in (UNKNOWN_SPECIES, UNUSABLE_PHOTO)

    @property
    def verdict_text(self) -> str | None:
        return None if self.verdict is None else VERDICT_TEXT[self.verdict]

    @property
    def top_warning(self) -> str | None:
        """"top answer is POISONOUS: ..." when the top answer itself is dangerous."""
        if self.top_danger is None or not self.candidates:
            return None
        top = self.candidates[0]
        text = f"top answer is {self.top_danger.upper()}: {top.scientific_name} ({top.common_name})"
        return f"{text} - {top.caution}" if top.caution else text

    def to_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"photo": self.photo, "ok": False, "error": self.error, "notice": self.notice}
        out = {
            "photo": self.photo,
            "ok": True,
            "verdict": self.verdict,
            "verdict_text": self.verdict_text,
            "reasons": list(self.reasons),
            "level": self.level,
            "genus": None if self.genus is None else self.genus.to_dict(),
        }
        if self.verdict == UNKNOWN_SPECIES:
            out["closest_known"] = [c.to_dict() for c in self.candidates]
        elif self.verdict != UNUSABLE_PHOTO:
            out.update({
                "top5": [c.to_dict() for c in self.candidates],
                "p_edible": round(float(self.p_edible), 6),
                "top_answer_warning": self.top_warning,
                "lookalike_warnings": [w.to_dict() for w in self.lookalikes],
            })
        if self.open_set_score is not None:
            out["open_set_score"] = round(self.open_set_score, 6)
        if self.open_set_threshold is not None:
            out["open_set_threshold"] = round(self.open_set_threshold, 6)
        if self.date is not None:
            out["date"] = self.date.to_dict()
        out["notice"] = self.notice
        return out


# --------------------------------------------------------------------------- identifier


class Identifier:
    """A loaded bundle that answers photos.

    Args:
        bundle: Bundle location (see :func:`resolve_bundle`) or a :class:`~mushroom.bundle.Bundle`.
        variant: Model variant (``int8``, ``float32``, ...); default: the bundle's shipped
            variant (the quantize stage's choice).
        num_threads: CPU threads for the interpreter (None: the runtime's default).
        cache_dir: Cache folder for ``gs://`` bundles.
        refresh: Download a ``gs://`` bundle again.
        quality_gate: Refuse unusable photos before the model (:mod:`mushroom.quality`).
        open_set: Refuse photos whose open-set score is below the bundle's threshold.
        date: The date of the find, for every photo (the date as evidence: the bundle's month prior,
            :mod:`mushroom.month_prior`, where the evaluation kept it).
        photo_dates: Without ``date``, use each photo's EXIF date (where the bundle's prior is in use).

    Raises:
        BundleError: The bundle is missing a file, is inconsistent (labels that do not match
            the model's output size), or its model or policy cannot be used.
    """

    def __init__(self, bundle: str | Path | Bundle, variant: str | None = None,
                 num_threads: int | None = None, cache_dir: str | Path | None = None, refresh: bool = False,
                 quality_gate: bool = True, open_set: bool = True, date: date | None = None,
                 photo_dates: bool = True):
        if not isinstance(bundle, Bundle):
            bundle = read_bundle(resolve_bundle(bundle, cache_dir, refresh))
        self.bundle = bundle
        self.variant = variant or bundle.shipped_variant
        calibration = bundle.calibration.variant(self.variant)
        self.policy: Policy = calibration.policy
        self.levels: LevelRule | None = calibration.levels
        self.quality_gate = quality_gate
        self._open_set_off = not open_set
        if not (math.isfinite(self.policy.temperature) and self.policy.temperature > 0):
            raise BundleError(f"bundle {bundle.root}: calibration temperature {self.policy.temperature} "
                              f"of variant {self.variant!r} is not a positive number")
        path = bundle.model_path(self.variant)
        try:
            self.classifier = TFLiteClassifier(path, num_threads=num_threads)
        except (ValueError, RuntimeError) as err:
            raise BundleError(
                f"bundle {bundle.root}: {path.name} is not a usable TFLite model ({err})"
            ) from None
        n_labels = len(bundle.catalog)
        if self.classifier.num_classes != n_labels:
            raise BundleError(
                f"bundle {bundle.root}: labels do not match the model: {LABELS} lists {n_labels} "
                f"species but {path.name} outputs {self.classifier.num_classes} classes"
            )
        # After the label check: a bundle whose labels do not fit its model is reported as such.
        self.open_set: OpenSetRule | None = calibration.open_set if open_set else None
        if self.open_set is not None:
            try:
                self.open_set.check(n_labels)
            except ValueError as err:
                raise BundleError(f"bundle {bundle.root}: calibration.json: variant {self.variant}: {err}") from None
        declared = bundle.metadata.get("image_size")
        if declared is not None and int(declared) != self.classifier.image_size:
            raise BundleError(f"bundle {bundle.root}: metadata.json says image_size {declared} but "
                              f"{path.name} takes {self.classifier.image_size} px")
        if self.open_set is not None and self.open_set.needs_features:
            if not self.classifier.has_features:
                raise BundleError(f"bundle {bundle.root}: the open-set score {self.open_set.score!r} needs the "
                                  f"model's feature output, which {path.name} lacks")
            if self.classifier.feature_dim != self.open_set.features.dim:
                raise BundleError(f"bundle {bundle.root}: {path.name} outputs {self.classifier.feature_dim} "
                                  f"features but the open-set statistics have {self.open_set.features.dim}")
        self._species: list[Species] = list(bundle.catalog)
        self._edible = np.array([s.is_edible for s in self._species], dtype=bool)
        self.month_prior = read_month_prior(bundle.root, bundle.catalog)  # None: the bundle has none
        self.date, self.photo_dates = date, photo_dates
        self._genera = Genera.of(bundle.catalog)

    @property
    def image_size(self) -> int:
        return self.classifier.image_size

    @property
    def species(self) -> list[Species]:
        """The species the bundle knows, in class order."""
        return list(self._species)

    @property
    def synthetic(self) -> bool:
        """The bundle's model was trained on synthetic drawings (its provenance says so)."""
        from mushroom.sources import registry as sources

        return sources.is_synthetic(bundle_data_source(self.bundle.metadata))

    @property
    def open_set_unavailable(self) -> str | None:
        """Why this bundle cannot answer "not one of the species this model knows" (None: it can).

        The reason the evaluate stage recorded (e.g. its score could not tell held-out unknown
        species apart), or that the bundle has no rule, or that it is switched off.
        """
        rule = self.open_set
        if rule is not None and rule.threshold is not None:
            return None
        if self._open_set_off:
            return "switched off for this run"
        if rule is None:
            return f"its calibration has no open-set rule for the {self.variant} variant"
        return rule.fallback or "no open-set threshold was fitted"

    def describe(self) -> dict[str, Any]:
        """The bundle, variant, data source and policy in use (for reports)."""
        meta = self.bundle.metadata
        rule = self.open_set
        return {
            "path": str(self.bundle.root),
            "model_name": meta.get("model_name"),
            "architecture": meta.get("architecture"),
            "variant": self.variant,
            "image_size": self.image_size,
            "num_species": len(self._species),
            "species": [s.scientific_name for s in self._species],
            "data_source": bundle_data_source(meta),
            "synthetic_banner": SYNTHETIC_BANNER if self.synthetic else None,
            "policy": self.policy.to_dict(),
            "levels": None if self.levels is None else {k: v for k, v in self.levels.to_dict().items()
                                                        if k != "validation"},
            "open_set": None if rule is None else {k: v for k, v in rule.to_dict().items() if k != "prototypes"},
            "open_set_check": {"available": self.open_set_unavailable is None, "reason": self.open_set_unavailable},
            "quality_gate": self.quality_gate,
            "month_prior": None if self.month_prior is None else {
                "in_use": self.month_prior.in_use, "species_with_season": sum(self.month_prior.fitted),
                "reason": None if self.month_prior.decision is None else self.month_prior.decision.reason},
        }

    def calibrated(self, pixels: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for preprocessed pixels ``(n, size, size, 3)``."""
        return apply_temperature(self.classifier.predict(pixels), self.policy.temperature)

    def _predict(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities and, where the open-set score needs them, the pooled features."""
        if self.open_set is None or not self.open_set.needs_features:
            return self.calibrated(pixels), None
        probs, features = self.classifier.predict_with_features(pixels)
        return apply_temperature(probs, self.policy.temperature), features

    def unusable(self, photo: str, reason: str) -> Answer:
        """The answer for a photo the quality gate refused."""
        return Answer(photo, verdict=UNUSABLE_PHOTO, reasons=(f"not a usable photo: {reason}",))

    def date_evidence(self, photo: str | Path) -> DateEvidence | None:
        """What this photo's date does: ``date`` if given, else its EXIF date (read only where the
        bundle's prior is in use, unless ``photo_dates`` is off); None: no date and nothing to say."""
        if self.date is not None:
            return date_evidence(PhotoDate(self.date, "--date"), self.month_prior)
        if not self.photo_dates or self.month_prior is None or not self.month_prior.in_use:
            return None
        return date_evidence(exif_date(photo), self.month_prior)

    def answer_dated(self, photo: str, probs: np.ndarray, features: np.ndarray | None = None) -> Answer:
        """:meth:`answer` with the date as evidence: where it is used, the month prior is multiplied into
        the probabilities before calibration (the open-set score stays the photo's own); the answer
        says whether the date was used and why not."""
        evidence = self.date_evidence(photo)
        if evidence is None or not evidence.used:
            answer = self.answer(photo, probs, features)
        else:
            dated = self.month_prior.apply(probs, evidence.month, self.policy.temperature)
            answer = self.answer(photo, dated, features, open_set_probs=probs)
        return answer if evidence is None or not answer.ok else replace(answer, date=evidence)

    def answer(self, photo: str, probs: np.ndarray, features: np.ndarray | None = None,
               open_set_probs: np.ndarray | None = None) -> Answer:
        """Build the answer for one photo from its calibrated probabilities ``(num_classes,)``.

        ``features`` are its pooled features ``(dim,)``, needed when the bundle's open-set score
        is computed from them (``mahalanobis``). The open-set rule is applied first (photos below
        its threshold are "unknown species");
        otherwise the species answer, with the veto: a poisonous or deadly species above 1%
        among the top 5, the top answer included, means the verdict is never "edible".
        """
        top = top_classes(probs, TOP_K)
        candidates = tuple(
            SpeciesMatch(s.scientific_name, s.common_name, s.taxon_id, float(probs[i]), s.edibility, s.caution)
            for i in top
            for s in (self._species[i],)
        )
        score = None
        if self.open_set is not None:
            own = probs if open_set_probs is None else open_set_probs  # the date never moves the open-set score
            score = float(self.open_set.scores(own[None], None if features is None else features[None])[0])
            if self.open_set.threshold is not None and score < self.open_set.threshold:
                return Answer(photo, candidates, verdict=UNKNOWN_SPECIES,
                              reasons=(unknown_species_reason(len(self._species)),), open_set_score=score,
                              open_set_threshold=self.open_set.threshold)
        dangerous = [c for c in candidates if c.edibility in DANGEROUS and c.probability > LOOKALIKE_MIN_PROBABILITY]
        top_danger = candidates[0].edibility if candidates and candidates[0].edibility in DANGEROUS else None
        lookalikes = tuple(Lookalike(c.scientific_name, c.common_name, c.edibility, c.probability, c.caution)
                           for c in dangerous if c is not candidates[0])
        p_edible = float(edible_probability(probs, self._edible))
        verdict = self.policy.verdict(p_edible, dangerous_lookalike=bool(dangerous) or top_danger is not None)
        reasons = self._reasons(verdict, p_edible, dangerous)
        level, genus = self._level(probs)
        if genus is not None and genus.worst_edibility != "edible" and verdict != NOT_EDIBLE:
            verdict = NOT_EDIBLE  # a genus answer's verdict is the genus's worst case
            reasons = ()
        return Answer(photo, candidates, p_edible, verdict, lookalikes, top_danger=top_danger,
                      reasons=reasons, open_set_score=score, level=level, genus=genus)

    def _level(self, probs: np.ndarray) -> tuple[str, GenusMatch | None]:
        """The answer's level (:mod:`mushroom.levels`) and, for a genus answer, the genus."""
        found = answer_levels(probs[None], self._genera, self.levels)
        level = str(found.level[0])
        if level != GENUS:
            return level, None
        members = self._genera.members[int(found.top_genus[0])]
        return level, GenusMatch(self._genera.names[int(found.top_genus[0])], float(found.genus_probability[0]),
                                 tuple(self._species[i].scientific_name for i in members),
                                 self.bundle.catalog.worst_edibility(members), self.levels.genus_threshold)

    def _reasons(self, verdict: str, p_edible: float, dangerous: list[SpeciesMatch]) -> tuple[str, ...]:
        """Why a species answer's verdict abstains ("uncertain - ask an expert"); empty otherwise."""
        if verdict != UNCERTAIN:
            return ()
        reasons = []
        if dangerous:
            named = ", ".join(f"{c.scientific_name} ({c.edibility}, {format_probability(c.probability)})"
                              for c in dangerous)
            reasons.append(f"dangerous lookalike above {LOOKALIKE_MIN_PROBABILITY:.0%} among the top answers: {named}")
        threshold = self.policy.edible_threshold
        if threshold is None:
            if p_edible >= self.policy.not_edible_below:
                reasons.append("not certain enough: this bundle has no fitted safety threshold, so it never says "
                               "'edible'")
        elif p_edible < threshold:
            reasons.append(f"not certain enough: P(edible) {format_probability(p_edible)} is below the safety "
                           f"threshold {format_probability(threshold)}")
        if not reasons:  # edible by the threshold but vetoed: said above; keep one line regardless
            reasons.append("not certain enough")
        return tuple(reasons)

    def _read(self, photo: str | Path) -> tuple[np.ndarray, str | None]:
        """The model input of a photo and, with the quality gate on, why it is not usable (None: usable)."""
        if not self.quality_gate:
            return load_image(photo, self.image_size), None
        read = read_photo(photo, self.image_size)
        return read.pixels, check_photo(read)

    def identify(self, photo: str | Path) -> Answer:
        """Answer one photo.

        Raises:
            ImageError: The photo is missing, empty, a folder, or not a readable image.
        """
        pixels, unusable = self._read(photo)
        if unusable:
            return self.unusable(str(photo), unusable)
        probs, features = self._predict(pixels[None])
        return self.answer_dated(str(photo), probs[0], None if features is None else features[0])

    def identify_many(self, photos: Iterable[str | Path], batch_size: int = 16) -> Iterator[Answer]:
        """Answer photos in order; a photo that cannot be read gets an answer with ``error`` set."""
        batch: list[tuple[str, np.ndarray]] = []
        for photo in photos:
            try:
                pixels, unusable = self._read(photo)
            except ImageError as err:
                yield from self._flush(batch)
                batch = []
                yield Answer(str(photo), error=str(err))
                continue
            except Exception as err:  # one odd photo must not stop the others
                yield from self._flush(batch)
                batch = []
                yield Answer(str(photo), error=f"{photo}: cannot be read ({type(err).__name__}: {err})")
                continue
            if unusable:
                yield from self._flush(batch)
                batch = []
                yield self.unusable(str(photo), unusable)
                continue
            batch.append((str(photo), pixels))
            if len(batch) >= batch_size:
                yield from self._flush(batch)
                batch = []
        yield from self._flush(batch)

    def _flush(self, batch: list[tuple[str, np.ndarray]]) -> Iterator[Answer]:
        if not batch:
            return
        probs, features = self._predict(np.stack([pixels for _, pixels in batch]))
        for i, (photo, _) in enumerate(batch):
            yield self.answer_dated(photo, probs[i], None if features is None else features[i])


def bundle_data_source(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a bundle's model was trained on (``metadata.json``'s ``provenance.data``); {} if unrecorded."""
    return dict((metadata.get("provenance") or {}).get("data") or {})


def identify(photos: str | Path | Iterable[str | Path], bundle: str | Path | Bundle, *,
             variant: str | None = None, num_threads: int | None = None,
             cache_dir: str | Path | None = None) -> list[Answer]:
    """Identify photos with a bundle (the Python form of ``mushroom identify``).

    Args:
        photos: One photo path or several; a folder stands for its photo files, recursively
            and sorted (:func:`mushroom.preprocess.expand_photos`).
        bundle: Bundle folder, publish destination, or ``gs://`` prefix (see :func:`resolve_bundle`).
        variant: Model variant; default: the variant the bundle's run chose.
        num_threads: Interpreter CPU threads.
        cache_dir: Cache for ``gs://`` bundles.

    Returns:
        One :class:`Answer` per photo, in order; unreadable photos have ``error`` set.

    Raises:
        BundleError: The bundle cannot be used.
    """
    if isinstance(photos, str | Path):
        photos = [photos]
    identifier = Identifier(bundle, variant=variant, num_threads=num_threads, cache_dir=cache_dir)
    return list(identifier.identify_many(expand_photos(list(photos))))


# --------------------------------------------------------------------------- output


def format_probability(p: float) -> str:
    if p < 0.001:
        return "<0.1%"
    if p > 0.999:
        return ">99.9%"
    return f"{100 * p:.1f}%"
