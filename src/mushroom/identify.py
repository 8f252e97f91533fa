"""Identify a mushroom offline from a photo with a published TFLite bundle.

For each photo: the top-5 species with calibrated probabilities, P(edible), the verdict of
the bundle's safety policy (``mushroom.policy``) and warnings about poisonous or deadly
lookalikes in the top 5. Every answer says that it never gives permission to eat.

Only numpy, Pillow and ai-edge-litert are needed: this module (and the ``mushroom identify``
command) never imports TensorFlow, Keras, kfp, pydantic or PyYAML. ``gs://`` bundles need
google-cloud-storage to fill the local cache: a ``gs://`` publish destination's ``latest`` is
followed on every call (one small object; only a new run's bundle is downloaded), and offline
the bundle cached last answers, with a notice.

    from mushroom.identify import identify
    for answer in identify(["cep.jpg"], "outputs/demo/published"):
        print(answer.verdict_text, answer.candidates[0].scientific_name)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mushroom.bundle import LABELS, METADATA, Bundle, BundleError, read_bundle
from mushroom.fileio import write_text_atomic
from mushroom.policy import (
    EDIBLE,
    NOT_EDIBLE,
    UNCERTAIN,
    Policy,
    apply_temperature,
    edible_probability,
    top_classes,
)
from mushroom.preprocess import ImageError, expand_photos, load_image
from mushroom.publish import BUNDLE_FOLDER, LATEST_NAME, locate_published_bundle, read_latest
from mushroom.species import DANGEROUS, Species
from mushroom.storage import cache_path, download_atomically, is_gcs_uri, join_uri, open_store, user_cache_dir
from mushroom.tflite import TFLiteClassifier

log = logging.getLogger(__name__)

TOP_K = 5
LOOKALIKE_MIN_PROBABILITY = 0.01  # dangerous species in the top 5 above this are named
LATEST_TIMEOUT_S = 10.0  # following a gs:// latest gives up (for the cache) after this long

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


def _cached_bundle(target: Path) -> Path | None:
    """The cached bundle of a ``gs://`` location (its cache folder ``target``), if there is one."""
    if (target / LATEST_NAME).is_file():  # a publish destination: the run it last pointed at
        try:
            folder = Path(locate_published_bundle(str(target)))
        except (OSError, ValueError):
            return None
        return folder if folder.is_dir() else None
    for folder in (target / BUNDLE_FOLDER, target):  # a published run, or a bundle
        if (folder / METADATA).is_file():
            return folder
    return None


def _fetch_gcs(uri: str, cache: Path, target: Path, refresh: bool) -> Path:
    """Resolve ``uri`` online and download only the bundle it names, unless that is cached already.

    A publish destination's ``latest`` is read on every call (one small object); its run's
    bundle is downloaded once (runs never change) and the pointer is kept beside it in the
    cache, for offline calls. Every downloaded file is checked against its object's CRC32C.
    """
    store = open_store(uri)
    try:
        latest = read_latest(uri, client=store.client, timeout_s=LATEST_TIMEOUT_S)
    except FileNotFoundError:
        latest = None
    if latest is not None:
        bundle_uri = join_uri(uri, f"{latest.run}/{BUNDLE_FOLDER}")
    elif store.is_folder(BUNDLE_FOLDER):
        bundle_uri = join_uri(uri, BUNDLE_FOLDER)
    else:
        bundle_uri = uri
    folder = cache_path(bundle_uri, cache)
    if refresh or not folder.is_dir():
        download_atomically(bundle_uri, folder, client=store.client)
    if latest is not None:
        write_text_atomic(target / LATEST_NAME, latest.to_text() + "\n")
    return folder


def _unavailable(err: Exception) -> str:
    """Why a ``gs://`` location could not be read, in words."""
    if isinstance(err, ImportError):
        return (f"reading a gs:// bundle needs google-cloud-storage ({err}); "
                "install quantized-mushroom[pipeline] or copy the bundle locally")
    if isinstance(err, FileNotFoundError):
        return f"no bundle there ({err})"
    return f"cannot be read ({type(err).__name__}: {err})"


def resolve_bundle(location: str | Path, cache_dir: str | Path | None = None, refresh: bool = False) -> Path:
    """The local bundle folder for ``location``.

    Args:
        location: A bundle folder, a publish destination (its ``latest`` run's bundle is
            used), a published run folder, or a ``gs://`` prefix of any of them. A ``gs://``
            publish destination's ``latest`` is read on every call and only that run's bundle
            is downloaded (once) into ``cache_dir``; a ``gs://`` run or bundle is downloaded
            once and read from the cache (offline) after that. When ``latest`` cannot be
            followed (offline, no google-cloud-storage, ...), the bundle cached last is used
            and a warning says so.
        cache_dir: Cache for ``gs://`` bundles (default :func:`default_cache_dir`).
        refresh: Download a ``gs://`` bundle again even if it is cached.

    Returns:
        The folder to pass to :func:`mushroom.bundle.read_bundle`.

    Raises:
        BundleError: A ``gs://`` bundle cannot be downloaded and is not cached, or a
            destination's ``latest`` does not hold a run pointer.
    """
    text = str(location)
    if not is_gcs_uri(text):
        return _bundle_folder(Path(text).expanduser())
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        target = cache_path(text, cache)
    except ValueError:
        raise BundleError(f"{text}: not a usable gs://BUCKET/PREFIX bundle location") from None
    cached = _cached_bundle(target)
    if cached is not None and not refresh and not (target / LATEST_NAME).is_file():
        return cached  # a published run never changes
    try:
        return _fetch_gcs(text, cache, target, refresh)
    except Exception as err:  # offline, credentials, no such bucket, checksum: no new bundle
        problem = _unavailable(err)
    if cached is None:
        raise BundleError(f"{text}: {problem}; no cached copy in {target}")
    log.warning("notice: %s: %s; using the bundle cached at %s, which may be out of date", text, problem, cached)
    return cached


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
