"""The report's tables: every table's header and rows, as plain strings.

Cells are plain strings (formatted by :mod:`mushroom.formatting`), so the HTML report,
``summary.md`` and the comparison show the same figures. Nothing heavy is imported here (no
plotting, no templates).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from mushroom import variants as registry
from mushroom.formatting import DASH, fmt, pct, signed

if TYPE_CHECKING:
    from mushroom.evaluation import (
        Assessment,
        Change,
        DecisionScores,
        Evaluation,
        LatencyStats,
        SpeciesRow,
        VariantEvaluation,
    )

SECTIONS = {  # in order of importance, the report's order
    "overview": "Overview",
    "policy": "Safety policy",
    "open_set": "Open set: unknown species and unusable photos",
    "edibility": "Edibility",
    "species": "Species",
    "calibration": "Calibration",
    "speed": "Speed and size",
    "quantization": f"{registry.REFERENCE.capitalize()} to {registry.FULL_INTEGER}",
}


class Table(NamedTuple):
    """One table: column names, rows of formatted cells and an optional title."""

    header: list[str]
    rows: list[list[str]]
    title: str = ""


# --- formatting ----------------------------------------------------------------------------


def change(value: Change) -> str:
    """An absolute and a relative change: ``+0.012 / +1.5%``."""
    return f"{signed(value.absolute)} / {pct(value.relative)}"


def _prf(scores: DecisionScores | SpeciesRow) -> str:
    return f"{fmt(scores.precision, 2)} / {fmt(scores.recall, 2)} / {fmt(scores.f1, 2)}"


def _median_p90(stats: LatencyStats | None) -> str:
    """``median (95% interval of the median) / p90``; the interval where it was measured."""
    if stats is None:
        return DASH + " / " + DASH
    interval = (f" ({fmt(stats.median_low_ms, 2)}-{fmt(stats.median_high_ms, 2)})"
                if stats.median_low_ms is not None and stats.median_high_ms is not None else "")
    return f"{fmt(stats.median_ms, 2)}{interval} / {fmt(stats.p90_ms, 2)}"


# --- what the tables show --------------------------------------------------------------------


SAME = "same (T = 1)"  # the calibration cell of a row printed once: scaling was not kept
SAME_NOTE = ("Rows marked 'same (T = 1)': temperature scaling was not kept for that variant, so its calibrated and "
             "uncalibrated figures are identical and printed once.")


def assessments(variant: VariantEvaluation) -> dict[str, Assessment]:
    """A variant's figures before and after temperature scaling, in that order; once (as :data:`SAME`)
    where they are identical because the temperature was not kept."""
    if variant.uncalibrated == variant.calibrated:
        return {SAME: variant.calibrated}
    return {"uncalibrated": variant.uncalibrated, "calibrated": variant.calibrated}


def same_rows(evaluation: Evaluation) -> bool:
    """Whether some variant's calibrated and uncalibrated rows are printed once."""
    return any(SAME in assessments(v) for v in evaluation.variants.values())


def latency(variant: VariantEvaluation) -> tuple[LatencyStats | None, LatencyStats | None]:
    """A variant's latency with one thread and with all cores; Nones where not measured."""
    return (variant.latency.threads_1, variant.latency.threads_all) if variant.latency else (None, None)


def median_ms(stats: LatencyStats | None) -> float | None:
    """The median latency; None where not measured."""
    return None if stats is None else stats.median_ms


def focus_variants(evaluation: Evaluation) -> list[str]:
    """The evaluation keys shown in detail (per-species tables, confusion matrices).

    Keras, the float32 reference, full int8 and the variant the bundle ships
    (:attr:`~mushroom.evaluation.Evaluation.shipped_variant`), where evaluated, in report order.
    Every variant is in ``evaluation.json``.
    """
    wanted = {registry.KERAS_KEY, registry.REFERENCE_KEY, registry.FULL_INTEGER_KEY, evaluation.shipped_key}
    return [key for key in evaluation.ordered() if key in wanted]


