"""The comparison of every configuration: the choice of the best one and its documents.

``compare_evaluations`` chooses on the validation split only, by the variant each bundle
ships: among configurations whose shipped variant keeps the validation dangerous-as-edible
rate within the target, the highest validation top-1, then the smaller file, then the lower
latency. The pages tabulate every configuration and variant on validation, with size and
latency; the test split is shown once, for the chosen bundle only. Every configuration's test
figures stay in its own ``report.html`` and ``evaluation.json`` (and ``comparison.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from mushroom import variants as registry
from mushroom.fileio import write_json_atomic, write_text_atomic
from mushroom.formatting import DASH, fmt, md_table, pct, signed
from mushroom.report.html import render_comparison_html
from mushroom.report.plots import Plot, plot_accuracy_vs_cost, save_plot, tflite_points
from mushroom.report.tables import Table, change, latency, median_ms, risk
from mushroom.report.verdict import noise_note
from mushroom.shipping import Choice, choose_best

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation, VariantEvaluation

CHOICE_NOTE = ("The choice reads the validation split only; the test split is read once, for the chosen bundle, "
               "after the choice.")
TEST_NOTE = ("Test figures of the other configurations and variants are not shown here: each configuration's own "
             "report.html and evaluation.json hold them.")
CHOSEN = "CHOSEN"  # the role of the chosen configuration's shipped variant (the row highlighted)
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
        html = write_comparison_report(self.evaluations, self.choice, out_dir)
        return {"markdown": out_dir / COMPARISON_MARKDOWN, "json": out_dir / COMPARISON_JSON, "html": html}


class ComparisonTables(NamedTuple):
    """The tables of the comparison pages (:func:`comparison_tables`)."""

    main: Table  # every configuration and variant on validation, with size and latency
    configurations: Table  # what each configuration is and ships
    vs_float32: Table  # each TFLite variant against its configuration's float32
    chosen_test: Table  # the chosen bundle's test figures, one figure a row


def _role(evaluation: Evaluation, name: str | None, choice: Choice | None) -> str:
    if choice is not None and (evaluation.model_name, name) == (choice.model_name, choice.shipped_variant):
        return CHOSEN
    return "shipped" if name is not None and name == evaluation.shipped_variant else ""


def comparison_table(evaluations: list[Evaluation], choice: Choice | None = None) -> Table:
    """One row per configuration and variant: size, latency and the validation figures the choice reads.

    The shipped variant of each configuration is marked ``shipped``, the chosen one ``CHOSEN``.
    """
    header = ["configuration", "variant", "size MB", "latency ms (1 thread, median)", "val top-1", "val top-5",
              "val dangerous as edible", "val coverage", "shipped / chosen"]
    rows = []
    for e in evaluations:
        for key, v in e.ordered().items():
            policy, val = v.calibrated.policy, v.validation
            rows.append([e.model_name, key, fmt(v.size_mb, 2), fmt(median_ms(latency(v)[0]), 2),
                         fmt(val.top1 if val else None), fmt(val.top5 if val else None),
                         risk(policy, validation=True), pct(policy.val_coverage),
                         _role(e, registry.variant_of_key(key), choice)])
    return Table(header, rows)


def configurations_table(evaluations: list[Evaluation]) -> Table:
    """One row per configuration: architecture, input size, the splits it was fitted on and what it ships."""
    header = ["configuration", "architecture", "input px", "species", "val photos", "dangerous-as-edible target",
              "ships"]
    return Table(header, [[e.model_name, e.architecture, str(e.image_size), str(e.num_classes),
                           str(e.num_val_photos), pct(e.target_dangerous_as_edible), e.shipped_variant or DASH]
                          for e in evaluations], "Configurations")


def vs_float32_table(evaluations: list[Evaluation]) -> Table:
    """Each TFLite variant against its configuration's float32: size, latency and validation top-1."""
    header = ["configuration", "variant", "size vs float32", "latency vs float32 (1 thread)",
              "latency ms (all cores, median)", "val top-1 vs float32"]
    rows = []
    for e in evaluations:
        ref = e.reference.validation if e.reference else None
        for name, v in e.tflite_variants().items():
            d = v.vs_float32
            size, speed = ("1.000", "1.00") if name == registry.REFERENCE else (
                fmt(d.size_ratio if d else None), fmt(d.latency_ratio_threads_1 if d else None, 2))
            val_change = v.validation.top1 - ref.top1 if v.validation and ref else None
            rows.append([e.model_name, registry.evaluation_key(name), size, speed, fmt(median_ms(latency(v)[1]), 2),
                         signed(val_change)])
    return Table(header, rows, f"Against the same configuration's TFLite {registry.REFERENCE}")


