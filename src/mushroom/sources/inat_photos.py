"""Downloading and validating iNaturalist photos.

Downloads run on a pool of threads sharing one :class:`requests.Session`. Every attempt, retries
included, is a request of its own (:func:`~mushroom.sources.inat_http.send_with_retries`:
backoff with jitter from the first retry, ``Retry-After`` honoured on 429/503), waits for the
:class:`MediaBudget` and is counted. iNaturalist's media guidance is about volume (under 5 GB an
hour), not request count, and pyinaturalist only limits API requests, so :class:`MediaBudget`
meters the bytes. A host that refuses connections after retries stops the run
(:class:`~mushroom.sources.inat_http.NetworkDown`) instead of failing every photo.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from PIL import Image, UnidentifiedImageError
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ReadTimeoutError

from mushroom.preprocess import to_rgb
from mushroom.sources.inat_http import (
    RETRY_STATUSES,
    NetworkDown,
    connection_failure,
    make_retry,
    mount_counting_adapter,
    send_with_retries,
)
from mushroom.sources.settings import INaturalistSourceConfig

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
            and ``backoff_max`` (:class:`~mushroom.sources.inat_http.Backoff`), ``min_photo_side``
            (smallest accepted width or height) and ``media_bytes_per_hour`` (:class:`MediaBudget`).
        user_agent: The User-Agent header iNaturalist asks clients to set.
        stop: When set, downloads waiting to retry give up (the run is stopping).

    Attributes:
        requests: Requests sent so far, retries included.
        bytes: Bytes received so far, retries included.
    """

    def __init__(self, config: INaturalistSourceConfig, user_agent: str, stop: threading.Event | None = None):
        self.retry = make_retry(config)
        self.timeout = (min(CONNECT_TIMEOUT_S, config.timeout_s), config.timeout_s)
        self.min_side = config.min_photo_side
        self.budget = MediaBudget(config.media_bytes_per_hour)
        self.stop = stop
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent
        self._adapter = mount_counting_adapter(self.session, pool_connections=4, pool_maxsize=config.concurrency)
        self._lock = threading.Lock()
        self.bytes = 0

    @property
    def requests(self) -> int:
        return self._adapter.sent

    def close(self) -> None:
        self.session.close()

    def fetch(self, candidate: PhotoCandidate, url: str) -> Download:
        """Download ``url`` and validate it as ``candidate``'s photo; a faulty photo gives a failure.

        Raises:
            NetworkDown: The photo host refused connections (or could not be resolved) after retries.
        """
        try:
            response = send_with_retries(self._send(url), self.retry, url, self.stop)
        except MaxRetryError as err:
            refused = connection_failure(err)
            if refused:
                host = urlsplit(url)._replace(path="", query="", fragment="").geturl()
                raise NetworkDown(
                    f"could not connect to {host} for photo {candidate.photo_id} after {self.retry.total} retries "
                    f"({refused})"
                ) from None
            return Download(candidate, reason=_error_reason(err.reason), detail=_short(err.reason))
        if response.status_code != 200:
            status = response.status_code
            return Download(candidate, reason=f"http_{status}", detail=f"HTTP {status} from {url}")
        data = response.content
        try:
            jpeg, width, height = validate_photo(data, self.min_side)
        except PhotoRejected as err:
            return Download(candidate, downloaded_bytes=len(data), reason=err.reason, detail=err.detail)
        sha = hashlib.sha256(data).hexdigest()
        return Download(candidate, jpeg, sha, width, height, len(data))

    def _send(self, url: str) -> Callable[[], requests.Response]:
        def send() -> requests.Response:
            self.budget.wait()
            response = self.session.get(url, timeout=self.timeout)  # reads the whole body
            size = len(response.content)
            self.budget.record(size)
            with self._lock:
                self.bytes += size
            return response

        return send


def _error_reason(err: BaseException | None) -> str:
    timeouts = (requests.Timeout, ReadTimeoutError, ConnectTimeoutError)
    if isinstance(err, timeouts) or (err is not None and isinstance(getattr(err, "reason", None), timeouts)):
        return "timeout"
    return "connection_error"


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
