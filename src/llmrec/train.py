"""``llmrec train`` / ``llmrec evaluate``: fit a registered model, save it, evaluate it into its run directory."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from llmrec import trainer
from llmrec.config import ConfigError, from_dict, option
from llmrec.data.dataset import Dataset
from llmrec.errors import LlmrecError
from llmrec.eval.evaluator import evaluate_ctr, evaluate_ranking, seeded_rows
from llmrec.models.base import Recommender, build_model, load_model
from llmrec.plots import plot_popularity_breakdown
from llmrec.runs import Run, default_run_name
from llmrec.trainer import accelerator_for
from llmrec.utils.io import read_json

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """What to evaluate and how."""

    splits: list[str] = option(factory=lambda: ["valid", "test"], help="splits to evaluate")
    ks: list[int] = option(factory=lambda: [5, 10], help="cut-offs for hit@k / ndcg@k")
    full_ranking: bool = option(True, "also rank the whole catalog (history items excluded)")
    ctr: bool = option(True, "also compute AUC/UAUC on the CTR examples when the dataset has them")
    ranking: bool = option(True, "rank the frozen candidates (CTR-only models skip it whatever this says)")
    ctr_examples: int | None = option(
        None, "CTR on a seeded random subset of this many examples per split (None = all; rows recorded)"
    )
    ranking_users: int | None = option(
        None, "rank for a seeded random subset of this many users per split (None = all; users recorded)"
    )
    batch_size: int = option(256, "users per scoring batch")

    def __post_init__(self) -> None:
        bad = [s for s in self.splits if s not in ("valid", "test")]
        if bad:
            raise ConfigError(f"unknown split(s) {bad}; use valid and/or test")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"ks must be positive integers, got {self.ks}")
        for name in ("ctr_examples", "ranking_users"):
            if (value := getattr(self, name)) is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 (or unset for all), got {value}")


@dataclass
class TrainConfig:
    """``llmrec train MODEL``: which model, on which dataset, into which run directory."""

    model: str = option("popularity", "registered model name (see 'llmrec train --help')")
    data: str = option("data/ml-100k", "prepared dataset directory")
    out: str | None = option(None, "run directory (default: runs/<model>-<dataset>-<timestamp>)")
    seed: int = option(42, "global seed (numpy, torch)")
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)")
    log_with: Literal["none", "tensorboard", "wandb", "mlflow"] = option(
        "none",
        "experiment tracker for the training curves (through accelerate; local ones write in <run>/tracking)",
    )
    options: dict[str, Any] = option(
        factory=dict, help="model options, e.g. -o hidden=64 (unknown keys are an error)"
    )
    eval: EvalConfig = option(factory=EvalConfig, help="evaluation settings")


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate_model(model: Recommender, ds: Dataset, cfg: EvalConfig, run: Run) -> dict[str, dict[str, float]]:
    """Evaluate on each split, write metrics.json, breakdown.json and the popularity plot."""
    results: dict[str, dict[str, float]] = {}
    breakdowns: dict[str, Any] = {}
    ctr_rows: dict[str, list[int]] = {}
    ranked_users: dict[str, list[int]] = {}
    ranking = cfg.ranking and "ranking" in model.tasks
    for split in cfg.splits:
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        if ranking:
            rows = seeded_rows(len(ds.split(split).users), cfg.ranking_users)  # type: ignore[arg-type]
            metrics, breakdowns[split] = evaluate_ranking(
                model,
                ds,
                split,  # type: ignore[arg-type]
                cfg.ks,
                cfg.full_ranking,
                cfg.batch_size,
                rows,
            )
            metrics["ranking_users"] = len(rows)
            ranked_users[split] = ds.split(split).users[rows].tolist()  # type: ignore[arg-type]
        if (cfg.ctr or "ranking" not in model.tasks) and (ds.root / "ctr").exists():
            if ds.ctr(split)["label"].nunique() == 2:  # type: ignore[arg-type]
                ctr, rows = evaluate_ctr(
                    model,
                    ds,
                    split,  # type: ignore[arg-type]
                    batch_size=getattr(model, "pair_batch_size", 1024),
                    max_examples=cfg.ctr_examples,
                )
                metrics.update(ctr)
                ctr_rows[split] = rows.tolist()
            else:
                log.info("CTR metrics skipped on %s: its examples have one class only", split)
        metrics["eval_seconds"] = time.perf_counter() - t0
        run.log_metrics(split, metrics)
        results[split] = metrics
        log.info("%s %s: %s", model.name, split, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if cfg.ctr_examples is not None and ctr_rows:
        run.write_json("ctr_rows.json", ctr_rows)  # which CTR rows were scored: the subset is reproducible
    if cfg.ranking_users is not None and ranked_users:
        run.write_json("ranking_users.json", ranked_users)  # which users were ranked
    if breakdowns:
        run.write_json("breakdown.json", breakdowns)
    if "test" in breakdowns:
        plot_popularity_breakdown({model.name: breakdowns["test"]}, run.root / "popularity_breakdown.png")
    return results


@dataclass
class _MainRunDir:
    """The run as a process other than the main one sees it: the directory where the main process writes
    and from whose checkpoint every process resumes. It writes nothing there."""

    root: Path


def train(cfg: TrainConfig) -> Path:
    """Fit, save and evaluate; returns the run directory.

    Started as several processes (``accelerate launch``), every process trains in step and only the main
    one writes the run directory (config, log, checkpoints, model, evaluation); the others wait for it.
    """
    ds = Dataset(cfg.data)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, cfg.options, ds.n_users, ds.n_items)
    accelerator = accelerator_for(model)  # joins the other processes before the model loads onto a GPU
    if (
        accelerator.num_processes == 1
        and os.environ.get("ACCELERATE_USE_CPU") == "True"
        and "MASTER_ADDR" in os.environ
    ):
        log.warning(
            "one process only: `accelerate launch --cpu --num_processes N` starts N processes through mpirun "
            "alone; use `accelerate launch --multi_gpu --num_processes N` (with device=cpu they use gloo) or torchrun"
        )
    run_dir = Path(cfg.out) if cfg.out else Path("runs") / default_run_name(cfg.model, cfg.data)
    [run_dir] = broadcast_object_list([run_dir])  # the main process's timestamp names the run everywhere
    if not accelerator.is_main_process:
        logging.getLogger("llmrec").setLevel(logging.WARNING)  # the main process logs the run
        trainer.fit(model, ds, _MainRunDir(run_dir), log_with=cfg.log_with)
        accelerator.wait_for_everyone()
        return run_dir
    with Run(run_dir, cfg) as run:
        log.info("training %s on %s (%d users, %d items)", cfg.model, ds.root, ds.n_users, ds.n_items)
        t0 = time.perf_counter()
        trainer.fit(model, ds, run, log_with=cfg.log_with)
        run.log_metrics("train", {"fit_seconds": time.perf_counter() - t0})
        model.save(run.model_dir)
        evaluate_model(model, ds, cfg.eval, run)
    accelerator.wait_for_everyone()
    return run_dir


def saved_config(run_dir: str | Path) -> TrainConfig:
    """The resolved TrainConfig a run directory was trained with (its config.json, provenance dropped)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise LlmrecError(
            "not a run directory (config.json missing)", file=path.parent, hint="give an 'llmrec train' run"
        )
    saved = read_json(path)
    saved.pop("_llmrec", None)
    return from_dict(TrainConfig, saved)


def evaluate_run(
    run_dir: str | Path, eval_cfg: EvalConfig | None = None, data: str | None = None
) -> dict[str, Any]:
    """Re-evaluate a saved run's model (optionally on another prepared copy of the dataset)."""
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir)
    if eval_cfg is not None:
        cfg.eval = eval_cfg
    if data:
        cfg.data = data
    ds = Dataset(cfg.data)
    model = load_model(run_dir / "model")
    if (model.n_users, model.n_items) != (ds.n_users, ds.n_items):
        raise LlmrecError(
            f"model was trained for {model.n_users} users / {model.n_items} items, dataset has {ds.n_users} / {ds.n_items}",
            file=ds.root,
            hint="evaluate on the dataset the model was trained on",
        )
    with Run(run_dir, cfg) as run:
        return evaluate_model(model, ds, cfg.eval, run)


__all__ = ["TrainConfig", "EvalConfig", "train", "evaluate_run", "saved_config"]
