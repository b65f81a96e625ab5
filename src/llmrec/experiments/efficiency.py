"""``llmrec experiments efficiency``: token economy and inference time of item representations, side by
side in one run.

For each representation (I-LLMRec Fig. 1a / Fig. 4): tokens per item and per prompt, and the time to
score 100 users (one LLM forward per user + retrieval over the catalog) at history lengths 2..20, all
with the same backbone, batch size and thread count in one process, so the ratios compare like with like.
For the first representation, the scoring time with and without the shared constant prompt prefix (its
KV computed once, ``shared_prefix``) at ``prefix_lengths``, next to the share of prompt tokens it saves.
Weights are untrained: speed does not depend on weight values. On a dataset without an image feature the
image token is fed a zero vector (documented in the output): its cost is one token whatever the pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.assets import DEFAULT_LLM
from llmrec.config import option
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError
from llmrec.features.store import ids_checksum, save_feature
from llmrec.llm.prompts import REPRESENTATIONS, ire_prompt
from llmrec.placement import DtypeName, device_option, dtype_option
from llmrec.utils.io import write_json_atomic, write_text_atomic
from llmrec.utils.timing import clock

log = logging.getLogger(__name__)
DUMMY_IMAGE = "efficiency_zero_image"


@dataclass
class EfficiencyConfig:
    """What to measure."""

    data: str = option("data/ml-100k", "prepared dataset directory")
    llm: str = option(DEFAULT_LLM, "causal LM (alias, folder, hub id, .gguf)")
    representations: list[str] = option(
        factory=lambda: ["image", "attribute", "description", "image_description"],
        help="representations to time",
    )
    lengths: list[int] = option(factory=lambda: [2, 5, 10, 15, 20], help="history lengths to time")
    prefix_lengths: list[int] = option(
        factory=lambda: [2, 5, 10, 20],
        help="history lengths at which the first representation is timed with and without the shared "
        "constant prompt prefix ([] = skip)",
    )
    users: int = option(100, "users timed per point (time is reported per 100 users)", ge=1)
    batch_size: int = option(16, "prompts per LLM forward", ge=1)
    text_feature: str = option("text", "item feature used for retrieval (any item feature of the store)")
    image_feature: str = option("image", "image feature (a zero stand-in is used when the dataset has none)")
    description_texts: str | None = option(
        None, "generated descriptions (llmrec describe NAME) for datasets without"
    )
    summary_texts: str | None = option(None, "generated summaries for the 'summary' representation")
    threads: int | None = option(None, "torch CPU threads", ge=1)
    dtype: DtypeName = dtype_option()
    device: str = device_option()
    out: str = option("runs/efficiency", "output folder: efficiency.json, efficiency.md, efficiency.png")

    def __post_init__(self) -> None:
        bad = [r for r in self.representations if r not in REPRESENTATIONS]
        if bad:
            raise ConfigError(f"unknown representation(s) {bad}; choose from {REPRESENTATIONS}")
        if not self.lengths or min(self.lengths + self.prefix_lengths) < 1 or self.users < 1:
            raise ConfigError("lengths and prefix_lengths must be positive and users >= 1")


def _model(ds: Dataset, cfg: EfficiencyConfig, representation: str, image_feature: str) -> Any:
    from llmrec.models.base import build_model, placement_for

    options = {
        "backbone": {"llm": cfg.llm},
        "representation": representation,
        "features": ["text"],
        "text_feature": cfg.text_feature,
        "image_feature": image_feature,
        "ila": False,
        "shared_prefix": False,  # the representations' table times whole prompts (the paper's Fig. 1a / 4)
        "score_batch_size": cfg.batch_size,
        "max_prompt_tokens": None,  # time the whole history (trimmed only to fit the LM's context)
        "max_description_chars": None,
        "description_texts": cfg.description_texts,
        "summary_texts": cfg.summary_texts or "summary",
    }
    placement = placement_for("illmrec", cfg.device, cfg.dtype)
    model = build_model("illmrec", options, ds.n_users, ds.n_items, placement)
    model.attach(ds)
    return model.eval()


def zero_image_feature(ds: Dataset, name: str) -> tuple[str, bool]:
    """(feature to use, whether it is a stand-in): ``name`` when the dataset has it, else an all-zero
    timing stand-in written once into the store (an image token costs one token whatever it holds)."""
    if (ds.features_dir / f"{name}.json").exists():
        return name, False
    if not (ds.features_dir / f"{DUMMY_IMAGE}.json").exists():
        spec = {
            "kind": "item",
            "encoder": "zeros (timing stand-in)",
            "ids_sha256": ids_checksum(ds.items["item_id"].astype(str).tolist()),
        }
        save_feature(ds.features_dir, DUMMY_IMAGE, np.zeros((ds.n_items, 8), dtype=np.float32), spec)
    return DUMMY_IMAGE, True


def run_efficiency(cfg: EfficiencyConfig) -> dict[str, Any]:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    ds = Dataset(cfg.data)
    image_feature, zero_image = zero_image_feature(ds, cfg.image_feature)
    seqs = ds.sequences
    result: dict[str, Any] = {
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "zero_image_stand_in": zero_image,
        "tokens": {},
        "time_per_100_users": {},
        "prompt_tokens": {},
        "shared_prefix": {},
    }
    for rep in cfg.representations:
        model = _model(ds, cfg, rep, image_feature)
        if rep == cfg.representations[0]:
            result["shared_prefix"] = {"representation": rep, "points": _time_shared_prefix(model, seqs, cfg)}
        texts, lengths = model.rendered()
        result["tokens"][rep] = {
            "per_item_mean": float(np.mean(lengths - 1)),
            "per_item_max": int(np.max(lengths - 1)),
        }
        result["time_per_100_users"][rep], result["prompt_tokens"][rep] = {}, {}
        for L in cfg.lengths:
            users, histories = _windows(seqs, L, cfg.users)
            if not users:
                continue
            prompts = [model.backbone.chat(ire_prompt([texts[i] for i in h])) for h in histories]
            result["prompt_tokens"][rep][L] = float(
                np.mean([model.backbone.count_tokens(p) for p in prompts])
            )
            with model.switched(test_history=L):
                model.score_all(np.array(users[:2]), histories[:2])  # warm-up
                t0 = clock(model.device)
                model.score_all(np.array(users), histories)
                result["time_per_100_users"][rep][L] = (clock(model.device) - t0) * 100 / len(users)
            log.info(
                "%s, %d items: %.1f prompt tokens, %.2f s per 100 users",
                rep,
                L,
                result["prompt_tokens"][rep][L],
                result["time_per_100_users"][rep][L],
            )
        del model
    result["ratios"] = _ratios(result, cfg.lengths)
    out = Path(cfg.out)
    write_json_atomic(out / "efficiency.json", result)
    write_text_atomic(out / "efficiency.md", format_efficiency(result) + "\n")
    plot_efficiency(result, out / "efficiency.png")
    return result


def _windows(seqs: list[np.ndarray], length: int, n: int) -> tuple[list[int], list[np.ndarray]]:
    """The first ``n`` users with more than ``length`` items and their ``length`` items before the last."""
    users = [u for u, s in enumerate(seqs) if len(s) > length][:n]
    return users, [seqs[u][-length - 1 : -1] for u in users]


def _time_shared_prefix(model: Any, seqs: list[np.ndarray], cfg: EfficiencyConfig) -> dict[int, Any]:
    """Per history length: the constant prefix's tokens and share of the prompt, and the scoring time with
    and without it, the two timed alternately (best of two each) on the same users in this process."""
    out: dict[int, Any] = {}
    for L in cfg.prefix_lengths:
        users, histories = _windows(seqs, L, cfg.users)
        if not users:
            continue
        with model.switched(test_history=L):
            batch = model.build_ire(histories)
            times: dict[bool, list[float]] = {True: [], False: []}
            for shared in (True, False):  # warm-up (and the prefix's KV, computed once)
                with model.switched(shared_prefix=shared):
                    model.score_all(np.array(users[:2]), histories[:2])
            for _ in range(2):
                for shared in (False, True):
                    with model.switched(shared_prefix=shared):
                        t0 = clock(model.device)
                        model.score_all(np.array(users), histories)
                        times[shared].append((clock(model.device) - t0) * 100 / len(users))
        prefix = len(model.backbone.prefixes[0]) if model.backbone.prefixes else 0
        tokens = float(batch["mask"].sum(1).float().mean())
        out[L] = {
            "prompt_tokens": tokens,
            "prefix_tokens": prefix,
            "token_share": prefix / tokens,
            "s_per_100_users_unshared": min(times[False]),
            "s_per_100_users_shared": min(times[True]),
            "speedup": min(times[False]) / min(times[True]),
        }
        log.info("shared constant prefix, %d items: %s", L, out[L])
    return out


def _ratios(result: dict[str, Any], lengths: list[int]) -> dict[str, float]:
    """Inference-time ratios against the image representation at each history length."""
    times = result["time_per_100_users"]
    out = {}
    if "image" in times:
        for rep in times:
            for L in lengths:
                if rep != "image" and L in times[rep] and L in times["image"]:
                    out[f"{rep}/image@{L}"] = times[rep][L] / times["image"][L]
    return out


def format_efficiency(r: dict[str, Any]) -> str:
    reps = list(r["time_per_100_users"])
    lengths = sorted({L for rep in reps for L in r["time_per_100_users"][rep]})
    lines = [
        "| representation | tokens/item | "
        + " | ".join(f"prompt tokens @{L}" for L in lengths)
        + " | "
        + " | ".join(f"s/100 users @{L}" for L in lengths)
        + " |"
    ]
    lines.append("|---|---:|" + "---:|" * (2 * len(lengths)))
    for rep in reps:
        toks = " | ".join(f"{r['prompt_tokens'][rep].get(L, float('nan')):.0f}" for L in lengths)
        times = " | ".join(f"{r['time_per_100_users'][rep].get(L, float('nan')):.2f}" for L in lengths)
        lines.append(f"| {rep} | {r['tokens'][rep]['per_item_mean']:.1f} | {toks} | {times} |")
    if r["ratios"]:
        lines.append("")
        lines.append("Time ratios vs image: " + ", ".join(f"{k} = {v:.2f}x" for k, v in r["ratios"].items()))
    if r.get("shared_prefix", {}).get("points"):
        sp = r["shared_prefix"]
        lines += [
            "",
            f"Shared constant prefix (chat template + instruction, KV computed once), {sp['representation']}:",
            "",
            "| history items | prompt tokens | prefix tokens | token share | s/100 users unshared "
            "| s/100 users shared | speed-up |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for L, p in sp["points"].items():
            lines.append(
                f"| {L} | {p['prompt_tokens']:.0f} | {p['prefix_tokens']} | {p['token_share']:.0%} "
                f"| {p['s_per_100_users_unshared']:.2f} | {p['s_per_100_users_shared']:.2f} | {p['speedup']:.2f}x |"
            )
    if r.get("zero_image_stand_in"):
        lines.append(
            "(no image feature in this dataset: the image token was fed a zero vector; its cost is one token)"
        )
    return "\n".join(lines)


def plot_efficiency(r: dict[str, Any], path: Path) -> None:
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    reps = list(r["tokens"])
    ax1.bar(reps, [r["tokens"][k]["per_item_mean"] for k in reps], color="tab:blue")
    ax1.set_ylabel("tokens per item (mean)")
    ax1.set_title("token cost of one item")
    ax1.tick_params(axis="x", rotation=20)
    for rep in reps:
        pts = sorted(r["time_per_100_users"][rep].items())
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=rep)
    ax2.set_xlabel("history length (items)")
    ax2.set_ylabel("seconds per 100 users")
    ax2.set_title("inference time")
    ax2.legend()
    save_figure(fig, path)
