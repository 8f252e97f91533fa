"""The date as evidence: the month prior's fit and use (mushroom.month_prior), and dates flowing from
every source into the manifest, the prior, the bundle and identify."""

from __future__ import annotations

import io
import json
import shutil
import struct
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mushroom.manifest import PhotoRecord, parse_records, read_manifest, records_to_csv
from mushroom.month_prior import (
    MonthPrior,
    PhotoDate,
    PriorDecision,
    date_evidence,
    exif_date,
    fit_month_prior,
    fruiting_months,
    judge_prior,
    measure_prior,
    month_of,
    parse_date,
    parse_months,
    smooth_counts,
)
from mushroom.policy import apply_temperature
from mushroom.species import load_catalog

TODAY = date(2025, 6, 1)


def _records(taxon_id: int, months: list[int], photos_per_observation: int = 1) -> list[PhotoRecord]:
    records = []
    for i, month in enumerate(months):
        for p in range(photos_per_observation):
            records.append(PhotoRecord(f"{taxon_id}-{i}", f"{taxon_id}-{i}-{p}", taxon_id, f"images/{i}-{p}.jpg",
                                       "cc0", "me", observed_on=f"2022-{month:02d}-15" if month else ""))
    return records


def _jpeg(path: Path, when: str | None = None, colour=(120, 90, 60), source: Path | None = None) -> Path:
    """A JPEG of ``source``'s pixels (default: one colour) with ``when`` as its EXIF DateTimeOriginal."""
    image = Image.open(source).convert("RGB") if source else Image.fromarray(np.full((48, 48, 3), colour, np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    if when is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[36867] = when
        image.save(path, exif=exif)
    return path


def _broken_exif_jpeg(path: Path, source: Path | None = None) -> Path:
    """A JPEG (of ``source``'s pixels, or grey) whose APP1 EXIF block is not a TIFF structure."""
    buf = io.BytesIO()
    image = Image.open(source).convert("RGB") if source else Image.fromarray(np.full((48, 48, 3), 90, np.uint8))
    image.save(buf, "JPEG")
    data = buf.getvalue()
    payload = b"Exif\x00\x00" + b"not a tiff header at all" * 3
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:])
    return path


# --------------------------------------------------------------------------- dates


def test_parse_date_accepts_a_find_and_refuses_the_future_the_distant_past_and_nonsense():
    assert parse_date("2024-09-14", TODAY) == date(2024, 9, 14)
    assert parse_date(" 1900-01-01 ", TODAY) == date(1900, 1, 1)
    with pytest.raises(ValueError, match="is in the future"):
        parse_date("2025-06-02", TODAY)
    with pytest.raises(ValueError, match="before 1900"):
        parse_date("1899-12-31", TODAY)
    for text in ("2024-13-01", "2024-02-30", "14.09.2024", "yesterday", "2024-9-14", ""):
        with pytest.raises(ValueError, match="is not a date of the form YYYY-MM-DD"):
            parse_date(text, TODAY)


def test_month_of_reads_manifest_dates_and_gives_0_for_none():
    assert month_of("2023-12-31") == 12 and month_of("2023-01-05T10:00:00+01:00") == 1
    assert month_of("") == 0 and month_of("not a date") == 0 and month_of(None) == 0


def test_exif_date_reads_date_time_original_and_says_what_is_wrong(tmp_path):
    assert exif_date(_jpeg(tmp_path / "a.jpg", "2023:10:05 14:30:00")) == PhotoDate(date(2023, 10, 5), "exif")
    assert exif_date(_jpeg(tmp_path / "none.jpg")) == PhotoDate()  # no EXIF: no date, nothing to say
    png = tmp_path / "p.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    assert exif_date(png) == PhotoDate()
    broken = exif_date(_broken_exif_jpeg(tmp_path / "broken.jpg"))
    assert broken.value is None and "EXIF block cannot be read" in broken.notice
    zeros = exif_date(_jpeg(tmp_path / "z.jpg", "0000:00:00 00:00:00"))
    assert zeros.value is None and "is not a date" in zeros.notice
    future = exif_date(_jpeg(tmp_path / "f.jpg", "2999:01:01 00:00:00"))
    assert future.value is None and "in the future" in future.notice
    old = exif_date(_jpeg(tmp_path / "o.jpg", "1850:01:01 00:00:00"))
    assert old.value is None and "before 1900" in old.notice


