"""Decode once: every photo of a dataset, preprocessed per model input size, in TFRecord shards.

The prepare stage runs :func:`prepare_shards` once per run, between split and the per-model
stages. It decodes each photo through :func:`mushroom.preprocess.load_image` (the function
``identify`` uses) for every distinct input size and writes::

    <out>/manifest.json                                   sizes, splits, counts, checksums
    <out>/size=<S>/<split>-<i>-of-<n>.tfrecord            tf.train.Example: image (raw uint8 S*S*3), label

tune, train, quantize and evaluate then read pixels with TensorFlow's ops
(:func:`shard_dataset`, :func:`shard_arrays`): no JPEG decoding per example, and the pixels
are bit-identical to ``load_image``'s. Training memory is bounded whatever the dataset size:
files are interleaved and the shuffle buffer is capped in bytes, nothing is cached in memory.
The manifest also holds each photo's stored ``(width, height)`` (what the quality gate checks
besides the pixels), so evaluate needs no photo file of a split either.

Where the shards are read from: a :class:`ShardSource`, on a local folder or a ``gs://``
prefix (the pipeline root's shards artifact, read in place: nothing else of it is fetched). A
task reads only the files of the size and splits it opens, and only when it reads them; the
source counts the bytes (:meth:`ShardSource.summary`, :meth:`ShardSource.metrics`).

Opening a split checks the manifest (schema, size, split, and, given the split table, that
the shards hold that table's photos in its order). The SHA-256 of every file is checked
either when the split is opened (``verify=True``: a damaged or foreign shard stops a stage
before any work, naming the file) or in the pass that first reads the file
(``verify="on_read"``: one pass over the bytes instead of two). On read:

* :func:`shard_arrays` streams each file it needs through the checksum and returns only once
  every file it read matched: a damaged file raises :class:`ShardError` naming it, and no
  pixel of it is returned.
* :func:`shard_dataset` makes each file local and checked the first time the dataset reaches
  it (a ``gs://`` file is streamed through the checksum into a scratch copy beside the task,
  read from there in later epochs; a local file is checked in place), before TensorFlow reads
  a record of it. A damaged file stops the iteration (``model.fit``, a tune trial) at that
  point with a TensorFlow error whose message is the :class:`ShardError`'s, naming the file.

TensorFlow's own ``gs://`` file system is not used: it cannot verify as it reads, and its
endpoint cannot be pointed at the GCS emulator the tests (and kind clusters) use; files are
streamed with google-cloud-storage instead (``STORAGE_EMULATOR_HOST`` honoured).

One idea, shards, in one module of more than 500 lines: how they are written, located,
checked and read share one format and one manifest, and are read best side by side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from mushroom.fileio import atomic_path, read_json, write_json_atomic
from mushroom.manifest import SPLIT_NAMES, read_dataset_catalog, read_splits
from mushroom.preprocess import load_image_with_size
from mushroom.versioning import check_schema_version

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 2  # 2: photo sizes and a checksum of the split table's rows per split
EXAMPLES_PER_SHARD = 1024
SHUFFLE_BUFFER_BYTES = 64 * 2**20  # the training shuffle buffer's pixels (about 440 photos at 224 px)
_CHUNK = 1 << 20
_GCS_CHUNK = 8 << 20  # bytes per ranged GET when streaming a gs:// file
_PARSE_BATCH = 256
Verify = bool | Literal["on_read"]
class ShardError(ValueError):
    """Shards that cannot be used: missing, damaged, or prepared for another size or split."""


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def size_folder(image_size: int) -> str:
    return f"size={image_size}"


def _fingerprint(dataset_dir: Path, splits_dir: Path, sizes: list[int]) -> str:
    """What the shards are made of: the split table, the class order, the sizes."""
    sha = hashlib.sha256()
    for row in read_splits(splits_dir):
        sha.update(f"{row.split}\t{row.taxon_id}\t{row.file}\n".encode())
    sha.update(json.dumps(read_dataset_catalog(dataset_dir).taxon_ids).encode())
    sha.update(json.dumps(sizes).encode())
    sha.update(f"schema {SCHEMA_VERSION}".encode())  # shards of an earlier format are rewritten
    return sha.hexdigest()


def rows_digest(rows) -> str:
    """SHA-256 of one split's rows of the split table (species and file, in order)."""
    sha = hashlib.sha256()
    for row in rows:
        sha.update(f"{row.taxon_id}\t{row.file}\n".encode())
    return sha.hexdigest()


