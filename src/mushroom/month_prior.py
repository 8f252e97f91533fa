"""The date of a find as evidence: a per-species month prior (numpy and the standard library).

Most mushrooms fruit in a few months of the year. The train stage counts, per species, the
months of the dated observations of the train split (:func:`fit_month_prior`) and smooths them
into ``P(month | species)``: each count is spread over its month and the two beside it (a
circular kernel, so December is next to January), every month gets a small pseudo-count, and a
tenth of the flat prior is mixed in, so that no month is ever impossible and a find out of season
is weighed down, never ruled out. A species with fewer than ``min_observations`` dated
observations keeps the flat prior (1/12 for every month): too few dates say nothing.

``identify`` multiplies the model's probabilities by the prior of the photo's month before
calibration (Bayes' rule: the image model's posterior times ``P(month | species)``,
renormalised; :meth:`MonthPrior.apply`). The evaluate stage measures it on the dated validation
and test photos and records in the bundle whether it helped on validation
(:func:`judge_prior`); when it did not, the shipped answer leaves it out.

Dates come from iNaturalist's ``observed_on``, a photo's EXIF ``DateTimeOriginal``
(:func:`exif_date`, Pillow imported when first asked) or the synthetic source, whose dates are
invented from each species' fruiting season (:func:`fruiting_months`). The bundle file
(``month_prior.json``) is read and written by :mod:`mushroom.bundle` alone, through
:meth:`MonthPrior.to_json` and :meth:`MonthPrior.from_json`.

One idea, the date as evidence, in one module of about 500 lines: reading dates, fitting the
prior, applying it and judging it all serve it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
MONTHS = 12
MIN_OBSERVATIONS = 10  # fewer dated observations of a species: the flat prior
PSEUDO_COUNT = 0.5  # added to every month after smoothing
FLAT_SHARE = 0.1  # mixed in from the flat prior: no month is ever more than ~100 times less likely than another
KERNEL = (0.25, 0.5, 0.25)  # weights of the month before, the month, the month after
EARLIEST_YEAR = 1900
EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 36867
FRUITING_FILE = "data/fruiting_months.csv"


# --------------------------------------------------------------------------- dates


def parse_date(text: str, today: date | None = None, what: str = "date") -> date:
    """A ``YYYY-MM-DD`` date that can be a find's: not in the future, not before 1900.

    Raises:
        ValueError: One line saying what is wrong (unparseable, in the future, before 1900).
    """
    text = str(text).strip()
    try:
        value = date.fromisoformat(text) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else None
    except ValueError:
        value = None
    if value is None:
        raise ValueError(f"{what} {text!r} is not a date of the form YYYY-MM-DD (e.g. 2024-09-14)")
    return check_date(value, today, what)


def check_date(value: date, today: date | None = None, what: str = "date") -> date:
    """``value`` itself, or a ValueError when it lies in the future or before 1900."""
    today = today or date.today()
    if value > today:
        raise ValueError(f"{what} {value.isoformat()} is in the future (today is {today.isoformat()})")
    if value.year < EARLIEST_YEAR:
        raise ValueError(f"{what} {value.isoformat()} is before {EARLIEST_YEAR}")
    return value


def month_of(observed_on: str) -> int:
    """The month (1-12) of a manifest's ``observed_on`` (``YYYY-MM-DD``, or ISO date-time); 0 when
    it is empty or not a date."""
    text = (observed_on or "").strip()
    if not text:
        return 0
    try:
        return datetime.fromisoformat(text).month if "T" in text else date.fromisoformat(text[:10]).month
    except ValueError:
        return 0


@dataclass(frozen=True)
class PhotoDate:
    """The date a photo is answered with, where it came from, or why there is none.

    Attributes:
        value: The date (None: none).
        source: ``"--date"`` (given for every photo) or ``"exif"`` (the photo's DateTimeOriginal).
        notice: Why a date was not used (an unreadable EXIF block, a bundle without a prior ...).
    """

    value: date | None = None
    source: str = ""
    notice: str | None = None

    @property
    def month(self) -> int:
        return 0 if self.value is None else self.value.month


MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December")


@dataclass(frozen=True)
class DateEvidence:
    """What ``identify`` did with a photo's date (the answer's ``date``).

    Attributes:
        date: ``YYYY-MM-DD`` ("" when the photo's EXIF date could not be read).
        source: ``"--date"`` or ``"exif"``.
        used: The month prior was multiplied in.
        note: One line: what was done, or why the date was not used.
    """

    date: str
    source: str
    used: bool
    note: str

    @property
    def month(self) -> int:
        return month_of(self.date)

    def to_dict(self) -> dict[str, Any]:
        return {"date": self.date or None, "source": self.source, "used": self.used, "note": self.note}


def date_evidence(found: PhotoDate, prior: MonthPrior | None) -> DateEvidence | None:
    """What a photo's date does with a bundle's prior; None when there is no date and nothing to say."""
    if found.notice:
        return DateEvidence("", found.source or "exif", False, f"{found.notice}: answered without the date")
    if found.value is None:
        return None
    day = found.value.isoformat()
    if prior is None:
        return DateEvidence(day, found.source, False, "this bundle has no month prior: answered without the date")
    if not prior.any_fitted:
        return DateEvidence(day, found.source, False, "no species of this bundle had enough dated train "
                                                      "observations for a month prior: answered without the date")
    if prior.decision is None:
        return DateEvidence(day, found.source, False, "this bundle's month prior was never judged on validation "
                                                      "(the evaluate stage does): answered without the date")
    if not prior.decision.use:
        return DateEvidence(day, found.source, False, f"the evaluation left this bundle's month prior out "
                                                      f"({prior.decision.reason}): answered without the date")
    return DateEvidence(day, found.source, True,
                        f"the date was used: how often each species is found in {MONTH_NAMES[found.value.month - 1]} "
                        f"is weighed in ({_seasons(prior)})")


def _seasons(prior: MonthPrior) -> str:
    fitted = sum(prior.fitted)
    if fitted == prior.num_classes:
        return f"all {fitted} species have a season"
    return f"{fitted} of {prior.num_classes} species have a season; the others count every month alike"


def exif_date(path: str | Path, today: date | None = None) -> PhotoDate:
    """A photo's EXIF ``DateTimeOriginal``.

    Returns:
        The date (source ``exif``); no date and no notice when the photo has no EXIF date; no
        date and a notice (what is wrong, one phrase) when its EXIF block cannot be read or its
        date is not a usable date.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        # Pillow reads a corrupt block with a warning, or as an empty one, rather than failing.
        with warnings.catch_warnings(record=True) as caught, Image.open(path) as image:
            warnings.simplefilter("always")
            exif = image.getexif()
            raw = exif.get_ifd(EXIF_IFD).get(DATE_TIME_ORIGINAL)
            block = image.info.get("exif")
    except (FileNotFoundError, IsADirectoryError, UnidentifiedImageError):
        return PhotoDate()  # not a photo: reading it says so
    except Exception as err:  # noqa: BLE001 - any parser failure means "a broken EXIF block"
        return PhotoDate(notice=f"the photo's EXIF block cannot be read ({type(err).__name__}: {err})")
    corrupt = [str(w.message) for w in caught if "exif" in str(w.message).lower()]
    if corrupt or (block and len(exif) == 0 and raw is None):
        detail = corrupt[0].strip() if corrupt else "not a TIFF structure"
        return PhotoDate(notice=f"the photo's EXIF block cannot be read ({detail})")
    if raw is None:
        return PhotoDate()
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    text = text.strip("\x00 ")
    try:
        value = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S").date()
        check_date(value, today, "the photo's EXIF date")
    except ValueError as err:
        reason = str(err) if str(err).startswith("the photo") else f"the photo's EXIF date {text!r} is not a date"
        return PhotoDate(notice=reason)
    return PhotoDate(value, "exif")


# --------------------------------------------------------------------------- fruiting seasons


def parse_months(text: str) -> tuple[int, ...]:
    """Months from ``"8-11"``, ``"10-12,1-4"`` or ``"1-12"`` (a range may wrap: ``"10-3"``)."""
    months: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        first, _, last = part.partition("-")
        a, b = int(first), int(last or first)
        if not (1 <= a <= MONTHS and 1 <= b <= MONTHS):
            raise ValueError(f"months {text!r}: {part!r} is not within 1-12")
        span = (b - a) % MONTHS + 1
        months += [(a - 1 + k) % MONTHS + 1 for k in range(span)]
    return tuple(sorted(set(months)))


def fruiting_months() -> dict[int, tuple[int, ...]]:
    """Taxon id -> the months its fruit bodies are usually found (Europe, approximate), from
    the packaged ``data/fruiting_months.csv``; the synthetic source draws its dates from these."""
    text = resources.files("mushroom").joinpath(FRUITING_FILE).read_text(encoding="utf-8")
    return {int(row["taxon_id"]): parse_months(row["months"]) for row in csv.DictReader(io.StringIO(text))}


# --------------------------------------------------------------------------- the prior


@dataclass(frozen=True)
class PriorDecision:
    """Whether the shipped answer uses the prior, decided by the evaluate stage on validation.

    Attributes:
        use: True: ``identify`` multiplies the prior in; False: it answers without it.
        reason: One line saying why.
        variant: The variant it was judged on.
        validation: The dated validation photos' figures without and with the prior.
    """

    use: bool
    reason: str
    variant: str | None = None
    validation: dict[str, Any] | None = None


@dataclass(frozen=True)
class MonthPrior:
    """``P(month | species)`` per class, in the model's class order.

    Attributes:
        taxon_ids: The classes, in model output order.
        likelihood: ``(classes, 12)``, each row sums to 1 (column 0 is January).
        dated_observations: Per class, the dated train observations it was fitted on.
        fitted: Per class, False where the flat prior was kept (too few dated observations).
        min_observations, pseudo_count, kernel: How it was fitted.
        decision: The evaluate stage's judgement (None: not judged yet: not applied).
    """

    taxon_ids: tuple[int, ...]
    likelihood: np.ndarray
    dated_observations: tuple[int, ...]
    fitted: tuple[bool, ...]
    min_observations: int = MIN_OBSERVATIONS
    pseudo_count: float = PSEUDO_COUNT
    kernel: tuple[float, ...] = KERNEL
    decision: PriorDecision | None = field(default=None)

    @property
    def num_classes(self) -> int:
        return len(self.taxon_ids)

    @property
    def any_fitted(self) -> bool:
        return any(self.fitted)

    @property
    def in_use(self) -> bool:
        """The shipped answer uses it: the evaluation judged that it helps on validation."""
        return self.decision is not None and self.decision.use and self.any_fitted

    def with_decision(self, decision: PriorDecision) -> MonthPrior:
        return replace(self, decision=decision)

    def check(self, taxon_ids) -> None:
        """Raise ValueError unless the prior's classes are ``taxon_ids`` in the same order."""
        if [int(t) for t in taxon_ids] != list(self.taxon_ids):
            raise ValueError("the month prior's classes differ from the model's (another class order?)")

    def factors(self, months) -> np.ndarray:
        """``(n, classes)``: each row's ``P(month | species)`` (1 for every class where month is 0: no date)."""
        months = np.asarray(months, dtype=np.int64).reshape(-1)
        if np.any((months < 0) | (months > MONTHS)):
            raise ValueError("months must be 1-12 (0: no date)")
        out = np.ones((len(months), self.num_classes), dtype=np.float64)
        dated = months > 0
        out[dated] = self.likelihood[:, months[dated] - 1].T
        return out

    def apply(self, probs: np.ndarray, months, temperature: float = 1.0) -> np.ndarray:
        """Multiply probabilities by the prior of each row's month and renormalise.

        Args:
            probs: ``(n, classes)`` (or ``(classes,)``) probabilities.
            months: Per row, the month 1-12, or 0 for no date (the row is returned unchanged).
            temperature: The temperature ``probs`` were calibrated with: the prior is raised to
                ``1 / temperature``, so that applying it to calibrated probabilities equals
                applying it before calibration (``softmax((log p + log prior) / T)``).
        """
        probs = np.asarray(probs, dtype=np.float64)
        single = probs.ndim == 1
        rows = probs[None] if single else probs
        factor = self.factors(months)
        if len(factor) == 1 and len(rows) > 1:
            factor = np.repeat(factor, len(rows), axis=0)
        if factor.shape != rows.shape:
            raise ValueError(f"probabilities {rows.shape} and months {factor.shape[0]} do not match")
        out = rows * factor ** (1.0 / float(temperature))
        out = out / out.sum(axis=-1, keepdims=True)
        return (out[0] if single else out).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "what": "P(month | species): the date of a find as evidence, multiplied into the model's "
                    "probabilities before calibration",
            "months": [name[:3] for name in MONTH_NAMES],
            "fit": {"min_observations": self.min_observations, "pseudo_count": self.pseudo_count,
                    "flat_share": FLAT_SHARE,
                    "kernel": list(self.kernel), "counted": "dated observations of the train split"},
            "species": [{"taxon_id": t, "dated_observations": n, "fitted": f,
                         "likelihood": [round(float(p), 6) for p in row]}
                        for t, n, f, row in zip(self.taxon_ids, self.dated_observations, self.fitted,
                                                self.likelihood, strict=True)],
            "decision": None if self.decision is None else {
                "use": self.decision.use, "reason": self.decision.reason, "variant": self.decision.variant,
                "validation": self.decision.validation},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MonthPrior:
        """The prior in a ``month_prior.json`` dict (ValueError: malformed or of a newer version)."""
        version = int(data.get("schema_version", 1))
        if version > SCHEMA_VERSION:
            raise ValueError(f"schema version {version} is newer than this code reads ({SCHEMA_VERSION}); "
                             f"upgrade quantized-mushroom")
        try:
            rows = data["species"]
            likelihood = np.array([row["likelihood"] for row in rows], dtype=np.float64).reshape(len(rows), MONTHS)
            if np.any(likelihood <= 0) or not np.allclose(likelihood.sum(axis=1), 1.0, atol=1e-4):
                raise ValueError("each species' likelihood must be positive and sum to 1")
            fit = data.get("fit") or {}
            decision = data.get("decision")
            return cls(tuple(int(row["taxon_id"]) for row in rows), likelihood / likelihood.sum(axis=1, keepdims=True),
                       tuple(int(row.get("dated_observations", 0)) for row in rows),
                       tuple(bool(row.get("fitted", True)) for row in rows),
                       int(fit.get("min_observations", MIN_OBSERVATIONS)),
                       float(fit.get("pseudo_count", PSEUDO_COUNT)), tuple(fit.get("kernel", KERNEL)),
                       None if not decision else PriorDecision(bool(decision["use"]), str(decision.get("reason", "")),
                                                               decision.get("variant"), decision.get("validation")))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed month prior: {err}") from None


def smooth_counts(counts: np.ndarray, kernel=KERNEL, pseudo_count: float = PSEUDO_COUNT,
                  flat_share: float = FLAT_SHARE) -> np.ndarray:
    """``(..., 12)`` month counts smoothed around the year (December beside January), plus the
    pseudo-count, normalised to ``P(month)`` per row, with ``flat_share`` of the flat prior mixed in."""
    counts = np.asarray(counts, dtype=np.float64)
    half = len(kernel) // 2
    smoothed = sum(w * np.roll(counts, k - half, axis=-1) for k, w in enumerate(kernel))
    smoothed = smoothed + pseudo_count
    return (1 - flat_share) * smoothed / smoothed.sum(axis=-1, keepdims=True) + flat_share / MONTHS


def fit_month_prior(taxon_ids, records, min_observations: int = MIN_OBSERVATIONS,
                    pseudo_count: float = PSEUDO_COUNT, kernel=KERNEL) -> MonthPrior:
    """Fit ``P(month | species)`` from dated photo records.

    Each observation counts once (its photos share its date); records without a date, or of a
    species outside ``taxon_ids``, are skipped.

    Args:
        taxon_ids: The classes in model output order.
        records: :class:`mushroom.manifest.PhotoRecord` s (the train split's).
        min_observations: Species with fewer dated observations keep the flat prior.
    """
    taxon_ids = tuple(int(t) for t in taxon_ids)
    index = {t: i for i, t in enumerate(taxon_ids)}
    counts = np.zeros((len(taxon_ids), MONTHS), dtype=np.float64)
    seen: set[tuple[int, str]] = set()
    for record in records:
        month = month_of(getattr(record, "observed_on", ""))
        key = (int(record.taxon_id), str(record.observation_id))
        if month == 0 or key[0] not in index or key in seen:
            continue
        seen.add(key)
        counts[index[key[0]], month - 1] += 1
    dated = counts.sum(axis=1)
    fitted = dated >= max(1, min_observations)
    likelihood = np.full_like(counts, 1.0 / MONTHS)
    if fitted.any():
        likelihood[fitted] = smooth_counts(counts[fitted], kernel, pseudo_count)
    return MonthPrior(taxon_ids, likelihood, tuple(int(n) for n in dated), tuple(bool(f) for f in fitted),
                      int(min_observations), float(pseudo_count), tuple(float(w) for w in kernel))


# --------------------------------------------------------------------------- judging it


def _figures(labels: np.ndarray, probs: np.ndarray, edible: np.ndarray, dangerous_class: np.ndarray,
             edible_threshold: float | None) -> dict[str, Any]:
    """Top-1 and the safety figures of calibrated ``probs`` under an edible threshold."""
    p_edible = probs[:, edible].sum(axis=1)
    dangerous = dangerous_class[labels]
    called_edible = np.zeros(len(labels), bool) if edible_threshold is None else p_edible >= edible_threshold
    return {
        "photos": int(len(labels)),
        "top1": float(np.mean(probs.argmax(axis=1) == labels)) if len(labels) else None,
        "dangerous_photos": int(dangerous.sum()),
        "dangerous_as_edible": int(np.sum(called_edible & dangerous)),
        "dangerous_as_edible_rate": float(np.mean(called_edible[dangerous])) if dangerous.any() else None,
        "edible_verdicts": int(called_edible.sum()),
        "naive_dangerous_as_edible": int(np.sum((p_edible >= 0.5) & dangerous)),
    }


def measure_prior(prior: MonthPrior, labels, raw_probs, months, temperature: float, edible_threshold: float | None,
                  edible: np.ndarray, dangerous_class: np.ndarray) -> dict[str, Any]:
    """Top-1 and the safety figures of the dated photos, without and with the prior.

    Args:
        labels: True class per photo.
        raw_probs: The model's (uncalibrated) probabilities.
        months: Per photo the month 1-12, 0 for no date (left out: only dated photos are measured).
        temperature, edible_threshold: The fitted calibration, applied after the prior.
        edible, dangerous_class: Per class, edible and poisonous-or-deadly.

    Returns:
        ``photos`` (all), ``dated`` (with a date), ``without`` and ``with`` (:func:`_figures` of
        the dated photos), ``top1_change`` (points, with minus without).
    """
    from mushroom.policy import apply_temperature

    labels = np.asarray(labels)
    months = np.asarray(months, dtype=np.int64)
    dated = months > 0
    out: dict[str, Any] = {"photos": int(len(labels)), "dated": int(dated.sum())}
    if not dated.any():
        return {**out, "without": None, "with": None, "top1_change": None}
    raw = np.asarray(raw_probs, dtype=np.float64)[dated]
    plain = apply_temperature(raw, temperature)
    with_prior = apply_temperature(prior.apply(raw, months[dated]), temperature)
    without = _figures(labels[dated], plain, edible, dangerous_class, edible_threshold)
    withp = _figures(labels[dated], with_prior, edible, dangerous_class, edible_threshold)
    return {**out, "without": without, "with": withp,
            "top1_change": round(100 * (withp["top1"] - without["top1"]), 4)}


def judge_prior(prior: MonthPrior, validation: dict[str, Any], variant: str | None = None) -> PriorDecision:
    """Use the prior only where it helps on validation: more dated validation photos right at
    top-1 and no more dangerous photos called edible (under the fitted threshold, nor at the naive
    P(edible) >= 0.5)."""
    if not prior.any_fitted:
        return PriorDecision(False, "no species had enough dated train observations", variant, validation)
    if not validation.get("dated"):
        return PriorDecision(False, "no validation photo has a date to judge it on", variant, validation)
    without, withp = validation["without"], validation["with"]
    if withp["dangerous_as_edible"] > without["dangerous_as_edible"] or \
            withp["naive_dangerous_as_edible"] > without["naive_dangerous_as_edible"]:
        return PriorDecision(False, "more dangerous validation photos called edible with it", variant, validation)
    if withp["top1"] <= without["top1"]:
        return PriorDecision(False, f"it does not raise validation top-1 ({100 * without['top1']:.1f}% -> "
                                    f"{100 * withp['top1']:.1f}% on {validation['dated']} dated photos)",
                             variant, validation)
    return PriorDecision(True, f"validation top-1 {100 * without['top1']:.1f}% -> {100 * withp['top1']:.1f}% on "
                               f"{validation['dated']} dated photos, no more dangerous photos called edible",
                         variant, validation)


def evaluate_prior(prior: MonthPrior, catalog, variant: str, policy, validation: tuple, test: tuple
                   ) -> tuple[MonthPrior, dict[str, Any]]:
    """Measure the prior on the dated validation and test photos of one variant and judge it.

    Args:
        prior: The bundle's prior.
        catalog: The classes (edibility per class).
        variant: The variant measured (the shipped one).
        policy: Its fitted :class:`mushroom.policy.Policy` (temperature, edible threshold).
        validation, test: ``(labels, raw probabilities, months)`` of each split (month 0: no date).

    Returns:
        The prior with its decision (:func:`judge_prior`, on validation) and the figures in the
        form of :class:`mushroom.evaluation.MonthPriorEffect`.
    """
    edible = np.array([s.is_edible for s in catalog], bool)
    dangerous = np.array([s.is_dangerous for s in catalog], bool)
    figures = {name: measure_prior(prior, labels, probs, months, policy.temperature, policy.edible_threshold,
                                   edible, dangerous)
               for name, (labels, probs, months) in (("validation", validation), ("test", test))}
    decision = judge_prior(prior, figures["validation"], variant)
    effect = {"variant": variant, "fitted_species": int(sum(prior.fitted)), "num_species": prior.num_classes,
              "used": decision.use, "reason": decision.reason, **figures}
    return prior.with_decision(decision), effect
