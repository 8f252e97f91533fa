"""The comparison of every configuration: the choice of the best one and its documents.

``compare_evaluations`` picks the configuration with the highest full-integer top-1 on the
test split (ties: the smaller full-integer file; a configuration without a full-integer
variant competes with the variant its bundle ships) and tabulates every configuration and
variant against its own TFLite float32 reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mushroom import variants as registry
from mushroom.fileio import write_json_atomic, write_text_atomic
from mushroom.report.html import render_comparison_html
from mushroom.report.plots import Plot, plot_accuracy_vs_cost, save_plot, tflite_points
from mushroom.report.tables import DASH, Table, change, fmt, latency, md_table, pct

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation, VariantEvaluation

COMPARISON_REPORT = "comparison.html"
COMPARISON_MARKDOWN = "comparison.md"
COMPARISON_JSON = "comparison.json"
_PLOT_STEM = "comparison_accuracy_vs_cost"


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare_evaluations`.

    Attributes:
        best: The chosen configuration's model name.
        markdown: ``comparison.md``: the table, a note and the choice.
        summary: ``comparison.json``: ``best``, each configuration's headline figures per
            variant (``evaluations``) and the table (``table``: ``header`` and ``rows``).
        evaluations: The evaluations compared, in the order given.
    """

    best: str
    markdown: str
    summary: dict[str, Any]
    evaluations: list[Evaluation] = field(repr=False)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``comparison.md``, ``comparison.json`` and ``comparison.html`` (and its plot) atomically.

        Returns:
            The paths written, by format: ``markdown``, ``json``, ``html``.
        """
        out_dir = Path(out_dir)
        write_text_atomic(out_dir / COMPARISON_MARKDOWN, self.markdown)
        write_json_atomic(out_dir / COMPARISON_JSON, self.summary)
        html = write_comparison_report(self.evaluations, self.best, out_dir)
        return {"markdown": out_dir / COMPARISON_MARKDOWN, "json": out_dir / COMPARISON_JSON, "html": html}


def _contender(evaluation: Evaluation, shipped: dict[str, str]) -> VariantEvaluation:
    """The variant a configuration competes with: full integer, else the variant its bundle ships."""
    for name in (registry.FULL_INTEGER, shipped.get(evaluation.model_name)):
        variant = evaluation.variant(name) if name else None
        if variant is not None:
            return variant
    raise ValueError(f"compare: {evaluation.model_name} has neither a {registry.FULL_INTEGER} variant nor an "
                     f"evaluated shipped variant ({shipped.get(evaluation.model_name)})")


def choose_best(evaluations: list[Evaluation], shipped: dict[str, str]) -> Evaluation:
    """The evaluation with the highest full-integer test top-1; ties: the smaller file.

    Args:
        evaluations: One per configuration.
        shipped: Model name -> the variant its bundle ships (stands in where there is no int8).
    """
    def rank(e: Evaluation) -> tuple[float, float]:
        v = _contender(e, shipped)
        return v.top1, -v.size_mb

    return max(evaluations, key=rank)


def comparison_table(evaluations: list[Evaluation]) -> Table:
    """One row per configuration and variant: accuracy, safety, size, latency and change vs float32."""
    header = ["model", "architecture", "px", "variant", "top-1", "top-5", "macro F1", "ECE (calibrated)",
              "dangerous as edible", "coverage", "size MB", "latency ms 1 thread / all",
              "top-1 vs float32 (abs / rel)", "top-5 vs float32 (abs / rel)", "size vs float32",
              "latency vs float32 (1 thread)"]
    rows = []
    for e in evaluations:
        for key, v in e.ordered().items():
            cal, d = v.calibrated, v.vs_float32
            one, every = latency(v)
            changes = (change(d.top1_change), change(d.top5_change)) if d else (DASH, DASH)
            rows.append([
                e.model_name, e.architecture, str(e.image_size), key, fmt(v.top1), fmt(v.top5),
                fmt(v.species.macro_f1), fmt(cal.calibration.ece), pct(cal.policy.risk, 2), pct(cal.policy.coverage),
                fmt(v.size_mb, 2),
                f"{fmt(one.median_ms, 2)} / {fmt(every.median_ms, 2)}" if v.latency else DASH,
                *changes, fmt(d.size_ratio if d else None), fmt(d.latency_ratio_threads_1 if d else None),
            ])
    return Table(header, rows)


def _dump(model) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True)


def summarize_variant(variant: VariantEvaluation) -> dict[str, Any]:
    """The headline figures of one variant (``comparison.json``); size, latency, change where measured."""
    cal = variant.calibrated
    summary: dict[str, Any] = {
        "top1": variant.top1, "top3": variant.top3, "top5": variant.top5, "macro_f1": variant.species.macro_f1,
        "ece_uncalibrated": variant.uncalibrated.calibration.ece, "ece_calibrated": cal.calibration.ece,
        "edible_roc_auc": cal.edibility.roc_auc, "dangerous_as_edible_rate": cal.policy.risk,
        "coverage": cal.policy.coverage,
    }
    if variant.size_mb is not None:
        summary["size_mb"] = variant.size_mb
    if variant.latency is not None:
        summary["latency"] = _dump(variant.latency)
    if variant.vs_float32 is not None:
        summary["vs_float32"] = _dump(variant.vs_float32)
    return summary


def summarize_evaluation(evaluation: Evaluation) -> dict[str, Any]:
    """One configuration in ``comparison.json``: what it is and each variant's headline figures."""
    return {"model_name": evaluation.model_name, "architecture": evaluation.architecture,
            "image_size": evaluation.image_size, "num_test_photos": evaluation.num_test_photos,
            "variants": {key: summarize_variant(v) for key, v in evaluation.variants.items()}}


