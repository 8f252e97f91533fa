"""The report's answer levels and FungiCLEF part, for the shipped variant.

How often ``identify`` names a species, a genus or neither and how often each is right, on the
validation split (where the thresholds were fitted) and the test split; a risk-coverage table over
the three levels; and FungiCLEF 2023's costs (Tracks 1-4, macro F1) of the answers on the test
split and held-out unknown species, beside the 2023 winner's for scale (:mod:`mushroom.level_eval`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from mushroom.formatting import DASH, fmt, pct
from mushroom.fungiclef import WINNER_2023
from mushroom.report.tables import Table

if TYPE_CHECKING:
    from mushroom.evaluation import AnswerLevels, Evaluation, FungiClefFigures, LevelFigures

FUNGICLEF_MEANING = (
    "FungiCLEF 2023's costs of the shipped variant's answers, lower is better: Track 1 the classification error; "
    "Track 2 (100 x poisonous answered edible + 1 x edible answered not edible) per photo; Track 3 their sum; "
    "Track 4 (10 x unknown species named as a known one + 0.1 x known species answered unknown) per photo. A "
    "species answer counts as its species' edibility, a genus answer as the genus's worst case, an abstention as "
    "'unknown' and 'not edible'. The benchmark's own data differ (1,604 species of Danish photos, its private test "
    "set), so compare scales, not ranks.")


class LevelsPart(NamedTuple):
    """What the report says about answer levels and FungiCLEF's costs (None: not measured)."""

    rule: str  # the thresholds in a sentence
    levels: Table | None
    risk_coverage: Table | None
    fungiclef: Table | None
    fungiclef_meaning: str
    notes: list[str]


def _accuracy(share) -> str:
    return DASH if share.accuracy is None else pct(share.accuracy)


def _level_rows(split: str, figures: LevelFigures) -> list[str]:
    return [split, str(figures.photos), pct(figures.species.share), _accuracy(figures.species),
            pct(figures.genus.share), _accuracy(figures.genus), pct(figures.abstain.share)]


def _rule_line(variant: str, levels: AnswerLevels) -> str:
    species = ("never names a species" if levels.species_threshold is None
               else f"names the species when its calibrated probability is at least {fmt(levels.species_threshold, 3)}")
    genus = ("never names a genus" if levels.genus_threshold is None
             else f"else the genus when its species' summed probability is at least {fmt(levels.genus_threshold, 3)}")
    target = "" if levels.target is None else (
        f" (fitted on the validation split: the calibrated probability and the answers' share right on validation "
        f"must both reach {pct(levels.target)})")
    return f"{variant} {species}, {genus}, else neither{target}."


def levels_table(levels: AnswerLevels) -> Table:
    """Each level's share and accuracy on validation and test."""
    return Table(["split", "photos", "species named", "right when species named", "genus named",
                  "right when genus named", "neither (abstained)"],
                 [_level_rows("validation", levels.validation), _level_rows("test", levels.test)], "Answers by level")


def level_risk_table(levels: AnswerLevels) -> Table:
    """Risk-coverage over the levels: species alone, species or genus, every photo named at species level."""
    rows = []
    for split, figures in (("validation", levels.validation), ("test", levels.test)):
        for row in figures.risk_coverage:
            rows.append([split, row.answered, pct(row.coverage), DASH if row.risk is None else pct(row.risk)])
    return Table(["split", "answers given", "coverage", "risk (wrong among them)"], rows,
                 "Risk and coverage over the answer levels")


def fungiclef_table(costs: FungiClefFigures) -> Table:
    """The shipped variant's Tracks 1-4 and macro F1, with the 2023 winner's for scale."""
    photos = f"{costs.photos} ({costs.known_photos} test, {costs.unknown_photos} unknown species)"
    return Table(["answers of", "photos", "Track 1", "Track 2", "Track 3", "Track 4", "macro F1"],
                 [["this run's shipped variant", photos, fmt(costs.track1, 3), fmt(costs.track2, 3),
                   fmt(costs.track3, 3), fmt(costs.track4, 3), fmt(costs.macro_f1, 3)],
                  ["FungiCLEF 2023 winner (its private test set; not comparable data)", DASH,
                   fmt(WINNER_2023["track1"], 3), fmt(WINNER_2023["track2"], 3), fmt(WINNER_2023["track3"], 3),
                   fmt(WINNER_2023["track4"], 3), DASH]],
                 "FungiCLEF 2023's costs")


def levels_part(evaluation: Evaluation) -> LevelsPart | None:
    """The part for the shipped variant, or None where neither levels nor costs were measured."""
    key = evaluation.shipped_key
    variant = evaluation.variants.get(key) if key else None
    if variant is None or (variant.levels is None and variant.fungiclef is None):
        return None
    levels, costs = variant.levels, variant.fungiclef
    notes = list(levels.notes) if levels is not None else []
    if costs is not None and costs.unknown_photos:
        notes.append(f"{costs.unknown_photos} of the {costs.photos} photos FungiCLEF's costs are over are of held-out "
                     f"unknown species ({pct(costs.unknown_photos / costs.photos)}): how this run's test set is made "
                     "weighs Tracks 2 and 4, another reason not to rank it against the benchmark")
    if costs is not None and costs.unknown_photos == 0:
        notes.append("no held-out unknown-species photos: Track 4 counts only known photos answered 'unknown'")
    if costs is not None and costs.unknown_edibility_unknown:
        notes.append(f"{costs.unknown_edibility_unknown} unknown-species photos of unknown edibility count in N only "
                     "for Track 2")
    return LevelsPart(
        rule=_rule_line(evaluation.shipped_variant, levels) if levels is not None else "",
        levels=levels_table(levels) if levels is not None else None,
        risk_coverage=level_risk_table(levels) if levels is not None else None,
        fungiclef=fungiclef_table(costs) if costs is not None else None,
        fungiclef_meaning=FUNGICLEF_MEANING, notes=notes)


def levels_markdown(part: LevelsPart | None) -> list[str]:
    """The part as Markdown lines for ``summary.md`` (nothing when None)."""
    from mushroom.formatting import md_table

    if part is None:
        return []
    lines: list[str] = []
    if part.levels is not None:
        lines += ["", "## Answers by level", "", part.rule, "", md_table(part.levels.header, part.levels.rows), "",
                  md_table(part.risk_coverage.header, part.risk_coverage.rows)]
    if part.fungiclef is not None:
        lines += ["", "## FungiCLEF 2023's costs", "", part.fungiclef_meaning, "",
                  md_table(part.fungiclef.header, part.fungiclef.rows)]
    lines += [f"\n> {note}" for note in part.notes]
    return lines
