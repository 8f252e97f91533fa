"""Identify a mushroom offline from a photo with a published TFLite bundle.

For each photo: the top-5 species with calibrated probabilities, P(edible), the verdict of
the bundle's safety policy (``mushroom.policy``) and warnings about poisonous or deadly
lookalikes in the top 5. Every answer says that it never gives permission to eat.

Only numpy, Pillow and ai-edge-litert are needed: this module (and the ``mushroom identify``
command) never imports TensorFlow, Keras, kfp, pydantic or PyYAML. ``gs://`` bundles need
google-cloud-storage once, to fill the local cache; later calls run offline from the cache.

    from mushroom.identify import identify
    for answer in identify(["cep.jpg"], "outputs/demo/published"):
        print(answer.verdict_text, answer.candidates[0].scientific_name)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mushroom.bundle import LABELS, Bundle, BundleError, read_bundle
from mushroom.policy import (
    EDIBLE,
    NOT_EDIBLE,
    UNCERTAIN,
    Policy,
    apply_temperature,
    edible_probability,
    top_classes,
)
from mushroom.preprocess import ImageError, load_image
from mushroom.publish import locate_published_bundle
from mushroom.species import DANGEROUS, Species
from mushroom.storage import cache_path, download_atomically, is_gcs_uri, user_cache_dir
from mushroom.tflite import TFLiteClassifier

TOP_K = 5
LOOKALIKE_MIN_PROBABILITY = 0.01  # dangerous species in the top 5 above this are named

NOTICE = (
    "This tool only informs. It NEVER gives permission to eat a wild mushroom: "
    "have every find checked in person by a mushroom expert before eating it."
)
ANSWER_NOTICE = "Not permission to eat: a photo model can be wrong, and one mistake can kill."
VERDICT_TEXT = {
    EDIBLE: "edible species (by the model; NOT permission to eat)",
    NOT_EDIBLE: "not edible",
    UNCERTAIN: "uncertain - ask an expert",
}


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
        text = (f"possible {self.edibility.upper()} lookalike: {self.scientific_name} "
                f"({self.common_name}), {format_probability(self.probability)}")
        return f"{text} - {self.caution}" if self.caution else text

    def to_dict(self) -> dict[str, Any]:
        return {**_rounded(self), "message": self.message}


@dataclass(frozen=True)
class Answer:
    """The answer for one photo; ``error`` is set (and nothing else) when it failed."""

    photo: str
    candidates: tuple[SpeciesMatch, ...] = ()
    p_edible: float | None = None
    verdict: str | None = None  # one of mushroom.policy.VERDICTS
    lookalikes: tuple[Lookalike, ...] = ()
    error: str | None = None
    notice: str = ANSWER_NOTICE

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def verdict_text(self) -> str | None:
        return None if self.verdict is None else VERDICT_TEXT[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"photo": self.photo, "ok": False, "error": self.error, "notice": self.notice}
        return {
            "photo": self.photo,
            "ok": True,
            "top5": [c.to_dict() for c in self.candidates],
            "p_edible": round(float(self.p_edible), 6),
            "verdict": self.verdict,
            "verdict_text": self.verdict_text,
            "lookalike_warnings": [w.to_dict() for w in self.lookalikes],
            "notice": self.notice,
        }


# --------------------------------------------------------------------------- bundle location


def default_cache_dir() -> Path:
    """Where ``gs://`` bundles are cached: ``$XDG_CACHE_HOME/quantized-mushroom/bundles``."""
    return user_cache_dir("bundles")


def _bundle_folder(location: Path) -> Path:
    """A bundle folder itself, a published run's bundle, or the bundle of a destination's ``latest`` run."""
    try:
        return Path(locate_published_bundle(str(location)))
    except (OSError, ValueError) as err:
        raise BundleError(f"{location}: {err}") from None


def _download_gcs(uri: str, target: Path) -> None:
    """Download ``uri`` into ``target`` all or nothing (a partial download never counts as cached)."""
    try:
        download_atomically(uri, target)
    except ImportError as err:
        raise BundleError(
            f"{uri}: reading a gs:// bundle needs google-cloud-storage ({err}); "
            "install quantized-mushroom[pipeline] or copy the bundle locally"
        ) from None
    except FileNotFoundError:
        raise BundleError(f"{uri}: no bundle there (no objects under this prefix)") from None
    except Exception as err:  # network, credentials, checksum: all mean "no usable bundle"
        raise BundleError(
            f"{uri}: download failed ({type(err).__name__}: {err}); no cached copy in {target}"
        ) from None


