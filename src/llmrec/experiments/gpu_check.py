"""``make gpu-check``: what the check builds and measures, and its report (``gpu-check.json``).

The check runs on a GPU machine from the repository alone, without network: its models are random weights
built from a configuration (:data:`SHAPES`: a tiny LLaMA, and one shaped as Sheared-LLaMA-2.7B, the
I-LLMRec paper's backbone), its tokenizer a byte-level BPE trained here on the catalog's own words
(:func:`offline_tokenizer`), its data a synthetic catalog with every feature the LLM models read
(:func:`synthetic_catalog`). The tests in ``tests/gpu/`` train, resume, evaluate and serve with them;
:func:`run_gpu_timing` times the paper-shaped LM through ``llmrec experiments efficiency`` (description vs
image prompts, shared-prefix ranking vs not) and ``bench-training`` (one I-LLMRec training step, two
passes vs one); :func:`write_report` writes every part's outcome and figures, the device and the package
versions. Speed does not depend on weight values, so random weights time what trained ones would.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.utils.io import write_json_atomic, write_text_atomic
from llmrec.utils.markdown import markdown_table

# LlamaConfig fields of each shape: "tiny" for the CPU run of the suite, the other the paper's backbone
# (princeton-nlp/Sheared-LLaMA-2.7B's config.json: 2560 hidden, 32 layers of 20 heads, 6912 MLP, 32000 words)
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 2048,
        "max_position_embeddings": 4096,
    },
    "sheared-llama-2.7b": {
        "hidden_size": 2560,
        "intermediate_size": 6912,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "num_key_value_heads": 20,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
}

# what the check imports beyond the standard library (llmrec's top-level imports and the paths it runs),
# and what it skips without: the serving part needs fastapi and httpx
PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "peft",
    "safetensors",
    "numpy",
    "pandas",
    "pyarrow",
    "yaml",
    "sklearn",
    "scipy",
    "tqdm",
    "PIL",
    "matplotlib",
    "pytest",
    "fastapi",
    "httpx",
)

# the synthetic catalog's words (titles, descriptions)
# fmt: off
_WORDS = ("soft", "light", "warm", "quick", "bright", "dark", "calm", "bold", "fresh", "classic", "modern",
    "simple", "rich", "smooth", "strong", "clean", "deep", "sharp", "gentle", "heavy", "wild", "quiet",
    "cool", "round", "small", "large", "long", "short",)
_NOUNS = ("shoe", "bag", "lamp", "chair", "table", "phone", "case", "cable", "watch", "ring", "shirt",
    "coat", "bottle", "brush", "towel", "pillow", "blanket", "speaker", "camera", "lens", "guitar", "ball",
    "racket", "glove", "helmet", "jacket",)
# fmt: on


def synthetic_catalog(
    out: str | Path,
    users: int = 24,
    items: int = 60,
    per_user: int = 24,
    description_words: int = 40,
    seed: int = 0,
) -> Path:
    """A prepared dataset at ``out``: users walk the catalog in order (item i -> i+1), ratings alternating
    5/2 (so CTR rows have both labels), each item with a title, brand, category and a description of
    ``description_words`` words, and random item features ``image`` (1152-d, SigLIP's width), ``text``
    (768-d, all-mpnet-base-v2's), ``sasrec_item`` (50-d) and ``mf_item``/``mf_user`` (8-d): every feature the
    I-LLMRec and HistLLM-family defaults read."""
    import pandas as pd

    from llmrec.data.dataset import Dataset
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset
    from llmrec.data.schema import make_interactions, make_items
    from llmrec.features.store import ids_checksum, save_feature

    rng = np.random.default_rng(seed)
    records = []
    for i in range(items):
        text = " ".join(rng.choice(_WORDS + _NOUNS, size=description_words))
        records.append(
            {
                "item_id": f"i{i:03d}",
                "title": f"{_WORDS[i % len(_WORDS)]} {_NOUNS[i % len(_NOUNS)]} {i}",
                "brand": f"brand{i % 5}",
                "category": _NOUNS[i % 7],
                "description": text,
            }
        )
    step = np.tile(np.arange(per_user), users)  # each user's t-th interaction
    user = np.repeat(np.arange(users), per_user)
    start = rng.integers(0, items, size=users)[user]
    rows = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in user],
            "item_id": [f"i{i:03d}" for i in (start + step) % items],
            "timestamp": 1000 + 10 * step + user,
            "rating": np.where(step % 2 == 0, 5.0, 2.0),
        }
    )
    out = Path(out)
    cfg = ProcessConfig(kcore=0, num_negatives=10, seed=3)
    write_dataset(
        finalize(make_items(records, "gpu-check"), make_interactions(rows, "gpu-check"), cfg, {}, {}, []), out
    )
    ds = Dataset(out)
    item_spec = {
        "kind": "item",
        "encoder": "random",
        "ids_sha256": ids_checksum(ds.items["item_id"].tolist()),
    }
    user_spec = {
        "kind": "user",
        "encoder": "random",
        "ids_sha256": ids_checksum(ds.users["user_id"].tolist()),
    }
    for name, dim in (("image", 1152), ("text", 768), ("sasrec_item", 50), ("mf_item", 8)):
        save_feature(ds.features_dir, name, rng.normal(size=(ds.n_items, dim)).astype(np.float32), item_spec)
    save_feature(ds.features_dir, "mf_user", rng.normal(size=(ds.n_users, 8)).astype(np.float32), user_spec)
    return out


def offline_tokenizer(corpus: list[str], vocab_size: int = 2000) -> Any:
    """A LLaMA-like tokenizer built here, without network: byte-level BPE of at most ``vocab_size`` tokens
    trained on ``corpus``, ``<s>`` put before every text (as LLaMA's tokenizer does), ``</s>`` the end,
    no chat template (Sheared-LLaMA is a base model). Trained on the catalog's own words, most words are one
    token, about as with LLaMA's 32,000-token vocabulary on English."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def catalog_corpus(data: str | Path) -> list[str]:
    """The words the LLM models put into prompts on ``data``: its item texts and the prompt templates."""
    from llmrec.data.dataset import Dataset
    from llmrec.llm.prompts import ire_prompt

    items = Dataset(data).items
    texts = [
        " ".join(str(v) for v in row) for row in items[["title", "brand", "category", "description"]].values
    ]
    prompts = [
        ire_prompt(["{Title: x, Visual representation: [VISUAL], Description: y}"]),
        "The brand of the next item to be consumed is. The category of the next item. Unknown",
        '#Question: A user has given high ratings to the following movies: "x". Leverage the information '
        'to predict whether the user would enjoy the movie titled "y" Answer with "Yes" or "No". \\n#Answer:',
        "encoded in the feature with the description as follows: Yes No news article item",
    ]
    return (texts + prompts) * 3


def random_llm(folder: str | Path, shape: str, data: str | Path, device: str = "cpu", seed: int = 0) -> str:
    """A random-weight LLaMA of ``shape`` (:data:`SHAPES`) with :func:`offline_tokenizer` trained on
    ``data``'s words, saved as a folder that ``backbone.llm`` takes; built on ``device`` in bfloat16 for
    the large shape (2.7B weights: 5.4 GB on disk), in float32 for the tiny one."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = Path(folder)
    dims = SHAPES[shape]
    tokenizer = offline_tokenizer(catalog_corpus(data), vocab_size=min(dims["vocab_size"], 4000))
    cfg = LlamaConfig(
        **dims,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.3 if shape == "tiny" else 0.02,  # tiny: attention must carry some signal
    )
    dtype = torch.float32 if shape == "tiny" else torch.bfloat16
    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it is built: 2.7B weights in seconds on a GPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the timed commands load the model again from the folder
    return str(folder)


@dataclasses.dataclass
class GpuTimingConfig:
    """What :func:`run_gpu_timing` times: the LM's shape, where, on how many users and steps."""

    shape: str = "sheared-llama-2.7b"  # a key of SHAPES
    device: str = "cuda"
    dtype: str = "bfloat16"
    lengths: tuple[int, ...] = (10, 20)  # history lengths (items) of the prompt and prefix timings
    users: int = 32  # users per timed point (seconds are reported per 100 users)
    batch_size: int = 8  # prompts per LM forward when scoring, examples per training step
    train_steps: int = 3  # timed training steps per mode (median)
    description_words: int = 40  # words of each synthetic description (the token cost of "description")
    out: str = "runs/gpu-check"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {self.shape!r}")


def run_gpu_timing(cfg: GpuTimingConfig) -> dict[str, Any]:
    """Time a random LM of ``cfg.shape`` on ``cfg.device``: I-LLMRec scoring with description vs image
    prompts at ``cfg.lengths`` items, ranking with and without the shared constant prefix, and one training
    step as two passes vs one pass; -> the figures, also written to ``<out>/timing.json`` and ``.md``."""
    import torch

    from llmrec.data.dataset import Dataset
    from llmrec.experiments.efficiency import EfficiencyConfig, run_efficiency
    from llmrec.experiments.training_bench import TrainingBenchConfig, time_case

    out = Path(cfg.out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmrec-gpu-check-") as tmp:
        longest = max(cfg.lengths)
        data = synthetic_catalog(
            Path(tmp) / "data",
            users=max(cfg.users, 8),
            per_user=longest + 4,
            description_words=cfg.description_words,
        )
        llm = random_llm(Path(tmp) / "llm", cfg.shape, data, cfg.device)
        built = time.perf_counter() - t0
        eff = run_efficiency(
            EfficiencyConfig(
                data=str(data),
                llm=llm,
                representations=["image", "description"],
                lengths=list(cfg.lengths),
                prefix_lengths=list(cfg.lengths),
                users=cfg.users,
                batch_size=cfg.batch_size,
                device=cfg.device,
                dtype=cfg.dtype,  # type: ignore[arg-type]
                out=str(out / "efficiency"),
            )
        )
        bench = TrainingBenchConfig(
            data="", synthetic_data=str(data), cases=["illmrec"], llm=llm, batch_size=cfg.batch_size,
            steps=cfg.train_steps, threads=None, out=str(out),
        )  # fmt: skip
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        step = time_case("illmrec", "synthetic", Dataset(data), bench, device=cfg.device, dtype=cfg.dtype)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    result = {
        "shape": {"name": cfg.shape, **SHAPES[cfg.shape]},
        "config": dataclasses.asdict(cfg),
        "setup_seconds": built,
        "prompt_tokens": eff["prompt_tokens"],
        "tokens_per_item": eff["tokens"],
        "s_per_100_users": eff["time_per_100_users"],
        "ratios": eff["ratios"],
        "shared_prefix": eff["shared_prefix"],
        "training_step": {
            "batch_size": cfg.batch_size,
            "prompt_tokens_first_batch": step["prompt_tokens_first_batch"],
            "modes": {
                m: {k: v[k] for k in ("s_per_step", "positions_per_step", "speedup")}
                for m, v in step["modes"].items()
            },
            "peak_gib": peak,
        },
        "seconds": time.perf_counter() - t0,
    }
    write_json_atomic(out / "timing.json", result)
    write_text_atomic(out / "timing.md", format_timing(result) + "\n")
    return result


def format_timing(r: dict[str, Any]) -> str:
    """The timing figures as Markdown tables."""
    s = r["shape"]
    lines = [
        f"Random LLaMA '{s['name']}' ({s['num_hidden_layers']} layers, hidden {s['hidden_size']}, "
        f"{s['num_attention_heads']} heads, MLP {s['intermediate_size']}, vocabulary {s['vocab_size']}), "
        f"{r['config']['dtype']} on {r['config']['device']}; {r['config']['users']} users per point, "
        f"{r['config']['batch_size']} prompts per forward.",
        "",
    ]
    reps = list(r["s_per_100_users"])
    rows = [
        [rep, str(L), f"{r['prompt_tokens'][rep][L]:.0f}", f"{r['s_per_100_users'][rep][L]:.3f}"]
        for rep in reps
        for L in r["s_per_100_users"][rep]
    ]
    lines += markdown_table("representation | history items | prompt tokens | s / 100 users", "-rrr", rows)
    points = r["shared_prefix"].get("points", {})
    if points:
        lines += [
            "",
            f"Ranking with the shared constant prefix ({r['shared_prefix']['representation']}):",
            "",
        ]
        rows = [
            [str(L), f"{p['prefix_tokens']}", f"{p['s_per_100_users_unshared']:.3f}",
             f"{p['s_per_100_users_shared']:.3f}", f"{p['speedup']:.2f}x"]
            for L, p in points.items()
        ]  # fmt: skip
        lines += markdown_table(
            "history items | prefix tokens | s / 100 users, whole prompt | s / 100 users, shared | speed-up",
            "rrrrr",
            rows,
        )
    step = r["training_step"]
    lines += ["", f"One I-LLMRec training step ({step['batch_size']} examples):", ""]
    rows = [
        [m, f"{v['positions_per_step']:,}", f"{v['s_per_step']:.3f}", f"{v['speedup']:.2f}x"]
        for m, v in step["modes"].items()
    ]
    lines += markdown_table("mode | LM positions / step | s / step | speed-up", "-rrr", rows)
    if step.get("peak_gib") is not None:
        lines.append(f"\nPeak GPU memory of the training step: {step['peak_gib']:.1f} GiB")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Python, the platform and every package of :data:`PACKAGES` (``missing`` when it does not import)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception:
            out[name] = "missing"
        else:
            out[name] = str(getattr(module, "__version__", "?"))
    return out


def device_name(device: str) -> str:
    """The GPU's name (and memory) for a CUDA device, else the device string."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return platform.processor() or device


def write_report(out: str | Path, device: str, parts: dict[str, dict[str, Any]], seconds: float) -> str:
    """``<out>/gpu-check.json`` (each part's outcome and figures, the device, the versions) and
    ``gpu-check.md``; returns the one summary printed at the end of the check."""
    outcomes = {r["outcome"] for r in parts.values()}
    verdict = "failed" if "failed" in outcomes else "passed" if "passed" in outcomes else "not run"
    report = {
        "device": device,
        "device_name": device_name(device),
        "verdict": verdict,  # passed: no part failed and at least one ran; not run: every part skipped
        "passed": verdict == "passed",
        "seconds": seconds,
        "parts": parts,
        "versions": versions(),
    }
    out = Path(out)
    write_json_atomic(out / "gpu-check.json", report)
    summary = format_report(report)
    write_text_atomic(out / "gpu-check.md", summary + "\n")
    return summary


def format_report(report: dict[str, Any]) -> str:
    """One line per part, its outcome, time and what it measured, under the device and the verdict."""
    counts = {
        o: sum(r["outcome"] == o for r in report["parts"].values()) for o in ("passed", "failed", "skipped")
    }
    lines = [
        f"llmrec GPU check on {report['device']} ({report['device_name']}): "
        + report["verdict"].upper()
        + f", {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"in {report['seconds']:.0f} s",
        "",
    ]
    rows = []
    for part, r in report["parts"].items():
        note = r.get("reason") or ", ".join(f"{k} {_short(v)}" for k, v in r.get("figures", {}).items())
        rows.append([part, r["outcome"], f"{r.get('seconds', 0):.1f}", note])
    lines += markdown_table("part | outcome | s | figures or reason", "---l", rows)
    missing = [k for k, v in report["versions"].items() if v == "missing"]
    if missing:
        lines.append(f"\nmissing packages: {', '.join(missing)}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
