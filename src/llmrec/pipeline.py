"""The run pipeline behind ``llmrec train`` / ``llmrec evaluate`` (and ``llmrec.train``): fit a registered model,
save it, evaluate it into its run directory.

The configs import nothing heavy (the command line builds its flags from them); torch, accelerate and the
training loop are imported when a run starts."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from llmrec.config import ConfigError, check_ranges, flatten, from_dict, merge, option, to_dict
from llmrec.data.dataset import Dataset, dataset_ref, locate_dataset
from llmrec.errors import LlmrecError
from llmrec.models.base import (
    Recommender,
    build_model,
    drop_legacy_keys,
    get_model_class,
    load_model,
    model_config,
    placement_for,
    read_model_record,
)
from llmrec.placement import DtypeName, Placement, device_option, dtype_option
from llmrec.runs import RUN_FILES, Run, check_owned, clear_partial_files, clear_run, default_run_name
from llmrec.utils.io import read_json
from llmrec.utils.lock import folder_lock

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
    batch_size: int = option(256, "users per scoring batch", ge=1)

    def __post_init__(self) -> None:
        bad = [s for s in self.splits if s not in ("valid", "test")]
        if bad or not self.splits:
            raise ConfigError(f"unknown split(s) {bad or self.splits}; use valid and/or test")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"ks must be positive integers, got {self.ks}")
        for name in ("ctr_examples", "ranking_users"):
            if (value := getattr(self, name)) is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 (or unset for all), got {value}")
        check_ranges(self)


@dataclass
class TrainConfig:
    """``llmrec train MODEL``: which model, on which dataset, into which run directory."""

    model: str = option("popularity", "registered model name (see 'llmrec train --help')")
    data: str = option("data/ml-100k", "prepared dataset directory")
    out: str | None = option(None, "run directory (default: runs/<model>-<dataset>-<timestamp>)")
    seed: int = option(42, "global seed (numpy, torch)", ge=0, le=2**32 - 1)
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)", ge=1)
    device: str = device_option()
    dtype: DtypeName = dtype_option()
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

    def __post_init__(self) -> None:
        check_ranges(self)

    def resolved(self) -> dict[str, Any]:
        """This config with every model option at its value (defaults, preset, file, flags) and the device
        and dtype resolved for this machine: what ``--print-config`` prints."""
        out = to_dict(self)
        out["options"] = to_dict(model_config(self.model, self.options))
        out.update(self.placement().to_dict())
        return out

    def placement(self) -> Placement:
        """Where this command runs the model (``--device``, ``--dtype``)."""
        return placement_for(self.model, self.device, self.dtype)


# what may differ when a run resumes: where it runs, how it is evaluated, where it is written
_RESUMABLE_CHANGES = (
    "out",
    "threads",
    "device",
    "dtype",
    "eval",
    "data",
)


def config_changes(saved: dict[str, Any], cfg: TrainConfig, path: Path = Path("config.json")) -> list[str]:
    """Dotted keys whose values differ between a run's saved config and ``cfg`` (models' options compared
    after resolving their defaults, so an explicit default equals an omitted one)."""

    def comparable(d: dict[str, Any]) -> dict[str, Any]:
        d = dict(d)
        options = drop_legacy_keys(d.get("options") or {}, path)
        d["options"] = to_dict(model_config(d["model"], options))
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


# what an evaluation writes beside metrics.json (each is rewritten or removed by every evaluation)
_EVAL_FILES = ("ctr_rows.json", "ranking_users.json", "breakdown.json", "popularity_breakdown.png")


def evaluate_model(model: Recommender, ds: Dataset, cfg: EvalConfig, run: Run) -> dict[str, dict[str, float]]:
    """Evaluate on each split, then write metrics.json (whole: the training record and these splits'
    metrics, nothing of an earlier evaluation), breakdown.json and the popularity plot; the files of an
    earlier evaluation that this one does not produce are removed."""
    from llmrec.eval.evaluator import evaluate_ctr, evaluate_ranking, seeded_rows
    from llmrec.plots import plot_popularity_breakdown

    log.info("evaluating %s on %s (%s)", model.name, ds.root, ", ".join(cfg.splits))
    run.write_metrics({})  # the earlier evaluation's metrics go now: a killed evaluation leaves none behind
    results: dict[str, dict[str, float]] = {}
    breakdowns: dict[str, Any] = {}
    ctr_rows: dict[str, list[int]] = {}
    ranked_users: dict[str, list[int]] = {}
    ranking = cfg.ranking and "ranking" in model.tasks
    cold = bool(ds.cold_items.any())
    if cold and not model.scores_unseen_items:
        log.warning(
            "%s cannot score items it never trained on: its cold cases (held-out targets) are ranked at "
            "chance level (every held-out item the same score, ties counted fairly)",
            model.name,
        )
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
        results[split] = metrics
        log.info("%s %s: %s", model.name, split, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if cold:  # the held-out targets, ranked among held-out items
            results[f"{split}_cold"] = _evaluate_cold(model, ds, split, cfg)
            log.info(
                "%s %s_cold: %s",
                model.name,
                split,
                ", ".join(f"{k}={v:.4f}" for k, v in results[f"{split}_cold"].items()),
            )
    written = set()
    if cfg.ctr_examples is not None and ctr_rows:
        run.write_json("ctr_rows.json", ctr_rows)  # which CTR rows were scored: the subset is reproducible
        written.add("ctr_rows.json")
    if cfg.ranking_users is not None and ranked_users:
        run.write_json("ranking_users.json", ranked_users)  # which users were ranked
        written.add("ranking_users.json")
    if breakdowns:
        run.write_json("breakdown.json", breakdowns)
        written.add("breakdown.json")
    if "test" in breakdowns:
        plot_popularity_breakdown({model.name: breakdowns["test"]}, run.root / "popularity_breakdown.png")
        written.add("popularity_breakdown.png")
    for name in set(_EVAL_FILES) - written:  # an earlier evaluation's, which this one does not replace
        (run.root / name).unlink(missing_ok=True)
    run.write_metrics(results)  # last: metrics.json whole means the evaluation finished
    return results


def _evaluate_cold(model: Recommender, ds: Dataset, split: str, cfg: EvalConfig) -> dict[str, float]:
    """Metrics of a split's cold cases (see :func:`llmrec.eval.evaluator.evaluate_cold_ranking`), of the
    users the warm metrics ranked: ranking when the model ranks, AUC/UAUC of the CTR rows whose target is
    held out when the dataset has both classes there."""
    from llmrec.eval.evaluator import evaluate_cold_ranking, evaluate_ctr, seeded_rows

    rows = seeded_rows(len(ds.split(split).users), cfg.ranking_users)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    if cfg.ranking and "ranking" in model.tasks:
        metrics = evaluate_cold_ranking(model, ds, split, cfg.ks, cfg.full_ranking, cfg.batch_size, rows)  # type: ignore[arg-type]
    if (cfg.ctr or "ranking" not in model.tasks) and (ds.root / "ctr").exists():
        ctr = ds.ctr(split)  # type: ignore[arg-type]
        if ctr.loc[ds.cold_items[ctr["target"].to_numpy()], "label"].nunique() == 2:
            scores, _ = evaluate_ctr(
                model,
                ds,
                split,
                model.pair_batch_size,
                cfg.ctr_examples,
                cold=True,  # type: ignore[arg-type]
            )
            metrics.update(scores)
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics


@dataclass
class _MainRunDir:
    """The run as a process other than the main one sees it: the directory where the main process writes
    and from whose checkpoint every process resumes. It writes nothing there."""

    root: Path


_RESTART_HINT = "use another --out, or --restart to start it over (deletes only what llmrec wrote there)"


def read_run_config(run_dir: str | Path, hint: str = _RESTART_HINT) -> dict[str, Any]:
    """A run directory's config.json as saved (with its ``_llmrec`` provenance); a damaged or foreign
    file is a one-line error naming it."""
    path = Path(run_dir) / "config.json"
    try:
        saved = read_json(path)
    except LlmrecError as e:
        raise LlmrecError(str(e), hint=hint) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), str):
        raise LlmrecError("not the config of an llmrec run (no model named)", file=path, hint=hint)
    return saved


def training_finished(run_dir: str | Path) -> bool:
    """Whether the run's training finished: its model is saved (model.json is written last, atomically)."""
    return (Path(run_dir) / "model" / "model.json").exists()


