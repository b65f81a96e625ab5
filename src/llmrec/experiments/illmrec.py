"""I-LLMRec's experiments as commands: ``llmrec experiments context-sweep`` (Fig. 5) and
``llmrec experiments repr-grid`` (Fig. 6, App. G).

``context-sweep`` trains and evaluates I-LLMRec once per (item representation, context budget). The budget
is the model's ``max_prompt_tokens`` (a prompt longer than it loses its oldest history items), from 4,096
down to 256 tokens, for the image, image + description (I-LLMRec+D), summary (TRSR) and attribute (TALLRec)
representations. Beside hit/NDCG@10 it records how long the evaluated test prompts are and how many of their
history items each budget kept, so the table shows where the budget bites.

``repr-grid`` runs the representation comparison over datasets x LLM backbones x image encoders (Fig. 6:
robustness across datasets; Appendix G: other LLMs and visual encoders). Each encoder's image feature is
computed once into the dataset's feature store (as ``llmrec features --image --image-encoder``) under a name
of its own (``image`` for the default EfficientNet-Lite0, ``image-<encoder>`` otherwise), so several
coexist; a cell whose model reads no image feature is trained once, under the encoder ``none``.

Every point is an ordinary ``llmrec train illmrec`` run in its own folder: an interrupted one resumes, a
finished one that already holds this evaluation is reused without loading its model, and one trained with
other options is refused, naming them (``restart`` starts the points over). With ``seeds`` every point is a
multi-seed run (``seed-<s>/`` folders, as ``llmrec train --seeds``) and the tables show mean ± std. A
representation a dataset cannot provide (no images; generated texts or a feature missing) is refused before
anything trains, in one line naming the command that provides it.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.assets import DEFAULT_IMAGE_ENCODER, DEFAULT_LLM, LLM_ALIASES
from llmrec.config import check_ranges, merge, option, to_dict, unflatten
from llmrec.data.dataset import Dataset
from llmrec.errors import ConfigError, LlmrecError
from llmrec.placement import DtypeName, device_option, dtype_option
from llmrec.utils.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from llmrec.utils.markdown import markdown_table

log = logging.getLogger(__name__)

CONTEXT_REPRESENTATIONS = ("image", "image_description", "summary", "attribute")  # Fig. 5's four models
# Fig. 6: TALLRec (attribute), TRSR (summary), the full description, I-LLMRec (image)
GRID_REPRESENTATIONS = ("attribute", "summary", "description", "image")
IMAGE_REPRESENTATIONS = ("image", "image_description")
METRICS = ("hit@10", "ndcg@10")
_SWEPT = ("representation", "max_prompt_tokens")  # set by context-sweep itself
_GRIDDED = ("representation", "image_feature")  # set by repr-grid itself (and backbone.llm)


@dataclass
class PointSettings:
    """What every run of a sweep shares: its I-LLMRec options, seeds, evaluation and placement."""

    options: dict[str, Any] = option(
        factory=dict, help="I-LLMRec options for every run, e.g. -o epochs=1 -o train_users=64"
    )
    seed: int = option(42, "training seed (without --seeds)", ge=0, lt=2**32)
    seeds: list[int] = option(
        factory=list, help="train every point once per seed into <point>/seed-<s>; tables show mean ± std"
    )
    ranking_users: int | None = option(
        None, "rank for a seeded subset of this many test users (the same users in every run)", ge=1
    )
    full_ranking: bool = option(True, "also rank the whole catalog (full_hit@10, full_ndcg@10)")
    threads: int | None = option(None, "torch CPU threads", ge=1)
    device: str = device_option()
    dtype: DtypeName = dtype_option()
    restart: bool = option(False, "delete what llmrec wrote in every point's run and train it again")

    def __post_init__(self) -> None:
        check_ranges(self)
        self.options = unflatten(self.options)  # "backbone.llm" and {"backbone": {"llm"}} alike
        if len(set(self.seeds)) != len(self.seeds) or not all(0 <= s < 2**32 for s in self.seeds):
            raise ConfigError(f"--seeds must be distinct seeds (0 .. 2**32 - 1), got {self.seeds}")


@dataclass
class ContextSweepConfig(PointSettings):
    """``llmrec experiments context-sweep``: which dataset, representations and budgets."""

    data: str = option("data/synth300", "prepared dataset directory")
    representations: list[str] = option(
        factory=lambda: list(CONTEXT_REPRESENTATIONS), help="item representations (I-LLMRec's)"
    )
    budgets: list[int] = option(
        factory=lambda: [4096, 2048, 1024, 512, 256], help="context budgets: max_prompt_tokens of each run"
    )
    out: str = option(
        "runs/context-sweep", "one run per <representation>-<budget> + context_sweep.md/.csv/.png"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_representations(self.representations)
        if not self.budgets or min(self.budgets) < 1 or len(set(self.budgets)) != len(self.budgets):
            raise ConfigError(f"--budgets must be distinct positive token counts, got {self.budgets}")
        _refuse_options(self.options, _SWEPT, "context-sweep sets it per run (--representations, --budgets)")


@dataclass
class ReprGridConfig(PointSettings):
    """``llmrec experiments repr-grid``: which datasets, backbones, image encoders and representations."""

    data: list[str] = option(factory=lambda: ["data/synth300"], help="prepared dataset directories")
    backbones: list[str] = option(
        factory=lambda: [DEFAULT_LLM], help="causal LMs (alias, folder, hub id or .gguf file): backbone.llm"
    )
    image_encoders: list[str] = option(
        factory=lambda: [DEFAULT_IMAGE_ENCODER],
        help="image encoders (llmrec features --image-encoder), each its own image feature",
    )
    representations: list[str] = option(
        factory=lambda: list(GRID_REPRESENTATIONS), help="item representations (I-LLMRec's)"
    )
    out: str = option("runs/repr-grid", "one run per <dataset>/<backbone>/<encoder>/<representation>")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_representations(self.representations)
        if not self.data or not self.backbones or not self.image_encoders:
            raise ConfigError("give at least one dataset, backbone and image encoder")
        for what, values, name in (
            ("--backbones", self.backbones, backbone_name),
            ("--image-encoders", self.image_encoders, image_feature_name),
            ("--data", self.data, lambda d: Path(d).name),
        ):
            names = [name(v) for v in values]
            if len(set(names)) != len(names):
                raise ConfigError(f"{what}: two values give the same folder name ({names})")
        _refuse_options(
            self.options, _GRIDDED, "repr-grid sets it per cell (--representations, --image-encoders)"
        )
        if "llm" in (self.options.get("backbone") or {}):
            raise ConfigError("-o backbone.llm: repr-grid sets it per cell; give the LMs with --backbones")


def _check_representations(reps: list[str]) -> None:
    from llmrec.llm.prompts import REPRESENTATIONS

    bad = [r for r in reps if r not in REPRESENTATIONS]
    if bad or not reps or len(set(reps)) != len(reps):
        raise ConfigError(f"--representations must be distinct ones of {REPRESENTATIONS}, got {reps}")


def _refuse_options(options: dict[str, Any], keys: tuple[str, ...], why: str) -> None:
    given = [k for k in keys if k in options]
    if given:
        raise ConfigError(f"-o {given[0]}: {why}")


def backbone_name(llm: str) -> str:
    """The folder name of a backbone: the alias, or the file's stem / folder's or hub repo's last part."""
    if llm in LLM_ALIASES:
        return llm
    path = Path(llm.rstrip("/\\"))
    return _slug(path.stem if llm.endswith(".gguf") else path.name)


