"""The model contract the trainer and evaluator rely on, and nothing else.

A model is built from its own typed config plus the dataset's sizes, learns (``llmrec.training.fit``: its
own ``fit``, or a torch model's declared stages), and scores:

- ``score_all(users, histories) -> (B, N)``: every catalog item, for full ranking;
- ``score(users, histories, candidates) -> (B, C)``: given candidates (target + frozen negatives);
- ``score_pairs(users, histories, targets) -> (B,)``: CTR-style (user, target) scores for AUC/UAUC.

``score`` and ``score_pairs`` default to gathering from ``score_all``; models for which the whole
catalog is expensive override them. ``save``/``load`` round-trip a trained model through a directory.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import difflib
import importlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from llmrec.config import ConfigError, check_ranges, from_dict, merge, to_dict
from llmrec.errors import LlmrecError
from llmrec.placement import Placement
from llmrec.utils.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import pandas as pd

    from llmrec.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Options shared by every model (subclasses add their own fields, with their valid ranges as
    ``option(..., ge=1)``; a subclass's ``__post_init__`` calls this one's first).

    Frozen, as every model config (``@dataclasses.dataclass(frozen=True)``): a model's config is what was
    asked when it was built and what model.json saves; a caller that switches an option for a while (the
    shared prompt prefix, a prompt budget) does it through :meth:`Recommender.switched`."""

    def __post_init__(self) -> None:
        check_ranges(self)


