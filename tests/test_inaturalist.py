"""iNaturalist acquisition against a fake iNaturalist API on 127.0.0.1 (mushroom.testing.inat_server)."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from PIL import Image
from pyrate_limiter import Limiter

from mushroom.cli import main
from mushroom.config import DatasetConfig, INaturalistSourceConfig
from mushroom.fileio import atomic_path
from mushroom.manifest import read_manifest
from mushroom.sources import build_dataset, inat_api, inaturalist
from mushroom.sources.inat_api import api_rates, photo_url
from mushroom.sources.inat_http import Backoff
from mushroom.sources.inat_journal import AcquisitionInterrupted
from mushroom.sources.inat_photos import MediaBudget, PhotoRejected, validate_photo
from mushroom.sources.inaturalist import MissingSpeciesError, acquire_inaturalist, acquisition_report
from mushroom.species import Catalog, Species, load_catalog
from mushroom.testing.inat_server import FakeINaturalist, draw_image

TAXA = (101, 202, 303)
RETRIES = 3
MIN_SIDE = 64
# The read timeout where a test counts requests exactly: long enough that no reply of the fake
# server (on 127.0.0.1) outlasts it, even on a loaded machine, so no request is retried by chance.
READ_TIMEOUT_S = 10.0
# Where the timeout itself is tested: a "timeout" fault hangs twice as long as the client waits.
SHORT_TIMEOUT_S, HANG_S = 1.5, 3.0


def make_catalog(taxa) -> Catalog:
    return Catalog([Species(t, f"Fungus number{t}", f"Fungus {t}", "edible") for t in taxa])


def config_for(inat: FakeINaturalist, **overrides) -> INaturalistSourceConfig:
    """A configuration for the fake server: no rate limits, short backoffs, and a read timeout
    that only the ``timeout`` faults reach."""
    values = dict(
        api_url=inat.api_url,
        photos_per_species=100,
        photo_size="small",
        requests_per_minute=100_000,
        requests_per_day=1_000_000,
        concurrency=4,
        timeout_s=READ_TIMEOUT_S,
        max_retries=RETRIES,
        backoff_factor=0.01,
        backoff_max=0.05,
        min_photo_side=MIN_SIDE,
    )
    return INaturalistSourceConfig(**{**values, **overrides})


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def assert_clean_rgb_jpegs(out_dir: Path, records) -> None:
    """Exactly the records' files are on disk, each a decodable RGB JPEG, no temporary files."""
    assert files_under(out_dir / "images") == {r.file.removeprefix("images/") for r in records}
    for record in records:
        with Image.open(out_dir / record.file) as image:
            image.load()
            assert (image.format, image.mode) == ("JPEG", "RGB")
            assert min(image.size) >= MIN_SIDE


