"""Storage: checksums, local-folder and ``gs://`` backends, downloads and the download cache.

A location is a local folder or ``gs://BUCKET/PREFIX``; a :class:`Store` opened on it
addresses files by keys (POSIX paths relative to the location). Files written through a
store are immutable: :meth:`Store.write_new` never replaces a file with different bytes, and
every write is verified against local checksums (CRC32C and MD5 for GCS, SHA-256 for a local
folder). Only small pointer files are overwritten, and only by compare-and-swap
(:meth:`Store.read_pointer`, :meth:`Store.replace_pointer`): a writer that read an older
version loses, re-reads and decides again. On GCS the swap is a generation precondition; on a
local folder it is a compare of the bytes under a lock file created with ``O_EXCL`` (see
:meth:`LocalStore.replace_pointer`).

For ``gs://`` locations google-cloud-storage is used; it honours ``STORAGE_EMULATOR_HOST``
(tests and kind/minikube clusters run fake-gcs-server). The Google packages are imported
only when a checksum is computed or a ``gs://`` location is opened, so reading local folders
(``mushroom identify``) works on the base install.

One idea, object storage, in one module of more than 500 lines: the two backends share one
interface and one set of guarantees, and are read best side by side.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mushroom.fileio import atomic_path

if TYPE_CHECKING:
    from google.cloud import storage as gcs

log = logging.getLogger(__name__)

GCS_SCHEME = "gs://"
CACHE_NAME = "quantized-mushroom"  # the folder under $XDG_CACHE_HOME

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1024 * 1024
STALE_LOCK_S = 30.0  # a pointer lock is held for milliseconds; older ones were left by a crash
LOCK_TIMEOUT_S = 120.0


class StorageError(RuntimeError):
    """A written or downloaded file failed verification, or there is nothing to upload."""


class ConflictError(StorageError):
    """A key already holds different content; stored files are never overwritten."""


@dataclass(frozen=True)
class Checksums:
    """Checksums of one file's bytes. ``crc32c`` and ``md5`` are base64 digests as in GCS
    object metadata, ``sha256`` is hex; a stored object may lack some of them."""

    size: int
    crc32c: str | None = None
    md5: str | None = None
    sha256: str | None = None

    def matches(self, other: Checksums) -> bool:
        """Same size and every checksum that both sides have is equal (at least one)."""
        pairs = ((self.crc32c, other.crc32c), (self.md5, other.md5), (self.sha256, other.sha256))
        compared = [(a, b) for a, b in pairs if a is not None and b is not None]
        return self.size == other.size and bool(compared) and all(a == b for a, b in compared)

    def describe(self) -> str:
        """The size and the checksums present, for error messages."""
        parts = [f"size {self.size}"]
        parts += [
            f"{n} {v}" for n, v in (("crc32c", self.crc32c), ("md5", self.md5), ("sha256", self.sha256)) if v
        ]
        return ", ".join(parts)


def compute_checksums(path: Path) -> Checksums:
    """CRC32C, MD5 and SHA-256 of a file, streamed in chunks.

    Args:
        path: The file to read.

    Returns:
        The checksums; ``crc32c`` and ``md5`` are base64-encoded digests as in GCS object
        metadata, ``sha256`` is hex.
    """
    import base64  # lazy, as every import only uploads and downloads need: identify starts fast
    import hashlib

    import google_crc32c  # lazy: the base install (identify) has no Google packages

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
    return Checksums(
        size=size,
        crc32c=base64.b64encode(crc.digest()).decode("ascii"),
        md5=base64.b64encode(md5.digest()).decode("ascii"),
        sha256=sha.hexdigest(),
    )


def is_gcs_uri(uri: str) -> bool:
    """Whether ``uri`` names Google Cloud Storage (``gs://...``).

    Args:
        uri: A location.

    Returns:
        True for a ``gs://`` URI.
    """
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


def join_uri(location: str, key: str) -> str:
    """The location of ``key`` under ``location``, in the same form (not resolved).

    Args:
        location: A local folder or ``gs://BUCKET/PREFIX``.
        key: A POSIX path relative to ``location``.

    Returns:
        ``gs://BUCKET/PREFIX/<key>``, or the local path ``<location>/<key>``.
    """
    if is_gcs_uri(location):
        return f"{location.rstrip('/')}/{_join_key(key)}"
    return str(Path(location).expanduser().joinpath(*_join_key(key).split("/")))


def check_key(key: str, what: str = "key") -> None:
    """Refuse a key that is not one safe path component.

    Args:
        key: A run id, cache key or folder name.
        what: How the error message names it.

    Raises:
        ValueError: ``key`` is not 1-128 of ``[A-Za-z0-9._-]`` starting with a letter or digit.
    """
    if not _KEY_PATTERN.match(key or ""):
        raise ValueError(
            f"{what} {key!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _check_location(location: str) -> None:
    if not location:
        raise ValueError("location is empty; give a local folder or gs://BUCKET/PREFIX")
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", location)
    if scheme and not is_gcs_uri(location):
        raise ValueError(
            f"location {location!r}: scheme {scheme.group(1)!r} is not supported; "
            "use a local folder or gs://BUCKET/PREFIX"
        )


def _list_files(folder: Path, what: str) -> list[tuple[Path, str]]:
    """All files under ``folder`` as (path, POSIX path relative to folder), sorted."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist or is not a directory")
    files = sorted((p, p.relative_to(folder).as_posix()) for p in folder.rglob("*") if p.is_file())
    if not files:
        raise StorageError(f"{what} folder {folder} holds no files; nothing to upload")
    return files