def _example(image: np.ndarray, label: int) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _decoded(paths: list[str], size: int, threads: int) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    """``load_image_with_size`` of every path, in order, a few in flight (Pillow
    decodes outside the GIL)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        window = threads * 4
        pending = [pool.submit(load_image_with_size, p, size) for p in paths[:window]]
        for i in range(len(paths)):
            if i + window < len(paths):
                pending.append(pool.submit(load_image_with_size, paths[i + window], size))
            yield pending[i].result()
            pending[i] = None  # release the pixels once written


def prepare_shards(dataset_dir: str | Path, splits_dir: str | Path, out_dir: str | Path, sizes: Iterable[int], *,
                   examples_per_shard: int = EXAMPLES_PER_SHARD, threads: int = 4) -> dict:
    """Decode every photo once per size into shards under ``out_dir`` and write the manifest.

    Rerunning with the same dataset, splits and sizes finds the manifest and its files intact
    and does nothing; anything else is rewritten (each file atomically, the manifest last).

    Args:
        dataset_dir: The dataset folder (photos and ``dataset.json``).
        splits_dir: The split table's folder.
        out_dir: Where the shards go.
        sizes: The model input sizes of the run (duplicates are ignored).
        examples_per_shard: Photos per file.
        threads: Photos decoded at once.

    Returns:
        The manifest.
    """
    dataset_dir, splits_dir, out_dir = Path(dataset_dir), Path(splits_dir), Path(out_dir)
    sizes = sorted(set(int(s) for s in sizes))
    if not sizes:
        raise ShardError("no image sizes to prepare shards for")
    fingerprint = _fingerprint(dataset_dir, splits_dir, sizes)
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.exists():
        try:
            existing = read_json(manifest_path)
            if existing.get("fingerprint") == fingerprint and existing.get("schema_version") == SCHEMA_VERSION:
                for name, entry in existing["files"].items():
                    _verify(out_dir / name, entry)
                log.info("prepare: shards for sizes %s already in %s; nothing to do", sizes, out_dir)
                return existing
        except (ShardError, OSError, ValueError, KeyError) as err:
            log.info("prepare: rewriting the shards in %s (%s)", out_dir, err)

    catalog = read_dataset_catalog(dataset_dir)
    index = {t: i for i, t in enumerate(catalog.taxon_ids)}
    rows = read_splits(splits_dir)
    by_split = {s: [r for r in rows if r.split == s] for s in SPLIT_NAMES}
    files: dict[str, dict] = {}
    splits: dict[str, dict] = {}
    total = sum(len(r) for r in by_split.values()) * len(sizes)
    done, started = 0, time.monotonic()
    import tensorflow as tf

    for size in sizes:
        for split, split_rows in by_split.items():
            if not split_rows:
                continue
            paths = [str(dataset_dir / r.file) for r in split_rows]
            labels = [index[r.taxon_id] for r in split_rows]
            n_files = max(1, math.ceil(len(paths) / examples_per_shard))
            pixels = _decoded(paths, size, threads)
            photo_sizes: list[list[int]] = []
            for i in range(n_files):
                name = f"{size_folder(size)}/{split}-{i:05d}-of-{n_files:05d}.tfrecord"
                chunk = range(i * examples_per_shard, min(len(paths), (i + 1) * examples_per_shard))
                with atomic_path(out_dir / name) as tmp:
                    with tf.io.TFRecordWriter(str(tmp)) as writer:
                        for j in chunk:
                            image, stored = next(pixels)
                            writer.write(_example(image, labels[j]))
                            photo_sizes.append([int(stored[0]), int(stored[1])])
                    files[name] = {"sha256": _sha256(tmp), "bytes": tmp.stat().st_size, "count": len(chunk),
                                   "size": size, "split": split}
                done += len(chunk)
                log.info("prepare: %s (%d photos); %d/%d photos, %.0f photos/s", name, len(chunk), done, total,
                         done / max(time.monotonic() - started, 1e-9))
            splits.setdefault(split, {"count": len(paths), "labels": labels, "photo_sizes": photo_sizes,
                                      "rows_sha256": rows_digest(split_rows)})
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "sizes": sizes,
        "num_classes": len(catalog),
        "taxon_ids": catalog.taxon_ids,
        "splits": splits,
        "files": files,
    }
    write_json_atomic(manifest_path, manifest)
    for stale in out_dir.glob("size=*/*.tfrecord"):  # files of an earlier preparation
        if stale.relative_to(out_dir).as_posix() not in files:
            stale.unlink()
    return manifest


def _verify(path: Path, entry: dict) -> None:
    if not path.is_file():
        raise ShardError(f"{path}: shard file missing; rerun the prepare stage")
    actual = _sha256(path)
    if actual != entry["sha256"]:
        raise _mismatch(str(path), actual, entry["sha256"])


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _mismatch(uri: str, actual: str, expected: str) -> ShardError:
    return ShardError(f"{uri}: checksum mismatch (sha256 {actual[:12]}..., manifest {expected[:12]}...): "
                      "the file is damaged or from another preparation; rerun the prepare stage")


def _group(name: str) -> str:
    """What a file is, in the read summary: ``size=96 train``, ``features/<key>``, ``manifest.json``."""
    folder, _, file = name.rpartition("/")
    if folder.startswith("size=") and "/" not in folder:
        return f"{folder} {file.split('-', 1)[0]}"
    return folder or file


class _Reading:
    """One file's bytes as they come from the location: counted and, when checked, hashed."""

    def __init__(self, f, size: int, sha):
        self.f, self.size, self.sha, self.n = f, size, sha, 0

    def read(self, size: int) -> bytes:
        size = min(size, self.size - self.n)  # nothing asked past the end (a gs:// read would be a request)
        if size <= 0:
            return b""
        data = self.f.read(size)
        while 0 < len(data) < size:  # a short read before the end: read on
            more = self.f.read(size - len(data))
            if not more:
                break
            data += more
        self.n += len(data)
        if self.sha is not None:
            self.sha.update(data)
        return data


