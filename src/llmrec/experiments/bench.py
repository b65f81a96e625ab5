"""``llmrec bench``: training and evaluation throughput of a torch model on a prepared dataset.

Training: sequences (training examples) per second over ``steps`` optimiser steps after two warm-up
steps. Evaluation: users per second when scoring target + frozen negatives, and over the whole catalog.
Weights are random: throughput does not depend on their values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.errors import LlmrecError
from llmrec.models.base import build_model
from llmrec.utils.io import write_json_atomic
from llmrec.utils.timing import clock


@dataclass
class BenchConfig:
    """What to time."""

    data: str = option("data/ml-100k", "prepared dataset directory")
    model: str = option("sasrec", "a torch model name")
    options: dict[str, Any] = option(factory=lambda: {"max_len": 200}, help="model options (KEY=VALUE)")
    steps: int = option(20, "timed training steps", ge=1)
    eval_batch_size: int = option(256, "users per scoring batch", ge=1)
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)", ge=1)
    seed: int = option(0, "seed", ge=0, lt=2**32)
    out: str | None = option(None, "also write the numbers to this JSON file")


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    import torch

    from llmrec.models.neural import TorchRecommender

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ds = Dataset(cfg.data)
    model = build_model(cfg.model, cfg.options, ds.n_users, ds.n_items)
    if not isinstance(model, TorchRecommender):
        raise LlmrecError(
            f"'{cfg.model}' is not a torch model: nothing to time", hint="try sasrec, gru4rec, bert4rec, mf"
        )
    device = model.cfg.device
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=model.cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    model.train()
    done, examples, t0 = 0, 0, 0.0
    while done < cfg.steps + 2:
        for batch in model.train_batches(ds, rng):
            if done == 2:  # two warm-up steps are not timed
                t0 = clock(device)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if done >= 2:
                examples += len(next(iter(batch.values())))
            done += 1
            if done >= cfg.steps + 2:
                break
    train_s = clock(device) - t0
    split = ds.split("test")
    negatives = ds.negatives("test")
    cand = np.concatenate([split.targets[:, None], negatives], axis=1)
    t1 = clock(device)
    for s in range(0, ds.n_users, cfg.eval_batch_size):
        sl = slice(s, s + cfg.eval_batch_size)
        model.score(split.users[sl], split.histories[sl], cand[sl])
    sampled_s = clock(device) - t1
    t2 = clock(device)
    for s in range(0, ds.n_users, cfg.eval_batch_size):
        sl = slice(s, s + cfg.eval_batch_size)
        model.score_all(split.users[sl], split.histories[sl])
    full_s = clock(device) - t2
    result = {
        "model": cfg.model,
        "options": cfg.options,
        "dataset": str(ds.root),
        "threads": torch.get_num_threads(),
        "train_steps": cfg.steps,
        "train_examples_per_s": examples / train_s,
        "eval_users_per_s_sampled": ds.n_users / sampled_s,
        "eval_users_per_s_full": ds.n_users / full_s,
        "n_users": ds.n_users,
        "n_items": ds.n_items,
    }
    if cfg.out:
        write_json_atomic(Path(cfg.out), result)
    return result


def format_bench(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{r['model']} {json.dumps(r['options'])} on {r['dataset']} ({r['n_users']:,} users, {r['n_items']:,} items), {r['threads']} torch threads",
            f"  training:   {r['train_examples_per_s']:,.0f} sequences/s ({r['train_steps']} steps)",
            f"  evaluation: {r['eval_users_per_s_sampled']:,.0f} users/s (target + negatives), {r['eval_users_per_s_full']:,.0f} users/s (full catalog)",
        ]
    )