def _conflict(uri: str, existing: Checksums, sums: Checksums) -> ConflictError:
    return ConflictError(
        f"{uri} already exists with different content ({existing.describe()} != local "
        f"{sums.describe()}); stored files are never overwritten"
    )


@contextmanager
def _lock_file(path: Path) -> Iterator[None]:
    """Hold ``path`` as a lock: created with ``O_EXCL`` (one holder at a time), removed on exit."""
    waited = time.monotonic()
    delay = 0.001
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile
            if age > STALE_LOCK_S:
                log.warning("storage: removing %s, left %.0fs ago by a writer that never released it", path, age)
                path.unlink(missing_ok=True)
                continue
            if time.monotonic() - waited > LOCK_TIMEOUT_S:
                raise StorageError(f"{path}: still locked after {LOCK_TIMEOUT_S:.0f}s; "
                                   "delete it if no publish is running") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


def check_writable(location: str, *, client: gcs.Client | None = None) -> None:
    """Check early that files can be written to ``location``: write, then delete, a test file.

    Args:
        location: A local folder (created if missing) or ``gs://BUCKET/PREFIX``.
        client: Optional google-cloud-storage client for ``gs://`` locations.

    Raises:
        StorageError: One line naming what is wrong: the bucket does not exist, the test
            write or its deletion was refused, or the folder cannot be written.
        ValueError: ``location`` is malformed.
        ImportError: A ``gs://`` location without google-cloud-storage installed.
    """
    open_store(location, client).check_writable()


def open_store(location: str, client: gcs.Client | None = None) -> Store:
    """The store for a local folder or a ``gs://`` prefix.

    Args:
        location: A local folder path, or ``gs://BUCKET/PREFIX``.
        client: A google-cloud-storage client for ``gs://`` locations; by default one is made
            from the environment (``STORAGE_EMULATOR_HOST`` is honoured).

    Returns:
        A :class:`GcsStore` or a :class:`LocalStore`.

    Raises:
        ValueError: ``location`` is empty or has a scheme other than ``gs://``.
        ImportError: A ``gs://`` location without google-cloud-storage installed.
    """
    _check_location(location)
    return GcsStore(location, client) if is_gcs_uri(location) else LocalStore(location)


