"""Querying iNaturalist observations through pyinaturalist's :class:`~pyinaturalist.ClientSession`.

The session brings pyinaturalist's rate limiting (requests-ratelimiter / pyrate-limiter, per
second, minute and day, kept in SQLite so a restarted process still honours it), retries with
backoff, and a requests-cache SQLite cache. pyinaturalist's ``get_observations`` is bound to the
public API host, so requests go through the session with ``config.api_url`` instead.

Pages are fetched with ``order_by=id&order=asc&id_above=<last id>``: iNaturalist refuses
``page * per_page`` beyond 10,000, ``id_above`` has no such ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from pyinaturalist import ClientSession
from requests.adapters import HTTPAdapter
from requests_ratelimiter import BucketFullException
from urllib3.exceptions import MaxRetryError

from mushroom.config import INaturalistSourceConfig
from mushroom.sources.inat_photos import PhotoCandidate, make_retry

#: The most results iNaturalist returns per page.
PER_PAGE = 200
API_CACHE_NAME = "api_cache.sqlite"
RATELIMIT_NAME = "ratelimit.sqlite"


class INaturalistAPIError(RuntimeError):
    """The API could not be queried (after retries, or the request budget is spent)."""


@dataclass(frozen=True)
class ObservationPage:
    """One page of a taxon's query, reduced to what acquisition needs.

    ``observations`` are ``{"id", "observed_on", "photos": [{"id", "url", "license",
    "attribution"}]}`` dicts; ``next_id_above`` is the cursor for the next page.
    """

    id_above: int
    next_id_above: int
    done: bool
    observations: list[dict[str, Any]]
    from_cache: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id_above": self.id_above,
            "next_id_above": self.next_id_above,
            "done": self.done,
            "observations": self.observations,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ObservationPage:
        return cls(data["id_above"], data["next_id_above"], data["done"], data["observations"], True)


def open_api_session(state_dir: Path, config: INaturalistSourceConfig) -> ClientSession:
    """A pyinaturalist session with its rate limits, retries and cache kept in ``state_dir``.

    Args:
        state_dir: Folder for the SQLite cache and rate-limit databases.
        config: The source settings used: ``user_agent`` (appended to pyinaturalist's),
            ``requests_per_minute`` (also the per-second rate, ``/ 60``, burst of 5; capped below
            ``requests_per_day``), ``requests_per_day`` (iNaturalist asks for at most 10,000),
            ``timeout_s`` (read timeout per request), and ``max_retries``, ``backoff_factor``
            and ``backoff_max`` (retries for 429 honouring ``Retry-After``, 5xx, timeouts,
            broken JSON, with urllib3's exponential backoff).

    Returns:
        The session; close it when done.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    # pyrate-limiter wants each longer window to allow more requests; the day's budget wins.
    requests_per_minute = min(config.requests_per_minute, config.requests_per_day - 1)
    session = ClientSession(
        cache_file=str(state_dir / API_CACHE_NAME),
        ratelimit_path=str(state_dir / RATELIMIT_NAME),
        per_second=requests_per_minute / 60,
        per_minute=requests_per_minute,
        per_day=config.requests_per_day,
        max_retries=config.max_retries,
        backoff_factor=config.backoff_factor,
        timeout=config.timeout_s,
        user_agent=config.user_agent,
    )
    # pyinaturalist retries 5xx on https:// only; add 429 (urllib3 then sleeps for Retry-After)
    # and mount for http:// too, so a local API behaves like the real one.
    session.retries = make_retry(config)
    adapter = HTTPAdapter(max_retries=session.retries)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def query_params(config: INaturalistSourceConfig, taxon_id: int, id_above: int) -> dict[str, Any]:
    """The ``/observations`` parameters for one page of a taxon."""
    return {
        "taxon_id": taxon_id,
        "place_id": config.place_id,
        "quality_grade": config.quality_grade,
        "photos": True,
        "photo_license": [code.upper() for code in config.licenses],
        "per_page": PER_PAGE,
        "order_by": "id",
        "order": "asc",
        "id_above": id_above or None,
    }


def fetch_observation_page(
    session: ClientSession, config: INaturalistSourceConfig, taxon_id: int, id_above: int
) -> ObservationPage:
    """Fetch the page of ``taxon_id``'s observations with ids above ``id_above``.

    Args:
        session: From :func:`open_api_session`.
        config: The source configuration (api_url, place_id, quality_grade, licenses).
        taxon_id: The catalog taxon.
        id_above: The cursor (0 for the first page).

    Returns:
        The page, with ``done`` set when no later page can hold results.

    Raises:
        INaturalistAPIError: When retries are spent or the daily request budget is used up.
    """
    url = f"{config.api_url.rstrip('/')}/observations"
    try:
        response = session.request("GET", url, **query_params(config, taxon_id, id_above))
        body = response.json()
    except BucketFullException as err:
        raise INaturalistAPIError(
            f"the iNaturalist request budget is used up ({err}); progress is saved, rerun later to resume"
        ) from None
    except (requests.RequestException, MaxRetryError, ValueError) as err:
        raise INaturalistAPIError(
            f"iNaturalist query for taxon {taxon_id} (id_above={id_above}) failed after retries: {err}; "
            f"progress is saved, a rerun resumes"
        ) from None
    return _page(body, taxon_id, id_above, getattr(response, "from_cache", False))


def _page(body: dict[str, Any], taxon_id: int, id_above: int, from_cache: bool) -> ObservationPage:
    results = body.get("results") or []
    ids = [int(obs["id"]) for obs in results]
    if any(i <= id_above for i in ids) or ids != sorted(ids):
        raise INaturalistAPIError(
            f"iNaturalist returned observations out of order for taxon {taxon_id} (id_above={id_above})"
        )
    total = int(body.get("total_results", len(results)))
    done = not results or len(results) >= total
    return ObservationPage(
        id_above=id_above,
        next_id_above=ids[-1] if ids else id_above,
        done=done,
        observations=[compact_observation(obs) for obs in results],
        from_cache=from_cache,
    )


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


def sized_photo_url(url: str, size: str) -> str:
    """Turn a photo URL (iNaturalist lists the ``square`` one) into the URL of ``size``."""
    head, sep, name = url.rpartition("/")
    return f"{head}{sep}{name.replace('square', size, 1)}"
