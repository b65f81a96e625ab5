"""``llmrec demo``: the whole pipeline on MovieLens-100K with the embedded offline defaults.

prepare ml-100k -> MiniLM text features -> SmolLM2 backbone cached and checked -> train and evaluate the
baselines -> a results table (Markdown) and a popularity-breakdown plot under the demo's run folder.
Later methods add their quick presets here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from llmrec.config import option

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Where the demo writes and how big it runs."""

    data: str = option("data/ml-100k", "prepared dataset directory (created if missing)")
    runs: str = option("runs/demo", "folder for the demo's run directories and results table")
    max_users: int | None = option(None, "subsample users for a quicker demo", ge=1)
    seed: int = option(42, "seed for data preparation and training", ge=0, lt=2**32)
    # Fixed, not the machine's core count: the number of threads changes float sums in the last digits, and the
    # documented tables were printed with 2 (on any machine, the same number of threads gives the same tables).
    threads: int = option(2, "torch CPU threads (the documented tables were printed with 2)", ge=1)
    llm: bool = option(True, "load (and on first use convert) the default LLM and check that it generates")


# Quick presets: minutes on 2 CPU cores. The full runs of the results pages use the models' defaults.
DEMO_MODELS: dict[str, dict[str, object]] = {
    "popularity": {},
    "random": {},
    "sasrec": {"max_len": 200, "epochs": 40, "eval_every": 5, "patience": 2},
}
# I-LLMRec on MovieLens (no images): items as title + genres, retrieval with SASRec CF + MiniLM text features.
ILLMREC_QUICK: dict[str, object] = {
    "representation": "attribute",
    "features": ["cf", "text"],
    "epochs": 1,
    "train_users": 240,
    "eval_users": 100,
}

# HistLLM vs TALLRec on the CTR task (like = rating >= 4), quick presets: HistLLM reuses TALLRec's LoRA as
# its step 1 (the paper's step 1 is TALLRec training). KE is off here: generating the ~20-word descriptions
# of 1,349 movies takes ~15 minutes on this CPU (llmrec describe; the full runs of the results pages use them).
CTR_QUICK: dict[str, object] = {"train_examples": 128, "eval_examples": 100, "step1_epochs": 1, "epochs": 1}
CTR_TEST_ROWS = 300
MF_CTR: dict[str, object] = {"objective": "ctr", "dim": 256, "epochs": 400, "patience": 10}


def run_demo(cfg: DemoConfig) -> dict[str, dict[str, float]]:
    from llmrec.assets import require

    require(["movielens", "minilm", *(["smollm2"] if cfg.llm else [])], "the demo")
    import torch

    from llmrec.data.processing import PrepareConfig, prepare
    from llmrec.features.build import FeaturesConfig, build_features

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    print(
        f"== 1/{5 if cfg.llm else 4} prepare MovieLens-100K (recbole's copy), 5-core, leave-one-out, 100 frozen negatives"
    )
    meta = prepare(PrepareConfig(dataset="ml-100k", out=cfg.data, max_users=cfg.max_users, seed=cfg.seed))
    raw, final = meta["counts_raw"], meta["counts"]
    print(
        f"   before filtering: {raw['users']:,} users, {raw['items']:,} items, {raw['interactions']:,} interactions"
    )
    print(
        f"   after filtering:  {final['users']:,} users, {final['items']:,} items, {final['interactions']:,} interactions"
    )

    print(f"== 2/{5 if cfg.llm else 4} text features with all-MiniLM-L6-v2 (offline)")
    for name, m in build_features(FeaturesConfig(data=cfg.data)).items():
        print(f"   {name}: {m['count']:,} x {m['dim']} ({m['encoder']})")

    if cfg.llm:
        _llm_demo()
    results = _next_item_demo(cfg)
    if cfg.llm:
        results.update(_ctr_demo(cfg))
    print(
        f"demo finished in {time.perf_counter() - t0:.0f}s; results in {cfg.runs}/results.md, results.csv and popularity_breakdown.png"
    )
    print(
        f"serve one of these runs over HTTP (docs at http://127.0.0.1:8000/docs): llmrec serve {cfg.runs}/sasrec\n"
        f"or in Python: llmrec.load('{cfg.runs}/sasrec').recommend(user_ids=['1'], k=10)"
    )
    return results