def resolve_bundle(location: str | Path, cache_dir: str | Path | None = None, refresh: bool = False) -> Path:
    """The local bundle folder for ``location``.

    Args:
        location: A bundle folder, a publish destination (its ``latest`` run's bundle is
            used), a published run folder, or a ``gs://`` prefix of any of them. A ``gs://``
            prefix is downloaded once into ``cache_dir`` and read from there (offline) on
            later calls.
        cache_dir: Cache for ``gs://`` bundles (default :func:`default_cache_dir`).
        refresh: Download a ``gs://`` bundle again even if it is cached.

    Returns:
        The folder to pass to :func:`mushroom.bundle.read_bundle`.

    Raises:
        BundleError: A ``gs://`` bundle cannot be downloaded and is not cached, or a
            destination's ``latest`` does not hold a run id.
    """
    text = str(location)
    if not is_gcs_uri(text):
        return _bundle_folder(Path(text).expanduser())
    try:
        target = cache_path(text, Path(cache_dir) if cache_dir else default_cache_dir())
    except ValueError:
        raise BundleError(f"{text}: not a usable gs://BUCKET/PREFIX bundle location") from None
    if refresh or not target.is_dir():
        _download_gcs(text, target)
    # The whole prefix is cached, so a destination's latest run is found offline too.
    return _bundle_folder(target)


# --------------------------------------------------------------------------- identifier


