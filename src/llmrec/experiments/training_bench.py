"""``llmrec experiments bench-training``: seconds per LLM training step, the ways one step can run, side
by side.

I-LLMRec with ILA runs two prompts per example that share their start (the chat template, the instruction,
the history): as two passes (as before: each prompt whole, ILA through the LM's own loss over every
position), as two passes reading the vocabulary head only at the answer, as one pass over the shared history
(tree attention mask), and as one pass after the constant prefix's cached KV. Without ILA, and for HistLLM's
step 2 (LoRA frozen), the only saving is the constant prefix. Every mode of a case times the same batches,
interleaved (mode A step 1, mode B step 1, ...) after one untimed step each, so drift hits all alike;
``positions`` counts what the LM computed per step (padding included). A step is the trainer's own
(:class:`~llmrec.training.loop.TrainingStep`, on the model prepared and the stage set up as ``llmrec train``
does): the batch's move to the device, autocast, backward, clipping, the stage's optimiser and schedule.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmrec.assets import DEFAULT_LLM
from llmrec.config import option
from llmrec.errors import ConfigError
from llmrec.utils.io import write_json_atomic, write_text_atomic
from llmrec.utils.markdown import markdown_table
from llmrec.utils.timing import clock

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from llmrec.data.dataset import Dataset
    from llmrec.models.neural import Stage

log = logging.getLogger(__name__)

CASES = ("illmrec", "illmrec-no-ila", "histllm-step2")

# the options of each case at each setting: the demo's quick presets (MovieLens-100K, no images) and the
# synthetic experiments' (experiments/illmrec_synthetic.sh, experiments/histllm_synthetic.sh)
SETTINGS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "demo": {
        "illmrec": ("illmrec", {"representation": "attribute", "features": ["cf", "text"]}),
        "illmrec-no-ila": (
            "illmrec",
            {"representation": "attribute", "features": ["cf", "text"], "ila": False},
        ),
        "histllm-step2": ("histllm", {"ke": False}),
    },
    "synthetic": {
        "illmrec": ("illmrec", {"features": ["image"], "window_short": 2, "window_long": 4}),
        "illmrec-no-ila": (
            "illmrec",
            {"features": ["image"], "window_short": 2, "window_long": 4, "ila": False},
        ),
        "histllm-step2": ("histllm", {"ke": False, "cf": "none", "image": True, "noun": "item"}),
    },
}


@dataclass
class TrainingBenchConfig:
    """What to time."""

    data: str | None = option("data/ml-100k", "the demo's dataset (its features: make demo); '' to skip")
    synthetic_data: str | None = option(
        "data/synth300", "the synthetic catalog with image features ('' to skip; see experiments/*.sh)"
    )
    cases: list[str] = option(factory=lambda: list(CASES), help=f"what to time, among {CASES}")
    llm: str = option(DEFAULT_LLM, "causal LM (offline alias, folder, hub id or .gguf)")
    batch_size: int = option(8, "training examples per step", ge=1)
    steps: int = option(3, "timed steps per mode (different batches, the same for every mode)", ge=1)
    threads: int | None = option(1, "torch CPU threads", ge=1)
    seed: int = option(0, "seed of the weights and the batches", ge=0, lt=2**32)
    out: str = option("runs/bench-training", "folder for bench_training.json, .md, .png")

    def __post_init__(self) -> None:
        bad = [c for c in self.cases if c not in CASES]
        if bad or not self.cases:
            raise ConfigError(f"cases must be among {CASES}, got {self.cases}")
        if not self.data and not self.synthetic_data:
            raise ConfigError("nothing to time: give data or synthetic_data")


def two_pass_loss(model: Any, batch: dict[str, Any]) -> Any:
    """I-LLMRec's training loss as it was computed before one-pass training (the reference of the exactness
    tests and of the benchmark): the IRE prompt whole, then the ILA prompt whole through the LM's own loss,
    which projects every position onto the vocabulary."""
    bb = model.backbone
    ire_inj, ila_inj = model.inject(
        [batch["ire_visual"], batch["ila_visual"]],
        [batch["ire_cf"], batch["ila_cf"]],
        [len(batch["ire_ids"]), 0],
    )
    hidden = bb.hidden(batch["ire_ids"], batch["ire_mask"], ire_inj)  # (B, T, d)
    state = bb.last_hidden_at(hidden, batch["ire_ids"], "[REC]").float()  # (B, d)
    ila = bb(batch["ila_ids"], batch["ila_mask"], ila_inj, labels=batch["ila_labels"]).loss.float()
    return model.ire_loss(batch, state) + ila


def _modes(case: str, model: Any) -> dict[str, tuple[dict[str, bool], Callable[[Any], Any]]]:
    """Each mode: the model options it sets and the loss it runs."""
    if case == "illmrec":
        return {
            "two passes, as before": (
                {"one_pass": False, "shared_prefix": False},
                lambda b: two_pass_loss(model, b),
            ),
            "two passes": ({"one_pass": False, "shared_prefix": False}, model.loss),
            "one pass": ({"one_pass": True, "shared_prefix": False}, model.loss),
            "one pass + cached prefix": ({"one_pass": True, "shared_prefix": True}, model.loss),
        }
    return {
        "whole prompt": ({"shared_prefix": False}, model.loss),
        "cached prefix": ({"shared_prefix": True}, model.loss),
    }


def run_training_bench(cfg: TrainingBenchConfig) -> dict[str, Any]:
    import torch

    from llmrec.data.dataset import Dataset

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    result: dict[str, Any] = {"config": cfg.__dict__, "threads": torch.get_num_threads(), "cases": []}
    for setting, data in (("demo", cfg.data), ("synthetic", cfg.synthetic_data)):
        if not data:
            continue
        ds = Dataset(data)
        for case in cfg.cases:
            log.info("timing %s at the %s setting (%s)", case, setting, data)
            result["cases"].append({"setting": setting, "data": data, **time_case(case, setting, ds, cfg)})
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench_training.json", result)
    write_text_atomic(out / "bench_training.md", format_training_bench(result) + "\n")
    plot_training_bench(result, out / "bench_training.png")
    return result


def time_case(
    case: str,
    setting: str,
    ds: Dataset,
    cfg: TrainingBenchConfig,
    device: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Every mode of ``case`` (:data:`CASES`) at ``setting`` (:data:`SETTINGS`) on ``ds``, with the model
    placed on ``device`` in ``dtype`` (None: ``auto``, as ``llmrec train``) -> the case's options and the
    figures of each mode."""
    import torch

    from llmrec.models.base import build_model, placement_for
    from llmrec.training.loop import prepare_training, training_stage

    name, options = SETTINGS[setting][case]
    options = {**options, "batch_size": cfg.batch_size, "backbone": {"llm": cfg.llm}}
    torch.manual_seed(cfg.seed)
    model = build_model(name, options, ds.n_users, ds.n_items, placement_for(name, device, dtype))
    accelerator, device, stages = prepare_training(model, ds)  # as llmrec train prepares it
    stage = next(s for s in stages if s.name in ("end2end", "step2"))  # what the LLM trains in
    with training_stage(model, stage):  # its parameters trainable, its context held, as in training
        timed = _time_modes(case, f"{case} ({setting})", model, ds, cfg, stage, accelerator, device)
    return {"case": case, "model": name, "options": options, **timed}


