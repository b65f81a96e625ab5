"""Training I-LLMRec's projectors alone on cached [REC] states (two_stage's stage 2, ``head_epochs``).

This is cheap: with the LLM, the adaptor and [REC] frozen, the [REC] state of a prompt never changes, so
each of ``head_windows`` random windows per user is run through the LLM once and its state cached; an epoch
then costs no LLM call at all, and validation prompts are cached the same way. On a CPU this turns a few
hundred examples into tens of thousands of projector updates for the price of one or two end-to-end epochs.
The cached training states also fix a standardisation of the [REC] state (``head_standardize``), saved with
the model. ``stage1_from`` skips the first stage: its weights come from a saved model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llmrec.errors import LlmrecError
from llmrec.models.neural import Batch, Stage, trainable_users

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset

log = logging.getLogger(__name__)


class ProjectorsAlone:
    """The projectors-alone stage of :class:`~llmrec.models.llm.illmrec.ILLMRec`, mixed into it: it uses the
    model's window and negative samplers (``sample_window``, ``sample_negatives``), its [REC] states
    (``prompt_states``, the ``state_mean``/``state_std`` buffers) and its IRE loss (``ire_loss``)."""

    _pool: dict[str, torch.Tensor] | None = None  # the cached training windows: state, target, user
    _state_cache: dict[tuple[int, ...], torch.Tensor] | None = None  # prompt (its items) -> [REC] state
    cfg: Any  # the ILLMRecConfig
    _trainable: set[str]

    def head_stage(self, projectors: frozenset[str], epochs: int) -> Stage:
        """The stage that trains ``projectors`` alone for ``epochs`` on cached states."""
        return Stage(
            "head",
            trainable=projectors,
            epochs=epochs,
            lr=self.cfg.head_lr,
            batches=self.cached_batches,
            loss=self.ire_loss,
            num_batches=self.num_cached_batches,
            context=self._projectors_alone,
        )

    def num_cached_batches(self, dataset: Dataset) -> int:
        """Batches per epoch of the projectors alone (``head_windows`` cached windows per user)."""
        return -(-self.num_train_users(dataset) * self.cfg.head_windows // self.cfg.head_batch_size)

    def cached_batches(self, dataset: Dataset, rng: np.random.Generator) -> Iterator[Batch]:
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
    def _cache_windows(self, dataset: Dataset) -> dict[str, torch.Tensor]:
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