def test_three_taxa_with_several_pages_arrive_complete_with_attributions(tmp_path):
    with FakeINaturalist.with_taxa(
        TAXA, observations_per_taxon=11, max_per_page=4, max_result_window=12
    ) as inat:
        config = config_for(inat)
        records = acquire_inaturalist(config, make_catalog(TAXA), tmp_path)

        # 11 observations x 2 photos per taxon, 3 pages each (4 + 4 + 3), past the "result window".
        assert [r.taxon_id for r in records] == [t for t in TAXA for _ in range(22)]
        for taxon in TAXA:
            assert [r.photo_id for r in records if r.taxon_id == taxon] == [
                str(p.id) for p in inat.photos_of(taxon)
            ]
        for r in records:
            photo = inat.photo(r.photo_id)
            assert r.file == f"images/{r.taxon_id}/{r.photo_id}.jpg"
            assert (tmp_path / r.file).read_bytes() == inat.image_bytes(photo.id)
            assert r.observation_id == str(inat.observation_of(photo.id).id)
            assert (r.license, r.attribution) == (photo.license, photo.attribution)
            assert r.attribution.startswith(("(c) user", "user"))
        assert_clean_rgb_jpegs(tmp_path, records)

        api = [r for r in inat.log if r.kind == "api"]
        assert len(api) == 9 and inat.count("photo") == 66
        for request in api:
            assert request.query["order_by"] == "id" and request.query["order"] == "asc"
            assert request.query["place_id"] == "7207" and request.query["quality_grade"] == "research"
            assert set(request.query["photo_license"].split(",")) == {
                "CC0",
                "CC-BY",
                "CC-BY-NC",
                "CC-BY-SA",
                "CC-BY-NC-SA",
            }
            assert "page" not in request.query
            assert config.user_agent in request.user_agent
        assert sum("id_above" not in r.query for r in api) == 3  # only each taxon's first page
        photos = [r for r in inat.log if r.kind == "photo"]
        assert all(r.path.endswith("/small.jpg") and config.user_agent in r.user_agent for r in photos)

    attributions = read_csv(tmp_path / "ATTRIBUTIONS.csv")
    assert [(a["file"], a["photo_id"], a["license"], a["attribution"]) for a in attributions] == [
        (r.file, r.photo_id, r.license, r.attribution) for r in records
    ]
    assert (
        attributions[0]["observation_url"]
        == f"https://www.inaturalist.org/observations/{records[0].observation_id}"
    )
    assert read_csv(tmp_path / "failures.csv") == []

    report = acquisition_report(tmp_path)
    dates = sorted(o.observed_on for o in inat.observations)
    assert report["num_photos"] == 66 and report["num_species"] == 3
    assert report["photos_per_species"] == {str(t): 22 for t in TAXA}
    assert report["photos_per_license"] == dict(Counter(r.license for r in records))
    assert report["observed_on"] == {"from": dates[0], "to": dates[-1]}
    assert report["failures_by_reason"] == {}
    assert report["species_short"] == list(TAXA) and report["species_missing"] == []
    assert report["query"]["place_id"] == 7207 and report["query"]["photo_size"] == "small"
    assert report["query"]["photos_per_species"] == 100
    assert report["acquired_at"][:4].isdigit()
    card = (tmp_path / "DATASET_CARD.md").read_text(encoding="utf-8")
    assert "*Fungus number202*" in card and "| cc-by-nc-sa |" in card and "place_id=7207" in card


def test_a_rerun_of_a_complete_dataset_asks_nothing_and_changes_nothing(tmp_path):
    with FakeINaturalist.with_taxa(TAXA, observations_per_taxon=4, max_per_page=3) as inat:
        config, catalog = config_for(inat), make_catalog(TAXA)
        first = acquire_inaturalist(config, catalog, tmp_path)
        before = {f: (tmp_path / "images" / f).read_bytes() for f in files_under(tmp_path / "images")}
        inat.reset_counts()
        again = acquire_inaturalist(config, catalog, tmp_path)
        assert again == first
        assert inat.count("api") == 0 and inat.count("photo") == 0
        assert {f: (tmp_path / "images" / f).read_bytes() for f in files_under(tmp_path / "images")} == before

        # Asking for fewer photos keeps the first ones in query order and removes the rest.
        fewer = acquire_inaturalist(config_for(inat, photos_per_species=3), catalog, tmp_path)
        assert fewer == [r for t in TAXA for r in [x for x in first if x.taxon_id == t][:3]]
        assert_clean_rgb_jpegs(tmp_path, fewer)
        assert inat.count("photo") == 0

        # Another query (here: other licences) starts the folder over.
        cc0 = acquire_inaturalist(config_for(inat, licenses=["cc0"]), catalog, tmp_path)
        assert cc0 and {r.license for r in cc0} == {"cc0"}
        assert_clean_rgb_jpegs(tmp_path, cc0)
        assert read_csv(tmp_path / "ATTRIBUTIONS.csv")[0]["license"] == "cc0"