class Recommender(abc.ABC):
    name: ClassVar[str] = ""
    config_cls: ClassVar[type[ModelConfig]] = ModelConfig
    #: default options of a registered preset (e.g. ``collm`` = histllm with a fixed prompt recipe)
    preset: ClassVar[dict[str, Any]] = {}
    #: named sets of default options selected by the config's ``recipe`` option (e.g. I-LLMRec's paper and
    #: official recipes); any option given alongside still overrides the recipe's value
    recipes: ClassVar[dict[str, dict[str, Any]]] = {}
    #: what the model is for: next-item ranking and/or CTR (a CTR-only model skips ranking evaluation)
    tasks: ClassVar[tuple[str, ...]] = ("ranking", "ctr")
    #: CTR examples scored per call in evaluation (LLM models score fewer at a time)
    pair_batch_size: int = 1024
    #: whether loading a saved model needs its dataset (models that read item texts/features from it)
    needs_dataset: ClassVar[bool] = False
    #: whether ``score(..., shared_prefix=True|False)`` ranks a user's candidates either after one shared
    #: prompt prefix (its KV cache serving every candidate) or with one prompt per (user, candidate) pair, to
    #: the same logits (``llmrec ctr-efficiency`` times both)
    shared_prefix_ranking: ClassVar[bool] = False
    #: whether scores depend on the user index (a learned user embedding): an ad-hoc history of a user the
    #: model never saw cannot be scored, and the API says so instead of using user 0's embedding
    needs_user_id: ClassVar[bool] = False
    #: whether the model scores an item it never trained on (an item held out by ``prepare --cold-items``)
    #: from that item's features or texts; False for an ID model, whose cold cases get the evaluation's
    #: documented fallback (every unseen item one score: chance level, ties counted fairly)
    scores_unseen_items: ClassVar[bool] = False
    #: what quantising the model's backbone to int8 is known to cost it, logged as a warning when it is
    #: quantised (None: nothing known; ``llmrec experiments quant-bench`` measures it on a run)
    int8_caution: ClassVar[str | None] = None
    #: whether the model runs on a torch device (``--device``); a numpy model runs on the CPU
    on_device: ClassVar[bool] = False
    #: whether the model is built around an LLM backbone, whose weights' dtype the placement sets (``--dtype``)
    has_backbone: ClassVar[bool] = False
    #: options a caller may switch for a while (:meth:`switched`) without rebuilding the model: ones that
    #: change how it computes, never what it learned (e.g. the shared prompt prefix, a prompt budget)
    switchable: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, cfg: ModelConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        """``placement``: where the command runs the model (:func:`placement_for`); default: the CPU."""
        self.cfg, self.n_users, self.n_items = cfg, n_users, n_items
        self.placement = placement or Placement()
        self._switched: ModelConfig | None = None

    @property
    def opts(self) -> Any:
        """The options the model computes with now: its config, with what :meth:`switched` switched."""
        return self._switched or self.cfg

    @contextlib.contextmanager
    def switched(self, **values: Any) -> Iterator[None]:
        """Within the block, compute with the :attr:`switchable` options ``values`` (checked as the config
        checks them); the config itself, what the model was built with and saves, does not change."""
        if unknown := sorted(set(values) - set(self.switchable)):
            raise ConfigError(
                f"model '{self.name}' cannot switch {unknown} while built; switchable: {list(self.switchable)}"
            )
        before = self._switched
        self._switched = dataclasses.replace(self.opts, **values)
        try:
            yield
        finally:
            self._switched = before

    @abc.abstractmethod
    def fit(self, dataset: Dataset, run: Any | None = None) -> None:
        """Learn from ``dataset``; log to ``run`` when given.

        Models without torch weights (popularity, random) learn here; a torch model declares its training
        stages instead and :func:`llmrec.training.fit` (which calls this for the others) runs them."""

    @abc.abstractmethod
    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """(B, N) scores of every item for each user given their chronological history."""

    def score(self, users: np.ndarray, histories: list[np.ndarray], candidates: np.ndarray) -> np.ndarray:
        """(B, C) scores of the given candidate items."""
        return np.take_along_axis(
            self.score_all(users, histories), np.asarray(candidates, dtype=np.int64), axis=1
        )

    def score_pairs(self, users: np.ndarray, histories: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
        """(B,) scores of one target item per example (CTR protocol)."""
        return self.score(users, histories, np.asarray(targets, dtype=np.int64)[:, None])[:, 0]

    # -- persistence: config, sizes and dataset in model.json; subclasses add their state in save_state/load_state
    def save(self, directory: str | Path, dataset: Dataset | None = None) -> None:
        """Write the model into ``directory``; ``dataset`` (the one it was trained on) is recorded by a path
        relative to ``directory`` and its content checksum, so a run can move with its dataset."""
        from llmrec.data.dataset import dataset_ref

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_state(directory)
        dataset = dataset or self.trained_on
        write_json_atomic(
            directory / "model.json",
            {
                "model": self.name,
                "config": to_dict(self.cfg),
                "n_users": self.n_users,
                "n_items": self.n_items,
                "dataset": dataset_ref(dataset, directory) if dataset is not None else None,
            },
        )

    @property
    def trained_on(self) -> Dataset | None:
        """The dataset the model is attached to, when it keeps one (models around an LLM do)."""
        return None

    def save_state(self, directory: Path) -> None:  # noqa: B027 (optional hook: stateless models skip it)
        """Write learned state (weights, counts) into ``directory``."""

    def load_state(self, directory: Path, dataset: Dataset | None) -> None:  # noqa: B027 (optional hook)
        """Read what :meth:`save_state` wrote (``dataset``: the located training dataset, when known)."""

    # -- optional capabilities, declared on the class so that callers ask the model rather than inspect it
    #: whether the model learns by optimiser steps of declared stages (the torch models, which
    #: :func:`llmrec.training.fit` trains): what ``llmrec bench`` can time
    trained_in_steps: ClassVar[bool] = False

    def user_representations(self, histories: list[np.ndarray]) -> np.ndarray:
        """(U, d) the state the model scores a user from, one row per history, for inspection (``llmrec
        probe``). Only a model that overrides this has one (:meth:`has_user_representations`)."""
        raise LlmrecError(
            f"model '{self.name}' exposes no user states", hint="probe a model that has them, e.g. illmrec"
        )

    @classmethod
    def has_user_representations(cls) -> bool:
        """Whether :meth:`user_representations` gives user states (the model class overrides it)."""
        return cls.user_representations is not Recommender.user_representations

    #: whether ``score_all`` is a dot product, ``query_vectors(users, histories) @ item_matrix().T`` (up to
    #: float error; an item bias is folded in as one more column): what ``llmrec index`` and
    #: ``Model.similar_items`` need
    dot_product: ClassVar[bool] = False

    def query_vectors(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """(B, d) float32 query vectors: ``score_all(users, histories) == query_vectors(...) @ item_matrix().T``.
        Only a model with :attr:`dot_product` has them."""
        raise self._no_vectors()

    def item_matrix(self) -> np.ndarray:
        """(N, d) float32 item vectors in dataset order, the other side of :meth:`query_vectors`."""
        raise self._no_vectors()

    def _no_vectors(self) -> LlmrecError:
        return LlmrecError(
            f"model '{self.name}' has no item vectors: its scores are not a dot product of a user vector "
            "and item vectors",
            hint="use a model that has them: mf, vbpr, sasrec, gru4rec, bert4rec, bm3, lgmrec, illmrec",
        )

    def show_prompts(self, dataset: Dataset, user: int, seed: int = 0) -> list[dict[str, Any]]:
        """The prompts the model builds for user index ``user`` of ``dataset`` (attached), with token counts
        (``llmrec prompts``). Only a model that overrides this builds any (:meth:`builds_prompts`)."""
        raise ConfigError(
            f"model '{self.name}' builds no LLM prompt to show", hint="use an LLM model: illmrec"
        )

    @classmethod
    def builds_prompts(cls) -> bool:
        """Whether :meth:`show_prompts` shows prompts (the model class overrides it: the LLM models)."""
        return cls.show_prompts is not Recommender.show_prompts

    def attach(self, ds: Dataset) -> None:  # noqa: B027 (optional hook: only models around an LLM attach)
        """Load what scoring reads from ``ds`` (a backbone, item texts and features) without training."""

    def export_embeddings(self) -> dict[str, tuple[str, np.ndarray]]:
        """CF features this model can give the LLM methods: {name: (kind 'item'|'user', (count, dim) array)};
        empty for a model without learned embeddings (``llmrec features --from-run`` refuses it)."""
        return {}

    def feature_needs(self) -> dict[str, str]:
        """Feature-store names this configuration reads, by role (a sweep checks them before training);
        empty for a model that reads no stored feature."""
        return {}

    # -- items added after training (``llmrec add-items``): only a model that scores an item from its
    # features or texts can take them; the base class refuses
    def add_item_rows(self, features: dict[str, np.ndarray], texts: pd.DataFrame) -> None:
        """Grow the item tables by ``len(texts)`` items never trained on, given their ``features`` by the
        role names of :meth:`feature_needs` ((M, d) float32 each; a row of NaN: the item lacks it) and
        their rows of the dataset's item columns (title, description...). The new items take the indices
        after the last one (``n_items`` grows by M). Build everything first, assign last: the caller
        holds the lock queries take, so a half-grown model is never scored."""
        raise LlmrecError(
            f"model '{self.name}' scores an item by the ID it learned in training, so an item added "
            "afterwards has no score",
            hint="retrain on a dataset with the new items, or add them to a run of a model that reads "
            "item features (illmrec, vbpr)",
        )

    def check_item_rows(self, features: dict[str, np.ndarray], texts: pd.DataFrame) -> None:
        """Refuse, before anything is written, items :meth:`add_item_rows` could not take (one line)."""
        if not self.adds_items():
            self.add_item_rows(features, texts)  # the refusal

    @classmethod
    def adds_items(cls) -> bool:
        """Whether :meth:`add_item_rows` grows the catalog (the model class overrides it)."""
        return cls.add_item_rows is not Recommender.add_item_rows

    @property
    def mixed_precision(self) -> str:
        """Autocast of the training steps (none, bf16, fp16): a torch model's training option."""
        return "none"


_MODELS: dict[str, type[Recommender]] = {}


def register_model(name: str) -> Callable[[type[Recommender]], type[Recommender]]:
    """Register a Recommender class under ``name`` (used by ``llmrec train NAME``); duplicates are an error.

    A model of llmrec itself must be listed in :data:`BUILTIN_MODELS` under its module: that list is what
    names the built-in models before any of them is imported, so a model missing there is refused here."""

    def deco(cls: type[Recommender]) -> type[Recommender]:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is already registered by {_MODELS[name].__module__}")
        package, _, module = cls.__module__.rpartition(".")
        if package == __package__ and BUILTIN_MODELS.get(name) != module:
            raise ValueError(f"built-in model '{name}' ({cls.__module__}) is missing from BUILTIN_MODELS")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return deco


# the models that ship with llmrec -> the module of llmrec.models that registers each (imported when the
# model is first asked for, so naming models imports no torch): the one list of the built-in names, which
# available_models() and every "unknown model" message read; register_model refuses a built-in model
# missing here, and a test checks that every name here is registered by its module
BUILTIN_MODELS: dict[str, str] = {
    "popularity": "popularity",
    "random": "popularity",
    "sasrec": "sasrec",
    "gru4rec": "gru4rec",
    "bert4rec": "bert4rec",
    "mf": "mf",
    "vbpr": "vbpr",
    "bm3": "bm3",
    "lgmrec": "lgmrec",
    "illmrec": "llm.illmrec",
    "unimp": "llm.unimp",
    "histllm": "llm.histllm",
    "recgpt4v": "llm.recgpt4v",
    **{p: "llm.ctr_presets" for p in ("tallrec", "tallrec_desc", "tallrec_image", "collm", "collm_image")},
    **{p: "llm.ctr_presets" for p in ("binllm", "binllm_image")},
}


def unseen_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An added item feature as :meth:`Recommender.add_item_rows` is given it -> (values with the rows of
    items without it set to 0, float32; (M,) bool mask of those rows)."""
    values = np.asarray(values, dtype=np.float32)
    missing = np.isnan(values).all(axis=1)
    return np.nan_to_num(values, nan=0.0), missing


def available_models() -> list[str]:
    """Every model name: the built-in ones (without importing them) and any registered since."""
    return sorted(set(BUILTIN_MODELS) | set(_MODELS))


def unknown_model(name: str) -> LlmrecError:
    """The error for a model name that is neither built in nor registered: it names the close matches
    first (a typo such as ``sasrc``), then every model there is."""
    names = available_models()
    close = difflib.get_close_matches(name, names, n=3)
    quoted = [repr(c) for c in close]
    guess = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
    hint = (f"did you mean {guess}? " if close else "") + f"choose one of: {', '.join(names)}"
    return LlmrecError(f"unknown model '{name}'", hint=hint)


def get_model_class(name: str) -> type[Recommender]:
    """The class of model ``name``, importing the module of a built-in one on first use."""
    if name not in _MODELS and name in BUILTIN_MODELS:
        importlib.import_module(f"{__package__}.{BUILTIN_MODELS[name]}")
    if name not in _MODELS:
        raise unknown_model(name)
    return _MODELS[name]


def model_config(name: str, options: dict[str, Any]) -> ModelConfig:
    """The fully resolved config of model ``name``: its preset, its recipe's defaults (models with
    ``recipes``), then ``options`` merged in at every depth (unknown keys are an error). Where the model
    runs is not an option: the command's placement (:func:`placement_for`) says it."""
    cls = get_model_class(name)
    options = merge(cls.preset, options)  # a registered preset of another model fixes some defaults
    _refuse_placement_options(name, options)
    if cls.recipes:  # the recipe's defaults, then every option given
        recipe = options.get("recipe", cls.config_cls.recipe)  # type: ignore[attr-defined]
        if recipe not in cls.recipes:
            raise ConfigError(
                f"model '{name}' options: recipe {recipe!r} is not one of {sorted(cls.recipes)}"
            )
        options = merge(cls.recipes[recipe], options)
    return from_dict(cls.config_cls, options, where=f"model '{name}' options")


def _refuse_placement_options(name: str, options: dict[str, Any]) -> None:
    """``device`` and ``backbone.dtype`` were model options before the command placed models: said so.
    ``options`` is merged (dotted keys already nested)."""
    backbone = options.get("backbone")
    for given, option, flag in (
        ("device" in options, "device", "--device"),
        (isinstance(backbone, dict) and "dtype" in backbone, "backbone.dtype", "--dtype"),
    ):
        if given:
            raise ConfigError(
                f"model '{name}' options: {flag[2:]} is where the command places the model, not a model "
                f"option; give {flag} instead of -o {option}"
            )


def placement_for(
    name: str, device: str | None = None, dtype: str | None = None, quantize: str | None = None
) -> Placement:
    """Where model ``name`` runs here, from a command's ``--device``/``--dtype``/``--quantize`` (None:
    ``auto``, exact); a flag that does not apply to the model (a device for a numpy model, a dtype or a
    quantisation without an LLM) is an error."""
    cls = get_model_class(name)
    if not cls.on_device and device not in (None, "auto", "cpu"):
        raise ConfigError(f"model '{name}' has no device option: it runs on the CPU (numpy); drop --device")
    if not cls.has_backbone and dtype not in (None, "auto"):
        raise ConfigError(f"--dtype applies to LLM backbones and model '{name}' has none; drop it")
    if not cls.has_backbone and quantize not in (None, "none"):
        raise ConfigError(f"--quantize applies to LLM backbones and model '{name}' has none; drop it")
    device = device if cls.on_device else "cpu"
    return Placement.resolve(device, dtype, backbone=cls.has_backbone, quantize=quantize)


def build_model(
    name: str, options: dict[str, Any], n_users: int, n_items: int, placement: Placement | None = None
) -> Recommender:
    """Instantiate a registered model from a dict of its options (see :func:`model_config`), placed as
    ``placement`` says (default: :func:`placement_for` the model with ``auto`` device and dtype)."""
    return get_model_class(name)(
        model_config(name, options), n_users, n_items, placement or placement_for(name)
    )


def model_dir(path: str | Path) -> Path:
    """The model folder of a run directory, or ``path`` itself when it is one."""
    path = Path(path)
    if (path / "model" / "model.json").exists():
        return path / "model"
    if (path / "model.json").exists():
        return path
    if not path.is_dir():
        raise LlmrecError(
            "no such run directory", file=path, hint="give a directory written by 'llmrec train'"
        )
    if (path / "config.json").exists():
        raise LlmrecError(
            "the run's training has not finished (no model/model.json)",
            file=path,
            hint="re-run its 'llmrec train' command to resume it",
        )
    raise LlmrecError(
        "neither a run directory nor a saved model (no model/model.json, no model.json)",
        file=path,
        hint="give a directory written by 'llmrec train'",
    )


_RETRAIN = "the saved model is damaged; train it again (llmrec train ... --restart)"


def read_model_record(directory: Path) -> dict[str, Any]:
    """A saved model's model.json (name, config, sizes, dataset), checked: a damaged one is an error naming it."""
    path = directory / "model.json"
    try:
        info = read_json(path)
    except LlmrecError as e:
        raise LlmrecError(str(e), hint=_RETRAIN) from None
    expected = {"model": str, "config": dict, "n_users": int, "n_items": int}
    if not isinstance(info, dict):
        raise LlmrecError("not a saved llmrec model (expected a JSON object)", file=path, hint=_RETRAIN)
    for key, tp in expected.items():
        if not isinstance(info.get(key), tp) or isinstance(info.get(key), bool):
            raise LlmrecError(
                f"{'missing' if key not in info else 'invalid'} entry (expected {tp.__name__})",
                file=path,
                field=key,
                hint=_RETRAIN,
            )
    if not isinstance(info.get("dataset"), dict | str | None):
        raise LlmrecError("invalid entry", file=path, field="dataset", hint=_RETRAIN)
    return info


# keys older versions saved that the current configs no longer have, at their value of no effect (None:
# any value; device and backbone.dtype: where the model ran, now the command's placement; rec_norm: an
# I-LLMRec BatchNorm, removed)
_LEGACY_KEYS: dict[str, dict[str, Any]] = {
    "backbone": {"device": None, "dtype": None},
    "": {"rec_norm": False, "device": None},
}


def drop_legacy_keys(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """A saved model config without the keys of older versions (:data:`_LEGACY_KEYS`); one set to a value
    this version cannot honour is an error naming ``path``."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for group, keys in _LEGACY_KEYS.items():
        node = config.get(group) if group else config
        for key, harmless in keys.items():
            if not isinstance(node, dict) or key not in node:
                continue
            if harmless is not None and node[key] != harmless:
                raise LlmrecError(
                    f"saved with the option {key}={node[key]!r}, which this version no longer has",
                    file=path,
                    hint="retrain the model with this version",
                )
            node.pop(key)
    return config


def load_model(
    path: str | Path,
    device: str | None = "auto",
    dtype: str | None = "auto",
    data: str | Path | Dataset | None = None,
    quantize: str | None = None,
) -> Recommender:
    """Rebuild a saved model (a run directory or its ``model/`` folder) on ``device`` in ``dtype``
    (``quantize="int8"``: its LLM backbone's linear layers then quantised, see :mod:`llmrec.placement`).

    Whatever device and precision it was trained with, it loads here: ``auto`` is this machine's GPU when
    there is one, else the CPU (and bf16 / fp32 for an LLM backbone). A model that reads its dataset
    (the LLM methods) finds it through the path recorded relative to the model, or ``data`` (a moved copy;
    its content checksum must match). Missing or unexpected weights are an error.
    """
    from llmrec.data.dataset import locate_dataset

    directory = model_dir(path)
    info = read_model_record(directory)
    config = drop_legacy_keys(info["config"], directory / "model.json")
    try:  # a model or option this version does not know, a value out of range
        model_config(info["model"], config)
    except LlmrecError as e:
        raise LlmrecError(
            f"cannot rebuild the saved model ({e})", file=directory / "model.json", hint=_RETRAIN
        ) from None
    placement = placement_for(info["model"], device, dtype, quantize)
    model = build_model(info["model"], config, info["n_users"], info["n_items"], placement)
    ref = info.get("dataset")
    if ref is None and (directory / "sources.json").exists():  # saved before model.json recorded it
        ref = read_json(directory / "sources.json").get("dataset")
    dataset = None
    if model.needs_dataset or data is not None:
        dataset = locate_dataset(ref, directory, data)
        if (dataset.n_users, dataset.n_items) != (model.n_users, model.n_items):
            raise LlmrecError(
                f"the model was trained for {model.n_users} users / {model.n_items} items, this dataset has "
                f"{dataset.n_users} / {dataset.n_items}",
                file=dataset.root,
                hint="use the dataset the model was trained on",
            )
    model.load_state(directory, dataset)
    return quantized(model)


def quantized(model: Any) -> Any:
    """``model`` (a loaded, trained Recommender) with each LLM backbone's decoder quantised as its
    placement says (nothing when it says none), in eval mode: a quantised backbone cannot train."""
    if getattr(model, "placement", None) is None or model.placement.quantize is None:
        return model
    from llmrec.llm.backbone import Backbone

    backbones = [m for m in model.modules() if isinstance(m, Backbone)] if hasattr(model, "modules") else []
    if not backbones:
        raise ConfigError(f"--quantize int8: model '{model.name}' has no LLM backbone; drop it")
    model.eval()
    for backbone in backbones:
        backbone.quantize_int8()
    if model.int8_caution:
        log.warning("--quantize int8 on %s: %s", model.name, model.int8_caution)
    return model
