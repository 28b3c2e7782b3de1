"""Hyperfine-style terminal text: a title line, then indented `label: value` lines whose values
start in one column, so the figures that matter read straight down.

    Stability (paper model): pd-1:1
      μ (stable rate):   3.263 req/s
      stable below:      3.183 req/s  μ(1 − δ)

Styling uses click's ANSI helpers; `click.echo` strips them when output is not a terminal.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable

import click

# label, value and an optional note
Row = tuple[str, ...]


def display_width(text: str) -> int:
    """Columns `text` takes on a terminal: ANSI styling and combining marks (the macron of b̄)
    take none."""
    return sum(1 for ch in click.unstyle(text) if not unicodedata.combining(ch))


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def aligned_lines(rows: Iterable[Row], *, indent: int = 2, gap: int = 2) -> list[str]:
    """`label: value  note` lines, labels padded so every value starts in the same column and,
    where rows carry a third element (a note), values padded so the notes line up too."""
    rows = list(rows)
    if not rows:
        return []
    label_width = max(display_width(row[0]) for row in rows) + 1  # + the colon
    # only values followed by a note need padding: a long value without one sets no column
    value_width = max(
        (display_width(row[1]) for row in rows if len(row) == 3 and row[2]), default=0
    )
    lines = []
    for row in rows:
        line = " " * indent + _pad(row[0] + ":", label_width + gap) + row[1]
        if len(row) == 3 and row[2]:
            line = _pad(line, indent + label_width + gap + value_width + gap) + row[2]
        lines.append(line.rstrip())
    return lines


def columns(rows: Iterable[list[str]], *, indent: int = 2, gap: int = 2) -> list[str]:
    """Rows of cells as lines whose columns line up (the first row is the header); a row with
    fewer cells leaves the rest of its line to its last cell."""
    rows = list(rows)
    width = [
        max(display_width(row[i]) for row in rows if len(row) > i + 1)
        for i in range(max(len(row) for row in rows) - 1)
    ]
    return [
        (
            " " * indent
            + "".join(_pad(c, width[i] + gap) for i, c in enumerate(row[:-1]))
            + row[-1]
        ).rstrip()
        for row in rows
    ]


def block(title: str, rows: Iterable[Row], *, indent: int = 2) -> str:
    """A bold title and its aligned rows, as one string ready for click.echo."""
    return "\n".join([click.style(title, bold=True), *aligned_lines(rows, indent=indent)])


def number(value: float, decimals: int = 3) -> str:
    """A float with fixed decimals; 'n/a' for NaN, '∞' for infinity."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{decimals}f}"


def estimate(mean: float, stderr: float = 0.0, unit: str = "", decimals: int = 3) -> str:
    """'3.263 ± 0.012 req/s' (the ± part only when there is an uncertainty)."""
    text = number(mean, decimals)
    if stderr and not math.isnan(stderr):
        text += f" ± {number(stderr, decimals)}"
    return f"{text} {unit}".rstrip()


def highlight(text: str, color: str | None = None) -> str:
    """Bold (and optionally coloured) text for the one figure a block is about."""
    return click.style(text, bold=True, fg=color)
