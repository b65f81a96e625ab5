"""llmrec: LLM-based multimodal recommendation (I-LLMRec, HistLLM), their baselines, data and evaluation.

The Python API (imported on first use, so ``import llmrec`` stays fast and loads no torch)::

    import llmrec
    ds = llmrec.prepare("ml-100k")
    run = llmrec.train("sasrec", data=ds)
    model = llmrec.load(run)
    model.recommend(user_ids=["1"], k=10)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmrec._version import __version__

if TYPE_CHECKING:
    from llmrec.api import Model, QueryError, TrainedRun, evaluate, load, prepare, train

__all__ = ["load", "prepare", "train", "evaluate", "Model", "TrainedRun", "QueryError", "__version__"]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from llmrec import api

        return getattr(api, name)
    raise AttributeError(f"module 'llmrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (what tab completion offers), without importing it; not this module's helpers."""
    return sorted(__all__)