def check_resume(run_dir: Path, cfg: TrainConfig, ds: Dataset, restart: bool = False) -> bool:
    """A run directory belongs to one model and configuration: training another model or configuration
    into one is refused, naming what differs (``restart`` clears what earlier runs wrote there and starts
    over). Returns whether the run's training already finished: the same command then evaluates the
    saved model (a run killed during its evaluation resumes there) instead of training again.

    A folder llmrec cannot prove is its run (see :func:`llmrec.runs.check_owned`) is refused whatever
    ``restart`` says: llmrec never deletes or overwrites files it did not write."""
    path = run_dir / "config.json"
    owned = check_owned(run_dir)
    if not path.exists():
        ours = sorted(p.name for pattern in RUN_FILES for p in run_dir.glob(pattern)) if owned else []
        if ours and not restart:  # llmrec's run, yet without the config its files belong to
            raise LlmrecError(
                f"holds llmrec's {', '.join(ours[:4])} but no config.json: a run interrupted as it started, "
                "or damaged",
                file=run_dir,
                hint="use another --out, or --restart to delete those and start a run there",
            )
        if restart:
            clear_run(run_dir)
        elif run_dir.is_dir():  # killed while writing its config.json: that temp file
            clear_partial_files(run_dir)
        return False
    if restart:
        clear_run(run_dir)
        log.info("--restart: cleared the earlier run in %s", run_dir)
        return False
    saved = read_run_config(run_dir)
    if saved["model"] != cfg.model:
        raise LlmrecError(
            f"holds a run of another model (changed: model '{saved['model']}' -> '{cfg.model}')",
            file=run_dir,
            hint=_RESTART_HINT,
        )
    try:
        changed = config_changes(saved, cfg, run_dir / "config.json")
    except LlmrecError as e:  # e.g. a model or option this version no longer has
        changed = [f"(unreadable: {e})"]
    identity = ((saved.get("_llmrec") or {}).get("dataset") or {}).get("identity")
    if identity and identity != ds.identity:
        changed.append(
            f"data (another dataset: content sha256 {ds.identity[:12]}, the run's {identity[:12]})"
        )
    if changed:
        raise LlmrecError(
            f"holds a run with another configuration (changed: {', '.join(changed)})",
            file=run_dir,
            hint="use the run's options to resume it, " + _RESTART_HINT,
        )
    clear_partial_files(run_dir)
    return training_finished(run_dir)


