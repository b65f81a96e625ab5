"""Base class of the torch models: training examples, a loss, and scores, on top of the model contract.

A subclass provides ``train_batches`` (one epoch of tensors), ``loss(batch)`` and ``score_all_tensor``;
:func:`llmrec.training.fit` does the rest as the options of :class:`NeuralConfig` say (optimiser,
learning-rate schedule, gradient clipping, early stopping on validation NDCG@10 or a fixed number of
epochs, best or last weights, resumable epochs). A model trained in several parts (LoRA first, then
adaptors ...) declares them as :class:`Stage` s in :meth:`TorchRecommender.stages`; the trainer runs them
in order. Weights are saved as safetensors.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from llmrec.config import option
from llmrec.errors import ConfigError, LlmrecError
from llmrec.models.base import ModelConfig, Placement, Recommender

if TYPE_CHECKING:
    from llmrec.data.dataset import Dataset

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class NeuralConfig(ModelConfig):
    """Training options shared by every torch model.

    The defaults are llmrec's own recipe: Adam (AdamW for a model whose class sets
    ``decoupled_weight_decay``), betas (0.9, 0.98), a constant learning rate, no clipping, early stopping on
    validation with the best weights kept. The HuggingFace Trainer's defaults (which the official I-LLMRec
    code trains with) are ``optimizer=adamw, adam_betas=[0.9, 0.999], lr_schedule=linear,
    max_grad_norm=1.0, validate=false`` (lr 5e-5, weight decay 0).
    """

    epochs: int = option(200, "maximum training epochs (exactly this many with validate=false)", ge=1)
    batch_size: int = option(128, "training examples per step", ge=1)
    lr: float = option(1e-3, "learning rate (the peak of lr_schedule)", gt=0)
    weight_decay: float = option(0.0, "weight decay (adam: added to the gradient; adamw: decoupled)", ge=0)
    optimizer: Literal["model", "adam", "adamw"] = option(
        "model", "model (the model's own: Adam, AdamW for the HistLLM family) | adam | adamw"
    )
    adam_betas: tuple[float, float] = option(
        (0.9, 0.98), "Adam/AdamW coefficients [beta1, beta2], each in [0, 1)"
    )
    adam_eps: float = option(1e-8, "Adam/AdamW epsilon (added to the denominator)", gt=0)
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = option(
        "constant",
        "learning rate over each stage's steps (transformers' schedulers; linear and cosine decay to 0)",
    )
    warmup_steps: int = option(
        0, "optimiser steps of linear warm-up from 0 to lr at each stage's start", ge=0
    )
    warmup_ratio: float = option(
        0.0,
        "warm-up as a fraction of each stage's optimiser steps (rounded up; not with warmup_steps)",
        ge=0,
        le=1,
    )
    max_grad_norm: float | None = option(
        None, "clip the gradients' total L2 norm to this before every step (None = no clipping)", gt=0
    )
    validate: bool = option(
        True, "false: no validation; train exactly epochs epochs per stage and keep the last weights"
    )
    patience: int = option(20, "stop after this many validations without a better validation metric", ge=1)
    eval_every: int = option(1, "epochs between validations", ge=1)
    eval_users: int | None = option(None, "validate on a fixed random subset of users (None = all)", ge=1)
    mirror_gradient: bool = option(
        False,
        "Mirror Gradient (Zhong et al., WWW 2024): every mg_interval-th batch a descent step on mg_alpha1 x loss, "
        "then an ascent step on mg_alpha2 x the loss at the new weights (towards flat minima)",
    )
    mg_alpha1: float = option(
        1.0, "Mirror Gradient: weight of the descent step (MMRec searches 1.0-1.8)", gt=0
    )
    mg_alpha2: float = option(
        0.1, "Mirror Gradient: weight of the ascent step (MMRec searches 0.1-0.5)", ge=0
    )
    mg_interval: int = option(
        3, "Mirror Gradient: batches between mirrored steps (the paper's beta: 3)", ge=1
    )
    mixed_precision: Literal["none", "bf16", "fp16"] = option(
        "none",
        "autocast of the training loss (bf16: CPU or GPU; fp16: GPU, loss-scaled); weights keep their dtype",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {list(self.adam_betas)}")
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError(
                f"warmup_steps={self.warmup_steps} and warmup_ratio={self.warmup_ratio}: give one of them"
            )
        if (self.warmup_steps or self.warmup_ratio) and self.lr_schedule == "constant":
            raise ConfigError(
                "a warm-up needs a schedule: -o lr_schedule=constant_with_warmup (or linear, cosine)"
            )


@dataclasses.dataclass(frozen=True)
class Stage:
    """One part of a model's training, declared by :meth:`TorchRecommender.stages` and run by the trainer.

    The trainer trains exactly the parameters named in ``trainable`` (every other one is frozen while the
    stage runs) for at most ``epochs`` epochs of ``batches`` at learning rate ``lr`` (the peak of the
    config's ``lr_schedule``), minimising ``loss``.
    A stage with ``load`` is satisfied by calling it instead (weights taken from another run). With a
    run directory and more than one stage, the stage's files are named after it (``checkpoint-<name>.pt``,
    ``history-<name>.json``, ``training_curve-<name>.png``), and a finished stage that another follows
    leaves its weights in ``stage-<name>.safetensors``, from which a restarted run goes on.
    """

    name: str  # names the stage's files in the run and its lines in the log
    trainable: frozenset[str] = frozenset()  # names (as in named_parameters) of the parameters it trains
    epochs: int = 0  # at most this many epochs (early stopping may end it sooner); 0 = nothing to train
    lr: float = 1e-3  # learning rate of its optimiser (the peak of the schedule)
    batches: Callable[[Any, np.random.Generator], Iterator[Batch]] | None = None  # one epoch (dataset, rng)
    loss: Callable[[Batch], torch.Tensor] | None = None  # scalar loss of a batch
    # batches per epoch: for the progress bar, and the step count of a learning-rate schedule
    num_batches: Callable[[Any], int | None] | None = None
    # its early-stopping criterion, as validation_metric (None: the model's validation_metric)
    validation: Callable[[Any], tuple[str, float] | None] | None = None
    load: Callable[[], None] | None = None  # instead of training: load the stage's weights from elsewhere
    # held while the stage trains and validates, e.g. a cache that is valid only while some weights are frozen
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


class TorchRecommender(Recommender, nn.Module):
    """A Recommender that is an nn.Module: :func:`llmrec.training.fit` trains it through its :meth:`stages`."""

    cfg: NeuralConfig
    #: AdamW (weight decay decoupled from the gradient) instead of Adam, unless the option ``optimizer`` says
    decoupled_weight_decay: ClassVar[bool] = False
    trained_in_steps = True
    on_device = True

    def __init__(
        self, cfg: NeuralConfig, n_users: int, n_items: int, placement: Placement | None = None
    ) -> None:
        nn.Module.__init__(self)
        Recommender.__init__(self, cfg, n_users, n_items, placement)

    # -- what the trainer needs
    @abc.abstractmethod
    def train_batches(self, dataset: Dataset, rng: np.random.Generator) -> Iterator[Batch]:
        """One epoch of training batches (tensors on CPU; the trainer moves them)."""

    @abc.abstractmethod
    def loss(self, batch: Batch) -> torch.Tensor:
        """Scalar training loss of a batch."""

    def num_train_batches(self, dataset: Dataset) -> int | None:
        """Batches per epoch, for the progress bar and a learning-rate schedule (None if unknown)."""
        return None

    def prepare(self, dataset: Dataset) -> None:  # noqa: B027 (optional hook: most models need nothing)
        """Called by the trainer before the stages: build what needs the dataset (features, a backbone)."""

    def stages(self, dataset: Dataset) -> list[Stage]:
        """The parts of training, in order (called after :meth:`prepare`). By default one stage: every
        parameter that requires a gradient, ``epochs`` epochs of ``train_batches`` at ``lr``."""
        return [
            Stage(
                name="train",
                trainable=frozenset(n for n, p in self.named_parameters() if p.requires_grad),
                epochs=self.cfg.epochs,
                lr=self.cfg.lr,
                batches=self.train_batches,
                loss=self.loss,
                num_batches=self.num_train_batches,
            )
        ]

    def validation_metric(self, dataset: Any) -> tuple[str, float] | None:
        """The early-stopping criterion as (name, value), higher is better, e.g. valid AUC of a CTR model;
        None: the trainer's valid NDCG@10 of the frozen ranking candidates. ``dataset``: the dataset, or
        the trainer's :class:`~llmrec.training.loop.ValidationView` of it (``ctr``, ``split``, sizes)."""
        return None

    # -- scoring
    @abc.abstractmethod
    def score_all_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, N) scores as a tensor (called under ``torch.no_grad`` in eval mode)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def score_all(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            # a copy (torch.tensor): torch warns about sharing a read-only array, as the user ids often are
            users_t = torch.tensor(np.asarray(users), device=self.device)
            out = self.score_all_tensor(users_t, histories)
        self.train(was_training)
        return out.float().cpu().numpy()

    # -- the two sides of a dot-product score (a model with dot_product gives query_tensor, item_tensor)
    def query_tensor(self, users: torch.Tensor, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, d) query vectors as a tensor (called under ``torch.no_grad`` in eval mode)."""
        raise self._no_vectors()

    def item_tensor(self) -> torch.Tensor:
        """(N, d) item vectors as a tensor (called under ``torch.no_grad`` in eval mode)."""
        raise self._no_vectors()

    def query_vectors(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        users_t = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)
        return self._evaluated(lambda: self.query_tensor(users_t, histories))

    def item_matrix(self) -> np.ndarray:
        return self._evaluated(self.item_tensor)

    def _evaluated(self, compute: Callable[[], torch.Tensor]) -> np.ndarray:
        """``compute()`` in eval mode without gradients, as a float32 array (the training mode restored)."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = compute()
        self.train(was_training)
        return out.detach().float().cpu().numpy()

    def fit(self, dataset: Dataset, run: Any | None = None) -> None:
        """Train through :func:`llmrec.training.fit`, which runs the model's :meth:`stages` (the same call as
        for every model; the trainer never calls this for a model ``trained_in_steps``)."""
        from llmrec.training import fit

        fit(self, dataset, run)

    @property
    def mixed_precision(self) -> str:
        """Autocast of the training steps: the option ``mixed_precision``."""
        return self.cfg.mixed_precision

    # -- what the trainer keeps as "best" and checkpoints (models around a frozen LLM keep less)
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    # -- persistence
    def save_state(self, directory: Path) -> None:
        from safetensors.torch import save_file

        from llmrec.utils.io import atomic_path

        with atomic_path(directory / "model.safetensors") as tmp:  # a killed save leaves no half file
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))

    def load_state(self, directory: Path, dataset: Dataset | None = None) -> None:
        path = directory / "model.safetensors"
        state = read_weights(path)
        check_weights(path, state, self.state_dict())
        self.load_state_dict(state)
        self.to(self.placement.device)
        self.eval()  # a loaded model is for scoring; fit() switches back to training mode


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (on the CPU), with a one-line error when it is missing or unreadable."""
    from safetensors.torch import load_file

    if not path.exists():
        raise LlmrecError("model weights missing", file=path, hint="train the model again (llmrec train)")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise LlmrecError(
            f"unreadable weights ({e})", file=path, hint="the file is truncated or not ours; train again"
        ) from None


def check_weights(path: Path, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """Missing or unexpected weights are an error naming them (never a model left partly random)."""
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise LlmrecError(
            f"weights do not match the model: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}",
            file=path,
            hint="it was saved by another model or configuration; load it with that one or retrain",
        )
    for name, value in saved.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise LlmrecError(
                f"weight '{name}' has shape {tuple(value.shape)}, the model expects {tuple(expected[name].shape)}",
                file=path,
                hint="it was saved with another configuration; load it with that one or retrain",
            )


def left_pad(histories: list[np.ndarray], max_len: int, offset: int = 1) -> torch.Tensor:
    """(B, max_len) long tensor of the last ``max_len`` items of each history, shifted by ``offset``
    (index 0 is padding), left-padded so the most recent item is always in the last column."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for b, h in enumerate(histories):
        h = np.asarray(h[-max_len:], dtype=np.int64)
        if len(h):
            out[b, max_len - len(h) :] = h + offset
    return torch.from_numpy(out)


