"""Every module of ``src/llmrec`` stays readable in a sitting: at most :data:`MAX_MODULE_LINES` lines, and no
function (or method) longer than :data:`MAX_FUNCTION_LINES` lines, counted from its ``def`` line to its last
line (``end_lineno - lineno + 1`` of the ast node, decorators not counted). A module or function that grows
past them is split into well-named parts (a package of modules, helpers that read top to bottom), not
allow-listed here."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "llmrec"
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80


def too_long(source: str, rel: str) -> list[str]:
    """Each excess of ``source`` (the file ``rel``), as ``rel:line: what, N lines (limit L)``."""
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{rel}:1: module, {lines} lines (limit {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            size = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if size > MAX_FUNCTION_LINES:
                found.append(
                    f"{rel}:{node.lineno}: function {node.name}, {size} lines (limit {MAX_FUNCTION_LINES})"
                )
    return sorted(found, key=lambda f: int(f.split(":")[1]))


def _function(name: str, lines: int, indent: str = "", keyword: str = "def") -> str:
    """The source of a function ``name`` of ``lines`` lines, its ``def`` line included."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 1))
    return f"{indent}{keyword} {name}():\n{body}"


def test_the_checker_catches_a_long_function_and_a_long_module() -> None:
    """The checker itself, on samples: a function one line over the limit (a decorated async method) is
    named with its line and size, one at the limit is not; a module one line over is named, one at it not."""
    sample = (
        _function("fits", MAX_FUNCTION_LINES)
        + "\n\nclass C:\n    @staticmethod\n"
        + _function("grows", MAX_FUNCTION_LINES + 1, indent="    ", keyword="async def")
    )
    assert too_long(sample, "m.py") == [
        f"m.py:{MAX_FUNCTION_LINES + 5}: function grows, {MAX_FUNCTION_LINES + 1} lines "
        f"(limit {MAX_FUNCTION_LINES})"
    ]
    long_module = "x = 1\n" * (MAX_MODULE_LINES + 1)
    assert too_long(long_module, "big.py") == [
        f"big.py:1: module, {MAX_MODULE_LINES + 1} lines (limit {MAX_MODULE_LINES})"
    ]
    assert too_long("x = 1\n" * MAX_MODULE_LINES, "ok.py") == []


def test_modules_and_functions_stay_short() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50 and SRC / "cli.py" in files  # the package is where this test looks
    found = [
        f
        for p in files
        for f in too_long(p.read_text(encoding="utf-8"), p.relative_to(SRC.parent).as_posix())
    ]
    assert found == [], "split these into well-named parts:\n" + "\n".join(found)
