"""HistLLM's experiments as commands: ``llmrec experiments ctr-efficiency`` (Fig. 5) and
``llmrec experiments history-sweep`` (Fig. 4).

``ctr-efficiency`` compares HistLLM with UHEM against the same model with the KE descriptions (and image
tokens) written inline (w/o UHEM), per dataset and history length, in one process (same backbone, batch,
threads, rows). Two views (``measure``):

- ``trained`` (default), what the paper's Fig. 5 measures: the total wall time of step 2 (LoRA frozen;
  the mappers and, with UHEM, the history encoder train) for a fixed budget, ``train_steps`` steps of
  ``batch_size`` examples on the same seeded training rows for both variants, then the time the TRAINED
  models take to score the same test rows (``test_rows``; 0 = the whole test split, as the paper). The
  two variants alternate step by step and chunk by chunk (the order flips every time), so a load on the
  machine slows both alike. Each variant gets one untimed warm-up step (after which its weights, optimiser
  and schedule are set back to the stage's start) and one untimed scoring call first. Step 1 (LoRA) is
  not timed, as in the paper; its LoRA is as initialised unless ``--options step1_from=RUN`` loads a
  trained one (both variants share it).
- ``throughput``: mean prompt tokens, inference time per 100 examples and step-2 training time per 100
  examples of UNTRAINED models (speed does not depend on the weights' values) on the first ``examples``
  test rows with at least that many history items, items' texts uncut (``max_text_tokens`` None).

A training step, in both views, is the one ``llmrec train`` takes
(:class:`~llmrec.training.loop.TrainingStep`: the batch moved to the device, the loss under the model's
``mixed_precision`` autocast, backward, ``max_grad_norm`` clipping, the stage's optimiser, AdamW for
HistLLM, and its ``lr_schedule``), on a model prepared and set up for step 2 by the trainer's own code
(:func:`~llmrec.training.loop.prepare_training`, :func:`~llmrec.training.loop.training_stage`); the
histllm options in ``--options`` configure it as they would configure training.

w/o UHEM is the paper's setting only with descriptions: a missing texts file (``description_texts``,
default ``texts/from_title.parquet``) is an error naming it and the command that writes it, never a
fallback to titles (``--options description_texts=null`` uses the items' own descriptions). On a dataset without
an image feature the image tokens are fed a zero vector, as in ``llmrec experiments efficiency``: a token
costs the same whatever it holds.

``history-sweep`` trains and evaluates each model at each number of history items (TALLRec vs HistLLM in
the paper) with the same options, resuming finished points, and writes AUC/UAUC per length.

``ctr-efficiency`` also times ranking (``--ranking``, on by default): top-10 over the whole catalog and
re-ranking ``rerank_candidates`` items per user, with each user's prompt up to the target computed once
(the shared prefix, :meth:`HistLLM.rank_logits`) vs one prompt per (user, candidate) pair, on a trained
run (``--run``) or an untrained HistLLM.

Their tables and plots: :mod:`llmrec.experiments.ctr_report`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import numpy as np

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from llmrec.models.neural import Stage
    from llmrec.training.loop import TrainingStep

from llmrec.assets import DEFAULT_LLM
from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.experiments.ctr_report import (
    VARIANTS,
    format_ctr_efficiency,
    format_history_sweep,
    plot_ctr_efficiency,
    plot_history_sweep,
    plot_trained_efficiency,
)
from llmrec.placement import device_option
from llmrec.utils.io import read_json, write_json_atomic, write_text_atomic
from llmrec.utils.timing import clock

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- Fig. 5: with vs without UHEM
@dataclass
class CtrEfficiencyConfig:
    """What to time."""

    data: list[str] = option(
        factory=lambda: ["data/ml-100k"],
        help="prepared dataset directories (with CTR examples), each measured at every length",
    )
    llm: str = option(DEFAULT_LLM, "causal LM (alias, folder, hub id, .gguf)")
    lengths: list[int] = option(
        factory=lambda: [5, 10],
        help="history lengths (paper: 5 movie, 10 netflix); [] = ranking section only",
    )
    measure: Literal["trained", "throughput", "both"] = option(
        "trained",
        "trained: step-2 training time of a fixed budget and test inference time of the trained models "
        "(the paper's Fig. 5); throughput: time per 100 examples of untrained models; both",
    )
    train_steps: int = option(
        4,
        "step-2 optimiser steps per variant (trained: on train_steps x batch_size seeded training rows, the "
        "same for both; throughput: timed steps per point; 0 = inference only)",
        ge=0,
    )
    batch_size: int = option(8, "prompts per forward (training and inference alike)", ge=1)
    test_rows: int = option(
        256, "trained: test rows both trained models score (a seeded subset; 0 = the whole split)", ge=0
    )
    seed: int = option(0, "trained: seed of the training rows, the test rows and the initial weights")
    examples: int = option(
        64, "throughput: CTR examples timed per point (time is reported per 100 examples)", ge=1
    )
    options: dict[str, Any] = option(factory=dict, help="extra histllm options for both variants")
    threads: int | None = option(None, "torch CPU threads", ge=1)
    device: str = device_option()
    ranking: bool = option(
        True, "also time ranking with the shared prompt prefix vs one prompt per (user, candidate)"
    )
    run: str | None = option(
        None, "ranking: a trained HistLLM-family run to time (default: an untrained histllm on --data)"
    )
    rank_users: int = option(
        1, "ranking: users ranked over the whole catalog (top-10), each path (0 = re-ranking only)", ge=0
    )
    rerank_users: int = option(4, "ranking: users whose candidates are re-ranked, each path", ge=1)
    rerank_candidates: int = option(100, "ranking: candidates re-ranked per user", ge=1)
    out: str = option("runs/ctr-efficiency", "output folder: ctr_efficiency.json/.md/.png")

    def __post_init__(self) -> None:
        if min(self.lengths, default=1) < 1 or self.examples < 1 or self.train_steps < 0:
            raise ConfigError("lengths must be positive, examples >= 1, train_steps >= 0")
        if not self.lengths and not self.ranking:
            raise ConfigError("nothing to time: give --lengths or --ranking")
        if not self.data:
            raise ConfigError("give at least one dataset: --data DIR [DIR ...]")
        if self.options.get("ke") is False or self.options.get("history") is not None:
            raise ConfigError(
                "ctr-efficiency compares HistLLM with KE descriptions, with UHEM and inline; "
                "drop ke/history from --options"
            )


def check_descriptions(ds: Dataset, options: dict[str, Any]) -> None:
    """Refuse a w/o-UHEM run without its descriptions: inline titles are not the paper's setting."""
    name = options.get("description_texts", "from_title")
    if name is None:
        return  # the items' own descriptions: HistLLM refuses a dataset that has none
    from llmrec.llm.describe import texts_paths

    path, _ = texts_paths(ds.root, name)
    if not path.exists():
        raise LlmrecError(
            "w/o UHEM writes the items' KE descriptions inline and they are missing",
            file=path,
            hint=f"generate them: llmrec describe --data {ds.root} --mode from_title"
            + ("" if name == "from_title" else f" --name {name}")
            + " (or --options description_texts=null for the items' own descriptions)",
        )


