"""The self-contained HTML pages (plots embedded as PNG data), rendered from Jinja2 templates.

The templates and the stylesheet are in ``templates/``; every value is autoescaped. Jinja2 is
imported when a page is rendered.
"""

from __future__ import annotations

import base64
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

from mushroom import variants as registry
from mushroom.report.dates import dates_part
from mushroom.report.levels import levels_part
from mushroom.report.tables import (
    SAME_NOTE,
    SECTIONS,
    data_source_line,
    focus_variants,
    openset_check_line,
    openset_tables,
    same_rows,
    section_tables,
    settings_line,
    species_tables,
)
from mushroom.report.verdict import GLOSSARY, verdict
from mushroom.sources import registry as sources

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation
    from mushroom.report.comparison import ComparisonTables
    from mushroom.report.plots import Plot
    from mushroom.shipping import Choice


class _Image(NamedTuple):
    caption: str
    data: str  # base64 PNG


@cache
def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("mushroom.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(reference=registry.REFERENCE, **context) + "\n"


def _image(plot: Plot) -> _Image:
    return _Image(plot.caption, base64.b64encode(plot.png).decode("ascii"))


def render_html(evaluation: Evaluation, plots: dict[str, Plot]) -> str:
    """The evaluation report: every section of :data:`SECTIONS`, its tables and ``plots``.

    Args:
        evaluation: The evaluation.
        plots: By file stem (:func:`mushroom.report.plots.build_plots`); shown by stem prefix.
    """
    return _render("report.html.j2", title=f"Evaluation {evaluation.model_name}", evaluation=evaluation,
                   settings=settings_line(evaluation), sections=SECTIONS,
                   data_source=data_source_line(evaluation),
                   synthetic_source=sources.is_synthetic(evaluation.data_source),
                   openset_check=openset_check_line(evaluation),
                   tables={**section_tables(evaluation), **openset_tables(evaluation)},
                   species_tables=species_tables(evaluation), focus=focus_variants(evaluation),
                   images={stem: _image(plot) for stem, plot in plots.items()},
                   verdict=verdict(evaluation), glossary=GLOSSARY, levels=levels_part(evaluation),
                   same_rows=same_rows(evaluation), same_note=SAME_NOTE,
                   dates=dates_part(evaluation, sources.is_synthetic(evaluation.data_source)))


def render_comparison_html(tables: ComparisonTables, plot: Plot, choice: Choice, note: str, test_note: str,
                           evaluation: Evaluation | None = None, noise: str = "") -> str:
    """The comparison page: the chosen bundle's verdict card and data source, the choice, every
    configuration and variant on validation, the chosen bundle's test figures and validation
    accuracy against cost.

    Args:
        tables: Every table of the page.
        plot: Validation top-1 against size and latency.
        choice: The chosen configuration and variant.
        note: How the choice was made; test_note: where the other test figures are.
        evaluation: The chosen configuration's evaluation (the verdict card and the data-source
            banner); None: neither is shown.
        noise: Whether the plot's accuracy differences are more than noise, in a sentence or two.
    """
    card = None if evaluation is None else verdict(evaluation)
    return _render("comparison.html.j2", title="Model comparison", choice=choice, note=note, test_note=test_note,
                   tables=tables, image=_image(plot), verdict=card, noise=noise, glossary=GLOSSARY,
                   data_source=data_source_line(evaluation) if evaluation is not None else "",
                   synthetic_source=evaluation is not None and sources.is_synthetic(evaluation.data_source),
                   warnings=(evaluation.warnings or []) if evaluation is not None else [],
                   levels=None if evaluation is None else levels_part(evaluation))
