"""A fake iNaturalist API on 127.0.0.1, for tests and benchmarks.

It serves the subset of ``GET /v1/observations`` that :mod:`mushroom.sources.inaturalist` uses
(``taxon_id``, ``place_id``, ``quality_grade``, ``photos``, ``photo_license``, ``per_page``,
``order_by=id``, ``order``, ``id_above``, and ``page`` up to a result window like the real
API's 10,000) and the photos its results link to: JPEGs drawn with Pillow at
``/photos/<photo_id>/<size>.jpg``, the same bytes for every size.

One idea, the fake API server, in one module of more than 500 lines (its request handling, its
photo drawing and its fault injection serve only it).

Typical use::

    with FakeINaturalist.with_taxa([48715, 47392], observations_per_taxon=12, max_per_page=5) as inat:
        config = INaturalistSourceConfig(api_url=inat.api_url)
        ...
        assert inat.count("photo") == 24

As a pytest fixture::

    @pytest.fixture
    def inat():
        with FakeINaturalist.with_taxa([48715, 47392]) as server:
            yield server

Faults:

* permanent, per photo: ``FakePhoto(fault=...)`` with a name from :data:`PHOTO_FAULTS`;
* transient: :meth:`FakeINaturalist.inject_photo_fault` and :meth:`FakeINaturalist.inject_api_fault`
  make the next ``times`` requests for a photo (or to the API) fail, then it recovers;
* storms: :meth:`FakeINaturalist.api_fault_rate` makes any API request fail at random (seeded);
* odd content: ``FakePhoto(mode="CMYK" | "L" | "RGBA")`` (RGBA is served as PNG) and
  ``FakePhoto(same_bytes_as=<photo id>)``; a disallowed licence is ``FakePhoto(license="cc-by-nd")``
  or ``license=None`` (all rights reserved);
* :meth:`FakeINaturalist.hold_photos` blocks photo requests after the first ``n`` until
  :meth:`FakeINaturalist.release` (to kill a client mid-run at a known point);
* a network that is down: :meth:`FakeINaturalist.stop` closes the port (connections are
  refused) and ``start(port=...)`` serves again on the same port.

Request log and counters: :attr:`FakeINaturalist.log` (one :class:`RequestRecord` per request,
with its arrival time), :meth:`FakeINaturalist.count` (``"api"``, ``"photo"``, ``"api:429"``,
``"photo:200"``, ...), :meth:`FakeINaturalist.max_in_window` (the most requests that arrived
within any window of a given length, to check a client's rate limit),
:meth:`FakeINaturalist.wait_idle` (until every request that arrived is answered and logged),
and :attr:`FakeINaturalist.peak_photos_in_flight` / :attr:`FakeINaturalist.photo_busy_s`.
"""

from __future__ import annotations

import io
import json
import random
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageDraw

#: Faults a photo request can answer with.
#: ``429`` carries ``Retry-After``; ``timeout`` answers only after ``hang_s`` (longer than the
#: client's timeout); ``cut`` closes the connection half-way through the body; ``truncated`` is
#: half a JPEG with a matching Content-Length; ``html`` is an HTML error page with status 200;
#: ``tiny`` is an 8x8 JPEG.
PHOTO_FAULTS = ("429", "404", "500", "503", "timeout", "cut", "truncated", "html", "tiny")
#: Faults an API request can answer with; ``bad_json`` is a truncated JSON body.
API_FAULTS = ("429", "500", "503", "timeout", "bad_json")

DEFAULT_LICENSES = ("cc-by", "cc0", "cc-by-nc", "cc-by-sa", "cc-by-nc-sa")
GERMANY = 7207


@dataclass
class FakePhoto:
    """One photo of an observation."""

    id: int
    license: str | None = "cc-by"
    user: str = "observer"
    mode: str = "RGB"
    same_bytes_as: int | None = None
    fault: str | None = None

    @property
    def ext(self) -> str:
        return "png" if self.mode == "RGBA" else "jpg"

    @property
    def attribution(self) -> str:
        return attribution_for(self.user, self.license)


