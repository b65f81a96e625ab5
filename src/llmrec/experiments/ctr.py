"""HistLLM's experiments as commands: ``llmrec experiments ctr-efficiency`` (Fig. 5) and
``llmrec experiments history-sweep`` (Fig. 4).

``ctr-efficiency`` compares HistLLM with UHEM against the same model with the KE descriptions (and image
tokens) written inline (w/o UHEM), per dataset and history length, in one process (same backbone, batch,
threads, rows). Two views (``measure``):

- ``trained`` (default), what the paper's Fig. 5 measures: the total wall time of step 2 (LoRA frozen;
  the mappers and, with UHEM, the history encoder train) for a fixed budget, ``train_steps`` AdamW steps of
  ``batch_size`` examples on the same seeded training rows for both variants, then the time the TRAINED
  models take to score the same test rows (``test_rows``; 0 = the whole test split, as the paper). The
  two variants alternate step by step and chunk by chunk (the order flips every time), so a load on the
  machine slows both alike. Each variant gets one untimed warm-up forward/backward and one untimed
  scoring call first. Step 1 (LoRA) is not timed, as in the paper; its LoRA is as initialised unless
  ``--options step1_from=RUN`` loads a trained one (both variants share it).
- ``throughput``: mean prompt tokens, inference time per 100 examples and step-2 training time per 100
  examples of UNTRAINED models (speed does not depend on the weights' values) on the first ``examples``
  test rows with at least that many history items, items' texts uncut (``max_text_tokens`` = 10^4).

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
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

from llmrec.assets import DEFAULT_LLM
from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.utils.io import read_json, write_json_atomic, write_text_atomic
from llmrec.utils.markdown import markdown_table
from llmrec.utils.timing import clock

log = logging.getLogger(__name__)

VARIANTS = ("uhem", "inline")  # HistLLM, w/o UHEM
# the paper's Fig. 5 (Vicuna-7B, one A100): step-2 training minutes and test inference seconds
PAPER_FIG5 = {
    "movie @5": {"train_min": (118, 137), "inference_s": (107, 123)},
    "netflix @10": {"train_min": (153, 280), "inference_s": (138, 299)},
}


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
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps")
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
    """HistLLM with KE descriptions and CF tokens (when exported), its history as UHEM or inline;
    ``uncut``: items' texts kept whole (the throughput view) rather than cut to ``max_text_tokens``."""
    from llmrec.models.base import build_model

    check_descriptions(ds, cfg.options)
    options = {
        "device": cfg.device,
        "backbone": {"llm": cfg.llm, "lora": True},
        "cf": "tokens" if (ds.features_dir / "mf_user.json").exists() else "none",
        "image": True,
        "image_feature": image_feature,
        "ke": True,
        "history_len": length,
        **({"max_text_tokens": 10**4} if uncut else {}),  # throughput: time the whole description
        "score_batch_size": cfg.batch_size,
        "batch_size": cfg.batch_size,
        **cfg.options,
        "history": history,
    }
    model = build_model("histllm", options, ds.n_users, ds.n_items)
    model.attach(ds)
    return model


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


