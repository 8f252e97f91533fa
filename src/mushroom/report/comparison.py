"""The comparison of every configuration: the choice of the best one and its documents.

``compare_evaluations`` chooses on the validation split only, by the variant each bundle
ships: among configurations whose shipped variant keeps the validation dangerous-as-edible
rate within the target, the highest validation top-1, then the smaller file, then the lower
latency. Test figures are tabulated for every configuration and variant (against its own TFLite
float32 reference) but never read to choose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mushroom import variants as registry
from mushroom.fileio import write_json_atomic, write_text_atomic
from mushroom.report.html import render_comparison_html
from mushroom.report.plots import Plot, plot_accuracy_vs_cost, save_plot, tflite_points
from mushroom.report.tables import DASH, Table, change, fmt, latency, md_table, pct, risk

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation, VariantEvaluation

CHOICE_NOTE = "The choice reads the validation split only; test figures are reported, never used to choose."
COMPARISON_REPORT = "comparison.html"
COMPARISON_MARKDOWN = "comparison.md"
COMPARISON_JSON = "comparison.json"
_PLOT_STEM = "comparison_accuracy_vs_cost"


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare_evaluations`.

    Attributes:
        choice: The chosen configuration and variant, and why.
        markdown: ``comparison.md``: the table, a note and the choice.
        summary: ``comparison.json``: ``best``, each configuration's headline figures per
            variant (``evaluations``) and the table (``table``: ``header`` and ``rows``).
        evaluations: The evaluations compared, in the order given.
    """

    choice: Choice
    markdown: str
    summary: dict[str, Any]
    evaluations: list[Evaluation] = field(repr=False)
    shipped: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> str:
        """The chosen configuration's model name."""
        return self.choice.model_name

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``comparison.md``, ``comparison.json`` and ``comparison.html`` (and its plot) atomically.

        Returns:
            The paths written, by format: ``markdown``, ``json``, ``html``.
        """
        out_dir = Path(out_dir)
        write_text_atomic(out_dir / COMPARISON_MARKDOWN, self.markdown)
        write_json_atomic(out_dir / COMPARISON_JSON, self.summary)
        html = write_comparison_report(self.evaluations, self.choice, out_dir, self.shipped)
        return {"markdown": out_dir / COMPARISON_MARKDOWN, "json": out_dir / COMPARISON_JSON, "html": html}


@dataclass(frozen=True)
class Choice:
    """The chosen configuration, the variant it ships, and why."""

    model_name: str
    variant: str
    reason: str


def _shipped(evaluation: Evaluation, shipped: dict[str, str]) -> tuple[str, VariantEvaluation]:
    """The variant a configuration's bundle ships, and its evaluation."""
    name = shipped.get(evaluation.model_name) or registry.fallback_variant(evaluation.tflite_variants())
    variant = evaluation.variant(name)
    if variant is None:
        raise ValueError(f"compare: {evaluation.model_name} ships {name!r}, which its evaluation does not hold")
    if variant.validation is None:
        raise ValueError(f"compare: {evaluation.model_name}'s evaluation has no validation figures (written by an "
                         "older version); rerun its evaluate stage to compare it")
    return name, variant


def _is_safe(evaluation: Evaluation, variant: VariantEvaluation) -> bool:
    rate = variant.calibrated.policy.val_dangerous_as_edible_rate
    return rate is None or rate <= evaluation.target_dangerous_as_edible + 1e-12


