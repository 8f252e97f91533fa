"""Publish a model bundle and its evaluation to object storage or a local folder.

Layout at the destination (``gs://BUCKET/PREFIX`` or a local folder)::

    <destination>/<run_id>/bundle/...       the TFLite bundle folder, file for file
    <destination>/<run_id>/evaluation/...   the evaluation folder, file for file
    <destination>/latest                    the run id of the last publish (written last)

Published files are immutable: publishing the same run id again with identical files is a
no-op, while a file that would change raises :class:`PublishError` naming it. Only the
``latest`` pointer is ever overwritten. Every write is verified against local checksums
(CRC32C and MD5 for GCS, SHA-256 for a local folder).

For ``gs://`` destinations google-cloud-storage is used; it honours
``STORAGE_EMULATOR_HOST`` (tests and kind/minikube clusters run fake-gcs-server).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import google_crc32c

from mushroom.fileio import atomic_path

if TYPE_CHECKING:
    from google.cloud import storage

log = logging.getLogger(__name__)

LATEST_NAME = "latest"
BUNDLE_FOLDER = "bundle"
EVALUATION_FOLDER = "evaluation"
GCS_SCHEME = "gs://"

_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1024 * 1024


class PublishError(RuntimeError):
    """Publishing would overwrite a different object, or a written object failed verification."""


@dataclass(frozen=True)
class _Checksums:
    """Checksums of one file's bytes. ``crc32c`` and ``md5`` are base64 digests as in GCS
    object metadata, ``sha256`` is hex; a stored object may lack some of them."""

    size: int
    crc32c: str | None = None
    md5: str | None = None
    sha256: str | None = None

    def matches(self, other: _Checksums) -> bool:
        """Same size and every checksum that both sides have is equal (at least one)."""
        pairs = ((self.crc32c, other.crc32c), (self.md5, other.md5), (self.sha256, other.sha256))
        compared = [(a, b) for a, b in pairs if a is not None and b is not None]
        return self.size == other.size and bool(compared) and all(a == b for a, b in compared)

    def describe(self) -> str:
        parts = [f"size {self.size}"]
        parts += [
            f"{n} {v}" for n, v in (("crc32c", self.crc32c), ("md5", self.md5), ("sha256", self.sha256)) if v
        ]
        return ", ".join(parts)


def compute_checksums(path: Path) -> _Checksums:
    """CRC32C, MD5 and SHA-256 of a file, streamed in chunks.

    Args:
        path: The file to read.

    Returns:
        The checksums; ``crc32c`` and ``md5`` are base64-encoded digests as in GCS object
        metadata, ``sha256`` is hex.
    """
    crc = google_crc32c.Checksum()
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc.update(chunk)
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return _Checksums(
        size=size,
        crc32c=base64.b64encode(crc.digest()).decode("ascii"),
        md5=base64.b64encode(md5.digest()).decode("ascii"),
        sha256=sha.hexdigest(),
    )


def is_gcs_uri(uri: str) -> bool:
    """Whether ``uri`` names Google Cloud Storage (``gs://...``)."""
    return uri.startswith(GCS_SCHEME)


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """Split ``gs://BUCKET/PREFIX`` into bucket and prefix (no leading/trailing slash).

    Args:
        uri: A ``gs://`` URI; the prefix may be empty.

    Returns:
        ``(bucket, prefix)``.

    Raises:
        ValueError: If ``uri`` is not a ``gs://`` URI or has no bucket.
    """
    if not is_gcs_uri(uri):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, prefix = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, prefix.strip("/")


def _join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _check_destination(destination: str) -> None:
    if not destination:
        raise ValueError("destination is empty; give a local folder or gs://BUCKET/PREFIX")
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", destination)
    if scheme and not is_gcs_uri(destination):
        raise ValueError(
            f"destination {destination!r}: scheme {scheme.group(1)!r} is not supported; "
            "use a local folder or gs://BUCKET/PREFIX"
        )


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID_PATTERN.match(run_id or "") or run_id == LATEST_NAME:
        raise ValueError(
            f"run_id {run_id!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, and not {LATEST_NAME!r}"
        )


def _list_files(folder: Path, what: str) -> list[tuple[Path, str]]:
    """All files under ``folder`` as (path, POSIX path relative to folder), sorted."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist or is not a directory")
    files = sorted((p, p.relative_to(folder).as_posix()) for p in folder.rglob("*") if p.is_file())
    if not files:
        raise PublishError(f"{what} folder {folder} holds no files; nothing to publish")
    return files


def publish_run(
    bundle_dir: Path,
    evaluation_dir: Path,
    destination: str,
    run_id: str,
    *,
    client: storage.Client | None = None,
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
    return publish_folders({BUNDLE_FOLDER: Path(bundle_dir), EVALUATION_FOLDER: Path(evaluation_dir)},
                           destination, run_id, client=client)


def publish_folders(
    folders: dict[str, Path],
    destination: str,
    run_id: str,
    *,
    client: storage.Client | None = None,
) -> str:
    """Publish folders under ``<destination>/<run_id>/<name>/``; see :func:`publish_run`.

    Args:
        folders: Name at the destination -> local folder.
        destination: A local folder path, or ``gs://BUCKET/PREFIX``.
        run_id: The run's id (see :func:`publish_run`).
        client: Optional google-cloud-storage client.

    Returns:
        The URI of the run folder.
    """
    _check_run_id(run_id)
    _check_destination(destination)
    started = time.monotonic()
    files = [(p, f"{name}/{rel}") for name, folder in folders.items() for p, rel in _list_files(folder, name)]
    local = {_join_key(run_id, rel): (path, compute_checksums(path)) for path, rel in files}

    target: _Target = (
        _GcsTarget(destination, client) if is_gcs_uri(destination) else _LocalTarget(destination)
    )
    run_uri = target.uri(run_id)
    log.info("publish: %d files of run %s to %s", len(local), run_id, run_uri)

    existing = target.list_existing(run_id)
    changed = sorted(
        key for key, (_, sums) in local.items() if key in existing and not existing[key].matches(sums)
    )
    extra = sorted(set(existing) - set(local))
    if changed or extra:
        details = [
            f"{target.uri(k)} ({existing[k].describe()} != local {local[k][1].describe()})" for k in changed
        ]
        details += [f"{target.uri(k)} (not in the folders being published)" for k in extra]
        raise PublishError(
            f"run {run_id!r} is already published at {run_uri} with different content; "
            "published files are never overwritten, publish under a new run id. Differences: "
            + "; ".join(details)
        )

    written = bytes_written = 0
    for key, (path, sums) in local.items():
        if key in existing:
            continue
        if target.write_new(path, key, sums):
            written += 1
            bytes_written += sums.size
    target.put_pointer(LATEST_NAME, run_id)
    log.info(
        "publish: %s done in %.1fs: %d files written (%d bytes), %d already identical; %s -> %s",
        run_uri,
        time.monotonic() - started,
        written,
        bytes_written,
        len(local) - written,
        target.uri(LATEST_NAME),
        run_id,
    )
    return run_uri


def read_latest(destination: str, *, client: storage.Client | None = None) -> str:
    """The run id that ``<destination>/latest`` points at.

    Args:
        destination: The publish destination (local folder or ``gs://BUCKET/PREFIX``).
        client: Optional google-cloud-storage client for ``gs://`` destinations.

    Returns:
        The run id of the most recent publish.

    Raises:
        FileNotFoundError: Nothing was published there yet.
    """
    _check_destination(destination)
    if is_gcs_uri(destination):
        text = _GcsTarget(destination, client).read_text(LATEST_NAME)
    else:
        path = Path(destination).expanduser() / LATEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: nothing published at {destination} yet")
        text = path.read_text(encoding="utf-8")
    return text.strip()


def download_prefix(uri: str, local_dir: Path, *, client: storage.Client | None = None) -> Path:
    """Copy everything under a ``gs://`` prefix (or a local folder) into ``local_dir``.

    Used by ``identify`` to fetch a published bundle, e.g.
    ``download_prefix("gs://bucket/published/RUN/bundle", cache_dir)``. Object names are
    taken relative to ``uri``; each download is checked against the object's CRC32C and
    written atomically.

    Args:
        uri: ``gs://BUCKET/PREFIX`` (a "folder") or a local folder path.
        local_dir: Where the files go (created if missing); existing files are replaced.
        client: Optional google-cloud-storage client for ``gs://`` URIs.

    Returns:
        ``local_dir``.

    Raises:
        FileNotFoundError: No object (or no local file) under ``uri``.
        PublishError: A downloaded file does not match its object's checksum.
    """
    local_dir = Path(local_dir)
    if not is_gcs_uri(uri):
        _check_destination(uri)
        src = Path(uri).expanduser()
        if not src.is_dir() or not any(p.is_file() for p in src.rglob("*")):
            raise FileNotFoundError(f"{uri}: no files to download")
        shutil.copytree(src, local_dir, dirs_exist_ok=True)
        log.info("download: copied %s to %s", src, local_dir)
        return local_dir

    bucket_name, prefix = split_gcs_uri(uri)
    gcs = _GcsTarget(uri, client)
    folder_prefix = f"{prefix}/" if prefix else ""
    count = 0
    for blob in gcs.client.list_blobs(bucket_name, prefix=folder_prefix):
        rel = blob.name[len(folder_prefix) :]
        if not rel or rel.endswith("/"):
            continue  # "folder" placeholder objects
        dest = local_dir.joinpath(*rel.split("/"))
        if local_dir.resolve() not in dest.resolve().parents:
            raise PublishError(f"gs://{bucket_name}/{blob.name}: object name escapes {local_dir}")
        with atomic_path(dest) as tmp:
            blob.download_to_filename(str(tmp), checksum=None)
            os.chmod(tmp, 0o644)
            sums = compute_checksums(tmp)
            if blob.crc32c and sums.crc32c != blob.crc32c:
                raise PublishError(
                    f"gs://{bucket_name}/{blob.name}: downloaded CRC32C {sums.crc32c} "
                    f"does not match the object's {blob.crc32c}"
                )
        count += 1
    if count == 0:
        raise FileNotFoundError(f"{uri}: no objects under this prefix")
    log.info("download: %d objects from %s to %s", count, uri, local_dir)
    return local_dir


class _Target:
    """Where published files go: a local folder or a GCS prefix. Keys are POSIX paths
    relative to the destination."""

    def uri(self, key: str) -> str:
        raise NotImplementedError

    def list_existing(self, key_prefix: str) -> dict[str, _Checksums]:
        """Every file already under ``key_prefix``, by key, with its checksums."""
        raise NotImplementedError

    def write_new(self, path: Path, key: str, sums: _Checksums) -> bool:
        """Create ``key`` from ``path`` and verify it; never replace a different file.

        Returns False if an identical file appeared there in the meantime.
        """
        raise NotImplementedError

    def put_pointer(self, key: str, text: str) -> None:
        """Write (or overwrite) a small text file."""
        raise NotImplementedError


def _conflict(uri: str, existing: _Checksums, sums: _Checksums) -> PublishError:
    return PublishError(
        f"{uri} already exists with different content ({existing.describe()} != local "
        f"{sums.describe()}); published files are never overwritten: publish under a new run id"
    )


class _LocalTarget(_Target):
    # Leftovers of an interrupted atomic write (see mushroom.fileio.atomic_path).
    _TEMP_NAME = re.compile(r"^\..+\.tmp$")

    def __init__(self, destination: str):
        self.root = Path(destination).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def list_existing(self, key_prefix: str) -> dict[str, _Checksums]:
        folder = self._path(key_prefix)
        if folder.exists() and not folder.is_dir():
            raise PublishError(f"{folder} exists and is not a folder; refusing to publish into it")
        found = {}
        for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if p.is_file() and not self._TEMP_NAME.match(p.name):
                found[p.relative_to(self.root).as_posix()] = compute_checksums(p)
            elif not p.is_dir() and not p.is_file():
                raise PublishError(f"{p} is neither a file nor a folder; refusing to publish over it")
        return found

    def write_new(self, path: Path, key: str, sums: _Checksums) -> bool:
        dest = self._path(key)
        raced = False
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; published files are for reading
            if not compute_checksums(tmp).matches(sums):
                raise PublishError(f"{dest}: copy of {path} does not match the source checksums")
            if dest.exists():  # appeared since the listing (another publisher)
                existing = compute_checksums(dest)
                if not existing.matches(sums):
                    raise _conflict(str(dest), existing, sums)
                raced = True  # identical bytes: replacing them changes nothing
        if raced:
            return False
        log.info("publish: wrote %s (%d bytes, sha256 %s)", dest, sums.size, sums.sha256)
        return True

    def put_pointer(self, key: str, text: str) -> None:
        dest = self._path(key)
        with atomic_path(dest) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
            os.chmod(tmp, 0o644)
        log.info("publish: %s -> %s", dest, text)


class _GcsTarget(_Target):
    def __init__(self, destination: str, client: storage.Client | None):
        from google.cloud import storage

        self.bucket_name, self.prefix = split_gcs_uri(destination)
        if client is None:
            # With STORAGE_EMULATOR_HOST set the client uses anonymous credentials itself.
            client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
        self.client = client
        self.bucket = client.bucket(self.bucket_name)

    def _name(self, key: str) -> str:
        return _join_key(self.prefix, key)

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def uri(self, key: str) -> str:
        return f"{GCS_SCHEME}{self.bucket_name}/{self._name(key)}"

    @staticmethod
    def _stored(blob) -> _Checksums:
        return _Checksums(size=int(blob.size or 0), crc32c=blob.crc32c, md5=blob.md5_hash)

    def list_existing(self, key_prefix: str) -> dict[str, _Checksums]:
        found = {}
        for blob in self.client.list_blobs(self.bucket_name, prefix=self._name(key_prefix) + "/"):
            if not blob.name.endswith("/"):  # "folder" placeholders hold no data
                found[self._key(blob.name)] = self._stored(blob)
        return found

    def write_new(self, path: Path, key: str, sums: _Checksums) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(self._name(key))
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            # if_generation_match=0: create only, never replace an object that appeared
            # since the listing.
            blob.upload_from_filename(
                str(path), content_type=content_type, if_generation_match=0, checksum="crc32c"
            )
        except PreconditionFailed:
            existing = self.bucket.get_blob(blob.name)
            if existing is None:
                raise
            if self._stored(existing).matches(sums):
                return False
            raise _conflict(self.uri(key), self._stored(existing), sums) from None
        blob.reload()
        stored = self._stored(blob)
        if not stored.matches(sums):
            try:
                blob.delete(if_generation_match=blob.generation)
            except Exception:  # best effort; the error below is what matters
                log.warning("publish: could not delete the corrupt upload %s", self.uri(key))
            raise PublishError(
                f"{self.uri(key)}: upload failed verification "
                f"({stored.describe()} != local {sums.describe()})"
            )
        log.info(
            "publish: wrote %s (%d bytes, crc32c %s, md5 %s)", self.uri(key), sums.size, sums.crc32c, sums.md5
        )
        return True

    def put_pointer(self, key: str, text: str) -> None:
        blob = self.bucket.blob(self._name(key))
        blob.cache_control = "no-cache, max-age=0"  # a pointer must never be served stale
        data = (text + "\n").encode("utf-8")
        blob.upload_from_string(data, content_type="text/plain; charset=utf-8", checksum="crc32c")
        blob.reload()
        expected = base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")
        if blob.crc32c != expected:
            raise PublishError(
                f"{self.uri(key)}: pointer failed verification (crc32c {blob.crc32c} != {expected})"
            )
        log.info("publish: %s -> %s", self.uri(key), text)

    def read_text(self, key: str) -> str:
        blob = self.bucket.get_blob(self._name(key))
        if blob is None:
            raise FileNotFoundError(f"{self.uri(key)}: nothing published there yet")
        return blob.download_as_bytes().decode("utf-8")