def _framed(f: _Reading, uri: str) -> Iterator[bytes]:
    """The records of a TFRecord file as its bytes stream: length (8 bytes), its masked CRC (4),
    the data, its masked CRC (4). The CRCs are not checked here: the file's SHA-256 is."""
    pos = 0
    while head := f.read(12):
        if len(head) < 12:
            raise ShardError(f"{uri}: truncated at byte {pos}; rerun the prepare stage")
        (length,) = struct.unpack_from("<Q", head)
        if pos + 16 + length > f.size:  # also bounds what a damaged length field could allocate
            raise ShardError(f"{uri}: damaged at byte {pos} (a record runs past the file's {f.size} bytes); "
                             "rerun the prepare stage")
        data = f.read(length)
        if len(data) != length or len(f.read(4)) != 4:
            raise ShardError(f"{uri}: truncated at byte {pos}; rerun the prepare stage")
        pos += 16 + length
        yield data


@dataclass
class _Reads:
    bytes: int = 0
    files: set[str] = field(default_factory=set)


class ShardSource:
    """Prepared shards at a local folder or a ``gs://`` prefix, read file by file, bytes counted.

    Reads only what is asked for: the manifest, the files of the splits opened and read, and
    files named to :meth:`fetch` (cached features). A ``gs://`` file that :func:`shard_dataset`
    reads (once per epoch) is streamed once into a scratch copy (under ``spool_dir``, default a
    temporary folder that :meth:`close` removes); :func:`shard_arrays` streams it without a copy.

    Counted (:attr:`bytes_read`, :meth:`summary`, :meth:`metrics`): every byte read from the
    location, which is what a ``gs://`` location transfers; for a local folder, each file's
    first, checking pass. Not counted: reads of a file already checked (its scratch copy, or a
    local file in place), and files of a local folder read unchecked (``verify=False``).

    Args:
        location: A local folder, or ``gs://BUCKET/PREFIX`` (the shards artifact's URI).
        client: A google-cloud-storage client for ``gs://`` (default: one from the environment;
            ``STORAGE_EMULATOR_HOST`` is honoured).
        spool_dir: Where the scratch copies of ``gs://`` files go (kept by :meth:`close`); default
            a new temporary folder (under /tmp: a pipeline task's scratch volume) that it removes.

    Raises:
        ShardError: A location of another scheme (``minio://``, ``s3://``: not readable here).
    """

    def __init__(self, location: str | Path, *, client=None, spool_dir: str | Path | None = None):
        text = str(location)
        scheme = _SCHEME.match(text)
        if scheme and scheme.group(1) != "gs":
            raise ShardError(f"{text}: shards are read from a local folder or gs://BUCKET/PREFIX, not "
                             f"{scheme.group(1)}://; give the task the artifact's local copy instead")
        self.remote = scheme is not None
        self.location = text.rstrip("/") if self.remote else str(Path(text).expanduser())
        self._client = client
        self._bucket = None
        self._prefix = ""
        self._spool = Path(spool_dir) if spool_dir is not None else None
        self._cleanup = None
        self._lock = threading.Lock()
        self._file_locks: dict[str, threading.Lock] = {}
        self._local: dict[str, tuple[Path, bool]] = {}  # name -> (where to read it now, checked)
        self._reads: dict[str, _Reads] = {}
        self._manifest: dict | None = None
        self._artifact_bytes: int | None = None

    def __str__(self) -> str:
        return self.location

    def __repr__(self) -> str:
        return f"ShardSource({self.location!r})"

    def __enter__(self) -> ShardSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the scratch copies this source made in its own temporary folder."""
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None
            self._spool = None
            if self.remote:
                self._local.clear()

    def uri(self, name: str) -> str:
        """Where file ``name`` (a POSIX path under the location) is: ``gs://...`` or a local path."""
        return f"{self.location}/{name}" if self.remote else str(Path(self.location, *name.split("/")))

    # ------------------------------------------------------------------ reading the location

    def _gcs_bucket(self):
        if self._bucket is None:
            from mushroom.storage import GcsStore, split_gcs_uri

            self._bucket = GcsStore(self.location, self._client).bucket
            self._prefix = split_gcs_uri(self.location)[1]
        return self._bucket

    def _blob(self, name: str):
        bucket = self._gcs_bucket()
        return bucket.get_blob(f"{self._prefix}/{name}" if self._prefix else name)

    def exists(self, name: str) -> bool:
        """Whether file ``name`` is there (nothing is read)."""
        return self._blob(name) is not None if self.remote else Path(self.uri(name)).is_file()

    @contextmanager
    def _stream(self, name: str, checked: bool, missing: str | None = None) -> Iterator[_Reading]:
        """File ``name``'s bytes from the location (one generation of a gs:// object), counted."""
        missing = missing or f"{self.uri(name)}: file missing; rerun the prepare stage"
        if self.remote:
            blob = self._blob(name)
            if blob is None:
                raise ShardError(missing)
            pinned = self._gcs_bucket().blob(blob.name, generation=blob.generation)
            opened, size = pinned.open("rb", chunk_size=_GCS_CHUNK), int(blob.size)
        else:
            try:
                opened = open(self.uri(name), "rb", buffering=_CHUNK)  # noqa: SIM115 (closed below)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise ShardError(missing) from None
            size = os.fstat(opened.fileno()).st_size
        reading = _Reading(opened, size, hashlib.sha256() if checked else None)
        try:
            with opened:
                yield reading
        finally:
            with self._lock:
                reads = self._reads.setdefault(_group(name), _Reads())
                reads.bytes += reading.n
                reads.files.add(name)

    def _check(self, name: str, reading: _Reading, sha256: str) -> None:
        """At the end of a checked pass: the bytes read must be the manifest's."""
        actual = reading.sha.hexdigest()
        if actual != sha256:
            raise _mismatch(self.uri(name), actual, sha256)

    def read_json(self, name: str, missing: str | None = None) -> dict:
        """A JSON file of the location (counted)."""
        with self._stream(name, checked=False, missing=missing) as reading:
            return json.loads(reading.read(reading.size))

    @property
    def manifest(self) -> dict:
        """The shards' manifest, read once."""
        if self._manifest is None:
            self._manifest = self.read_json(
                MANIFEST_NAME, f"{self.location}: no {MANIFEST_NAME}; these are not prepared shards")
        return self._manifest

    def _ready(self, name: str, checked: bool) -> Path | None:
        """Where ``name`` can be read without the location: a checked copy (or, unchecked, the
        local file itself); None: it has to be read from the location first."""
        here = self._local.get(name)
        if here is not None and (here[1] or not checked):
            return here[0]
        return None if checked or self.remote else Path(self.uri(name))

    def _spool_dir(self) -> Path:
        with self._lock:
            if self._spool is None:
                self._spool = Path(tempfile.mkdtemp(prefix="mushroom-shards-"))
                self._cleanup = weakref.finalize(self, shutil.rmtree, self._spool, True)
            return self._spool

    def fetch(self, name: str, sha256: str | None = None) -> Path:
        """A local file of ``name``'s bytes, checked against ``sha256`` (None: unchecked) in the
        pass that reads them: the file itself for a local folder, a scratch copy of a ``gs://``
        one. Each file is read from the location once; safe from several threads.

        Raises:
            ShardError: The file is missing, or its bytes differ from ``sha256`` (names it).
        """
        checked = sha256 is not None
        with self._lock:
            lock = self._file_locks.setdefault(name, threading.Lock())
        with lock:
            ready = self._ready(name, checked)
            if ready is not None:
                return ready
            target = self._spool_dir().joinpath(*name.split("/")) if self.remote else None
            with self._stream(name, checked) as reading:
                if target is None:  # a local file: checked in place
                    while reading.read(_CHUNK):
                        pass
                    if checked:
                        self._check(name, reading, sha256)
                    path = Path(self.uri(name))
                else:  # the scratch copy appears only once its bytes matched
                    with atomic_path(target) as tmp:
                        with open(tmp, "wb") as out:
                            while chunk := reading.read(_CHUNK):
                                out.write(chunk)
                        if checked:
                            self._check(name, reading, sha256)
                    path = target
            self._local[name] = (path, checked)
            return path

    def records(self, name: str, entry: dict, checked: bool = True) -> Iterator[bytes]:
        """The records of shard file ``name`` in order, read in one pass; ``checked``: its SHA-256
        and record count are compared with the manifest ``entry`` at its end (ShardError naming
        it, raised before this generator finishes)."""
        uri = self.uri(name)
        ready = self._ready(name, checked)
        n = 0
        if ready is not None:
            with open(ready, "rb", buffering=_CHUNK) as f:
                for record in _framed(_Reading(f, os.fstat(f.fileno()).st_size, None), uri):
                    n += 1
                    yield record
        else:
            with self._stream(name, checked) as reading:
                for record in _framed(reading, uri):
                    n += 1
                    yield record
                if checked:
                    self._check(name, reading, entry["sha256"])
                    if not self.remote:
                        self._local[name] = (Path(uri), True)
        if n != entry["count"]:
            raise ShardError(f"{uri}: {n} records, the manifest says {entry['count']}; rerun the prepare stage")

    # ------------------------------------------------------------------ what was read

    @property
    def bytes_read(self) -> int:
        """Bytes read from the location so far (see the class)."""
        with self._lock:
            return sum(r.bytes for r in self._reads.values())

    def reads(self) -> dict[str, tuple[int, int]]:
        """Per kind of file (``size=96 train``, ``features/<key>``, ``manifest.json``): bytes read, files."""
        with self._lock:
            return {g: (r.bytes, len(r.files)) for g, r in sorted(self._reads.items())}

    def artifact_bytes(self) -> int:
        """Bytes of every file under the location (one listing, nothing read)."""
        if self._artifact_bytes is None:
            if self.remote:
                bucket = self._gcs_bucket()
                blobs = bucket.client.list_blobs(bucket.name, prefix=f"{self._prefix}/" if self._prefix else None)
                self._artifact_bytes = sum(int(b.size or 0) for b in blobs)
            else:
                self._artifact_bytes = sum(p.stat().st_size for p in Path(self.location).rglob("*") if p.is_file())
        return self._artifact_bytes

    def summary(self) -> str:
        """One line: what was read, of how much, e.g. ``shards: read 17.0 MB of 34.4 MB in the
        artifact (size=96 train: 1 file, 14.0 MB; ...) from gs://...``."""
        parts = [f"{g}: {files} file{'s' if files != 1 else ''}, {_mb(n)}" for g, (n, files) in self.reads().items()]
        return (f"shards: read {_mb(self.bytes_read)} of {_mb(self.artifact_bytes())} in the artifact "
                f"({'; '.join(parts) or 'nothing'}) from {self.location}")

    def log_summary(self, stage: str) -> str:
        """Log :meth:`summary` as ``"<stage>: shards: read ..."`` on the logger ``mushroom.shards.reads``
        (a console can keep it to the full log by that name); return it."""
        line = self.summary()
        logging.getLogger(f"{__name__}.reads").info("%s: %s", stage, line)
        return line

    def metrics(self) -> dict[str, float]:
        """``shards_bytes_read`` and ``shards_artifact_bytes``, for a stage's metrics."""
        return {"shards_bytes_read": float(self.bytes_read), "shards_artifact_bytes": float(self.artifact_bytes())}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 or n == 0 else f"{n / 1e6:.2f} MB"