def image_feature_name(encoder: str) -> str:
    """The feature-store name of an encoder's image feature: ``image`` for the default encoder (what
    ``llmrec features --image`` writes), ``image-<encoder>`` for any other, so several coexist."""
    return "image" if encoder == DEFAULT_IMAGE_ENCODER else "image-" + _slug(Path(encoder.rstrip("/\\")).name)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


# --------------------------------------------------------------------------- what a dataset can provide
def has_images(ds: Dataset, image_feature: str = "image") -> bool:
    """Whether ``ds`` has item images: an image feature already computed, or image files to compute it from."""
    from llmrec.data.images import image_paths

    return (ds.features_dir / f"{image_feature}.json").exists() or any(p is not None for p in image_paths(ds))


def check_available(ds: Dataset, options: dict[str, Any]) -> None:
    """Refuse, in one line and before any training, an I-LLMRec run (``options``) whose representation or
    features ``ds`` cannot provide: no images for an image representation, generated texts or an item
    feature missing, incomplete or stale (each error names the command that provides it)."""
    from llmrec.features.store import load_item_feature
    from llmrec.llm.describe import load_texts, texts_paths
    from llmrec.models.base import build_model

    model = build_model("illmrec", options, ds.n_users, ds.n_items)  # no backbone yet: only the config
    cfg = model.cfg
    rep = cfg.representation
    if rep in IMAGE_REPRESENTATIONS and not has_images(ds, cfg.image_feature):
        raise LlmrecError(
            f"the '{rep}' representation needs item images and this dataset has none",
            file=ds.root,
            hint="choose text representations (attribute, summary, description, title, cf) for it",
        )
    texts = []
    if rep == "summary":
        texts.append((cfg.summary_texts, "summary"))
    if rep in ("description", "image_description"):
        if cfg.description_texts:
            texts.append((cfg.description_texts, "from_title"))
        elif not ds.items["description"].astype(str).str.strip().astype(bool).any():
            raise LlmrecError(
                f"the '{rep}' representation shows item descriptions and this dataset's items have none",
                file=ds.root / "items.parquet",
                hint=f"generate them: llmrec describe --data {ds.root} --mode from_title, "
                "then -o description_texts=from_title",
            )
    for name, mode in texts:
        path, _ = texts_paths(ds.root, name)
        if not path.exists():
            raise LlmrecError(
                f"the '{rep}' representation needs the generated item texts '{name}'",
                file=path,
                hint=f"generate them: llmrec describe --data {ds.root} --mode {mode}"
                + ("" if name == mode else f" --name {name}"),
            )
        load_texts(ds.root, name)  # complete and of these items, else its own one-line error
    for role, name in model.feature_needs().items():  # the model's own list of the features it reads
        load_item_feature(ds, name, ds.n_items, who=f"I-LLMRec ({rep})", option=f"{role}_feature")


