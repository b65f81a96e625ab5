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
import dataclasses
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "llmrec"
CHECKED = ("pipeline.py", "api.py", "serve/*.py", "recommend.py", "features/*.py", "experiments/*.py")
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
    assert {"pipeline.py", "api.py", "serve/app.py", "recommend.py", "features/build.py"} <= rels
    assert any(r.startswith("experiments/") for r in rels)


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: p.relative_to(SRC).as_posix())
def test_no_side_door_into_a_model(path: Path) -> None:
    rel = path.relative_to(SRC).as_posix()
    assert side_doors(path.read_text(encoding="utf-8"), rel) == [], (
        "ask the model through its declared contract (llmrec.models.base.Recommender) instead"
    )


# -- the declared capabilities that replaced the side doors


def test_capabilities_are_declared_on_the_class() -> None:
    from llmrec.models.base import get_model_class

    assert get_model_class("illmrec").builds_prompts() and get_model_class("histllm").builds_prompts()
    assert get_model_class("recgpt4v").builds_prompts()
    assert not get_model_class("popularity").builds_prompts() and not get_model_class("mf").builds_prompts()
    assert (
        get_model_class("histllm").shared_prefix_ranking and not get_model_class("mf").shared_prefix_ranking
    )


def test_a_model_without_prompts_or_embeddings_says_so() -> None:
    from llmrec.errors import ConfigError
    from llmrec.models.base import build_model
    from llmrec.placement import Placement

    model = build_model("popularity", {}, 3, 4)
    with pytest.raises(ConfigError, match="model 'popularity' builds no LLM prompt to show"):
        model.show_prompts(None, 0)  # type: ignore[arg-type]
    assert model.export_embeddings() == {} and model.feature_needs() == {}
    assert model.placement == Placement(device="cpu", dtype=None) and model.mixed_precision == "none"


def test_placement_of_a_torch_model() -> None:
    from llmrec.models.base import build_model, placement_for
    from llmrec.placement import Placement

    model = build_model("mf", {"mixed_precision": "bf16"}, 3, 4, placement_for("mf", "cpu"))
    assert model.placement == Placement(device="cpu", dtype=None) and model.mixed_precision == "bf16"
    assert "device" not in dataclasses.asdict(model.cfg)  # where it runs is the command's, not an option


def test_a_torch_model_fits_like_any_model(synthetic_dataset) -> None:
    """``model.fit(ds)`` is the same call for every model (a torch model runs its stages through the
    trainer) instead of a TypeError telling the caller to use another function."""
    from llmrec.data.dataset import Dataset
    from llmrec.models.base import build_model, placement_for

    ds = Dataset(synthetic_dataset)
    cpu = placement_for("mf", "cpu")
    model = build_model("mf", {"epochs": 1, "validate": False}, ds.n_users, ds.n_items, cpu)
    before = model.export_embeddings()["item"][1].copy()
    model.fit(ds)
    assert not (model.export_embeddings()["item"][1] == before).all()


def test_validation_sees_a_declared_view_of_the_dataset(synthetic_dataset) -> None:
    """The trainer's validation subset is an explicit view (what validation reads), not a proxy that
    forwards any attribute to the dataset."""
    from llmrec.data.dataset import Dataset
    from llmrec.training.loop import ValidationView, _eval_subset

    ds = Dataset(synthetic_dataset)
    view = _eval_subset(ds, 5)
    assert isinstance(view, ValidationView) and not hasattr(ValidationView, "__getattr__")
    assert len(view.split("valid").users) == 5 and view.negatives("valid").shape[0] == 5
    assert (view.n_users, view.n_items) == (ds.n_users, ds.n_items)
    assert (view.item_popularity == ds.item_popularity).all() and len(view.ctr("valid")) == len(
        ds.ctr("valid")
    )
    with pytest.raises(AttributeError):
        view.root  # noqa: B018 - not something validation reads
