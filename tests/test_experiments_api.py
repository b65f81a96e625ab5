"""``llmrec.experiments`` (the paper figures and benchmarks) uses llmrec the way a user's script would: the
public API, the model registry and contract, the trainer, the evaluator, the public Dataset, helpers, and
the other pipeline stages through their public entry points. It never imports a private name
(``from llmrec.x import _helper``, ``llmrec._module``) from outside ``llmrec.experiments``, never a
concrete model's module (it builds models by name), never the trainer's internals.

Checked on the source with ``ast``: every ``import llmrec...`` / ``from llmrec... import ...`` of every
file under ``experiments/``, at module level, inside functions and under ``if TYPE_CHECKING:`` alike."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "llmrec"
HERE = "llmrec.experiments"

#: what any experiment may use: module -> what for (a key ending in "." also allows its submodules)
CONTRACT = {
    "llmrec": "the Python API (prepare, train, evaluate, load)",
    "llmrec.api": "the Python API, by its module",
    "llmrec.config": "typed options",
    "llmrec.errors": "errors that say what to do",
    "llmrec.extras": "require(extra, what): a missing optional package as one line naming its extra",
    "llmrec.placement": "where a command runs its model: Placement and the --device / --dtype options",
    "llmrec.models.base": "the registry (build_model, load_model, model_config...) and the Recommender contract",
    "llmrec.models.neural": "the torch models' contract the trainer relies on (TorchRecommender, Stage)",
    "llmrec.models.llm.base": "the LLM models' contract (FeatureBackedLLM: attach, trained_on)",
    "llmrec.training": "the trainer (fit)",
    "llmrec.training.loop": "what llmrec train runs: prepare_training, training_stage, TrainingStep",
    "llmrec.eval.": "metrics and the evaluator",
    "llmrec.data.dataset": "the prepared Dataset",
    "llmrec.utils.": "io, timing, markdown helpers",
    "llmrec.plots": "figures",
    "llmrec.report": "tables of runs",
    HERE + ".": "each other",
}
#: the other pipeline stages, run end to end by some experiments through their public entry points:
#: module -> what for. An entry no experiment imports any more is an error (the list only shrinks).
STAGES = {
    "llmrec.pipeline": "llmrec train as a function: TrainConfig, train, run folders (history-sweep, grids)",
    "llmrec.data.processing": "llmrec prepare (the demo prepares MovieLens-100K)",
    "llmrec.data.images": "the items' image files (the I-LLMRec grid checks they exist)",
    "llmrec.features.build": "llmrec features (the demo and the I-LLMRec grid build theirs)",
    "llmrec.features.store": "a stored feature: read, or the zero image stand-in written",
    "llmrec.llm.describe": "llmrec describe's texts (the descriptions w/o UHEM writes inline)",
    "llmrec.llm.prompts": "the item representations the I-LLMRec efficiency figure times",
    "llmrec.assets": "the default models' names, the demo's offline LM check",
    "llmrec.data.schema": "the item and interaction tables' schema (the GPU check writes its catalog in it)",
    "llmrec.data.importers": "each source's processing defaults (reproduce checks a prepared dataset against them)",
}


def allowed(module: str) -> bool:
    return any(
        module == key or (key.endswith(".") and (module == key[:-1] or module.startswith(key)))
        for key in (*CONTRACT, *STAGES)
    )


def llmrec_imports(source: str, module: str, package: bool = False) -> list[tuple[int, str, str]]:
    """(line, module, name) of every llmrec import in ``source`` (the module ``module``, a package's
    ``__init__`` when ``package``); name ``*`` for ``import llmrec.x``; relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, "*") for a in node.names if a.name.split(".")[0] == "llmrec"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts[: len(parts) - node.level + (1 if package else 0)]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] == "llmrec":
                found += [(node.lineno, base, a.name) for a in node.names]
    return found


def violations(source: str, module: str, package: bool = False) -> list[str]:
    """Each import of ``source`` (the module ``module``) that experiments may not make, with why."""
    out = []
    for line, imported, name in llmrec_imports(source, module, package):
        inside = imported == HERE or imported.startswith(HERE + ".")
        what = f"{module}:{line}: " + (
            f"import {imported}" if name == "*" else f"from {imported} import {name}"
        )
        if any(part.startswith("_") for part in imported.split(".")):
            out.append(f"{what}: a private module")
        elif name.startswith("_") and not inside:
            out.append(f"{what}: a private name (use or make a public one)")
        elif not allowed(imported):
            out.append(f"{what}: not among the modules experiments use (CONTRACT, STAGES)")
    return out


def experiment_files() -> list[Path]:
    return sorted((SRC / "experiments").glob("*.py"))


def _module(path: Path) -> str:
    return f"{HERE}.{path.stem}" if path.stem != "__init__" else HERE


def test_the_rule_catches_what_experiments_may_not_import() -> None:
    source = """
from llmrec.training.loop import TrainingStep, _scheduler
from llmrec.models.llm.histllm import HistLLM
from llmrec.models.base import build_model
import llmrec.training.distributed
from llmrec._version import __version__
from .ctr_report import _pct
from llmrec.experiments.efficiency import zero_image_feature

def lazy():
    from llmrec.eval.evaluator import _private
    from ..pipeline import train
"""
    found = [v.split(": ", 1)[1] for v in violations(source, "llmrec.experiments.x")]
    assert found == [
        "from llmrec.training.loop import _scheduler: a private name (use or make a public one)",
        "from llmrec.models.llm.histllm import HistLLM: not among the modules experiments use (CONTRACT, STAGES)",
        "import llmrec.training.distributed: not among the modules experiments use (CONTRACT, STAGES)",
        "from llmrec._version import __version__: a private module",
        "from llmrec.eval.evaluator import _private: a private name (use or make a public one)",
    ]
    assert [m for _, m, _ in llmrec_imports(source, "llmrec.experiments.x")][-1] == "llmrec.pipeline"
    # in the package's own __init__, "." is the package itself
    inside = llmrec_imports("from .ctr import x", HERE, package=True)
    assert inside == [(1, "llmrec.experiments.ctr", "x")]


@pytest.mark.parametrize("path", experiment_files(), ids=lambda p: p.name)
def test_experiments_import_only_the_public_api_and_the_trainer(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert violations(source, _module(path), package=path.stem == "__init__") == []


def test_every_stage_entry_is_still_used() -> None:
    used = {
        m
        for p in experiment_files()
        for _, m, _ in llmrec_imports(p.read_text(encoding="utf-8"), _module(p), p.stem == "__init__")
    }
    assert set(STAGES) <= used, f"no experiment imports {sorted(set(STAGES) - used)}: drop it from STAGES"