def measure_trained(cfg: CtrEfficiencyConfig, ds: Dataset, length: int, image_feature: str) -> dict[str, Any]:
    """Fig. 5 at one history length: step-2 training seconds of ``train_steps`` steps and test inference
    seconds of the trained models, both variants alternating on the same rows."""
    import torch

    from llmrec.eval.evaluator import seeded_rows
    from llmrec.eval.metrics import auc, uauc
    from llmrec.training.loop import make_optimizer

    train, test = ds.ctr("train"), ds.ctr("test")
    n_train = cfg.train_steps * cfg.batch_size
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(train))
    order = np.resize(order, n_train)  # a budget beyond the split goes round it again
    test = test.iloc[seeded_rows(len(test), cfg.test_rows or None, cfg.seed)].reset_index(drop=True)

    def columns(df: Any) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
        hist = [np.asarray(h, dtype=np.int64) for h in df["history"]]
        return (
            df["user_idx"].to_numpy(np.int64),
            hist,
            df["target"].to_numpy(np.int64),
            df["label"].to_numpy(),
        )

    tr_users, tr_hist, tr_targets, tr_labels = columns(train)
    te_users, te_hist, te_targets, te_labels = columns(test)
    models, opts, stages, seen = {}, {}, {}, {}
    for history in VARIANTS:
        torch.manual_seed(cfg.seed)
        model = _variant(ds, cfg, history, length, image_feature, uncut=False)
        step1, *rest = model.stages(ds)
        if step1.load is not None:  # -o step1_from=RUN: a trained LoRA, the same for both variants
            step1.load()
        stage = rest[-1] if rest else step1
        for name, p in model.named_parameters():
            p.requires_grad_(name in stage.trainable)
        params = [p for p in model.parameters() if p.requires_grad]
        models[history], stages[history] = model, stage
        opts[history] = make_optimizer(model, params, stage.lr)
        seen[history] = {
            "train_users": [],
            "train_targets": [],
            "test_users": [],
            "test_targets": [],
            "losses": [],
        }

    def batch_of(model: Any, r: np.ndarray) -> dict[str, torch.Tensor]:
        batch = model.prompts(tr_users[r], [tr_hist[i] for i in r], tr_targets[r])
        batch["labels"] = torch.from_numpy(tr_labels[r].astype(np.float32))
        return {k: v.to(model.device) for k, v in batch.items()}

    for history in VARIANTS:  # warm-up, untimed: one forward/backward without a step, one scoring call
        model = models[history]
        if cfg.train_steps:
            model.train()
            stages[history].loss(batch_of(model, order[: cfg.batch_size])).backward()
            opts[history].zero_grad(set_to_none=True)
        model.score_pairs(te_users[:2], te_hist[:2], te_targets[:2])

    spent = {h: {"train_s": 0.0, "test_s": 0.0} for h in VARIANTS}
    for step in range(cfg.train_steps):
        r = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        for history in VARIANTS if step % 2 == 0 else VARIANTS[::-1]:
            model, opt = models[history], opts[history]
            model.train()
            t0 = clock(model.device)
            batch = batch_of(model, r)  # building the prompts is part of a training step
            loss = stages[history].loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            spent[history]["train_s"] += clock(model.device) - t0
            seen[history]["losses"].append(float(loss.detach()))
            seen[history]["train_users"].append(batch["users"].cpu().numpy())
            seen[history]["train_targets"].append(batch["targets"].cpu().numpy())
        log.info(
            "%s @%d: step-2 step %d/%d done (%s)",
            _name(ds),
            length,
            step + 1,
            cfg.train_steps,
            ", ".join(f"{h} {spent[h]['train_s']:.1f} s" for h in VARIANTS),
        )
    scores = {h: np.empty(len(test)) for h in VARIANTS}
    chunk = cfg.batch_size
    for k, s in enumerate(range(0, len(test), chunk)):
        sl = slice(s, s + chunk)
        for history in VARIANTS if k % 2 == 0 else VARIANTS[::-1]:
            model = models[history]
            model.eval()
            t0 = clock(model.device)
            scores[history][sl] = model.score_pairs(te_users[sl], te_hist[sl], te_targets[sl])
            spent[history]["test_s"] += clock(model.device) - t0
            seen[history]["test_users"].append(te_users[sl])
            seen[history]["test_targets"].append(te_targets[sl])
    point: dict[str, Any] = {
        "data": _name(ds),
        "history_items": length,
        "train_steps": cfg.train_steps,
        "batch_size": cfg.batch_size,
        "test_rows": len(test),
        "mean_history_items": {
            "train": float(np.mean([min(len(tr_hist[i]), length) for i in order])) if len(order) else 0.0,
            "test": float(np.mean([min(len(h), length) for h in te_hist])) if len(test) else 0.0,
        },
        "variants": {},
    }
    both_labels = len(np.unique(te_labels)) == 2
    for history in VARIANTS:
        model, s = models[history], seen[history]
        tokens = [
            model.prompts(te_users[i : i + chunk], te_hist[i : i + chunk], te_targets[i : i + chunk])[
                "mask"
            ].sum(1)
            for i in range(0, len(test), chunk)
        ]
        point["variants"][history] = {
            "train_seconds": spent[history]["train_s"],
            "test_seconds": spent[history]["test_s"],
            "train_steps_run": len(s["train_users"]),
            "train_losses": s["losses"],
            "train_examples": int(sum(map(len, s["train_users"]))),
            "train_rows_sha256": _rows_digest(s["train_users"], s["train_targets"]),
            "test_rows_scored": int(sum(map(len, s["test_users"]))),
            "test_rows_sha256": _rows_digest(s["test_users"], s["test_targets"]),
            "test_prompt_tokens": float(torch.cat(tokens).float().mean()) if tokens else 0.0,
            "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            # trained this little, AUC only shows that the models score: not a comparison of quality
            "test_auc": auc(te_labels, scores[history]) if both_labels else None,
            "test_uauc": uauc(te_users, te_labels, scores[history]) if both_labels else None,
        }
    w, wo = point["variants"]["uhem"], point["variants"]["inline"]
    point["train_time_saved"] = 1 - w["train_seconds"] / wo["train_seconds"] if wo["train_seconds"] else None
    point["test_time_saved"] = 1 - w["test_seconds"] / wo["test_seconds"] if wo["test_seconds"] else None
    log.info("%s @%d: %s", point["data"], length, point)
    del models, opts
    return point


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
    points = []
    for history in VARIANTS:
        model = _variant(ds, cfg, history, length, image_feature)
        point = {"data": _name(ds), "history_items": length, "uhem": history == "uhem", "examples": len(rows)}
        batch = model.prompts(users, histories, targets)
        point["prompt_tokens"] = float(batch["mask"].sum(1).float().mean())
        model.score_pairs(users[:2], histories[:2], targets[:2])  # warm-up
        t0 = clock(model.device)
        model.score_pairs(users, histories, targets)
        point["inference_s_per_100"] = (clock(model.device) - t0) * 100 / len(rows)
        if cfg.train_steps:
            point["train_s_per_100"] = _time_step2(model, users, histories, targets, labels, cfg)
        points.append(point)
        log.info("%s", point)
        del model
    return points


