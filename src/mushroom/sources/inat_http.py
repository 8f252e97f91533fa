"""HTTP retries for iNaturalist acquisition: every attempt is a request of its own.

urllib3 retries inside one ``HTTPAdapter.send``, below anything a session wraps around it, so a
rate limiter on the session would let a storm of retries through at wire speed and request
counters would see one request. Here the adapters never retry (:class:`CountingAdapter` counts
what goes on the wire) and :func:`send_with_retries` repeats the whole ``send``: each attempt
passes the session's rate limiter and media budget again. The bookkeeping is urllib3's
:class:`~urllib3.util.Retry` (``max_retries`` in all, statuses to retry, ``Retry-After``), with
:class:`Backoff` waiting from the first retry on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from itertools import takewhile

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError
from urllib3.util import Retry

from mushroom.sources.inat_journal import AcquisitionInterrupted
from mushroom.sources.settings import INaturalistSourceConfig

log = logging.getLogger(__name__)

#: Statuses worth another try; anything else (404, 403, ...) is final.
RETRY_STATUSES = (429, 500, 502, 503, 504)
#: Errors worth another try: refused or reset connections, timeouts, bodies cut off, broken JSON.
RETRY_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    requests.exceptions.JSONDecodeError,
)


class Backoff(Retry):
    """urllib3's :class:`~urllib3.util.Retry`, waiting before every retry, the first included.

    urllib3 does not wait before the first retry (a 500 is asked again a few milliseconds
    later). Here retry ``n`` of a run of consecutive errors waits ``backoff_factor * 2**(n - 1)``
    seconds, capped at ``backoff_max``, of which the upper half is random ("equal jitter": at
    least half the nominal wait, so clients that failed together do not retry together).
    A ``Retry-After`` header still takes precedence (:meth:`delay`).
    """

    def get_backoff_time(self) -> float:
        errors = len(list(takewhile(lambda h: h.redirect_location is None, reversed(self.history))))
        if errors == 0 or self.backoff_factor <= 0:
            return 0.0
        nominal = min(self.backoff_max, self.backoff_factor * 2 ** (errors - 1))
        return nominal / 2 + random.uniform(0, nominal / 2)

    def delay(self, response: requests.Response | None = None) -> float:
        """Seconds to wait before the next attempt: ``Retry-After`` if the answer has one, else the backoff."""
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after is not None and self.respect_retry_after_header:
            seconds = self.parse_retry_after(retry_after)
            if seconds > 0:
                return seconds
        return self.get_backoff_time()


def make_retry(config: INaturalistSourceConfig) -> Backoff:
    """Retries for GETs: ``max_retries`` in all, 429 (honouring Retry-After) and 5xx, :class:`Backoff`."""
    return Backoff(
        total=config.max_retries,
        backoff_factor=config.backoff_factor,
        backoff_max=config.backoff_max,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )


class CountingAdapter(HTTPAdapter):
    """An adapter that never retries and counts the requests it sends (thread-safe)."""

    def __init__(self, **kwargs):
        super().__init__(max_retries=0, **kwargs)
        self._lock = threading.Lock()
        self.sent = 0

    def send(self, request, *args, **kwargs):
        with self._lock:
            self.sent += 1
        return super().send(request, *args, **kwargs)


def mount_counting_adapter(session: requests.Session, **kwargs) -> CountingAdapter:
    """Mount one :class:`CountingAdapter` for http:// and https:// on ``session``; return it."""
    adapter = CountingAdapter(**kwargs)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return adapter


class Stopped(Exception):
    """Retrying was abandoned because the acquisition is stopping."""


def send_with_retries(
    send: Callable[[], requests.Response],
    retry: Backoff,
    url: str,
    stop: threading.Event | None = None,
) -> requests.Response:
    """Call ``send()`` until an answer needs no retry, or retries are spent.

    Args:
        send: Sends one request and returns the response; it raises
            :data:`RETRY_ERRORS` for failures worth another try.
        retry: The retry budget and backoff (:func:`make_retry`).
        url: For messages.
        stop: When set, waiting stops and :class:`Stopped` is raised.

    Returns:
        The last response: one that needs no retry, or the last one when retries are spent.

    Raises:
        MaxRetryError: An error was still raised when retries were spent; ``reason`` is the error.
        Stopped: ``stop`` was set.
    """
    attempt = 0
    while True:
        try:
            response = send()
        except RETRY_ERRORS as err:
            retry = retry.increment("GET", url, error=err)  # MaxRetryError when spent
            wait = retry.delay()
            log.debug("GET %s failed (%s); retry %d in %.2fs", url, type(err).__name__, attempt + 1, wait)
        else:
            has_retry_after = "Retry-After" in response.headers
            if not retry.is_retry("GET", response.status_code, has_retry_after):
                return response
            try:
                retry = retry.increment("GET", url, response=response.raw)
            except MaxRetryError:
                return response
            wait = retry.delay(response)
            log.debug("GET %s gave HTTP %d; retry %d in %.2fs", url, response.status_code, attempt + 1, wait)
            response.close()
        attempt += 1
        if stop is None:
            time.sleep(wait)
        elif stop.wait(wait) or stop.is_set():
            raise Stopped(url)


def connection_failure(err: BaseException) -> str | None:
    """Why no connection could be made, if ``err`` (or what caused it) is a refused or unresolvable one.

    Returns:
        E.g. ``"Failed to establish a new connection: [Errno 111] Connection refused"``, or None
        when the connection was made and failed later (a timeout, a reset, a cut body).
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, NewConnectionError):  # refused, unreachable, or the name did not resolve
            return str(e).partition("): ")[2] or str(e)
        if isinstance(e, ConnectionRefusedError):
            return str(e)
        todo.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        todo.extend(a for a in e.args if isinstance(a, BaseException))
    return None


class NetworkDown(AcquisitionInterrupted):
    """A host could not be connected to at all, after retries."""