def _variant(
    ds: Dataset, cfg: CtrEfficiencyConfig, history: str, length: int, image_feature: str, uncut: bool = True
) -> Any:
    """HistLLM with KE descriptions and CF tokens (when exported), its history as UHEM or inline, built
    but not yet attached to ``ds`` (:func:`~llmrec.training.loop.prepare_training` attaches what it trains,
    ``attach`` what only scores); ``uncut``: items' texts kept whole (the throughput view) rather than cut to
    ``max_text_tokens``."""
    from llmrec.models.base import build_model, placement_for

    check_descriptions(ds, cfg.options)
    options = {
        "backbone": {"llm": cfg.llm, "lora": True},
        "cf": "tokens" if (ds.features_dir / "mf_user.json").exists() else "none",
        "image": True,
        "image_feature": image_feature,
        "ke": True,
        "history_len": length,
        **({"max_text_tokens": None} if uncut else {}),  # throughput: time the whole description
        "score_batch_size": cfg.batch_size,
        "batch_size": cfg.batch_size,
        **cfg.options,
        "history": history,
    }
    return build_model("histllm", options, ds.n_users, ds.n_items, placement_for("histllm", cfg.device))


def run_ctr_efficiency(cfg: CtrEfficiencyConfig) -> dict[str, Any]:
    import torch

    from llmrec.experiments.efficiency import zero_image_feature

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    datasets = [Dataset(d) for d in cfg.data]
    if cfg.lengths:
        for ds in datasets:  # before any timing: a missing file fails at once, not after the first dataset
            check_descriptions(ds, cfg.options)
    result: dict[str, Any] = {
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "zero_image_stand_in": {},
        "trained": [],
        "points": [],
    }
    image_features = {}
    for ds in datasets:
        image_features[ds.root], result["zero_image_stand_in"][_name(ds)] = zero_image_feature(
            ds, cfg.options.get("image_feature", "image")
        )
    for ds in datasets:
        for length in cfg.lengths:
            if cfg.measure in ("trained", "both"):
                result["trained"].append(measure_trained(cfg, ds, length, image_features[ds.root]))
            if cfg.measure in ("throughput", "both"):
                result["points"] += measure_throughput(cfg, ds, length, image_features[ds.root])
    result["ratios"] = _uhem_ratios(result["points"])
    if cfg.ranking:
        result["ranking"] = time_ranking(cfg, datasets[0], image_features[datasets[0].root])
    out = Path(cfg.out)
    write_json_atomic(out / "ctr_efficiency.json", result)
    write_text_atomic(out / "ctr_efficiency.md", format_ctr_efficiency(result) + "\n")
    if result["trained"]:
        plot_trained_efficiency(result, out / "ctr_efficiency.png")
    if result["points"]:
        plot_ctr_efficiency(result, out / "ctr_throughput.png")
    return result


