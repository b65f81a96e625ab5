"""``llmrec tune MODEL``: an Optuna study of a model's options, every trial an ordinary ``llmrec train`` run.

The tune folder (``--out``, default ``runs/tune-<model>-<dataset>``) holds:

- ``study.journal``: the Optuna study (a JournalStorage file). The same command run again continues it to
  ``--trials`` trials; a trial interrupted mid-way is run again with the same options in the same run folder
  (which resumes from its checkpoint). A study started with another model, dataset, space, metric, seed,
  base options or pruning settings is refused, naming what changed;
- ``trials/trial-NNN/``: one run per trial (config.json, metrics.json, log, model): ``llmrec evaluate`` and
  ``llmrec table`` read them as any run;
- ``trials.csv`` / ``trials.md`` (every trial: state, validation and test metric, epochs, seconds, options),
  ``trials.png`` (the metric over trials and the best so far), ``best.json`` and ``best.yaml`` (the best
  trial's training config: ``llmrec train MODEL --config best.yaml --seeds 0 1 2 3 4`` re-runs it), and
  ``tune.json`` (the study's settings and summary).

The objective is the run's validation metric (``--metric``, on the frozen validation candidates, all users).
Sampling is TPE, seeded: each trial's sampler is seeded with ``seed + trials done``, so a resumed study
draws what an uninterrupted one would have drawn. The first ``startup_trials`` trials are drawn at random
(the first is the model's defaults when the space contains them) and are never pruned; later a trial whose
validation metric at an epoch is below the median of the finished trials' at that epoch is pruned (Optuna's
MedianPruner, reported through :func:`llmrec.training.loop.watch_validation`): it stops there, as an early
stop does, and is saved and evaluated like any run. Every trial trains with the same ``seed``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

from llmrec.config import check_ranges, flatten, merge, option, to_dict, unflatten
from llmrec.errors import ConfigError, LlmrecError
from llmrec.tuning.space import SearchSpace, check_space, load_space
from llmrec.utils.io import read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

STUDY_FILE, TRIALS_DIR, STUDY_NAME = "study.journal", "trials", "llmrec-tune"


@dataclasses.dataclass
class TuneConfig:
    """``llmrec tune MODEL``: which model, on which dataset, how many trials, in which folder."""

    model: str = option(
        "",
        "registered model name to tune (llmrec ships spaces for mf, vbpr, bm3, lgmrec, "
        "sasrec, gru4rec, bert4rec)",
    )
    data: str = option("data/ml-100k", "prepared dataset directory")
    trials: int = option(
        20, "trials in all: a rerun of the same command continues the study to this many", ge=1
    )
    space: str | None = option(
        None, "YAML search space extending the shipped one (fixed:, params:; replace: true drops the shipped)"
    )
    out: str | None = option(None, "tune folder (default: runs/tune-<model>-<dataset>); a rerun resumes it")
    seed: int = option(42, "seed of the sampler and of every trial's training", ge=0, le=2**32 - 1)
    metric: str = option(
        "ndcg@10", "validation metric to maximise (a key of the runs' metrics.json, e.g. hit@10)"
    )
    options: dict[str, Any] = option(
        factory=dict,
        help="model options of every trial, over the space's fixed ones, e.g. -o features=[text] -o epochs=100",
    )
    prune: bool = option(True, "prune a trial whose validation metric falls below the median at that epoch")
    startup_trials: int = option(5, "trials drawn at random (the first: the defaults) and never pruned", ge=1)
    warmup_epochs: int = option(10, "no pruning before this epoch", ge=0)
    defaults_first: bool = option(
        True, "the first trial trains the model's defaults (when the space has them)"
    )
    seeds: list[int] | None = option(
        None, "after the trials, train the best configuration once per seed into <out>/best-seeds"
    )
    threads: int | None = option(None, "torch CPU threads (default: torch's choice)", ge=1)

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def folder(self) -> Path:
        """The tune folder."""
        return Path(self.out) if self.out else Path("runs") / f"tune-{self.model}-{Path(self.data).name}"


def _optuna() -> Any:
    from llmrec.extras import require

    [optuna] = require("tune", "llmrec tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # llmrec logs each trial itself
    return optuna


def run_tune(cfg: TuneConfig) -> dict[str, Any]:
    """Run (or continue) the study of ``cfg`` to ``cfg.trials`` trials, write its tables, plot and best
    configuration, and (``cfg.seeds``) train the best one per seed. Returns the summary (tune.json)."""
    from llmrec.data.dataset import Dataset
    from llmrec.models.base import get_model_class
    from llmrec.utils.lock import folder_lock

    if not cfg.model:
        raise ConfigError("name the model to tune: llmrec tune MODEL --data DIR")
    get_model_class(cfg.model)
    space = load_space(cfg.model, cfg.space)
    base = unflatten(cfg.options)
    check_space(space, cfg.model, base, cfg.space or space.sources[0])
    if clash := sorted(set(flatten(base)) & {p.name for p in space.params}):
        raise ConfigError(
            f"-o {clash[0]}: the space searches it; fix it in a --space file (params: {{{clash[0]}: null}})"
        )
    ds = Dataset(cfg.data)
    optuna = _optuna()
    folder = cfg.folder
    with folder_lock(folder, "tune folder", create=True):
        folder.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=_storage(optuna, folder / STUDY_FILE),
            direction="maximize",
            load_if_exists=True,
        )
        settings = _settings(cfg, space, ds.identity)
        _check_same_study(study, settings, folder)
        if not study.trials:
            study.set_user_attr("llmrec", settings)
            defaults = _defaults(cfg.model, space, base) if cfg.defaults_first else None
            if defaults is not None:
                study.enqueue_trial(defaults, user_attrs={"defaults": True})
        if _done(study) < cfg.trials:
            _retry_interrupted(optuna, study)
        _optimize(optuna, study, cfg, space, base, folder)
        summary = write_results(study, cfg, space, folder)
    if cfg.seeds:
        from llmrec.pipeline import train_seeds

        best = _best_train_config(study, cfg, space, base, folder)
        summary["best_seeds"] = str(train_seeds(best, cfg.seeds))
    return summary


def _storage(optuna: Any, path: Path) -> Any:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _settings(cfg: TuneConfig, space: SearchSpace, identity: str) -> dict[str, Any]:
    """What identifies a study: a rerun with other settings is refused (the trial count may grow)."""
    return {
        "model": cfg.model,
        "dataset": identity,
        "space": space.to_dict(),
        "metric": cfg.metric,
        "seed": cfg.seed,
        "options": to_dict(cfg.options),
        "prune": cfg.prune,
        "startup_trials": cfg.startup_trials,
        "warmup_epochs": cfg.warmup_epochs,
        "defaults_first": cfg.defaults_first,
    }


def _check_same_study(study: Any, settings: dict[str, Any], folder: Path) -> None:
    saved = study.user_attrs.get("llmrec")
    if saved is None:
        if study.trials:
            raise LlmrecError("holds a study llmrec did not start", file=folder / STUDY_FILE)
        return
    before, after = flatten(saved), flatten(settings)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        raise LlmrecError(
            f"holds a study with other settings (changed: {', '.join(changed)}); it is not resumed",
            file=folder,
            hint="use another --out for a new study, or the study's settings (tune.json) to continue it",
        )


def _defaults(model: str, space: SearchSpace, base: dict[str, Any]) -> dict[str, Any] | None:
    """The model's default value of every searched option, when each lies in the space (else None)."""
    from llmrec.models.base import model_config

    resolved = flatten(to_dict(model_config(model, merge(unflatten(space.fixed), base))))
    values = {p.name: resolved.get(p.name) for p in space.params}
    outside = [p.name for p in space.params if not p.contains(values[p.name])]
    if outside:
        log.info("the defaults are not a trial: %s outside the space", ", ".join(outside))
        return None
    return values