def _time_modes(
    case: str,
    label: str,
    model: Any,
    ds: Dataset,
    cfg: TrainingBenchConfig,
    stage: Stage,
    accelerator: Accelerator,
    device: torch.device,
) -> dict[str, Any]:
    """Every mode of ``case``: the trainer's step, each mode with its own optimiser (the one the trainer
    gives the stage), on the same batches, interleaved."""
    from tqdm.auto import tqdm

    from llmrec.training.loop import TrainingStep

    batches = []
    for batch in stage.batches(ds, np.random.default_rng(cfg.seed)):
        batches.append(batch)
        if len(batches) == cfg.steps + 1:
            break
    modes = _modes(case, model)
    steps = {
        mode: TrainingStep(model, ds, dataclasses.replace(stage, loss=loss_fn), accelerator, device)
        for mode, (_, loss_fn) in modes.items()
    }
    positions: dict[str, int] = {}
    seen: list[int] = []
    hook = model.backbone.model.get_decoder().register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["inputs_embeds"].shape[:2].numel()), with_kwargs=True
    )

    def step(mode: str, batch: dict[str, Any]) -> float:
        with model.switched(**modes[mode][0]):
            t0 = clock(model.placement.device)
            steps[mode](batch)
            return clock(model.placement.device) - t0

    model.train()
    times: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for mode in modes:  # untimed: the first step builds the prefix cache, warms the allocator
            step(mode, batches[0])
            seen.clear()
            step(mode, batches[0])
            positions[mode] = sum(seen)
        bar = tqdm(total=cfg.steps * len(modes), desc=label, leave=False, disable=None)
        for batch in batches[1:]:
            for mode in modes:
                times[mode].append(step(mode, batch))
                bar.update()
        bar.close()
    finally:
        hook.remove()
    first = next(iter(modes))
    med = {m: statistics.median(t) for m, t in times.items()}
    prompts = {"ire_mask": "ire", "ila_mask": "ila", "mask": "prompt"}  # I-LLMRec's two, HistLLM's one
    tokens = {name: int(batches[0][k].sum()) for k, name in prompts.items() if k in batches[0]}
    return {
        "prompt_tokens_first_batch": tokens,
        "modes": {
            m: {
                "s_per_step": med[m],
                "times": times[m],
                "positions_per_step": positions[m],
                "speedup": med[first] / med[m],
            }
            for m in modes
        },
    }


def format_training_bench(r: dict[str, Any]) -> str:
    lines = [
        f"seconds per training step ({r['config']['batch_size']} examples, {r['threads']} torch threads, "
        f"{r['config']['llm']}; median of {r['config']['steps']} steps per mode, modes interleaved)",
        "",
    ]
    rows = [
        [c["setting"], c["case"], mode, f"{m['positions_per_step']:,}"]
        + [f"{m['s_per_step']:.2f}", f"{m['speedup']:.2f}x"]
        for c in r["cases"]
        for mode, m in c["modes"].items()
    ]
    header = "setting | case | mode | LM positions / step | s / step | speed-up"
    lines += markdown_table(header, "---rrr", rows)
    return "\n".join(lines)


def plot_training_bench(r: dict[str, Any], path: Path) -> None:
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    rows = [
        (f"{c['setting']} {c['case']}: {mode}", m["s_per_step"])
        for c in r["cases"]
        for mode, m in c["modes"].items()
    ]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.2))
    ax.barh([k for k, _ in rows][::-1], [v for _, v in rows][::-1], color="tab:blue")
    ax.set_xlabel("seconds per training step")
    ax.set_title(f"one LLM training step of {r['config']['batch_size']} examples")
    save_figure(fig, path)