def ensure_image_feature(ds: Dataset, encoder: str, device: str = "auto") -> str:
    """The name of ``encoder``'s image feature of ``ds``, computed now when missing; a feature of that
    name from another encoder is refused rather than overwritten."""
    from llmrec.features.build import FeaturesConfig, build_features

    name = image_feature_name(encoder)
    path = ds.features_dir / f"{name}.json"
    if path.exists():
        made_by = read_json(path).get("encoder")
        if made_by != encoder:
            raise LlmrecError(
                f"the image feature '{name}' was computed with {made_by!r}, not {encoder!r}",
                file=path,
                hint=f"name the encoder as it was computed, or recompute it: llmrec features --data {ds.root} "
                f"--image --no-text --image-encoder {encoder} --image-name {name}",
            )
        return name
    log.info("computing the image feature '%s' of %s with %s", name, ds.root, encoder)
    build_features(
        FeaturesConfig(
            data=str(ds.root),
            text=False,
            image=True,
            image_encoder=encoder,
            image_name=name,
            device=device,
        )
    )
    return name


# --------------------------------------------------------------------------- one point: a run (or one per seed)
def train_config(s: PointSettings, data: str, out: Path, options: dict[str, Any]) -> Any:
    """The ``llmrec train illmrec`` configuration of one point: test split only, no CTR metrics."""
    from llmrec.pipeline import EvalConfig, TrainConfig

    return TrainConfig(
        model="illmrec",
        data=data,
        out=str(out),
        seed=s.seed,
        threads=s.threads,
        device=s.device,
        dtype=s.dtype,
        options=options,
        eval=EvalConfig(
            splits=["test"], ctr=False, full_ranking=s.full_ranking, ranking_users=s.ranking_users
        ),
    )


def evaluated(cfg: Any, ds: Dataset) -> bool:
    """Whether ``cfg.out`` holds this configuration's finished run with this evaluation's metrics (nothing to
    do). A run of another configuration is refused as ``llmrec train`` refuses it, naming what changed."""
    from llmrec.pipeline import check_resume, read_run_config

    run_dir = Path(cfg.out)
    if not (run_dir / "config.json").exists() or not check_resume(run_dir, cfg, ds):
        return False
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    same_eval = read_run_config(run_dir).get("eval") == to_dict(cfg.eval)
    return same_eval and all(split in metrics for split in cfg.eval.splits)


