"""HistLLM (2025): a Yes/No CTR recommender whose whole multimodal history is ONE token; and its baselines.

Read top to bottom: the config (every choice the paper leaves open is an option, with our default); the
modules (visual mapper, VMA; CF mapper, CIA; history encoder, UHEM); building them against a dataset; the
modules at work; the Yes/No score; two-step training; scoring; persistence. How a CTR example becomes a
prompt (its text and tokens) is :mod:`llmrec.models.llm.ctr_prompts`.

One class serves every method of the paper's Table 2 that fine-tunes an LLM, through four switches
(``history``, ``ke``, ``image``, ``cf``); TALLRec, CoLLM and BinLLM are its registered presets
(:mod:`llmrec.models.llm.ctr_presets`, ``llmrec train collm`` ...).

Framing (``prompt_format``): llmrec wraps each question in the backbone's chat template and reads the answer
after the assistant header (``chat``, the default); ``recipe=paper`` feeds the raw "#Question: ... \\n#Answer:"
text as the paper and CoLLM's code do (tokenised as ``tokenizer(text)``, with its own BOS if it adds one) and
reads the answer as the next token after "#Answer:" (``raw``). The Yes/No head is the same under both.
``recipe=paper`` also takes the history length from the dataset (``history_len``: 5 movies, 10 Netflix and
MIND, as the importers store it) and trains on every row each epoch (``train_examples``); the prompts' item
noun is always the dataset's (``noun``: movie, news article, ...; :meth:`HistLLM.settings_from`).

HistLLM's ablations are the same switches: w/o UHEM ``-o history=inline`` (descriptions and images
inline, as in Fig. 1), w/o KE ``-o ke=false`` (titles instead of descriptions), w/o VMA ``-o image=false``.

Our choices where the paper is silent (all options): the history encoder projects the LLM's word
embeddings to ``encoder_dim`` = 512, then a 1-layer GRU (last state) or a 2-layer pre-norm Transformer
(4 heads, learned positions, a CLS token) and a linear map back to the LLM width; every item contributes
its first ``max_text_tokens`` = 48 description tokens then its image token (inline histories and targets
show the same texts cut to the same tokens, so w/o UHEM compares like for like); a learned start vector makes
an empty history valid. A prompt longer than the LM's context is an error, never silently cut. The visual and CF mappers are Linear(d_in, 512) -> GELU/ReLU -> Linear(512, d_llm)
(CoLLM's CIE shape; one CF mapper shared by users and items); an item flagged image-less in the image
feature (the paper has fewer posters than items) gets one learned "no image" token wherever VMA would put
its image token (``missing_image``). BinLLM's codes are the signs of the first
32 principal components of the MF user and item vectors (one PCA over both, so a user's and an item's
codes agree where their vectors do). Scoring is TALLRec's: P(Yes) = softmax over the ("Yes", "No")
answer-token logits = sigmoid(l_yes - l_no); ``-o scoring=yes_logit`` is CoLLM's sigmoid(l_yes). The
answer ids are resolved through the tokenizer (:meth:`Backbone.answer_token_id`).

Training (Sec. 3.3): step 1 trains LoRA (r 8, alpha 16, dropout 0.05, q_proj/v_proj) on the text-only
prompt — TALLRec's titles prompt (Fig. 6), or BinLLM's with its codes — and step 2 freezes LoRA and
trains the mappers and the history encoder on the full prompt. A preset without non-text placeholders
(tallrec, tallrec_desc, binllm) is one LoRA step on its own prompt. Since every two-step method shares
step 1, ``-o step1_from=RUN`` reuses a trained TALLRec (or BinLLM) run's LoRA instead of retraining it.
BinLLM's authors start its LoRA from a trained TALLRec: ``lora_start=tallrec`` (its ``recipe=paper``) first
trains LoRA on TALLRec's prompt, or loads it from the TALLRec run ``step1_from`` names, then on BinLLM's.
AdamW, weight decay 1e-3, BCE on the answer logit, early stopping on the valid AUC of the step's own prompt.
What each step's prompt shows is declared once (:class:`PromptParts`, :meth:`HistLLM.prompt_parts`); the
steps are declared as stages (:meth:`HistLLM.step1`, :meth:`HistLLM.step2`) and run by
:func:`llmrec.training.fit`, which resumes an interrupted run at the step it had reached.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

from llmrec.data.dataset import Dataset
from llmrec.data.importers import DEFAULT_ITEM_NOUN, item_noun
from llmrec.errors import ConfigError, LlmrecError
from llmrec.features.store import load_feature, load_item_feature
from llmrec.llm.backbone import Backbone
from llmrec.llm.prompts import CTR_PLAIN
from llmrec.models.base import register_model
from llmrec.models.llm.base import FeatureBackedLLM
from llmrec.models.llm.ctr_prompts import CtrPrompts, binary_codes, cut_texts, item_descriptions
from llmrec.models.llm.histllm_config import RECIPES, HistLLMConfig
from llmrec.models.neural import Batch, Stage
from llmrec.placement import Placement
from llmrec.utils.io import read_json

log = logging.getLogger(__name__)


def mapper(d_in: int, hidden: int, d_out: int, act: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """A 2-layer MLP into the LLM's input space (VMA: GELU; CIA: ReLU as CoLLM's CIE)."""
    return nn.Sequential(nn.Linear(d_in, hidden), act(), nn.Linear(hidden, d_out))


class HistoryEncoder(nn.Module):
    """UHEM's H_beta: a (B, S, d_llm) sequence of item token embeddings -> ONE (B, d_llm) token."""

    def __init__(
        self, kind: str, d_llm: int, dim: int, layers: int, heads: int, dropout: float, max_len: int
    ) -> None:
        super().__init__()
        self.kind = kind
        self.inp = nn.Linear(d_llm, dim)
        self.start = nn.Parameter(torch.randn(1, 1, dim) * 0.02)  # GRU: first input; Transformer: CLS
        if kind == "gru":
            self.rnn = nn.GRU(
                dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0
            )
        else:
            self.pos = nn.Embedding(max_len + 1, dim)
            layer = nn.TransformerEncoderLayer(
                dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True, activation="gelu"
            )
            self.tf = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, d_llm)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` (B, S, d_llm) right-padded, ``lengths`` (B,) real tokens per row (0 allowed) -> (B, d_llm)."""
        b = x.shape[0]
        h = torch.cat([self.start.expand(b, -1, -1), self.inp(x)], 1)  # (B, 1 + S, dim)
        n = lengths.cpu() + 1
        if self.kind == "gru":
            packed = pack_padded_sequence(h, n, batch_first=True, enforce_sorted=False)
            _, last = self.rnn(packed)  # (layers, B, dim): the state after each row's last real token
            return self.out(last[-1])
        h = h + self.pos(torch.arange(h.shape[1], device=h.device))[None]
        pad = torch.arange(h.shape[1], device=h.device)[None, :] >= n.to(h.device)[:, None]  # (B, 1 + S)
        return self.out(self.norm(self.tf(h, src_key_padding_mask=pad)[:, 0]))  # the CLS output


@register_model("histllm")
class HistLLM(CtrPrompts, FeatureBackedLLM):
    """A frozen LLM (LoRA in step 1) reading Yes/No prompts whose placeholders the modules fill; the prompts
    themselves come from :class:`CtrPrompts`."""

    config_cls = HistLLMConfig
    scores_unseen_items = True  # through the title, description and image the prompt shows
    int8_caution = (
        "each candidate is scored by its own Yes/No logits, and int8 moves them by about as much as "
        "candidates differ: on the demo's HistLLM int8 kept 28% of float32's top 10 (AUC 0.49 against "
        "0.62); measure this run with 'llmrec experiments quant-bench RUN' before relying on it"
    )
    recipes = RECIPES
    weights_name = "histllm"
    legacy_weights = ("step_done",)  # the step-1 flag of models saved before the trainer ran the stages
    switchable = ("shared_prefix",)  # the instruction's cached KV on or off: the same logits either way
    cfg: HistLLMConfig
    tasks = ("ctr",)
    decoupled_weight_decay = True  # AdamW
    shared_prefix_ranking = True  # score(..., shared_prefix=): see rank_logits

    def __init__(
        self, cfg: HistLLMConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        super().__init__(cfg, n_users, n_items, placement)
        self.backbone: Backbone | None = None  # built by attach(): it needs the dataset
        self.source: dict[str, Any] = {}
        self.no_image: nn.Parameter | None = None  # VMA's token for image-less items (missing_image=learned)

    @property
    def needs_user_id(self) -> bool:  # type: ignore[override]
        """Whether scoring reads the user's MF vector or code by user index (CoLLM/BinLLM/HistLLM with
        ``cf``): a history of a user the model was not trained on cannot be scored."""
        return self.cfg.cf != "none"

    @property
    def pair_batch_size(self) -> int:
        return 4 * self.cfg.score_batch_size  # rows per progress-bar update in CTR evaluation

    # ------------------------------------------------------------------ building against a dataset
    def attach(self, ds: Dataset) -> None:
        """Load the backbone, item texts, features; create the mappers and the history encoder (in this
        order: their initial weights are drawn in it)."""
        cfg = self.cfg = self.settings_from(ds)
        self.source, self._dataset = {"features": {}}, ds
        self.use_image = self._image_wanted(ds)
        self.backbone = self.load_backbone()
        d = self.backbone.hidden_size
        if self.use_image:
            self._attach_image(ds, d)
        if cfg.cf != "none":
            self._attach_cf(ds, d)
        titles = [str(t) for t in ds.items["title"]]
        tokenizer = self.backbone.tokenizer
        self.titles, tokens = cut_texts(tokenizer, titles, cfg.max_text_tokens)
        self.descriptions = None
        if cfg.ke:
            descriptions = item_descriptions(ds, cfg.description_texts, titles)
            self.descriptions, tokens = cut_texts(tokenizer, descriptions, cfg.max_text_tokens)
        if cfg.history == "uhem":
            self._attach_history_encoder(tokens, d)
        # the answer token: after the chat template's assistant header, or (raw) after "#Answer:"
        answer_at = (
            self.frame(CTR_PLAIN.format(history="", nouns="", noun="", target="")) if self.raw else None
        )
        self.answer_ids = [self.backbone.answer_token_id(w, answer_at) for w in ("Yes", "No")]
        self.to(self.placement.device)

    def settings_from(self, ds: Dataset) -> HistLLMConfig:
        """The config with what it leaves to the dataset (None) filled in: ``history_len`` = the history
        length the dataset was prepared with, ``noun`` = what its importer calls an item (what model.json then
        records)."""
        cfg = self.cfg
        history_len = cfg.history_len or int(ds.meta["config"]["ctr_history_len"])
        noun = cfg.noun or item_noun(ds.meta)
        if cfg.noun is None and noun == DEFAULT_ITEM_NOUN:
            log.info("the prompts call an item %r (the dataset records no noun of its own)", noun)
        return dataclasses.replace(cfg, history_len=history_len, noun=noun)

    def _image_wanted(self, ds: Dataset) -> bool:
        """VMA on: as configured, or (``image`` None) when the dataset has the image feature."""
        image = self.cfg.image
        if image is None:
            image = (ds.features_dir / f"{self.cfg.image_feature}.json").exists()
            log.info(
                "image feature %r %s", self.cfg.image_feature, "found: VMA on" if image else "absent: VMA off"
            )
        return bool(image)

    def _attach_image(self, ds: Dataset, d: int) -> None:
        """VMA: the image feature, its mapper and (``missing_image=learned``) the 'no image' token."""
        feat = load_item_feature(
            ds, self.cfg.image_feature, self.n_items, who=self.name, option="image_feature"
        )
        self._register_feature("image", feat)
        self.image_mapper = mapper(feat.dim, self.cfg.mapper_hidden, d)
        missing = torch.from_numpy(np.array(feat.missing, dtype=bool))  # (N,)
        self.register_buffer("image_missing", missing, persistent=False)
        self.no_image = None
        if self.cfg.missing_image == "learned" and bool(missing.any()):
            # an input-embedding-sized start (std 0.02, the usual LLM initialiser range)
            self.no_image = nn.Parameter(torch.randn(d) * 0.02)  # (d,)
            log.info(
                "%d of %d items have no image: VMA gives them one learned 'no image' token",
                int(missing.sum()),
                self.n_items,
            )

    def _attach_cf(self, ds: Dataset, d: int) -> None:
        """The MF user and item embeddings: CIA's tokens and their mapper, or BinLLM's text codes."""
        cfg = self.cfg
        users = self._user_feature(ds)
        items = load_item_feature(
            ds, cfg.item_cf_feature, self.n_items, who=self.name, option="item_cf_feature"
        )
        if users.dim != items.dim:
            raise LlmrecError(
                f"MF user ({users.dim}-d) and item ({items.dim}-d) embeddings differ in size",
                file=ds.features_dir,
                hint="export both from the same MF run: llmrec features --cf RUN",
            )
        if cfg.cf == "tokens":
            self._register_feature("user_cf", users)
            self._register_feature("item_cf", items)
            self.cf_mapper = mapper(users.dim, cfg.mapper_hidden, d, nn.ReLU)
        else:
            self.user_codes, self.item_codes = binary_codes(
                np.asarray(users.values), np.asarray(items.values), cfg.binary_bits
            )
            self.source["features"]["user_cf"] = {"name": users.name, "sha256": users.manifest["sha256"]}
            self.source["features"]["item_cf"] = {"name": items.name, "sha256": items.manifest["sha256"]}

    def _attach_history_encoder(self, tokens: list[list[int]], d: int) -> None:
        """UHEM: every item's text tokens (its input, padded into one table) and the history encoder."""
        assert self.backbone is not None
        cfg = self.cfg
        width = max(map(len, tokens))
        ids = np.full((self.n_items, width), self.backbone.tokenizer.pad_token_id, dtype=np.int64)
        for i, row in enumerate(tokens):
            ids[i, : len(row)] = row
        self.register_buffer("item_tokens", torch.from_numpy(ids), persistent=False)  # (N, L)
        self.register_buffer("item_ntok", torch.tensor([len(r) for r in tokens]), persistent=False)  # (N,)
        per_item = width + int(self.use_image)
        self.history_encoder = HistoryEncoder(
            cfg.encoder,
            d,
            cfg.encoder_dim,
            cfg.encoder_layers or (1 if cfg.encoder == "gru" else 2),
            cfg.encoder_heads,
            cfg.encoder_dropout,
            max_len=per_item * max(self.history_len, 1),
        )

    def _register_feature(self, role: str, feat: Any) -> None:
        self.register_buffer(
            f"feat_{role}", torch.from_numpy(np.array(feat.values, dtype=np.float32)), persistent=False
        )
        self.source["features"][role] = {"name": feat.name, "sha256": feat.manifest["sha256"]}

    def _user_feature(self, ds: Dataset) -> Any:
        name = self.cfg.user_cf_feature
        if not (ds.features_dir / f"{name}.json").exists():
            raise LlmrecError(
                f"{self.name} needs the MF user embeddings '{name}'",
                file=ds.features_dir / f"{name}.json",
                hint="train MF (llmrec train mf -o objective=ctr -o dim=256) and export it with "
                "'llmrec features --cf RUN', or use -o cf=none",
            )
        feat = load_feature(ds.features_dir, name, expect_ids=ds.users["user_id"].astype(str).tolist())
        if len(feat.values) != self.n_users or feat.manifest.get("kind") != "user":
            raise LlmrecError(
                f"feature '{name}' has {len(feat.values)} rows of kind {feat.manifest.get('kind')!r}, "
                f"expected {self.n_users} user rows",
                file=ds.features_dir / f"{name}.json",
                hint="export the user embeddings of an MF run on this dataset",
            )
        return feat

    # ------------------------------------------------------------------ the modules at work
    def visual_tokens(self, items: torch.Tensor) -> torch.Tensor:
        """VMA (Eq. 3): (n,) item indices -> (n, d) image tokens; an item flagged image-less in the image
        feature gets the learned 'no image' token (``missing_image=learned``), not the map of a zero vector."""
        tokens = self.image_mapper(self.feat_image[items])  # (n, d)
        if self.no_image is None:
            return tokens
        return torch.where(self.image_missing[items][:, None], self.no_image.to(tokens.dtype), tokens)

    def encode_histories(self, hist: torch.Tensor) -> torch.Tensor:
        """UHEM (Eq. 4-8): (B, n) item indices (-1 = none) -> (B, d) ONE token per history."""
        assert self.backbone is not None
        words = self.backbone.model.get_input_embeddings()
        rows, lengths = [], []
        for items in hist:
            items = items[items >= 0]
            parts = []
            if len(items):
                ntok = self.item_ntok[items]  # (n,)
                emb = words(self.item_tokens[items])  # (n, L, d): the LLM's own word embeddings
                img = self.visual_tokens(items) if self.use_image else None  # (n, d)
                for k in range(len(items)):
                    parts.append(emb[k, : int(ntok[k])])  # e_dk
                    if img is not None:
                        parts.append(img[k : k + 1])  # e_pk, concatenated after the description (Eq. 6)
            seq = (
                torch.cat(parts) if parts else words.weight.new_zeros(0, words.weight.shape[1])
            )  # e_his, Eq. 7
            rows.append(seq)
            lengths.append(len(seq))
        x = (
            pad_sequence(rows, batch_first=True)
            if max(lengths)
            else words.weight.new_zeros(len(rows), 1, words.weight.shape[1])
        )
        return self.history_encoder(x.float(), torch.tensor(lengths))  # (B, d), Eq. 8

    def inject(self, batch: Batch, keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Embeddings for the placeholders of a batch, in row-major order; only those at the (B, T) positions
        where ``keep`` is True when it is given (a shared prefix and its continuations fill their own)."""
        assert self.backbone is not None
        ids, tok = batch["ids"], self.backbone.token_ids
        keep = torch.ones_like(ids, dtype=torch.bool) if keep is None else keep  # (B, T)
        out: dict[str, torch.Tensor] = {}
        if len(batch["visual"]):
            sel = keep[ids == tok["[VISUAL]"]]  # (n_visual,): batch["visual"] lists them row-major
            if bool(sel.any()):
                out["[VISUAL]"] = self.visual_tokens(batch["visual"][sel])
        rows = ((ids == tok["[USERID]"]) & keep).nonzero()[:, 0]  # one per row
        if len(rows):
            out["[USERID]"] = self.cf_mapper(self.feat_user_cf[batch["users"][rows]])  # CIA, Eq. 11
        rows = ((ids == tok["[ITEMID]"]) & keep).nonzero()[:, 0]
        if len(rows):
            out["[ITEMID]"] = self.cf_mapper(self.feat_item_cf[batch["targets"][rows]])  # Eq. 12
        if "hist" in batch:
            sel = keep[ids == tok["[HIST]"]]  # (n_hist,): one per row, as batch["hist"]
            if bool(sel.any()):
                out["[HIST]"] = self.encode_histories(batch["hist"][sel])
        return out

    # ------------------------------------------------------------------ the Yes/No score
    def answer_logit(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(n, S, d) hidden states of right-padded prompts and their (n, S) mask -> (n,) logit of P(Yes) at
        each row's last real token: l_yes - l_no (softmax over the two answer tokens), or l_yes under
        ``scoring=yes_logit``."""
        assert self.backbone is not None
        last = hidden[torch.arange(len(hidden), device=hidden.device), self.backbone.last_positions(mask)]
        yes_no = self.backbone.token_logits(last, self.answer_ids).float()  # (n, 2)
        return yes_no[:, 0] - yes_no[:, 1] if self.cfg.scoring == "softmax" else yes_no[:, 0]

    def answer_logits(self, batch: Batch) -> torch.Tensor:
        """(B,) logit of P(Yes) of a batch of prompts (:meth:`answer_logit`).

        The constant instruction before the history comes from its cached KV (``shared_prefix``) wherever it
        carries no gradient: in step 2 (LoRA frozen) and in scoring; step 1 trains LoRA, which it depends on."""
        bb = self.backbone
        assert bb is not None
        ids, mask = batch["ids"], batch["mask"]
        prefix = None
        if self.opts.shared_prefix:
            prefix = bb.constant_prefix(
                self.framed_prefix(self.instruction_head), [(ids, mask)], self.special_tokens
            )
        p = len(prefix) if prefix is not None else 0
        (hidden,) = bb.hidden_many([(ids, mask, self.inject(batch))], prefix)  # (B, T - P, d)
        return self.answer_logit(hidden, mask[:, p:])

    def loss(self, batch: Batch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            self.answer_logits(batch), batch["labels"].float()
        )  # Eq. 14

    # ------------------------------------------------------------------ training (Sec. 3.3)
    def stages(self, dataset: Dataset) -> list[Stage]:
        """Step 1 (with LoRA), then step 2 (when the full prompt has mappers or the history encoder)."""
        cfg = self.cfg
        if not cfg.backbone.lora and not self.has_step2:
            raise ConfigError(f"{self.name}: nothing to train (LoRA off and no mappers or history encoder)")
        return (self.lora_stages() if cfg.backbone.lora else []) + ([self.step2()] if self.has_step2 else [])

    def lora_stages(self) -> list[Stage]:
        """Step 1: LoRA trained on step 1's prompt, or loaded from the run ``step1_from`` names when that
        run's step 1 is this one's. With ``lora_start=tallrec`` (BinLLM's authors' configuration) LoRA first
        learns TALLRec's titles prompt (stage ``tallrec``; or is loaded from the TALLRec run ``step1_from``
        names), then step 1 trains it on the model's own prompt."""
        source = Path(self.cfg.step1_from) if self.cfg.step1_from else None
        if source is not None and (
            not self.starts_from_tallrec or self._saved_step1(source) == self.step1_signature()
        ):
            return [Stage("step1", load=functools.partial(self._load_step1, source, 1))]
        if not self.starts_from_tallrec:
            return [self.lora_stage("step1", 1)]
        if source is None:
            return [self.lora_stage("tallrec", 0), self.lora_stage("step1", 1)]
        return [
            Stage("tallrec", load=functools.partial(self._load_step1, source, 0)),
            self.lora_stage("step1", 1),
        ]

    def lora_stage(self, name: str, step: int) -> Stage:
        """LoRA trained on the prompt of ``step`` (:meth:`prompt_parts`; 0 = TALLRec's), early-stopped on
        that prompt's valid AUC."""
        cfg = self.cfg
        return Stage(
            name,
            trainable=self.step_parameters(1),
            epochs=cfg.step1_epochs,
            lr=cfg.step1_lr,
            batches=functools.partial(self.train_batches, step=step),
            loss=self.loss,
            num_batches=self.num_train_batches,
            validation=functools.partial(self.validation_metric, step=step),
        )

    def step2(self) -> Stage:
        """The mappers and the history encoder, LoRA frozen, on the full prompt, early-stopped on its valid
        AUC."""
        return Stage(
            "step2",
            trainable=self.step_parameters(2),
            epochs=self.cfg.epochs,
            lr=self.cfg.lr,
            batches=functools.partial(self.train_batches, step=2),
            loss=self.loss,
            num_batches=self.num_train_batches,
            validation=functools.partial(self.validation_metric, step=2),
        )

    def step_parameters(self, step: int) -> frozenset[str]:
        """What a step trains: 1 = LoRA, 2 = the mappers and the history encoder."""
        if step == 1:
            return frozenset(
                n for n, _ in self.named_parameters() if n.startswith("backbone.") and "lora_" in n
            )
        modules = ("image_mapper.", "no_image", "cf_mapper.", "history_encoder.")
        return frozenset(n for n, _ in self.named_parameters() if n.startswith(modules))

    def num_train_batches(self, dataset: Dataset) -> int:
        n = len(dataset.ctr("train"))
        return -(-min(n, self.cfg.train_examples or n) // self.cfg.batch_size)

    def train_batches(self, dataset: Dataset, rng: np.random.Generator, step: int = 2) -> Iterator[Batch]:
        """Labelled CTR prompts of ``step`` for ``train_examples`` random training rows."""
        df = dataset.ctr("train")
        rows = rng.permutation(len(df))[: self.cfg.train_examples]
        users, targets = df["user_idx"].to_numpy(np.int64), df["target"].to_numpy(np.int64)
        labels, histories = df["label"].to_numpy(), df["history"].to_numpy()
        for s in range(0, len(rows), self.cfg.batch_size):
            r = rows[s : s + self.cfg.batch_size]
            batch = self.prompts(users[r], [histories[i] for i in r], targets[r], step)
            batch["labels"] = torch.from_numpy(labels[r].astype(np.float32))
            yield batch

    def validation_metric(self, ds: Any, step: int = 2) -> tuple[str, float]:
        """Early stopping on the valid AUC of the prompt of ``step``, over a fixed random subset of the
        valid CTR examples (``eval_examples``: the rows ``evaluate_ctr`` evaluates)."""
        from llmrec.eval.evaluator import seeded_rows
        from llmrec.eval.metrics import auc

        df = ds.ctr("valid")
        df = df.iloc[seeded_rows(len(df), self.cfg.eval_examples)]
        histories = [np.asarray(h, dtype=np.int64) for h in df["history"]]
        logits = self.score_pairs(df["user_idx"].to_numpy(), histories, df["target"].to_numpy(np.int64), step)
        if np.isnan(logits).any():
            raise LlmrecError(
                f"model '{self.name}' scored NaN on the valid split: its weights are not finite",
                hint="train it again with a lower learning rate (-o lr=..., --restart)",
            )
        return "valid_auc", auc(df["label"].to_numpy(), logits)

    # ------------------------------------------------------------------ scoring
    def _check_attached(self) -> None:
        if self.backbone is None:
            raise LlmrecError(
                f"{self.name} is not attached to a dataset", hint="fit it or load a saved model"
            )

    @torch.no_grad()
    def score_pairs(
        self, users: np.ndarray, histories: list[np.ndarray], targets: np.ndarray, step: int = 2
    ) -> np.ndarray:
        """(B,) P(Yes) logits of the prompts of ``step`` (1: the text-only prompt of LoRA training)."""
        self._check_attached()
        was_training = self.training
        self.eval()
        out = []
        for s in range(0, len(targets), self.cfg.score_batch_size):
            sl = slice(s, s + self.cfg.score_batch_size)
            batch = self.prompts(np.asarray(users)[sl], list(histories[sl]), np.asarray(targets)[sl], step)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out.append(self.answer_logits(batch).cpu())
        self.train(was_training)
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)

    def score(
        self,
        users: np.ndarray,
        histories: list[np.ndarray],
        candidates: np.ndarray,
        shared_prefix: bool | None = None,
    ) -> np.ndarray:
        """(B, C) P(Yes) logits of every candidate. With the shared prefix (``cfg.shared_prefix``, or the
        argument), each user's prompt up to the target clause runs once and its KV cache serves all C
        candidates; without it, one full prompt per (user, candidate) pair. Both give the same logits."""
        candidates = np.asarray(candidates, dtype=np.int64)
        b, c = candidates.shape
        if not (self.opts.shared_prefix if shared_prefix is None else shared_prefix):
            flat = self.score_pairs(
                np.repeat(np.asarray(users), c),
                [h for h in histories for _ in range(c)],
                candidates.reshape(-1),
            )
            return flat.reshape(b, c)
        out = np.zeros((b, c))
        for row in range(b):
            out[row] = self.rank_logits(int(users[row]), np.asarray(histories[row]), candidates[row])
        return out

    def score_all(
        self, users: np.ndarray, histories: list[np.ndarray], shared_prefix: bool | None = None
    ) -> np.ndarray:
        every = np.tile(np.arange(self.n_items), (len(users), 1))
        return self.score(users, histories, every, shared_prefix)

    @torch.no_grad()
    def rank_logits(self, user: int, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(C,) P(Yes) logits of one user's prompts over ``candidates``, the shared part computed once.

        The prompts are tokenised in full (the text is the pairwise one); the prefix is the tokens of the
        text before the target clause that every row starts with (:meth:`Backbone.common_prefix`, >= 1 token
        left per row). The prefix runs once with its placeholders ([HIST], [USERID], history [VISUAL]s);
        candidates then run in chunks of ``rank_batch_size`` after its KV cache, with theirs (target
        [VISUAL], [ITEMID]); the logit is read at each row's last real token, as in :meth:`answer_logits`."""
        self._check_attached()
        assert self.backbone is not None
        candidates = np.asarray(candidates, dtype=np.int64)
        if not len(candidates):
            return np.zeros(0)
        # candidates of similar text length share a chunk (less padding); scores return in the given order
        texts = self.descriptions if self.descriptions is not None else self.titles
        order = np.argsort([len(texts[i]) for i in candidates], kind="stable")
        candidates = candidates[order]
        was_training = self.training
        self.eval()
        c, n = len(candidates), self.cfg.rank_batch_size
        batch = self.prompts(np.full(c, user), [history] * c, candidates)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        ids, mask = batch["ids"], batch["mask"]  # (C, T)
        prefix_ids = self.backbone.encode(self.prefix_text(user, history), self.special_tokens)
        p = self.backbone.common_prefix(prefix_ids, ids, mask)
        cols = torch.arange(ids.shape[1], device=ids.device)[None, :]  # (1, T)
        first = torch.zeros_like(ids, dtype=torch.bool)
        first[0] = True
        cache = self.backbone.prefix_cache(ids[:1, :p], self.inject(batch, first & (cols < p)))
        out = []
        for s in range(0, c, n):
            rows = torch.zeros_like(first)
            rows[s : s + n] = True
            sub_mask = mask[s : s + n, p:]  # (n, S) right-padded continuations
            width = int(sub_mask.sum(1).max())
            sub_ids, sub_mask = ids[s : s + n, p : p + width], sub_mask[:, :width]
            hidden = self.backbone.hidden_after(
                cache, sub_ids, sub_mask, self.inject(batch, rows & (cols >= p) & (cols < p + width))
            )  # (n, S, d)
            out.append(self.answer_logit(hidden, sub_mask).cpu())
        self.train(was_training)
        logits = np.empty(c)
        logits[order] = torch.cat(out).numpy()
        return logits

    def score_all_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(self.score_all(users.cpu().numpy(), histories))

    # ------------------------------------------------------------------ persistence
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """LoRA, mappers and encoder: never the frozen LLM."""
        return {
            k: v.detach().clone()
            for k, v in self.state_dict().items()
            if not k.startswith("backbone.") or "lora_" in k
        }

    def _load_lora(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(path).items() if "lora_" in k}
        if not state:
            raise LlmrecError(
                "no LoRA weights in this file", file=path, hint="point step1_from at a LoRA run"
            )
        self.load_checkpoint_state(state)

    @staticmethod
    def _model_folder(source: Path) -> Path:
        return source / "model" if (source / "model" / "model.json").exists() else source

    def _saved_step1(self, source: Path) -> dict[str, Any] | None:
        """The step-1 signature another run (a run or its model folder) recorded."""
        info = read_json(self._model_folder(source) / "sources.json")
        return info.get("step1")

    def _load_step1(self, source: Path, step: int = 1) -> None:
        """LoRA from another run (a run or its model folder) whose step-1 signature is this model's step 1
        (``step`` 1: reused as it is) or TALLRec's with these settings (0: where ``lora_start=tallrec``
        starts)."""
        folder = self._model_folder(source)
        if self._saved_step1(source) != self.step1_signature(step):
            want = "TALLRec run's" if step == 0 else "step-1"
            raise LlmrecError(
                f"its step-1 prompt or LoRA settings differ from this model's {want}",
                file=folder / "sources.json",
                hint="train step 1 here (drop step1_from) or point at a TALLRec"
                + ("" if step == 0 else "/BinLLM")
                + " run with these settings (backbone, LoRA, framing, noun, history_len)",
            )
        self._load_lora(folder / "histllm.safetensors")
        log.info("step 1 LoRA %s from %s", "starts" if step == 0 else "reused", folder)

    def sources_record(self) -> dict[str, Any]:
        return {
            **self.source,
            "step1": self.step1_signature(),
            "image": self.use_image,
            "missing_image": self.cfg.missing_image,
        }

    def before_attach(self, source: dict[str, Any]) -> None:
        """The model as it was saved: whether it showed images and (a model saved before the option
        existed: the zero feature) how it shows an item without one."""
        self.cfg = dataclasses.replace(
            self.cfg,
            image=bool(source.get("image", self.cfg.image)),
            missing_image=source.get("missing_image", "zero"),
        )

    def load_state(self, directory: Path, dataset: Dataset | None) -> None:
        super().load_state(directory, dataset)
        saved = read_json(directory / "sources.json").get("step1", {}).get("prompt")
        if saved != self.step1_signature()["prompt"]:
            log.warning(
                "%s: its step-1 prompt words differ from those llmrec writes now (a model saved before the CTR "
                "prompts followed the paper's appendix exactly); it is scored with the current prompts, so "
                "retrain it for numbers comparable with new runs",
                directory,
            )
