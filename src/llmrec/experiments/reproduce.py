"""``llmrec reproduce NAME``: a table or figure of the I-LLMRec or HistLLM paper, from its raw files to its
metrics, in one command.

Each shipped setting (``llmrec/experiments/papers/NAME.yaml``) names its datasets (from ``_datasets.yaml``:
the importer, the raw files in their published layout, the encoders, the describing LLM, the CF run), the
runs of its rows (model + options, mostly ``recipe: paper``) and the paper's reported numbers. The chain per
dataset is prepare -> images -> features -> describe -> CF run -> train each row -> evaluate, every step one
of llmrec's own commands called through its Python function, and every step skipped when its output is
current by what that command records (prepare's meta.json config, the feature store's specs, describe's
manifest, a run's config.json + metrics.json). A step whose output exists under another configuration is
refused, never resumed silently. ``--dry-run`` prints every step's command and configuration, the files and
models still missing (looked for on disk and in the Hugging Face cache, never downloaded), and an estimate
of GPU memory and time (:mod:`llmrec.experiments.estimate`).
"""

from __future__ import annotations

import builtins
import copy
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrec.config import option
from llmrec.errors import ConfigError, LlmrecError

log = logging.getLogger(__name__)

PAPERS = Path(__file__).parent / "papers"
RECORD = (
    "reproduce.json"  # written into each run: which setting, row and dataset made it, and the paper's numbers
)


@dataclass
class ReproduceConfig:
    """``llmrec reproduce``: which paper setting, where its raw files are, where to write."""

    name: str | None = option(None, "shipped setting (llmrec reproduce --list names them)")
    data_root: str | None = option(None, "folder holding each dataset's raw files in its published layout")
    out: str = option("reproduce", "where datasets (<out>/data) and runs (<out>/runs/<setting>) are written")
    dry_run: bool = option(False, "print every step, what is missing and an estimate; run nothing")
    list: bool = option(False, "list the shipped settings and exit")
    swap: dict[str, str] = option(
        factory=dict,
        help="replace a model or encoder everywhere, e.g. princeton-nlp/Sheared-LLaMA-2.7B=/models/x",
    )
    device: str = option("auto", "device of every step that runs a model (auto: cuda when available)")
    only: builtins.list[str] = option(
        factory=builtins.list, help="run only these rows (and the steps they need)"
    )
    datasets: builtins.list[str] = option(factory=builtins.list, help="only these datasets of the setting")
    tflops: float = option(200.0, "effective 16-bit TFLOP/s the time estimate assumes")


# ----------------------------------------------------------------------------- settings


@dataclass
class Row:
    """One run of a setting: a model and its options (a row of the paper's table)."""

    name: str
    model: str
    options: dict[str, Any]
    note: str = ""


@dataclass
class Setting:
    """A shipped setting, resolved: its datasets (with their files, encoders, CF run), rows and numbers."""

    name: str
    paper: str
    source: str
    metrics: list[str]
    datasets: dict[str, dict[str, Any]]
    eval: dict[str, Any]
    runs: dict[str, Row]
    reported: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def available_settings() -> list[str]:
    """The names of the shipped settings (files under ``papers/`` not starting with ``_``)."""
    return sorted(p.stem for p in PAPERS.glob("*.yaml") if not p.name.startswith("_"))


