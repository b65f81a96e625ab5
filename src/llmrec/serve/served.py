"""The runs one service serves (:class:`Served`): ``llmrec serve RUN [RUN ...]`` loads each once and gives
each its own micro-batcher and item adder; a request's ``model`` field picks one by name, the first by
default. Names are the runs' folder names (``runs/sasrec`` -> ``sasrec``), made unique by a suffix."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmrec.api import Model
    from llmrec.serve.batcher import Batcher
    from llmrec.serve.items import ItemAdder
    from llmrec.serve.settings import ServeSettings


@dataclass
class Run:
    """One served run: its name, its loaded model, its item adder, and (while the service runs) its batcher."""

    name: str
    model: Model
    adder: ItemAdder
    batcher: Batcher | None = None


@dataclass
class Served:
    """The served runs by name, in the order given (the first answers requests that name none)."""

    runs: dict[str, Run] = field(default_factory=dict)
    ready: bool = False
    not_ready: str | None = None  # why the warm-up failed, for /readyz

    @classmethod
    def of(cls, given: Model | Mapping[str, Model], settings: ServeSettings) -> Served:
        """``given``: one loaded model (named by its run folder) or a mapping name -> model."""
        from pathlib import Path

        from llmrec.serve.items import ItemAdder

        by_name = given if isinstance(given, Mapping) else {Path(given.run).name or "run": given}
        if not by_name:
            raise ValueError("serve at least one model")
        return cls({name: Run(name, m, ItemAdder(m, settings)) for name, m in by_name.items()})

    @property
    def default(self) -> Run:
        """The run answering requests that name none: the first."""
        return next(iter(self.runs.values()))

    def pick(self, name: str | None) -> Run:
        """The run named ``name`` (None: the default); an unknown name is a 404 naming the field ``model``."""
        if name is None:
            return self.default
        run = self.runs.get(name)
        if run is None:
            from llmrec.api import QueryError

            raise QueryError(
                f"no served run named {name!r}; this service serves {list(self.runs)}",
                field="model",
                status=404,
            )
        return run

    def queue_depth(self) -> int:
        """Requests waiting for any model."""
        return sum(len(r.batcher.pending) for r in self.runs.values() if r.batcher is not None)

    @property
    def closing(self) -> bool:
        """Whether the service is stopping (its batchers close)."""
        return any(r.batcher is not None and r.batcher.closing for r in self.runs.values())


def unique_names(runs: list[str]) -> list[str]:
    """A name per run folder: its last part, with ``-2``, ``-3``... where two runs share one."""
    from pathlib import Path

    names: list[str] = []
    for run in runs:
        base = Path(run).resolve().name or "run"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names
