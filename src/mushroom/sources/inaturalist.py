"""Acquire research-grade mushroom photos from iNaturalist, resumably and with licences kept.

For every catalog taxon, observations in the configured place are paged with ``id_above``
(pyinaturalist's session and paginator, rate-limited; see :mod:`mushroom.sources.inat_api`).
Their photos become candidates in a fixed order (observation id, then photo position); photos
with a licence outside the allowed set and photo ids seen before are skipped. Candidates are
downloaded on a bounded thread pool (:mod:`mushroom.sources.inat_photos`) but *committed in
candidate order*: a photo is kept when it decodes, is large enough and its bytes are new, until
the species has ``photos_per_species``. Committing writes the file atomically, then appends it
to the journal (:mod:`mushroom.sources.inat_journal`).

Because the order is fixed and every decision is journaled, a run that was killed and then
rerun keeps exactly the photos an uninterrupted run keeps, and fetches only what is missing.
Failures outside the data (the API or photo host unreachable after retries, the request budget
spent, a full disk) stop the run with one :class:`AcquisitionInterrupted` saying so.

Layout of ``out_dir``::

    images/<taxon_id>/<photo_id>.jpg    RGB JPEGs
    ATTRIBUTIONS.csv, failures.csv      licence + attribution per photo; photos not kept + reason
    DATASET_CARD.md, dataset_card.json  counts, date range, query, acquisition date
    .inaturalist/                       journal, query fingerprint, rate-limit state
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mushroom.fileio import read_json, write_bytes_atomic, write_json_atomic
from mushroom.manifest import DATASET_INFO_NAME, MANIFEST_NAME, PhotoRecord
from mushroom.month_prior import month_of
from mushroom.sources.inat_api import ObservationPage, ObservationsClient, page_candidates, photo_url
from mushroom.sources.inat_journal import (
    JOURNAL_NAME,
    AcquisitionInterrupted,
    Journal,
    interrupted,
    prune_images,
    reconcile_images,
)
from mushroom.sources.inat_photos import Download, PhotoCandidate, PhotoDownloader
from mushroom.sources.inat_report import (
    ATTRIBUTIONS_NAME,
    CARD_MD_NAME,
    FAILURES_NAME,
    Failure,
    TaxonResult,
    build_card,
    read_card,
    write_attributions,
    write_card,
    write_failures,
)
from mushroom.sources.settings import INaturalistSourceConfig
from mushroom.species import Catalog, Species

log = logging.getLogger(__name__)

STATE_DIR = ".inaturalist"
FINGERPRINT_NAME = "query.json"
IMAGES_DIR = "images"


class MissingSpeciesError(ValueError):
    """Some species got no photos at all and the configuration does not allow that."""


def acquire_inaturalist(config: INaturalistSourceConfig, catalog: Catalog, out_dir: Path) -> list[PhotoRecord]:
    """Download photos of every catalog species from iNaturalist into ``out_dir``.

    Resumable: a rerun into the same ``out_dir`` with the same query continues where an
    interrupted run stopped and ends with the same photos an uninterrupted run would have.

    Args:
        config: The query, and the retry, rate, budget and validation limits.
        catalog: The species to acquire, in class order.
        out_dir: The dataset folder; photos go to ``images/<taxon_id>/<photo_id>.jpg``.

    Returns:
        One record per kept photo (``file`` relative to ``out_dir``), species in catalog order,
        photos in query order.

    Raises:
        MissingSpeciesError: A species got no photo and ``allow_missing_species`` is off
            (the photos, attributions and card are written first).
        AcquisitionInterrupted: The API or the photo host could not be reached after retries,
            the daily request budget is spent, or a file could not be written (a full disk);
            the message says what failed and that a rerun resumes (progress is journaled).
    """
    out_dir = Path(out_dir)
    start = time.monotonic()
    try:
        with _disk_errors(f"could not prepare {out_dir / STATE_DIR}"):
            journal = _open_state(config, out_dir)
        try:
            with _Acquisition(config, catalog, out_dir, journal) as acquisition:
                results = acquisition.run()
                run_info = acquisition.run_info(time.monotonic() - start)
        finally:
            journal.close()
        records = [r for res in results for r in res.records]
        with _disk_errors(f"could not write the dataset files in {out_dir}"):
            pruned = prune_images(out_dir / IMAGES_DIR, out_dir, {r.file for r in records})
            if pruned:
                log.info("removed %d photo files beyond photos_per_species", pruned)
            _write_outputs(out_dir, config, results, run_info)
    except AcquisitionInterrupted as err:
        raise type(err)(interrupted(str(err), out_dir)) from err
    _check_missing(config, results)
    return records


def acquisition_report(out_dir: Path) -> dict[str, Any]:
    """Metrics of the acquisition in ``out_dir``, for a pipeline component to log.

    Args:
        out_dir: A folder :func:`acquire_inaturalist` wrote.

    Returns:
        The dataset card: ``num_photos``, ``num_species``, ``photos_per_species`` (taxon id ->
        count), ``photos_per_license``, ``failures_by_reason``, ``species_short``,
        ``species_missing``, ``observed_on`` (from/to), ``query``, ``acquired_at``, ``species``
        (per-species details) and ``run`` (requests, bytes and seconds of the last run).
    """
    return read_card(Path(out_dir))


@contextmanager
def _disk_errors(what: str) -> Iterator[None]:
    """Turn an OSError of the file operations inside into an :class:`AcquisitionInterrupted`."""
    try:
        yield
    except OSError as err:
        hint = "; the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise AcquisitionInterrupted(f"{what}: {err}{hint}") from err


def _query_fingerprint(config: INaturalistSourceConfig) -> dict[str, Any]:
    """What decides which photos are candidates and how they are judged."""
    return {
        "api_url": config.api_url.rstrip("/"),
        "place_id": config.place_id,
        "quality_grade": config.quality_grade,
        "licenses": sorted(config.licenses),
        "photo_size": config.photo_size,
        "min_photo_side": config.min_photo_side,
    }


def _open_state(config: INaturalistSourceConfig, out_dir: Path) -> Journal:
    """Open (or start) the journal in ``out_dir`` and make the files on disk agree with it."""
    state_dir, images_dir = out_dir / STATE_DIR, out_dir / IMAGES_DIR
    fingerprint = _query_fingerprint(config)
    fingerprint_path = state_dir / FINGERPRINT_NAME
    if fingerprint_path.is_file() and read_json(fingerprint_path) != fingerprint:
        log.warning("%s holds photos of a different query; starting over", out_dir)
        shutil.rmtree(state_dir)
        shutil.rmtree(images_dir, ignore_errors=True)
    write_json_atomic(fingerprint_path, fingerprint)
    for name in (MANIFEST_NAME, DATASET_INFO_NAME):
        # A manifest from an earlier run could disagree with the files this run adds or
        # removes; the caller writes a fresh one when acquisition completes.
        (out_dir / name).unlink(missing_ok=True)
    journal = Journal.open(state_dir / JOURNAL_NAME)
    removed, forgotten = reconcile_images(images_dir, out_dir, journal)
    kept = sum(1 for _ in journal.accepted())
    if journal.outcomes or removed:
        log.info(
            "resuming from %s: %d photos kept, %d stray or partial files removed, %d photos to fetch again",
            journal.path,
            kept,
            removed,
            forgotten,
        )
    return journal


@dataclass
class _Pending:
    """A candidate on its way to being committed, in candidate order."""

    candidate: PhotoCandidate
    future: Future | None = None  # a download in flight
    earlier: dict[str, Any] | None = None  # kept by an earlier run
    skip: Failure | None = None  # decided without downloading

    @property
    def may_keep(self) -> bool:
        return self.skip is None


class _Acquisition:
    """One run: shared clients, the journal, and what has been seen so far."""

    def __init__(self, config: INaturalistSourceConfig, catalog: Catalog, out_dir: Path, journal: Journal):
        self.config, self.catalog = config, catalog
        self.out_dir, self.journal = out_dir, journal
        self.allowed = set(config.licenses)
        self.window = 2 * config.concurrency
        self.seen_photos: dict[str, str] = {}  # photo id -> observation id
        self.seen_bytes: dict[str, str] = {}  # sha256 -> photo id
        self.stop = threading.Event()
        self.api = ObservationsClient(out_dir / STATE_DIR, config)
        self.downloader = PhotoDownloader(config, user_agent=self.api.user_agent, stop=self.stop)
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="inat-photo")
        self.progress = tqdm(
            total=config.photos_per_species * len(catalog),
            unit="photo",
            desc="iNaturalist",
            mininterval=1.0,
        )

    def __enter__(self) -> _Acquisition:
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()  # downloads waiting to retry give up
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.progress.close()
        self.downloader.close()
        self.api.close()

    def run(self) -> list[TaxonResult]:
        return [self.acquire_species(species) for species in self.catalog]

    def run_info(self, seconds: float) -> dict[str, Any]:
        return {  # every request sent, retries included
            "api_requests": self.api.requests,
            "photo_requests": self.downloader.requests,
            "bytes_downloaded": self.downloader.bytes,
            "seconds": round(seconds, 3),
        }

    def acquire_species(self, species: Species) -> TaxonResult:
        """Keep up to ``photos_per_species`` photos of one species, committing in candidate order."""
        start, requests_before = time.monotonic(), self.api.requests
        result = TaxonResult(species, self.config.photos_per_species)
        self.progress.set_postfix_str(species.scientific_name)
        candidates = self._candidates(species.taxon_id)
        pending: deque[_Pending] = deque()
        exhausted = False
        while True:
            if not exhausted:
                exhausted = self._fill(pending, candidates, result)
            if not pending:
                break
            self._commit(pending.popleft(), result)
        result.api_requests = self.api.requests - requests_before
        result.seconds = time.monotonic() - start
        self._log_species(result)
        return result

    def _fill(self, pending: deque[_Pending], candidates: Iterator[PhotoCandidate], result: TaxonResult) -> bool:
        """Plan candidates until enough may be kept or the window is full; True once none are left."""
        while len(result.records) + sum(p.may_keep for p in pending) < result.target:
            if sum(p.future is not None for p in pending) >= self.window:
                return False
            candidate = next(candidates, None)
            if candidate is None:
                return True
            pending.append(self._plan(candidate))
        return False

    def _candidates(self, taxon_id: int) -> Iterator[PhotoCandidate]:
        """The taxon's photos in query order: journaled pages first, then new pages from the API."""
        last = None
        for event in self.journal.pages.get(taxon_id, []):
            last = ObservationPage.from_json(event)
            yield from page_candidates(taxon_id, last)
        if last is not None and last.done:
            return
        for page in self.api.pages(taxon_id, last.next_id_above if last else 0):
            with _disk_errors(f"could not write the journal {self.journal.path}"):
                self.journal.append({"event": "page", "taxon_id": taxon_id, **page.to_json()})
            log.debug(
                "taxon %d: page above id %d, %d observations", taxon_id, page.id_above, len(page.observations)
            )
            yield from page_candidates(taxon_id, page)

    def _plan(self, candidate: PhotoCandidate) -> _Pending:
        """Decide what a candidate needs: a skip, an earlier run's photo, or a download."""
        if candidate.license not in self.allowed:
            return _Pending(
                candidate, skip=_failure(candidate, "license_not_allowed", candidate.license or "none")
            )
        first_seen = self.seen_photos.get(candidate.photo_id)
        if first_seen is not None:
            detail = f"already offered by observation {first_seen}"
            return _Pending(candidate, skip=_failure(candidate, "duplicate_photo_id", detail))
        self.seen_photos[candidate.photo_id] = candidate.observation_id
        earlier = self.journal.outcomes.get(candidate.photo_id)
        if earlier and earlier["event"] == "photo":
            return _Pending(candidate, earlier=earlier)
        if earlier and earlier["permanent"]:
            return _Pending(candidate, skip=_failure(candidate, earlier["reason"], earlier["detail"]))
        url = photo_url(candidate.url, self.config.photo_size)
        return _Pending(candidate, future=self.pool.submit(self.downloader.fetch, candidate, url))

    def _commit(self, item: _Pending, result: TaxonResult) -> None:
        """Settle one candidate, in order: keep it (write + journal) or record why not."""
        if item.skip is not None:
            result.failures.append(item.skip)
        elif item.earlier is not None:
            self._keep(result, item.candidate, item.earlier["sha256"], item.earlier["file"])
            result.resumed += 1
        else:
            self._commit_download(item.future.result(), result)

    def _commit_download(self, download: Download, result: TaxonResult) -> None:
        candidate = download.candidate
        if download.ok and download.sha256 in self.seen_bytes:
            detail = f"same bytes as photo {self.seen_bytes[download.sha256]}"
            download = Download(candidate, reason="duplicate_content", detail=detail)
        if not download.ok:
            with _disk_errors(f"could not write the journal {self.journal.path}"):
                self._journal_failure(download)
            result.failures.append(_failure(candidate, download.reason, download.detail))
            return
        file = f"{IMAGES_DIR}/{candidate.taxon_id}/{candidate.photo_id}.jpg"
        with _disk_errors(f"could not write {file} in {self.out_dir}"):
            self._write_photo(download, file)
        self._keep(result, candidate, download.sha256, file)
        result.downloaded += 1

    def _journal_failure(self, download: Download) -> None:
        candidate = download.candidate
        self.journal.append(
            {
                "event": "failure",
                "taxon_id": candidate.taxon_id,
                "photo_id": candidate.photo_id,
                "reason": download.reason,
                "detail": download.detail,
                "permanent": download.permanent,
            }
        )

    def _write_photo(self, download: Download, file: str) -> None:
        """Write the photo atomically, then journal it (a file without its line is removed on resume)."""
        candidate = download.candidate
        write_bytes_atomic(self.out_dir / file, download.data)
        self.journal.append(
            {
                "event": "photo",
                "taxon_id": candidate.taxon_id,
                "photo_id": candidate.photo_id,
                "observation_id": candidate.observation_id,
                "file": file,
                "size": len(download.data),
                "sha256": download.sha256,
                "width": download.width,
                "height": download.height,
            }
        )

    def _keep(self, result: TaxonResult, candidate: PhotoCandidate, sha256: str, file: str) -> None:
        self.seen_bytes[sha256] = candidate.photo_id
        result.records.append(
            PhotoRecord(
                observation_id=candidate.observation_id,
                photo_id=candidate.photo_id,
                taxon_id=candidate.taxon_id,
                file=file,
                license=candidate.license or "",
                attribution=candidate.attribution,
                observed_on=observed_date(candidate.observed_on),
            )
        )
        result.observed_on.append(candidate.observed_on or "")
        self.progress.update(1)

    def _log_species(self, result: TaxonResult) -> None:
        s = result.species
        log.info(
            "%s (%d): %d/%d photos (%d downloaded, %d from earlier runs), %d not kept, %d API requests, "
            "%.1fs",
            s.scientific_name,
            s.taxon_id,
            len(result.records),
            result.target,
            result.downloaded,
            result.resumed,
            len(result.failures),
            result.api_requests,
            result.seconds,
        )
        if result.status == "short":
            log.warning(
                "%s (%d): only %d of %d photos available",
                s.scientific_name,
                s.taxon_id,
                len(result.records),
                result.target,
            )