def run_point(cfg: Any, ds: Dataset, seeds: list[int], restart: bool = False) -> bool:
    """Train and evaluate one point into ``cfg.out`` (with ``seeds``: ``cfg.out/seed-<s>`` each, through
    :func:`llmrec.pipeline.train_seeds`), skipping runs that are already evaluated. Returns whether
    anything ran."""
    from llmrec.pipeline import SEED_DIR, train, train_seeds

    root = Path(cfg.out)
    if not seeds:
        if not restart and evaluated(cfg, ds):
            return False
        train(cfg, restart=restart)
        return True
    todo = [
        s
        for s in seeds
        if restart or not evaluated(replace(cfg, seed=s, out=str(root / SEED_DIR.format(seed=s))), ds)
    ]
    if todo:
        train_seeds(cfg, todo, restart=restart)
    return bool(todo)


def point_metrics(root: Path) -> dict[str, Any]:
    """One point's test metrics (mean and std over its seeds) as ``llmrec table`` reads them."""
    from llmrec.report import collect

    row = collect([root], "test", list(METRICS)).iloc[0]
    return {k: (None if pd.isna(v) else v) for k, v in row.items() if k not in ("run", "model")}


def prompt_lengths(
    ds: Dataset, s: PointSettings, options: dict[str, Any], budgets: list[int | None]
) -> dict[int | None, dict[str, float]]:
    """The test prompts the evaluation builds (the same seeded users), under each budget: their tokens (mean,
    max) and history items kept (mean), the items they could hold, and the share of prompts the budget cut.
    The prompts do not depend on the weights, so an untrained model of the same options builds them."""
    import torch

    from llmrec.eval.evaluator import seeded_rows
    from llmrec.models.base import build_model, placement_for

    if s.threads:
        torch.set_num_threads(s.threads)
    model = build_model(
        "illmrec", options, ds.n_users, ds.n_items, placement_for("illmrec", s.device, s.dtype)
    )
    model.attach(ds)
    split = ds.split("test")
    rows = seeded_rows(len(split.users), s.ranking_users)
    histories = [np.asarray(split.histories[r])[-model.cfg.test_history :] for r in rows]
    tokenizer = model.backbone.tokenizer
    out = {}
    for budget in budgets:
        tokens, kept = [], []
        with model.switched(max_prompt_tokens=budget):  # read at every prompt build; nothing cached on it
            for start in range(0, len(histories), 64):
                enc = model.build_ire(histories[start : start + 64])
                for ids, mask in zip(enc["ids"], enc["mask"]):
                    tokens.append(int(mask.sum()))
                    text = tokenizer.decode(ids[mask.bool()], skip_special_tokens=False)
                    kept.append(text.count("{Title: "))  # one per item: data text holds no braces
        available = np.array([len(h) for h in histories])
        out[budget] = {
            "prompt_tokens_mean": float(np.mean(tokens)),
            "prompt_tokens_max": int(np.max(tokens)),
            "history_items_mean": float(np.mean(kept)),
            "history_items_available": float(available.mean()),
            "cut_share": float(np.mean(np.array(kept) < available)),
        }
    del model
    return out


# --------------------------------------------------------------------------- Fig. 5: the context budget
def run_context_sweep(cfg: ContextSweepConfig) -> dict[str, Any]:
    """Train and evaluate every (representation, budget) point (reusing finished ones), then write
    context_sweep.json/.md/.csv/.png into ``cfg.out``."""
    ds = Dataset(cfg.data)
    plans = [(rep, merge(cfg.options, {"representation": rep})) for rep in cfg.representations]
    for _, options in plans:  # every representation checked before the first run trains
        check_available(ds, options)
    out = Path(cfg.out)
    points = []
    total = len(plans) * len(cfg.budgets)
    for rep, options in plans:
        lengths = prompt_lengths(ds, cfg, options, cfg.budgets)
        log.info(
            "context-sweep: %s test prompts by budget: %s",
            rep,
            ", ".join(
                f"{b}: {v['prompt_tokens_mean']:.0f} tokens, {v['history_items_mean']:.1f} items"
                for b, v in lengths.items()
            ),
        )
        for budget in cfg.budgets:
            root = out / f"{rep}-{budget}"
            tcfg = train_config(cfg, cfg.data, root, {**options, "max_prompt_tokens": budget})
            n = len(points) + 1
            log.info("context-sweep %d/%d: %s at %d tokens -> %s", n, total, rep, budget, root)
            t0 = time.perf_counter()
            ran = run_point(tcfg, ds, cfg.seeds, cfg.restart)
            point = {"representation": rep, "budget": budget, "run": str(root), **lengths[budget]}
            point.update(point_metrics(root))
            points.append(point)
            log.info(
                "context-sweep %d/%d: %s at %d tokens %s: %s; test prompts %.0f tokens (max %d), %.1f of %.1f "
                "history items",
                n,
                total,
                rep,
                budget,
                f"done in {time.perf_counter() - t0:.0f}s" if ran else "reused",
                _metrics_text(point),
                point["prompt_tokens_mean"],
                point["prompt_tokens_max"],
                point["history_items_mean"],
                point["history_items_available"],
            )
    result = {"config": to_dict(cfg), "points": points}
    write_json_atomic(out / "context_sweep.json", result)
    columns = ["representation", "budget"]
    _write_table(pd.DataFrame(points), columns, out / "context_sweep")
    plot_context_sweep(points, out / "context_sweep.png")
    return result


