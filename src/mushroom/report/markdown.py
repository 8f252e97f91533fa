"""``summary.md``: the report's tables as Markdown."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mushroom.formatting import md_table
from mushroom.report.dates import dates_part
from mushroom.report.levels import levels_markdown, levels_part
from mushroom.report.tables import (
    SECTIONS,
    data_source_line,
    openset_check_line,
    openset_tables,
    section_tables,
    settings_line,
)
from mushroom.sources import registry as sources

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation

# The sections of the HTML report that the summary repeats, after the overview.
_SUMMARY_SECTIONS = ("policy", "open_set", "edibility", "calibration", "speed", "quantization")


def render_summary(evaluation: Evaluation) -> str:
    """A short Markdown summary: overview, safety, calibration, speed and the float32 -> int8 change."""
    tables = {**section_tables(evaluation), **openset_tables(evaluation)}
    source = data_source_line(evaluation)
    if sources.is_synthetic(evaluation.data_source):
        source = f"> **{source}**"
    lines = [f"# Evaluation: {evaluation.model_name}", "", source, "", settings_line(evaluation), "",
             *(f"> **Warning:** {w}\n" for w in evaluation.warnings or []),
             md_table(tables["overview"].header, tables["overview"].rows)]
    check = openset_check_line(evaluation)
    for section in _SUMMARY_SECTIONS:
        if tables[section].rows:
            lines += ["", f"## {SECTIONS[section]}", ""]
            if section == "open_set" and check:
                lines += [check, ""]
            lines.append(md_table(tables[section].header, tables[section].rows))
        if section == "policy":
            lines += levels_markdown(levels_part(evaluation))
    dates = dates_part(evaluation, sources.is_synthetic(evaluation.data_source))
    if dates is not None:
        lines += ["", f"## {dates.table.title}", "", f"{dates.headline} {dates.decision}", "",
                  *([f"> {dates.caveat}", ""] if dates.caveat else []), md_table(dates.table.header, dates.table.rows)]
    return "\n".join(lines) + "\n"
