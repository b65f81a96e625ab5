"""``llmrec train`` / ``llmrec evaluate``: fit a registered model, save it, evaluate it into its run directory.

The configs import nothing heavy (the command line builds its flags from them); torch, accelerate and the
training loop are imported when a run starts."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmrec.config import ConfigError, flatten, from_dict, merge, option, to_dict
from llmrec.data.dataset import Dataset, dataset_ref, locate_dataset
from llmrec.devices import DEVICE_HELP
from llmrec.errors import LlmrecError
from llmrec.models.base import Recommender, build_model, load_model, model_config
from llmrec.runs import Run, clear_run, default_run_name
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
    device: str | None = option(None, f"{DEVICE_HELP}; sets the model option 'device' (default: auto)")
    dtype: str | None = option(
        None, "LLM backbone weights: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16"
    )
    log_with: Literal["none", "tensorboard", "wandb", "mlflow"] = option(
        "none",
        "experiment tracker for the training curves (through accelerate; local ones write in <run>/tracking)",
    )
    options: dict[str, Any] = option(
        factory=dict,
        help="model options, e.g. -o hidden=64 -o backbone.lora_r=16 (merged into the defaults; unknown keys "
        "are an error)",
    )
    eval: EvalConfig = option(factory=EvalConfig, help="evaluation settings")

    def resolved(self) -> dict[str, Any]:
        """This config with every model option at its value (defaults, preset, file, flags; device and
        dtype resolved for this machine): what ``--print-config`` prints."""
        out = to_dict(self)
        out["options"] = to_dict(model_config(self.model, self.options, self.device, self.dtype))
        out.pop("device"), out.pop("dtype")  # resolved into the options
        return out


# what may differ when a run resumes: where it runs, how it is evaluated, where it is written
_RESUMABLE_CHANGES = (
    "out",
    "threads",
    "device",
    "dtype",
    "eval",
    "data",
    "options.device",
    "options.backbone.dtype",
)


def config_changes(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between a run's saved config and ``cfg`` (models' options compared
    after resolving their defaults, so an explicit default equals an omitted one)."""

    def comparable(d: dict[str, Any]) -> dict[str, Any]:
        d = dict(d)
        d["options"] = to_dict(model_config(d["model"], d.get("options") or {}, resolve=False))
        return flatten(d)

    before = comparable({k: v for k, v in saved.items() if not k.startswith("_")})
    after = comparable(to_dict(cfg))
    keys = sorted(set(before) | set(after))
    return [
        k
        for k in keys
        if before.get(k) != after.get(k)
        and not any(k == p or k.startswith(p + ".") for p in _RESUMABLE_CHANGES)
    ]


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate_model(model: Recommender, ds: Dataset, cfg: EvalConfig, run: Run) -> dict[str, dict[str, float]]:
    """Evaluate on each split, write metrics.json, breakdown.json and the popularity plot."""
    from llmrec.eval.evaluator import evaluate_ctr, evaluate_ranking, seeded_rows
    from llmrec.plots import plot_popularity_breakdown

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
                    batch_size=model.pair_batch_size,
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


def check_resume(run_dir: Path, cfg: TrainConfig, ds: Dataset, restart: bool = False) -> None:
    """A run directory belongs to one model and configuration: training into one that holds another is
    refused, naming the changed keys (``restart`` clears what earlier runs wrote there and starts over)."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    if restart:
        clear_run(run_dir)
        log.info("--restart: cleared the earlier run in %s", run_dir)
        return
    saved = read_json(path)
    try:
        changed = config_changes(saved, cfg)
    except LlmrecError as e:  # e.g. a model or option this version no longer has
        changed = [f"(unreadable: {e})"]
    identity = (saved.get("_llmrec") or {}).get("dataset", {}).get("identity")
    if identity and identity != ds.identity:
        changed.append("data (another dataset)")
    if changed:
        raise LlmrecError(
            f"holds a run with another configuration (changed: {', '.join(changed)})",
            file=run_dir,
            hint="use the run's options to resume it, another --out, or --restart to start it over",
        )


def train(cfg: TrainConfig, restart: bool = False) -> Path:
    """Fit, save and evaluate; returns the run directory.

    An existing run directory with the same configuration resumes (from its checkpoints); one with another
    configuration is refused unless ``restart``. Started as several processes (``accelerate launch``),
    every process trains in step and only the main one writes the run directory (config, log, checkpoints,
    model, evaluation); the others wait for it.
    """
    import torch
    from accelerate.utils import broadcast_object_list

    from llmrec import training

    ds = Dataset(cfg.data)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, cfg.options, ds.n_users, ds.n_items, cfg.device, cfg.dtype)
    # joins the other processes before the model loads onto a GPU
    accelerator = training.accelerator_for(model)
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
    if accelerator.is_main_process:
        check_resume(run_dir, cfg, ds, restart)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        logging.getLogger("llmrec").setLevel(logging.WARNING)  # the main process logs the run
        training.fit(model, ds, _MainRunDir(run_dir), log_with=cfg.log_with)
        accelerator.wait_for_everyone()
        return run_dir
    with Run(run_dir, cfg, dataset=dataset_ref(ds, run_dir)) as run:
        log.info(
            "training %s on %s (%d users, %d items) on %s",
            cfg.model,
            ds.root,
            ds.n_users,
            ds.n_items,
            getattr(model.cfg, "device", "cpu"),
        )
        t0 = time.perf_counter()
        training.fit(model, ds, run, log_with=cfg.log_with)
        run.log_metrics("train", {"fit_seconds": time.perf_counter() - t0})
        model.save(run.model_dir, ds)
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


def run_dataset(run_dir: str | Path, data: str | Path | None = None) -> Dataset:
    """The dataset a run was trained on: ``data`` (a moved copy, checksum verified), else the path the run
    recorded relative to itself, else the absolute one (runs of older versions: their config's ``data``)."""
    run_dir = Path(run_dir)
    saved = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    ref = (saved.get("_llmrec") or {}).get("dataset")
    if ref is None and (run_dir / "model" / "model.json").exists():
        ref = read_json(run_dir / "model" / "model.json").get("dataset")
        return locate_dataset(ref or saved.get("data"), run_dir / "model", data)
    return locate_dataset(ref or saved.get("data"), run_dir, data)


def evaluation_config(
    run_dir: str | Path, overrides: dict[str, Any] | None = None, data: str | None = None
) -> TrainConfig:
    """A run's saved config with evaluation ``overrides`` merged into its saved evaluation settings (so
    ``--ks 1`` keeps the run's ``ranking_users`` and ``ctr_examples``)."""
    cfg = saved_config(run_dir)
    cfg.eval = from_dict(EvalConfig, merge(to_dict(cfg.eval), overrides or {}), where="evaluation options")
    if data:
        cfg.data = str(data)
    return cfg


def evaluate_run(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    data: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> dict[str, Any]:
    """Re-evaluate a saved run's model on ``device`` (any: where it was trained does not matter), with
    ``overrides`` merged into its saved evaluation settings, optionally on a moved copy of its dataset."""
    run_dir = Path(run_dir)
    cfg = evaluation_config(run_dir, overrides, data)
    ds = run_dataset(run_dir, data)
    model = load_model(run_dir, device=device, dtype=dtype, data=ds)
    with Run(run_dir, cfg, dataset=dataset_ref(ds, run_dir)) as run:
        return evaluate_model(model, ds, cfg.eval, run)


__all__ = ["TrainConfig", "EvalConfig", "train", "evaluate_run", "saved_config", "run_dataset"]
