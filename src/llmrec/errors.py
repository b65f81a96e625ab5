"""One error type for bad input: it always says what is wrong, where, and what to do."""

from __future__ import annotations

from pathlib import Path


class LlmrecError(Exception):
    """A user-facing error printed as one line by the CLI (no traceback).

    Example: ``items.parquet, row 412, field 'image': file missing (img/412.jpg); rerun 'llmrec images'``.
    Rows are 1-based: the data row of a table, or the line of a text file (header included) where an
    importer reads line by line.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file, self.row, self.field, self.hint = file, row, field, hint
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        text = (", ".join(where) + ": " if where else "") + message
        if hint:
            text += f"; {hint}"
        super().__init__(text)


class ConfigError(LlmrecError):
    """An invalid configuration (unknown key, wrong type, value out of range)."""