@dataclass(frozen=True, eq=False)
class ShardSplit:
    """The shard files of one split at one image size, at their :class:`ShardSource`."""

    names: tuple[str, ...]  # the files, POSIX paths under the source's location, in split order
    entries: tuple[dict, ...]  # their manifest entries (bytes, count, sha256)
    count: int
    image_size: int
    num_classes: int
    labels: np.ndarray  # in file order, as :func:`shard_dataset` yields them unshuffled
    photo_sizes: np.ndarray  # (count, 2): each photo's stored (width, height), in the same order
    source: ShardSource
    verify: Verify = True  # how its files are checked: True (all, when opened), "on_read", False

    def __len__(self) -> int:
        return self.count

    @property
    def files(self) -> list[str]:
        """Where the files are (local paths or ``gs://`` URIs)."""
        return [self.source.uri(n) for n in self.names]

    @property
    def checked(self) -> bool:
        return self.verify is not False


def open_split(shards: str | Path | ShardSource, split: str, image_size: int, *,
               splits_dir: str | Path | None = None, verify: Verify = True) -> ShardSplit:
    """The shard files of ``split`` at ``image_size``, checked against the manifest.

    Args:
        shards: A :class:`ShardSource` (a task opens one and passes it to every call, so its
            reads are counted together and its scratch copies shared), or a local folder or
            ``gs://`` URI (a source of its own).
        splits_dir: The split table the stage was given: the shards must hold its ``split``
            photos, in its order (rows are matched by species and file). None: not checked.
        verify: Each file's SHA-256: True, read and checked now (a ``gs://`` file into its
            scratch copy), before any work; ``"on_read"``, checked in the pass that first reads
            it (nothing but the manifest is read here); False, not checked.

    Raises:
        ShardError: No manifest, another schema, no shards for that size or split, shards
            prepared from another split table, or (``verify=True``) a file missing or failing
            its checksum; the message names it.
    """
    if verify not in (True, False, "on_read"):
        raise ValueError(f"verify must be True, False or 'on_read', not {verify!r}")
    source = shards if isinstance(shards, ShardSource) else ShardSource(shards)
    manifest = source.manifest
    where = source.location
    if check_schema_version(manifest, SCHEMA_VERSION, source.uri(MANIFEST_NAME)) != SCHEMA_VERSION:
        raise ShardError(f"{source.uri(MANIFEST_NAME)}: shards of schema version {manifest['schema_version']} (no "
                         f"photo sizes or split checksums; this code reads {SCHEMA_VERSION}); rerun the prepare stage")
    if image_size not in manifest["sizes"]:
        raise ShardError(f"{where}: no shards for image size {image_size} (prepared: {manifest['sizes']}); "
                         "the prepare stage takes every model's image_size")
    if split not in manifest["splits"]:
        raise ShardError(f"{where}: no {split!r} split in the shards (have: {sorted(manifest['splits'])})")
    info = manifest["splits"][split]
    if splits_dir is not None:
        rows = [r for r in read_splits(splits_dir) if r.split == split]
        if rows_digest(rows) != info["rows_sha256"]:
            raise ShardError(f"{where}: the {split!r} shards ({info['count']} photos) were prepared from "
                             f"another split table than {splits_dir} ({len(rows)} {split} photos, other files or "
                             "order); rerun the prepare stage on this split table")
    entries = sorted((name, e) for name, e in manifest["files"].items()
                     if e["size"] == image_size and e["split"] == split)
    if verify is True:
        for name, entry in entries:
            source.fetch(name, entry["sha256"])
    return ShardSplit(names=tuple(n for n, _ in entries), entries=tuple(e for _, e in entries), count=info["count"],
                      image_size=image_size, num_classes=manifest["num_classes"],
                      labels=np.asarray(info["labels"], dtype=np.int32),
                      photo_sizes=np.asarray(info["photo_sizes"], dtype=np.int64).reshape(-1, 2),
                      source=source, verify=verify)


