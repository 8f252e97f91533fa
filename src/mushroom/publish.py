"""Publish a model bundle and its evaluation: the immutable run layout and the ``latest`` pointer.

Layout at the destination (``gs://BUCKET/PREFIX`` or a local folder)::

    <destination>/<run_id>/bundle/...       the TFLite bundle folder, file for file
    <destination>/<run_id>/evaluation/...   the evaluation folder, file for file
    <destination>/latest                    the run id of the last publish (written last)

Published files are immutable: publishing the same run id again with identical files is a
no-op, while a file that would change raises :class:`PublishError` naming it. Only the
``latest`` pointer is ever overwritten. Backends, checksums and verification live in
:mod:`mushroom.storage`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mushroom.storage import ConflictError, StorageError, Store, check_key, join_uri, open_store

if TYPE_CHECKING:
    from google.cloud import storage as gcs

log = logging.getLogger(__name__)

LATEST_NAME = "latest"
BUNDLE_FOLDER = "bundle"
EVALUATION_FOLDER = "evaluation"


class PublishError(StorageError):
    """Publishing would overwrite a different file, or a written file failed verification."""


def _check_run_id(run_id: str) -> None:
    if run_id == LATEST_NAME:
        raise ValueError(f"run_id {run_id!r} is not allowed: {LATEST_NAME!r} names the pointer to the last run")
    check_key(run_id, "run_id")


def publish_run(
    bundle_dir: Path,
    evaluation_dir: Path,
    destination: str,
    run_id: str,
    *,
    client: gcs.Client | None = None,
) -> str:
    """Publish a bundle folder and an evaluation folder under ``<destination>/<run_id>/``.

    Files land at ``<destination>/<run_id>/bundle/<relative path>`` and
    ``<destination>/<run_id>/evaluation/<relative path>``; then ``<destination>/latest`` is
    written with the run id, last, so a reader following ``latest`` never sees a partly
    published run.

    The run folder is checked before anything is written: if it already holds exactly these
    files (same checksums) nothing is uploaded, so republishing is idempotent. If any file
    there differs, or the run folder holds files that are not in these folders,
    :class:`PublishError` names them and nothing is written (``latest`` included).

    Args:
        bundle_dir: The model bundle folder (model files, labels.json, ...).
        evaluation_dir: The evaluation folder (metrics, report, plots).
        destination: A local folder path, or ``gs://BUCKET/PREFIX``.
        run_id: The run's id: 1-128 of ``[A-Za-z0-9._-]``, starting with a letter or
            digit, and not ``latest``.
        client: A google-cloud-storage client for ``gs://`` destinations; by default one
            is made from the environment (``STORAGE_EMULATOR_HOST`` is honoured).

    Returns:
        The URI of the run folder: ``gs://BUCKET/PREFIX/<run_id>`` or the absolute local
        path ``<destination>/<run_id>``.

    Raises:
        PublishError: The run folder holds different or extra files, a written object does
            not match its local checksums, or a folder holds no files.
        FileNotFoundError: ``bundle_dir`` or ``evaluation_dir`` is not a folder.
        ValueError: ``run_id`` or ``destination`` is malformed.
    """
    _check_run_id(run_id)
    store = open_store(destination, client)
    folders = {BUNDLE_FOLDER: Path(bundle_dir), EVALUATION_FOLDER: Path(evaluation_dir)}
    try:
        run_uri = store.upload_folders(folders, run_id)
        store.put_text(LATEST_NAME, run_id)
    except ConflictError as err:
        raise PublishError(
            f"run {run_id!r} cannot be published again with different files; publish under a new run id. {err}"
        ) from err
    except StorageError as err:
        raise PublishError(str(err)) from err
    log.info("publish: run %s at %s; %s -> %s", run_id, run_uri, store.uri(LATEST_NAME), run_id)
    return run_uri


def read_latest(destination: str, *, client: gcs.Client | None = None) -> str:
    """The run id that ``<destination>/latest`` points at.

    Args:
        destination: The publish destination (local folder or ``gs://BUCKET/PREFIX``).
        client: Optional google-cloud-storage client for ``gs://`` destinations.

    Returns:
        The run id of the most recent publish.

    Raises:
        FileNotFoundError: Nothing was published there yet.
        ValueError: ``latest`` does not hold a run id.
    """
    return _read_latest(open_store(destination, client), destination)


def _read_latest(store: Store, destination: str) -> str:
    try:
        run_id = store.read_text(LATEST_NAME).strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"{store.uri(LATEST_NAME)}: nothing published at {destination} yet") from None
    try:
        _check_run_id(run_id)  # the pointer becomes part of a path: never let it leave the destination
    except ValueError as err:
        raise ValueError(f"{store.uri(LATEST_NAME)} does not hold a run id: {err}") from None
    return run_id


def locate_published_bundle(location: str, *, client: gcs.Client | None = None) -> str:
    """The bundle folder that ``location`` names in the publish layout.

    Args:
        location: A publish destination (its ``latest`` run's bundle is meant), a published
            run folder (its ``bundle`` folder is meant), or anything else (a bundle folder
            itself, returned unchanged); a local folder or ``gs://BUCKET/PREFIX``.
        client: Optional google-cloud-storage client for ``gs://`` locations.

    Returns:
        ``<location>/<latest run id>/bundle``, ``<location>/bundle`` or ``location``, in the
        form ``location`` was given (a ``gs://`` URI or an unresolved local path). Whether a
        bundle is really there is for its reader to say.

    Raises:
        ValueError: ``location`` is malformed, or its ``latest`` does not hold a run id.
    """
    store = open_store(location, client)
    try:
        return join_uri(location, f"{_read_latest(store, location)}/{BUNDLE_FOLDER}")
    except FileNotFoundError:
        pass  # not a publish destination
    if store.is_folder(BUNDLE_FOLDER):
        return join_uri(location, BUNDLE_FOLDER)
    return location
