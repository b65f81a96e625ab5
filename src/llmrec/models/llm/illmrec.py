"""I-LLMRec (Kim et al., 2025): items shown to a frozen LLM as their title plus ONE image token.

Read top to bottom: building against a dataset (features, the LLM, the modules: adaptor M, the [REC]
vector, user/item projectors per feature type); how a history becomes a prompt within the context budget;
training windows; the LLM pass and the two losses (ILA, Eq. 3; IRE, Eq. 5-6; combined as Eq. 7);
retrieval over the whole catalog (Eq. 8); the training stages. Facts from the official code
(github.com/rlqja1107/torch-I-LLMRec, linked from the paper's abstract):
adaptor Linear(d_img, 512) -> LayerNorm -> GELU -> Linear(512, d_llm); projectors Linear(in, 2 d_s) ->
LayerNorm -> ReLU -> Linear(2 d_s, d_s) with d_s = 512; [REC] xavier-initialised; IRE = BCE(target) +
BCE(one random negative) per feature type, averaged over the types; training histories are random
windows (2..4 or 2..9 items, prob. 0.5 each) of the training sequence; at test the last 10 items.

Every ablation is a config switch and ``recipe`` sets the paper's or the official code's choices at once
(:mod:`llmrec.models.llm.illmrec_config`). Every score is over real catalog items, so every
recommendation exists.

Training the projectors alone (two_stage's stage 2, ``head_epochs``) runs on [REC] states cached once
(:mod:`llmrec.models.llm.projectors_alone`): an epoch then costs no LLM call at all.

UniMP (:mod:`llmrec.models.llm.unimp`) is this model with a vision-language backbone reading the item
pictures itself; it overrides the few methods marked "hook" (which items show a picture, the backbone, the
adaptors, how a rendered item and its picture reach the LM).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.features.store import load_item_feature
from llmrec.llm import budget as token_budget
from llmrec.llm.backbone import Backbone
from llmrec.llm.prompts import (
    HISTORY_PREFIX,
    REPRESENTATIONS,
    ItemText,
    ila_answer,
    ila_question,
    ire_prompt,
    item_texts,
    render_item,
    top_category,
    vicuna_question,
)
from llmrec.models.base import register_model
from llmrec.models.llm.base import FeatureBackedLLM
from llmrec.models.llm.illmrec_config import RECIPES, ILLMRecConfig
from llmrec.models.llm.illmrec_items import AddedItems
from llmrec.models.llm.illmrec_show import shown_prompts
from llmrec.models.llm.ire_loss import bce_term, softmax_term
from llmrec.models.llm.ire_vectors import IREVectors
from llmrec.models.llm.precision import TrainablePrecision
from llmrec.models.llm.projectors import mlp_adaptor, projector
from llmrec.models.llm.projectors_alone import ProjectorsAlone
from llmrec.models.neural import Batch, Stage, negatives_for_user, trainable_users, without_held_out
from llmrec.placement import Placement

log = logging.getLogger(__name__)

ILA_ANSWER_TOKENS = 96  # chat framing: ILA answers are cut to this many tokens, then the EOS (never cut)


@register_model("illmrec")
class ILLMRec(AddedItems, IREVectors, TrainablePrecision, ProjectorsAlone, FeatureBackedLLM):
    config_cls = ILLMRecConfig
    scores_unseen_items = True  # through its image/text features (its cf term is left out)
    recipes = RECIPES
    weights_name = "illmrec"
    legacy_weights = ("epochs_started",)  # a counter of models before 0.2
    #: how this model may show history items (``representation``); UniMP's ``vlm`` is a model of its own
    representations: ClassVar[tuple[str, ...]] = tuple(r for r in REPRESENTATIONS if r != "vlm")
    representation_hint: ClassVar[str] = (
        "representation=vlm (a VLM's own image tokens) is 'llmrec train unimp'"
    )
    #: how prompts are computed and how much history they hold: switched by the efficiency figures
    switchable = ("shared_prefix", "one_pass", "max_prompt_tokens", "test_history")
    cfg: ILLMRecConfig

    def __init__(
        self, cfg: ILLMRecConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        super().__init__(cfg, n_users, n_items, placement)
        if cfg.representation not in self.representations:
            raise ConfigError(
                f"{self.name}: representation must be one of {self.representations}, got {cfg.representation!r}",
                hint=self.representation_hint,
            )
        self.backbone: Backbone | None = None  # built by attach(): it needs the dataset's feature sizes
        self.source: dict[str, Any] = {}
        self._as_trained: dict[str, torch.Tensor] | None = None  # see TrainablePrecision

    # ------------------------------------------------------------------ building against a dataset
    def feature_needs(self) -> dict[str, str]:
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
        """Load the features, the backbone and the item texts of ``ds``; create adaptors and projectors."""
        feats = self._load_features(ds)
        has_image, drop = self._images(feats)
        shown = self.shown_images(ds, has_image, drop)  # the items whose picture the prompts show
        self.register_buffer("has_image", torch.from_numpy(has_image), persistent=False)  # (N,)
        # items held out of training (prepare --cold-items): no CF vector of theirs was learned
        self.register_buffer("unseen", torch.from_numpy(ds.cold_items.copy()), persistent=False)  # (N,)
        if "image" in self.cfg.features and not has_image.all() and "text" not in feats:
            # image-less items are retrieved through their text feature (Sec. 4.5)
            feats["text"] = self._load_feature(
                ds, "text", self.cfg.text_feature, who="illmrec (items without images)"
            )
        self.backbone = self.load_backbone()  # one device for the LM and every module
        context = self.backbone.context_length
        if context is not None and (self.cfg.max_prompt_tokens or 0) > context:
            log.info(
                "max_prompt_tokens %d > the LM's context: histories are cut to %d tokens",
                self.cfg.max_prompt_tokens,
                context,
            )
        self._build_modules(feats, has_image)
        if self.cfg.trainable_dtype == "backbone":  # as the official code: pure bf16 on a GPU
            self._cast_modules(self.backbone.dtype)
        self._texts = self._item_texts(ds, shown)
        self._has_bullets = any(t.features for t in self._texts)
        self._rendered: dict[str, list[str]] = {}
        self._lengths: dict[str, np.ndarray] = {}
        # what training may change (the projectors-alone stage freezes some of it for a while)
        self._trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        self.to(self.placement.device)

    def _load_features(self, ds: Dataset) -> dict[str, Any]:
        """The item features this configuration reads (:meth:`feature_needs`), each a (N, d) buffer
        ``feat_<role>``; recorded (name, sha256) in ``self.source``."""
        self._dataset = ds
        self.source = {"features": {}}
        return {
            role: self._load_feature(ds, role, name, "illmrec") for role, name in self.feature_needs().items()
        }

    def _load_feature(self, ds: Dataset, role: str, name: str, who: str) -> Any:
        f = load_item_feature(ds, name, self.n_items, who=who, option=f"{role}_feature")
        self.source["features"][role] = {"name": f.name, "sha256": f.manifest["sha256"]}
        self.register_buffer(
            f"feat_{role}", torch.from_numpy(np.array(f.values, dtype=np.float32)), persistent=False
        )  # (N, d_role)
        return f

    def _images(self, feats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(N,) whether each item has an image feature, and the items whose image ``missing_image_fraction``
        drops (seeded: Sec. 4.5's simulation)."""
        cfg = self.cfg
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
        return has_image, drop

    def shown_images(self, ds: Dataset, has_image: np.ndarray, drop: np.ndarray) -> np.ndarray:
        """(N,) the items whose picture the prompts show: those with an image feature (hook)."""
        return has_image

    def _build_modules(self, feats: dict[str, Any], has_image: np.ndarray) -> None:
        """The adaptors, the [REC] vector, the user and item projectors per feature type (and the fallback
        projector of image-less items), in this order (the order their random initial values are drawn)."""
        assert self.backbone is not None
        cfg, d = self.cfg, self.backbone.hidden_size
        self.build_adaptors(feats, d)
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

    def build_adaptors(self, feats: dict[str, Any], d: int) -> None:
        """The adaptor M of the image feature into the LM's input space (d), and the [CF] token's (hook)."""
        cfg = self.cfg
        if "image" in feats:
            self.adaptor = mlp_adaptor(  # M
                feats["image"].dim, cfg.adaptor_hidden, d, cfg.adaptor_ln_eps, cfg.adaptor_activation
            )
        if "cf" in feats and cfg.representation == "cf":
            self.cf_adaptor = mlp_adaptor(  # the CF token's
                feats["cf"].dim, cfg.adaptor_hidden, d, cfg.adaptor_ln_eps, cfg.adaptor_activation
            )

    def _item_texts(self, ds: Dataset, has_image: np.ndarray) -> list[ItemText]:
        """The items' texts, with generated descriptions (``description_texts``) and summaries (the summary
        representation) where the configuration reads them."""
        from llmrec.llm.describe import load_texts

        items = ds.items
        descriptions = items["description"].tolist()
        if self.cfg.description_texts:
            descriptions = load_texts(ds.root, self.cfg.description_texts)
        summaries = [""] * len(items)
        if self.cfg.representation == "summary":
            summaries = load_texts(ds.root, self.cfg.summary_texts)
        return item_texts(items, descriptions, summaries, has_image)

    def rendered(self, representation: str | None = None) -> tuple[list[str], np.ndarray]:
        """Every item rendered once (cached) and its token count, for prompts and the context budget."""
        rep = representation or self.cfg.representation
        if rep not in self._rendered:
            assert self.backbone is not None
            texts = self.render_items(rep)
            lengths = [
                len(ids) for ids in self.backbone.tokenizer(texts, add_special_tokens=False)["input_ids"]
            ]
            self._rendered[rep], self._lengths[rep] = texts, np.asarray(lengths) + 1  # + the ", " separator
        return self._rendered[rep], self._lengths[rep]

    def render_items(self, representation: str) -> list[str]:
        """Every item as the prompts show it (:func:`render_item`; hook)."""
        max_chars = self.cfg.max_description_chars
        return [render_item(t, representation, max_chars) for t in self._texts]  # type: ignore[arg-type]

    @property
    def picture_token(self) -> str:
        """Where a rendered item shows its picture: [VISUAL], filled by :meth:`inject_pictures` (hook)."""
        return "[VISUAL]"

    # ------------------------------------------------------------------ prompts
    def frame(self, text: str, kind: Literal["ire", "ila"]) -> str:
        """The prompt the LM reads around the IRE prompt or ILA question ``text`` (``prompt_format``): the
        backbone's chat template, or the official code's raw text (IRE) and Vicuna-v1 conversation (ILA; the
        answer follows after a space), which the tokenizer then frames with its own special tokens (see
        :attr:`special_tokens`)."""
        assert self.backbone is not None
        if self.cfg.prompt_format == "chat":
            return self.backbone.chat(text)
        return text if kind == "ire" else vicuna_question(text)

    @property
    def special_tokens(self) -> bool:
        """Whether prompts are tokenised with the tokenizer's own special tokens: under the official framing,
        ``tokenizer(text)`` as the official code calls it (LLaMA's BOS, added by the tokenizer; a BOS
        prepended as a string instead changes the first word of a SentencePiece/Metaspace tokenizer); the chat
        framing's template writes its special tokens itself."""
        return self.cfg.prompt_format == "official"

    def count_tokens(self, text: str) -> int:
        """Tokens of the framed prompt ``text`` as the model tokenises it (special tokens included)."""
        assert self.backbone is not None
        return len(self.backbone.encode(text, self.special_tokens))

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

    def _prompt_parts(self, history: np.ndarray) -> tuple[list[str], list[int], list[int]]:
        """The rendered items of ``history``, and the items behind its picture and [CF] placeholders."""
        texts, _ = self.rendered()
        rendered = [texts[i] for i in history]
        visual = [int(i) for i in history if self.picture_token in texts[i]]
        cf = [int(i) for i in history if "[CF]" in texts[i]]
        return rendered, visual, cf

    # ------------------------------------------------------------------ the context budget (llm/budget.py)
    def fit_history(self, history: np.ndarray, budget: int) -> np.ndarray:
        """Drop the oldest items until the rendered history fits ``budget`` tokens."""
        return token_budget.fit_history(history, self.rendered()[1], budget)

    def fit_prompt(self, history: np.ndarray, budget: int, limit: int) -> np.ndarray:
        """The most recent items of ``history`` whose IRE prompt has at most ``limit`` tokens: the estimate of
        :meth:`fit_history` (``budget`` tokens of items), then corrected by counting the prompt itself (an
        item is added back only within ``max_history_tokens``)."""
        assert self.backbone is not None

        def fits(items: np.ndarray) -> bool:
            return self.count_tokens(self.frame(ire_prompt(self._prompt_parts(items)[0]), "ire")) <= limit

        return token_budget.fit_prompt(history, self.rendered()[1], budget, fits, self.cfg.max_history_tokens)

    def _limit(self, answer_tokens: int = 0) -> int:
        """The most tokens a prompt may have: ``max_prompt_tokens`` and the LM's context less the answer."""
        assert self.backbone is not None
        return token_budget.prompt_limit(
            self.opts.max_prompt_tokens, self.backbone.context_length, answer_tokens
        )

    def _budget(self, overhead_text: str, answer_tokens: int = 0) -> int:
        """Tokens left for the history: :meth:`_limit` minus the fixed (framed) text ``overhead_text``; and
        at most ``max_history_tokens``."""
        assert self.backbone is not None
        limit = self._limit(answer_tokens)
        fixed = self.count_tokens(overhead_text)
        return token_budget.history_budget(limit, fixed, self.cfg.max_history_tokens)

    def _check_context(self, mask: torch.Tensor) -> None:
        assert self.backbone is not None
        self.backbone.check_context(
            mask,
            hint=f"the fixed prompt text alone nearly fills it: lower max_description_chars "
            f"({self.cfg.max_description_chars}) or use an LM with a longer context",
        )

    # ------------------------------------------------------------------ tokenised prompts
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
        enc = self.backbone.tokenize(prompts, special_tokens=self.special_tokens)
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
        """ILA examples: a random property question about the target; labels only on the answer and its EOS.

        Official framing: question, answer and EOS are one text tokenised in one call (``tokenizer(text)``,
        as the official code), the labels masking the question's own token count, and the answer is never
        cut (the history makes room for it). Chat framing: the answer is tokenised apart, cut to
        ``ILA_ANSWER_TOKENS``, then its EOS (always kept)."""
        assert self.backbone is not None
        tok = self.backbone.tokenizer
        eos = tok.eos_token or ""
        ids, labels, visual, cf = [], [], [], []
        for h, t in zip(histories, targets):
            field = self.cfg.ila_fields[int(rng.integers(len(self.cfg.ila_fields)))]
            template = int(rng.integers(5))
            value = self.ila_value(self._texts[int(t)], field, rng)
            answer = ila_answer(field, value, self.cfg.max_description_chars)
            if self.special_tokens:
                answer_ids: list[int] = []  # counted in the whole text below
                reserve = len(self.backbone.encode(" " + answer + eos))
            else:
                answer_ids = self.backbone.encode(answer)[:ILA_ANSWER_TOKENS]
                answer_ids += [tok.eos_token_id] if tok.eos_token_id is not None else []
                reserve = ILA_ANSWER_TOKENS + 1
            budget = self._budget(self.frame(ila_question([], "description", 0), "ila"), reserve) - 64
            rendered, v, c = self._prompt_parts(self.fit_history(h, budget))
            question = self.frame(ila_question(rendered, field, template), "ila")
            if self.special_tokens:  # "... ASSISTANT: <answer></s>" in one call
                row = self.backbone.encode(question + " " + answer + eos, special_tokens=True)
                asked = len(self.backbone.encode(question, special_tokens=True))
            else:
                row = self.backbone.encode(question) + answer_ids
                asked = len(row) - len(answer_ids)
            ids.append(row)
            labels.append([-100] * asked + row[asked:])
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

    def show_prompts(self, dataset: Dataset, user: int, seed: int = 0) -> list[dict[str, Any]]:
        """What the LM reads for user index ``user`` (``llmrec prompts``): a training window's IRE prompt and ILA
        question and answer (drawn with ``seed``) and the user's test prompt, each as the exact text of the
        token ids the model builds (BOS, template and placeholders as they are) with its token counts."""
        return shown_prompts(self, dataset, user, seed)

    # ------------------------------------------------------------------ training
    def num_train_users(self, dataset: Dataset) -> int:
        """Users per epoch: ``train_users`` random ones (the projectors-alone stage draws them once), or all."""
        return len(trainable_users(dataset)[: self.cfg.train_users])

    def num_train_batches(self, dataset: Dataset) -> int:
        return -(-self.num_train_users(dataset) // self.cfg.batch_size)

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
            out = draws + (draws >= np.asarray(targets)[:, None])  # uniform over every item but the target
        else:
            out = np.concatenate([negatives_for_user(rng, u, seqs[u], self.n_items, 1) for u in users])
        return without_held_out(rng, out, targets, self.unseen.cpu().numpy())

    def train_batches(self, dataset: Dataset, rng: np.random.Generator) -> Iterator[Batch]:
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

    # ------------------------------------------------------------------ the LLM pass and the losses
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
        self.inject_pictures(out, visual)
        self._inject_adapted(out, "[CF]", cf, "feat_cf", "cf_adaptor")
        for inj, n in zip(out, n_rec):
            if n:
                inj["[REC]"] = self.rec.expand(n, -1)  # (B, d)
        return out

    def inject_pictures(self, out: list[dict[str, torch.Tensor]], visual: list[torch.Tensor]) -> None:
        """Fill ``out`` (one dict per prompt batch) with the pictures of the items ``visual`` of each batch:
        their image features through the adaptor M, at [VISUAL] (hook)."""
        self._inject_adapted(out, "[VISUAL]", visual, "feat_image", "adaptor")

    def _inject_adapted(
        self,
        out: list[dict[str, torch.Tensor]],
        name: str,
        lists: list[torch.Tensor],
        table: str,
        adaptor: str,
    ) -> None:
        """``out[k][name]``: the feature ``table`` rows of the items ``lists[k]`` through ``adaptor``, each
        distinct item adapted once."""
        items = torch.cat(lists)
        if not len(items):
            return
        unique, where = torch.unique(items, return_inverse=True)
        values = getattr(self, adaptor)(getattr(self, table)[unique].to(self.module_dtype))[where]  # (n, d)
        for inj, part in zip(out, values.split([len(x) for x in lists])):
            if len(part):
                inj[name] = part

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
        prefix, head = None, self.prompt_head(parts) if self.opts.shared_prefix else ""
        if head:
            prefix = self.backbone.constant_prefix(
                head, [(ids, mask) for ids, mask, _ in prompts], self.special_tokens
            )
        hidden = self.backbone.hidden_many(prompts, prefix, one_pass=self.opts.one_pass)
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
        return ((raw - self.state_mean) / self.state_std).to(self.module_dtype)

    def item_vectors(self, feature: str, items: torch.Tensor | None = None) -> torch.Tensor:
        """(n, d_s) projected item representations o_i for one feature type (all items when ``items`` is None)."""
        idx = items if items is not None else torch.arange(self.n_items, device=self.rec.device)
        dtype = self.module_dtype
        proj = self.item_proj[feature](getattr(self, f"feat_{feature}")[idx].to(dtype))  # (n, d_s)
        if feature == "image" and "image_fallback" in self.item_proj:
            fallback = self.item_proj["image_fallback"](self.feat_text[idx].to(dtype))  # (n, d_s)
            proj = torch.where(self.has_image[idx].unsqueeze(-1), proj, fallback)
        if feature == "cf":  # an unseen item has no CF vector: its cf term is left out (zero)
            proj = proj.masked_fill(self.unseen[idx].unsqueeze(-1), 0.0)
        return proj

    def loss(self, batch: Batch) -> torch.Tensor:
        """End to end (Eq. 7): IRE (over the feature types as ``ire_reduction`` says), plus ILA when ``ila``
        (both prompts in one LLM pass, see :meth:`llm`)."""
        assert self.backbone is not None
        if not self.cfg.ila or "ire_state" in batch:
            return self.ire_loss(batch)
        (ire, ila), p = self.llm(batch, ["ire", "ila"])
        state = self.backbone.last_hidden_at(ire, batch["ire_ids"][:, p:], "[REC]").float()  # (B, d)
        return self.ire_loss(batch, state) + self.backbone.lm_loss(ila, batch["ila_labels"][:, p:])

    def ire_loss(self, batch: Batch, raw_state: torch.Tensor | None = None) -> torch.Tensor:
        """IRE (Eq. 5-6): BCE of the target and of one random negative per feature type (or, with
        ``ire_loss=softmax``, cross-entropy over the catalog: :mod:`llmrec.models.llm.ire_loss`), averaged over the
        types (the official code) or summed (``ire_reduction=sum``: Eq. 7's sum over the types); from the
        batch's prompts, from their [REC] states ``raw_state``, or from the cached states (projectors alone).
        The logits come in the modules' dtype; the BCE is taken in float32."""
        if "ire_state" in batch:  # projectors alone: the state was cached
            raw_state = batch["ire_state"]
        elif raw_state is None:
            raw_state = self.raw_states(
                batch["ire_ids"], batch["ire_mask"], batch["ire_visual"], batch["ire_cf"]
            )
        h, target = self.read_state(raw_state), batch["target"]  # (B, d), (B,)
        ire = []
        for i, t in enumerate(self.cfg.features):
            o_u = self.user_proj[t](h)  # (B, d_s)
            if self.cfg.ire_loss == "softmax":  # every item the model may see is a negative
                ire.append(softmax_term(o_u, self.item_vectors(t), target, self.unseen, self.score_scale))
                continue
            negative = batch["negative"] if batch["negative"].dim() == 1 else batch["negative"][:, i]  # (B,)
            vectors = self.item_vectors(t, target), self.item_vectors(t, negative)  # (B, d_s) each
            ire.append(bce_term(o_u, *vectors, self.score_scale))
        return torch.stack(ire).sum() if self.cfg.ire_reduction == "sum" else torch.stack(ire).mean()

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
                np.asarray(h)[-self.opts.test_history :] for h in histories[s : s + self.cfg.score_batch_size]
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

    # ------------------------------------------------------------------ training stages and persistence
    def stages(self, dataset: Dataset) -> list[Stage]:
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
        return [first, self.head_stage(projectors, head_epochs)]

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes (adaptors, projectors, [REC], LoRA): never the frozen LLM. In the
        dtypes they trained in, also while the model is scored in ``eval_dtype``."""
        if self._as_trained is not None:
            return {k: v.clone() for k, v in self._as_trained.items()}
        buffers = {n for n, _ in self.named_buffers() if n.startswith("state_")}  # statistics
        trainable = self._trainable | buffers
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in trainable}