def _metrics_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{m}={_cell(point.get(m), point.get(f'{m}_std'))}" for m in METRICS)


def _cell(value: Any, std: Any = None, digits: int = 4) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{value:.{digits}f}" + ("" if std is None or pd.isna(std) else f" ± {std:.{digits}f}")


def format_points(df: pd.DataFrame, keys: list[str]) -> str:
    """The Markdown table of a sweep: its key columns, the metrics (mean ± std over seeds) and the test
    prompts' length."""
    cols = [
        *keys,
        "seeds",
        *METRICS,
        "test prompt tokens (mean / max)",
        "history items kept (of)",
        "prompts cut",
    ]
    rows = []
    for _, p in df.iterrows():
        cells = [str(p[k]) for k in keys] + [str(int(p["seeds"]))]
        cells += [_cell(p[m], p.get(f"{m}_std")) for m in METRICS]
        cells += [
            f"{p['prompt_tokens_mean']:.0f} / {int(p['prompt_tokens_max'])}",
            f"{p['history_items_mean']:.1f} ({p['history_items_available']:.1f})",
            f"{100 * p['cut_share']:.0f}%",
        ]
        rows.append(cells)
    return "\n".join(markdown_table(cols, "".join("-" if c in keys else "r" for c in cols), rows))


def _write_table(df: pd.DataFrame, keys: list[str], stem: Path) -> None:
    write_text_atomic(stem.with_suffix(".md"), format_points(df, keys) + "\n")
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)


def plot_context_sweep(points: list[dict[str, Any]], path: Path) -> None:
    """hit@10 and NDCG@10 against the budget (log2 axis), one line per representation."""
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    budgets = sorted({p["budget"] for p in points})
    for ax, metric in zip(axes, METRICS):
        for rep in dict.fromkeys(p["representation"] for p in points):
            pts = sorted(
                (p["budget"], p[metric], p.get(f"{metric}_std")) for p in points if p["representation"] == rep
            )
            std = [0.0 if e is None or pd.isna(e) else e for *_, e in pts]
            ax.errorbar(
                [b for b, *_ in pts], [v for _, v, _ in pts], yerr=std, fmt="o-", capsize=3, label=rep
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets])
        ax.set_xlabel("context budget (max prompt tokens)")
        ax.set_ylabel(f"test {metric}")
        ax.legend()
    save_figure(fig, path)


# --------------------------------------------------------------------------- Fig. 6 / App. G: the grid
def grid_cells(cfg: ReprGridConfig) -> list[dict[str, Any]]:
    """Every (dataset, backbone, encoder, representation) run with its options, each checked against what its
    dataset provides (image features are computed here when missing) before any of them trains."""
    from llmrec.models.base import model_config

    cells = []
    for data in cfg.data:
        ds = Dataset(data)
        for llm in cfg.backbones:
            for rep in cfg.representations:
                options = merge(cfg.options, {"backbone": {"llm": llm}, "representation": rep})
                reads_image = (
                    rep in IMAGE_REPRESENTATIONS or "image" in model_config("illmrec", options).features
                )
                if reads_image and not has_images(ds):
                    raise LlmrecError(
                        f"'{rep}' reads the image feature (representation or -o features) and this dataset "
                        "has no item images",
                        file=ds.root,
                        hint="drop it or grid this dataset on its own with text representations and "
                        "-o 'features=[text]'",
                    )
                for encoder in cfg.image_encoders if reads_image else ["none"]:
                    cells.append(
                        {
                            "dataset": ds.root.name,
                            "data": data,
                            "llm": llm,
                            "backbone": backbone_name(llm),
                            "encoder": encoder,
                            "representation": rep,
                            "options": options,
                        }
                    )
    for cell in cells:  # the cheap checks first: a missing text must not wait for an image encoder
        if cell["encoder"] == "none":
            check_available(Dataset(cell["data"]), cell["options"])
    for cell in cells:
        if cell["encoder"] != "none":
            ds = Dataset(cell["data"])
            name = ensure_image_feature(ds, cell["encoder"], cfg.device)
            cell["options"] = {**cell["options"], "image_feature": name}
            check_available(ds, cell["options"])
    return cells


