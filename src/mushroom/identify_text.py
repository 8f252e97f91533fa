"""How ``identify``'s answers read: the header, each photo's answer, the footer, the ``--json`` document.

The ``mushroom identify`` command prints these (:mod:`mushroom.cli`); the answers themselves are
:mod:`mushroom.identify`'s.
"""

from __future__ import annotations

from typing import Any

from mushroom.identify import (
    NOTICE,
    SYNTHETIC_BANNER,
    UNKNOWN_SPECIES,
    UNUSABLE_PHOTO,
    Answer,
    Identifier,
    format_probability,
)
from mushroom.levels import GENUS, LEVELS, SPECIES

SPECIES_NAMED_IN_HEADER = 12  # more species than this: the header gives the count and points to --species


def describe_source(source: dict[str, Any]) -> str:
    """One line on what a bundle was trained on, from its recorded data source."""
    from mushroom.sources import registry as sources

    return f"trained on: {sources.describe(source)}"


def format_species(identifier: Identifier) -> str:
    """The table ``--species`` prints: every species the bundle knows, with its edibility."""
    lines = [f"This model knows {len(identifier.species)} species (it names no other):",
             f"  {'#':>3}  {'species':<30} {'common name':<28} {'edibility':<10} caution"]
    for i, s in enumerate(identifier.species):
        lines.append(f"  {i:>3}  {s.scientific_name:<30} {s.common_name:<28} {s.edibility:<10} {s.caution}".rstrip())
    return "\n".join(lines)


def format_header(identifier: Identifier, verbose: bool = False) -> str:
    """The lines printed once per call: notice, banner, bundle, the species it knows."""
    d = identifier.describe()
    species = identifier.species
    names = ", ".join(s.scientific_name for s in species)
    known = (f"knows {len(species)} species: {names}" if len(species) <= SPECIES_NAMED_IN_HEADER
             else f"knows {len(species)} species (`mushroom identify --species --bundle ...` lists them)")
    lines = [NOTICE, ""]
    if identifier.synthetic:
        lines += [f"*** {SYNTHETIC_BANNER} ***", ""]
    lines += [
        f"bundle: {d['path']}",
        f"model:  {d['model_name']} ({d['architecture']}, {d['variant']}, {d['image_size']} px); {known}",
        describe_source(d["data_source"]),
    ]
    weights = (identifier.bundle.metadata.get("provenance") or {}).get("backbone_weights")
    if weights:
        from mushroom.backbones import describe_weights

        lines.append(describe_weights(weights))
    rule = identifier.open_set
    unavailable = identifier.open_set_unavailable
    if unavailable is not None:
        lines.append(f"note: the open-set check is unavailable for this bundle, so a photo of any other species is "
                     f"answered as one of these: {unavailable}")
    if verbose:
        policy = identifier.policy
        levels = identifier.levels
        threshold = ("never says 'edible' (no fitted threshold)" if policy.edible_threshold is None
                     else f"'edible' only at P(edible) >= {policy.edible_threshold:.3g}")
        open_set = ("no open-set threshold" if rule is None or rule.threshold is None
                    else f"open-set score {rule.score} >= {rule.threshold:.4g} (keeps {rule.known_kept:.0%} of "
                         f"known validation photos)")
        lines.append(f"policy: temperature {policy.temperature:.3g}, {threshold}; {open_set}; "
                     f"quality gate {'on' if identifier.quality_gate else 'off'}")
        lines.append(_describe_levels(levels))
    return "\n".join(lines)


def _describe_levels(levels) -> str:
    """The answer levels' thresholds in one line (``--verbose``)."""
    if levels is None or not levels.fitted:
        return "levels: none fitted (a bundle from before answer levels): every answer names its species"
    species = ("never names a species" if levels.species_threshold is None
               else f"species at P >= {levels.species_threshold:.3g}")
    genus = ("no genus answers" if levels.genus_threshold is None
             else f"else genus at summed P >= {levels.genus_threshold:.3g}")
    return f"levels: {species}, {genus}, else neither"


def _candidate_rows(answer: Answer) -> list[str]:
    rows = [f"  {'#':>1}  {'species':<28} {'common name':<24} {'certainty':>9}  {'edibility':<9}  caution"]
    for i, c in enumerate(answer.candidates, start=1):
        rows.append(f"  {i:>1}  {c.scientific_name:<28} {c.common_name:<24} "
                    f"{format_probability(c.probability):>9}  {c.edibility:<9}  {c.caution}".rstrip())
    return rows