def choose_best(evaluations: list[Evaluation], shipped: dict[str, str]) -> Choice:
    """Choose on the validation split, by each bundle's shipped variant, under the safety target.

    Rank: the validation dangerous-as-edible rate within the target first, then the highest
    validation top-1, then the smaller file, then the lower single-thread latency.

    Args:
        evaluations: One per configuration.
        shipped: Model name -> the variant its bundle ships (``metadata.json``'s ``default_variant``).
    """
    def rank(e: Evaluation) -> tuple:
        _, v = _shipped(e, shipped)
        one_thread = v.latency.threads_1.median_ms if v.latency else float("inf")
        return _is_safe(e, v), v.validation.top1, -(v.size_mb or 0.0), -one_thread

    best = max(evaluations, key=rank)
    name, v = _shipped(best, shipped)
    safe = sum(_is_safe(e, _shipped(e, shipped)[1]) for e in evaluations)
    reason = (f"highest validation top-1 ({v.validation.top1:.3f}) of the shipped variants among the {safe} of "
              f"{len(evaluations)} configuration(s) within the dangerous-as-edible target on validation"
              if _is_safe(best, v) else
              f"no configuration meets the dangerous-as-edible target on validation; highest validation top-1 "
              f"({v.validation.top1:.3f})")
    return Choice(best.model_name, name, reason)


def comparison_table(evaluations: list[Evaluation], shipped: dict[str, str] | None = None,
                     choice: Choice | None = None) -> Table:
    """One row per configuration and variant: accuracy, safety, size, latency and change vs float32.

    The shipped variant of each configuration is marked, and the chosen one ``CHOSEN``.
    """
    shipped = shipped or {}
    header = ["model", "architecture", "px", "variant", "shipped / chosen", "val top-1", "top-1", "top-5",
              "macro F1", "ECE (calibrated)", "dangerous as edible", "coverage", "size MB",
              "latency ms 1 thread / all", "top-1 vs float32 (abs / rel)", "top-5 vs float32 (abs / rel)",
              "size vs float32", "latency vs float32 (1 thread)"]
    rows = []
    for e in evaluations:
        for key, v in e.ordered().items():
            cal, d = v.calibrated, v.vs_float32
            one, every = latency(v)
            changes = (change(d.top1_change), change(d.top5_change)) if d else (DASH, DASH)
            name = registry.variant_of_key(key)
            role = ("CHOSEN" if choice and (e.model_name, name) == (choice.model_name, choice.variant) else
                    "shipped" if name is not None and name == shipped.get(e.model_name) else "")
            rows.append([
                e.model_name, e.architecture, str(e.image_size), key, role,
                fmt(v.validation.top1 if v.validation else None), fmt(v.top1), fmt(v.top5),
                fmt(v.species.macro_f1), fmt(cal.calibration.ece), risk(cal.policy), pct(cal.policy.coverage),
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
    choice = choose_best(evaluations, shipped)
    table = comparison_table(evaluations, shipped, choice)
    markdown = (f"# Model comparison\n\nChosen: **{choice.model_name}**, variant **{choice.variant}**: "
                f"{choice.reason}. {CHOICE_NOTE}\n\n{md_table(table.header, table.rows)}\n\n"
                f"Figures are on the test split unless marked val. Changes are against the same configuration's "
                f"TFLite {registry.REFERENCE} model.\n")
    summary = {"best": choice.model_name, "chosen_variant": choice.variant, "reason": choice.reason,
               "evaluations": [summarize_evaluation(e) for e in evaluations],
               "table": {"header": table.header, "rows": table.rows}}
    return Comparison(choice, markdown, summary, list(evaluations), shipped)


def write_comparison_report(evaluations: list[Evaluation], choice: Choice, out_dir: str | Path,
                            shipped: dict[str, str] | None = None) -> Path:
    """Write ``comparison.html`` (the choice, the table, accuracy against size and latency) into ``out_dir``.

    The plot is also written to ``plots/comparison_accuracy_vs_cost.png``. Returns the HTML path.
    """
    out_dir = Path(out_dir)
    points = [p for e in evaluations for p in tflite_points(e)]
    plot = Plot("Top-1 accuracy against file size and CPU latency (1 thread, median), per configuration",
                plot_accuracy_vs_cost(points, "Every configuration and TFLite variant (test split)"))
    save_plot(out_dir, _PLOT_STEM, plot.png)
    table = comparison_table(evaluations, shipped, choice)
    write_text_atomic(out_dir / COMPARISON_REPORT, render_comparison_html(table, plot, choice, CHOICE_NOTE))
    return out_dir / COMPARISON_REPORT