def time_ranking(cfg: CtrEfficiencyConfig, ds: Dataset, image_feature: str) -> dict[str, Any]:
    """Seconds per user to rank the whole catalog (top-10) and to re-rank ``rerank_candidates`` items,
    with the shared prompt prefix and with one prompt per (user, candidate) pair, alternately in this
    process on the same users (test CTR histories); and how far apart the two paths' logits are."""
    from llmrec.models.base import load_model
    from llmrec.models.histllm import HistLLM

    if cfg.run:
        model = load_model(cfg.run, device=cfg.device)
        if not isinstance(model, HistLLM):
            raise ConfigError(
                f"--run {cfg.run} is a {model.name} run: ranking is timed for HistLLM-family runs "
                "(histllm, tallrec, collm, binllm...)"
            )
        ds = model._dataset
    else:
        model = _variant(ds, cfg, "uhem", 5, image_feature)
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
    model: Any, users: np.ndarray, histories: list, targets: np.ndarray, labels: torch.Tensor, cfg: Any
) -> float:
    """Seconds per 100 examples of step-2 training (LoRA frozen; mappers and encoder learn)."""
    import torch

    model.train()
    trainable = model.step_parameters(2)  # what the declared step-2 stage trains
    params = [p for n, p in model.named_parameters() if n in trainable]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4)
    b, n, spent = cfg.batch_size, 0, 0.0
    for step in range(cfg.train_steps + 1):  # the first step is a warm-up
        s = (step * b) % max(len(targets) - b + 1, 1)
        batch = model.prompts(users[s : s + b], histories[s : s + b], targets[s : s + b])
        batch["labels"] = labels[s : s + b]
        batch = {k: v.to(model.device) for k, v in batch.items()}
        t0 = clock(model.device)
        loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step:
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


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def format_trained(r: dict[str, Any]) -> list[str]:
    """The paper's Fig. 5 quantities as a table, the time UHEM saves, and the paper's own figures."""
    if not r["trained"]:
        return []
    p0 = r["trained"][0]
    lines = [
        f"Step-2 training: {p0['train_steps']} AdamW steps of {p0['batch_size']} examples per variant on the "
        "same seeded training rows (LoRA frozen; prompt building, forward, backward, step); test inference "
        f"of the trained models on the same {p0['test_rows']} seeded test rows; the variants alternate step by "
        "step and batch by batch in one process (warm-up excluded).",
        "",
    ]
    rows = []
    for p in r["trained"]:
        v = p["variants"]
        same = all(
            v["uhem"][k] == v["inline"][k]
            for k in ("train_rows_sha256", "test_rows_sha256", "train_steps_run", "test_rows_scored")
        )
        for history, label in (("uhem", "HistLLM (UHEM)"), ("inline", "w/o UHEM (inline)")):
            q = v[history]
            a = "n/a" if q["test_auc"] is None else f"{q['test_auc']:.4f}"
            rows.append(
                [p["data"], p["history_items"], label, f"{q['test_prompt_tokens']:.0f}"]
                + [f"{q['train_seconds']:.2f}", f"{q['test_seconds']:.2f}", a, "yes" if same else "NO"]
            )
    header = (
        "data | history items | variant | test prompt tokens | step-2 training s | test inference s "
        "| test AUC | same train/test rows"
    )
    lines += markdown_table(header, "-r-rrrr-", rows)
    lines.append("")
    for p in r["trained"]:
        lines.append(
            f"Saved by UHEM, {p['data']} @{p['history_items']}: step-2 training time "
            f"{_pct(p['train_time_saved'])}, test inference time {_pct(p['test_time_saved'])}"
        )
    paper = "; ".join(
        f"{k}: training {1 - v['train_min'][0] / v['train_min'][1]:.1%} ({v['train_min'][0]} vs "
        f"{v['train_min'][1]} min), inference {1 - v['inference_s'][0] / v['inference_s'][1]:.1%} "
        f"({v['inference_s'][0]} vs {v['inference_s'][1]} s)"
        for k, v in PAPER_FIG5.items()
    )
    lines.append(f"Paper, Fig. 5 (Vicuna-7B, full training and test sets, one A100): {paper}")
    if any(r.get("zero_image_stand_in", {}).values()):
        lines.append("(no image feature: image tokens were fed zero vectors; a token costs the same)")
    return lines


