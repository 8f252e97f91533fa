"""``identify``'s three answer levels on a real bundle: the species, the genus when only the genus is
certain enough (with its species and worst edibility), or neither; the lookalike veto at each level;
the text and ``--json`` forms; and the evaluation of the levels and FungiCLEF's costs on the run's
real outputs.

Runs on the ``trained_run`` bundle: a tiny model trained on synthetic drawings of the demo's
species, two Amanitas among them (Amanita muscaria, poisonous; Amanita phalloides, deadly).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mushroom import cli
from mushroom.bundle import read_bundle, read_calibration, write_calibration
from mushroom.identify import Identifier
from mushroom.identify_text import format_answer
from mushroom.levels import ABSTAIN, GENUS, SPECIES, Genera, LevelRule, answer_levels, level_figures
from mushroom.policy import EDIBLE, NOT_EDIBLE, UNCERTAIN, apply_temperature
from mushroom.preprocess import load_image
from mushroom.variants import evaluation_key


@pytest.fixture(scope="module")
def bundle_dir(trained_run) -> Path:
    return Path(trained_run["calibrated_bundle"])


def with_levels(bundle_dir: Path, dest: Path, rule: LevelRule, edible_threshold: float | None = None) -> Path:
    """A copy of the bundle whose shipped variant has level rule ``rule`` (and, if given, that edible threshold)."""
    shutil.copytree(bundle_dir, dest)
    bundle = read_bundle(dest)
    calibration = read_calibration(dest)
    key = evaluation_key(bundle.shipped_variant)
    variant = replace(calibration.variants[key], levels=rule)
    if edible_threshold is not None:
        fitted = variant.calibrated
        variant = replace(variant, calibrated=replace(fitted, policy=replace(fitted.policy, temperature=1.0,
                                                                              edible_threshold=edible_threshold,
                                                                              not_edible_below=0.0)))
    write_calibration(dest, replace(calibration, variants={**calibration.variants, key: variant}))
    return dest


def probs_of(catalog, **by_name) -> np.ndarray:
    probs = np.zeros(len(catalog), np.float32)
    for name, p in by_name.items():
        probs[catalog.index_of(catalog.resolve(name.replace("_", " ")).taxon_id)] = p
    return probs


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["identify", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_species_genus_and_neither_in_words_and_json(bundle_dir, tmp_path):
    # Made-up probabilities carry no features: the open-set rule is left out of these answers.
    identifier = Identifier(with_levels(bundle_dir, tmp_path / "b", LevelRule(0.8, 0.7, True, 0.9, 5)), open_set=False)
    catalog = identifier.bundle.catalog

    species = identifier.answer("p.jpg", probs_of(catalog, Boletus_edulis=0.95, Pleurotus_ostreatus=0.05))
    assert species.level == SPECIES and species.genus is None
    assert "answer:    species Boletus edulis (Penny Bun), 95.0%" in format_answer(species)
    assert species.to_dict()["level"] == "species" and species.to_dict()["genus"] is None

    torn = identifier.answer("p.jpg", probs_of(catalog, Amanita_muscaria=0.45, Amanita_phalloides=0.4,
                                                Boletus_edulis=0.1, Pleurotus_ostreatus=0.05))
    assert torn.level == GENUS
    assert torn.genus.genus == "Amanita" and torn.genus.probability == pytest.approx(0.85)
    assert torn.genus.species == ("Amanita muscaria", "Amanita phalloides")
    assert torn.genus.worst_edibility == "deadly"
    assert torn.verdict == NOT_EDIBLE  # the genus's worst case
    text = format_answer(torn)
    assert "answer:    genus Amanita, species uncertain (85.0% for the genus, its species together)" in text
    assert "genus:     this genus holds DEADLY species; its species this model knows: Amanita muscaria, " \
           "Amanita phalloides" in text
    assert "Not permission to eat" in text
    doc = torn.to_dict()
    assert doc["level"] == "genus" and doc["genus"]["genus"] == "Amanita"
    assert doc["genus"]["worst_edibility"] == "deadly" and doc["genus"]["threshold"] == 0.7
    assert doc["genus"]["species"] == ["Amanita muscaria", "Amanita phalloides"]

    unsure = identifier.answer("p.jpg", probs_of(catalog, Amanita_muscaria=0.35, Boletus_edulis=0.3,
                                                  Pleurotus_ostreatus=0.2, Amanita_phalloides=0.15))
    assert unsure.level == ABSTAIN and unsure.genus is None  # Amanita 0.5 < 0.7
    assert "answer:    neither the species nor the genus is certain enough - ask an expert" in format_answer(unsure)
    assert unsure.to_dict()["level"] == "abstain"


def test_the_lookalike_veto_stays_at_every_level(bundle_dir, tmp_path):
    # 'edible' at any P(edible) (threshold 0): only the veto and the genus's worst case stop it.
    identifier = Identifier(with_levels(bundle_dir, tmp_path / "b", LevelRule(0.9, 0.7, True), edible_threshold=0.0),
                            open_set=False)
    catalog = identifier.bundle.catalog
    calm = identifier.answer("p.jpg", probs_of(catalog, Boletus_edulis=0.995, Pleurotus_ostreatus=0.005))
    assert calm.level == SPECIES and calm.verdict == EDIBLE
    vetoed = identifier.answer("p.jpg", probs_of(catalog, Boletus_edulis=0.95, Amanita_phalloides=0.05))
    assert vetoed.level == SPECIES and vetoed.verdict == UNCERTAIN
    assert [w.scientific_name for w in vetoed.lookalikes] == ["Amanita phalloides"]
    # Neither level: Boletus 0.6 is not sure enough, and the deadly lookalike still vetoes 'edible'.
    neither = identifier.answer("p.jpg", probs_of(catalog, Boletus_edulis=0.6, Pleurotus_ostreatus=0.3,
                                                   Amanita_phalloides=0.1))
    assert neither.level == ABSTAIN and neither.verdict == UNCERTAIN and neither.lookalikes
    assert "WARNING:   possible DEADLY lookalike" in format_answer(neither)
    # Genus: the top answer itself is deadly and the genus holds deadly species: never 'edible'.
    genus = identifier.answer("p.jpg", probs_of(catalog, Amanita_phalloides=0.5, Amanita_muscaria=0.45,
                                                 Boletus_edulis=0.05))
    assert genus.level == GENUS and genus.verdict == NOT_EDIBLE and genus.top_danger == "deadly"
    text = format_answer(genus)
    assert "WARNING:   top answer is DEADLY: Amanita phalloides" in text and "not edible" in text


def test_an_old_bundle_names_the_species_as_before(bundle_dir, tmp_path):
    """A calibration.json of version 3 knows no levels: every answer names its species, no genus."""
    dest = shutil.copytree(bundle_dir, tmp_path / "b")
    data = json.loads((dest / "calibration.json").read_text())
    for entry in data["variants"].values():
        entry.pop("levels", None)
    (dest / "calibration.json").write_text(json.dumps({**data, "schema_version": 3}))
    identifier = Identifier(dest, open_set=False)
    assert identifier.levels is None
    torn = identifier.answer("p.jpg", probs_of(identifier.bundle.catalog, Amanita_muscaria=0.5,
                                                Amanita_phalloides=0.5))
    assert torn.level == SPECIES and torn.genus is None


def _amanita_photos(trained_run, split: str) -> dict[str, list[str]]:
    from mushroom.datasets import load_split

    data = load_split(trained_run["dataset"], trained_run["splits"], split)
    names = [s.scientific_name for s in data.catalog]
    out: dict[str, list[str]] = {"Amanita muscaria": [], "Amanita phalloides": []}
    for path, label in zip(data.paths, data.labels, strict=True):
        if names[int(label)] in out:
            out[names[int(label)]].append(path)
    return out


def _blends(photos: dict[str, list[str]], folder: Path):
    """The Amanita test photos, then blends of a photo of each Amanita (weights 0.2-0.8), as files."""
    yield from photos["Amanita muscaria"] + photos["Amanita phalloides"]
    for a, b in zip(photos["Amanita muscaria"], photos["Amanita phalloides"], strict=False):
        first, second = (np.asarray(Image.open(p).convert("RGB"), np.float32) for p in (a, b))
        for weight in np.linspace(0.2, 0.8, 13):
            path = folder / f"blend_{Path(a).stem}_{Path(b).stem}_{weight:.2f}.png"
            Image.fromarray(np.clip(weight * first + (1 - weight) * second, 0, 255).astype(np.uint8)).save(path)
            yield str(path)


def test_a_photo_uncertain_between_the_amanitas_gets_a_genus_answer(trained_run, bundle_dir, tmp_path, capsys):
    """Real photos read by the real model: the Amanita test photos, then blends of a photo of each
    Amanita. One whose species is not certain enough but whose genus is (the two Amanitas together)
    is answered 'Amanita', with the genus's worst edibility, in words and in JSON.

    With the bundle's own fitted levels where they give such an answer (the evaluate stage's, on its
    validation split). The fixture's tiny model is retrained every session and on a few hundred
    drawings may fit no genus threshold, or be too sure of every blend: then the levels are set on
    a copy of the bundle between the most torn Amanita photo's top species and its genus (the
    fitting itself is tested in tests/test_levels.py), and everything after that is the same."""
    bundle = read_bundle(bundle_dir)
    rule = bundle.calibration.variant(bundle.shipped_variant).levels
    assert rule is not None and rule.fitted, "the evaluate stage fitted no answer levels"
    identifier = Identifier(bundle)
    catalog, genera = bundle.catalog, Genera.of(bundle.catalog)
    amanitas = [catalog.index_of(catalog.resolve(name).taxon_id) for name in ("Amanita muscaria", "Amanita phalloides")]
    torn, seen, most_torn = None, [], (0.0, None)
    for path in _blends(_amanita_photos(trained_run, "test"), tmp_path):
        answer = identifier.identify(path)
        if answer.ok and answer.candidates:
            seen.append((answer.level, [(c.scientific_name, round(c.probability, 3)) for c in answer.candidates[:2]]))
        if answer.ok and answer.level == GENUS and answer.genus.genus == "Amanita":
            torn = path
            break
        probs = identifier.calibrated(load_image(path, identifier.image_size)[None])[0]
        if answer.ok and int(np.argmax(probs)) in amanitas and probs[amanitas].sum() - probs.max() > most_torn[0]:
            most_torn = (float(probs[amanitas].sum() - probs.max()), path)
    if torn is None:  # the bundle's own levels gave no genus answer: set them around the most torn photo
        gap, torn = most_torn
        assert torn is not None and gap > 1e-3, f"no Amanita photo or blend is torn between the two: {seen}"
        probs = identifier.calibrated(load_image(torn, identifier.image_size)[None])[0]
        middle = float(probs.max() + gap / 2)
        bundle_dir = with_levels(bundle_dir, tmp_path / "levels", LevelRule(middle, middle, True, 0.9, 5))
        bundle = read_bundle(bundle_dir)
        rule = bundle.calibration.variant(bundle.shipped_variant).levels
        identifier = Identifier(bundle)
    probs = identifier.calibrated(load_image(torn, identifier.image_size)[None])[0]
    assert catalog.species[int(np.argmax(probs))].genus == "Amanita"
    assert probs.max() < rule.species_threshold <= 1.0  # the species is uncertain ...
    assert probs[amanitas].sum() >= rule.genus_threshold  # ... the two Amanitas together are not
    assert answer_levels(probs[None], genera, rule).level[0] == GENUS

    code, out, err = run_cli(capsys, torn, "--bundle", bundle_dir)
    assert code == 0, err
    assert "answer:    genus Amanita, species uncertain" in out
    assert "this genus holds DEADLY species; its species this model knows: Amanita muscaria, Amanita phalloides" in out
    assert "verdict:   not edible" in out and "NEVER gives permission to eat" in out
    code, out, err = run_cli(capsys, torn, "--bundle", bundle_dir, "--json")
    assert code == 0, err
    doc = json.loads(out)
    result = doc["results"][0]
    assert result["level"] == "genus" and result["verdict"] == NOT_EDIBLE
    assert result["genus"]["genus"] == "Amanita" and result["genus"]["worst_edibility"] == "deadly"
    assert result["genus"]["species"] == ["Amanita muscaria", "Amanita phalloides"]
    assert doc["levels"] == {"species": 0, "genus": 1, "abstain": 0}
    assert doc["bundle"]["levels"]["genus_threshold"] == rule.genus_threshold  # the thresholds applied
    assert doc["bundle"]["levels"]["species_threshold"] == rule.species_threshold


def test_evaluation_reports_levels_and_fungiclef_costs_from_the_real_outputs(trained_run, bundle_dir):
    from mushroom.evaluation import read_evaluation

    evaluation = read_evaluation(trained_run["evaluation"])
    shipped = evaluation.variants[evaluation.shipped_key]
    levels, costs = shipped.levels, shipped.fungiclef
    assert levels is not None and costs is not None
    bundle = read_bundle(bundle_dir)
    rule = bundle.calibration.variant(bundle.shipped_variant).levels
    assert (levels.species_threshold, levels.genus_threshold) == (rule.species_threshold, rule.genus_threshold)
    # The figures are those of the saved predictions under the bundle's calibration.
    saved = np.load(Path(trained_run["evaluation"]) / "predictions.npz")
    key = evaluation.shipped_key
    for split, labels, probs in (("validation", saved["val_labels"], saved[f"val_{key}"]),
                                 ("test", saved["labels"], saved[key])):
        expected = level_figures(labels, apply_temperature(probs, shipped.temperature), bundle.catalog, rule)
        figures = getattr(levels, split).model_dump()
        assert figures["photos"] == len(labels)
        for level in (SPECIES, GENUS, ABSTAIN):
            assert figures[level]["photos"] == expected[level]["photos"], (split, level)
            assert figures[level]["accuracy"] == pytest.approx(expected[level]["accuracy"])
        assert sum(figures[level]["photos"] for level in (SPECIES, GENUS, ABSTAIN)) == len(labels)
        coverage = [row["coverage"] for row in figures["risk_coverage"]]
        assert coverage == sorted(coverage) and coverage[-1] == 1.0
        assert figures["risk_coverage"][-1]["risk"] == pytest.approx(1 - float(np.mean(probs.argmax(1) == labels)))
    # FungiCLEF: the test split and the held-out unknown species, each photo answered once.
    assert costs.known_photos == evaluation.num_test_photos
    assert costs.photos == costs.known_photos + costs.unknown_photos
    assert sum(costs.levels.values()) == costs.photos
    assert costs.track3 == pytest.approx(costs.track1 + costs.track2)
    assert 0.0 <= costs.track1 <= 1.0 and 0.0 <= costs.macro_f1 <= 1.0
    assert costs.track4 <= 10.0 and costs.track2 <= 100.0
    held_out = shipped.open_set.kinds.get("unknown_held_out") if shipped.open_set else None
    assert costs.unknown_photos == (held_out.photos if held_out is not None else 0)
