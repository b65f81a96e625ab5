"""GitHub Markdown tables: the one writer behind ``llmrec table`` and the experiments' ``.md`` reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# column alignment letter -> the separator row's cell ("-": GitHub's default, left)
_ALIGN = {"-": "---", "l": ":---", "r": "---:"}


def markdown_table(header: str | Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a table: the column names (``header``, a list or one string "a | b | c"), the separator
    row with one ``align`` letter per column ("r" right, "l" left, "-" unmarked), then one line per row of
    cells (each written with ``str``)."""
    names = header.split(" | ") if isinstance(header, str) else list(header)
    if len(align) != len(names) or set(align) - set(_ALIGN):
        raise ValueError(f"align {align!r}: one of '-', 'l', 'r' per column of {names}")
    return [
        "| " + " | ".join(names) + " |",
        "|" + "|".join(_ALIGN[a] for a in align) + "|",
        *("| " + " | ".join(map(str, cells)) + " |" for cells in rows),
    ]