def _llm_demo() -> None:
    """Step 3: the default LLM loads (converted from its GGUF on first use) and generates."""
    import torch

    print("== 3/5 default LLM: SmolLM2-135M-Instruct from its GGUF (converted once, then cached)")
    from llmrec.assets import load_causal_lm

    t1 = time.perf_counter()
    model, tok = load_causal_lm()
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    print(
        f"   loaded in {time.perf_counter() - t1:.1f}s; 'The capital of France is' ->{tok.decode(out[0, ids['input_ids'].shape[1] :])!r}"
    )
    del model


def _next_item_demo(cfg: DemoConfig) -> dict[str, dict[str, float]]:
    """Step 4: the next-item models (I-LLMRec too with the LLM), their results table and the
    popularity-breakdown plot."""
    from llmrec.data.dataset import Dataset
    from llmrec.features.build import export_cf_features
    from llmrec.pipeline import EvalConfig, TrainConfig, train
    from llmrec.plots import plot_popularity_breakdown
    from llmrec.report import TableConfig, make_table

    steps = 5 if cfg.llm else 4
    print(f"== 4/{steps} train and evaluate next-item models")
    results: dict[str, dict[str, float]] = {}
    breakdowns = {}
    models = dict(DEMO_MODELS)
    if cfg.llm:
        models["illmrec"] = ILLMREC_QUICK
    for model_name, options in models.items():
        run_dir = Path(cfg.runs) / model_name
        if model_name == "illmrec":  # I-LLMRec retrieves with the SASRec item embeddings trained just above
            export_cf_features(Dataset(cfg.data), Path(cfg.runs) / "sasrec")
        print(f"   {model_name} {options or ''}")
        train(
            TrainConfig(
                model=model_name,
                data=cfg.data,
                out=str(run_dir),
                seed=cfg.seed,
                threads=cfg.threads,
                options=dict(options),
                # one LLM prompt per user (and per CTR example): the quick preset scores the test ranking only
                eval=EvalConfig(splits=["test"], ctr=False) if model_name == "illmrec" else EvalConfig(),
            )
        )
        results[model_name] = json.loads((run_dir / "metrics.json").read_text())["test"]
        breakdowns[model_name] = json.loads((run_dir / "breakdown.json").read_text())["test"]
    table = make_table(
        TableConfig(runs=[str(Path(cfg.runs) / m) for m in results], out=str(Path(cfg.runs) / "results"))
    )
    plot_popularity_breakdown(breakdowns, Path(cfg.runs) / "popularity_breakdown.png")
    print(table)
    return results


def _ctr_demo(cfg: DemoConfig) -> dict[str, dict[str, float]]:
    """Step 5: MF (CTR objective, also the CF tokens), TALLRec and HistLLM on the same seeded test rows."""
    from llmrec.data.dataset import Dataset
    from llmrec.features.build import export_cf_features
    from llmrec.pipeline import EvalConfig, TrainConfig, train
    from llmrec.report import TableConfig, make_table

    print(f"== 5/5 CTR (like = rating >= 4, 5 history items): AUC/UAUC on the same {CTR_TEST_ROWS} test rows")
    runs = Path(cfg.runs)
    plan = {
        "mf_ctr": ("mf", MF_CTR),
        "tallrec": ("tallrec", CTR_QUICK),
        "histllm": ("histllm", {**CTR_QUICK, "ke": False, "step1_from": str(runs / "tallrec")}),
    }
    results = {}
    for run_name, (model, options) in plan.items():
        print(f"   {model} {options}")
        train(
            TrainConfig(
                model=model,
                data=cfg.data,
                out=str(runs / run_name),
                seed=cfg.seed,
                threads=cfg.threads,
                options=dict(options),
                eval=EvalConfig(splits=["test"], ranking=False, ctr_examples=CTR_TEST_ROWS),
            )
        )
        if model == "mf":  # CoLLM/HistLLM CF tokens come from this MF
            export_cf_features(Dataset(cfg.data), runs / run_name)
        results[run_name] = json.loads((runs / run_name / "metrics.json").read_text())["test"]
    print(
        make_table(
            TableConfig(
                runs=[str(runs / r) for r in plan], metrics=["auc", "uauc"], out=str(runs / "ctr_results")
            )
        )
    )
    return results