class Store:
    """Files under a local folder or a GCS prefix. Keys are POSIX paths relative to it."""

    def uri(self, key: str) -> str:
        """The full location of ``key`` (absolute path or ``gs://`` URI)."""
        raise NotImplementedError

    def is_folder(self, key: str) -> bool:
        """Whether any file exists under ``key/``."""
        raise NotImplementedError

    def list_existing(self, key_prefix: str) -> dict[str, Checksums]:
        """Every file already under ``key_prefix``, by key, with its checksums."""
        raise NotImplementedError

    def write_new(self, path: Path, key: str, sums: Checksums) -> bool:
        """Create ``key`` from ``path`` and verify it; never replace a different file.

        Returns False if an identical file appeared there in the meantime.
        """
        raise NotImplementedError

    def read_pointer(self, key: str, timeout_s: float | None = None) -> tuple[str | None, object]:
        """The text of a small pointer file (None if there is none) and a version token for
        :meth:`replace_pointer`; ``timeout_s`` bounds a remote read, retries included (None: the
        backend's defaults)."""
        raise NotImplementedError

    def replace_pointer(self, key: str, text: str, expected: object) -> bool:
        """Write ``text`` (plus a newline) to ``key`` only if it is still at version ``expected``
        (the token :meth:`read_pointer` returned); verified. False, and nothing written, if another
        writer changed it since."""
        raise NotImplementedError

    def check_writable(self) -> None:
        """Create and delete a small test file; StorageError in one line if either fails."""
        raise NotImplementedError

    def read_text(self, key: str) -> str:
        """The text of ``key``; FileNotFoundError if there is none."""
        raise NotImplementedError

    def download_all(self, local_dir: Path) -> int:
        """Copy every file of the store into ``local_dir``; return how many (at least one)."""
        raise NotImplementedError

    def upload_folders(self, folders: Mapping[str, Path], key: str, files: Mapping[str, Path] | None = None) -> str:
        """Upload folders to ``<key>/<name>/`` and files to ``<key>/<name>``, immutably; see
        :func:`upload_folders`."""
        check_key(key)
        for name in folders:
            check_key(name, "folder name")
        for name in files or {}:
            check_key(name, "file name")
        started = time.monotonic()
        entries = [(p, f"{name}/{rel}") for name, folder in folders.items()
                   for p, rel in _list_files(Path(folder), name)]
        entries += [(Path(p), name) for name, p in (files or {}).items()]
        local = {_join_key(key, rel): (path, compute_checksums(path)) for path, rel in entries}
        folder_uri = self.uri(key)
        log.info("upload: %d files to %s", len(local), folder_uri)

        # Checked before anything is written: a refused upload leaves the store as it was.
        existing = self.list_existing(key)
        changed = sorted(k for k, (_, sums) in local.items() if k in existing and not existing[k].matches(sums))
        extra = sorted(set(existing) - set(local))
        if changed or extra:
            details = [f"{self.uri(k)} ({existing[k].describe()} != local {local[k][1].describe()})" for k in changed]
            details += [f"{self.uri(k)} (not in the folders being uploaded)" for k in extra]
            raise ConflictError(
                f"{folder_uri} already holds different content and stored files are never overwritten. "
                "Differences: " + "; ".join(details)
            )

        written = bytes_written = 0
        for k, (path, sums) in local.items():
            if k not in existing and self.write_new(path, k, sums):
                written += 1
                bytes_written += sums.size
        log.info(
            "upload: %s done in %.1fs: %d files written (%d bytes), %d already identical",
            folder_uri, time.monotonic() - started, written, bytes_written, len(local) - written,
        )
        return folder_uri