def run_repr_grid(cfg: ReprGridConfig) -> dict[str, Any]:
    """Train and evaluate every cell (reusing finished ones), then write repr_grid.json/.md/.csv/.png."""
    out = Path(cfg.out)
    cells = grid_cells(cfg)
    points = []
    for n, cell in enumerate(cells, 1):
        ds = Dataset(cell["data"])
        enc = _slug(Path(cell["encoder"].rstrip("/\\")).name)
        root = out / cell["dataset"] / cell["backbone"] / enc / cell["representation"]
        key = f"{cell['dataset']} / {cell['backbone']} / {enc} / {cell['representation']}"
        log.info("repr-grid %d/%d: %s -> %s", n, len(cells), key, root)
        t0 = time.perf_counter()
        ran = run_point(train_config(cfg, cell["data"], root, cell["options"]), ds, cfg.seeds, cfg.restart)
        budget = _resolved_budget(cell["options"])
        lengths = prompt_lengths(ds, cfg, cell["options"], [budget])[budget]
        point = {
            "dataset": cell["dataset"],
            "backbone": cell["backbone"],
            "encoder": enc,
            "representation": cell["representation"],
            "run": str(root),
            **lengths,
        }
        point.update(point_metrics(root))
        points.append(point)
        done = f"done in {time.perf_counter() - t0:.0f}s" if ran else "reused"
        log.info("repr-grid %d/%d: %s %s: %s", n, len(cells), key, done, _metrics_text(point))
    result = {"config": to_dict(cfg), "points": points}
    write_json_atomic(out / "repr_grid.json", result)
    _write_table(
        pd.DataFrame(points), ["dataset", "backbone", "encoder", "representation"], out / "repr_grid"
    )
    plot_repr_grid(points, out / "repr_grid.png")
    return result


def _resolved_budget(options: dict[str, Any]) -> int | None:
    """The point's ``max_prompt_tokens`` (None: no budget but the LM's context)."""
    from llmrec.models.base import model_config

    return model_config("illmrec", options).max_prompt_tokens


def plot_repr_grid(points: list[dict[str, Any]], path: Path, metric: str = "ndcg@10") -> None:
    """Grouped bars of ``metric``: one group per dataset / backbone / encoder, one bar per representation
    (cells without an image feature, encoder ``none``, are drawn in every group of their dataset and backbone)."""
    from llmrec.plots import pyplot, save_figure

    plt = pyplot()
    # in the order of the command's lists
    encoded = dict.fromkeys(
        (p["dataset"], p["backbone"], p["encoder"]) for p in points if p["encoder"] != "none"
    )
    groups = list(encoded) or list(dict.fromkeys((p["dataset"], p["backbone"], "none") for p in points))
    reps = list(dict.fromkeys(p["representation"] for p in points))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups) * max(1, len(reps)) / 2), 4))
    width = 0.8 / max(len(reps), 1)
    for j, rep in enumerate(reps):
        xs, ys, errs = [], [], []
        for g, (dataset, backbone, encoder) in enumerate(groups):
            match = [
                p
                for p in points
                if (p["dataset"], p["backbone"], p["representation"]) == (dataset, backbone, rep)
                and p["encoder"] in (encoder, "none")
            ]
            if match:
                xs.append(g + (j - (len(reps) - 1) / 2) * width)
                ys.append(match[0][metric] or 0.0)
                std = match[0].get(f"{metric}_std")
                errs.append(0.0 if std is None or pd.isna(std) else std)
        ax.bar(xs, ys, width=width, yerr=errs, capsize=3, label=rep)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{d}\n{b}\n{e}" for d, b, e in groups], fontsize=8)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"I-LLMRec item representations: {metric}")
    ax.legend(fontsize=8)
    save_figure(fig, path)