def observed_date(observed_on: str | None) -> str:
    """iNaturalist's ``observed_on`` as the manifest keeps it: ``YYYY-MM-DD``, "" when absent or not a date."""
    text = (observed_on or "").strip()[:10]
    return text if month_of(text) else ""


def _failure(candidate: PhotoCandidate, reason: str, detail: str) -> Failure:
    return Failure(
        candidate.taxon_id, candidate.observation_id, candidate.photo_id, reason, detail, candidate.url
    )


def _write_outputs(
    out_dir: Path, config: INaturalistSourceConfig, results: list[TaxonResult], run_info: dict[str, Any]
) -> None:
    query = {**_query_fingerprint(config), "photos_per_species": config.photos_per_species}
    card = build_card(results, query, run_info)
    write_attributions(out_dir, results)
    write_failures(out_dir, results)
    write_card(out_dir, card)
    log.info(
        "iNaturalist: %d photos of %d species in %.1fs (%d API requests, %d photo requests, %.1f MB); "
        "wrote %s, %s, %s in %s",
        card["num_photos"],
        card["num_species"],
        run_info["seconds"],
        run_info["api_requests"],
        run_info["photo_requests"],
        run_info["bytes_downloaded"] / 1e6,
        ATTRIBUTIONS_NAME,
        FAILURES_NAME,
        CARD_MD_NAME,
        out_dir,
    )


def _check_missing(config: INaturalistSourceConfig, results: list[TaxonResult]) -> None:
    missing = [res.species for res in results if not res.records]
    if not missing:
        return
    names = ", ".join(f"{s.scientific_name} (taxon {s.taxon_id})" for s in missing)
    message = (
        f"iNaturalist gave no usable photos for {len(missing)} species: {names}; query place_id="
        f"{config.place_id}, quality_grade={config.quality_grade}, licences {config.licenses}"
    )
    if config.allow_missing_species:
        log.warning("%s; continuing without them (allow_missing_species)", message)
        return
    raise MissingSpeciesError(
        f"{message}. Check the taxon ids and failures.csv, or set dataset.inaturalist.allow_missing_species: "
        "true to build the dataset without them"
    )


def collect_inaturalist(config: INaturalistSourceConfig, catalog: Catalog, out_dir: Path, seed: int,
                        ignore: Catalog | None = None) -> list[PhotoRecord]:
    """The registry's collector (:mod:`mushroom.sources.registry`): :func:`acquire_inaturalist`."""
    return acquire_inaturalist(config, catalog, out_dir)
