"""The report's "date as evidence" part: how many test photos had a date, and the shipped variant's
top-1 and safety figures on them without and with the month prior (:mod:`mushroom.month_prior`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from mushroom.formatting import pct
from mushroom.report.tables import Table

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation

SYNTHETIC_CAVEAT = ("The synthetic photos' dates are invented from each species' usual fruiting season, so this "
                    "effect shows the plumbing, not what dates are worth on real finds.")


class DatesPart(NamedTuple):
    """What the report says about dates: a headline, the decision, the table and a caveat."""

    headline: str
    decision: str
    table: Table
    caveat: str


def _row(split: str, figures: dict[str, Any]) -> list[list[str]]:
    rows = []
    for label, key in (("without the prior", "without"), ("with the prior", "with")):
        f = figures.get(key)
        if not f:
            continue
        rows.append([split, label, str(figures["dated"]), pct(f["top1"]), f"{f['dangerous_as_edible']} of "
                     f"{f['dangerous_photos']}", str(f["edible_verdicts"]), str(f["naive_dangerous_as_edible"])])
    return rows


def dates_part(evaluation: Evaluation, synthetic: bool = False) -> DatesPart | None:
    """The part, or None when the bundle has no month prior (nothing was measured)."""
    effect = evaluation.month_prior
    if effect is None:
        return None
    test, val = effect.test, effect.validation
    change = "" if test.get("top1_change") is None else \
        f"; on them the month prior changes top-1 by {test['top1_change']:+.1f} points"
    headline = (f"{test['dated']} of {test['photos']} test photos had a date ({val['dated']} of {val['photos']} "
                f"validation photos){change} ({effect.variant}, {effect.fitted_species} of {effect.num_species} "
                f"species with a season).")
    decision = (f"The shipped answer {'uses' if effect.used else 'leaves out'} the month prior: {effect.reason}.")
    table = Table(["split", "", "dated photos", "top-1", "dangerous called edible", "'edible' verdicts",
                   "dangerous at naive P(edible) >= 0.5"],
                  _row("validation", val) + _row("test", test), "The date as evidence")
    return DatesPart(headline, decision, table, SYNTHETIC_CAVEAT if synthetic else "")