def _retry_interrupted(optuna: Any, study: Any) -> None:
    """A trial left running or failed by an interruption (not by an error of its own) is failed for good
    and its options queued again, in its run folder: that run resumes from its checkpoint."""
    from optuna.trial import TrialState

    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    for t in study.trials:
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        elif not (t.state == TrialState.FAIL and "error" not in t.user_attrs):
            continue
        if t.number in retried or "run" not in t.user_attrs or len(t.params) != len(t.distributions):
            continue
        log.info("trial %d was interrupted: queued again (its run %s resumes)", t.number, t.user_attrs["run"])
        attrs = {k: v for k, v in t.user_attrs.items() if k in ("run", "defaults")}
        study.enqueue_trial(t.params, user_attrs={**attrs, "retry_of": t.number})


def _options(space: SearchSpace, base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's model options: the space's fixed ones, then -o, then the trial's searched values."""
    return merge(merge(unflatten(space.fixed), base), unflatten(params))


def _done(study: Any) -> int:
    """Trials that count towards ``--trials``: finished, pruned, or failed by an error of their own."""
    from optuna.trial import TrialState

    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and "error" in t.user_attrs)
        for t in study.trials
    )


def _optimize(
    optuna: Any, study: Any, cfg: TuneConfig, space: SearchSpace, base: dict[str, Any], folder: Path
) -> None:
    from tqdm.auto import tqdm

    done = _done(study)
    if done >= cfg.trials:
        log.info("%s: %d trials done already (--trials %d)", folder, done, cfg.trials)
        return
    bar = tqdm(total=cfg.trials, initial=done, desc=f"tune {cfg.model}", unit="trial")
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs)
        if cfg.prune
        else optuna.pruners.NopPruner()
    )
    try:
        while _done(study) < cfg.trials:
            # one sampler per trial, seeded by the count of trials done: a resumed study draws the same
            study.sampler = optuna.samplers.TPESampler(
                seed=cfg.seed + _done(study), n_startup_trials=cfg.startup_trials
            )
            study.pruner = pruner
            study.optimize(
                lambda trial: _objective(optuna, trial, cfg, space, base, folder),
                n_trials=1,
                catch=(LlmrecError,),
            )
            bar.update(1)
            if _complete(study):
                bar.set_postfix({f"best valid {cfg.metric}": f"{study.best_value:.4f}"})
    finally:
        bar.close()