def test_photos_per_species_caps_downloads_and_paging(tmp_path):
    with FakeINaturalist.with_taxa(TAXA, observations_per_taxon=11, max_per_page=2) as inat:
        records = acquire_inaturalist(config_for(inat, photos_per_species=5), make_catalog(TAXA), tmp_path)
        for taxon in TAXA:
            assert [r.photo_id for r in records if r.taxon_id == taxon] == [
                str(p.id) for p in inat.photos_of(taxon)[:5]
            ]
        assert inat.count("api") == 6  # 5 photos need 3 observations: 2 pages of 2 per taxon
        assert inat.count("photo") == 15  # nothing downloaded beyond what is kept
    assert acquisition_report(tmp_path)["species_short"] == []


def test_faults_are_counted_and_nothing_corrupt_is_written(tmp_path):
    inat = FakeINaturalist.with_taxa((101, 202), observations_per_taxon=8, max_per_page=3, hang_s=HANG_S)
    p, q = inat.photos_of(101), inat.photos_of(202)
    p[0].fault, p[1].fault, p[2].fault = "truncated", "html", "tiny"
    p[3].license, p[4].license = "cc-by-nd", None
    p[5].fault, p[6].fault = "404", "500"
    p[9].same_bytes_as = p[8].id
    p[10].mode, p[11].mode, p[12].mode = "CMYK", "L", "RGBA"
    inat.observations[-2].photos.append(p[13])  # the same photo id in a second observation of 101
    with inat:
        inat.inject_api_fault("429")  # the first page needs all RETRIES (more: see the storm test)
        inat.inject_api_fault("500")
        inat.inject_api_fault("bad_json")
        inat.inject_photo_fault(q[0].id, "500", times=2)
        inat.inject_photo_fault(q[1].id, "429")
        inat.inject_photo_fault(q[2].id, "timeout")
        inat.inject_photo_fault(q[3].id, "cut")
        records = acquire_inaturalist(config_for(inat, timeout_s=SHORT_TIMEOUT_S), make_catalog((101, 202)), tmp_path)

        kept_101 = [p[i] for i in (7, 8, 10, 11, 12, 13, 14, 15)]
        assert [r.photo_id for r in records] == [str(x.id) for x in kept_101 + q]
        assert_clean_rgb_jpegs(tmp_path, records)
        files = {r.photo_id: tmp_path / r.file for r in records}
        for photo in [p[7], p[8], *q]:  # RGB JPEGs are kept byte for byte
            assert files[str(photo.id)].read_bytes() == inat.image_bytes(photo.id)

        report = acquisition_report(tmp_path)
        assert report["failures_by_reason"] == {
            "corrupt_image": 1,
            "not_an_image": 1,
            "too_small": 1,
            "license_not_allowed": 2,
            "http_404": 1,
            "http_500": 1,
            "duplicate_content": 1,
            "duplicate_photo_id": 1,
        }
        failures = {(f["photo_id"], f["reason"]) for f in read_csv(tmp_path / "failures.csv")}
        assert failures == {
            (str(p[0].id), "corrupt_image"),
            (str(p[1].id), "not_an_image"),
            (str(p[2].id), "too_small"),
            (str(p[3].id), "license_not_allowed"),
            (str(p[4].id), "license_not_allowed"),
            (str(p[5].id), "http_404"),
            (str(p[6].id), "http_500"),
            (str(p[9].id), "duplicate_content"),
            (str(p[13].id), "duplicate_photo_id"),
        }
        assert report["photos_per_species"] == {"101": 8, "202": 16}

        # Retries: transient faults were retried until they cleared, permanent ones were not.
        assert inat.photo_requests(q[0].id) == 3 and inat.photo_requests(p[6].id) == 1 + RETRIES
        assert inat.photo_requests(p[5].id) == 1 and inat.photo_requests(p[0].id) == 1
        assert inat.photo_requests(p[3].id) == 0  # a disallowed licence is never downloaded
        assert inat.photo_requests(q[2].id) == 2 and inat.photo_requests(q[3].id) == 2
        throttled = [r for r in inat.log if r.photo_id == q[1].id]
        assert [r.status for r in throttled] == [429, 200]
        assert throttled[1].time - throttled[0].time >= 0.9  # Retry-After: 1 was honoured
        api = [r for r in inat.log if r.kind == "api"]
        assert [r.status for r in api[:3]] == [429, 500, 200] and inat.count("api:429") == 1
        assert api[1].time - api[0].time >= 0.9

        # A rerun keeps the same photos and tries again only what failed for a passing reason (500).
        inat.reset_counts()
        assert acquire_inaturalist(config_for(inat), make_catalog((101, 202)), tmp_path) == records
        assert inat.photo_requests() == inat.photo_requests(p[6].id) == 1 + RETRIES
        assert acquisition_report(tmp_path)["failures_by_reason"] == report["failures_by_reason"]