class LocalStore(Store):
    """A local folder (resolved to an absolute path)."""

    # Leftovers of an interrupted atomic write (see mushroom.fileio.atomic_path).
    _TEMP_NAME = re.compile(r"^\..+\.tmp$")

    def __init__(self, location: str):
        self.root = Path(location).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def is_folder(self, key: str) -> bool:
        return self._path(key).is_dir()

    def list_existing(self, key_prefix: str) -> dict[str, Checksums]:
        folder = self._path(key_prefix)
        if folder.exists() and not folder.is_dir():
            raise StorageError(f"{folder} exists and is not a folder; refusing to write into it")
        found = {}
        for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if p.is_file() and not self._TEMP_NAME.match(p.name):
                found[p.relative_to(self.root).as_posix()] = compute_checksums(p)
            elif not p.is_dir() and not p.is_file():
                raise StorageError(f"{p} is neither a file nor a folder; refusing to write over it")
        return found

    def write_new(self, path: Path, key: str, sums: Checksums) -> bool:
        dest = self._path(key)
        raced = False
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; stored files are for reading
            if not compute_checksums(tmp).matches(sums):
                raise StorageError(f"{dest}: copy of {path} does not match the source checksums")
            if dest.exists():  # appeared since the listing (another writer)
                existing = compute_checksums(dest)
                if not existing.matches(sums):
                    raise _conflict(str(dest), existing, sums)
                raced = True  # identical bytes: replacing them changes nothing
        if raced:
            return False
        log.info("upload: wrote %s (%d bytes, sha256 %s)", dest, sums.size, sums.sha256)
        return True

    def read_pointer(self, key: str, timeout_s: float | None = None) -> tuple[str | None, bytes | None]:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None, None
        return data.decode("utf-8"), data  # the token is the bytes themselves

    def replace_pointer(self, key: str, text: str, expected: bytes | None) -> bool:
        """Compare-and-swap on a local folder.

        A folder has no conditional write, so the compare and the swap run under a lock file,
        ``.<name>.lock`` beside the pointer, created with ``O_CREAT | O_EXCL`` (one creator wins,
        on local disks and NFS alike). Inside it, the pointer's bytes are compared with
        ``expected`` and, if equal, replaced by an atomic rename. The lock is held for
        milliseconds; one older than :data:`STALE_LOCK_S` was left by a crashed writer and is
        removed. Equal bytes mean an equal decision, so comparing bytes (not versions) is enough.
        """
        dest = self._path(key)
        data = (text + "\n").encode("utf-8")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _lock_file(dest.parent / f".{dest.name}.lock"):
            try:
                current = dest.read_bytes()
            except FileNotFoundError:
                current = None
            if current != expected:
                return False
            with atomic_path(dest) as tmp:
                tmp.write_bytes(data)
                os.chmod(tmp, 0o644)
        log.info("upload: %s -> %s", dest, text)
        return True

    def check_writable(self) -> None:
        import uuid

        test = self.root / f".write-test-{uuid.uuid4().hex[:12]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            test.write_bytes(b"test\n")
            test.unlink()
        except OSError as err:
            raise StorageError(f"{self.root}: cannot write there ({err.strerror or err})") from None

    def read_text(self, key: str) -> str:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        return path.read_text(encoding="utf-8")

    def download_all(self, local_dir: Path) -> int:
        files = [p for p in self.root.rglob("*") if p.is_file()] if self.root.is_dir() else []
        if not files:
            raise FileNotFoundError(f"{self.root}: no files to download")
        shutil.copytree(self.root, local_dir, dirs_exist_ok=True)
        return len(files)