def settings_line(evaluation: Evaluation) -> str:
    """One paragraph: the configuration, the splits, the safety target and the latency setup."""
    e = evaluation
    line = (f"{e.model_name} ({e.architecture}, {e.image_size} px, {e.num_classes} species); "
            f"test split {e.num_test_photos} photos; temperature and safety threshold fitted on the "
            f"validation split ({e.num_val_photos} photos) with a dangerous-as-edible target of "
            f"{e.target_dangerous_as_edible:.1%}. Default variant (used by identify): "
            f"{e.shipped_variant or DASH}.")
    if e.latency_settings:
        s = e.latency_settings
        line += (f" Latency: batch 1, {s.warmup} warm-up and {s.runs} timed runs, 1 thread and "
                 f"{s.threads_all} threads")
        line += (f", every variant timed in each of {s.rounds} interleaved rounds by the quantize stage (the "
                 "figures its choice was made on)." if s.interleaved else ".")
        if s.busy:
            line += (f" The machine was busy while timing (load average {fmt(s.load_before, 1)} -> "
                     f"{fmt(s.load_after, 1)}): these latencies are not comparable with a quiet run.")
    return line


def data_source_line(evaluation: Evaluation) -> str:
    """What the model was trained on, in one sentence, and where its backbone's weights came from."""
    line = _trained_on(evaluation)
    if evaluation.backbone_weights:
        from mushroom.backbones import describe_weights

        weights = describe_weights(evaluation.backbone_weights)
        line += f" {weights[0].upper()}{weights[1:]}."
    return line


def _trained_on(evaluation: Evaluation) -> str:
    from mushroom.sources import registry as sources

    description = sources.describe(evaluation.data_source)
    if sources.is_synthetic(evaluation.data_source):  # shouted: these figures are not about mushrooms
        return (f"Data source: {description.replace('synthetic', 'SYNTHETIC', 1)}. These figures test the pipeline; "
                "they say nothing about how the model does on real mushrooms.")
    return f"Data source: {description}."


def openset_table(evaluation: Evaluation) -> Table:
    """Per variant and kind of negative: AUROC, FPR at 95% TPR and refusals with the gate off and on."""
    from mushroom.negatives import GROUP_TITLES

    header = ["variant", "score (threshold)", "kind", "fitted on", "photos", "AUROC (gate off / on)",
              "FPR at 95% TPR", "refused: score only", "refused: gate + score", "named as known",
              "of those, edible"]
    rows = []
    for key, v in evaluation.ordered().items():
        o = v.open_set
        if o is None:
            continue
        rule = f"{o.score} ({fmt(o.threshold, 4)})" if o.threshold is not None else f"{o.score} (none)"
        rows.append([key, rule, "known test photos", "threshold (val)", str(o.test_photos), DASH, DASH,
                     pct(o.test_refused_gate_off), pct(o.test_refused_gate_on), DASH, DASH])
        for kind, k in o.kinds.items():
            rows.append([key, rule, f"{kind} ({GROUP_TITLES.get(k.group, k.group)})", "yes" if k.fit else "held out",
                         str(k.photos), f"{fmt(k.auroc)} / {fmt(k.auroc_gate_on)}", pct(k.fpr95),
                         pct(k.refused_gate_off), pct(k.refused_gate_on), pct(k.named_as_known),
                         pct(k.named_edible_share)])
    return Table(header, rows)


def openset_check_line(evaluation: Evaluation) -> str | None:
    """Whether the variant identify uses ships an open-set rule, and why, in one sentence.

    None when that variant is not recorded, has no open-set figures or was evaluated before the
    unknown-species check existed.
    """
    key = evaluation.shipped_key
    if key is None:
        return None
    o = evaluation.variants[key].open_set
    if o is None or o.unknown_check is None:
        return None
    return f"Open-set check ({key}, used by identify): {o.unknown_check.reason}."


def openset_groups_table(evaluation: Evaluation) -> Table:
    """The held-out kinds of each group together, per variant (the headline open-set figures)."""
    from mushroom.negatives import GROUP_TITLES

    header = ["variant", "score", "negatives (held out)", "photos", "AUROC", "AUROC, gate on", "FPR at 95% TPR",
              "refused: score only", "refused: gate + score", "known test refused"]
    rows = []
    for key, v in evaluation.ordered().items():
        o = v.open_set
        if o is None:
            continue
        for group, g in o.groups.items():
            rows.append([key, o.score, f"{GROUP_TITLES.get(group, group)}: {', '.join(g.kinds)}", str(g.photos),
                         fmt(g.auroc), fmt(g.auroc_gate_on), pct(g.fpr95), pct(g.refused_gate_off),
                         pct(g.refused_gate_on), pct(o.test_refused_gate_on)])
    return Table(header, rows)