def test_a_species_without_photos_fails_clearly_unless_allowed(tmp_path):
    catalog = make_catalog((101, 202, 909))
    with FakeINaturalist.with_taxa({101: 3, 202: 2}) as inat:
        with pytest.raises(
            MissingSpeciesError, match=r"Fungus number909 \(taxon 909\).*allow_missing_species"
        ):
            acquire_inaturalist(config_for(inat, photos_per_species=5), catalog, tmp_path)
        assert acquisition_report(tmp_path)["species_missing"] == [909]

        inat.reset_counts()
        config = config_for(inat, photos_per_species=5, allow_missing_species=True)
        records = acquire_inaturalist(config, catalog, tmp_path)
        assert Counter(r.taxon_id for r in records) == {101: 5, 202: 4}
        assert inat.count("photo") == 0  # kept from the first run
        report = acquisition_report(tmp_path)
        assert report["species_missing"] == [909] and report["species_short"] == [202]
        assert report["photos_per_species"] == {"101": 5, "202": 4, "909": 0}


_ACQUIRE_IN_SUBPROCESS = """
import json, sys
from mushroom.config import DatasetConfig
from mushroom.sources import build_dataset
args = json.loads(sys.argv[1])
build_dataset(DatasetConfig.model_validate(args["config"]), args["out_dir"])
"""


def _journal_events(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / ".inaturalist/journal.jsonl").read_text().splitlines()]


def _wait_for_photos(out_dir: Path, n: int, process: subprocess.Popen, timeout_s: float = 300.0) -> None:
    """Wait until the journal holds ``n`` committed photos (the limit only stops a hung test)."""
    deadline = time.monotonic() + timeout_s
    journal = out_dir / ".inaturalist/journal.jsonl"
    while time.monotonic() < deadline:
        assert process.poll() is None, "the acquisition finished before it could be interrupted"
        if journal.is_file() and journal.read_bytes().count(b'"event":"photo"') >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} photos were committed within {timeout_s}s")


def _requests_from(inat: FakeINaturalist, kind: str, user_agent: str) -> int:
    """Requests of ``kind`` one client sent (told apart by its User-Agent), whenever they arrived."""
    return sum(r.kind == kind and user_agent in r.user_agent for r in list(inat.log))