class Identifier:
    """A loaded bundle that answers photos.

    Args:
        bundle: Bundle location (see :func:`resolve_bundle`) or a :class:`~mushroom.bundle.Bundle`.
        variant: Model variant (``int8``, ``float32``, ...); default: the calibration's
            ``default_variant`` (the variant the run chose).
        num_threads: CPU threads for the interpreter (None: the runtime's default).
        cache_dir: Cache folder for ``gs://`` bundles.
        refresh: Download a ``gs://`` bundle again.

    Raises:
        BundleError: The bundle is missing a file, is inconsistent (labels that do not match
            the model's output size), or its model or policy cannot be used.
    """

    def __init__(self, bundle: str | Path | Bundle, variant: str | None = None,
                 num_threads: int | None = None, cache_dir: str | Path | None = None, refresh: bool = False):
        if not isinstance(bundle, Bundle):
            bundle = read_bundle(resolve_bundle(bundle, cache_dir, refresh))
        self.bundle = bundle
        self.variant = variant or bundle.default_variant
        self.policy: Policy = bundle.policy(self.variant)
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
        declared = bundle.metadata.get("image_size")
        if declared is not None and int(declared) != self.classifier.image_size:
            raise BundleError(f"bundle {bundle.root}: metadata.json says image_size {declared} but "
                              f"{path.name} takes {self.classifier.image_size} px")
        self._species: list[Species] = list(bundle.catalog)
        self._edible = np.array([s.is_edible for s in self._species], dtype=bool)

    @property
    def image_size(self) -> int:
        return self.classifier.image_size

    def describe(self) -> dict[str, Any]:
        """The bundle, variant and policy in use (for reports)."""
        meta = self.bundle.metadata
        return {
            "path": str(self.bundle.root),
            "model_name": meta.get("model_name"),
            "architecture": meta.get("architecture"),
            "variant": self.variant,
            "image_size": self.image_size,
            "num_species": len(self._species),
            "policy": self.policy.to_dict(),
        }

    def calibrated(self, pixels: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for preprocessed pixels ``(n, size, size, 3)``."""
        return apply_temperature(self.classifier.predict(pixels), self.policy.temperature)

    def answer(self, photo: str, probs: np.ndarray) -> Answer:
        """Build the answer for one photo from its calibrated probabilities ``(num_classes,)``."""
        top = top_classes(probs, TOP_K)
        candidates = tuple(
            SpeciesMatch(s.scientific_name, s.common_name, s.taxon_id, float(probs[i]), s.edibility, s.caution)
            for i in top
            for s in (self._species[i],)
        )
        lookalikes = tuple(
            Lookalike(c.scientific_name, c.common_name, c.edibility, c.probability, c.caution)
            for c in candidates
            if c.edibility in DANGEROUS and c.probability > LOOKALIKE_MIN_PROBABILITY
        )
        p_edible = float(edible_probability(probs, self._edible))
        verdict = self.policy.verdict(p_edible, dangerous_lookalike=bool(lookalikes))
        return Answer(photo, candidates, p_edible, verdict, lookalikes)

    def identify(self, photo: str | Path) -> Answer:
        """Answer one photo.

        Raises:
            ImageError: The photo is missing, empty, a folder, or not a readable image.
        """
        pixels = load_image(photo, self.image_size)
        return self.answer(str(photo), self.calibrated(pixels[None])[0])

    def identify_many(self, photos: Iterable[str | Path], batch_size: int = 16) -> Iterator[Answer]:
        """Answer photos in order; a photo that cannot be read gets an answer with ``error`` set."""
        batch: list[tuple[str, np.ndarray]] = []
        for photo in photos:
            try:
                batch.append((str(photo), load_image(photo, self.image_size)))
            except ImageError as err:
                yield from self._flush(batch)
                batch = []
                yield Answer(str(photo), error=str(err))
            except Exception as err:  # one odd photo must not stop the others
                yield from self._flush(batch)
                batch = []
                yield Answer(str(photo), error=f"{photo}: cannot be read ({type(err).__name__}: {err})")
            if len(batch) >= batch_size:
                yield from self._flush(batch)
                batch = []
        yield from self._flush(batch)

    def _flush(self, batch: list[tuple[str, np.ndarray]]) -> Iterator[Answer]:
        if not batch:
            return
        probs = self.calibrated(np.stack([pixels for _, pixels in batch]))
        for (photo, _), row in zip(batch, probs, strict=True):
            yield self.answer(photo, row)


def identify(photos: str | Path | Iterable[str | Path], bundle: str | Path | Bundle, *,
             variant: str | None = None, num_threads: int | None = None,
             cache_dir: str | Path | None = None) -> list[Answer]:
    """Identify photos with a bundle (the Python form of ``mushroom identify``).

    Args:
        photos: One photo path or several.
        bundle: Bundle folder, publish destination, or ``gs://`` prefix (see :func:`resolve_bundle`).
        variant: Model variant; default: the bundle's calibrated default (int8).
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
    return list(identifier.identify_many(photos))


# --------------------------------------------------------------------------- output


def format_probability(p: float) -> str:
    if p < 0.001:
        return "<0.1%"
    if p > 0.999:
        return ">99.9%"
    return f"{100 * p:.1f}%"


def format_header(identifier: Identifier) -> str:
    d = identifier.describe()
    policy = identifier.policy
    threshold = ("never says 'edible' (no fitted threshold)" if policy.edible_threshold is None
                 else f"'edible' only at P(edible) >= {policy.edible_threshold:.3g}")
    return "\n".join([
        NOTICE,
        "",
        f"bundle: {d['path']}",
        f"model:  {d['model_name']} ({d['architecture']}, {d['variant']}, {d['image_size']} px, "
        f"{d['num_species']} species); policy: temperature {policy.temperature:.3g}, {threshold}",
    ])


def format_answer(answer: Answer) -> str:
    """A readable block for one answered photo."""
    if not answer.ok:
        return f"{answer.photo}\n  ERROR: {answer.error}"
    lines = [answer.photo,
             f"  {'#':>1}  {'species':<28} {'common name':<24} {'certainty':>9}  {'edibility':<9}  caution"]
    for i, c in enumerate(answer.candidates, start=1):
        lines.append(f"  {i:>1}  {c.scientific_name:<28} {c.common_name:<24} "
                     f"{format_probability(c.probability):>9}  {c.edibility:<9}  {c.caution}".rstrip())
    lines.append(f"  P(edible): {format_probability(answer.p_edible)}")
    lines.append(f"  verdict:   {answer.verdict_text}")
    for w in answer.lookalikes:
        lines.append(f"  WARNING:   {w.message}")
    lines.append(f"  {answer.notice}")
    return "\n".join(lines)


def format_footer(answers: list[Answer]) -> str:
    failed = sum(not a.ok for a in answers)
    counts = f"{len(answers) - failed} of {len(answers)} photo(s) answered"
    if failed:
        counts += f"; {failed} failed (errors above)"
    return f"{counts}.\n{NOTICE}"


def report(identifier: Identifier, answers: list[Answer]) -> dict[str, Any]:
    """The ``--json`` document: notice, bundle, one entry per photo, failure count."""
    return {
        "notice": NOTICE,
        "bundle": identifier.describe(),
        "results": [a.to_dict() for a in answers],
        "answered": sum(a.ok for a in answers),
        "failed": sum(not a.ok for a in answers),
    }