def show_prompts(cfg: TrainConfig, user: str | None = None) -> dict[str, Any]:
    """``llmrec prompts``: the prompts model ``cfg.model`` (configured as ``cfg`` would train it) builds for
    one user of ``cfg.data`` (external id; default: the first user), with token counts."""
    ds = Dataset(cfg.data)
    model = build_model(cfg.model, cfg.options, ds.n_users, ds.n_items, cfg.placement())
    if not model.builds_prompts():
        raise ConfigError(
            f"model '{cfg.model}' builds no LLM prompt to show", hint="use an LLM model: illmrec"
        )
    ids = ds.users["user_id"].astype(str).tolist()
    if user is not None and user not in ids:
        raise LlmrecError(f"no user '{user}' in the dataset", file=ds.root / "users.parquet", field="user_id")
    index = ids.index(user) if user is not None else 0
    model.attach(ds)
    return {"user": ids[index], "prompts": model.show_prompts(ds, index, cfg.seed)}


SEED_DIR = "seed-{seed}"  # a multi-seed run's runs: <out>/seed-0, <out>/seed-1, ...


def train_seeds(cfg: TrainConfig, seeds: list[int], restart: bool = False) -> Path:
    """Train ``cfg`` once per seed, each into its own run directory ``<out>/seed-<s>`` (resumed or refused
    as a single run is); returns ``<out>``, which ``llmrec table`` reads as one row, mean +/- std."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct seeds, got {seeds}")
    for seed in seeds:
        if not 0 <= seed <= 2**32 - 1:
            raise ConfigError(f"--seeds: {seed} is not a seed (0 .. 2**32 - 1)")
    root = Path(cfg.out) if cfg.out else Path("runs") / default_run_name(cfg.model, cfg.data)
    for n, seed in enumerate(seeds, 1):
        log.info("seed %d (%d of %d) -> %s", seed, n, len(seeds), root / SEED_DIR.format(seed=seed))
        train(replace(cfg, seed=seed, out=str(root / SEED_DIR.format(seed=seed))), restart=restart)
    return root


def train(cfg: TrainConfig, restart: bool = False) -> Path:
    """Fit, save and evaluate; returns the run directory.

    An existing run directory with the same configuration resumes: from its checkpoints while training
    is unfinished, at the evaluation of the saved model once it finished (evaluation settings may differ:
    metrics.json is rewritten whole). One with another model or configuration is refused unless
    ``restart``. Started as several processes (``accelerate launch``), every process trains in step and
    only the main one writes the run directory (config, log, checkpoints, model, evaluation); the others
    wait for it.
    """
    import torch
    from accelerate.utils import broadcast_object_list

    from llmrec import training

    get_model_class(cfg.model)  # a misspelt model name is named before the dataset is read
    ds = Dataset(cfg.data)
    ds.items, ds.sequences  # noqa: B018 - a damaged table is refused before the run directory is written
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, cfg.options, ds.n_users, ds.n_items, cfg.placement())
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
    with contextlib.ExitStack() as held:
        refused: Exception | None = None
        finished = False
        if accelerator.is_main_process:  # it alone writes the run, holding its lock until the run is done
            try:
                held.enter_context(folder_lock(run_dir, "run directory", create=True))
                finished = check_resume(run_dir, cfg, ds, restart)
            except Exception as e:  # re-raised below, once every process knows
                refused = e
        # the main process decides for every process (a refusal too: the others stop with it, none waits)
        [finished, message] = broadcast_object_list([finished, None if refused is None else str(refused)])
        if refused is not None:
            raise refused
        if message is not None:
            raise LlmrecError(message)
        return _train_into(run_dir, cfg, ds, model, accelerator, finished)


def _train_into(
    run_dir: Path, cfg: TrainConfig, ds: Dataset, model: Recommender, accelerator: Any, finished: bool
) -> Path:
    """:func:`train` once the run directory is checked (and, in the main process, locked)."""
    from llmrec import training

    if not accelerator.is_main_process:
        logging.getLogger("llmrec").setLevel(logging.WARNING)  # the main process logs the run
        if not finished:
            training.fit(model, ds, _MainRunDir(run_dir), log_with=cfg.log_with)
        accelerator.wait_for_everyone()
        return run_dir
    if finished:  # loaded before anything is written: a damaged model is refused with the run untouched
        placed = model.placement  # as this command says (--device ...)
        model = load_model(run_dir / "model", device=placed.device, dtype=placed.dtype, data=ds)
    with Run(run_dir, cfg, dataset=dataset_ref(ds, run_dir)) as run:
        if finished:
            log.info("%s: training finished earlier (model in %s): evaluating it", run_dir, run.model_dir)
        else:
            log.info(
                "training %s on %s (%d users, %d items) on %s",
                cfg.model,
                ds.root,
                ds.n_users,
                ds.n_items,
                model.placement.device,
            )
            t0 = time.perf_counter()
            training.fit(model, ds, run, log_with=cfg.log_with)
            run.record_training({"fit_seconds": time.perf_counter() - t0})
            model.save(run.model_dir, ds)  # its model.json, written last, marks the training finished
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
    saved = read_run_config(run_dir, hint="the run directory is damaged; train it again (--restart)")
    saved.pop("_llmrec", None)
    try:
        return from_dict(TrainConfig, saved)
    except ConfigError as e:
        raise LlmrecError(
            f"saved configuration not valid here ({e})", file=path, hint="train it again with this version"
        ) from None


def run_dataset(run_dir: str | Path, data: str | Path | None = None) -> Dataset:
    """The dataset a run was trained on: ``data`` (a moved copy, checksum verified), else the path the run
    recorded relative to itself, else the absolute one (runs of older versions: their config's ``data``)."""
    run_dir = Path(run_dir)
    hint = "the run directory is damaged; train it again (--restart)"
    saved = read_run_config(run_dir, hint) if (run_dir / "config.json").exists() else {}
    ref = (saved.get("_llmrec") or {}).get("dataset")
    if ref is None and (run_dir / "model" / "model.json").exists():
        ref = read_model_record(run_dir / "model").get("dataset")
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
    quantize: str = "none",
) -> dict[str, Any]:
    """Re-evaluate a saved run's model on ``device`` (any: where it was trained does not matter), with
    ``overrides`` merged into its saved evaluation settings, optionally on a moved copy of its dataset
    (``quantize="int8"``: its LLM backbone quantised for the CPU)."""
    run_dir = Path(run_dir)
    cfg = evaluation_config(run_dir, overrides, data)
    with folder_lock(run_dir, "run directory"):  # one writer: a training or another evaluation waits
        check_owned(run_dir)  # a folder of someone else's is refused before its files are read
        ds = run_dataset(run_dir, data)
        model = load_model(run_dir, device=device, dtype=dtype, data=ds, quantize=quantize)
        with Run(run_dir, cfg, dataset=dataset_ref(ds, run_dir)) as run:
            return evaluate_model(model, ds, cfg.eval, run)


__all__ = ["TrainConfig", "EvalConfig", "train", "evaluate_run", "saved_config", "run_dataset"]
