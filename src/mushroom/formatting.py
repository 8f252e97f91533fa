"""Formatting for tables and console lines: numbers, shares, signed changes and Markdown tables.

Neutral: the report, the quantization report, the iNaturalist acquisition card and the console
all read it; it imports numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DASH = "\u2014"  # a missing value


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table (integers as they are); an em dash for a missing value."""
    if value is None:
        return DASH
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage; an em dash for a missing value."""
    return DASH if value is None else f"{100 * float(value):.{digits}f}%"


def signed(value: float | None, digits: int = 3) -> str:
    """A change with its sign; a change that rounds to zero reads +0 (never -0)."""
    if value is None:
        return DASH
    rounded = round(float(value), digits) + 0.0
    return f"{rounded:+.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown (GitHub) table; cells are written with ``str`` and their pipes escaped.

    Args:
        header: Column names.
        rows: One sequence of cells per row, as long as ``header``.

    Returns:
        The table's lines, without a trailing newline.
    """
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])