def _read(name: str) -> dict[str, Any]:
    import yaml

    path = PAPERS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(
            f"no shipped setting {name!r}",
            hint="'llmrec reproduce --list' names them: " + ", ".join(available_settings()),
        )
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def load_setting(name: str, swap: dict[str, str] | None = None) -> Setting:
    """A shipped setting with its include/base files merged, sweeps expanded, ``swap`` applied (a model id
    or encoder replaced everywhere by another, e.g. a local folder)."""
    from llmrec.config import merge

    data = _read(name)
    for key in ("include", "base"):
        while key in data:
            parent = _read(data.pop(key))
            data = {**parent, **data}
    base = {}
    all_datasets = {k: v for k, v in _read("_datasets").items() if not k.startswith(".")}
    datasets = {}
    for ds in data.get("datasets") or []:
        if ds not in all_datasets:
            raise ConfigError(
                f"setting {name!r}: unknown dataset {ds!r}", hint=f"one of {sorted(all_datasets)}"
            )
        spec = copy.deepcopy(all_datasets[ds])
        spec["features"] = list(spec.get("features") or []) + list(data.get("features") or [])
        datasets[ds] = spec
    llm_options = data.get("llm_options") or {}
    runs: dict[str, Row] = {}
    for row_name, row in (data.get("runs") or {}).items():
        options = merge(copy.deepcopy(llm_options) if row.get("llm") else {}, row.get("options") or {})
        sweep = row.get("sweep") or {}
        if not sweep:
            runs[row_name] = Row(row_name, row["model"], options, row.get("note", ""))
        for key, values in sweep.items():
            for v in values:
                runs[f"{row_name}-{v}"] = Row(
                    f"{row_name}-{v}", row["model"], {**options, key: v}, row.get("note", "")
                )
    setting = Setting(
        name=name,
        paper=data.get("paper", ""),
        source=data.get("source", ""),
        metrics=list(data.get("metrics") or []),
        datasets=datasets,
        eval=dict(data.get("eval") or base),
        runs=runs,
        reported=data.get("reported") or {},
    )
    return _swapped(setting, swap or {})


def _swapped(setting: Setting, swap: dict[str, str]) -> Setting:
    def sub(value: Any) -> Any:
        if isinstance(value, str):
            return swap.get(value, value)
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v) for v in value]
        return value

    setting.datasets = sub(setting.datasets)
    for row in setting.runs.values():
        row.options = sub(row.options)
    return setting


# ----------------------------------------------------------------------------- the steps


@dataclass
class Step:
    """One step of the chain: the command it equals, its configuration, and how to check and run it."""

    label: str  # "amazon-sports: features siglip"
    command: str  # the equivalent llmrec command line
    config: dict[str, Any]
    current: Callable[[], str | None]  # why it is done (None: it must run); raises when it is refused
    action: Callable[[], Any]
    needs: list[str] = field(default_factory=list)  # files and models, missing or present
    estimate: dict[str, float] | None = None


def _flags(config: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    out = []
    for k, v in config.items():
        if k in skip or v is None:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else f"--no-{k.replace('_', '-')}")
        elif isinstance(v, list):
            out.append(f"{flag} " + " ".join(map(str, v)))
        else:
            out.append(f"{flag} {_quote(v)}")
    return " ".join(out)


def _quote(v: Any) -> str:
    s = str(v)
    return json.dumps(s) if re.search(r"[\s{}'\"]", s) else s


def _options(options: dict[str, Any], prefix: str = "") -> str:
    out = []
    for k, v in options.items():
        if isinstance(v, dict):
            out.append(_options(v, f"{prefix}{k}."))
        else:
            value = json.dumps(v) if isinstance(v, list | bool) else str(v)
            out.append(f"-o {_quote(f'{prefix}{k}={value}')}")
    return " ".join(o for o in out if o)


def model_status(name: str | None) -> str | None:
    """Where a model or encoder is (a local folder, an installed llmrec offline asset, the HF cache) or None
    when it is still missing here; nothing is downloaded."""
    if not name:
        return "none"
    if Path(name).exists():
        return f"local {name}"
    from llmrec.assets import asset, asset_status, offline_asset

    kit = offline_asset(name)
    if kit is not None and asset_status(asset(kit)) == "present":
        return f"installed (llmrec asset {kit})"
    try:
        from huggingface_hub import try_to_load_from_cache

        for file in ("config.json", "modules.json", "preprocessor_config.json"):
            hit = try_to_load_from_cache(name, file)
            if isinstance(hit, str):
                return "Hugging Face cache"
    except Exception:  # an id the hub library refuses: missing here either way
        return None
    return None


def _need_model(name: str | None, what: str) -> list[str]:
    from llmrec.assets import offline_asset

    where = model_status(name)
    if where is None:
        kit = offline_asset(name or "")
        hub = "downloaded from the Hugging Face hub on first use"
        if kit is None:
            where = f"MISSING ({hub})"
        elif "/" in (name or ""):
            where = f"MISSING ('llmrec assets install {kit}' installs it offline; otherwise {hub})"
        else:
            where = f"MISSING (run 'llmrec assets install {kit}')"
    return [f"{what} {name}: {where}"]