def _complete(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state == TrialState.COMPLETE]


def _trial_config(cfg: TuneConfig, options: dict[str, Any], out: Path, seed: int | None = None) -> Any:
    from llmrec.pipeline import TrainConfig

    return TrainConfig(
        model=cfg.model,
        data=cfg.data,
        out=str(out),
        seed=cfg.seed if seed is None else seed,
        threads=cfg.threads,
        options=options,
    )


def _objective(
    optuna: Any, trial: Any, cfg: TuneConfig, space: SearchSpace, base: dict[str, Any], folder: Path
) -> float:
    """Train one trial as an ordinary run and return its validation metric (pruned: raise TrialPruned)."""
    from llmrec.pipeline import train
    from llmrec.training.loop import watch_validation

    params = {p.name: p.suggest(trial) for p in space.params}
    name = trial.user_attrs.get("run") or f"trial-{trial.number:03d}"
    trial.set_user_attr("run", name)
    run_dir = folder / TRIALS_DIR / name
    options = _options(space, base, params)
    pruned: list[int] = []

    def watcher(stage: str, epoch: int, record: dict[str, float]) -> bool:
        value = record.get(f"valid_{cfg.metric}")
        if value is None or not math.isfinite(value):
            return False
        trial.report(value, epoch)
        if trial.should_prune():
            pruned.append(epoch)
            return True
        return False

    log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in params.items()))
    t0 = time.perf_counter()
    try:
        with watch_validation(watcher):
            train(_trial_config(cfg, options, run_dir))
    except LlmrecError as e:  # e.g. a diverging loss: this trial failed, the study goes on
        trial.set_user_attr("error", str(e))
        log.warning("trial %d failed: %s", trial.number, e)
        raise
    metrics = read_json(run_dir / "metrics.json")
    valid = metrics.get("valid", {})
    if cfg.metric not in valid:
        raise ConfigError(
            f"--metric {cfg.metric}: the runs' validation has no such metric (they have: {', '.join(valid)})"
        )
    trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
    trial.set_user_attr("valid", valid[cfg.metric])
    trial.set_user_attr("test", metrics.get("test", {}).get(cfg.metric))
    trial.set_user_attr("epochs", metrics.get("train", {}).get("epochs_run"))
    if pruned:
        log.info(
            "trial %d pruned at epoch %d (valid %s %.4f)",
            trial.number,
            pruned[0],
            cfg.metric,
            valid[cfg.metric],
        )
        raise optuna.TrialPruned(f"pruned at epoch {pruned[0]}")
    return float(valid[cfg.metric])


def _best_trial(study: Any, folder: Path) -> Any:
    complete = _complete(study)
    if not complete:
        raise LlmrecError("no trial finished unpruned: no best configuration", file=folder / STUDY_FILE)
    return max(complete, key=lambda t: (t.value, -t.number))


def _best_train_config(
    study: Any, cfg: TuneConfig, space: SearchSpace, base: dict[str, Any], folder: Path
) -> Any:
    best = _best_trial(study, folder)
    options = _options(space, base, best.params)
    return _trial_config(cfg, options, folder / "best-seeds")


