"""Code outside ``llmrec.models`` asks a model through its declared contract (``Recommender``,
``TorchRecommender``, ``FeatureBackedLLM``: ``builds_prompts``, ``export_embeddings``, ``placement``,
``feature_needs``, ``trained_in_steps``...), never by inspecting it: a side door (``hasattr(model, ...)``,
``getattr(model.cfg, ...)``, ``model._private``) silently takes the wrong branch when a model is renamed or
refactored, where a declared capability fails loudly.

The rule, checked on the source with ``ast``: in the files below, a call to ``hasattr``, ``getattr`` or
``isinstance`` whose first argument names a model (an identifier or attribute in it contains ``model``,
case-insensitive: ``model``, ``self.model``, ``model.cfg``, ``loaded_model``; string constants don't count),
and an access ``X._name`` of a private attribute where ``X`` names a model, are errors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "llmrec"
CHECKED = ("pipeline.py", "api.py", "serve*.py", "recommend.py", "features/*.py", "experiments/*.py")
INSPECTORS = {"hasattr", "getattr", "isinstance"}
#: (file, first argument) pairs that are not llmrec models, with why
NOT_MODELS = {
    # a sentence-transformers / transformers encoder, whose optional methods differ by version and kind
    ("features/encoders.py", "self.model"),
}


def names_model(node: ast.expr) -> bool:
    """Whether an identifier or attribute name inside ``node`` contains ``model``."""
    for sub in ast.walk(node):
        name = sub.id if isinstance(sub, ast.Name) else sub.attr if isinstance(sub, ast.Attribute) else ""
        if "model" in name.lower():
            return True
    return False


def side_doors(source: str, rel: str) -> list[str]:
    """Each side door into a model in ``source`` (the file ``rel``), as ``rel:line: code``."""
    found: list[tuple[int, int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in INSPECTORS
            and node.args
            and names_model(node.args[0])
            and (rel, ast.unparse(node.args[0])) not in NOT_MODELS
        ) or (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and names_model(node.value)
        ):
            found.append((node.lineno, node.col_offset, ast.unparse(node)))
    return [f"{rel}:{line}: {code}" for line, _, code in sorted(found)]


def checked_files() -> list[Path]:
    return sorted({p for pattern in CHECKED for p in SRC.glob(pattern)})


def test_the_rule_catches_side_doors() -> None:
    """The checker itself: each kind of side door is found, the declared contract and non-models are not."""
    source = """
if hasattr(model, "show_prompts"): pass
device = getattr(model.cfg, "device", None)
ok = isinstance(self.model, object)
needs = model._needs()
rows = self.model._dataset
fine = model.builds_prompts() and isinstance(saved.get("model"), str) and getattr(self, "x")
"""
    found = side_doors(source, "x.py")
    assert [f.split(": ", 1)[1] for f in found] == [
        "hasattr(model, 'show_prompts')",
        "getattr(model.cfg, 'device', None)",
        "isinstance(self.model, object)",
        "model._needs",
        "self.model._dataset",
    ]


def test_files_are_checked() -> None:
    rels = {p.relative_to(SRC).as_posix() for p in checked_files()}
    assert {"pipeline.py", "api.py", "serve.py", "recommend.py", "features/build.py"} <= rels
    assert any(r.startswith("experiments/") for r in rels)


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: p.relative_to(SRC).as_posix())
def test_no_side_door_into_a_model(path: Path) -> None:
    rel = path.relative_to(SRC).as_posix()
    assert side_doors(path.read_text(encoding="utf-8"), rel) == [], (
        "ask the model through its declared contract (llmrec.models.base.Recommender) instead"
    )