def plan(setting: Setting, cfg: ReproduceConfig) -> list[Step]:
    """Every step of ``setting`` in order, for the raw files under ``cfg.data_root`` and outputs under
    ``cfg.out``."""
    steps: list[Step] = []
    root = Path(cfg.data_root or ".")
    out = Path(cfg.out)
    rows = {n: r for n, r in setting.runs.items() if not cfg.only or n in cfg.only}
    if cfg.only and not rows:
        raise ConfigError(
            f"--only {cfg.only}: no such row", hint=f"rows of {setting.name}: {sorted(setting.runs)}"
        )
    for ds_name, ds in setting.datasets.items():
        if cfg.datasets and ds_name not in cfg.datasets:
            continue
        data = out / "data" / ds_name
        steps += _data_steps(ds_name, ds, root / ds["folder"], data, cfg)
        run_root = out / "runs" / setting.name / ds_name
        for row in rows.values():
            steps += _row_steps(setting, ds_name, ds, row, data, run_root, cfg)
    return steps


def _prepare_config(ds: dict[str, Any], raw: Path, data: Path) -> dict[str, Any]:
    files = {k: str(raw / v) for k, v in (ds.get("files") or {}).items()}
    return {"dataset": ds["importer"], "out": str(data), **files, **(ds.get("prepare") or {})}


def _data_steps(name: str, ds: dict[str, Any], raw: Path, data: Path, cfg: ReproduceConfig) -> list[Step]:
    import llmrec

    prep = _prepare_config(ds, raw, data)
    files = [
        f"raw file {p}: " + ("present" if Path(p).exists() else "MISSING")
        for k, p in prep.items()
        if k in ("path", "meta_path", "image_dir")
    ]
    steps = [
        Step(
            f"{name}: prepare",
            f"llmrec prepare {prep['dataset']} " + _flags(prep, ("dataset",)),
            prep,
            lambda: _prepared(prep),
            lambda: llmrec.prepare(**prep),
            files,
        )
    ]
    images = {"data": str(data), **(ds.get("images") or {})}
    steps.append(_command_step(f"{name}: images", "images", images, _images_fetched))
    for f in ds.get("features") or []:
        fc = {"data": str(data), "device": cfg.device, **f}
        label = fc.get("image_name", "image") if fc.get("image") else fc.get("text_name", "text")
        encoder = fc.get("image_encoder") if fc.get("image") else fc.get("text_encoder")
        needs = _need_model(encoder, "encoder") if encoder else []
        steps.append(_command_step(f"{name}: features {label}", "features", fc, _features_current, needs))
    for d in ds.get("describe") or []:
        dc = {"data": str(data), "device": cfg.device, **d}
        needs = _need_model(dc.get("llm"), "describing LLM")
        label = f"{name}: describe {dc.get('name') or dc['mode']}"
        steps.append(_command_step(label, "describe", dc, _described, needs))
    return steps + _cf_steps(name, ds.get("cf"), data, cfg)


_COMMANDS = {  # command -> its function and config, as llmrec's command table names them
    "features": ("llmrec.features.build:build_features", "llmrec.features.build:FeaturesConfig"),
    "describe": ("llmrec.llm.describe:run_describe", "llmrec.llm.describe:DescribeConfig"),
    "images": ("llmrec.data.images:fetch_images", "llmrec.data.images:ImagesConfig"),
}


def _command_step(
    label: str,
    command: str,
    config: dict[str, Any],
    current: Callable[[dict[str, Any]], str | None],
    needs: list[str] | None = None,
) -> Step:
    """A step that runs ``llmrec <command>`` with ``config`` through the command's own function."""
    return Step(
        label,
        f"llmrec {command} " + _flags(config),
        config,
        lambda: current(config),
        lambda: _call(*_COMMANDS[command], config),
        needs or [],
    )