class GcsStore(Store):
    """A ``gs://BUCKET/PREFIX``."""

    def __init__(self, location: str, client: gcs.Client | None = None):
        # Lazy: only gs:// locations need it. The dotted import (not ``from google.cloud import``)
        # honours a module blocked in sys.modules, as tests of the offline path do.
        import google.cloud.storage as storage

        self.bucket_name, self.prefix = split_gcs_uri(location)
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
    def _stored(blob) -> Checksums:
        return Checksums(size=int(blob.size or 0), crc32c=blob.crc32c, md5=blob.md5_hash)

    def is_folder(self, key: str) -> bool:
        blobs = self.client.list_blobs(self.bucket_name, prefix=self._name(key) + "/", max_results=1)
        return next(iter(blobs), None) is not None

    def list_existing(self, key_prefix: str) -> dict[str, Checksums]:
        found = {}
        for blob in self.client.list_blobs(self.bucket_name, prefix=self._name(key_prefix) + "/"):
            if not blob.name.endswith("/"):  # "folder" placeholders hold no data
                found[self._key(blob.name)] = self._stored(blob)
        return found

    def write_new(self, path: Path, key: str, sums: Checksums) -> bool:
        import mimetypes

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
                log.warning("upload: could not delete the corrupt upload %s", self.uri(key))
            raise StorageError(
                f"{self.uri(key)}: upload failed verification "
                f"({stored.describe()} != local {sums.describe()})"
            )
        log.info(
            "upload: wrote %s (%d bytes, crc32c %s, md5 %s)", self.uri(key), sums.size, sums.crc32c, sums.md5
        )
        return True

    def read_pointer(self, key: str, timeout_s: float | None = None) -> tuple[str | None, int]:
        limits = {}
        if timeout_s is not None:  # offline, the default retries would go on for two minutes
            from google.cloud.storage.retry import DEFAULT_RETRY

            limits = {"timeout": timeout_s, "retry": DEFAULT_RETRY.with_timeout(timeout_s)}
        blob = self.bucket.get_blob(self._name(key), **limits)
        if blob is None:
            return None, 0  # generation 0: "does not exist" as a precondition
        # The blob carries its generation, so exactly that version is downloaded.
        return blob.download_as_bytes(**limits).decode("utf-8"), int(blob.generation)

    def replace_pointer(self, key: str, text: str, expected: int) -> bool:
        """Compare-and-swap on GCS: the upload carries ``ifGenerationMatch`` (0: only if absent)."""
        import base64

        import google_crc32c
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(self._name(key))
        blob.cache_control = "no-cache, max-age=0"  # a pointer must never be served stale
        data = (text + "\n").encode("utf-8")
        try:
            blob.upload_from_string(data, content_type="text/plain; charset=utf-8", checksum="crc32c",
                                    if_generation_match=expected)
        except PreconditionFailed:
            return False
        sent = base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")
        if blob.crc32c != sent:  # the upload response describes exactly the generation written
            raise StorageError(f"{self.uri(key)}: text failed verification (crc32c {blob.crc32c} != {sent})")
        log.info("upload: %s -> %s (generation %s)", self.uri(key), text, blob.generation)
        return True

    def check_writable(self) -> None:
        import uuid

        from google.api_core.exceptions import Forbidden, GoogleAPICallError, NotFound

        where = self.uri("")
        blob = self.bucket.blob(self._name(f".write-test-{uuid.uuid4().hex[:12]}"))
        try:
            blob.upload_from_string(b"test\n", if_generation_match=0)
        except NotFound:
            raise StorageError(f"{where}: bucket {self.bucket_name!r} does not exist "
                               "(or this account cannot see it)") from None
        except Forbidden as err:
            raise StorageError(f"{where}: a test write was refused ({err.message}); the publishing account "
                               "needs permission to create objects there") from None
        except GoogleAPICallError as err:
            raise StorageError(f"{where}: a test write failed ({type(err).__name__}: {err.message})") from None
        try:
            blob.delete(if_generation_match=blob.generation)
        except GoogleAPICallError as err:
            raise StorageError(f"{where}: a test object could be written but not deleted ({err.message}); "
                               "moving `latest` needs permission to delete objects "
                               f"(delete {GCS_SCHEME}{self.bucket_name}/{blob.name} by hand)") from None

    def read_text(self, key: str) -> str:
        blob = self.bucket.get_blob(self._name(key))
        if blob is None:
            raise FileNotFoundError(f"{self.uri(key)}: no such object")
        return blob.download_as_bytes().decode("utf-8")

    def download_all(self, local_dir: Path) -> int:
        folder_prefix = f"{self.prefix}/" if self.prefix else ""
        count = 0
        for blob in self.client.list_blobs(self.bucket_name, prefix=folder_prefix):
            rel = blob.name[len(folder_prefix) :]
            if not rel or rel.endswith("/"):
                continue  # "folder" placeholder objects
            dest = local_dir.joinpath(*rel.split("/"))
            if local_dir.resolve() not in dest.resolve().parents:
                raise StorageError(f"gs://{self.bucket_name}/{blob.name}: object name escapes {local_dir}")
            with atomic_path(dest) as tmp:
                blob.download_to_filename(str(tmp), checksum=None)
                os.chmod(tmp, 0o644)
                sums = compute_checksums(tmp)
                if blob.crc32c and sums.crc32c != blob.crc32c:
                    raise StorageError(
                        f"gs://{self.bucket_name}/{blob.name}: downloaded CRC32C {sums.crc32c} "
                        f"does not match the object's {blob.crc32c}"
                    )
            count += 1
        if count == 0:
            raise FileNotFoundError(f"{self.uri('')}: no objects under this prefix")
        return count


