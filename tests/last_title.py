"""Last title: a minimal LLM recommender, written only against llmrec's model contract.

The LM reads a prompt naming the title of the user's last item; its final hidden state, through one small
trainable projection, is dotted with every catalog item's title state (the same LM reading the title alone),
so the whole catalog is scored in one matrix product. The LM stays frozen; training fits the projection
with a softmax over the catalog. Where it runs (device, dtype) is resolved by the command and given to the
model: the backbone comes from ``load_backbone()``, inputs go where the LM is, and nothing here chooses a
device.

Importing this module registers it: ``llmrec.train("last_title", ...)``, ``llmrec.load(run)`` and the
service then know the name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.llm.backbone import Backbone, BackboneConfig
from llmrec.llm.prompts import escape_placeholders
from llmrec.models.base import register_model
from llmrec.models.llm.base import FeatureBackedLLM
from llmrec.models.neural import Batch, NeuralConfig, minibatches, trainable_users
from llmrec.placement import Placement

PROMPT = "The user has just enjoyed {title}. Which item should they see next?"


@dataclasses.dataclass(frozen=True)
class LastTitleConfig(NeuralConfig):
    """The LLM and the training budget (every other training option is :class:`NeuralConfig`'s)."""

    backbone: BackboneConfig = option(factory=BackboneConfig, help="the LLM (frozen: LoRA off)")
    max_title_tokens: int = option(32, "tokens of a title the LM reads", ge=1)
    score_batch_size: int = option(64, "prompts per LLM forward when scoring", ge=1)
    epochs: int = option(20, "maximum training epochs", ge=1)
    batch_size: int = option(16, "training examples per step", ge=1)
    lr: float = option(5e-2, "learning rate of the projection", gt=0)


@register_model("last_title")
class LastTitle(FeatureBackedLLM):
    config_cls = LastTitleConfig
    cfg: LastTitleConfig

    def __init__(
        self, cfg: LastTitleConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        super().__init__(cfg, n_users, n_items, placement)
        self.backbone: Backbone | None = None  # loaded by attach(): scoring needs the dataset's titles
        self.source = {"features": {}}  # what sources.json records: no stored feature is read

    # -- building against a dataset: the LM, the item titles, the projection
    def attach(self, ds: Dataset) -> None:
        self._dataset = ds
        self.backbone = self.load_backbone()
        self.backbone.requires_grad_(False)  # frozen whatever its options say
        self.titles = [escape_placeholders(str(t)) for t in ds.items["title"]]  # "[REC]" in a title is text
        d = self.backbone.hidden_size
        self.proj = nn.Linear(d, d)  # the one trained module: prompt state -> title-state space
        with torch.no_grad():
            n = self.cfg.max_title_tokens
            items = torch.cat([self.states(c, max_length=n) for c in self.chunks(self.titles)])  # (N, d)
        # unit-length title states, recomputed on loading (not saved)
        self.register_buffer("item_states", F.normalize(items, dim=-1), persistent=False)

    def chunks(self, texts: list[str]) -> Iterator[list[str]]:
        size = self.cfg.score_batch_size
        return (texts[s : s + size] for s in range(0, len(texts), size))

    def states(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        """(B, d) the LM's final hidden state at the last token of each text."""
        assert self.backbone is not None
        enc = {k: v.to(self.backbone.device) for k, v in self.backbone.tokenize(texts, max_length).items()}
        return self.last_states(enc["input_ids"], enc["attention_mask"])

    def last_states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, d) final hidden states at each row's last real token, in float32."""
        assert self.backbone is not None
        hidden = self.backbone.hidden(ids, mask)  # (B, T, d)
        last = self.backbone.last_positions(mask)  # (B,)
        return hidden[torch.arange(len(ids), device=hidden.device), last].float()  # (B, d)

    def prompts(self, last_items: np.ndarray) -> list[str]:
        """The chat-wrapped prompt of each last item, its title cut to ``max_title_tokens`` tokens."""
        assert self.backbone is not None
        tok, n = self.backbone.tokenizer, self.cfg.max_title_tokens
        titles = [
            tok.decode(tok(self.titles[i], add_special_tokens=False)["input_ids"][:n]) for i in last_items
        ]
        return [self.backbone.chat(PROMPT.format(title=t)) for t in titles]

    # -- scoring: one prompt per user, every item at once
    def scores(self, prompt_states: torch.Tensor) -> torch.Tensor:
        """(B, N) item scores from (B, d) prompt states: unit-length states (whatever the LM's scale), so the
        projection alone sets how sharp the scores are."""
        user = self.proj(F.normalize(prompt_states, dim=-1))  # (B, d)
        return user @ self.item_states.T  # (B, N)

    def score_all_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        last = np.array([h[-1] for h in histories], dtype=np.int64)
        states = [self.states(p) for p in self.chunks(self.prompts(last))]
        return self.scores(torch.cat(states))  # (B, N)

    # -- training: (last item, next item) pairs from the training sequences
    def train_batches(self, dataset: Dataset, rng: np.random.Generator) -> Iterator[Batch]:
        seqs = dataset.train_sequences
        users = trainable_users(dataset)
        at = np.array([rng.integers(1, len(seqs[u])) for u in users])  # a target position per user
        last = np.array([seqs[u][t - 1] for u, t in zip(users, at)], dtype=np.int64)
        target = np.array([seqs[u][t] for u, t in zip(users, at)], dtype=np.int64)
        for batch in minibatches(rng, self.cfg.batch_size, last=last, target=target):
            assert self.backbone is not None
            enc = self.backbone.tokenize(self.prompts(batch["last"].numpy()))
            yield {"ids": enc["input_ids"], "mask": enc["attention_mask"], "target": batch["target"]}

    def num_train_batches(self, dataset: Dataset) -> int:
        return -(-len(trainable_users(dataset)) // self.cfg.batch_size)

    def loss(self, batch: Batch) -> torch.Tensor:
        state = self.last_states(batch["ids"], batch["mask"])  # (B, d)
        return F.cross_entropy(self.scores(state), batch["target"])

    # -- persistence: only what training changes, never the frozen LM
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith("proj.")}