def format_ctr_efficiency(r: dict[str, Any]) -> str:
    lines = format_trained(r)
    if r["points"]:  # the throughput view
        lines += [
            *([""] if lines else []),
            "Throughput of untrained models (items' texts uncut):",
            "",
        ]
        rows = [
            [p.get("data", ""), p["history_items"], "with" if p["uhem"] else "without"]
            + [f"{p['prompt_tokens']:.0f}", f"{p['inference_s_per_100']:.2f}"]
            + [f"{p.get('train_s_per_100', float('nan')):.2f}"]
            for p in r["points"]
        ]
        header = (
            "data | history items | UHEM | prompt tokens | inference s/100 examples "
            "| step-2 training s/100 examples"
        )
        lines += markdown_table(header, "-r-rrr", rows)
        if r["ratios"]:
            lines += ["", "Saved by UHEM: " + ", ".join(f"{k} = {v:.0%}" for k, v in r["ratios"].items())]
        if any(r.get("zero_image_stand_in", {}).values()) and not r["trained"]:
            lines.append("(no image feature: image tokens were fed zero vectors; a token costs the same)")
    if r.get("ranking"):
        rk = r["ranking"]
        lines += [
            *([""] if lines else []),
            f"Ranking with {rk['model']} ({rk['run'] or 'untrained'}), {rk['items']} items: shared prompt prefix "
            f"(chunks of {rk['rank_batch_size']}) vs one prompt per pair (batches of {rk['score_batch_size']})",
            "",
        ]
        rows = []
        for task, label in (("top10_catalog", "top-10 of the catalog"), ("rerank", "re-rank")):
            if task not in rk:
                continue
            p = rk[task]
            rows.append(
                [label, p["users"], p["candidates"], f"{p['s_per_user_pairwise']:.2f}"]
                + [f"{p['s_per_user_shared']:.2f}", f"{p['speedup']:.1f}x", f"{p['max_abs_logit_diff']:.1e}"]
                + ["yes" if p["same_top10"] else "no"]
            )
        header = "task | users | candidates | s/user pairwise | s/user shared | speed-up | max logit diff | same top-10"
        lines += markdown_table(header, "-rrrrrr-", rows)
    return "\n".join(lines)