def test_a_killed_run_resumes_to_the_same_dataset(tmp_path):
    taxa = load_catalog().taxon_ids[:3]
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    with FakeINaturalist.with_taxa(taxa, observations_per_taxon=10, max_per_page=4) as inat:
        config = DatasetConfig(source="inaturalist", species=taxa, inaturalist=config_for(inat))
        reference = build_dataset(config, reference_dir)
        assert len(reference) == 60

        # The run to kill names itself apart: a request of it that reaches the server late (the
        # kernel may still hold one after the kill) is never counted as the resumed run's.
        killed = DatasetConfig(source="inaturalist", species=taxa,
                               inaturalist=config_for(inat, user_agent="killed-run/1"))
        inat.reset_counts()
        # Photo requests after the 25th are held until release(), and with a read timeout far
        # longer than the test they are never given up on: the run cannot finish by itself, and
        # the kill lands between the 15th committed photo and the 25th.
        inat.hold_photos(after=25)
        args = json.dumps({"config": killed.model_dump(), "out_dir": str(run_dir)})
        with (tmp_path / "killed.log").open("w") as log:
            process = subprocess.Popen([sys.executable, "-c", _ACQUIRE_IN_SUBPROCESS, args], stderr=log)
            try:
                _wait_for_photos(run_dir, 15, process)
            finally:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        assert process.returncode == -signal.SIGKILL
        inat.release()
        inat.wait_idle()  # the held requests of the killed run are answered and logged

        events = _journal_events(run_dir)
        committed = sum(e["event"] == "photo" for e in events)
        pages = sum(e["event"] == "page" for e in events)
        assert 15 <= committed <= 25 and not (run_dir / "manifest.csv").exists()
        # What else a kill can leave: a half-written temporary file, a photo renamed into place
        # whose journal line never made it (here: garbage), and a torn journal line.
        (run_dir / f"images/{taxa[0]}/.{reference[0].photo_id}.jpg.x1y2.tmp").write_bytes(b"\xff\xd8 half")
        orphan = reference[-1]
        assert not any(e.get("photo_id") == orphan.photo_id for e in events)
        (run_dir / orphan.file).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / orphan.file).write_bytes(inat.image_bytes(int(orphan.photo_id))[:300])
        with (run_dir / ".inaturalist/journal.jsonl").open("a") as journal:
            journal.write('{"event":"photo","taxon_id":')

        inat.reset_counts()
        resumed = build_dataset(config, run_dir)
        agent = config.inaturalist.user_agent
        assert _requests_from(inat, "photo", agent) == 60 - committed  # only what was missing
        assert _requests_from(inat, "api", agent) == 9 - pages

    assert resumed == reference
    assert len({r.photo_id for r in resumed}) == 60
    assert files_under(run_dir / "images") == files_under(reference_dir / "images")
    for r in reference:
        assert (run_dir / r.file).read_bytes() == (reference_dir / r.file).read_bytes()
    assert read_manifest(run_dir) == read_manifest(reference_dir)
    for name in ("manifest.csv", "ATTRIBUTIONS.csv", "failures.csv"):
        assert (run_dir / name).read_text() == (reference_dir / name).read_text()
    assert_clean_rgb_jpegs(run_dir, resumed)