def compare_evaluations(evaluations: list[Evaluation], shipped: dict[str, str]) -> Comparison:
    """Choose the best configuration and tabulate every configuration and variant.

    Args:
        evaluations: One per configuration (test split figures).
        shipped: Model name -> the variant its bundle ships (``metadata.json``'s
            ``default_variant``); it stands in where a configuration has no full-integer variant.

    Returns:
        The choice, ``comparison.md`` and ``comparison.json``; :meth:`Comparison.write` writes them.
    """
    if not evaluations:
        raise ValueError("compare: no evaluations")
    best = choose_best(evaluations, shipped).model_name
    table = comparison_table(evaluations)
    markdown = (f"# Model comparison (test split)\n\n{md_table(table.header, table.rows)}\n\n"
                f"Changes are against the same configuration's TFLite {registry.REFERENCE} model.\n\n"
                f"Chosen: **{best}** (highest {registry.FULL_INTEGER} top-1).\n")
    summary = {"best": best, "evaluations": [summarize_evaluation(e) for e in evaluations],
               "table": {"header": table.header, "rows": table.rows}}
    return Comparison(best, markdown, summary, list(evaluations))


def write_comparison_report(evaluations: list[Evaluation], best: str, out_dir: str | Path) -> Path:
    """Write ``comparison.html`` (the table, and accuracy against size and latency) into ``out_dir``.

    The plot is also written to ``plots/comparison_accuracy_vs_cost.png``. Returns the HTML path.
    """
    out_dir = Path(out_dir)
    points = [p for e in evaluations for p in tflite_points(e)]
    plot = Plot("Top-1 accuracy against file size and CPU latency (1 thread, median), per configuration",
                plot_accuracy_vs_cost(points, "Every configuration and TFLite variant (test split)"))
    save_plot(out_dir, _PLOT_STEM, plot.png)
    write_text_atomic(out_dir / COMPARISON_REPORT, render_comparison_html(comparison_table(evaluations), plot, best))
    return out_dir / COMPARISON_REPORT