def write_results(study: Any, cfg: TuneConfig, space: SearchSpace, folder: Path) -> dict[str, Any]:
    """trials.csv, trials.md, trials.png, best.json, best.yaml and tune.json of the study in ``folder``."""
    import pandas as pd
    import yaml

    from llmrec.utils.markdown import markdown_table

    names = [p.name for p in space.params]
    rows = []
    for t in study.trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower() + (" (defaults)" if t.user_attrs.get("defaults") else ""),
                f"valid_{cfg.metric}": t.user_attrs.get("valid"),
                f"test_{cfg.metric}": t.user_attrs.get("test"),
                "epochs": t.user_attrs.get("epochs"),
                "seconds": t.user_attrs.get("seconds"),
                **{n: t.params.get(n) for n in names},
                "run": f"{TRIALS_DIR}/{t.user_attrs.get('run', '')}",
            }
        )
    table = pd.DataFrame(rows)
    write_text_atomic(folder / "trials.csv", table.to_csv(index=False))

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = markdown_table(
        list(table.columns), "rlrrrr" + "r" * len(names) + "l", ([cell(v) for v in r.values()] for r in rows)
    )
    write_text_atomic(folder / "trials.md", "\n".join(lines) + "\n")
    plot_trials(rows, cfg.metric, folder / "trials.png", title=f"llmrec tune {cfg.model}")
    summary: dict[str, Any] = {
        "settings": study.user_attrs.get("llmrec"),
        "trials": len(study.trials),
        "states": table["state"].str.split(" ").str[0].value_counts().to_dict() if rows else {},
        "seconds": round(float(sum(t.user_attrs.get("seconds") or 0 for t in study.trials)), 1),
        "sources": list(space.sources),
    }
    if _complete(study):
        best = _best_trial(study, folder)
        base = unflatten(cfg.options)
        options = _options(space, base, best.params)
        record = {
            "trial": best.number,
            "run": f"{TRIALS_DIR}/{best.user_attrs['run']}",
            f"valid_{cfg.metric}": best.value,
            f"test_{cfg.metric}": best.user_attrs.get("test"),
            "params": best.params,
        }
        write_json_atomic(folder / "best.json", record)
        config = {
            "model": cfg.model,
            "data": str(Path(cfg.data).resolve()),
            "seed": cfg.seed,
            "options": options,
        }
        head = (
            f"# llmrec tune {cfg.model}: trial {best.number} of {len(study.trials)}, valid {cfg.metric} "
            f"{best.value:.4f}.\n# Re-run it: llmrec train {cfg.model} --config best.yaml --seeds 0 1 2 3 4 "
            "--out <folder>\n"
        )
        write_text_atomic(folder / "best.yaml", head + yaml.safe_dump(config, sort_keys=False))
        summary["best"] = record
    write_json_atomic(folder / "tune.json", summary)
    return summary


def plot_trials(rows: list[dict[str, Any]], metric: str, path: Path, title: str = "") -> None:
    """The validation metric of every trial (pruned ones hollow) and the best so far, over trials."""
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    key = f"valid_{metric}"
    for state, style in (("complete", "o"), ("pruned", "x")):
        xs = [r["trial"] for r in rows if r["state"].startswith(state) and r[key] is not None]
        ys = [r[key] for r in rows if r["state"].startswith(state) and r[key] is not None]
        ax.plot(xs, ys, style, label=state, linestyle="none")
    best, xs, ys = -math.inf, [], []
    for r in rows:
        if r["state"].startswith("complete") and r[key] is not None:
            best = max(best, r[key])
        if best > -math.inf:
            xs.append(r["trial"])
            ys.append(best)
    ax.step(xs, ys, where="post", label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers
    ax.set_xlabel("trial")
    ax.set_ylabel(f"valid {metric}")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def format_tune(result: dict[str, Any]) -> str:
    """What ``llmrec tune`` prints: the trial counts, the best trial and how to re-run it."""
    states = ", ".join(f"{n} {s}" for s, n in sorted(result.get("states", {}).items()))
    lines = [f"{result['trials']} trials ({states}), {result['seconds']:.0f} s of training"]
    if best := result.get("best"):
        metric = next(k for k in best if k.startswith("valid_"))
        lines.append(
            f"best: trial {best['trial']} ({best['run']}), {metric} {best[metric]:.4f}, "
            + ", ".join(f"{k}={v}" for k, v in best["params"].items())
        )
    if "best_seeds" in result:
        from llmrec.report import TableConfig, make_table

        lines.append(make_table(TableConfig(runs=[result["best_seeds"]])))
    return "\n".join(lines)


__all__ = ["TuneConfig", "format_tune", "plot_trials", "run_tune", "write_results"]