def test_validate_photo_converts_modes_and_rejects_bad_files():
    rgb = draw_image(1, (80, 80))
    assert validate_photo(rgb, 64) == (rgb, 80, 80)  # an RGB JPEG is kept byte for byte
    for mode in ("CMYK", "L", "RGBA"):
        data, width, height = validate_photo(draw_image(2, (90, 70), mode), 64)
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (90, 70))
    transparent = io.BytesIO()
    Image.new("RGBA", (80, 80), (0, 0, 0, 0)).save(transparent, format="PNG")
    with Image.open(io.BytesIO(validate_photo(transparent.getvalue(), 64)[0])) as image:
        assert image.getpixel((40, 40)) == (255, 255, 255)  # alpha composited onto white
    for data, reason in [
        (rgb[: len(rgb) // 2], "corrupt_image"),
        (b"<html><body>Bad Gateway</body></html>", "not_an_image"),
        (draw_image(3, (80, 40)), "too_small"),
    ]:
        with pytest.raises(PhotoRejected) as err:
            validate_photo(data, 64)
        assert err.value.reason == reason


def test_photo_url_and_media_budget():
    url = "https://inaturalist-open-data.s3.amazonaws.com/photos/123/square.jpg"
    assert photo_url(url, "medium") == "https://inaturalist-open-data.s3.amazonaws.com/photos/123/medium.jpg"
    assert photo_url("http://127.0.0.1:9/photos/5/square.png", "large").endswith("/photos/5/large.png")

    now, sleeps = [0.0], []

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    budget = MediaBudget(1000, clock=lambda: now[0], sleep=sleep)
    budget.wait()
    budget.record(600)
    now[0] = 10.0
    budget.wait()
    budget.record(600)
    assert sleeps == []
    budget.wait()  # 1200 bytes in the last hour: wait until the first 600 leave the window
    assert now[0] == pytest.approx(3600.0)


# -- rate limits, retries, backoff ------------------------------------------------------------


@pytest.mark.parametrize("per_minute", [1, 2, 5, 7, 11, 13, 25, 59, 60, 61, 97, 600])
def test_every_accepted_requests_per_minute_gives_a_valid_limiter(per_minute):
    config = INaturalistSourceConfig(requests_per_minute=per_minute, requests_per_day=max(10_000, per_minute + 1))
    rates = api_rates(config)
    Limiter(*rates)  # pyrate-limiter checks the windows' order (25/60 once clashed with 25/60)
    minute, day = rates[-2], rates[-1]
    assert (minute.limit, day.limit) == (per_minute, config.requests_per_day)
    assert minute.interval >= 60 and day.interval >= 86_400
    for rate in rates[:-1]:  # the burst and minute windows allow at most requests_per_minute a minute
        assert rate.limit * 60 / rate.interval <= per_minute * (1 + 1e-9)


@pytest.mark.parametrize("per_minute", [1, 7, 25])
def test_odd_requests_per_minute_values_acquire(tmp_path, per_minute):
    # At most one API request per taxon here (and one in all at 1 a minute), so nothing waits.
    taxa = TAXA[:1] if per_minute == 1 else TAXA[:2]
    with FakeINaturalist.with_taxa(taxa, observations_per_taxon=3) as inat:
        config = config_for(inat, requests_per_minute=per_minute, requests_per_day=10_000)
        records = acquire_inaturalist(config, make_catalog(taxa), tmp_path)
        assert len(records) == 6 * len(taxa) and inat.count("api") == len(taxa)
    assert acquisition_report(tmp_path)["run"]["api_requests"] == len(taxa)


def test_requests_per_minute_25_in_a_run_configuration(tmp_path):
    taxa = load_catalog().taxon_ids[:2]
    with FakeINaturalist.with_taxa(taxa, observations_per_taxon=4, max_per_page=2) as inat:
        inaturalist = {**config_for(inat).model_dump(), "requests_per_minute": 25, "requests_per_day": 10_000}
        config = DatasetConfig(source="inaturalist", species=taxa, inaturalist=inaturalist)
        assert config.inaturalist.requests_per_minute == 25
        records = build_dataset(config, tmp_path)
        assert len(records) == 16 and inat.count("api") == 4  # 2 pages per taxon, within the burst of 5


def test_retries_of_429_and_500_storms_stay_within_the_rate_limit(tmp_path, monkeypatch):
    # Time compressed: a "minute" of the limiter lasts MINUTE seconds; the server's request log must
    # never show more than requests_per_minute API requests within any MINUTE seconds, retries included.
    minute, per_minute = 2.0, 4
    monkeypatch.setattr(inat_api, "MINUTE_S", minute)
    with FakeINaturalist.with_taxa(TAXA[:2], observations_per_taxon=6, max_per_page=2) as inat:
        inat.inject_api_fault("429", times=2)  # Retry-After: 1
        inat.inject_api_fault("500", times=6)  # backoff of 10-20 ms: at wire speed without the limiter
        inat.inject_photo_fault(inat.photos_of(TAXA[0])[0].id, "500", times=2)
        config = config_for(inat, requests_per_minute=per_minute, max_retries=8)
        records = acquire_inaturalist(config, make_catalog(TAXA[:2]), tmp_path)
        inat.wait_idle()

        assert len(records) == 24
        assert (inat.count("api:429"), inat.count("api:500"), inat.count("api:200")) == (2, 6, 6)
        assert inat.max_in_window(minute, "api") <= per_minute
        card = acquisition_report(tmp_path)["run"]
        assert card["api_requests"] == inat.count("api") == 14  # the card counts retries
        assert card["photo_requests"] == inat.count("photo") == 26
        served = sum(len(inat.image_bytes(int(r.photo_id))) for r in records) + 2 * len(b"error 500")
        assert card["bytes_downloaded"] == served
        markdown = (tmp_path / "DATASET_CARD.md").read_text(encoding="utf-8")
        assert "14 API and 26 photo requests sent (retries included)" in markdown


def test_a_spent_daily_budget_stops_cleanly(tmp_path, monkeypatch):
    monkeypatch.setattr(inat_api, "MINUTE_S", 0.01)  # a "day" of 14.4 s: the 4th request would wait ~14 s
    with FakeINaturalist.with_taxa(TAXA[:2], observations_per_taxon=6, max_per_page=2) as inat:
        config = config_for(inat, requests_per_minute=2, requests_per_day=3)
        with pytest.raises(AcquisitionInterrupted, match=r"request budget \(requests_per_day=3\) is used up") as err:
            acquire_inaturalist(config, make_catalog(TAXA[:2]), tmp_path)
        assert "rerun the same command to resume" in str(err.value)
        assert inat.count("api") == 3
    assert sum(e["event"] == "page" for e in _journal_events(tmp_path)) == 3


def test_backoff_waits_from_the_first_retry_with_jitter(tmp_path):
    retry = Backoff(total=5, backoff_factor=1.0, backoff_max=3.0)
    waits = []
    for n in range(1, 4):
        retry = retry.increment("GET", "http://x/", error=requests.ConnectionError("refused"))
        samples = [retry.get_backoff_time() for _ in range(200)]
        nominal = min(3.0, 2 ** (n - 1))
        assert all(nominal / 2 <= w <= nominal for w in samples)
        assert max(samples) - min(samples) > nominal / 4  # jittered, not a fixed wait
        waits.append(nominal)
    assert waits == [1.0, 2.0, 3.0]  # 1, 2, 4 capped at backoff_max

    with FakeINaturalist.with_taxa(TAXA[:1], observations_per_taxon=2, hang_s=HANG_S) as inat:
        first = inat.photos_of(TAXA[0])[0].id
        inat.inject_api_fault("500", times=2)
        inat.inject_api_fault("timeout")
        inat.inject_photo_fault(first, "500")
        config = config_for(inat, backoff_factor=0.2, backoff_max=5.0, timeout_s=SHORT_TIMEOUT_S)
        acquire_inaturalist(config, make_catalog(TAXA[:1]), tmp_path)
        inat.wait_idle()
        api = sorted((r for r in inat.log if r.kind == "api"), key=lambda r: r.arrived)
        assert [r.fault for r in api] == ["500", "500", "timeout", None]
        assert api[1].arrived - api[0].time >= 0.1  # retry 1: 0.1-0.2 s (urllib3 waited 0 s)
        assert api[2].arrived - api[1].time >= 0.2  # retry 2: 0.2-0.4 s
        assert api[3].arrived - api[2].arrived >= SHORT_TIMEOUT_S + 0.4  # the read timeout, then 0.4-0.8 s
        photo = sorted((r for r in inat.log if r.photo_id == first), key=lambda r: r.arrived)
        assert [r.status for r in photo] == [500, 200] and photo[1].arrived - photo[0].time >= 0.1


# -- network and disk errors: one line through the CLI, and a rerun resumes --------------------


def _run_config(tmp_path: Path, taxa, inaturalist: INaturalistSourceConfig) -> Path:
    path = tmp_path / "run.yaml"
    config = {
        "name": "acquisition-test",
        "dataset": {"source": "inaturalist", "species": list(taxa), "inaturalist": inaturalist.model_dump()},
        "models": [{"model_name": "m", "architecture": "mobilenetv3-large"}],
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0])
    return errors[0]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_api_is_one_error_line(tmp_path, capsys):
    port = _closed_port()
    config = INaturalistSourceConfig(api_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_factor=0.01)
    out_dir = tmp_path / "out"
    assert main(["dataset", str(_run_config(tmp_path, load_catalog().taxon_ids[:2], config)), str(out_dir)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"could not connect to http://127.0.0.1:{port}/v1/observations after 2 retries" in line
    assert "rerun the same command to resume" in line and str(out_dir) in line


def test_a_network_going_down_mid_run_stops_cleanly_and_a_rerun_resumes(tmp_path, capsys):
    taxa = load_catalog().taxon_ids[:2]
    out_dir = tmp_path / "out"
    with FakeINaturalist.with_taxa(taxa, observations_per_taxon=10, max_per_page=4) as inat:
        config_path = _run_config(tmp_path, taxa, config_for(inat, backoff_factor=0.05))
        inat.hold_photos(after=12)
        status = []
        run = threading.Thread(target=lambda: status.append(main(["dataset", str(config_path), str(out_dir)])))
        run.start()
        deadline = time.monotonic() + 60
        while inat.photo_requests() <= 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        port = inat.port
        inat.stop()  # the port closes: held and later requests fail, connections are refused
        run.join(60)
        assert status == [1]
        line = _one_error_line(capsys.readouterr().err)
        assert f"could not connect to http://127.0.0.1:{port}" in line and "after 3 retries" in line
        assert "rerun the same command to resume" in line
        committed = sum(e["event"] == "photo" for e in _journal_events(out_dir))
        assert committed < 40

        inat.wait_idle()  # the held requests, released by stop(), are logged before counting again
        inat.start(port=port)
        inat.reset_counts()
        assert main(["dataset", str(config_path), str(out_dir)]) == 0
        inat.wait_idle()
        assert inat.count("photo") == 40 - committed  # only what was missing
    records = read_manifest(out_dir)
    assert [r.photo_id for r in records] == [str(p.id) for t in taxa for p in inat.photos_of(t)]
    assert_clean_rgb_jpegs(out_dir, records)


def test_a_full_disk_stops_cleanly_and_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    taxa = load_catalog().taxon_ids[:2]
    out_dir = tmp_path / "out"
    real_write = inaturalist.write_bytes_atomic
    written = []

    def write_until_full(path, data):
        if len(written) == 10:  # the 11th photo: half of it fits, then the disk is full
            with atomic_path(path) as tmp, tmp.open("wb") as handle:
                handle.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        real_write(path, data)
        written.append(path)

    with FakeINaturalist.with_taxa(taxa, observations_per_taxon=10, max_per_page=4) as inat:
        config_path = _run_config(tmp_path, taxa, config_for(inat))
        monkeypatch.setattr(inaturalist, "write_bytes_atomic", write_until_full)
        assert main(["dataset", str(config_path), str(out_dir)]) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert "No space left on device" in line and "the disk is full" in line
        assert "rerun the same command to resume" in line
        events = _journal_events(out_dir)
        assert sum(e["event"] == "photo" for e in events) == 10
        assert len(files_under(out_dir / "images")) == 10  # the partial file was removed
        pages = sum(e["event"] == "page" for e in events)

        monkeypatch.setattr(inaturalist, "write_bytes_atomic", real_write)
        inat.reset_counts()
        assert main(["dataset", str(config_path), str(out_dir)]) == 0
        inat.wait_idle()
        assert inat.count("photo") == 40 - 10 and inat.count("api") == 6 - pages  # journaled pages are not asked again
    records = read_manifest(out_dir)
    assert [r.photo_id for r in records] == [str(p.id) for t in taxa for p in inat.photos_of(t)]
    assert_clean_rgb_jpegs(out_dir, records)