# --------------------------------------------------------------------------- fruiting seasons


def test_fruiting_months_cover_the_catalog_and_ranges_wrap_around_the_year():
    assert parse_months("8-11") == (8, 9, 10, 11)
    assert parse_months("10-3") == (1, 2, 3, 10, 11, 12)
    assert parse_months("1-12") == tuple(range(1, 13))
    assert parse_months("4-5,9") == (4, 5, 9)
    with pytest.raises(ValueError, match="not within 1-12"):
        parse_months("0-3")
    seasons = fruiting_months()
    assert set(load_catalog().taxon_ids) <= set(seasons)
    assert seasons[load_catalog().resolve("Pleurotus ostreatus").taxon_id] == (1, 2, 3, 10, 11, 12)


# --------------------------------------------------------------------------- the prior


def test_smoothing_wraps_december_to_january_and_no_month_is_impossible():
    counts = np.zeros(12)
    counts[11] = 20  # every find in December
    p = smooth_counts(counts)
    assert p.sum() == pytest.approx(1.0) and (p > 0).all()
    assert p[0] == pytest.approx(p[10]) and p[0] > 5 * p[5]  # January is as close to December as November
    assert p.argmax() == 11


def test_fit_counts_each_dated_observation_once_and_keeps_the_flat_prior_for_few():
    autumn = _records(1, [9, 10, 10, 11] * 3, photos_per_observation=3)  # 12 observations, 36 photos
    few = _records(2, [6] * 5)  # 5 dated observations: too few
    undated = _records(3, [0] * 30)
    stranger = _records(99, [1] * 20)  # not a class: skipped
    prior = fit_month_prior([1, 2, 3], autumn + few + undated + stranger, min_observations=10)
    assert prior.taxon_ids == (1, 2, 3)
    assert prior.dated_observations == (12, 5, 0)
    assert prior.fitted == (True, False, False)
    assert np.allclose(prior.likelihood.sum(axis=1), 1.0)
    assert np.allclose(prior.likelihood[1:], 1 / 12)
    autumn_row = prior.likelihood[0]
    assert autumn_row[9] == autumn_row.max() and autumn_row[9] > 5 * autumn_row[3]  # October >> April


def test_apply_multiplies_in_the_month_and_leaves_undated_rows_alone():
    prior = fit_month_prior([1, 2], _records(1, [10] * 12) + _records(2, [4] * 12))
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.7, 0.3]])
    out = prior.apply(probs, [10, 4, 0])
    assert out[0, 0] > 0.9 and out[1, 1] > 0.9
    assert np.allclose(out[2], probs[2])
    assert np.allclose(out.sum(axis=1), 1.0)
    assert np.allclose(prior.apply(probs[0], 10), out[0])  # one row
    with pytest.raises(ValueError, match="1-12"):
        prior.apply(probs, [13, 1, 1])


def test_applied_to_calibrated_probabilities_it_equals_applying_it_before_calibration():
    rng = np.random.default_rng(0)
    prior = fit_month_prior([1, 2, 3], _records(1, [10] * 12) + _records(2, [4] * 12) + _records(3, [7] * 12))
    raw = rng.dirichlet(np.ones(3), size=20)
    months = rng.integers(0, 13, size=20)
    for temperature in (0.5, 1.0, 2.3):
        before = apply_temperature(prior.apply(raw, months), temperature)
        after = prior.apply(apply_temperature(raw, temperature), months, temperature)
        assert np.allclose(before, after, atol=1e-5)


