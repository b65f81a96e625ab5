"""``llmrec experiments bench``: training and evaluation throughput of a model trained in steps, on a
prepared dataset.

Training runs what ``llmrec train`` runs: the model prepared for the dataset (an LLM model attaches its
backbone and features) and set up for each of its stages by the trainer's own code, then the trainer's
optimiser step (:class:`~llmrec.training.loop.TrainingStep`: autocast, backward, clipping, optimiser,
schedule). Every stage that trains is timed over ``steps`` steps after two warm-up steps, its batches
built inside the timed span as in training; the result is training examples (sequences, prompts, CTR
rows: a batch's leading dimension) per second. Evaluation: users per second when scoring target + frozen
negatives, and over the whole catalog; a CTR-only model (e.g. HistLLM) instead scores the test split's
labelled (user, item) examples, in examples per second. Weights are as initialised (or as the stages
before leave them): throughput does not depend on their values.

Models that learn otherwise (popularity, zero-shot Rec-GPT4V) have no steps to time and are refused.
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
from llmrec.models.base import available_models, build_model, get_model_class
from llmrec.utils.io import write_json_atomic
from llmrec.utils.timing import clock

WARMUP_STEPS = 2  # untimed steps at the start of every stage (allocator, caches, lazy initialisation)


@dataclass
class BenchConfig:
    """What to time."""

    data: str = option("data/ml-100k", "prepared dataset directory")
    model: str = option(
        "sasrec", "a model trained in steps (llmrec experiments bench --model NAME lists them if not)"
    )
    options: dict[str, Any] = option(factory=dict, help="model options (KEY=VALUE)")
    steps: int = option(20, "timed training steps per stage", ge=1)
    eval_batch_size: int = option(256, "users (CTR-only models: examples) per scoring batch", ge=1)
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)", ge=1)
    seed: int = option(0, "seed", ge=0, lt=2**32)
    out: str | None = option(None, "also write the numbers to this JSON file")


def benchable_models() -> list[str]:
    """The registered models trained in optimiser steps: the ones ``llmrec experiments bench`` can time."""
    return [name for name in available_models() if get_model_class(name).trained_in_steps]


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    import torch

    if not get_model_class(cfg.model).trained_in_steps:
        raise LlmrecError(
            f"model '{cfg.model}' is not trained in optimiser steps: nothing to time",
            hint=f"llmrec experiments bench times {', '.join(benchable_models())}",
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ds = Dataset(cfg.data)
    model = build_model(cfg.model, cfg.options, ds.n_users, ds.n_items)
    stages = time_training(model, ds, cfg.steps, cfg.seed)
    model.eval()
    examples, seconds = sum(s["examples"] for s in stages), sum(s["seconds"] for s in stages)
    result = {
        "model": cfg.model,
        "options": cfg.options,
        "dataset": str(ds.root),
        "threads": torch.get_num_threads(),
        "train_steps": cfg.steps,
        "train_examples_per_s": examples / seconds,
        "train_stages": stages,
        **time_evaluation(model, ds, cfg.eval_batch_size),
        "n_users": ds.n_users,
        "n_items": ds.n_items,
    }
    if cfg.out:
        write_json_atomic(Path(cfg.out), result)
    return result


def time_training(model: Any, ds: Dataset, steps: int, seed: int) -> list[dict[str, Any]]:
    """Every stage ``llmrec train`` would train, in order: ``steps`` trainer steps after
    :data:`WARMUP_STEPS` untimed ones (epochs of the stage's batches, seeded, starting over as needed)
    -> a record per stage: examples, seconds, examples per second and the loss of every step run."""
    from llmrec.training.loop import TrainingStep, prepare_training, training_stage

    accelerator, device, stages = prepare_training(model, ds)
    where = model.placement.device  # the device as configured: the one training runs on in one process
    model.train()
    out = []
    for stage in stages:
        if stage.load is not None:  # weights from another run, as llmrec train takes them
            stage.load()
            continue
        if not stage.epochs or stage.batches is None:
            continue
        with training_stage(model, stage):
            step = TrainingStep(model, ds, stage, accelerator, device)
            rng = np.random.default_rng(seed)
            losses: list[float] = []
            done, examples, t0 = 0, 0, 0.0
            while done < steps + WARMUP_STEPS:
                before = done
                for index, batch in enumerate(stage.batches(ds, rng)):
                    if done == WARMUP_STEPS:
                        t0 = clock(where)
                    if done >= WARMUP_STEPS:
                        examples += len(next(iter(batch.values())))
                    losses.append(step(batch, index).item())
                    done += 1
                    if done == steps + WARMUP_STEPS:
                        break
                if done == before:
                    raise LlmrecError(
                        f"model '{model.name}' stage {stage.name}: no training batch in this dataset",
                        file=ds.root,
                    )
            seconds = clock(where) - t0
        out.append(
            {
                "stage": stage.name,
                "steps": steps,
                "examples": examples,
                "seconds": seconds,
                "examples_per_s": examples / seconds,
                "losses": losses,
            }
        )
    if not out:
        raise LlmrecError(f"model '{model.name}': its options train no stage, so no step to time")
    return out


def time_evaluation(model: Any, ds: Dataset, batch_size: int) -> dict[str, float]:
    """Ranking models: users per second scoring target + frozen negatives, and the whole catalog; a
    CTR-only model: labelled test examples per second (what ``llmrec train`` evaluates either by)."""
    where = model.placement.device
    if "ranking" not in model.tasks:
        df = ds.ctr("test")
        users, targets = df["user_idx"].to_numpy(), df["target"].to_numpy().astype(np.int64)
        histories = [np.asarray(h, dtype=np.int64) for h in df["history"]]
        t0 = clock(where)
        for s in range(0, len(df), batch_size):
            sl = slice(s, s + batch_size)
            model.score_pairs(users[sl], histories[sl], targets[sl])
        return {"eval_examples_per_s_ctr": len(df) / (clock(where) - t0), "ctr_examples": len(df)}
    split = ds.split("test")
    negatives = ds.negatives("test")
    cand = np.concatenate([split.targets[:, None], negatives], axis=1)
    t1 = clock(where)
    for s in range(0, ds.n_users, batch_size):
        sl = slice(s, s + batch_size)
        model.score(split.users[sl], split.histories[sl], cand[sl])
    sampled_s = clock(where) - t1
    t2 = clock(where)
    for s in range(0, ds.n_users, batch_size):
        sl = slice(s, s + batch_size)
        model.score_all(split.users[sl], split.histories[sl])
    full_s = clock(where) - t2
    return {"eval_users_per_s_sampled": ds.n_users / sampled_s, "eval_users_per_s_full": ds.n_users / full_s}


def format_bench(r: dict[str, Any]) -> str:
    lines = [
        f"{r['model']} {json.dumps(r['options'])} on {r['dataset']} ({r['n_users']:,} users, {r['n_items']:,} items), {r['threads']} torch threads",
    ]
    several = len(r["train_stages"]) > 1
    for s in r["train_stages"]:
        stage = f" ({s['stage']})" if several else ""
        lines.append(
            f"  training{stage}: {s['examples_per_s']:,.1f} examples/s, {s['seconds'] / s['steps']:.3g} s/step "
            f"({s['steps']} steps)"
        )
    if "eval_examples_per_s_ctr" in r:
        lines.append(
            f"  evaluation: {r['eval_examples_per_s_ctr']:,.1f} CTR examples/s ({r['ctr_examples']:,} test examples)"
        )
    else:
        lines.append(
            f"  evaluation: {r['eval_users_per_s_sampled']:,.0f} users/s (target + negatives), {r['eval_users_per_s_full']:,.0f} users/s (full catalog)"
        )
    return "\n".join(lines)