def _cf_steps(name: str, cf: dict[str, Any] | None, data: Path, cfg: ReproduceConfig) -> list[Step]:
    """The CF run whose embeddings the models read (SASRec for I-LLMRec, MF for HistLLM), then its export."""
    if not cf:
        return []
    steps: list[Step] = []
    run = data.parent.parent / "runs" / "cf" / f"{name}-{cf['model']}"
    train = {
        "model": cf["model"],
        "data": str(data),
        "out": str(run),
        "options": cf.get("options") or {},
        "device": cfg.device,
    }
    steps.append(_train_step(f"{name}: CF run {cf['model']}", train, None, []))
    export = {"data": str(data), "cf": str(run), "cf_prefix": cf.get("prefix") or cf["model"]}
    label = f"{name}: features --cf {cf['model']}"
    steps.append(_command_step(label, "features", export, _exported))
    return steps


def _row_steps(
    setting: Setting,
    ds_name: str,
    ds: dict[str, Any],
    row: Row,
    data: Path,
    run_root: Path,
    cfg: ReproduceConfig,
) -> list[Step]:
    run = run_root / row.name

    def fill(value: Any) -> Any:  # "{run:tallrec}": that row's run folder on this dataset
        if isinstance(value, str):
            return re.sub(r"\{run:([^}]+)\}", lambda m: str(run_root / m.group(1)), value)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    options = fill(row.options)
    train = {
        "model": row.model,
        "data": str(data),
        "out": str(run),
        "options": options,
        "device": cfg.device,
        "eval": setting.eval,
    }
    record = {
        "setting": setting.name,
        "paper": setting.paper,
        "source": setting.source,
        "dataset": ds_name,
        "row": row.name,
        "metrics": setting.metrics,
        "reported": (setting.reported.get(ds_name) or {}).get(row.name),
    }
    needs = (
        _need_model((options.get("backbone") or {}).get("llm"), "backbone") if "backbone" in options else []
    )
    label = f"{ds_name}: train {row.name} ({row.model})" + (f" [{row.note}]" if row.note else "")
    step = _train_step(label, train, record, needs)
    from llmrec.experiments.estimate import row_estimate

    step.estimate = row_estimate(row.model, options, ds, cfg.tflops)
    evaluate = Step(
        f"{ds_name}: evaluate {row.name}",
        f"llmrec evaluate {run} " + _flags(setting.eval),
        dict(setting.eval),
        lambda: _evaluated(run, setting),
        lambda: _call_evaluate(run, setting.eval, cfg.device),
    )
    return [step, evaluate]


def _train_step(label: str, train: dict[str, Any], record: dict[str, Any] | None, needs: list[str]) -> Step:
    from llmrec.config import from_dict
    from llmrec.pipeline import TrainConfig

    cfg = from_dict(TrainConfig, train, where=label)  # every row's options checked against its model now
    from llmrec.models.base import model_config

    model_config(cfg.model, cfg.options)
    command = f"llmrec train {cfg.model} --data {cfg.data} --out {cfg.out} --device {cfg.device}"
    if cfg.options:
        command += " " + _options(cfg.options)
    if "eval" in train:
        command += " " + _flags(train["eval"])

    def action() -> Any:
        import llmrec

        given = dict(train)
        run = llmrec.train(
            given.pop("model"),
            data=given.pop("data"),
            out=given.pop("out"),
            options=given.pop("options"),
            **given,
        )
        if record is not None:
            from llmrec.utils.io import write_json_atomic

            write_json_atomic(Path(train["out"]) / RECORD, record)
        return run

    return Step(label, command, train, lambda: _trained(cfg, record), action, needs)


# ----------------------------------------------------------------------------- is a step's output current?