@dataclass
class FakeObservation:
    """One observation; ``photos`` in their position order."""

    id: int
    taxon_id: int
    photos: list[FakePhoto] = field(default_factory=list)
    observed_on: str = "2023-09-01"
    quality_grade: str = "research"
    place_ids: tuple[int, ...] = (GERMANY,)
    user: str = "observer"


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered (``time``: when it was answered, ``arrived``: when it came in; monotonic)."""

    time: float
    kind: str  # "api", "photo" or "other"
    path: str
    query: dict[str, str]
    status: int  # 0 when the client hung up before the answer (a timeout fault)
    photo_id: int | None = None
    user_agent: str = ""
    fault: str | None = None
    arrived: float = 0.0


def attribution_for(user: str, license_code: str | None) -> str:
    """The attribution string iNaturalist shows for a photo."""
    if license_code is None:
        return f"(c) {user}, all rights reserved"
    if license_code == "cc0":
        return f"{user}, no rights reserved (CC0)"
    parts = license_code.upper().split("-")
    return f"(c) {user}, some rights reserved (CC {'-'.join(parts[1:])})"


class FakeINaturalist:
    """A threaded HTTP server that behaves like a small slice of iNaturalist.

    Args:
        observations: The observations to serve (any order; served by ascending id).
        max_per_page: The most results one page returns, whatever ``per_page`` asks (iNat: 200).
        max_result_window: ``page * per_page`` above this is refused with 403, like iNat's 10,000.
        image_size: Width and height of the served photos.
        photo_latency_s: Delay before every photo response (simulated network latency).
        hang_s: How long a ``timeout`` fault waits before answering.
        retry_after_s: The ``Retry-After`` value of a 429 answer.
    """

    def __init__(
        self,
        observations: Iterable[FakeObservation] = (),
        *,
        max_per_page: int = 200,
        max_result_window: int = 10_000,
        image_size: tuple[int, int] = (80, 80),
        photo_latency_s: float = 0.0,
        hang_s: float = 2.0,
        retry_after_s: int = 1,
    ):
        self.observations = sorted(observations, key=lambda o: o.id)
        self.max_per_page = max_per_page
        self.max_result_window = max_result_window
        self.image_size = image_size
        self.photo_latency_s = photo_latency_s
        self.hang_s = hang_s
        self.retry_after_s = retry_after_s
        self.log: list[RequestRecord] = []
        self.peak_photos_in_flight = 0
        self.photo_busy_s = 0.0
        self._photos = {p.id: p for o in self.observations for p in o.photos}
        self._api_faults: deque[str] = deque()
        self._api_storm: tuple[float, tuple[str, ...], random.Random] | None = None
        self._photo_faults: dict[int, deque[str]] = defaultdict(deque)
        self._images: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._in_flight = 0
        self._hold_after: int | None = None
        self._gate = threading.Event()
        self._gate.set()
        self._photo_requests_seen = 0
        self._active = 0  # requests being answered, not yet logged
        self._idle = threading.Condition(self._lock)
        self._arrivals: Counter[int] = Counter()
        self._httpd: ThreadingHTTPServer | None = None
        self.down = False  # stopped: requests still arriving on open connections get no answer
        self._thread: threading.Thread | None = None

    @classmethod
    def with_taxa(
        cls,
        taxa: Iterable[int] | Mapping[int, int],
        observations_per_taxon: int = 10,
        photos_per_observation: int = 2,
        licenses: Iterable[str] = DEFAULT_LICENSES,
        first_id: int = 1000,
        **server_kwargs,
    ) -> FakeINaturalist:
        """A server with generated observations for each taxon.

        Observation ids interleave across taxa (as on iNaturalist, one id space for all); photo
        licences cycle through ``licenses``; observation dates spread over 2019-2023.

        Args:
            taxa: Taxon ids, or a mapping of taxon id to its number of observations.
            observations_per_taxon: Observations per taxon when ``taxa`` is not a mapping.
            photos_per_observation: Photos on every observation.
            licenses: Licence codes handed out in turn.
            first_id: The first observation id (photo ids start at ten times this).
            server_kwargs: Passed to :class:`FakeINaturalist`.

        Returns:
            The (not yet started) server.
        """
        counts = dict(taxa) if isinstance(taxa, Mapping) else {t: observations_per_taxon for t in taxa}
        licenses = list(licenses)
        observations, obs_id, photo_id = [], first_id, first_id * 10
        for i in range(max(counts.values(), default=0)):
            for taxon_id, n in counts.items():
                if i >= n:
                    continue
                user = f"user{obs_id % 7}"
                photos = []
                for _ in range(photos_per_observation):
                    photos.append(FakePhoto(photo_id, licenses[photo_id % len(licenses)], user))
                    photo_id += 1
                observed = date(2019, 1, 1) + timedelta(days=(obs_id * 37) % 1800)
                observations.append(
                    FakeObservation(obs_id, taxon_id, photos, observed.isoformat(), user=user)
                )
                obs_id += 1
        return cls(observations, **server_kwargs)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, port: int = 0) -> FakeINaturalist:
        """Start serving on 127.0.0.1, on ``port`` (0: a free one; after :meth:`stop`, the old one again)."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", port), handler)
        self.down = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-inat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go down like a network: the port closes (connections are refused), open connections are
        reset, and requests being answered or held get no answer."""
        if self._httpd is not None:
            self.down = True
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.drop_connections()
            self._httpd = None
        self.release()

    def __enter__(self) -> FakeINaturalist:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the fake iNaturalist server is not started")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the fake iNaturalist server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """The value for ``INaturalistSourceConfig.api_url``."""
        return f"{self.base_url}/v1"

    # -- data --------------------------------------------------------------------------------

    def photo(self, photo_id: int) -> FakePhoto:
        return self._photos[int(photo_id)]

    def photos_of(self, taxon_id: int) -> list[FakePhoto]:
        """Photos of a taxon in the order the API lists them (observation id, then position)."""
        return [p for o in self.observations if o.taxon_id == taxon_id for p in o.photos]

    def observation_of(self, photo_id: int) -> FakeObservation:
        """The first observation (by id) that carries ``photo_id``."""
        return next(o for o in self.observations if any(p.id == int(photo_id) for p in o.photos))

    def photo_url(self, photo_id: int, size: str = "square") -> str:
        return f"{self.base_url}/photos/{photo_id}/{size}.{self.photo(photo_id).ext}"

    def image_bytes(self, photo_id: int) -> bytes:
        """The bytes served for a photo without a fault (generated once, then cached)."""
        photo = self.photo(photo_id)
        if photo.same_bytes_as is not None:
            return self.image_bytes(photo.same_bytes_as)
        with self._lock:
            if photo.id not in self._images:
                self._images[photo.id] = draw_image(photo.id, self.image_size, photo.mode)
            return self._images[photo.id]

    # -- faults and gates --------------------------------------------------------------------

    def inject_api_fault(self, fault: str, times: int = 1) -> None:
        """Answer the next ``times`` API requests with ``fault`` (one of :data:`API_FAULTS`)."""
        if fault not in API_FAULTS:
            raise ValueError(f"API fault {fault!r} is not one of {API_FAULTS}")
        with self._lock:
            self._api_faults.extend([fault] * times)

    def api_fault_rate(self, rate: float, faults: Iterable[str] = ("429", "500"), seed: int = 0) -> None:
        """From now on, answer each API request with one of ``faults`` with probability ``rate`` (0: off)."""
        faults = tuple(faults)
        if bad := [f for f in faults if f not in API_FAULTS]:
            raise ValueError(f"API faults {bad} are not in {API_FAULTS}")
        with self._lock:
            self._api_storm = (rate, faults, random.Random(seed)) if rate > 0 else None

    def inject_photo_fault(self, photo_id: int, fault: str, times: int = 1) -> None:
        """Answer the next ``times`` requests for ``photo_id`` with ``fault`` (see :data:`PHOTO_FAULTS`)."""
        if fault not in PHOTO_FAULTS:
            raise ValueError(f"photo fault {fault!r} is not one of {PHOTO_FAULTS}")
        with self._lock:
            self._photo_faults[int(photo_id)].extend([fault] * times)

    def hold_photos(self, after: int) -> None:
        """Serve ``after`` more photo requests, then block the rest until :meth:`release`."""
        with self._lock:
            self._hold_after = self._photo_requests_seen + after
            self._gate.clear()

    def release(self) -> None:
        """Let held photo requests through."""
        with self._lock:
            self._hold_after = None
        self._gate.set()

    # -- counters ----------------------------------------------------------------------------

    def count(self, key: str) -> int:
        """Requests answered: ``"api"``, ``"photo"``, or with a status, ``"photo:500"``."""
        with self._lock:
            counts = Counter(r.kind for r in self.log)
            counts.update(f"{r.kind}:{r.status}" for r in self.log)
        return counts[key]

    def max_in_window(self, window_s: float, kind: str = "api") -> int:
        """The most ``kind`` requests that arrived within any ``window_s`` seconds (a half-open window)."""
        with self._lock:
            times = sorted(r.arrived for r in self.log if r.kind == kind)
        most, first = 0, 0
        for last, t in enumerate(times):
            while t - times[first] >= window_s:
                first += 1
            most = max(most, last - first + 1)
        return most

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Wait until every request that arrived has been answered and logged (e.g. after a client was killed)."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._active == 0, timeout_s):
                raise TimeoutError(f"{self._active} requests still being answered after {timeout_s}s")

    def photo_requests(self, photo_id: int | None = None) -> int:
        """Photo requests that arrived (including any still being answered), for one photo or all."""
        with self._lock:
            return self._arrivals.total() if photo_id is None else self._arrivals[int(photo_id)]

    def reset_counts(self) -> None:
        with self._lock:
            self.log.clear()
            self._arrivals.clear()
            self.peak_photos_in_flight = 0
            self.photo_busy_s = 0.0

    # -- request handling (called from handler threads) ---------------------------------------

    def _arrive(self) -> float:
        with self._lock:
            self._active += 1
        return time.monotonic()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.log.append(record)
            self._active -= 1
            self._idle.notify_all()

    def _next_api_fault(self) -> str | None:
        with self._lock:
            if self._api_faults:
                return self._api_faults.popleft()
            if self._api_storm is not None:
                rate, faults, rng = self._api_storm
                if rng.random() < rate:
                    return rng.choice(faults)
            return None

    def _next_photo_fault(self, photo: FakePhoto) -> str | None:
        with self._lock:
            queue = self._photo_faults.get(photo.id)
            if queue:
                return queue.popleft()
        return photo.fault

    def _enter_photo(self, photo_id: int) -> None:
        with self._lock:
            self._arrivals[photo_id] += 1
            self._photo_requests_seen += 1
            held = self._hold_after is not None and self._photo_requests_seen > self._hold_after
            self._in_flight += 1
            self.peak_photos_in_flight = max(self.peak_photos_in_flight, self._in_flight)
        if held:
            self._gate.wait()

    def _leave_photo(self, busy_s: float) -> None:
        with self._lock:
            self._in_flight -= 1
            self.photo_busy_s += busy_s

    def search(self, query: dict[str, str]) -> tuple[int, dict]:
        """Answer ``/v1/observations`` for a parsed query string: (status, JSON body)."""
        per_page = min(int(query.get("per_page", 30)), self.max_per_page)
        page = int(query.get("page", 1))
        if page * per_page > self.max_result_window:
            return 403, {"error": f"You can only view up to {self.max_result_window} results", "status": 403}
        matches = [o for o in self.observations if _matches(o, query)]
        if query.get("order", "desc") == "desc":
            matches.reverse()
        start = (page - 1) * per_page
        results = [self._observation_json(o) for o in matches[start : start + per_page]]
        return 200, {"total_results": len(matches), "page": page, "per_page": per_page, "results": results}

    def _observation_json(self, obs: FakeObservation) -> dict:
        photos = [self._photo_json(p) for p in obs.photos]
        return {
            "id": obs.id,
            "uuid": f"00000000-0000-4000-8000-{obs.id:012d}",
            "quality_grade": obs.quality_grade,
            "observed_on": obs.observed_on,
            "taxon": {"id": obs.taxon_id, "rank": "species"},
            "place_ids": list(obs.place_ids),
            "user": {"id": sum(map(ord, obs.user)), "login": obs.user},
            "uri": f"https://www.inaturalist.org/observations/{obs.id}",
            "photos": photos,
            "observation_photos": [{"id": p["id"], "position": i, "photo": p} for i, p in enumerate(photos)],
        }

    def _photo_json(self, photo: FakePhoto) -> dict:
        width, height = self.image_size
        return {
            "id": photo.id,
            "license_code": photo.license,
            "attribution": photo.attribution,
            "url": self.photo_url(photo.id, "square"),
            "original_dimensions": {"width": width * 10, "height": height * 10},
        }


def _matches(obs: FakeObservation, query: dict[str, str]) -> bool:
    def listed(name: str) -> list[str] | None:
        value = query.get(name)
        return None if value is None else [v.strip().lower() for v in value.split(",") if v.strip()]

    taxa, places, grades, licenses = (
        listed("taxon_id"),
        listed("place_id"),
        listed("quality_grade"),
        listed("photo_license"),
    )
    if taxa is not None and str(obs.taxon_id) not in taxa:
        return False
    if places is not None and not {str(p) for p in obs.place_ids} & set(places):
        return False
    if grades is not None and obs.quality_grade not in grades:
        return False
    if query.get("photos", "").lower() == "true" and not obs.photos:
        return False
    if licenses is not None and not any((p.license or "") in licenses for p in obs.photos):
        return False
    if "id_above" in query and obs.id <= int(query["id_above"]):
        return False
    if "id_below" in query and obs.id >= int(query["id_below"]):
        return False
    return True


def draw_image(seed: int, size: tuple[int, int], mode: str = "RGB") -> bytes:
    """A small, deterministic, unique-looking picture, encoded as JPEG (PNG for RGBA)."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(6):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = rng.randrange(x0, width + 1), rng.randrange(y0, height + 1)
        draw.rectangle((x0, y0, x1, y1), fill=tuple(rng.randrange(256) for _ in range(3)))
    draw.text((2, 2), str(seed), fill=(255, 255, 255))
    buf = io.BytesIO()
    if mode == "RGBA":
        image.convert("RGBA").save(buf, format="PNG")
    else:
        image.convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class _Server(ThreadingHTTPServer):
    """Threaded server that can also drop its open (keep-alive) connections, like a network going down."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request, client_address):
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    """Routes a GET, answers it (with any due fault) and records it, even if the client hung up."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; don't wait for ACKs
    fake: FakeINaturalist

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        arrived = self.fake._arrive()
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        photo_id = int(parts[1]) if len(parts) == 3 and parts[0] == "photos" and parts[1].isdigit() else None
        kind = "api" if url.path.rstrip("/") == "/v1/observations" else "photo" if photo_id else "other"
        self._status, self._fault = 0, None  # 0: the client hung up before an answer was written
        try:
            if self.fake.down:
                self.close_connection = True
            elif kind == "api":
                self._api(query)
            elif kind == "photo":
                self._photo(photo_id)
            else:
                self._send(404, b'{"error": "not found"}', "application/json")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            agent = self.headers.get("User-Agent", "")
            record = RequestRecord(
                time.monotonic(), kind, url.path, query, self._status, photo_id, agent, self._fault, arrived
            )
            self.fake._record(record)

    def _api(self, query: dict[str, str]) -> None:
        self._fault = self.fake._next_api_fault()
        if self._fault == "timeout":
            time.sleep(self.fake.hang_s)  # then answer normally, long after the client gave up
        elif self._fault == "bad_json":
            self._send(200, b'{"total_results": 3, "results": [{"id"', "application/json")
            return
        elif self._fault:
            status = int(self._fault)
            body = json.dumps({"error": self._fault, "status": status}).encode()
            self._send(status, body, "application/json", self._retry_after(status))
            return
        status, body = self.fake.search(query)
        self._send(status, json.dumps(body).encode(), "application/json")

    def _photo(self, photo_id: int) -> None:
        start = time.monotonic()
        self.fake._enter_photo(photo_id)
        try:
            if self.fake.down:  # went down while this request was held
                self.close_connection = True
                return
            self._serve_photo(photo_id)
        finally:
            self.fake._leave_photo(time.monotonic() - start)

    def _serve_photo(self, photo_id: int) -> None:
        if self.fake.photo_latency_s:
            time.sleep(self.fake.photo_latency_s)
        try:
            photo = self.fake.photo(photo_id)
        except KeyError:
            self._send(404, b"no such photo", "text/plain")
            return
        self._fault = fault = self.fake._next_photo_fault(photo)
        if fault == "timeout":
            time.sleep(self.fake.hang_s)
        elif fault in ("429", "404", "500", "503"):
            self._send(int(fault), f"error {fault}".encode(), "text/plain", self._retry_after(int(fault)))
            return
        elif fault == "html":
            page = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
            self._send(200, page, "text/html; charset=utf-8")
            return
        elif fault == "tiny":
            self._send(200, draw_image(photo.id, (8, 8)), "image/jpeg")
            return
        data = self.fake.image_bytes(photo.id)
        content_type = "image/png" if photo.ext == "png" else "image/jpeg"
        if fault == "truncated":
            self._send(200, data[: len(data) // 2], content_type)
        elif fault == "cut":
            self._send(200, data, content_type, cut=True)
        else:
            self._send(200, data, content_type)

    def _retry_after(self, status: int) -> dict[str, str]:
        return {"Retry-After": str(self.fake.retry_after_s)} if status == 429 else {}

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        cut: bool = False,
    ) -> None:
        """Answer; with ``cut``, announce the whole body but close the connection half-way."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._status = status
        self.wfile.write(body[: len(body) // 2] if cut else body)
        if cut:
            self.wfile.flush()
            self.close_connection = True