def plot_trained_efficiency(r: dict[str, Any], path: Path) -> None:
    """Fig. 5's two panels: step-2 training time and test inference time, per dataset and length."""
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    points = r["trained"]
    x = np.arange(len(points))
    for ax, (key, saved, label) in zip(
        axes,
        (
            ("train_seconds", "train_time_saved", "step-2 training s"),
            ("test_seconds", "test_time_saved", "test inference s"),
        ),
    ):
        for k, history in enumerate(VARIANTS):
            vals = [p["variants"][history][key] for p in points]
            ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label="HistLLM" if history == "uhem" else "w/o UHEM")
        for i, p in enumerate(points):
            top = max(p["variants"][h][key] for h in VARIANTS)
            ax.annotate(f"-{_pct(p[saved])}", (x[i], top), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [f"{p['data']}\n{p['history_items']} items" for p in points])
        ax.set_title(label)
    axes[0].legend()
    save_figure(fig, path)


def plot_ctr_efficiency(r: dict[str, Any], path: Path) -> None:
    """The throughput view: prompt tokens and per-100-example times of untrained models."""
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    keys = [("prompt_tokens", "prompt tokens"), ("inference_s_per_100", "inference s / 100 examples")]
    if any("train_s_per_100" in p for p in r["points"]):
        keys.append(("train_s_per_100", "step-2 training s / 100 examples"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    groups = sorted({(p.get("data", ""), p["history_items"]) for p in r["points"]})
    x = np.arange(len(groups))
    for ax, (key, label) in zip(np.atleast_1d(axes), keys):
        for k, uhem in enumerate((True, False)):
            by = {(p.get("data", ""), p["history_items"]): p for p in r["points"] if p["uhem"] == uhem}
            vals = [by[g].get(key, np.nan) if g in by else np.nan for g in groups]
            ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label="HistLLM" if uhem else "w/o UHEM")
        ax.set_xticks(
            x, [f"{d}\n{L} items" if len({g[0] for g in groups}) > 1 else f"{L} items" for d, L in groups]
        )
        ax.set_title(label)
    np.atleast_1d(axes)[0].legend()
    save_figure(fig, path)


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


def format_history_sweep(r: dict[str, Any]) -> str:
    lengths = sorted({p["history_items"] for p in r["points"]})
    lines = [
        "| model | metric | " + " | ".join(str(L) for L in lengths) + " |",
        "|---|---|" + "---:|" * len(lengths),
    ]
    for name in dict.fromkeys(p["model"] for p in r["points"]):
        for metric in ("auc", "uauc"):
            vals = {p["history_items"]: _mean_std(p, metric) for p in r["points"] if p["model"] == name}
            lines.append(f"| {name} | {metric} | " + " | ".join(vals.get(L, "nan") for L in lengths) + " |")
    return "\n".join(lines)


def _mean_std(point: dict[str, Any], metric: str) -> str:
    """``0.6123`` for one seed, ``0.6123 ± 0.0101`` over several."""
    std = point.get(f"{metric}_std")
    return f"{point[metric]:.4f}" if std is None else f"{point[metric]:.4f} ± {std:.4f}"


def plot_history_sweep(r: dict[str, Any], path: Path) -> None:
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("auc", "uauc")):
        for name in dict.fromkeys(p["model"] for p in r["points"]):
            pts = sorted(
                (p["history_items"], p[metric], p.get(f"{metric}_std", 0.0))
                for p in r["points"]
                if p["model"] == name
            )
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                fmt="o-",
                capsize=3,
                label=name,
            )
        ax.set_xlabel("history items in the prompt")
        ax.set_ylabel(f"test {metric.upper()}")
        ax.legend()
    save_figure(fig, path)