def upload_folders(
    folders: Mapping[str, Path], destination: str, key: str, *, files: Mapping[str, Path] | None = None,
    client: gcs.Client | None = None,
) -> str:
    """Upload folders file for file to ``<destination>/<key>/<name>/``, immutably and verified.

    The key folder is checked before anything is written: if it already holds exactly these
    files (same checksums) nothing is uploaded, so uploading again is idempotent. If any file
    there differs, or the key folder holds files that are not in these folders,
    :class:`ConflictError` names them and nothing is written. Every written file is verified
    against its local checksums.

    Args:
        folders: Name at the destination -> local folder.
        destination: A local folder path, or ``gs://BUCKET/PREFIX``.
        key: The folder under ``destination``: 1-128 of ``[A-Za-z0-9._-]``, starting with a
            letter or digit.
        files: Name at the destination -> local file, for single files beside the folders
            (``<destination>/<key>/<name>``).
        client: Optional google-cloud-storage client for ``gs://`` destinations.

    Returns:
        The URI of the key folder: ``gs://BUCKET/PREFIX/<key>`` or the absolute local path.

    Raises:
        ConflictError: The key folder holds different or extra files.
        StorageError: A written file does not match its local checksums, or a folder holds no files.
        FileNotFoundError: A folder does not exist.
        ValueError: ``key``, a folder name or ``destination`` is malformed.
    """
    return open_store(destination, client).upload_folders(folders, key, files)


def download_prefix(uri: str, local_dir: Path, *, client: gcs.Client | None = None) -> Path:
    """Copy everything under a ``gs://`` prefix (or a local folder) into ``local_dir``.

    Object names are taken relative to ``uri``; each download is checked against the object's
    CRC32C and written atomically.

    Args:
        uri: ``gs://BUCKET/PREFIX`` (a "folder") or a local folder path.
        local_dir: Where the files go (created if missing); existing files are replaced.
        client: Optional google-cloud-storage client for ``gs://`` URIs.

    Returns:
        ``local_dir``.

    Raises:
        FileNotFoundError: No object (or no local file) under ``uri``.
        StorageError: A downloaded file does not match its object's checksum.
    """
    local_dir = Path(local_dir)
    count = open_store(uri, client).download_all(local_dir)
    log.info("download: %d files from %s to %s", count, uri, local_dir)
    return local_dir


def user_cache_dir(name: str) -> Path:
    """This project's cache folder for ``name``: ``$XDG_CACHE_HOME/quantized-mushroom/<name>``.

    Args:
        name: The kind of thing cached (``bundles``, ...).

    Returns:
        The folder (not created); ``~/.cache`` stands in for an unset ``XDG_CACHE_HOME``.
    """
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / CACHE_NAME / name


def cache_path(uri: str, cache_dir: Path) -> Path:
    """Where the copy of ``gs://BUCKET/PREFIX`` lives in a cache: ``<cache_dir>/BUCKET/PREFIX``.

    Args:
        uri: A ``gs://`` URI.
        cache_dir: The cache folder.

    Returns:
        The cached copy's folder (it may not exist yet).

    Raises:
        ValueError: ``uri`` has no bucket, or a ``.``/``..`` part that would leave the cache.
    """
    bucket, prefix = split_gcs_uri(uri)
    parts = [bucket, *[p for p in prefix.split("/") if p]]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{uri}: '.' or '..' in a gs:// URI")
    return Path(cache_dir).joinpath(*parts)


def download_atomically(uri: str, target: Path, *, client: gcs.Client | None = None) -> Path:
    """Download ``uri`` into ``target`` all or nothing, replacing an earlier copy.

    The files land in a partial folder beside ``target`` that replaces ``target`` only once
    every file is down and verified, so a failed download never counts as cached.

    Args:
        uri: ``gs://BUCKET/PREFIX`` or a local folder (see :func:`download_prefix`).
        target: The folder to fill, e.g. :func:`cache_path` of ``uri``.
        client: Optional google-cloud-storage client for ``gs://`` URIs.

    Returns:
        ``target``.

    Raises:
        FileNotFoundError: No object under ``uri``.
        StorageError: A download does not match its checksum.
        ImportError: A ``gs://`` URI without google-cloud-storage installed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        download_prefix(uri, partial, client=client)
        if target.exists():
            shutil.rmtree(target)  # a refresh replaces the old copy
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
