"""I-LLMRec (Kim et al., 2025): items shown to a frozen LLM as their title plus ONE image token.

Read top to bottom: the config; the modules (adaptor M, the [REC] vector, user/item projectors per
feature type); how a history becomes a prompt; the two losses (ILA, Eq. 3; IRE, Eq. 5-6; combined as
Eq. 7) and retrieval over the whole catalog (Eq. 8). Facts from the official code (reference-notes):
adaptor Linear(d_img, 512) -> LayerNorm -> GELU -> Linear(512, d_llm); projectors Linear(in, 2 d_s) ->
LayerNorm -> ReLU -> Linear(2 d_s, d_s) with d_s = 512; [REC] xavier-initialised; IRE = BCE(target) +
BCE(one random negative) per feature type, averaged over the types; training histories are random
windows (2..4 or 2..9 items, prob. 0.5 each) of the training sequence; at test the last 10 items.

Every ablation is a config switch: ``representation`` (image / title / attribute / description / summary /
cf / image_description: the paper's representation comparison under one protocol and backbone),
``ila`` on/off, ``features`` any subset of image/cf/text, ``training`` end2end or two_stage
(Appendix H: ILA alone, then the projectors alone), ``head_epochs`` (end-to-end training followed by the
projectors alone), ``backbone.lora`` (Appendix E), ``missing_image_fraction`` (Sec. 4.5: image-less items
fall back to their description in the prompt and to a text feature, through its own projector, in
retrieval). Every score is over real catalog items, so every recommendation exists.

Where the paper's text, the official code and llmrec's CPU-friendly defaults differ, ``recipe`` (paper /
official / llmrec, :data:`RECIPES`) sets every such option at once: prompt framing (``prompt_format``: the
chat template, or the official BOS + raw IRE text and Vicuna-v1 ILA conversation), the trained input-embedding
matrix (``backbone.train_embeddings``), the optimiser and schedule, fixed epochs without validation, window
and negative samplers, ILA values from feature bullets, and the small constants; an option given beside it
still wins.

Training the projectors alone (two_stage's stage 2, ``head_epochs``) is cheap: with the LLM, the adaptor
and [REC] frozen, the [REC] state of a prompt never changes, so each of ``head_windows`` random windows per
user is run through the LLM once and its state cached; an epoch then costs no LLM call at all, and
validation prompts are cached the same way. On a CPU this turns a few hundred examples into tens of
thousands of projector updates for the price of one or two end-to-end epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec.config import merge, option
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.features.store import load_item_feature
from llmrec.llm.backbone import Backbone, BackboneConfig
from llmrec.llm.prompts import (
    HISTORY_PREFIX,
    ILA_QUESTIONS,
    REPRESENTATIONS,
    ItemText,
    PromptFormat,
    Representation,
    ila_answer,
    ila_question,
    ire_prompt,
    render_item,
    top_category,
    vicuna_question,
)
from llmrec.models.base import register_model
from llmrec.models.llm.base import FeatureBackedLLM
from llmrec.models.neural import Batch, NeuralConfig, Stage, negatives_for_user, trainable_users

log = logging.getLogger(__name__)

FEATURE_TYPES = ("image", "cf", "text")
ILA_ANSWER_TOKENS = 96  # ILA answers are cut to this many tokens (+ EOS)


@dataclasses.dataclass
class ILLMRecConfig(NeuralConfig):
    recipe: Literal["llmrec", "paper", "official"] = option(
        "llmrec",
        "defaults for every option below: llmrec (CPU-friendly), paper (the paper's text) or official (the "
        "official code); an option given beside it overrides its value (README: I-LLMRec recipes)",
    )
    backbone: BackboneConfig = option(factory=BackboneConfig, help="the LLM (frozen unless backbone.lora)")
    representation: Representation = option(
        "image",
        "how history items appear in the prompt (vlm: UniMP, attributes and a VLM backbone's own image tokens)",
    )
    features: list[str] = option(
        factory=lambda: ["image", "cf", "text"], help="IRE feature types (subset of image, cf, text)"
    )
    image_feature: str = option("image", "feature-store name of the image feature")
    cf_feature: str = option(
        "sasrec_item", "feature-store name of the CF item embeddings (llmrec features --cf)"
    )
    text_feature: str = option(
        "text", "feature-store name of the text feature (also the missing-image fallback)"
    )
    ila: bool = option(True, "train with the Image-LLM Alignment task")
    ila_fields: list[str] = option(
        factory=lambda: ["brand", "category", "title", "description"], help="ILA properties"
    )
    ila_values: Literal["full", "official"] = option(
        "full",
        "ILA answers: full: the whole description and category path; official: ONE random feature bullet "
        "(where the dataset has any) and the top-level category, as the official code",
    )
    prompt_format: PromptFormat = option(
        "chat",
        "chat: both prompts in the backbone's chat template (when it has one); official: the IRE prompt as raw "
        "text after the tokenizer's BOS, ILA as a Vicuna-v1 conversation, as the official code",
    )
    training: Literal["end2end", "two_stage"] = option(
        "end2end",
        "end2end (ILA + IRE, `epochs`), or two_stage: ILA alone (`stage1_epochs`), then the projectors "
        "alone on cached [REC] states with the adaptor and [REC] frozen (`epochs`)",
    )
    stage1_epochs: int = option(1, "two_stage: epochs of ILA-only training", ge=0)
    head_epochs: int = option(
        0, "end2end: then this many epochs of the projectors alone on cached [REC] states (as stage 2)", ge=0
    )
    head_windows: int = option(
        4, "projectors alone: random history windows per training user, drawn once", ge=1
    )
    head_batch_size: int = option(64, "projectors alone: examples per step", ge=1)
    head_lr: float = option(1e-3, "projectors alone: learning rate", gt=0)
    head_standardize: bool = option(
        True,
        "projectors alone: standardise each [REC] dimension by the mean and std of the cached training states "
        "(fixed statistics, saved with the model): SmolLM2's states share a large common component",
    )
    stage1_from: str | None = option(
        None,
        "skip the first stage: start from a saved I-LLMRec model of the same configuration (its model/ "
        "folder) and train the projectors alone",
    )
    adaptor_hidden: int = option(512, "hidden size of the 2-layer MLP adaptor", ge=1)
    adaptor_ln_eps: float = option(1e-5, "epsilon of the adaptor's LayerNorm (official code: 1e-8)", gt=0)
    adaptor_activation: Literal["gelu", "relu"] = option(
        "gelu", "activation of the adaptor (official code: GELU; the paper's text: ReLU)"
    )
    rec_init: Literal["xavier_normal", "xavier_uniform"] = option(
        "xavier_normal", "initialisation of the [REC] vector (official code: xavier_uniform)"
    )
    d_shared: int = option(512, "size of the shared recommendation space of the projectors", ge=1)
    scaled_scores: bool = option(
        True, "divide affinities by sqrt(d_shared) (false = the paper's plain dot product; same ranking)"
    )
    window_short: int = option(4, "training history windows: 2..window_short items ...", ge=2)
    window_long: int = option(9, "... or 2..window_long items, each with probability 0.5", ge=2)
    negative_sampling: Literal["llmrec", "official"] = option(
        "llmrec",
        "IRE negatives: llmrec: one per example, shared by the feature types, never an item of the user's "
        "training sequence; official: one per example and feature type, drawn independently, anything but the "
        "target (as the official code)",
    )
    window_sampler: Literal["llmrec", "official"] = option(
        "llmrec",
        "llmrec: the target position uniform, up to L items before it (1-item histories happen); official: "
        "exactly L contiguous items from a uniform start, the next one the target (a sequence of L items or "
        "fewer gives all but its last), as the official code",
    )
    test_history: int = option(10, "items of history in evaluation prompts (the most recent)", ge=1)
    max_prompt_tokens: int | None = option(
        1024,
        "context budget: drop the oldest items until the prompt fits (never more than the LM's context; "
        "None: the LM's context alone)",
        ge=1,
    )
    max_history_tokens: int | None = option(
        None, "also cap the item list at this many tokens (official code: 3,850; None: no own cap)", ge=1
    )
    max_description_chars: int = option(
        1200, "cut descriptions longer than this in prompts and ILA answers", ge=0
    )
    description_texts: str | None = option(None, "use generated texts (llmrec describe NAME) as descriptions")
    summary_texts: str = option(
        "summary", "generated summaries (llmrec describe --mode summary) for 'summary'"
    )
    missing_image_fraction: float = option(
        0.0, "drop this fraction of item images (seeded) to simulate Sec. 4.5", ge=0, le=1
    )
    missing_seed: int = option(0, "seed of the simulated missing images", ge=0)
    score_batch_size: int = option(16, "prompts per LLM forward when scoring", ge=1)
    shared_prefix: bool = option(
        True,
        "compute the constant prompt start (chat template + instruction) once and reuse its KV cache, "
        "wherever it carries no gradient: always with the LM frozen, in scoring only with LoRA training",
    )
    one_pass: bool = option(
        True,
        "training with ILA: the history the IRE and ILA prompts share runs once, the two prompt ends as "
        "branches of one packed row (tree attention mask); false: one LLM pass per prompt",
    )
    train_users: int | None = option(
        None, "training examples per epoch from this many random users (None = all)", ge=1
    )
    batch_size: int = option(8, "training examples per step", ge=1)
    epochs: int = option(5, "maximum training epochs", ge=1)
    patience: int = option(3, "validations without improvement before stopping", ge=1)
    eval_users: int | None = option(200, "validation users (a fixed random subset; None = all)", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.representation not in REPRESENTATIONS:
            raise ConfigError(f"representation must be one of {REPRESENTATIONS}, got {self.representation!r}")
        bad = [f for f in self.features if f not in FEATURE_TYPES]
        if bad or not self.features:
            raise ConfigError(f"features must be a non-empty subset of {FEATURE_TYPES}, got {self.features}")
        bad = [f for f in self.ila_fields if f not in ILA_QUESTIONS]
        if bad or (self.ila and not self.ila_fields):
            raise ConfigError(
                f"ila_fields must be a non-empty subset of {sorted(ILA_QUESTIONS)}, got {self.ila_fields}"
            )
        if self.window_short > self.window_long:
            raise ConfigError(
                f"need window_short <= window_long, got {self.window_short} > {self.window_long}"
            )
        if self.training == "two_stage" and not self.ila:
            raise ConfigError("two_stage training needs ila on (stage 1 is ILA)")
        if self.stage1_from and self.training == "end2end" and not self.head_epochs:
            raise ConfigError("stage1_from skips the first stage: give head_epochs (or training=two_stage)")


def mlp_adaptor(
    d_in: int, hidden: int, d_out: int, eps: float = 1e-5, activation: str = "gelu"
) -> nn.Sequential:
    """The official adaptor: Linear -> LayerNorm -> GELU (or ReLU, the paper's text) -> Linear."""
    act = nn.GELU() if activation == "gelu" else nn.ReLU()
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.LayerNorm(hidden, eps=eps), act, nn.Linear(hidden, d_out)
    )