def chosen_test_table(evaluations: list[Evaluation], choice: Choice) -> Table:
    """The test split's figures of the chosen configuration's chosen variant, one figure a row."""
    e = next(e for e in evaluations if e.model_name == choice.model_name)
    v = e.variant(choice.shipped_variant)
    cal, d = v.calibrated, v.vs_float32
    rows = [["test photos", str(e.num_test_photos)], ["top-1", fmt(v.top1)], ["top-3", fmt(v.top3)],
            ["top-5", fmt(v.top5)], ["macro F1", fmt(v.species.macro_f1)],
            ["ECE (calibrated)", fmt(cal.calibration.ece)], ["AUC P(edible)", fmt(cal.edibility.roc_auc)],
            ["dangerous as edible", risk(cal.policy)],
            ["coverage", pct(cal.policy.coverage)], ["selective risk", pct(cal.policy.selective_risk)],
            [f"top-1 vs {registry.REFERENCE} (abs / rel)", change(d.top1_change) if d else DASH]]
    return Table(["figure (test split)", "value"], rows,
                 f"{choice.model_name}, variant {registry.evaluation_key(choice.shipped_variant)}")


def comparison_tables(evaluations: list[Evaluation], choice: Choice) -> ComparisonTables:
    """Every table of the comparison pages."""
    return ComparisonTables(comparison_table(evaluations, choice), configurations_table(evaluations),
                            vs_float32_table(evaluations), chosen_test_table(evaluations, choice))


def comparison_markdown(tables: ComparisonTables, choice: Choice) -> str:
    """``comparison.md``: the choice, the validation table (the chosen row in bold), the test figures of the
    chosen bundle, then the configurations and the change against float32."""
    def md(table: Table) -> str:
        rows = [[f"**{c}**" if row[-1] == CHOSEN and c else c for c in row] for row in table.rows]
        return md_table(table.header, rows)

    return "\n".join([
        "# Model comparison", "",
        f"Chosen: **{choice.model_name}**, variant **{choice.shipped_variant}**: {choice.reason}. {CHOICE_NOTE}", "",
        "## Validation split: every configuration and variant", "", md(tables.main), "",
        "Size: the TFLite file. Latency: the median per image on the CPU, one thread. CHOSEN: the chosen "
        "configuration's shipped variant; shipped: what each other bundle ships.", "",
        "## Test split, read once for the chosen bundle", "", f"{tables.chosen_test.title}.", "",
        md(tables.chosen_test), "", TEST_NOTE, "",
        f"## {tables.configurations.title}", "", md(tables.configurations), "",
        f"## {tables.vs_float32.title}", "", md(tables.vs_float32), ""])


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
    if variant.validation is not None:
        summary["validation"] = {**_dump(variant.validation),
                                 "dangerous_as_edible_rate": cal.policy.val_dangerous_as_edible_rate,
                                 "coverage": cal.policy.val_coverage}
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


def compare_evaluations(evaluations: list[Evaluation]) -> Comparison:
    """Choose the best configuration and tabulate every configuration and variant.

    Args:
        evaluations: One per configuration (test split figures), each recording the variant its
            bundle ships.

    Returns:
        The choice, ``comparison.md`` and ``comparison.json``; :meth:`Comparison.write` writes them.
    """
    if not evaluations:
        raise ValueError("compare: no evaluations")
    choice = choose_best(evaluations)
    tables = comparison_tables(evaluations, choice)
    summary = {"best": choice.model_name, "shipped_variant": choice.shipped_variant, "reason": choice.reason,
               "evaluations": [summarize_evaluation(e) for e in evaluations],
               "table": {"header": tables.main.header, "rows": tables.main.rows}}
    markdown = comparison_markdown(tables, choice)
    return Comparison(choice, markdown, summary, list(evaluations))


def write_comparison_report(evaluations: list[Evaluation], choice: Choice, out_dir: str | Path) -> Path:
    """Write ``comparison.html`` (the choice, the tables, validation top-1 against size and latency) into ``out_dir``.

    The plot is also written to ``plots/comparison_accuracy_vs_cost.png``. Returns the HTML path.
    """
    out_dir = Path(out_dir)
    points = [p for e in evaluations for p in tflite_points(e, split="validation")]
    plot = Plot("Validation top-1 against file size and CPU latency (1 thread, median), every configuration and "
                "TFLite variant; ringed: the chosen bundle; bars: 95% Wilson intervals on the validation photos",
                plot_accuracy_vs_cost(points, "Every configuration and TFLite variant (validation split)",
                                      split="validation", chosen=(choice.model_name, choice.shipped_variant)))
    save_plot(out_dir, _PLOT_STEM, plot.png)
    chosen = next(e for e in evaluations if e.model_name == choice.model_name)
    html = render_comparison_html(comparison_tables(evaluations, choice), plot, choice,
                                  note=CHOICE_NOTE, test_note=TEST_NOTE, evaluation=chosen,
                                  noise=noise_note(evaluations, choice.model_name, choice.shipped_variant))
    write_text_atomic(out_dir / COMPARISON_REPORT, html)
    return out_dir / COMPARISON_REPORT
