"""Where ``identify``'s bundle is: a bundle folder, a published run, a publish destination's
``latest`` run, or a ``gs://`` prefix of any of them, cached locally.

A local bundle folder is used as it is: nothing of the publish layout or of object storage is
imported for it, so a one-photo call starts fast. A ``gs://`` publish destination's ``latest``
is followed on every call (one small object; only a new run's bundle is downloaded), and offline
the bundle cached last answers, with a notice.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mushroom.bundle import METADATA, BundleError
from mushroom.fileio import write_text_atomic

log = logging.getLogger("mushroom.identify")  # its notices are identify's

GCS_SCHEME = "gs://"  # as mushroom.storage.is_gcs_uri tells one (without importing object storage)
LATEST_TIMEOUT_S = 10.0  # following a gs:// latest gives up (for the cache) after this long


def default_cache_dir() -> Path:
    """Where ``gs://`` bundles are cached: ``$XDG_CACHE_HOME/quantized-mushroom/bundles``."""
    from mushroom.storage import user_cache_dir

    return user_cache_dir("bundles")


def _bundle_folder(location: Path) -> Path:
    """A bundle folder itself, a published run's bundle, or the bundle of a destination's ``latest`` run."""
    if (location / METADATA).is_file():  # a bundle folder: nothing of the publish layout to read
        return location
    from mushroom.publish import locate_published_bundle

    try:
        return Path(locate_published_bundle(str(location)))
    except (OSError, ValueError) as err:
        raise BundleError(f"{location}: {err}") from None


def _cached_bundle(target: Path) -> Path | None:
    """The cached bundle of a ``gs://`` location (its cache folder ``target``), if there is one."""
    from mushroom.publish import BUNDLE_FOLDER, LATEST_NAME, locate_published_bundle

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
    from mushroom.publish import BUNDLE_FOLDER, LATEST_NAME, read_latest
    from mushroom.storage import cache_path, download_atomically, join_uri, open_store

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
                "pip install '.[storage]' in a quantized-mushroom checkout, or copy the bundle locally")
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
    if not text.startswith(GCS_SCHEME):
        return _bundle_folder(Path(text).expanduser())
    from mushroom.publish import LATEST_NAME
    from mushroom.storage import cache_path

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
