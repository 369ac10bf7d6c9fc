"""Plain-text tables for the experiments' standard output: one column per ``(header, value, format)``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["text_table"]

Column = tuple[str, str | Callable[[dict], Any], str]


def text_table(rows: Iterable[dict], columns: Sequence[Column]) -> str:
    """A header line, then a line per row; columns right-aligned, left-aligned where ``spec``
    starts with ``"<"``.

    ``columns``: ``(header, value, spec)`` — ``value`` a key of the row or a function of it,
    ``spec`` a format spec (``".4f"``, ``""``, ``"<"``); each column is as wide as the wider of
    its header and its widest cell.
    """
    cells = [
        [format(value(row) if callable(value) else row[value], spec) for _, value, spec in columns]
        for row in rows
    ]
    widths = [
        max([len(h)] + [len(line[i]) for line in cells]) for i, (h, _, _) in enumerate(columns)
    ]
    left = [spec.startswith("<") for _, _, spec in columns]
    lines = [[h for h, _, _ in columns], *cells]
    return "\n".join(
        " ".join(
            c.ljust(w) if lj else c.rjust(w) for c, w, lj in zip(line, widths, left, strict=True)
        )
        for line in lines
    )