def _bullets(extra: str) -> tuple[str, ...]:
    """The feature bullets in an item's ``extra`` JSON (Amazon importers keep the ``feature`` list there)."""
    bullets = json.loads(extra or "{}").get("feature") if extra else None
    if not isinstance(bullets, list):
        return ()
    return tuple(b.strip() for b in bullets if isinstance(b, str) and b.strip())


def projector(d_in: int, d_s: int) -> nn.Sequential:
    """The official IRE projector: Linear -> LayerNorm -> ReLU -> Linear to the shared space."""
    return nn.Sequential(nn.Linear(d_in, 2 * d_s), nn.LayerNorm(2 * d_s), nn.ReLU(), nn.Linear(2 * d_s, d_s))


#: the official code's choices (reference-notes): HF Trainer defaults (AdamW, lr 5e-5, linear decay,
#: clipping 1.0), 8 fixed epochs without validation, batch 8 per device, the input-embedding matrix trained
OFFICIAL: dict[str, Any] = {
    "backbone": {"train_embeddings": True},
    "prompt_format": "official",
    "ila_values": "official",
    "window_sampler": "official",
    "negative_sampling": "official",
    "adaptor_ln_eps": 1e-8,
    "rec_init": "xavier_uniform",
    "scaled_scores": False,
    "max_prompt_tokens": None,
    "max_history_tokens": 3850,
    "optimizer": "adamw",
    "adam_betas": [0.9, 0.999],
    "lr": 5e-5,
    "lr_schedule": "linear",
    "max_grad_norm": 1.0,
    "validate": False,
    "epochs": 8,
    "batch_size": 8,
}
#: ``recipe``: named defaults. paper = what the paper's text states (frozen LLM, lr 1e-3, batch 32, a ReLU
#: adaptor, plain dot products) and the official code wherever the text says nothing
RECIPES: dict[str, dict[str, Any]] = {
    "llmrec": {},
    "official": OFFICIAL,
    "paper": merge(
        OFFICIAL,
        {"backbone": {"train_embeddings": False}, "lr": 1e-3, "batch_size": 32, "adaptor_activation": "relu"},
    ),
}


