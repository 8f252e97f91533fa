"""Publish a model bundle and its evaluation: the immutable run layout and the ``latest`` pointer.

Layout at the destination (``gs://BUCKET/PREFIX`` or a local folder)::

    <destination>/<run>/bundle/...       the TFLite bundle folder, file for file
    <destination>/<run>/evaluation/...   the evaluation folder, file for file
    <destination>/<run>/run.json         the run: display name, job id, creation time
    <destination>/latest                 the promoted run: {"run", "created", "run_name"} (JSON)

``<run>`` is :func:`run_folder_name` of the run's display name and job id, so any display
name publishes and two runs never share a folder. Published files are immutable:
publishing the same run again with identical files is a no-op, while a file that would
change raises :class:`PublishError` naming it.

``latest`` only moves forward, and only through a gate: it is replaced by compare-and-swap
(:meth:`mushroom.storage.Store.replace_pointer`: a generation precondition on GCS, a
byte compare under an ``O_EXCL`` lock file on a folder) and only when the run is newer (by
creation time) than the run it points to and the promotion gate (:mod:`mushroom.promotion`)
lets it through. A writer that loses the race reads ``latest`` again and decides again. A
run that is not promoted stays published under its own folder. Readers accept the previous
``latest`` format too, a plain run id (schema version 1, no creation time).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mushroom.storage import ConflictError, StorageError, Store, check_key, join_uri, open_store
from mushroom.versioning import check_schema_version

if TYPE_CHECKING:
    from google.cloud import storage as gcs

log = logging.getLogger(__name__)

LATEST_NAME = "latest"
BUNDLE_FOLDER = "bundle"
EVALUATION_FOLDER = "evaluation"
RUN_RECORD = "run.json"
LATEST_SCHEMA_VERSION = 2  # 1: a plain run id
RUN_RECORD_SCHEMA_VERSION = 1
SLUG_LENGTH = 60  # of the display name, in the run folder
SHORT_ID_LENGTH = 8  # of the job id: a KFP run UUID's first group
HASH_LENGTH = 8
MAX_PROMOTION_ATTEMPTS = 100  # lost compare-and-swap races before giving up


class PublishError(StorageError):
    """Publishing would overwrite a different file, or a written file failed verification."""


class PromotionCheck(Protocol):
    """Decides whether a published run may replace ``current`` as ``latest`` (see
    :class:`mushroom.promotion.PromotionGate`)."""

    def refusal(self, store: Store, current: Latest | None) -> str | None:
        """Why the run may not become ``latest``; None if it may."""


# --------------------------------------------------------------------------- run identity


def _slug(text: str) -> str:
    import unicodedata  # lazy, as what only publishing needs: identify reads latest and starts fast

    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9]+", "-", plain).strip("-")[:SLUG_LENGTH].rstrip("-")


def format_time(when: datetime) -> str:
    """``when`` as UTC ISO 8601 with microseconds and a ``Z``, as ``latest`` and ``run.json`` hold it."""
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str, source: str) -> datetime:
    """An ISO 8601 time (a time without a zone counts as UTC).

    Raises:
        ValueError: ``text`` is not an ISO 8601 time; the message names ``source``.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {text!r} is not an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def run_folder_name(display_name: str, job_id: str, created: datetime | None = None) -> str:
    """The run's folder under the destination: ``<slug>-<short job id>[--<hash>]``.

    The slug is the display name in lower-case ASCII letters and digits joined by single
    dashes (at most 60 characters); the short job id is the job id's first 8 letters or digits.
    When either loses anything (case, spaces, punctuation, length), 8 hex digits of the
    SHA-256 of the full display name and job id follow after ``--``, which neither part ever
    holds: so two different runs never share a folder, and a name that is already a slug
    with a short job id (kfp.local: ``quantized-mushroom-<timestamp>`` and a random number)
    stays readable. Without a job id the hash is of the display name and ``created``.

    Args:
        display_name: The run's display name; any text.
        job_id: The backend's job id (KFP: the run UUID); "" if there is none.
        created: The run's creation time; needed when there is no job id.

    Returns:
        A folder name of at most 79 of ``[a-z0-9-]``.

    Raises:
        ValueError: ``display_name`` is blank, or neither a job id nor a creation time is given.
    """
    import hashlib  # lazy: only publishing names runs

    if not display_name.strip():
        raise ValueError("the run's display name is empty")
    slug = _slug(display_name) or "run"
    short = re.sub(r"[^a-z0-9]", "", job_id.lower())[:SHORT_ID_LENGTH]
    name = f"{slug}-{short}" if short else slug
    if short and slug == display_name and short == job_id:
        return name
    if not job_id and created is None:
        raise ValueError(f"run {display_name!r} has neither a job id nor a creation time to tell it apart")
    unique = job_id or format_time(created)
    digest = hashlib.sha256(f"{display_name}\n{unique}".encode()).hexdigest()[:HASH_LENGTH]
    return f"{name}--{digest}"