def seen_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted unique keys ``user * n_items + item`` of interactions: what :func:`sample_unseen` excludes."""
    return np.unique(np.asarray(users, dtype=np.int64) * n_items + np.asarray(items, dtype=np.int64))


_warned_all_seen = False  # the all-seen fallback is reported once per process


def sample_unseen(rng: np.random.Generator, users: np.ndarray, n_items: int, seen: np.ndarray) -> np.ndarray:
    """One uniform item per entry of ``users`` that this user has not interacted with: the one negative
    sampler of the models (rejection sampling; ``seen`` = :func:`seen_keys` of the interactions).

    A user who has interacted with every item has no valid negative. Rather than loop forever or stop a
    training run over one degenerate user, their entries are drawn uniformly over all items (so one of their
    own items acts as a negative), and a warning naming the user is logged once per process. Every other
    entry is drawn exactly as plain rejection sampling draws it (one ``rng.integers`` over all entries, then
    again for the rejected ones, in order), so seeded results do not depend on the guard.
    """
    global _warned_all_seen
    users = np.asarray(users, dtype=np.int64)
    neg = rng.integers(0, n_items, size=len(users))
    if not len(seen):
        return neg

    def is_seen(u: np.ndarray, i: np.ndarray) -> np.ndarray:
        keys = u * n_items + i
        pos = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
        return seen[pos] == keys

    bad = is_seen(users, neg)
    if bad.any():  # users with nothing left to sample from take any item
        distinct = np.unique(users[bad])
        count = np.searchsorted(seen, (distinct + 1) * n_items) - np.searchsorted(seen, distinct * n_items)
        full = distinct[count >= n_items]
        if len(full):
            bad &= ~np.isin(users, full)
            if not _warned_all_seen:
                _warned_all_seen = True
                log.warning(
                    "user index %d%s has interacted with all %d items: no unseen item is left as a negative, "
                    "so its negatives are drawn from all items (reported once)",
                    full[0],
                    f" (and {len(full) - 1} more)" if len(full) > 1 else "",
                    n_items,
                )
    while bad.any():
        neg[bad] = rng.integers(0, n_items, size=int(bad.sum()))
        bad[bad] = is_seen(users[bad], neg[bad])
    return neg


def negatives_for_user(
    rng: np.random.Generator, user: int, items: np.ndarray, n_items: int, size: int
) -> np.ndarray:
    """``size`` negatives of one user whose interacted items are ``items`` (:func:`sample_unseen`)."""
    return sample_unseen(
        rng, np.full(size, user), n_items, seen_keys(np.full(len(items), user), items, n_items)
    )


def without_held_out(
    rng: np.random.Generator, negatives: np.ndarray, targets: np.ndarray, held_out: np.ndarray
) -> np.ndarray:
    """``negatives`` (B,) or (B, F) with every held-out item (``held_out``: (N,) bool, ``prepare --cold-items``)
    redrawn uniformly until it is neither held out nor its row's target; untouched (and no draw made) when
    none is held out, so seeded runs without held-out items do not change."""
    target = np.asarray(targets).reshape(-1, *[1] * (negatives.ndim - 1))
    bad = held_out[negatives]
    while bad.any():
        negatives[bad] = rng.integers(0, len(held_out), size=int(bad.sum()))
        bad &= held_out[negatives] | (negatives == target)
    return negatives


def trainable_users(dataset: Dataset, min_len: int = 2) -> np.ndarray:
    """Users whose training sequence has at least ``min_len`` items (one input and one target)."""
    return np.array([u for u, s in enumerate(dataset.train_sequences) if len(s) >= min_len], dtype=np.int64)


def sequence_batch_count(dataset: Dataset, batch_size: int) -> int:
    """Batches per epoch when every trainable user contributes one sequence."""
    return -(-len(trainable_users(dataset)) // batch_size)


def minibatches(rng: np.random.Generator, batch_size: int, **columns: np.ndarray) -> Iterator[Batch]:
    """One epoch of example batches: the aligned arrays ``columns`` (one entry per example) in one random
    order (a single ``rng.permutation``), ``batch_size`` examples at a time, as tensors of the same names."""
    order = rng.permutation(len(next(iter(columns.values()))))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield {name: torch.from_numpy(values[idx]) for name, values in columns.items()}


def next_item_batches(
    dataset: Dataset, rng: np.random.Generator, batch_size: int, max_len: int, n_items: int, negatives: bool
) -> Iterator[Batch]:
    """One epoch of next-item batches, one (shuffled) user per row, rows = item index + 1, 0 = padding.

    ``inputs`` = the last ``max_len`` training items but the final one, ``pos`` = the item that follows each
    input position, and with ``negatives`` ``neg`` = one uniformly sampled item the user never trained on,
    per position that has a target (the SASRec reference's sampling).
    """
    seqs = dataset.train_sequences
    users = trainable_users(dataset)
    rng.shuffle(users)
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        inputs = left_pad([seqs[u][:-1] for u in chunk], max_len)  # (B, L) rows
        pos = left_pad([seqs[u][1:] for u in chunk], max_len)  # (B, L) next item at each position
        batch = {"inputs": inputs, "pos": pos}
        if negatives:
            neg = np.stack([negatives_for_user(rng, u, seqs[u], n_items, max_len) + 1 for u in chunk])
            batch["neg"] = torch.from_numpy(neg) * (pos != 0)  # (B, L) rows, 0 where there is no target
        yield batch