def format_answer(answer: Answer, verbose: bool = False) -> str:
    """A readable block for one answered photo."""
    if not answer.ok:
        return f"{answer.photo}\n  ERROR: {answer.error}"
    lines = [answer.photo]
    if answer.refused:
        lines.append(f"  verdict:   {answer.verdict_text}")
        lines += [f"  why:       {r}" for r in answer.reasons]
        if verbose and answer.open_set_score is not None and answer.open_set_threshold is not None:
            lines.append(f"  open-set score: {answer.open_set_score:.4g}, below this bundle's threshold "
                         f"{answer.open_set_threshold:.4g}")
        if verbose and answer.candidates:
            lines.append("  closest known species (NOT an identification):")
            lines += ["  " + row for row in _candidate_rows(answer)]
        lines += _date_lines(answer)
        lines.append(f"  {answer.notice}")
        return "\n".join(lines)
    lines += _candidate_rows(answer)
    if answer.top_warning:
        lines.append(f"  WARNING:   {answer.top_warning}")
    for w in answer.lookalikes:
        lines.append(f"  WARNING:   {w.message}")
    lines += _level_lines(answer)
    lines.append(f"  P(edible): {format_probability(answer.p_edible)}")
    lines.append(f"  verdict:   {answer.verdict_text}")
    lines += [f"  why:       {r}" for r in answer.reasons]
    if verbose and answer.open_set_score is not None:
        lines.append(f"  open-set score: {answer.open_set_score:.4g}")
    lines += _date_lines(answer)
    lines.append(f"  {answer.notice}")
    return "\n".join(lines)


def _level_lines(answer: Answer) -> list[str]:
    """What the answer names, in words: the species, the genus (with its species and worst case), or neither."""
    if answer.level == SPECIES and answer.candidates:
        top = answer.candidates[0]
        certainty = format_probability(top.probability)
        return [f"  answer:    species {top.scientific_name} ({top.common_name}), {certainty}"]
    if answer.level == GENUS and answer.genus is not None:
        genus = answer.genus
        return [f"  answer:    genus {genus.genus}, species uncertain ({format_probability(genus.probability)} for "
                f"the genus, its species together)",
                f"  genus:     {genus.message}"]
    return ["  answer:    neither the species nor the genus is certain enough - ask an expert"]


def _date_lines(answer: Answer) -> list[str]:
    """The date as evidence: used, or why not (nothing when the photo has no date and none was given)."""
    evidence = answer.date
    if evidence is None:
        return []
    source = "given with --date" if evidence.source == "--date" else "the photo's EXIF date"
    label = "date:  " if evidence.used else "notice:"
    return [f"  {label}    {evidence.date or 'none'} ({source}): {evidence.note}"]


def format_footer(answers: list[Answer], synthetic: bool = False) -> str:
    failed = sum(not a.ok for a in answers)
    counts = f"{len(answers) - failed} of {len(answers)} photo(s) answered"
    refused = {v: sum(a.verdict == v for a in answers) for v in (UNUSABLE_PHOTO, UNKNOWN_SPECIES)}
    if any(refused.values()):
        counts += (f" ({refused[UNUSABLE_PHOTO]} not usable, {refused[UNKNOWN_SPECIES]} not one of the known "
                   "species)")
    if failed:
        counts += f"; {failed} failed (errors above)"
    banner = f"\n{SYNTHETIC_BANNER}" if synthetic else ""
    return f"{counts}.{banner}\n{NOTICE}"


def report(identifier: Identifier, answers: list[Answer]) -> dict[str, Any]:
    """The ``--json`` document: notice, bundle, one entry per photo, failure count."""
    return {
        "notice": NOTICE,
        "bundle": identifier.describe(),
        "results": [a.to_dict() for a in answers],
        "answered": sum(a.ok for a in answers),
        "refused": {v: sum(a.verdict == v for a in answers) for v in (UNUSABLE_PHOTO, UNKNOWN_SPECIES)},
        "levels": {level: sum(a.ok and a.level == level for a in answers) for level in LEVELS},
        "failed": sum(not a.ok for a in answers),
    }
