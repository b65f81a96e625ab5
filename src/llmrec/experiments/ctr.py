"""HistLLM's experiments as commands: ``llmrec ctr-efficiency`` (Fig. 5) and ``llmrec history-sweep`` (Fig. 4).

``ctr-efficiency`` times HistLLM with and without UHEM side by side in one process (same backbone, batch,
threads, CTR rows): mean prompt tokens, inference time per 100 examples and step-2 training time per 100
examples (forward + backward + AdamW with LoRA frozen, the mappers and encoder training), at each history
length. Weights are untrained (speed does not depend on their values). On a dataset without an image
feature the image tokens are fed a zero vector, as in ``llmrec efficiency``: a token costs the same
whatever it holds.

``history-sweep`` trains and evaluates each model at each number of history items (TALLRec vs HistLLM in
the paper) with the same options, resuming finished points, and writes AUC/UAUC per length.

``ctr-efficiency`` also times ranking (``--ranking``, on by default): top-10 over the whole catalog and
re-ranking ``rerank_candidates`` items per user, with each user's prompt up to the target computed once
(the shared prefix, :meth:`HistLLM.rank_logits`) vs one prompt per (user, candidate) pair, on a trained
run (``--run``) or an untrained HistLLM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

from llmrec.assets import DEFAULT_LLM
from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError
from llmrec.utils.io import read_json, write_json_atomic, write_text_atomic
from llmrec.utils.timing import clock

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- Fig. 5: with vs without UHEM
@dataclass
class CtrEfficiencyConfig:
    """What to time."""

    data: str = option("data/ml-100k", "prepared dataset directory (with CTR examples)")
    llm: str = option(DEFAULT_LLM, "causal LM (alias, folder, hub id, .gguf)")
    lengths: list[int] = option(
        factory=lambda: [5, 10],
        help="history lengths (paper: 5 movie, 10 netflix); [] = ranking section only",
    )
    examples: int = option(64, "CTR examples timed per point (time is reported per 100 examples)", ge=1)
    train_steps: int = option(4, "step-2 training steps timed per point (0 = inference only)", ge=0)
    batch_size: int = option(8, "prompts per forward (training and inference alike)", ge=1)
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


def _variant(ds: Dataset, cfg: CtrEfficiencyConfig, history: str, length: int, image_feature: str) -> Any:
    from llmrec.models.base import build_model

    options = {
        "device": cfg.device,
        "backbone": {"llm": cfg.llm, "lora": True},
        "cf": "tokens" if (ds.features_dir / "mf_user.json").exists() else "none",
        "image": True,
        "image_feature": image_feature,
        "ke": (ds.root / "texts" / "from_title.parquet").exists(),
        "history_len": length,
        "max_text_tokens": 10**4,  # time the whole description
        "score_batch_size": cfg.batch_size,
        "batch_size": cfg.batch_size,
        **cfg.options,
        "history": history,
    }
    if not options["ke"]:
        options["description_texts"] = None
    model = build_model("histllm", options, ds.n_users, ds.n_items)
    model.attach(ds)
    return model


def run_ctr_efficiency(cfg: CtrEfficiencyConfig) -> dict[str, Any]:
    import torch

    from llmrec.experiments.efficiency import zero_image_feature

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    ds = Dataset(cfg.data)
    image_feature, zero_image = zero_image_feature(ds, cfg.options.get("image_feature", "image"))
    df = ds.ctr("test")
    result: dict[str, Any] = {
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "zero_image_stand_in": zero_image,
        "points": [],
    }
    for length in cfg.lengths:
        rows = df[df["history"].map(len) >= length].head(cfg.examples)
        if rows.empty:
            log.warning("no CTR test example has %d history items: skipped", length)
            continue
        users, targets = rows["user_idx"].to_numpy(np.int64), rows["target"].to_numpy(np.int64)
        histories = [np.asarray(h)[-length:] for h in rows["history"]]
        labels = torch.from_numpy(rows["label"].to_numpy(np.float32))
        for history in ("uhem", "inline"):
            model = _variant(ds, cfg, history, length, image_feature)
            point = {"history_items": length, "uhem": history == "uhem", "examples": len(rows)}
            batch = model.prompts(users, histories, targets)
            point["prompt_tokens"] = float(batch["mask"].sum(1).float().mean())
            model.score_pairs(users[:2], histories[:2], targets[:2])  # warm-up
            t0 = clock(model.device)
            model.score_pairs(users, histories, targets)
            point["inference_s_per_100"] = (clock(model.device) - t0) * 100 / len(rows)
            if cfg.train_steps:
                point["train_s_per_100"] = _time_step2(model, users, histories, targets, labels, cfg)
            result["points"].append(point)
            log.info("%s", point)
            del model
    result["ratios"] = _uhem_ratios(result["points"])
    if cfg.ranking:
        result["ranking"] = time_ranking(cfg, ds, image_feature)
    out = Path(cfg.out)
    write_json_atomic(out / "ctr_efficiency.json", result)
    write_text_atomic(out / "ctr_efficiency.md", format_ctr_efficiency(result) + "\n")
    if result["points"]:
        plot_ctr_efficiency(result, out / "ctr_efficiency.png")
    return result


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
    """Time saved by UHEM (1 - with/without) per length and measure."""
    out = {}
    by = {(p["history_items"], p["uhem"]): p for p in points}
    for (length, uhem), p in by.items():
        q = by.get((length, False))
        if not uhem or q is None:
            continue
        for key in ("inference_s_per_100", "train_s_per_100", "prompt_tokens"):
            if key in p and key in q:
                out[f"{key} saved @{length}"] = 1 - p[key] / q[key]
    return out


def format_ctr_efficiency(r: dict[str, Any]) -> str:
    lines = [
        "| history items | UHEM | prompt tokens | inference s/100 examples | step-2 training s/100 examples |",
        "|---:|---|---:|---:|---:|",
    ]
    if not r["points"]:  # --lengths with no value: the ranking section alone
        lines = []
    for p in r["points"]:
        lines.append(
            f"| {p['history_items']} | {'with' if p['uhem'] else 'without'} | {p['prompt_tokens']:.0f} | "
            f"{p['inference_s_per_100']:.2f} | {p.get('train_s_per_100', float('nan')):.2f} |"
        )
    if r["ratios"]:
        lines += ["", "Saved by UHEM: " + ", ".join(f"{k} = {v:.0%}" for k, v in r["ratios"].items())]
    if r.get("zero_image_stand_in") and r["points"]:
        lines.append(
            "(no image feature in this dataset: image tokens were fed zero vectors; a token costs the same)"
        )
    if r.get("ranking"):
        rk = r["ranking"]
        lines += [
            "",
            f"Ranking with {rk['model']} ({rk['run'] or 'untrained'}), {rk['items']} items: shared prompt prefix "
            f"(chunks of {rk['rank_batch_size']}) vs one prompt per pair (batches of {rk['score_batch_size']})",
            "",
            "| task | users | candidates | s/user pairwise | s/user shared | speed-up | max logit diff | same top-10 |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for task, label in (("top10_catalog", "top-10 of the catalog"), ("rerank", "re-rank")):
            if task not in rk:
                continue
            p = rk[task]
            lines.append(
                f"| {label} | {p['users']} | {p['candidates']} | {p['s_per_user_pairwise']:.2f} | "
                f"{p['s_per_user_shared']:.2f} | {p['speedup']:.1f}x | {p['max_abs_logit_diff']:.1e} | "
                f"{'yes' if p['same_top10'] else 'no'} |"
            )
    return "\n".join(lines)


def plot_ctr_efficiency(r: dict[str, Any], path: Path) -> None:
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    keys = [("prompt_tokens", "prompt tokens"), ("inference_s_per_100", "inference s / 100 examples")]
    if any("train_s_per_100" in p for p in r["points"]):
        keys.append(("train_s_per_100", "step-2 training s / 100 examples"))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    lengths = sorted({p["history_items"] for p in r["points"]})
    x = np.arange(len(lengths))
    for ax, (key, label) in zip(np.atleast_1d(axes), keys):
        for k, uhem in enumerate((True, False)):
            vals = [
                next(
                    (
                        p.get(key, np.nan)
                        for p in r["points"]
                        if p["history_items"] == L and p["uhem"] == uhem
                    ),
                    np.nan,
                )
                for L in lengths
            ]
            ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label="HistLLM" if uhem else "w/o UHEM")
        ax.set_xticks(x, [f"{L} items" for L in lengths])
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
    threads: int | None = option(None, "torch CPU threads", ge=1)
    out: str = option("runs/history-sweep", "one run folder per point + history_sweep.json/.md/.png")

    def __post_init__(self) -> None:
        if not self.lengths or min(self.lengths) < 1 or not self.models:
            raise ConfigError("lengths must be positive and at least one model given")


def run_history_sweep(cfg: HistorySweepConfig) -> dict[str, Any]:
    from llmrec.pipeline import EvalConfig, TrainConfig, train

    out = Path(cfg.out)
    points = []
    first = [m for m in cfg.models if m == cfg.step1_from_model]  # its runs must exist before the others'
    for name in first + [m for m in cfg.models if m not in first]:
        for length in cfg.lengths:
            run_dir = out / f"{name}-n{length}"
            metrics = run_dir / "metrics.json"
            if not metrics.exists() or "test" not in read_json(metrics):  # not yet evaluated: train resumes
                train(
                    TrainConfig(
                        model=name,
                        data=cfg.data,
                        out=str(run_dir),
                        seed=cfg.seed,
                        threads=cfg.threads,
                        options={
                            **cfg.options,
                            **(
                                {"step1_from": str(out / f"{first[0]}-n{length}")}
                                if first and name != first[0]
                                else {}
                            ),
                            **cfg.model_options.get(name, {}),
                            "history_len": length,
                        },
                        eval=EvalConfig(splits=["test"], ranking=False, ctr_examples=cfg.ctr_examples),
                    )
                )
            test = read_json(run_dir / "metrics.json")["test"]
            points.append({"model": name, "history_items": length, "auc": test["auc"], "uauc": test["uauc"]})
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
            vals = {p["history_items"]: p[metric] for p in r["points"] if p["model"] == name}
            lines.append(
                f"| {name} | {metric} | "
                + " | ".join(f"{vals.get(L, float('nan')):.4f}" for L in lengths)
                + " |"
            )
    return "\n".join(lines)


def plot_history_sweep(r: dict[str, Any], path: Path) -> None:
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("auc", "uauc")):
        for name in dict.fromkeys(p["model"] for p in r["points"]):
            pts = sorted((p["history_items"], p[metric]) for p in r["points"] if p["model"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.set_xlabel("history items in the prompt")
        ax.set_ylabel(f"test {metric.upper()}")
        ax.legend()
    save_figure(fig, path)