def risk(policy, validation: bool = False) -> str:
    """The test (or validation) dangerous-as-edible rate, saying when its 0% comes from never saying 'edible'."""
    rate = policy.val_dangerous_as_edible_rate if validation else policy.risk
    text = pct(rate, 2)
    return f"{text} (never says edible)" if policy.edible_threshold is None and rate is not None else text


# --- one table per section ------------------------------------------------------------------------


def overview_table(evaluation: Evaluation) -> Table:
    """Headline figures of every variant: accuracy, calibration, safety, size and speed."""
    header = ["variant", "top-1", "top-5", "macro F1", "ECE before -> after", "AUC P(edible)",
              "dangerous as edible", "coverage", "size MB", "latency ms (1 thread)"]
    rows = []
    for key, v in evaluation.ordered().items():
        cal = v.calibrated
        rows.append([
            key, fmt(v.top1), fmt(v.top5), fmt(v.species.macro_f1),
            f"{fmt(v.uncalibrated.calibration.ece)} -> {fmt(cal.calibration.ece)}",
            fmt(cal.edibility.roc_auc), risk(cal.policy), pct(cal.policy.coverage),
            fmt(v.size_mb, 2), fmt(median_ms(latency(v)[0]), 2),
        ])
    return Table(header, rows)


def species_tables(evaluation: Evaluation) -> list[Table]:
    """Accuracy per variant, then per species and the most confused pairs of the focus variants."""
    variants = evaluation.ordered()
    accuracy = Table(["variant", "top-1", "top-3", "top-5", "macro precision", "macro recall", "macro F1"],
                     [[key, fmt(v.species.top1), fmt(v.species.top3), fmt(v.species.top5),
                       fmt(v.species.macro_precision), fmt(v.species.macro_recall), fmt(v.species.macro_f1)]
                      for key, v in variants.items()],
                     "Accuracy per variant")
    names = focus_variants(evaluation)
    per = {n: {r.species: r for r in variants[n].species.per_species} for n in names}
    header = ["species", "edibility", "test photos", *(f"{n} P / R / F1" for n in names)]
    rows = [[row.species, row.edibility, str(row.support), *(_prf(per[n][row.species]) for n in names)]
            for row in variants[names[0]].species.per_species]
    tables = [accuracy, Table(header, rows, "Per species (precision / recall / F1)")]
    for name in names:
        pairs = variants[name].species.most_confused
        tables.append(Table(["species A", "species B", "confusions", "A as B", "B as A"],
                            [[*p.species[:2], str(p.count), str(p.first_as_second), str(p.second_as_first)]
                             for p in pairs] or [["(none)", "", "", "", ""]],
                            f"Most confused species pairs, {name}"))
    return tables


def edibility_table(evaluation: Evaluation) -> Table:
    """The edible/not edible decision of every variant, before and after calibration."""
    header = ["variant", "calibration", "AUC P(edible)", "verdict edible P / R / F1", "dangerous as edible",
              "naive (P >= 0.5) dangerous as edible", "deadly with edible top-1",
              "dangerous missing from top-5"]
    rows = []
    for key, v in evaluation.ordered().items():
        for stage, a in assessments(v).items():
            e = a.edibility
            rows.append([key, stage, fmt(e.roc_auc), _prf(e.verdict_edible), pct(e.dangerous_as_edible_rate, 2),
                         pct(e.naive_edible.dangerous_as_edible_rate, 2), pct(e.deadly_top1_edible_rate, 2),
                         pct(e.dangerous_missing_from_top5_rate, 2)])
    return Table(header, rows)


def calibration_table(evaluation: Evaluation) -> Table:
    """Calibration errors of every variant before and after temperature scaling."""
    header = ["variant", "temperature", "calibration", "ECE (95% bootstrap)", "ECE equal-mass", "MCE",
              "mean confidence", "std confidence", "accuracy", "NLL", "Brier", "photos"]
    rows = []
    for key, v in evaluation.ordered().items():
        for stage, a in assessments(v).items():
            c = a.calibration
            interval = f" ({fmt(c.ece_interval[0])}-{fmt(c.ece_interval[1])})" if c.ece_interval else ""
            rows.append([key, fmt(a.policy.temperature, 3), stage, f"{fmt(c.ece)}{interval}", fmt(c.ece_equal_mass),
                         fmt(c.mce), fmt(c.mean_confidence), fmt(c.std_confidence), fmt(c.accuracy), fmt(c.nll),
                         fmt(c.brier), fmt(c.photos)])
    return Table(header, rows)


