"""Querying iNaturalist observations through pyinaturalist.

The :class:`ObservationsClient` uses pyinaturalist's :class:`~pyinaturalist.ClientSession` for its
rate limiting (pyrate-limiter, kept in SQLite so a restarted process still honours it) and
User-Agent, and pyinaturalist's ``id_above`` paginator (``order_by=id&order=asc``; iNaturalist
refuses ``page * per_page`` beyond 10,000, ``id_above`` has no such ceiling), page by page so
that each page is journaled as it arrives and a rerun continues from the last cursor.
pyinaturalist's ``get_observations`` is bound to the public API host, so requests go through the
session with ``config.api_url`` instead. Retries happen above the rate limiter
(:mod:`mushroom.sources.inat_http`): every attempt waits for its turn and is counted. The
journal replays pages, so requests-cache is switched off.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from pyinaturalist import ClientSession, Photo
from pyinaturalist.paginator import JsonIDRangePaginator
from pyrate_limiter import Limiter, RequestRate
from pyrate_limiter.sqlite_bucket import SQLiteBucket
from requests_ratelimiter import BucketFullException
from urllib3.exceptions import MaxRetryError
from urllib3.util import Retry

from mushroom.sources.inat_http import (
    NetworkDown,
    connection_failure,
    make_retry,
    mount_counting_adapter,
    send_with_retries,
)
from mushroom.sources.inat_journal import AcquisitionInterrupted
from mushroom.sources.inat_photos import PhotoCandidate
from mushroom.sources.settings import INaturalistSourceConfig

log = logging.getLogger(__name__)

#: The most results iNaturalist returns per page.
PER_PAGE = 200
RATELIMIT_NAME = "ratelimit.sqlite"
#: The unit of ``requests_per_minute`` and ``requests_per_day`` in seconds (tests shorten it to
#: check the limits' windows in seconds instead of minutes).
MINUTE_S = 60.0
#: Requests that may go out back to back; after that they are spread over the minute.
BURST = 5
#: Added to the minute and day windows: a request reaches the server up to this much later
#: than it took its turn, and the server's window must still see at most the limit.
LATENCY_HEADROOM_S = 1.0


class INaturalistAPIError(AcquisitionInterrupted):
    """The API could not be queried (after retries, or the request budget is spent)."""


@dataclass(frozen=True)
class ObservationPage:
    """One page of a taxon's query, reduced to what acquisition needs (and journaled as such).

    ``observations`` are ``{"id", "observed_on", "photos": [{"id", "url", "license",
    "attribution"}]}`` dicts; ``next_id_above`` is the cursor for the next page.
    """

    id_above: int
    next_id_above: int
    done: bool
    observations: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "id_above": self.id_above,
            "next_id_above": self.next_id_above,
            "done": self.done,
            "observations": self.observations,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ObservationPage:
        return cls(data["id_above"], data["next_id_above"], data["done"], data["observations"])


def api_rates(config: INaturalistSourceConfig) -> list[RequestRate]:
    """The API request rates: a burst window, ``requests_per_minute`` and ``requests_per_day``.

    pyrate-limiter wants each window longer and larger than the one before. The burst window
    lets ``BURST`` requests (fewer when the minute allows fewer) go out back to back, then one
    every ``60 / requests_per_minute`` seconds; the minute and day windows carry
    :data:`LATENCY_HEADROOM_S`. Any ``requests_per_minute`` from 1 below ``requests_per_day`` works.
    """
    per_minute = min(config.requests_per_minute, config.requests_per_day - 1)
    rates = []
    burst = min(BURST, per_minute - 1)
    if burst >= 1:
        rates.append(RequestRate(burst, burst * MINUTE_S / per_minute))
    rates.append(RequestRate(per_minute, MINUTE_S + LATENCY_HEADROOM_S))
    rates.append(RequestRate(config.requests_per_day, 24 * 60 * MINUTE_S + LATENCY_HEADROOM_S))
    return rates


class _ObservationPaginator(JsonIDRangePaginator):
    """pyinaturalist's ``id_above`` paginator, one page at a time and from any cursor.

    The query is done when it has returned as many observations as its first page's
    ``total_results`` (iNaturalist counts what lies above ``id_above``) or a page is empty; a
    page shorter than ``per_page`` proves nothing, since a server may serve fewer than asked.
    """

    def next_page(self) -> list[dict[str, Any]]:
        """The next page's results as JSON (pyinaturalist's JSON paginators only iterate)."""
        return self._next_page()

    def _check_exhausted(self, page_results: list | None = None) -> bool:
        self.exhausted = bool(self.exhausted or not page_results or self.results_fetched >= (self.total_results or 0))
        return self.exhausted

    def _estimate(self) -> None:
        # pyinaturalist logs a time estimate at its own rate and warns about big queries; this
        # query is paged on purpose and usually stops early at photos_per_species.
        log.debug("%s: %s observations to page through", self, self.total_results)


class ObservationsClient:
    """Pages of a taxon's observations from ``config.api_url``, rate-limited and retried.

    Args:
        state_dir: Folder for the rate-limit database (kept between runs).
        config: The source settings used: ``api_url``, the query (``place_id``,
            ``quality_grade``, ``licenses``), ``user_agent`` (appended to pyinaturalist's),
            ``requests_per_minute`` and ``requests_per_day`` (:func:`api_rates`), ``timeout_s``
            (read timeout per request), ``max_retries``, ``backoff_factor`` and ``backoff_max``
            (:func:`~mushroom.sources.inat_http.make_retry`).

    Attributes:
        requests: Requests sent so far, retries included.
    """

    def __init__(self, state_dir: Path, config: INaturalistSourceConfig):
        state_dir.mkdir(parents=True, exist_ok=True)
        ratelimit_path = str(state_dir / RATELIMIT_NAME)
        limiter = Limiter(
            *api_rates(config),
            bucket_class=SQLiteBucket,
            bucket_kwargs={"path": ratelimit_path},
            time_function=time.time,  # persisted between processes: wall-clock time
        )
        self.config = config
        self.url = f"{config.api_url.rstrip('/')}/observations"
        self.session = ClientSession(
            cache_file=str(state_dir / "api_cache"),
            use_memory=True,
            ratelimit_path=ratelimit_path,
            limiter=limiter,
            timeout=config.timeout_s,
            user_agent=config.user_agent,
        )
        self.session.settings.disabled = True  # the journal keeps the pages
        quiet_request_log()
        # Wait for the minute's turn; a longer wait means the day's budget is spent.
        self.session.max_delay = 2 * MINUTE_S + LATENCY_HEADROOM_S
        self.session.retries = Retry(total=False)  # broken JSON is raised, and retried here
        self._adapter = mount_counting_adapter(self.session)
        self.retry = make_retry(config)

    @property
    def requests(self) -> int:
        return self._adapter.sent

    @property
    def user_agent(self) -> str:
        return self.session.headers["User-Agent"]

    def close(self) -> None:
        self.session.close()

    def pages(self, taxon_id: int, id_above: int = 0) -> Iterator[ObservationPage]:
        """The taxon's pages after the cursor ``id_above`` (0: from the start), each fetched when asked for.

        Raises:
            INaturalistAPIError: When retries are spent, the daily request budget is used up,
                or the API cannot be reached.
        """
        paginator = _ObservationPaginator(
            self._get_observations, per_page=PER_PAGE, order="asc", **query_params(self.config, taxon_id)
        )
        paginator.last_id = id_above or None
        while not paginator.exhausted:
            cursor = paginator.last_id or 0
            results = paginator.next_page()
            next_id = int(results[-1]["id"]) if results else cursor
            yield ObservationPage(cursor, next_id, paginator.exhausted, results)

    def _get_observations(self, **params: Any) -> dict[str, Any]:
        """The paginator's request function: one page, checked and reduced to what acquisition keeps."""
        taxon_id, id_above = params["taxon_id"], int(params.get("id_above") or 0)
        where = f"iNaturalist query for taxon {taxon_id} (id_above={id_above}) at {self.url}"
        try:
            response = send_with_retries(
                lambda: self.session.request("GET", self.url, raise_for_status=False, **params),
                self.retry,
                self.url,
            )
            body = response.json() if response.status_code == 200 else None
        except BucketFullException as err:
            raise INaturalistAPIError(
                f"the iNaturalist request budget (requests_per_day={self.config.requests_per_day}) is used up: "
                f"{err}; wait a day"
            ) from None
        except MaxRetryError as err:
            retries = self.config.max_retries
            refused = connection_failure(err)
            if refused:
                raise NetworkDown(f"could not connect to {self.url} after {retries} retries ({refused})") from None
            raise INaturalistAPIError(f"{where} failed after {retries} retries: {_short(err.reason)}") from None
        except (requests.RequestException, ValueError) as err:
            raise INaturalistAPIError(f"{where} failed: {_short(err)}") from None
        except sqlite3.Error as err:
            raise AcquisitionInterrupted(
                f"could not update the rate-limit state {RATELIMIT_NAME} of {where}: {err}"
            ) from None
        if body is None:
            status = response.status_code
            retried = f" after {self.config.max_retries} retries" if status in self.retry.status_forcelist else ""
            raise INaturalistAPIError(f"{where} answered HTTP {status}{retried}")
        return _checked_page(body, taxon_id, id_above)


def quiet_request_log() -> None:
    """Keep pyinaturalist from logging every request in full at INFO (unless its level was set)."""
    pyinat_log = logging.getLogger("pyinaturalist")
    if pyinat_log.level == logging.NOTSET:
        pyinat_log.setLevel(logging.WARNING)


def query_params(config: INaturalistSourceConfig, taxon_id: int) -> dict[str, Any]:
    """The ``/observations`` filters for a taxon (the paginator adds ``per_page``, ``order`` and ``id_above``)."""
    return {
        "taxon_id": taxon_id,
        "place_id": config.place_id,
        "quality_grade": config.quality_grade,
        "photos": True,
        "photo_license": [code.upper() for code in config.licenses],
    }


def _checked_page(body: dict[str, Any], taxon_id: int, id_above: int) -> dict[str, Any]:
    results = body.get("results") or []
    ids = [int(obs["id"]) for obs in results]
    if any(i <= id_above for i in ids) or ids != sorted(ids):
        raise INaturalistAPIError(
            f"iNaturalist returned observations out of order for taxon {taxon_id} (id_above={id_above})"
        )
    return {
        "total_results": int(body.get("total_results", len(results))),
        "results": [compact_observation(obs) for obs in results],
    }


def _short(err: BaseException | None, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compact_observation(obs: dict[str, Any]) -> dict[str, Any]:
    """The fields of an API observation that acquisition keeps."""
    photos = obs.get("photos") or [op["photo"] for op in obs.get("observation_photos") or []]
    return {
        "id": int(obs["id"]),
        "observed_on": obs.get("observed_on") or None,
        "photos": [
            {
                "id": int(p["id"]),
                "url": p.get("url") or "",
                "license": (p.get("license_code") or None) and p["license_code"].lower(),
                "attribution": p.get("attribution") or "",
            }
            for p in photos
        ],
    }


def page_candidates(taxon_id: int, page: ObservationPage) -> list[PhotoCandidate]:
    """The photos of a page, in order (observation id, then photo position)."""
    return [
        PhotoCandidate(
            taxon_id=taxon_id,
            observation_id=str(obs["id"]),
            photo_id=str(photo["id"]),
            url=photo["url"],
            license=photo["license"],
            attribution=photo["attribution"],
            observed_on=obs["observed_on"],
        )
        for obs in page.observations
        for photo in obs["photos"]
    ]


def photo_url(url: str, size: str) -> str:
    """The URL of ``size`` for a photo URL as the API lists it (``square``): pyinaturalist's :meth:`Photo.url_size`."""
    return Photo(url=url).url_size(size) or url