def _name(ds: Dataset) -> str:
    return Path(ds.root).name


def _rows_digest(users: list[np.ndarray], targets: list[np.ndarray]) -> str:
    """sha256 of the (user, target) pairs a variant consumed, in order: equal digests = the same rows."""
    h = hashlib.sha256()
    for u, t in zip(users, targets):
        h.update(np.asarray(u, dtype=np.int64).tobytes() + np.asarray(t, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


class _Columns(NamedTuple):
    """A CTR split's rows as arrays (histories as int64 item arrays)."""

    users: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, df: Any) -> _Columns:
        hist = [np.asarray(h, dtype=np.int64) for h in df["history"]]
        return cls(
            df["user_idx"].to_numpy(np.int64), hist, df["target"].to_numpy(np.int64), df["label"].to_numpy()
        )

    def batch(self, model: Any, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The labelled prompts of ``rows`` on the CPU, as a stage's batches are (the trainer's step moves
        them to the device)."""
        import torch

        batch = model.prompts(self.users[rows], [self.histories[i] for i in rows], self.targets[rows])
        batch["labels"] = torch.from_numpy(self.labels[rows].astype(np.float32))
        return batch


@dataclass
class _Trained:
    """One variant of the trained view: its model, the trainer's step of its step-2 stage (its optimiser and
    schedule), and what it did (seconds, losses, the rows it consumed)."""

    model: Any
    step: TrainingStep
    train_s: float = 0.0
    test_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    train_users: list[np.ndarray] = field(default_factory=list)
    train_targets: list[np.ndarray] = field(default_factory=list)
    test_users: list[np.ndarray] = field(default_factory=list)
    test_targets: list[np.ndarray] = field(default_factory=list)


def _trained_variant(
    cfg: CtrEfficiencyConfig,
    ds: Dataset,
    history: str,
    length: int,
    image_feature: str,
    stages: contextlib.ExitStack,
) -> _Trained:
    """A variant ready for step 2, as ``llmrec train`` readies it: built from the seed and prepared by the
    trainer, step 1 loaded when ``step1_from`` names a run (the same LoRA for both variants), then step 2
    entered (held in ``stages``: only its parameters trainable, its context held) and the trainer's step
    built for it (its optimiser and schedule)."""
    import torch

    from llmrec.training.loop import TrainingStep, prepare_training, training_stage

    torch.manual_seed(cfg.seed)
    model = _variant(ds, cfg, history, length, image_feature, uncut=False)
    # every call gives a fresh accelerate state: both variants have the same device and mixed precision
    accelerator, device, (step1, *rest) = prepare_training(model, ds)
    if step1.load is not None:  # -o step1_from=RUN: a trained LoRA, the same for both variants
        step1.load()
    stage = rest[-1] if rest else step1
    stages.enter_context(training_stage(model, stage))
    return _Trained(model, TrainingStep(model, ds, stage, accelerator, device))


def _warm_up(step: TrainingStep, batch: dict[str, torch.Tensor]) -> None:
    """One untimed step of ``step`` on ``batch``, after which the weights, the optimiser, the schedule and
    the fp16 loss scale are set back to where they were (as a run resumed at the stage's start has them):
    the timed steps start from the same state with or without the warm-up."""
    model, opt, scheduler, scaler = step.model, step.opt, step.scheduler, step.accelerator.scaler
    saved = (
        model.checkpoint_state(),
        opt.state_dict(),
        scheduler.state_dict() if scheduler is not None else None,
        scaler.state_dict() if scaler is not None else None,
    )
    step(batch)
    model.load_checkpoint_state(saved[0])
    opt.load_state_dict(saved[1])
    if scheduler is not None:
        scheduler.load_state_dict(saved[2])
    if scaler is not None:
        scaler.load_state_dict(saved[3])


def measure_trained(cfg: CtrEfficiencyConfig, ds: Dataset, length: int, image_feature: str) -> dict[str, Any]:
    """Fig. 5 at one history length: step-2 training seconds of ``train_steps`` steps and test inference
    seconds of the trained models, both variants alternating on the same rows."""
    from llmrec.eval.evaluator import seeded_rows

    train, test = ds.ctr("train"), ds.ctr("test")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(train))
    order = np.resize(
        order, cfg.train_steps * cfg.batch_size
    )  # a budget beyond the split goes round it again
    test = test.iloc[seeded_rows(len(test), cfg.test_rows or None, cfg.seed)].reset_index(drop=True)
    tr, te = _Columns.of(train), _Columns.of(test)
    with contextlib.ExitStack() as stages:  # both variants in step 2 while they train
        variants = {
            history: _trained_variant(cfg, ds, history, length, image_feature, stages) for history in VARIANTS
        }
        for v in variants.values():  # warm-up, untimed: one step (then set back), one scoring call
            if cfg.train_steps:
                v.model.train()
                _warm_up(v.step, tr.batch(v.model, order[: cfg.batch_size]))
            v.model.score_pairs(te.users[:2], te.histories[:2], te.targets[:2])
        _train_alternately(cfg, variants, tr, order, f"{_name(ds)} @{length}")
    scores = _score_alternately(cfg, variants, te)
    point = _trained_point(cfg, variants, te, scores)
    point = {
        "data": _name(ds),
        "history_items": length,
        "train_steps": cfg.train_steps,
        "batch_size": cfg.batch_size,
        "test_rows": len(test),
        "mean_history_items": {
            "train": float(np.mean([min(len(tr.histories[i]), length) for i in order]))
            if len(order)
            else 0.0,
            "test": float(np.mean([min(len(h), length) for h in te.histories])) if len(test) else 0.0,
        },
        **point,
    }
    log.info("%s @%d: %s", point["data"], length, point)
    return point


def _train_alternately(
    cfg: CtrEfficiencyConfig, variants: dict[str, _Trained], tr: _Columns, order: np.ndarray, where: str
) -> None:
    """``train_steps`` trainer steps of each variant on the same rows, the variants alternating step by step
    (the order flips every step); building the prompts is part of a timed step, as in training."""
    for i in range(cfg.train_steps):
        r = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        for history in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
            v = variants[history]
            v.model.train()
            t0 = clock(v.model.device)
            batch = tr.batch(v.model, r)
            loss = v.step(batch, i)
            v.train_s += clock(v.model.device) - t0
            v.losses.append(loss.item())
            v.train_users.append(batch["users"].numpy())
            v.train_targets.append(batch["targets"].numpy())
        log.info(
            "%s: step-2 step %d/%d done (%s)",
            where,
            i + 1,
            cfg.train_steps,
            ", ".join(f"{h} {variants[h].train_s:.1f} s" for h in VARIANTS),
        )


def _score_alternately(
    cfg: CtrEfficiencyConfig, variants: dict[str, _Trained], te: _Columns
) -> dict[str, np.ndarray]:
    """Each trained variant's logits of the test rows, the variants alternating chunk by chunk."""
    scores = {h: np.empty(len(te.users)) for h in VARIANTS}
    chunk = cfg.batch_size
    for k, s in enumerate(range(0, len(te.users), chunk)):
        sl = slice(s, s + chunk)
        for history in VARIANTS if k % 2 == 0 else VARIANTS[::-1]:
            v = variants[history]
            v.model.eval()
            t0 = clock(v.model.device)
            scores[history][sl] = v.model.score_pairs(te.users[sl], te.histories[sl], te.targets[sl])
            v.test_s += clock(v.model.device) - t0
            v.test_users.append(te.users[sl])
            v.test_targets.append(te.targets[sl])
    return scores


def _trained_point(
    cfg: CtrEfficiencyConfig, variants: dict[str, _Trained], te: _Columns, scores: dict[str, np.ndarray]
) -> dict[str, Any]:
    """What each variant did (seconds, rows, losses, prompt tokens, AUC) and the time UHEM saved."""
    import torch

    from llmrec.eval.metrics import auc, uauc

    out: dict[str, Any] = {"variants": {}}
    both_labels = len(np.unique(te.labels)) == 2
    chunk, n = cfg.batch_size, len(te.users)
    for history in VARIANTS:
        v = variants[history]
        tokens = [
            v.model.prompts(te.users[i : i + chunk], te.histories[i : i + chunk], te.targets[i : i + chunk])[
                "mask"
            ].sum(1)
            for i in range(0, n, chunk)
        ]
        out["variants"][history] = {
            "train_seconds": v.train_s,
            "test_seconds": v.test_s,
            "train_steps_run": len(v.train_users),
            "train_losses": v.losses,
            "train_examples": int(sum(map(len, v.train_users))),
            "train_rows_sha256": _rows_digest(v.train_users, v.train_targets),
            "test_rows_scored": int(sum(map(len, v.test_users))),
            "test_rows_sha256": _rows_digest(v.test_users, v.test_targets),
            "test_prompt_tokens": float(torch.cat(tokens).float().mean()) if tokens else 0.0,
            "trainable_parameters": int(sum(p.numel() for p in v.model.parameters() if p.requires_grad)),
            # trained this little, AUC only shows that the models score: not a comparison of quality
            "test_auc": auc(te.labels, scores[history]) if both_labels else None,
            "test_uauc": uauc(te.users, te.labels, scores[history]) if both_labels else None,
        }
    w, wo = out["variants"]["uhem"], out["variants"]["inline"]
    out["train_time_saved"] = 1 - w["train_seconds"] / wo["train_seconds"] if wo["train_seconds"] else None
    out["test_time_saved"] = 1 - w["test_seconds"] / wo["test_seconds"] if wo["test_seconds"] else None
    return out


def measure_throughput(
    cfg: CtrEfficiencyConfig, ds: Dataset, length: int, image_feature: str
) -> list[dict[str, Any]]:
    """Per-100-example times of untrained models at one history length, one point per variant."""
    import torch

    df = ds.ctr("test")
    rows = df[df["history"].map(len) >= length].head(cfg.examples)
    if rows.empty:
        log.warning("no CTR test example of %s has %d history items: skipped", _name(ds), length)
        return []
    users, targets = rows["user_idx"].to_numpy(np.int64), rows["target"].to_numpy(np.int64)
    histories = [np.asarray(h)[-length:] for h in rows["history"]]
    labels = torch.from_numpy(rows["label"].to_numpy(np.float32))
    from llmrec.training.loop import prepare_training

    points = []
    for history in VARIANTS:
        model = _variant(ds, cfg, history, length, image_feature)
        accelerator, device, stages = prepare_training(model, ds)  # attached and placed as llmrec train does
        point = {"data": _name(ds), "history_items": length, "uhem": history == "uhem", "examples": len(rows)}
        batch = model.prompts(users, histories, targets)
        point["prompt_tokens"] = float(batch["mask"].sum(1).float().mean())
        model.score_pairs(users[:2], histories[:2], targets[:2])  # warm-up
        t0 = clock(model.device)
        model.score_pairs(users, histories, targets)
        point["inference_s_per_100"] = (clock(model.device) - t0) * 100 / len(rows)
        if cfg.train_steps:
            step2 = stages[-1]  # LoRA frozen: the mappers and the history encoder train
            point["train_s_per_100"] = _time_step2(
                model, ds, step2, accelerator, device, users, histories, targets, labels, cfg
            )
        points.append(point)
        log.info("%s", point)
        del model
    return points


def time_ranking(cfg: CtrEfficiencyConfig, ds: Dataset, image_feature: str) -> dict[str, Any]:
    """Seconds per user to rank the whole catalog (top-10) and to re-rank ``rerank_candidates`` items,
    with the shared prompt prefix and with one prompt per (user, candidate) pair, alternately in this
    process on the same users (test CTR histories); and how far apart the two paths' logits are."""
    from llmrec.models.base import load_model
    from llmrec.models.llm.base import FeatureBackedLLM

    if cfg.run:
        loaded = load_model(cfg.run, device=cfg.device)
        if not loaded.shared_prefix_ranking:
            raise ConfigError(
                f"--run {cfg.run} is a {loaded.name} run: ranking is timed for HistLLM-family runs "
                "(histllm, tallrec, collm, binllm...)"
            )
        model = cast(FeatureBackedLLM, loaded)  # shared_prefix_ranking: a HistLLM-family model
        ds = model.trained_on  # the dataset load_model attached it to
    else:
        model = _variant(ds, cfg, "uhem", 5, image_feature)
        model.attach(ds)
    model.eval()
    df = ds.ctr("test").drop_duplicates("user_idx")
    df = df[df["history"].map(len) > 0]
    n = max(cfg.rank_users, cfg.rerank_users)
    users = df["user_idx"].to_numpy(np.int64)[:n]
    histories = [np.asarray(h) for h in df["history"].head(n)]
    rng = np.random.default_rng(0)
    k = min(cfg.rerank_candidates, model.n_items)
    rerank = np.stack([rng.choice(model.n_items, size=k, replace=False) for _ in range(cfg.rerank_users)])
    everything = np.tile(np.arange(model.n_items), (cfg.rank_users, 1))
    for shared in (True, False):  # warm-up
        model.score(users[:1], histories[:1], rerank[:1, :8], shared_prefix=shared)
    result: dict[str, Any] = {
        "run": cfg.run,
        "model": model.name,
        "items": int(model.n_items),
        "rank_batch_size": model.cfg.rank_batch_size,
        "score_batch_size": model.cfg.score_batch_size,
    }
    tasks = {"top10_catalog": (cfg.rank_users, everything), "rerank": (cfg.rerank_users, rerank)}
    for task, (m, candidates) in tasks.items():
        if not m:
            continue
        spent, scores = {}, {}
        for shared in (False, True):
            t0 = clock(model.device)
            scores[shared] = model.score(users[:m], histories[:m], candidates, shared_prefix=shared)
            spent[shared] = (clock(model.device) - t0) / m
        top = {s: np.argsort(-scores[s], axis=1, kind="stable")[:, :10] for s in scores}
        result[task] = {
            "users": int(m),
            "candidates": int(candidates.shape[1]),
            "s_per_user_pairwise": spent[False],
            "s_per_user_shared": spent[True],
            "speedup": spent[False] / spent[True],
            "max_abs_logit_diff": float(np.abs(scores[True] - scores[False]).max()),
            "same_top10": bool((top[True] == top[False]).all()),
        }
        log.info("ranking %s: %s", task, result[task])
    return result


def _time_step2(
    model: Any,
    ds: Dataset,
    stage: Stage,
    accelerator: Accelerator,
    device: torch.device,
    users: np.ndarray,
    histories: list,
    targets: np.ndarray,
    labels: torch.Tensor,
    cfg: Any,
) -> float:
    """Seconds per 100 examples of the trainer's step-2 step (LoRA frozen; mappers and encoder learn) on
    prompts built beforehand (the throughput view times the step alone)."""
    from llmrec.training.loop import TrainingStep, training_stage

    model.train()
    b, n, spent = cfg.batch_size, 0, 0.0
    with training_stage(model, stage):  # its parameters trainable, its context held, as in training
        step = TrainingStep(model, ds, stage, accelerator, device)
        for i in range(cfg.train_steps + 1):  # the first step is a warm-up
            s = (i * b) % max(len(targets) - b + 1, 1)
            batch = model.prompts(users[s : s + b], histories[s : s + b], targets[s : s + b])
            batch["labels"] = labels[s : s + b]
            t0 = clock(model.device)
            step(batch, i)
            if i:
                spent += clock(model.device) - t0
                n += len(batch["labels"])
    model.eval()
    return spent * 100 / max(n, 1)


def _uhem_ratios(points: list[dict[str, Any]]) -> dict[str, float]:
    """Throughput view: time saved by UHEM (1 - with/without) per dataset, length and measure."""
    out = {}
    by = {(p.get("data", ""), p["history_items"], p["uhem"]): p for p in points}
    several = len({d for d, _, _ in by}) > 1
    for (data, length, uhem), p in by.items():
        q = by.get((data, length, False))
        if not uhem or q is None:
            continue
        for key in ("inference_s_per_100", "train_s_per_100", "prompt_tokens"):
            if key in p and key in q:
                out[f"{key} saved @{length}" + (f" ({data})" if several else "")] = 1 - p[key] / q[key]
    return out


# --------------------------------------------------------------------------- Fig. 4: number of history items
@dataclass
class HistorySweepConfig:
    """Which models, which lengths, which training budget."""

    data: str = option("data/ml-100k", "prepared dataset directory (with CTR examples)")
    models: list[str] = option(factory=lambda: ["tallrec", "histllm"], help="registered CTR models")
    lengths: list[int] = option(factory=lambda: list(range(1, 11)), help="numbers of history items")
    options: dict[str, Any] = option(
        factory=dict, help="model options for every point, e.g. --options train_examples=256"
    )
    model_options: dict[str, Any] = option(
        factory=dict, help="per-model options, e.g. --model-options 'histllm={step1_from: runs/x}'"
    )
    step1_from_model: str | None = option(
        "tallrec",
        "two-step models reuse this model's run at the same length as their step 1 (None = train it)",
    )
    ctr_examples: int | None = option(600, "test CTR rows per point (seeded: the same rows everywhere)", ge=1)
    seed: int = option(42, "training seed", ge=0, lt=2**32)
    seeds: list[int] | None = option(
        None,
        "train every point once per seed into <point>/seed-<s> (as 'llmrec train --seeds'); the table and "
        "the plot give mean +/- std over the seeds (replaces --seed)",
    )
    threads: int | None = option(None, "torch CPU threads", ge=1)
    out: str = option("runs/history-sweep", "one run folder per point + history_sweep.json/.md/.png")

    def __post_init__(self) -> None:
        if not self.lengths or min(self.lengths) < 1 or not self.models:
            raise ConfigError("lengths must be positive and at least one model given")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(f"seeds must be distinct seeds, got {self.seeds}")


def run_history_sweep(cfg: HistorySweepConfig) -> dict[str, Any]:
    """One run per (model, length[, seed]); a finished run is read back, an unfinished one resumes."""
    from llmrec.pipeline import SEED_DIR, EvalConfig, TrainConfig, train

    out = Path(cfg.out)
    seeds = cfg.seeds if cfg.seeds is not None else [cfg.seed]
    seed_dir = (lambda s: SEED_DIR.format(seed=s)) if cfg.seeds is not None else (lambda s: "")
    points = []
    first = [m for m in cfg.models if m == cfg.step1_from_model]  # its runs must exist before the others'
    for name in first + [m for m in cfg.models if m not in first]:
        for length in cfg.lengths:
            per_seed = []
            for seed in seeds:
                run_dir = out / f"{name}-n{length}" / seed_dir(seed)
                metrics = run_dir / "metrics.json"
                if not metrics.exists() or "test" not in read_json(
                    metrics
                ):  # not yet evaluated: train resumes
                    step1 = (
                        out / f"{first[0]}-n{length}" / seed_dir(seed) if first and name != first[0] else None
                    )
                    train(
                        TrainConfig(
                            model=name,
                            data=cfg.data,
                            out=str(run_dir),
                            seed=seed,
                            threads=cfg.threads,
                            options={
                                **cfg.options,
                                **({"step1_from": str(step1)} if step1 else {}),
                                **cfg.model_options.get(name, {}),
                                "history_len": length,
                            },
                            eval=EvalConfig(splits=["test"], ranking=False, ctr_examples=cfg.ctr_examples),
                        )
                    )
                per_seed.append(read_json(run_dir / "metrics.json")["test"])
            point: dict[str, Any] = {"model": name, "history_items": length}
            for metric in ("auc", "uauc"):
                values = np.array([m[metric] for m in per_seed], dtype=float)
                point[metric] = float(values.mean())
                if cfg.seeds is not None:
                    point[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            if cfg.seeds is not None:
                point["seeds"] = len(seeds)
            points.append(point)
            log.info("%s", points[-1])
    result = {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "points": points}
    write_json_atomic(out / "history_sweep.json", result)
    write_text_atomic(out / "history_sweep.md", format_history_sweep(result) + "\n")
    plot_history_sweep(result, out / "history_sweep.png")
    return result
