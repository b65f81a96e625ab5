"""The training loop of every torch model, readable in one sitting.

Adam, one epoch = ``model.train_batches``; every ``eval_every`` epochs the model is validated and the
best state is kept; ``patience`` validations without improvement stop training. The criterion is valid
NDCG@10 on the frozen ranking candidates, unless the model defines ``validation_metric(ds) -> (name,
value)`` (higher is better; returning None falls back to NDCG@10), e.g. MF trained on CTR labels uses
valid AUC; the run records it as ``best_<name>``. With a run directory, a checkpoint (weights, optimiser,
RNG states, best so far) is written atomically after every epoch, so an interrupted run resumes where it
stopped when started again with the same run directory; ``history.json`` and ``training_curve.png``
record loss and validation metrics.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from llmrec.eval.evaluator import evaluate_ranking
from llmrec.models.neural import TorchRecommender
from llmrec.utils.io import atomic_path

log = logging.getLogger(__name__)


def fit(
    model: TorchRecommender,
    ds: Any,
    run: Any | None = None,
    stage: str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on ``ds``. A multi-step model calls this once per ``stage`` (its checkpoint, history
    and curve files are then suffixed with the stage name) and may override ``epochs`` and ``lr``."""
    cfg = model.cfg
    epochs = epochs or cfg.epochs
    suffix = f"-{stage}" if stage else ""
    model.to(cfg.device)
    opt_cls = torch.optim.AdamW if getattr(model, "decoupled_weight_decay", False) else torch.optim.Adam
    opt = opt_cls(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr or cfg.lr,
        betas=(0.9, 0.98),
        weight_decay=cfg.weight_decay,
    )
    rng = np.random.default_rng(torch.initial_seed() % 2**32)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s%s: %s trainable parameters", model.name, f" {stage}" if stage else "", f"{n_params:,}")
    state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad": 0, "history": []}
    best_weights = model.checkpoint_state()
    ckpt = run.root / f"checkpoint{suffix}.pt" if run is not None else None
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location=cfg.device, weights_only=False)
        model.load_checkpoint_state(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        best_weights = saved["best_weights"]
        state = saved["state"]
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        log.info(
            "resumed from %s at epoch %d (best %s %.4f)",
            ckpt,
            state["epoch"],
            state.get("metric", "valid_ndcg@10"),
            state["best"],
        )
    eval_ds = _eval_subset(ds, cfg.eval_users)
    while state["epoch"] < epochs and state["bad"] < cfg.patience:
        epoch = state["epoch"] + 1
        model.train()
        t0, total, steps = time.perf_counter(), 0.0, 0
        last_note = t0
        bar = tqdm(
            model.train_batches(ds, rng),
            total=model.num_train_batches(ds),
            desc=f"{stage + ' ' if stage else ''}epoch {epoch}/{epochs}",
            leave=False,
            disable=None,
        )
        for batch in bar:
            batch = {k: v.to(cfg.device) for k, v in batch.items()}
            loss = model.loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{model.name}: loss became {loss.item()} at epoch {epoch}, step {steps}; lower --lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.4f}", best=f"{max(state['best'], 0):.4f}")
            if time.perf_counter() - last_note > 60:  # the log (and a non-terminal) still sees progress
                log.info(
                    "epoch %d: step %d/%s, loss %.4f, %.2f s/step",
                    epoch,
                    steps,
                    bar.total or "?",
                    total / steps,
                    (time.perf_counter() - t0) / steps,
                )
                last_note = time.perf_counter()
        record: dict[str, float] = {
            "epoch": epoch,
            "loss": total / max(steps, 1),
            "train_seconds": time.perf_counter() - t0,
        }
        if epoch % cfg.eval_every == 0 or epoch == epochs:
            criterion, metrics = validate(model, eval_ds)
            record.update(metrics)
            state["metric"] = criterion
            if metrics[criterion] > state["best"]:
                state.update(best=metrics[criterion], best_epoch=epoch, bad=0)
                best_weights = model.checkpoint_state()
            else:
                state["bad"] += 1
            log.info(
                "epoch %d: loss %.4f, %s (best %s %.4f at epoch %d)",
                epoch,
                record["loss"],
                ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                criterion,
                state["best"],
                state["best_epoch"],
            )
        state["epoch"] = epoch
        state["history"].append(record)
        if ckpt is not None:
            with atomic_path(ckpt) as tmp:
                torch.save(
                    {
                        "model": model.checkpoint_state(),
                        "optimizer": opt.state_dict(),
                        "best_weights": best_weights,
                        "state": state,
                        "rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(),
                    },
                    tmp,
                )
    criterion = state.get("metric", "valid_ndcg@10")
    if state["bad"] >= cfg.patience:
        log.info(
            "early stop at epoch %d: no better %s for %d validations", state["epoch"], criterion, cfg.patience
        )
    model.load_checkpoint_state(best_weights)
    if run is not None:
        run.write_json(f"history{suffix}.json", state["history"])
        prefix = f"{stage}_" if stage else ""
        run.log_metrics(
            "train",
            {
                f"{prefix}best_epoch": state["best_epoch"],
                f"{prefix}best_{criterion}": state["best"],
                f"{prefix}epochs_run": state["epoch"],
            },
        )
        from llmrec.plots import plot_training_curve

        plot_training_curve(
            state["history"], run.root / f"training_curve{suffix}.png", title=f"{model.name}{suffix}"
        )
        ckpt.unlink(
            missing_ok=True
        )  # the trained model is saved by the caller; a finished run has nothing to resume
    return state["history"]


def validate(model: TorchRecommender, ds: Any) -> tuple[str, dict[str, float]]:
    """(name of the early-stopping criterion, metrics to record) of one validation.

    The model's own ``validation_metric(ds)`` when it defines one and it returns a (name, value) pair;
    otherwise hit@10 and NDCG@10 of the frozen validation candidates, NDCG@10 being the criterion.
    """
    hook = getattr(model, "validation_metric", None)
    custom = hook(ds) if hook is not None else None
    if custom is not None:
        name, value = custom
        return name, {name: float(value)}
    metrics, _ = evaluate_ranking(model, ds, "valid", ks=(10,), full=False, batch_size=512)
    return "valid_ndcg@10", {"valid_hit@10": metrics["hit@10"], "valid_ndcg@10": metrics["ndcg@10"]}


class _Subset:
    """A view of a dataset whose evaluation splits hold a fixed subset of users (faster validation)."""

    def __init__(self, ds: Any, users: np.ndarray) -> None:
        self._ds, self._users = ds, users

    def split(self, name: str) -> Any:
        from llmrec.data.dataset import SplitData

        full = self._ds.split(name)
        return SplitData(
            users=full.users[self._users],
            histories=[full.histories[u] for u in self._users],
            targets=full.targets[self._users],
        )

    def negatives(self, name: str) -> np.ndarray:
        return self._ds.negatives(name)[self._users]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)


def _eval_subset(ds: Any, n: int | None) -> Any:
    if n is None or n >= ds.n_users:
        return ds
    users = np.sort(np.random.default_rng(0).choice(ds.n_users, size=n, replace=False))
    return _Subset(ds, users)