def _prepared(prep: dict[str, Any]) -> str | None:
    from llmrec.config import from_dict
    from llmrec.data.dataset import Dataset, is_dataset_dir
    from llmrec.data.importers import importer_defaults
    from llmrec.data.processing import PrepareConfig

    out = Path(prep["out"])
    if not is_dataset_dir(out):
        return None
    defaults = importer_defaults(prep["dataset"])
    want = from_dict(PrepareConfig, {**defaults, **prep})
    saved = Dataset(out).meta.get("config") or {}
    keys = [
        k
        for k in PrepareConfig.__dataclass_fields__
        if k not in ("out", "overwrite", "engine", "memory_limit", "threads")
    ]
    # a key missing from meta.json was added to llmrec after this dataset was prepared: that is current only
    # where neither the setting nor the importer asks for a value of it (MIND's ctr_history_before: its
    # histories leaked the impression's own clicks before the key existed)
    asked = set(prep) | set(defaults)
    changed = [
        k
        for k in keys
        if (k in saved and _plain(saved[k]) != _plain(getattr(want, k))) or (k not in saved and k in asked)
    ]
    if changed:
        raise LlmrecError(
            f"the dataset was prepared with another configuration ({', '.join(changed)})",
            file=out,
            hint="delete that folder (or give another --out) to prepare it again; it is never replaced silently",
        )
    return "prepared with this configuration"


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _features_current(fc: dict[str, Any]) -> str | None:
    from llmrec.config import from_dict
    from llmrec.features.build import FeaturesConfig, features_to_compute

    if not (Path(fc["data"]) / "items.parquet").exists():
        return None
    return None if features_to_compute(from_dict(FeaturesConfig, fc)) else "in the feature store, current"


def _described(dc: dict[str, Any]) -> str | None:
    from llmrec.llm.describe import texts_paths

    _, manifest = texts_paths(dc["data"], dc.get("name") or dc["mode"])
    if not manifest.exists():
        return None
    saved = json.loads(manifest.read_text())
    if saved.get("llm") != dc.get("llm") or not saved.get("complete"):
        return None  # describe itself regenerates only the rows whose prompt or LLM changed
    return "every item described by this LLM"


def _images_fetched(images: dict[str, Any]) -> str | None:
    return "manifest written" if (Path(images["data"]) / "images" / "manifest.parquet").exists() else None


def _exported(export: dict[str, Any]) -> str | None:
    data, run = Path(export["data"]), Path(export["cf"])
    manifest = data / "features" / f"{export['cf_prefix']}_item.json"
    if not manifest.exists() or not (run / "metrics.json").exists():
        return None
    saved = json.loads(manifest.read_text())
    return "exported from this run" if saved.get("source_run") == str(run.resolve()) else None


def _trained(cfg: Any, record: dict[str, Any] | None) -> str | None:
    from llmrec.pipeline import config_changes, read_run_config, training_finished

    run = Path(cfg.out)
    if not (run / "config.json").exists():
        return None
    changes = config_changes(read_run_config(run), cfg, run / "config.json")
    if changes:
        raise LlmrecError(
            f"the run was trained with another configuration ({', '.join(changes[:5])})",
            file=run,
            hint="delete it (or give another --out) to train it again; a changed setting is never resumed silently",
        )
    if not training_finished(run) or not (run / "metrics.json").exists():
        return None  # llmrec train resumes it
    if record is not None and not (run / RECORD).exists():
        from llmrec.utils.io import write_json_atomic

        write_json_atomic(run / RECORD, record)
    return "trained with this configuration"


def _evaluated(run: Path, setting: Setting) -> str | None:
    path = run / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    splits = setting.eval.get("splits") or ["test"]
    if all(set(setting.metrics) <= set(metrics.get(s) or {}) for s in splits):
        return "metrics.json holds " + ", ".join(setting.metrics)
    return None


def _call(run: str, config: str, values: dict[str, Any]) -> Any:
    """The command function ``run`` ("module:name", as the command table names it) on its config ``config``
    built from ``values``."""
    from llmrec.config import from_dict, load_object

    return load_object(run)(from_dict(load_object(config), dict(values)))


def _call_evaluate(run: Path, eval_options: dict[str, Any], device: str) -> Any:
    import llmrec

    return llmrec.evaluate(run, device=device, **eval_options)


# ----------------------------------------------------------------------------- estimates

# ----------------------------------------------------------------------------- the command


def format_settings() -> str:
    """One line per shipped setting: its name, paper, source and datasets."""
    lines = []
    for name in available_settings():
        s = load_setting(name)
        lines.append(f"{name:<24} {s.paper:<9} {s.source} on {', '.join(s.datasets)}; {len(s.runs)} runs")
    return "\n".join(lines)