def test_json_round_trip_keeps_everything_and_checks_the_classes():
    prior = fit_month_prior([1, 2], _records(1, [10] * 12))
    judged = prior.with_decision(PriorDecision(True, "helps", "int8", {"dated": 3}))
    back = MonthPrior.from_json(json.loads(json.dumps(judged.to_json())))
    assert back.taxon_ids == (1, 2) and back.fitted == (True, False) and back.dated_observations == (12, 0)
    assert np.allclose(back.likelihood, prior.likelihood, atol=1e-6)
    assert back.decision == judged.decision and back.in_use
    assert MonthPrior.from_json(prior.to_json()).decision is None and not MonthPrior.from_json(prior.to_json()).in_use
    back.check([1, 2])
    with pytest.raises(ValueError, match="classes differ"):
        back.check([2, 1])
    with pytest.raises(ValueError, match="newer"):
        MonthPrior.from_json({**prior.to_json(), "schema_version": 99})
    with pytest.raises(ValueError, match="malformed"):
        MonthPrior.from_json({"schema_version": 1})


def test_judging_keeps_it_only_when_validation_top1_rises_and_safety_does_not_fall():
    # Class 0 edible (in October), class 1 deadly (in April); the image model cannot tell them apart.
    prior = fit_month_prior([1, 2], _records(1, [10] * 12) + _records(2, [4] * 12))
    edible, dangerous = np.array([True, False]), np.array([False, True])
    labels = np.array([0, 0, 1, 1])
    raw = np.array([[0.45, 0.55], [0.45, 0.55], [0.55, 0.45], [0.55, 0.45]])
    seasonal = measure_prior(prior, labels, raw, [10, 10, 4, 4], 1.0, 0.9, edible, dangerous)
    assert seasonal["dated"] == 4 and seasonal["without"]["top1"] == 0.0 and seasonal["with"]["top1"] == 1.0
    assert seasonal["top1_change"] == pytest.approx(100.0)
    assert judge_prior(prior, seasonal, "int8").use
    # Out of season: the prior pushes the deadly photos towards the edible species.
    wrong = measure_prior(prior, labels, raw, [4, 4, 10, 10], 1.0, 0.9, edible, dangerous)
    decision = judge_prior(prior, wrong)
    assert not decision.use and "dangerous" in decision.reason
    undated = measure_prior(prior, labels, raw, [0, 0, 0, 0], 1.0, 0.9, edible, dangerous)
    assert undated["dated"] == 0 and not judge_prior(prior, undated).use
    flat = fit_month_prior([1, 2], [])
    assert "enough dated" in judge_prior(flat, seasonal).reason


def test_date_evidence_says_whether_the_date_was_used_and_why_not():
    prior = fit_month_prior([1, 2], _records(1, [10] * 12))
    found = PhotoDate(date(2024, 10, 3), "--date")
    assert date_evidence(PhotoDate(), prior) is None
    assert "no month prior" in date_evidence(found, None).note
    assert "never judged" in date_evidence(found, prior).note
    left_out = date_evidence(found, prior.with_decision(PriorDecision(False, "it does not raise validation top-1")))
    assert not left_out.used and "does not raise validation top-1" in left_out.note
    used = date_evidence(found, prior.with_decision(PriorDecision(True, "helps")))
    assert used.used and used.month == 10 and "October" in used.note
    assert used.to_dict() == {"date": "2024-10-03", "source": "--date", "used": True, "note": used.note}
    broken = date_evidence(PhotoDate(notice="the photo's EXIF block cannot be read (x)"), prior)
    assert not broken.used and broken.note.endswith("answered without the date")


# --------------------------------------------------------------------------- sources -> manifest


def test_old_manifests_without_dates_still_read_and_new_ones_round_trip():
    old = "observation_id,photo_id,taxon_id,file,license,attribution\no1,p1,48715,images/p1.jpg,cc0,me\n"
    (record,) = parse_records(old, "old.csv")
    assert record.observed_on == ""
    dated = PhotoRecord("o", "p", 1, "f.jpg", "cc0", "me", observed_on="2024-09-14")
    assert parse_records(records_to_csv([dated]), "new.csv") == [dated]
    assert "observed_on" in records_to_csv([dated]).splitlines()[0]