@dataclass(frozen=True)
class RunIdentity:
    """Who a published run is.

    Attributes:
        name: The display name (any text; KFP's run name, which the UI lets people type).
        job_id: The backend's job id ("" if none).
        created: When the run was created (timezone-aware); orders runs for ``latest``.
    """

    name: str
    job_id: str
    created: datetime

    @property
    def folder(self) -> str:
        """The run folder (:func:`run_folder_name`)."""
        return run_folder_name(self.name, self.job_id, self.created)

    def record(self) -> dict[str, object]:
        """The content of ``run.json``."""
        return {"schema_version": RUN_RECORD_SCHEMA_VERSION, "run": self.folder, "run_name": self.name,
                "job_id": self.job_id, "created": format_time(self.created)}


def _resolved(text: str | None) -> str:
    """``text``, or "" where a backend left a placeholder (``{{$.…}}``) or null unresolved."""
    text = (text or "").strip()
    return "" if text.startswith("{{") or text in ("null", "None") else text


def identify_run(name: str, job_id: str | None = None, created: str | None = None) -> RunIdentity:
    """A run's identity from the strings a pipeline backend resolved.

    Args:
        name: The run's display name (``dsl.PIPELINE_JOB_NAME_PLACEHOLDER``).
        job_id: The job id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``); unresolved counts as none.
        created: The creation time, ISO 8601 (``dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER``,
            or the start time the pipeline recorded where the backend has no such placeholder).
            Empty or unresolved: now, with a warning.

    Returns:
        The :class:`RunIdentity`.

    Raises:
        ValueError: ``name`` is blank or ``created`` is not an ISO 8601 time.
    """
    if not _resolved(name):
        raise ValueError(f"the run's display name {name!r} is empty or unresolved")
    created_text = _resolved(created)
    if created_text:
        when = parse_time(created_text, "the run's creation time")
    else:
        when = datetime.now(UTC)
        log.warning("publish: no creation time for run %r (got %r); using the publish time %s", name, created,
                    format_time(when))
    return RunIdentity(name, _resolved(job_id), when)


# --------------------------------------------------------------------------- latest


@dataclass(frozen=True)
class Latest:
    """What ``latest`` points at.

    Attributes:
        run: The run folder under the destination.
        created: The run's creation time; None in the previous format (a plain run id).
        run_name: The run's display name; None in the previous format.
    """

    run: str
    created: datetime | None = None
    run_name: str | None = None

    def to_text(self) -> str:
        """The JSON text of ``latest``."""
        return json.dumps({"schema_version": LATEST_SCHEMA_VERSION, "run": self.run, "run_name": self.run_name,
                           "created": format_time(self.created) if self.created else None},
                          indent=2, sort_keys=True, ensure_ascii=False)

    def describe(self) -> str:
        """The run and its creation time, for log lines."""
        return f"{self.run} (created {format_time(self.created) if self.created else 'at an unknown time'})"


def _check_run(run: object) -> str:
    if not isinstance(run, str):
        raise ValueError(f"run {run!r} is not a string")
    if run == LATEST_NAME:
        raise ValueError(f"run {run!r} is not allowed: {LATEST_NAME!r} names the pointer to the promoted run")
    check_key(run, "run")
    return run


