"""The optional parts of llmrec and the packages they need (the extras of ``pip install 'llmrec[...]'``).

The core installs what ``prepare --engine pandas``, ``train``, ``evaluate``, ``recommend`` and the Python API
need. A command that needs more asks for it through :func:`require`, which turns a missing package into one
line naming the extra that brings it, e.g. ``llmrec serve needs the serve extra (fastapi is not installed):
pip install 'llmrec[serve]'``, instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from llmrec.errors import LlmrecError

# extra -> the modules llmrec imports from it (the import names, not the distributions' names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "starlette", "pydantic", "uvicorn", "httptools"),
    "duckdb": ("duckdb",),
    "tracking": ("tensorboardX",),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "spark": ("pyspark",),
    "tune": ("optuna",),
    "index": ("faiss",),
    "docs": ("mkdocs", "material", "mkdocstrings"),
}


class MissingExtra(LlmrecError, ImportError):
    """A package of an optional extra is not installed: the message names the extra and the pip command.

    Also an ImportError, so code written as ``try: import llmrec.serve except ImportError`` still works."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        LlmrecError.__init__(
            self,
            f"{what} needs the {extra} extra ({module} is not installed)",
            hint=f"pip install 'llmrec[{extra}]'",
        )
        self.name, self.extra, self.module = module, extra, module


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> list[ModuleType]:
    """Import ``modules`` (default: all of ``extra``'s) and return them; a missing one raises
    :class:`MissingExtra` saying that ``what`` (e.g. ``"llmrec serve"``) needs ``extra``."""
    found = []
    for name in EXTRAS[extra] if modules is None else modules:
        try:
            found.append(importlib.import_module(name))
        except ImportError as e:
            missing = (e.name or name).split(".")[0]
            if missing != name.split(".")[0]:
                raise  # the package is there but one of its own imports failed: not a missing extra
            raise MissingExtra(what, extra, name) from None
    return found


def available(extra: str) -> bool:
    """Whether every module of ``extra`` can be imported (imports them)."""
    try:
        require(extra, extra)
    except MissingExtra:
        return False
    return True


__all__ = ["EXTRAS", "MissingExtra", "available", "require"]
