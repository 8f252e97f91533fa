"""Downloading and validating iNaturalist photos.

Downloads run on a pool of threads sharing one :class:`requests.Session` whose adapter retries
with urllib3's :class:`~urllib3.util.Retry` (exponential backoff, ``Retry-After`` honoured on
429/503). iNaturalist's media guidance is about volume (under 5 GB an hour), not request count,
and pyinaturalist only limits requests, so :class:`MediaBudget` meters the bytes.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import requests
from PIL import Image, UnidentifiedImageError
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ReadTimeoutError
from urllib3.util import Retry

from mushroom.config import INaturalistSourceConfig
from mushroom.preprocess import to_rgb

#: Statuses worth another try; anything else (404, 403, ...) is final.
RETRY_STATUSES = (429, 500, 502, 503, 504)


def make_retry(config: INaturalistSourceConfig, raise_on_status: bool = True) -> Retry:
    """urllib3 retries for GETs: 429 (honouring Retry-After) and 5xx, with the config's exponential backoff."""
    return Retry(
        total=config.max_retries,
        backoff_factor=config.backoff_factor,
        backoff_max=config.backoff_max,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=raise_on_status,
    )


#: Failure reasons a later run tries again (with ``http_429`` and ``http_5xx``); others are final.
TRANSIENT_REASONS = frozenset({"timeout", "connection_error"})
CONNECT_TIMEOUT_S = 5.0
JPEG_QUALITY = 95


@dataclass(frozen=True)
class PhotoCandidate:
    """One photo offered by the API for a taxon, in query order."""

    taxon_id: int
    observation_id: str
    photo_id: str
    url: str
    license: str | None
    attribution: str
    observed_on: str | None


@dataclass(frozen=True)
class Download:
    """What fetching one candidate gave: validated RGB JPEG bytes, or a failure reason."""

    candidate: PhotoCandidate
    data: bytes = b""
    sha256: str = ""
    width: int = 0
    height: int = 0
    downloaded_bytes: int = 0
    reason: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def permanent(self) -> bool:
        return not is_transient(self.reason)


def is_transient(reason: str) -> bool:
    """Whether a failure reason may go away on another try (a later run retries those)."""
    if reason.startswith("http_"):
        return int(reason.removeprefix("http_")) in RETRY_STATUSES
    return reason in TRANSIENT_REASONS


class PhotoRejected(Exception):
    """A downloaded file is not a usable photo."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MediaBudget:
    """Caps the bytes downloaded per rolling hour, shared by all download threads.

    Args:
        bytes_per_hour: The cap; a download starts only while the last hour stayed under it.
        clock: Monotonic clock (injectable for tests).
        sleep: Sleep function (injectable for tests).
    """

    WINDOW_S = 3600.0

    def __init__(
        self,
        bytes_per_hour: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.bytes_per_hour = bytes_per_hour
        self._clock = clock
        self._sleep = sleep
        self._entries: deque[tuple[float, int]] = deque()
        self._total = 0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until the last hour's volume is under the cap."""
        while True:
            with self._lock:
                now = self._clock()
                while self._entries and self._entries[0][0] <= now - self.WINDOW_S:
                    self._total -= self._entries.popleft()[1]
                if self._total < self.bytes_per_hour:
                    return
                delay = self._entries[0][0] + self.WINDOW_S - now
            self._sleep(max(delay, 0.05))

    def record(self, nbytes: int) -> None:
        with self._lock:
            self._entries.append((self._clock(), nbytes))
            self._total += nbytes


class PhotoDownloader:
    """Fetch and validate photos; safe to call from many threads.

    Args:
        config: The source settings used: ``concurrency`` (threads that will call :meth:`fetch`;
            sizes the connection pool), ``timeout_s`` (read timeout per request), ``max_retries``
            (per photo: status, connection, timeout and body errors together), ``backoff_factor``
            (sleeps ``factor * 2**(retry - 1)`` seconds), ``backoff_max``, ``min_photo_side``
            (smallest accepted width or height) and ``media_bytes_per_hour`` (:class:`MediaBudget`).
        user_agent: The User-Agent header iNaturalist asks clients to set.
    """

    def __init__(self, config: INaturalistSourceConfig, user_agent: str):
        self.retry = make_retry(config, raise_on_status=False)
        self.timeout = (min(CONNECT_TIMEOUT_S, config.timeout_s), config.timeout_s)
        self.min_side = config.min_photo_side
        self.budget = MediaBudget(config.media_bytes_per_hour)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=config.concurrency, max_retries=self.retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0

    def close(self) -> None:
        self.session.close()

    def fetch(self, candidate: PhotoCandidate, url: str) -> Download:
        """Download ``url`` and validate it as ``candidate``'s photo; a faulty photo gives a failure."""
        try:
            data = self._get(url)
        except _HttpStatus as err:
            return Download(candidate, reason=f"http_{err.status}", detail=f"HTTP {err.status} from {url}")
        except (requests.RequestException, MaxRetryError) as err:
            return Download(candidate, reason=_error_reason(err), detail=_short(err))
        try:
            jpeg, width, height = validate_photo(data, self.min_side)
        except PhotoRejected as err:
            return Download(candidate, downloaded_bytes=len(data), reason=err.reason, detail=err.detail)
        sha = hashlib.sha256(data).hexdigest()
        return Download(candidate, jpeg, sha, width, height, len(data))

    def _get(self, url: str) -> bytes:
        """GET with the adapter's retries, plus retries for bodies cut off mid-transfer."""
        retry = self.retry
        while True:
            self.budget.wait()
            try:
                response = self.session.get(url, timeout=self.timeout)
            except requests.exceptions.ChunkedEncodingError as err:
                retry = retry.increment("GET", url, error=err)  # raises MaxRetryError when spent
                retry.sleep()
                continue
            with self._lock:
                self.requests += 1
                self.bytes += len(response.content)
            self.budget.record(len(response.content))
            if response.status_code != 200:
                raise _HttpStatus(response.status_code)
            return response.content


class _HttpStatus(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


def _error_reason(err: Exception) -> str:
    if isinstance(err, requests.Timeout):
        return "timeout"
    reason = err.args[0] if err.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    if isinstance(err, MaxRetryError):
        reason = err.reason
    return "timeout" if isinstance(reason, (ReadTimeoutError, ConnectTimeoutError)) else "connection_error"


def _short(err: Exception, limit: int = 200) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_photo(data: bytes, min_side: int) -> tuple[bytes, int, int]:
    """Check that ``data`` decodes as a photo of at least ``min_side`` pixels a side.

    Args:
        data: The downloaded bytes.
        min_side: Smallest accepted width or height.

    Returns:
        ``(jpeg, width, height)``: the original bytes when they already are an RGB JPEG,
        otherwise the image converted to RGB (alpha composited onto white) and re-encoded.

    Raises:
        PhotoRejected: With reason ``not_an_image``, ``corrupt_image`` or ``too_small``.
    """
    image = _decode(data)
    width, height = image.size
    if min(width, height) < min_side:
        raise PhotoRejected("too_small", f"{width}x{height} is under {min_side} px a side")
    if image.format == "JPEG" and image.mode == "RGB":
        return data, width, height
    buf = io.BytesIO()
    to_rgb(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), width, height


def _decode(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        head = data[:40].decode("ascii", "replace").strip()
        raise PhotoRejected("not_an_image", f"{len(data)} bytes starting {head!r}") from None
    try:
        image.load()  # decodes every pixel: a truncated file fails here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise PhotoRejected("corrupt_image", _short(err)) from None
    return image