@register_model("illmrec")
class ILLMRec(FeatureBackedLLM):
    config_cls = ILLMRecConfig
    recipes = RECIPES
    weights_name = "illmrec"
    legacy_weights = ("epochs_started",)  # a counter of models before 0.2
    cfg: ILLMRecConfig

    def __init__(self, cfg: ILLMRecConfig, n_users: int, n_items: int) -> None:
        super().__init__(cfg, n_users, n_items)
        self.backbone: Backbone | None = None  # built by attach(): it needs the dataset's feature sizes
        self.source: dict[str, Any] = {}
        self._pool: dict[str, torch.Tensor] | None = None  # projectors alone: cached training states
        self._state_cache: dict[tuple[int, ...], torch.Tensor] | None = (
            None  # projectors alone: prompt -> state
        )

    # ------------------------------------------------------------------ building against a dataset
    def _needs(self) -> dict[str, str]:
        """Feature-store names this configuration reads, by role."""
        cfg, need = self.cfg, {}
        if cfg.representation in ("image", "image_description") or "image" in cfg.features:
            need["image"] = cfg.image_feature
        if cfg.representation == "cf" or "cf" in cfg.features:
            need["cf"] = cfg.cf_feature
        if "text" in cfg.features or ("image" in need and cfg.missing_image_fraction > 0):
            need["text"] = cfg.text_feature
        return need

    def attach(self, ds: Dataset) -> None:
        """Load the backbone, the features and item texts of ``ds``; create adaptors and projectors."""
        cfg = self.cfg
        feats = {
            role: load_item_feature(ds, name, self.n_items, who="illmrec", option=f"{role}_feature")
            for role, name in self._needs().items()
        }
        self._dataset = ds
        self.source = {
            "features": {role: {"name": f.name, "sha256": f.manifest["sha256"]} for role, f in feats.items()},
        }
        for role, f in feats.items():
            self.register_buffer(
                f"feat_{role}", torch.from_numpy(np.array(f.values, dtype=np.float32)), persistent=False
            )  # (N, d_role)
        has_image = np.zeros(self.n_items, dtype=bool)
        drop = np.zeros(0, dtype=np.int64)
        if cfg.missing_image_fraction > 0:
            rng = np.random.default_rng(cfg.missing_seed)
            drop = rng.choice(
                self.n_items, size=int(round(cfg.missing_image_fraction * self.n_items)), replace=False
            )
        if "image" in feats:
            has_image = ~np.asarray(feats["image"].missing, dtype=bool)
            has_image[drop] = False
        shown = has_image  # the items whose picture the prompts show
        if cfg.representation == "vlm":  # UniMP: the VLM reads the image files themselves
            from llmrec.llm.vlm import ItemPictures

            self._pictures = ItemPictures(ds, "representation=vlm")
            shown = self._pictures.has.copy()
            shown[drop] = False
        self.register_buffer("has_image", torch.from_numpy(has_image), persistent=False)  # (N,)
        if "image" in cfg.features and not has_image.all() and "text" not in feats:
            # image-less items are retrieved through their text feature (Sec. 4.5)
            feats["text"] = load_item_feature(
                ds,
                cfg.text_feature,
                self.n_items,
                who="illmrec (items without images)",
                option="text_feature",
            )
            self.register_buffer(
                "feat_text",
                torch.from_numpy(np.array(feats["text"].values, dtype=np.float32)),
                persistent=False,
            )
            self.source["features"]["text"] = {
                "name": feats["text"].name,
                "sha256": feats["text"].manifest["sha256"],
            }

        # one device for the LM and every module
        self.backbone = Backbone(cfg.backbone, cfg.device, vision=cfg.representation == "vlm")
        if cfg.representation == "vlm":
            self._pictures.bind(self.backbone.model, self.backbone.processor)
        context = self.backbone.context_length
        if context is not None and (cfg.max_prompt_tokens or 0) > context:
            log.info(
                "max_prompt_tokens %d > the LM's context: histories are cut to %d tokens",
                cfg.max_prompt_tokens,
                context,
            )
        d = self.backbone.hidden_size
        if "image" in feats and cfg.representation != "vlm":  # UniMP: the VLM's own projector instead
            self.adaptor = mlp_adaptor(  # M
                feats["image"].dim, cfg.adaptor_hidden, d, cfg.adaptor_ln_eps, cfg.adaptor_activation
            )
        if "cf" in feats and cfg.representation == "cf":
            self.cf_adaptor = mlp_adaptor(  # the CF token's
                feats["cf"].dim, cfg.adaptor_hidden, d, cfg.adaptor_ln_eps, cfg.adaptor_activation
            )
        init = nn.init.xavier_uniform_ if cfg.rec_init == "xavier_uniform" else nn.init.xavier_normal_
        self.rec = nn.Parameter(init(torch.empty(1, d)))  # [REC]
        self.user_proj = nn.ModuleDict({t: projector(d, cfg.d_shared) for t in cfg.features})
        # fixed standardisation of the [REC] state, set by the projectors-alone stage (identity until then)
        self.register_buffer("state_mean", torch.zeros(d))
        self.register_buffer("state_std", torch.ones(d))
        self.item_proj = nn.ModuleDict({t: projector(feats[t].dim, cfg.d_shared) for t in cfg.features})
        if "image" in cfg.features and not has_image.all():
            # image-less items are retrieved through their text feature, with a projector of its own
            self.item_proj["image_fallback"] = projector(feats["text"].dim, cfg.d_shared)
        self._texts = self._item_texts(ds, shown)
        self._has_bullets = any(t.features for t in self._texts)
        self._rendered: dict[str, list[str]] = {}
        self._lengths: dict[str, np.ndarray] = {}
        # what training may change (the projectors-alone stage freezes some of it for a while)
        self._trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        self.to(cfg.device)

    def _item_texts(self, ds: Dataset, has_image: np.ndarray) -> list[ItemText]:
        items = ds.items
        descriptions = items["description"].tolist()
        if self.cfg.description_texts:
            from llmrec.llm.describe import load_texts

            descriptions = load_texts(ds.root, self.cfg.description_texts)
        summaries = [""] * len(items)
        if self.cfg.representation == "summary":
            from llmrec.llm.describe import load_texts

            summaries = load_texts(ds.root, self.cfg.summary_texts)
        return [
            ItemText(title=t, brand=b, category=c, description=d, summary=s, has_image=bool(h), features=f)
            for t, b, c, d, s, h, f in zip(
                items["title"],
                items["brand"],
                items["category"],
                descriptions,
                summaries,
                has_image,
                map(_bullets, items["extra"]),
            )
        ]

    def rendered(self, representation: str | None = None) -> tuple[list[str], np.ndarray]:
        """Every item rendered once (cached) and its token count, for prompts and the context budget."""
        rep = representation or self.cfg.representation
        if rep not in self._rendered:
            assert self.backbone is not None
            texts = [render_item(t, rep, self.cfg.max_description_chars) for t in self._texts]  # type: ignore[arg-type]
            if rep == "vlm":  # [VISUAL] -> the VLM's image tokens, as many as its processor makes
                texts = self._pictures.markers(texts)
            lengths = [
                len(ids) for ids in self.backbone.tokenizer(texts, add_special_tokens=False)["input_ids"]
            ]
            self._rendered[rep], self._lengths[rep] = texts, np.asarray(lengths) + 1  # + the ", " separator
        return self._rendered[rep], self._lengths[rep]

    # ------------------------------------------------------------------ prompts
    def frame(self, text: str, kind: Literal["ire", "ila"]) -> str:
        """The prompt the LM reads around the IRE prompt or ILA question ``text`` (``prompt_format``): the
        backbone's chat template, or the official code's raw text after the tokenizer's BOS (IRE) and
        Vicuna-v1 conversation (ILA; the answer follows after a space)."""
        assert self.backbone is not None
        if self.cfg.prompt_format == "chat":
            return self.backbone.chat(text)
        bos = self.backbone.tokenizer.bos_token or ""
        return bos + (text if kind == "ire" else vicuna_question(text))

    def prompt_head(self, kinds: list[str]) -> str:
        """The constant start every prompt of ``kinds`` ("ire", "ila") has, up to the history's first item:
        what :meth:`Backbone.constant_prefix` computes once ("" when they share nothing)."""
        assert self.backbone is not None
        if self.cfg.prompt_format == "chat":
            return self.backbone.chat_prefix(HISTORY_PREFIX)
        marker = "\x00ITEMS\x00"
        heads = [self.frame(HISTORY_PREFIX + marker, kind) for kind in kinds]  # type: ignore[arg-type]
        return os.path.commonprefix([h[: h.index(marker)] for h in heads])

    def ila_value(self, item: ItemText, field: str, rng: np.random.Generator) -> str:
        """What an ILA answer says about ``field`` of the target (``ila_values``): the full text, or as the
        official code: one random feature bullet for "description" (the description itself on a dataset
        without bullets; "Unknown" for an item without any on a dataset with them) and the top-level
        category."""
        value = {"brand": item.brand, "category": item.category, "title": item.title}.get(field)
        if self.cfg.ila_values == "full":
            return item.description if value is None else value
        if field == "category":
            return top_category(item.category)
        if field != "description":
            return value or ""
        if item.features:
            return item.features[int(rng.integers(len(item.features)))]
        return "" if self._has_bullets else item.description

    def fit_history(self, history: np.ndarray, budget: int) -> np.ndarray:
        """Drop the oldest items until the rendered history fits ``budget`` tokens."""
        _, lengths = self.rendered()
        history = np.asarray(history, dtype=np.int64)
        total = np.cumsum(lengths[history][::-1])[::-1]  # tokens from item j to the end
        return history[np.searchsorted(-total, -budget) :] if len(history) else history

    def fit_prompt(self, history: np.ndarray, budget: int, limit: int) -> np.ndarray:
        """The most recent items of ``history`` whose IRE prompt has at most ``limit`` tokens: the estimate of
        :meth:`fit_history` (``budget`` tokens of items), then corrected by counting the prompt itself, as
        BPE merges across item boundaries put the estimate off by about a token per item either way (an
        item is added back only within ``max_history_tokens``)."""
        assert self.backbone is not None
        history = np.asarray(history, dtype=np.int64)
        _, lengths = self.rendered()
        cap = self.cfg.max_history_tokens

        def fits(start: int) -> bool:
            prompt = self.frame(ire_prompt(self._prompt_parts(history[start:])[0]), "ire")
            return self.backbone.count_tokens(prompt) <= limit  # type: ignore[union-attr]

        start = len(history) - len(self.fit_history(history, budget))
        while start < len(history) and not fits(start):
            start += 1
        while start > 0 and (not cap or lengths[history[start - 1 :]].sum() <= cap) and fits(start - 1):
            start -= 1
        return history[start:]

    def _prompt_parts(self, history: np.ndarray) -> tuple[list[str], list[int], list[int]]:
        texts, _ = self.rendered()
        rendered = [texts[i] for i in history]
        marker = self.backbone.image_token if self.cfg.representation == "vlm" else "[VISUAL]"
        visual = [int(i) for i in history if marker in texts[i]]  # type: ignore[operator]
        cf = [int(i) for i in history if "[CF]" in texts[i]]
        return rendered, visual, cf

    def _limit(self, answer_tokens: int = 0) -> int:
        """The most tokens a prompt may have: ``max_prompt_tokens`` and the LM's context less the answer."""
        assert self.backbone is not None
        context = self.backbone.context_length
        limits = [self.cfg.max_prompt_tokens, None if context is None else context - answer_tokens]
        return min([x for x in limits if x is not None], default=2**31)

    def _budget(self, overhead_text: str, answer_tokens: int = 0) -> int:
        """Tokens left for the history: :meth:`_limit` minus the fixed (framed) text ``overhead_text``; and
        at most ``max_history_tokens``."""
        assert self.backbone is not None
        budget = self._limit(answer_tokens) - self.backbone.count_tokens(overhead_text)
        return min(budget, self.cfg.max_history_tokens or budget)

    def _check_context(self, mask: torch.Tensor) -> None:
        assert self.backbone is not None
        self.backbone.check_context(
            mask,
            hint=f"the fixed prompt text alone nearly fills it: lower max_description_chars "
            f"({self.cfg.max_description_chars}) or use an LM with a longer context",
        )

    def build_ire(self, histories: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Tokenised IRE prompts (history + instruction + [REC]) and the items behind their placeholders."""
        assert self.backbone is not None
        budget, limit = self._budget(self.frame(ire_prompt([]), "ire")), self._limit()
        prompts, visual, cf = [], [], []
        for h in histories:
            rendered, v, c = self._prompt_parts(self.fit_prompt(h, budget, limit))
            prompts.append(self.frame(ire_prompt(rendered), "ire"))
            visual += v
            cf += c
        enc = self.backbone.tokenize(prompts)
        self._check_context(enc["attention_mask"])
        return {
            "ids": enc["input_ids"],
            "mask": enc["attention_mask"],
            "visual": torch.tensor(visual, dtype=torch.long),
            "cf": torch.tensor(cf, dtype=torch.long),
        }

    def build_ila(
        self, histories: list[np.ndarray], targets: np.ndarray, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        """ILA examples: a random property question about the target; labels only on the answer (+ EOS)."""
        assert self.backbone is not None
        tok = self.backbone.tokenizer
        budget = (
            self._budget(self.frame(ila_question([], "description", 0), "ila"), ILA_ANSWER_TOKENS + 1) - 64
        )
        space = " " if self.cfg.prompt_format == "official" else ""  # "ASSISTANT: <answer>"
        ids, labels, visual, cf = [], [], [], []
        for h, t in zip(histories, targets):
            rendered, v, c = self._prompt_parts(self.fit_history(h, budget))
            field = self.cfg.ila_fields[int(rng.integers(len(self.cfg.ila_fields)))]
            question = self.frame(ila_question(rendered, field, int(rng.integers(5))), "ila")
            value = self.ila_value(self._texts[int(t)], field, rng)
            answer = space + ila_answer(field, value, self.cfg.max_description_chars) + (tok.eos_token or "")
            q = tok(question, add_special_tokens=False)["input_ids"]
            a = tok(answer, add_special_tokens=False)["input_ids"][:ILA_ANSWER_TOKENS]
            ids.append(q + a)
            labels.append([-100] * len(q) + a)
            visual += v
            cf += c
        width = max(map(len, ids))
        pad = tok.pad_token_id
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        self._check_context(mask)
        return {
            "ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            "mask": mask,
            "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
            "visual": torch.tensor(visual, dtype=torch.long),
            "cf": torch.tensor(cf, dtype=torch.long),
        }

    def show_prompts(self, dataset: Any, user: int, seed: int = 0) -> list[dict[str, Any]]:
        """What the LM reads for user index ``user`` (``llmrec prompts``): a training window's IRE prompt and ILA
        question and answer (drawn with ``seed``) and the user's test prompt, each as the exact text of the
        token ids the model builds (BOS, template and placeholders as they are) with its token counts."""
        assert self.backbone is not None
        rng = np.random.default_rng(seed)
        history, target = self.sample_window(dataset.train_sequences[user], rng)
        test = np.asarray(dataset.split("test").histories[user])[-self.cfg.test_history :]
        # the constant start is computed once where it carries no gradient (training: the LM frozen); in
        # training with ILA it is what the IRE and ILA prompts share
        lm_trains = self.cfg.backbone.lora or self.cfg.backbone.train_embeddings
        training = (
            [] if lm_trains or not self.cfg.shared_prefix else ["ire", "ila"] if self.cfg.ila else ["ire"]
        )
        shown = []
        for name, kinds, enc in (
            ("training: IRE prompt", training, self.build_ire([history])),
            (
                "training: ILA question and answer",
                training,
                self.build_ila([history], np.array([target]), rng),
            ),
            (
                "evaluation: IRE prompt (test)",
                ["ire"] if self.cfg.shared_prefix else [],
                self.build_ire([test]),
            ),
        ):
            head = self.prompt_head(kinds) if kinds else ""
            row = self.backbone.show(
                enc["ids"][0], enc["mask"][0], enc["labels"][0] if "labels" in enc else None, head
            )
            row["history_items"] = row["text"].count("{Title: ")  # data text holds no braces
            shown.append({"name": name, **row})
        return shown

    # ------------------------------------------------------------------ training
    def num_train_users(self, dataset: Any) -> int:
        """Users per epoch: ``train_users`` random ones (the projectors-alone stage draws them once), or all."""
        return len(trainable_users(dataset)[: self.cfg.train_users])

    def num_train_batches(self, dataset: Any) -> int:
        return -(-self.num_train_users(dataset) // self.cfg.batch_size)

    def num_cached_batches(self, dataset: Any) -> int:
        """Batches per epoch of the projectors alone (``head_windows`` cached windows per user)."""
        return -(-self.num_train_users(dataset) * self.cfg.head_windows // self.cfg.head_batch_size)

    def sample_window(self, seq: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A random (history, target) pair from a training sequence: L in 2..window_short or 2..window_long
        (p 0.5 each, as the official code), the window drawn as ``window_sampler`` says."""
        longest = self.cfg.window_short if rng.random() < 0.5 else self.cfg.window_long
        if self.cfg.window_sampler == "official":
            size = int(rng.integers(2, longest + 1))
            if len(seq) <= size:  # no room for L items and a target: all but the last
                return seq[:-1], int(seq[-1])
            start = int(rng.integers(0, len(seq) - size))  # seq[start + size], the target, exists
            return seq[start : start + size], int(seq[start + size])
        t = int(rng.integers(1, len(seq)))  # target position
        size = int(rng.integers(2, longest + 1))
        return seq[max(0, t - size) : t], int(seq[t])

    def sample_negatives(
        self, rng: np.random.Generator, users: Any, targets: np.ndarray, seqs: Any
    ) -> np.ndarray:
        """IRE negatives of a batch (see ``negative_sampling``): (B,) shared by the feature types, or (B, F)
        one per feature type."""
        if self.cfg.negative_sampling == "official":
            draws = rng.integers(0, self.n_items - 1, size=(len(targets), len(self.cfg.features)))
            return draws + (draws >= np.asarray(targets)[:, None])  # uniform over every item but the target
        return np.concatenate([negatives_for_user(rng, u, seqs[u], self.n_items, 1) for u in users])

    def train_batches(self, dataset: Any, rng: np.random.Generator) -> Iterator[Batch]:
        """IRE prompts of random training windows (and their ILA prompts when ``ila``), a user per example."""
        seqs = dataset.train_sequences
        users = trainable_users(dataset)
        rng.shuffle(users)
        users = users[: self.cfg.train_users]
        for start in range(0, len(users), self.cfg.batch_size):
            chunk = users[start : start + self.cfg.batch_size]
            windows = [self.sample_window(seqs[u], rng) for u in chunk]
            histories = [w[0] for w in windows]
            targets = np.array([w[1] for w in windows])
            negatives = self.sample_negatives(rng, chunk, targets, seqs)
            batch = {f"ire_{k}": v for k, v in self.build_ire(histories).items()}
            batch.update({"target": torch.from_numpy(targets), "negative": torch.from_numpy(negatives)})
            if self.cfg.ila:
                batch.update({f"ila_{k}": v for k, v in self.build_ila(histories, targets, rng).items()})
            yield batch

    def cached_batches(self, dataset: Any, rng: np.random.Generator) -> Iterator[Batch]:
        """Projectors alone: every cached window once, in random order, each with a fresh random negative.

        The windows' [REC] states are computed at the first call (see ``_cache_windows``)."""
        if self._pool is None:
            self._pool = self._cache_windows(dataset)
            if self.cfg.head_standardize:
                states = self._pool["state"]
                self.state_mean.copy_(states.mean(0))
                self.state_std.copy_(states.std(0).clamp_min(1e-6))
        pool, seqs = self._pool, dataset.train_sequences
        order = rng.permutation(len(pool["target"]))
        for start in range(0, len(order), self.cfg.head_batch_size):
            rows = torch.from_numpy(order[start : start + self.cfg.head_batch_size])
            users = pool["user"][rows].tolist()
            negatives = self.sample_negatives(rng, users, pool["target"][rows].numpy(), seqs)
            yield {
                "ire_state": pool["state"][rows],
                "target": pool["target"][rows],
                "negative": torch.from_numpy(negatives),
            }

    @torch.no_grad()
    def _cache_windows(self, dataset: Any) -> dict[str, torch.Tensor]:
        """[REC] states of ``head_windows`` random windows per training user, through the LLM once.

        The windows come from their own seeded rng, so a resumed run caches the same ones."""
        from tqdm.auto import tqdm

        rng = np.random.default_rng(torch.initial_seed() % 2**32 + 1)
        seqs = dataset.train_sequences
        users = trainable_users(dataset)
        if self.cfg.train_users is not None:  # a random subset, drawn once
            users = rng.permutation(users)[: self.cfg.train_users]
        users = np.repeat(users, self.cfg.head_windows)
        windows = [self.sample_window(seqs[u], rng) for u in users]
        log.info("caching the [REC] states of %d training windows (one LLM pass each)", len(windows))
        was_training = self.training
        self.eval()
        states = []
        step = self.cfg.score_batch_size
        for s in tqdm(range(0, len(windows), step), desc="caching [REC] states", leave=False, disable=None):
            states.append(self.prompt_states([w[0] for w in windows[s : s + step]]).cpu())
        self.train(was_training)
        return {
            "state": torch.cat(states),
            "target": torch.tensor([w[1] for w in windows]),
            "user": torch.from_numpy(users),
        }

    @property
    def score_scale(self) -> float:
        """1/sqrt(d_s): keeps the initial BCE logits near 0 (plain dot products of two 512-d projections start
        around +-20, and the first hundred steps go into undoing that); ranking is unchanged."""
        return self.cfg.d_shared**-0.5 if self.cfg.scaled_scores else 1.0

    def inject(
        self, visual: list[torch.Tensor], cf: list[torch.Tensor], n_rec: list[int]
    ) -> list[dict[str, torch.Tensor]]:
        """Embeddings for the placeholders of one or more prompt batches (the items behind their [VISUAL]s and
        [CF]s, and how many [REC]s): adapted images, adapted CF vectors, [REC]. Each distinct item is adapted
        once, so an item in several prompts gets bitwise the same vector (what lets a shared history run
        once, :meth:`Backbone.hidden_many`)."""
        out: list[dict[str, torch.Tensor]] = [{} for _ in visual]
        adapted = [("[VISUAL]", visual, "feat_image", "adaptor"), ("[CF]", cf, "feat_cf", "cf_adaptor")]
        if self.cfg.representation == "vlm":  # UniMP: the VLM's own image tokens of each picture, frozen
            assert self.backbone is not None and self.backbone.image_token is not None
            pictures = {int(i): self._pictures.embeddings(int(i)) for i in torch.unique(torch.cat(visual))}
            for inj, items in zip(out, visual):
                if len(items):
                    inj[self.backbone.image_token] = torch.cat([pictures[int(i)] for i in items])
            adapted = adapted[1:]
        for name, lists, table, adaptor in adapted:
            items = torch.cat(lists)
            if not len(items):
                continue
            unique, where = torch.unique(items, return_inverse=True)
            values = getattr(self, adaptor)(getattr(self, table)[unique])[where]  # (n, d)
            for inj, part in zip(out, values.split([len(x) for x in lists])):
                if len(part):
                    inj[name] = part
        for inj, n in zip(out, n_rec):
            if n:
                inj["[REC]"] = self.rec.expand(n, -1)  # (B, d)
        return out

    def llm(self, batch: Batch, parts: list[str]) -> tuple[list[torch.Tensor], int]:
        """Final hidden states of the batch's prompts ``parts`` ("ire", "ila": ``<part>_ids``, ``_mask``,
        ``_visual``, ``_cf``) after the constant prefix, (B, T - P, d) each, and P.

        Together they make one LLM pass (``one_pass``): the history both prompts hold runs once. The
        constant prompt start comes from its cached KV (``shared_prefix``) where it carries no gradient."""
        assert self.backbone is not None
        inject = self.inject(
            [batch[f"{x}_visual"] for x in parts],
            [batch[f"{x}_cf"] for x in parts],
            [len(batch[f"{x}_ids"]) if x == "ire" else 0 for x in parts],
        )
        prompts = [(batch[f"{x}_ids"], batch[f"{x}_mask"], inj) for x, inj in zip(parts, inject)]
        prefix, head = None, self.prompt_head(parts) if self.cfg.shared_prefix else ""
        if head:
            prefix = self.backbone.constant_prefix(head, [(ids, mask) for ids, mask, _ in prompts])
        hidden = self.backbone.hidden_many(prompts, prefix, one_pass=self.cfg.one_pass)
        return hidden, len(prefix) if prefix is not None else 0

    def raw_states(
        self, ids: torch.Tensor, mask: torch.Tensor, visual: torch.Tensor, cf: torch.Tensor
    ) -> torch.Tensor:
        """(B, d) last hidden state at [REC]: the LLM-guided user representation (Sec. 3.3.1)."""
        assert self.backbone is not None
        (hidden,), p = self.llm(
            {"ire_ids": ids, "ire_mask": mask, "ire_visual": visual, "ire_cf": cf}, ["ire"]
        )
        return self.backbone.last_hidden_at(hidden, ids[:, p:], "[REC]").float()

    def prompt_states(self, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, d) raw [REC] states of the IRE prompts of ``histories``, in one LLM forward."""
        enc = {k: v.to(self.rec.device) for k, v in self.build_ire(histories).items()}
        return self.raw_states(enc["ids"], enc["mask"], enc["visual"], enc["cf"])

    def user_states(
        self, ids: torch.Tensor, mask: torch.Tensor, visual: torch.Tensor, cf: torch.Tensor
    ) -> torch.Tensor:
        """(B, d) what the user projectors read: the [REC] state, standardised (see ``read_state``)."""
        return self.read_state(self.raw_states(ids, mask, visual, cf))

    def read_state(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, d) the [REC] state standardised with the fixed statistics of the projectors-alone stage
        (the identity until that stage sets them)."""
        return (raw - self.state_mean) / self.state_std

    def item_vectors(self, feature: str, items: torch.Tensor | None = None) -> torch.Tensor:
        """(n, d_s) projected item representations o_i for one feature type (all items when ``items`` is None)."""
        idx = items if items is not None else torch.arange(self.n_items, device=self.rec.device)
        proj = self.item_proj[feature](getattr(self, f"feat_{feature}")[idx])  # (n, d_s)
        if feature == "image" and "image_fallback" in self.item_proj:
            fallback = self.item_proj["image_fallback"](self.feat_text[idx])  # (n, d_s)
            proj = torch.where(self.has_image[idx].unsqueeze(-1), proj, fallback)
        return proj

    def loss(self, batch: Batch) -> torch.Tensor:
        """End to end (Eq. 7): IRE, plus ILA when ``ila`` (both prompts in one LLM pass, see :meth:`llm`)."""
        assert self.backbone is not None
        if not self.cfg.ila or "ire_state" in batch:
            return self.ire_loss(batch)
        (ire, ila), p = self.llm(batch, ["ire", "ila"])
        state = self.backbone.last_hidden_at(ire, batch["ire_ids"][:, p:], "[REC]").float()  # (B, d)
        return self.ire_loss(batch, state) + self.backbone.lm_loss(ila, batch["ila_labels"][:, p:])

    def ire_loss(self, batch: Batch, raw_state: torch.Tensor | None = None) -> torch.Tensor:
        """IRE (Eq. 5-6): BCE of the target and of one random negative per feature type, averaged over the
        types; from the batch's prompts, from their [REC] states ``raw_state``, or from the cached states
        (projectors alone)."""
        if "ire_state" in batch:  # projectors alone: the state was cached
            raw_state = batch["ire_state"]
        elif raw_state is None:
            raw_state = self.raw_states(
                batch["ire_ids"], batch["ire_mask"], batch["ire_visual"], batch["ire_cf"]
            )
        h = self.read_state(raw_state)  # (B, d)
        ire = []
        for i, t in enumerate(self.cfg.features):
            o_u = self.user_proj[t](h)  # (B, d_s)
            negative = batch["negative"] if batch["negative"].dim() == 1 else batch["negative"][:, i]  # (B,)
            pos = (o_u * self.item_vectors(t, batch["target"])).sum(-1) * self.score_scale  # (B,)
            neg = (o_u * self.item_vectors(t, negative)).sum(-1) * self.score_scale  # (B,)
            ire.append(
                F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
            )
        return torch.stack(ire).mean()

    def ila_loss(self, batch: Batch) -> torch.Tensor:
        """ILA (Eq. 3): next-token loss of the answer about the target item's property."""
        assert self.backbone is not None
        (hidden,), p = self.llm(batch, ["ila"])
        return self.backbone.lm_loss(hidden, batch["ila_labels"][:, p:])

    # ------------------------------------------------------------------ scoring (Eq. 8)
    def _state_chunks(self, histories: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """(b, d) user states of the evaluation prompts (the last ``test_history`` items), chunk by chunk."""
        if self.backbone is None:
            raise LlmrecError("illmrec is not attached to a dataset", hint="fit it or load a saved model")
        cache = self._state_cache
        for s in range(0, len(histories), self.cfg.score_batch_size):
            chunk = [
                np.asarray(h)[-self.cfg.test_history :] for h in histories[s : s + self.cfg.score_batch_size]
            ]
            keys = [tuple(h.tolist()) for h in chunk]
            if cache is not None and all(k in cache for k in keys):
                yield self.read_state(torch.stack([cache[k] for k in keys]).to(self.rec.device))
                continue
            raw = self.prompt_states(chunk)
            if cache is not None:  # projectors alone: the prompt's state cannot change
                cache.update(zip(keys, raw.detach().cpu()))
            yield self.read_state(raw)

    def score_all_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        items = {t: self.item_vectors(t) for t in self.cfg.features}  # (N, d_s) each
        out = [
            sum(self.user_proj[t](h) @ items[t].T for t in self.cfg.features) * self.score_scale  # (b, N)
            for h in self._state_chunks(histories)
        ]
        return torch.cat(out)  # (B, N)

    @torch.no_grad()
    def user_representations(self, histories: list[np.ndarray]) -> np.ndarray:
        """(U, d) the [REC] states the IRE projectors read, for inspection (``llmrec probe``)."""
        self.eval()
        return torch.cat(list(self._state_chunks(histories))).float().cpu().numpy()

    # ------------------------------------------------------------------ persistence
    def stages(self, dataset: Any) -> list[Stage]:
        """end2end: ILA + IRE for ``epochs``, then (``head_epochs``) the projectors alone; two_stage: ILA alone
        for ``stage1_epochs``, then the projectors alone for ``epochs`` (Appendix H). ``stage1_from`` takes
        the first stage's weights from a saved model instead of training them."""
        cfg = self.cfg
        if (
            cfg.ila
            and not cfg.backbone.lora
            and cfg.representation not in ("image", "image_description", "cf")
        ):
            log.warning(
                "ila: the %s representation puts no [VISUAL] or [CF] token in the prompts and the LM is frozen, "
                "so ILA trains nothing (its loss is a constant); it costs LLM compute every step: -o ila=false",
                cfg.representation,
            )
        projectors = frozenset(n for n in self._trainable if n.startswith(("user_proj.", "item_proj.")))
        ila_only = cfg.training == "two_stage"  # ILA trains what the ILA prompt reaches: adaptors (and LoRA)
        first = Stage(
            "ila" if ila_only else "end2end",
            trainable=frozenset(self._trainable - projectors - {"rec"} if ila_only else self._trainable),
            epochs=cfg.stage1_epochs if ila_only else cfg.epochs,
            lr=cfg.lr,
            batches=self.train_batches,
            loss=self.ila_loss if ila_only else self.loss,
            num_batches=self.num_train_batches,
        )
        head_epochs = cfg.epochs if ila_only else cfg.head_epochs
        if cfg.stage1_from:
            first = Stage(first.name, load=functools.partial(self.load_stage1, Path(cfg.stage1_from)))
        if not head_epochs:
            return [first]
        head = Stage(
            "head",
            trainable=projectors,
            epochs=head_epochs,
            lr=cfg.head_lr,
            batches=self.cached_batches,
            loss=self.ire_loss,
            num_batches=self.num_cached_batches,
            context=self._projectors_alone,
        )
        return [first, head]

    @contextlib.contextmanager
    def _projectors_alone(self) -> Iterator[None]:
        """While only the projectors train, the [REC] state of a prompt cannot change: cache it."""
        self._state_cache = {}
        try:
            yield
        finally:
            self._pool, self._state_cache = None, None

    def load_stage1(self, folder: Path) -> None:
        """The first stage's weights from a saved I-LLMRec model of the same configuration (``stage1_from``)."""
        from safetensors.torch import load_file

        weights = folder / f"{self.weights_name}.safetensors"
        if not weights.exists():
            raise LlmrecError(
                "stage1_from: no I-LLMRec weights there", file=weights, hint="give a run's model/ folder"
            )
        state = load_file(weights)
        if self._trainable - set(state):
            raise LlmrecError(
                f"stage1_from: the saved model lacks {sorted(self._trainable - set(state))[:3]}",
                file=weights,
                hint="it was trained with another configuration (features, representation, LoRA)",
            )
        self.load_checkpoint_state(state)
        log.info("first stage skipped: weights loaded from %s", weights)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes (adaptors, projectors, [REC], LoRA): never the frozen LLM."""
        buffers = {n for n, _ in self.named_buffers() if n.startswith("state_")}  # statistics
        trainable = self._trainable | buffers
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in trainable}


@register_model("unimp")
class UniMP(ILLMRec):
    """UniMP (Wei et al., 2024) as I-LLMRec's Table 1 runs it (the "I" row): history items shown to a
    pre-aligned vision-language model through its own vision tower and image tokens, with their title,
    brand and category; no ILA, no adaptor of ours; the LLM frozen and recommendations from the same IRE
    head ([REC] state -> projectors -> every catalog item). ``-o backbone.llm=<VLM folder or hub id>``."""

    preset = {"representation": "vlm", "ila": False}