def parse_latest(text: str, source: str) -> Latest:
    """Read the text of a ``latest`` pointer: JSON (schema version 2) or a plain run id (version 1).

    Args:
        text: The pointer's text.
        source: Where it was read, for error messages.

    Returns:
        The :class:`Latest` it holds.

    Raises:
        ValueError: It holds neither, a run that would leave the destination, or a newer
            schema version.
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ValueError(f"{source} does not hold a run id: not valid JSON ({err})") from None
        check_schema_version(data, LATEST_SCHEMA_VERSION, source)
        run, created, name = data.get("run"), data.get("created"), data.get("run_name")
    else:
        run, created, name = text, None, None
    try:
        _check_run(run)  # the pointer becomes part of a path: never let it leave the destination
    except ValueError as err:
        raise ValueError(f"{source} does not hold a run id: {err}") from None
    return Latest(run, None if created is None else parse_time(str(created), source), name)


def _read_latest(store: Store, destination: str, timeout_s: float | None = None) -> Latest:
    text, _ = store.read_pointer(LATEST_NAME, timeout_s)
    if text is None:
        raise FileNotFoundError(f"{store.uri(LATEST_NAME)}: nothing published at {destination} yet")
    return parse_latest(text, store.uri(LATEST_NAME))


def read_latest(destination: str, *, client: gcs.Client | None = None, timeout_s: float | None = None) -> Latest:
    """What ``<destination>/latest`` points at (one small read).

    Args:
        destination: The publish destination (local folder or ``gs://BUCKET/PREFIX``).
        client: Optional google-cloud-storage client for ``gs://`` destinations.
        timeout_s: Give up a ``gs://`` read after this long, retries included (None: the
            client's defaults, which retry for two minutes).

    Returns:
        The promoted run (:class:`Latest`).

    Raises:
        FileNotFoundError: Nothing was promoted there yet.
        ValueError: ``latest`` does not hold a run pointer this code reads.
    """
    return _read_latest(open_store(destination, client), destination, timeout_s)


def _not_newer(run: Latest, current: Latest | None) -> str | None:
    if current is None or current.created is None:  # the previous format has no time: anything dated is newer
        return None
    if (run.created, run.run) > (current.created, current.run):  # equal times: the folder name decides
        return None
    return f"run {run.describe()} is not newer than {LATEST_NAME} {current.describe()}"


def _promote(store: Store, run: Latest, gate: PromotionCheck | None) -> tuple[bool, str]:
    """Move ``latest`` to ``run`` by compare-and-swap if it is newer and passes ``gate``."""
    for attempt in range(1, MAX_PROMOTION_ATTEMPTS + 1):
        text, version = store.read_pointer(LATEST_NAME)
        current = None if text is None else parse_latest(text, store.uri(LATEST_NAME))
        if current is not None and current.run == run.run:
            return True, f"{LATEST_NAME} already points at {run.run}"
        reason = _not_newer(run, current) or (gate.refusal(store, current) if gate else None)
        if reason:
            return False, reason
        if store.replace_pointer(LATEST_NAME, run.to_text(), version):
            was = current.describe() if current else "nothing"
            return True, f"{LATEST_NAME} moved to {run.describe()}; it pointed at {was}"
        log.info("publish: %s changed while %s was being promoted; reading it again (attempt %d)",
                 store.uri(LATEST_NAME), run.run, attempt)
        import random

        time.sleep(random.uniform(0, 0.002 * attempt))  # let the winner's write settle
    raise PublishError(f"{store.uri(LATEST_NAME)} changed {MAX_PROMOTION_ATTEMPTS} times while run {run.run} "
                       "was being promoted; publish it again to retry")


# --------------------------------------------------------------------------- publish


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish_run` did.

    Attributes:
        uri: The run folder (``gs://BUCKET/PREFIX/<run>`` or an absolute local path).
        run: The run folder's name.
        promoted: Whether ``latest`` points at this run now.
        reason: Why ``latest`` moved or did not, in words.
    """

    uri: str
    run: str
    promoted: bool
    reason: str


def _published_identity(store: Store, run: RunIdentity) -> RunIdentity:
    """``run``, with the creation time ``run.json`` recorded if this run was published before.

    A retry whose backend gave no creation time falls back to a new time; keeping the
    recorded one keeps republishing idempotent.
    """
    try:
        recorded = json.loads(store.read_text(f"{run.folder}/{RUN_RECORD}"))
        if recorded.get("run_name") != run.name or recorded.get("job_id") != run.job_id:
            return run  # another run: the upload refuses the different run.json
        created = parse_time(recorded["created"], store.uri(f"{run.folder}/{RUN_RECORD}"))
    except (FileNotFoundError, ValueError, KeyError, AttributeError):
        return run
    if created != run.created:
        log.info("publish: run %s was published before, created %s; keeping that time", run.folder,
                 format_time(created))
    return replace(run, created=created)


def publish_run(
    bundle_dir: Path,
    evaluation_dir: Path,
    destination: str,
    run: RunIdentity,
    *,
    gate: PromotionCheck | None = None,
    client: gcs.Client | None = None,
) -> PublishResult:
    """Publish a bundle folder and an evaluation folder under ``<destination>/<run folder>/``.

    Files land at ``<run folder>/bundle/<relative path>``, ``<run folder>/evaluation/<relative
    path>`` and ``<run folder>/run.json`` (:meth:`RunIdentity.record`). Then ``latest`` moves to
    the run, by compare-and-swap, if the run is newer than the run ``latest`` points at and
    ``gate`` lets it through; a lost race reads ``latest`` again and decides again. A run that
    is not promoted stays published; :attr:`PublishResult.reason` says why.

    The run folder is checked before anything is written: if it already holds exactly these
    files (same checksums) nothing is uploaded, so republishing is idempotent. If any file
    there differs, or the run folder holds files that are not in these folders,
    :class:`PublishError` names them and nothing is written (``latest`` included).

    Args:
        bundle_dir: The model bundle folder (model files, labels.json, ...).
        evaluation_dir: The evaluation folder (metrics, report, plots).
        destination: A local folder path, or ``gs://BUCKET/PREFIX``.
        run: The run's display name, job id and creation time (see :func:`identify_run`).
        gate: Decides whether the run may become ``latest`` (None: whenever it is newer).
        client: A google-cloud-storage client for ``gs://`` destinations; by default one
            is made from the environment (``STORAGE_EMULATOR_HOST`` is honoured).

    Returns:
        The run folder's URI, its name, and whether and why ``latest`` moved.

    Raises:
        PublishError: The run folder holds different or extra files, a written object does
            not match its local checksums, a folder holds no files, or ``latest`` kept
            changing.
        FileNotFoundError: ``bundle_dir`` or ``evaluation_dir`` is not a folder.
        ValueError: ``destination`` is malformed, or ``latest`` holds something that is not
            a run pointer.
    """
    store = open_store(destination, client)
    folder = run.folder
    run = _published_identity(store, run)
    folders = {BUNDLE_FOLDER: Path(bundle_dir), EVALUATION_FOLDER: Path(evaluation_dir)}
    with tempfile.TemporaryDirectory(prefix="mushroom-publish-") as tmp:
        record = Path(tmp) / RUN_RECORD
        record.write_text(json.dumps(run.record(), indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                          encoding="utf-8")
        try:
            uri = store.upload_folders(folders, folder, {RUN_RECORD: record})
        except ConflictError as err:
            raise PublishError(f"run {folder} ({run.name!r}) cannot be published again with different files. "
                               f"{err}") from err
        except StorageError as err:
            raise PublishError(str(err)) from err
    log.info("publish: run %r (job id %r, created %s) at %s", run.name, run.job_id, format_time(run.created), uri)
    try:
        promoted, reason = _promote(store, Latest(folder, run.created, run.name), gate)
    except StorageError as err:
        raise PublishError(str(err)) from err
    if promoted:
        log.info("publish: %s", reason)
    else:
        log.warning("publish: run %s is published but NOT promoted to %s: %s", folder, store.uri(LATEST_NAME),
                    reason)
    return PublishResult(uri, folder, promoted, reason)


def locate_published_bundle(location: str, *, client: gcs.Client | None = None) -> str:
    """The bundle folder that ``location`` names in the publish layout.

    Args:
        location: A publish destination (its ``latest`` run's bundle is meant), a published
            run folder (its ``bundle`` folder is meant), or anything else (a bundle folder
            itself, returned unchanged); a local folder or ``gs://BUCKET/PREFIX``.
        client: Optional google-cloud-storage client for ``gs://`` locations.

    Returns:
        ``<location>/<latest run>/bundle``, ``<location>/bundle`` or ``location``, in the
        form ``location`` was given (a ``gs://`` URI or an unresolved local path). Whether a
        bundle is really there is for its reader to say.

    Raises:
        ValueError: ``location`` is malformed, or its ``latest`` does not hold a run pointer.
    """
    store = open_store(location, client)
    try:
        return join_uri(location, f"{_read_latest(store, location).run}/{BUNDLE_FOLDER}")
    except FileNotFoundError:
        pass  # not a publish destination
    if store.is_folder(BUNDLE_FOLDER):
        return join_uri(location, BUNDLE_FOLDER)
    return location