def _parse(image_size: int):
    import tensorflow as tf

    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(records):
        parsed = tf.io.parse_example(records, spec)
        pixels = tf.io.decode_raw(parsed["image"], tf.uint8)
        pixels = tf.reshape(pixels, [-1, image_size, image_size, 3])
        return pixels, tf.cast(parsed["label"], tf.int32)

    return parse


def shard_dataset(split: ShardSplit, batch_size: int, training: bool, seed: int = 42, one_hot: bool = True,
                  augment=None):
    """A batched, prefetched ``tf.data.Dataset`` of ``(float32 pixels 0-255, label)`` from shards.

    Training interleaves the files in a seeded order that changes each epoch, shuffles through a
    buffer capped at :data:`SHUFFLE_BUFFER_BYTES`, and applies ``augment`` (a Keras layer) per
    batch. Otherwise the order is the split's. Nothing is cached in memory: memory does not grow
    with the dataset.

    Files not yet local and checked (a ``gs://`` source, ``verify="on_read"``) are made so
    (:meth:`ShardSource.fetch`) when the dataset first reaches each of them, before TensorFlow
    reads a record of it: building the dataset reads nothing. A file failing its checksum stops
    the iteration with a TensorFlow error carrying the :class:`ShardError` message.
    """
    import tensorflow as tf

    source = split.source
    ready = [source._ready(n, split.checked) for n in split.names]
    if all(p is not None for p in ready):  # every file checked (or unchecked and local): read in place
        files, reader = [str(p) for p in ready], tf.data.TFRecordDataset
    else:
        sums = {n: e["sha256"] if split.checked else None for n, e in zip(split.names, split.entries, strict=True)}

        def local(name: bytes) -> bytes:
            name = name.decode()
            return str(source.fetch(name, sums[name])).encode()

        def reader(name):
            return tf.data.TFRecordDataset(tf.reshape(tf.numpy_function(local, [name], tf.string), []))

        files = list(split.names)
    if training:
        ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(reader, cycle_length=min(4, len(files)),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        example_bytes = split.image_size * split.image_size * 3
        buffer = max(64, min(split.count, SHUFFLE_BUFFER_BYTES // example_bytes))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    elif reader is tf.data.TFRecordDataset:
        ds = tf.data.TFRecordDataset(files)
    else:
        ds = tf.data.Dataset.from_tensor_slices(files).flat_map(reader)
    ds = ds.batch(batch_size).map(_parse(split.image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    if one_hot:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, split.num_classes)))
    return ds.prefetch(tf.data.AUTOTUNE)


def shard_arrays(split: ShardSplit, limit: int | None = None, indices=None,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The split's pixels (``uint8``, ``(n, size, size, 3)``) and labels, in split order.

    One sequential pass over the files that hold the rows asked for (a file without any is not
    read); with ``indices`` only those rows are parsed and kept (memory: the rows asked for,
    whatever the split's size). Each file is read whole, so that a checked split
    (``verify`` True or ``"on_read"``) returns only once every file read matched its checksum:
    a damaged file raises :class:`ShardError` naming it, and none of its pixels are returned.

    Args:
        split: An opened split.
        limit: At most this many photos (the first ones).
        indices: Only these rows (positions in the split), returned in the order given.
        out: Fill this array (e.g. a slice of a larger one) instead of a new one.
    """
    import tensorflow as tf

    order = None
    if indices is not None:
        order = np.asarray(indices, dtype=np.int64).reshape(-1)
        if order.size and (order.min() < 0 or order.max() >= split.count):
            raise IndexError(f"rows {order.min()}..{order.max()} outside the split's {split.count} photos")
        rows = np.unique(order)
        keep = np.zeros(split.count, dtype=bool)
        keep[rows] = True
        n = len(rows)
        if np.array_equal(rows, order):
            order = None
        else:
            order = np.searchsorted(rows, order)
    else:
        n = split.count if limit is None else min(limit, split.count)
        keep = np.arange(split.count) < n
    shape = (n if order is None else len(order), split.image_size, split.image_size, 3)
    if out is not None and (out.shape != shape or out.dtype != np.uint8):
        raise ValueError(f"out is {out.dtype} {out.shape}, not uint8 {shape}")
    images = np.empty((n, *shape[1:]), dtype=np.uint8) if out is None or order is not None else out
    labels = np.empty(n, dtype=np.int32)
    parse = _parse(split.image_size)
    pending: list[bytes] = []
    filled = 0

    def flush() -> None:
        nonlocal filled
        if filled + len(pending) > n:
            raise ShardError(f"{split.source.location}: more photos in the shard files than the manifest says")
        pixels, y = parse(tf.constant(pending))
        images[filled:filled + len(pending)] = pixels.numpy()
        labels[filled:filled + len(pending)] = y.numpy()
        filled += len(pending)
        pending.clear()

    start = 0
    for name, entry in zip(split.names, split.entries, strict=True):
        wanted = keep[start:start + entry["count"]]
        start += entry["count"]
        if not wanted.any():
            continue
        for row, record in enumerate(split.source.records(name, entry, split.checked)):
            if row < len(wanted) and wanted[row]:
                pending.append(record)
                if len(pending) == _PARSE_BATCH:
                    flush()
    if pending:
        flush()
    if filled != n:
        raise ShardError(f"{split.source.location}: {filled} photos in the shard files, the manifest says {n}")
    if order is not None:
        labels = labels[order]
        if out is None:
            images = images[order]
        else:
            np.take(images, order, axis=0, out=out)
            images = out
    return images, labels