def temperature_table(evaluation: Evaluation) -> Table:
    """How each variant's temperature was chosen: cross-validated on validation, kept only if it helps."""
    header = ["variant", "temperature", "kept", "held-out NLL without -> with scaling", "folds", "reason"]
    rows = [[key, fmt(f.temperature, 3), "yes" if f.kept else "no",
             f"{fmt(f.heldout_nll_uncalibrated, 4)} -> {fmt(f.heldout_nll_calibrated, 4)}", fmt(f.folds), f.reason]
            for key, v in evaluation.ordered().items() if (f := v.temperature_fit) is not None]
    return Table(header, rows)


def policy_table(evaluation: Evaluation) -> Table:
    """The safety policy of every variant: thresholds, coverage and risk on validation and test."""
    header = ["variant", "calibration", "edible threshold", "not edible below", "val: dangerous as edible",
              "val coverage", "test coverage", "test risk (dangerous as edible)", "test selective risk",
              "edible / not edible / uncertain"]
    rows = []
    for key, v in evaluation.ordered().items():
        for stage, a in assessments(v).items():
            p = a.policy
            threshold = "never edible" if p.edible_threshold is None else fmt(p.edible_threshold, 4)
            rows.append([key, stage, threshold, fmt(p.not_edible_below, 3), pct(p.val_dangerous_as_edible_rate, 2),
                         pct(p.val_coverage), pct(p.coverage), pct(p.risk, 2), pct(p.selective_risk),
                         " / ".join(str(c) for c in p.verdicts.values())])
    return Table(header, rows)


def speed_table(evaluation: Evaluation) -> Table:
    """File size and CPU latency of every TFLite variant, and their ratios to float32."""
    header = ["variant", "size MB", "size vs float32", "1 thread median (95% interval) / p90 ms",
              "all cores median (95% interval) / p90 ms", "latency vs float32 (1 thread / all)"]
    rows = []
    for key, v in evaluation.ordered().items():
        if v.size_mb is None:
            continue
        d = v.vs_float32
        if key == registry.REFERENCE_KEY:
            size_ratio, latency_ratio = "1.000", "1.00 / 1.00"
        elif d is None:  # no reference to compare with
            size_ratio, latency_ratio = DASH, DASH
        else:
            size_ratio = fmt(d.size_ratio, 3)
            latency_ratio = f"{fmt(d.latency_ratio_threads_1, 2)} / {fmt(d.latency_ratio_threads_all, 2)}"
        one, every = latency(v)
        rows.append([key, fmt(v.size_mb, 3), size_ratio, _median_p90(one), _median_p90(every), latency_ratio])
    return Table(header, rows)


def quantization_table(evaluation: Evaluation) -> Table:
    """Absolute and relative change of each variant against TFLite float32 (no rows: no reference)."""
    header = ["variant", "top-1 change (abs / rel)", "top-5 change (abs / rel)", "macro F1 change",
              "ECE change (calibrated)", "top-1 agreement with float32", "size ratio",
              "latency ratio (1 thread)"]
    rows = []
    for key, v in evaluation.ordered().items():
        d = v.vs_float32
        if d is not None:
            rows.append([key, change(d.top1_change), change(d.top5_change), signed(d.macro_f1_change.absolute),
                         signed(d.ece_change.absolute), pct(d.top1_agreement), fmt(d.size_ratio),
                         fmt(d.latency_ratio_threads_1)])
    return Table(header, rows)


def openset_tables(evaluation: Evaluation) -> dict[str, Table]:
    """The open-set section's tables (no rows for an evaluation without open-set figures)."""
    return {"open_set": openset_groups_table(evaluation), "open_set_kinds": openset_table(evaluation)}


def section_tables(evaluation: Evaluation) -> dict[str, Table]:
    """The one-table sections by section id (:data:`SECTIONS`), plus the calibration section's temperature table."""
    return {"overview": overview_table(evaluation), "edibility": edibility_table(evaluation),
            "calibration": calibration_table(evaluation), "temperature": temperature_table(evaluation),
            "policy": policy_table(evaluation),
            "speed": speed_table(evaluation), "quantization": quantization_table(evaluation)}