def test_dates_flow_from_the_fake_inaturalist_server_into_the_manifest(tmp_path):
    from mushroom.manifest import write_manifest
    from mushroom.sources.inaturalist import acquire_inaturalist
    from mushroom.sources.settings import INaturalistSourceConfig
    from mushroom.testing.inat_server import FakeINaturalist

    catalog = load_catalog().subset(["Amanita muscaria", "Boletus edulis"])
    with FakeINaturalist.with_taxa(catalog.taxon_ids, observations_per_taxon=4, photos_per_observation=2) as inat:
        inat.observations[0].observed_on = ""  # iNaturalist leaves it empty where the observer gave no date
        config = INaturalistSourceConfig(api_url=inat.api_url, photos_per_species=8, photo_size="small",
                                         requests_per_minute=100_000, requests_per_day=1_000_000, concurrency=2,
                                         timeout_s=10.0, max_retries=1, backoff_factor=0.01, backoff_max=0.05,
                                         min_photo_side=64)
        records = acquire_inaturalist(config, catalog, tmp_path / "out")
        served = {str(o.id): o.observed_on for o in inat.observations}
    write_manifest(tmp_path / "out", records)
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 16 and manifest == records
    assert {r.observation_id: r.observed_on for r in manifest} == served
    assert sum(r.observed_on == "" for r in manifest) == 2  # both photos of the undated observation
    assert all(month_of(d) for d in served.values() if d)


def test_dates_flow_from_exif_in_a_photo_folder_into_the_manifest(tmp_path, caplog):
    from mushroom.config import DatasetConfig
    from mushroom.sources import build_dataset

    root = tmp_path / "photos"
    _jpeg(root / "Amanita muscaria" / "a1.jpg", "2023:10:05 14:30:00")
    _jpeg(root / "Amanita muscaria" / "a2.jpg")  # no EXIF
    _broken_exif_jpeg(root / "Boletus edulis" / "b1.jpg")
    _jpeg(root / "Boletus edulis" / "b2.jpg", "2022:08:30 08:00:00")
    records = build_dataset(DatasetConfig(source="folder", folder={"root": str(root)}), tmp_path / "ds")
    by_photo = {r.photo_id.split("/")[1]: r.observed_on for r in read_manifest(tmp_path / "ds")}
    assert by_photo == {"a1": "2023-10-05", "a2": "", "b1": "", "b2": "2022-08-30"}
    assert len(records) == 4
    assert "EXIF block cannot be read" in caplog.text and "kept without a date" in caplog.text


def test_synthetic_dates_are_invented_from_each_species_season_and_reproducible(tmp_path):
    from mushroom.config import DatasetConfig
    from mushroom.sources import build_dataset

    config = DatasetConfig(source="synthetic", species=["Pleurotus ostreatus", "Amanita muscaria"],
                           synthetic={"photos_per_species": 12, "image_size": 64, "photos_per_observation": 2})
    first = build_dataset(config, tmp_path / "a", 5)
    again = build_dataset(config, tmp_path / "b", 5)
    assert first == again == read_manifest(tmp_path / "a")
    seasons = fruiting_months()
    for record in first:
        assert record.observed_on and month_of(record.observed_on) in seasons[record.taxon_id]
        assert date.fromisoformat(record.observed_on) <= date.today()
    by_observation: dict[str, set[str]] = {}
    for record in first:
        by_observation.setdefault(record.observation_id, set()).add(record.observed_on)
    assert all(len(dates) == 1 for dates in by_observation.values())  # an observation has one date
    other = build_dataset(config, tmp_path / "c", 6)
    assert [r.observed_on for r in other] != [r.observed_on for r in first]


# --------------------------------------------------------------------------- prior -> bundle -> identify


@pytest.fixture(scope="module")
def dated_run(trained_run):
    return trained_run


