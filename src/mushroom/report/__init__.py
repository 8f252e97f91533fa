"""The evaluation report: one self-contained HTML file (plots embedded as PNG) and a Markdown summary.

Everything is drawn from the typed evaluation (:class:`mushroom.evaluation.Evaluation`) and the
variant the bundle ships, so a published evaluation can be re-rendered later.

Modules: :mod:`~mushroom.report.tables` (formatting, every table, Markdown tables),
:mod:`~mushroom.report.plots` (matplotlib), :mod:`~mushroom.report.html` (Jinja2 templates in
``templates/``), :mod:`~mushroom.report.markdown` (``summary.md``) and
:mod:`~mushroom.report.comparison` (choosing among configurations).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mushroom.fileio import write_text_atomic
from mushroom.report.comparison import (
    COMPARISON_REPORT,
    Comparison,
    compare_evaluations,
    write_comparison_report,
)
from mushroom.report.html import render_html
from mushroom.report.markdown import render_summary
from mushroom.report.plots import PLOTS, build_plots, save_plot
from mushroom.report.tables import SECTIONS, focus_variants

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation

__all__ = [
    "COMPARISON_REPORT", "PLOTS", "REPORT", "SECTIONS", "SUMMARY", "Comparison", "compare_evaluations",
    "focus_variants", "render_summary", "write_comparison_report", "write_report",
]

log = logging.getLogger(__name__)

REPORT = "report.html"
SUMMARY = "summary.md"


def write_report(evaluation: Evaluation, out_dir: str | Path) -> dict[str, Any]:
    """Write ``report.html``, ``summary.md`` and ``plots/*.png`` into ``out_dir``.

    The variant the bundle ships (the evaluation records it) is shown as the default, and in detail.

    Args:
        evaluation: The evaluation.
        out_dir: The folder to write into.

    Returns:
        ``{"html": path, "markdown": path, "plots": {stem: path}}``.
    """
    out_dir = Path(out_dir)
    plots = build_plots(evaluation)
    paths = {stem: save_plot(out_dir, stem, plot.png) for stem, plot in plots.items()}
    write_text_atomic(out_dir / REPORT, render_html(evaluation, plots))
    write_text_atomic(out_dir / SUMMARY, render_summary(evaluation))
    log.info("report: wrote %s, %s and %d plots", out_dir / REPORT, out_dir / SUMMARY, len(plots))
    return {"html": out_dir / REPORT, "markdown": out_dir / SUMMARY, "plots": paths}