def format_plan(setting: Setting, steps: list[Step], cfg: ReproduceConfig) -> str:
    """The dry run: every step's status, command and configuration, what is missing, the estimates."""
    out = [
        f"{setting.name}: {setting.paper} {setting.source}, {len(steps)} steps (dry run: nothing is run or downloaded)"
    ]
    missing: list[str] = []
    total = {"train_hours": 0.0, "eval_hours": 0.0, "train_memory_gib": 0.0}
    for i, step in enumerate(steps, 1):
        try:
            status = step.current()
            status = f"done ({status}): skipped" if status else "to run"
        except LlmrecError as e:
            status = f"REFUSED: {e}"
        except Exception:  # an earlier step has not written what this one reads yet
            status = "to run"
        out.append(f"\n[{i}/{len(steps)}] {step.label}: {status}")
        out.append(f"    $ {step.command}")
        out.append("    config: " + json.dumps(step.config, default=str))
        for need in step.needs:
            out.append(f"    needs {need}")
            if "MISSING" in need:
                missing.append(need)
        if step.estimate:
            e = step.estimate
            out.append(
                f"    estimate: {e['params'] / 1e9:.2f}B parameters, {e['trainable'] / 1e6:.1f}M trained; batch {e['batch']} x "
                f"{e['layout']}; GPU memory ~{e['train_memory_gib']:.1f} GiB training, "
                f"~{e['eval_memory_gib']:.1f} GiB evaluation; ~{e['train_hours']:.2f} h training "
                f"({e['epochs']} epochs x {e['examples']:,} examples), ~{e['eval_hours']:.3f} h evaluation "
                f"at {cfg.tflops:g} TFLOP/s"
            )
            total["train_hours"] += e["train_hours"]
            total["eval_hours"] += e["eval_hours"]
            total["train_memory_gib"] = max(total["train_memory_gib"], e["train_memory_gib"])
    out.append("\nmissing: " + ("nothing" if not missing else f"{len(missing)}"))
    out += [f"  {m}" for m in dict.fromkeys(missing)]
    out.append(
        f"estimate, all LLM runs: ~{total['train_hours']:.1f} h training + ~{total['eval_hours']:.2f} h evaluation at "
        f"{cfg.tflops:g} TFLOP/s; the largest run needs ~{total['train_memory_gib']:.0f} GiB of GPU memory "
        "(formula: docs explanations/estimates.md)"
    )
    return "\n".join(out)


def execute(steps: list[Step]) -> tuple[int, int]:
    """Run every step that is not current, in order, printing progress; (steps run, steps skipped)."""
    done = skipped = 0
    for i, step in enumerate(steps, 1):
        reason = step.current()
        if reason:
            print(f"[{i}/{len(steps)}] {step.label}: skipped ({reason})", flush=True)
            skipped += 1
            continue
        print(f"[{i}/{len(steps)}] {step.label}: running\n    $ {step.command}", flush=True)
        t0 = time.perf_counter()
        step.action()
        print(f"[{i}/{len(steps)}] {step.label}: done in {time.perf_counter() - t0:.1f}s", flush=True)
        done += 1
    return done, skipped


def run_reproduce(cfg: ReproduceConfig) -> str:
    """List the settings, print a dry run, or run every step of a setting that is not current."""
    if cfg.list:
        return format_settings()
    if not cfg.name:
        raise ConfigError("name a setting", hint="'llmrec reproduce --list' names them")
    setting = load_setting(cfg.name, cfg.swap)
    steps = plan(setting, cfg)
    if cfg.dry_run:
        return format_plan(setting, steps, cfg)
    if not cfg.data_root:
        raise ConfigError(
            "--data-root is required to run", hint="the folder holding each dataset's raw files"
        )
    done, skipped = execute(steps)
    runs = Path(cfg.out) / "runs" / setting.name
    return f"{setting.name}: {done} steps run, {skipped} skipped; compare: llmrec table {runs}/*/* --vs-paper"


__all__ = [
    "ReproduceConfig",
    "Row",
    "Setting",
    "Step",
    "available_settings",
    "execute",
    "load_setting",
    "plan",
    "run_reproduce",
]