def _test_photo(run) -> Path:
    """A test-split photo of the run (the quality gate takes it)."""
    from mushroom.manifest import read_splits

    row = next(r for r in read_splits(run["splits"]) if r.split == "test")
    return run["dataset"] / row.file


def _judged_copy(bundle: Path, dest: Path, use: bool | None) -> Path:
    """A copy of ``bundle`` whose month prior is judged ``use`` (None: no month_prior.json at all)."""
    from mushroom.bundle import MONTH_PRIOR, read_month_prior, write_month_prior

    shutil.copytree(bundle, dest)
    if use is None:
        (dest / MONTH_PRIOR).unlink()
    else:
        prior = read_month_prior(dest)
        write_month_prior(dest, prior.with_decision(PriorDecision(use, "set by the test")))
    return dest


def test_train_fits_the_prior_the_bundle_carries_it_and_the_evaluation_judges_it(dated_run):
    from mushroom.bundle import read_bundle, read_month_prior
    from mushroom.evaluation import read_evaluation
    from mushroom.manifest import read_splits

    catalog = read_bundle(dated_run["bundle"]).catalog
    model_prior = read_month_prior(dated_run["model"], catalog)
    bundle_prior = read_month_prior(dated_run["bundle"], catalog)
    judged = read_month_prior(dated_run["calibrated_bundle"], catalog)
    assert model_prior is not None and model_prior.any_fitted
    assert np.allclose(bundle_prior.likelihood, model_prior.likelihood) and bundle_prior.decision is None
    train = [r for r in read_splits(dated_run["splits"]) if r.split == "train"]
    assert sum(bundle_prior.dated_observations) == len({(r.taxon_id, r.observation_id) for r in train})
    seasons = fruiting_months()
    for taxon_id, row, fitted in zip(judged.taxon_ids, judged.likelihood, judged.fitted, strict=True):
        if fitted and len(seasons[taxon_id]) < 12:  # in season beats out of season
            out = [m for m in range(1, 13) if m not in seasons[taxon_id]]
            assert row[np.array(seasons[taxon_id]) - 1].min() > row[np.array(out) - 1].max()
    evaluation = read_evaluation(dated_run["evaluation"])
    effect = evaluation.month_prior
    assert effect is not None and effect.variant == read_bundle(dated_run["bundle"]).shipped_variant
    tests = [r for r in read_splits(dated_run["splits"]) if r.split == "test"]
    assert effect.test["photos"] == len(tests) and effect.test["dated"] == sum(bool(r.observed_on) for r in tests)
    assert effect.used == judged.decision.use and effect.reason == judged.decision.reason
    for split in (effect.validation, effect.test):
        assert 0.0 <= split["with"]["top1"] <= 1.0 and 0.0 <= split["without"]["top1"] <= 1.0
    html = (dated_run["evaluation"] / "report.html").read_text(encoding="utf-8")
    assert f"{effect.test['dated']} of {effect.test['photos']} test photos had a date" in html


def test_identify_date_uses_the_prior_and_says_so(dated_run, tmp_path, capsys):
    from mushroom.cli import main
    from mushroom.identify import Identifier
    from mushroom.manifest import read_splits

    bundle = _judged_copy(dated_run["calibrated_bundle"], tmp_path / "b", use=True)
    row = next(r for r in read_splits(dated_run["splits"]) if r.split == "test" and r.observed_on)
    photo = str(dated_run["dataset"] / row.file)
    plain = Identifier(bundle, photo_dates=False).identify(photo)
    assert plain.date is None
    identifier = Identifier(bundle, date=date.fromisoformat(row.observed_on))
    dated = identifier.identify(photo)
    assert dated.date.used and dated.date.source == "--date" and dated.date.date == row.observed_on
    # The prior moves the probabilities as month_prior.apply says, after calibration at the same temperature.
    probs = identifier.classifier.predict(identifier._read(photo)[0][None])
    calibrated = apply_temperature(probs, identifier.policy.temperature)[0]
    expected = identifier.month_prior.apply(calibrated, month_of(row.observed_on), identifier.policy.temperature)
    names = [s.scientific_name for s in identifier.species]
    for c in dated.candidates:
        assert c.probability == pytest.approx(float(expected[names.index(c.scientific_name)]), abs=1e-5)
    if plain.open_set_score is not None:  # the date never moves the open-set score
        assert dated.open_set_score == pytest.approx(plain.open_set_score)

    assert main(["identify", photo, "--bundle", str(bundle), "--date", row.observed_on, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["date"]["used"] is True and result["date"]["date"] == row.observed_on
    assert main(["identify", photo, "--bundle", str(bundle), "--date", row.observed_on]) == 0
    text = capsys.readouterr().out
    assert f"date:      {row.observed_on} (given with --date): the date was used" in text


def test_identify_reads_the_photo_exif_date_unless_told_not_to(dated_run, tmp_path, capsys):
    from mushroom.cli import main

    bundle = _judged_copy(dated_run["calibrated_bundle"], tmp_path / "b", use=True)
    photo = _jpeg(tmp_path / "find.jpg", "2023:10:05 14:30:00", source=_test_photo(dated_run))
    assert main(["identify", str(photo), "--bundle", str(bundle), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["date"] == {"date": "2023-10-05", "source": "exif", "used": True, "note": result["date"]["note"]}
    assert main(["identify", str(photo), "--bundle", str(bundle), "--json", "--no-date"]) == 0
    assert "date" not in json.loads(capsys.readouterr().out)["results"][0]


def test_a_broken_exif_block_is_answered_without_the_date_with_a_notice(dated_run, tmp_path, capsys):
    from mushroom.cli import main

    bundle = _judged_copy(dated_run["calibrated_bundle"], tmp_path / "b", use=True)
    photo = _broken_exif_jpeg(tmp_path / "broken.jpg", source=_test_photo(dated_run))
    assert main(["identify", str(photo), "--bundle", str(bundle)]) == 0
    text = capsys.readouterr().out
    assert "notice:    none (the photo's EXIF date): the photo's EXIF block cannot be read" in text
    assert "answered without the date" in text and "verdict:" in text


def test_a_bundle_without_a_prior_or_one_left_out_gives_a_notice_and_the_plain_answer(dated_run, tmp_path,
                                                                                         capsys):
    from mushroom.cli import main

    photo = str(_test_photo(dated_run))
    answers = {}
    for name, use in (("none", None), ("left_out", False), ("plain", None)):
        bundle = _judged_copy(dated_run["calibrated_bundle"], tmp_path / name, use=use)
        argv = ["identify", photo, "--bundle", str(bundle), "--json"] + ([] if name == "plain" else
                                                                        ["--date", "2024-09-14"])
        assert main(argv) == 0
        answers[name] = json.loads(capsys.readouterr().out)["results"][0]
    assert "no month prior" in answers["none"]["date"]["note"] and not answers["none"]["date"]["used"]
    assert "left this bundle's month prior out (set by the test)" in answers["left_out"]["date"]["note"]
    assert "date" not in answers["plain"]
    for name in ("none", "left_out"):  # the plain answer, whatever its verdict (a refusal has no "top5")
        assert {k: v for k, v in answers[name].items() if k != "date"} == answers["plain"]


@pytest.mark.parametrize("bad, says", [
    ((date.today() + timedelta(days=1)).isoformat(), "is in the future"),
    ("1899-12-31", "before 1900"),
    ("14/09/2024", "is not a date of the form YYYY-MM-DD"),
])
def test_a_bad_date_is_one_line_and_exit_2(dated_run, tmp_path, capsys, bad, says):
    from mushroom.cli import main

    photo = str(_test_photo(dated_run))
    assert main(["identify", photo, "--bundle", str(dated_run["calibrated_bundle"]), "--date", bad]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and says in captured.err
    assert captured.err.startswith("error: --date")
