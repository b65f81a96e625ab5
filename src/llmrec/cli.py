"""The ``llmrec`` command line: one subcommand per pipeline stage, flags generated from the typed configs.

Every subcommand accepts ``--config FILE`` (YAML/JSON with the same keys as the flags); flags given on
the command line override the file. Bad input ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from llmrec import __version__
from llmrec.config import add_arguments, resolve
from llmrec.errors import LlmrecError

log = logging.getLogger("llmrec")


def _cmd_prepare(args: argparse.Namespace) -> int:
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


def _cmd_images(args: argparse.Namespace) -> int:
    from llmrec.data.images import ImagesConfig, fetch_images

    cfg = resolve(ImagesConfig, args, args.config)
    summary = fetch_images(cfg)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    from llmrec.features.build import FeaturesConfig, build_features

    cfg = resolve(FeaturesConfig, args, args.config)
    for name, m in build_features(cfg).items():
        print(
            f"{name}: {m['count']:,} x {m['dim']} {m['dtype']} from {m['encoder']} ({m['missing']:,} missing) sha256 {m['sha256'][:12]}"
        )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from llmrec.pipeline import EvalConfig, TrainConfig, train

    cfg = resolve(TrainConfig, args, args.config, nested={"eval": EvalConfig})
    from llmrec.models.base import get_model_class

    get_model_class(cfg.model)  # a misspelt model name is refused at once, before torch loads
    if args.print_config:
        print(json.dumps({**cfg.resolved(), **({"seeds": args.seeds} if args.seeds else {})}, indent=2))
        return 0
    from accelerate import PartialState

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


def _cmd_prompts(args: argparse.Namespace) -> int:
    from llmrec.pipeline import TrainConfig, show_prompts

    cfg = resolve(TrainConfig, args, args.config)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from llmrec.config import load_file, merge, to_dict
    from llmrec.pipeline import EvalConfig, evaluate_run, evaluation_config

    given = load_file(args.config) if args.config else {}
    overrides = merge(given, {k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__})
    if args.print_config:
        cfg = evaluation_config(args.run, overrides, args.data)
        cfg.device, cfg.dtype = args.device, args.dtype
        print(json.dumps({**cfg.resolved(), "eval": to_dict(cfg.eval)}, indent=2))
        return 0
    evaluate_run(args.run, overrides, args.data, device=args.device, dtype=args.dtype)
    _print_metrics(args.run)
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from llmrec.recommend import RecommendConfig, load_for, read_users_file, write_batch

    cfg = resolve(RecommendConfig, args, args.config)  # k and who are checked before a model loads
    model = load_for(cfg)
    if cfg.batch:
        users = model.user_ids if cfg.all_users else read_users_file(cfg.users_file, model)  # type: ignore[arg-type]
        summary = write_batch(model, users, cfg)
        resumed = f" (resumed after {summary['resumed_users']:,} users)" if summary["resumed_users"] else ""
        print(f"written {summary['out']}: {summary['rows']:,} rows for {summary['users']:,} users{resumed}")
        return 0
    who = {"user_ids": [cfg.user]} if cfg.user is not None else {"histories": [cfg.items]}
    table = model.recommend(**who, k=cfg.k, exclude_history=cfg.exclude_history)
    recs = table[["rank", "item_id", "title", "score"]].to_dict("records")
    if cfg.json:
        print(json.dumps(recs, indent=2))
    else:
        for r in recs:
            print(f"{r['rank']:>3}. {r['item_id']}\t{r['title']}\t{r['score']:.4f}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from llmrec.experiments.probe import ProbeConfig, format_probe, run_probe

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(format_probe(run_probe(resolve(ProbeConfig, args, args.config))), end="")
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from llmrec.llm.describe import DescribeConfig, run_describe

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = run_describe(resolve(DescribeConfig, args, args.config))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_efficiency(args: argparse.Namespace) -> int:
    from llmrec.experiments.efficiency import EfficiencyConfig, format_efficiency, run_efficiency

    cfg = resolve(EfficiencyConfig, args, args.config)
    print(format_efficiency(run_efficiency(cfg)))
    print(f"written {cfg.out}/efficiency.json, efficiency.md, efficiency.png")
    return 0


def _cmd_bench_training(args: argparse.Namespace) -> int:
    from llmrec.experiments.training_bench import (
        TrainingBenchConfig,
        format_training_bench,
        run_training_bench,
    )

    cfg = resolve(TrainingBenchConfig, args, args.config)
    print(format_training_bench(run_training_bench(cfg)))
    print(f"written {cfg.out}/bench_training.json, bench_training.md, bench_training.png")
    return 0


def _cmd_bench_prepare(args: argparse.Namespace) -> int:
    from llmrec.experiments.prepare_bench import PrepareBenchConfig, format_prepare_bench, run_prepare_bench

    cfg = resolve(PrepareBenchConfig, args, args.config)
    result = run_prepare_bench(cfg)
    print(format_prepare_bench(result))
    print("written " + ", ".join(result["files"]))
    return 0


def _cmd_ctr_efficiency(args: argparse.Namespace) -> int:
    from llmrec.experiments.ctr import CtrEfficiencyConfig, format_ctr_efficiency, run_ctr_efficiency

    cfg = resolve(CtrEfficiencyConfig, args, args.config)
    print(format_ctr_efficiency(run_ctr_efficiency(cfg)))
    print(f"written {cfg.out}/ctr_efficiency.json, ctr_efficiency.md and its plots (.png)")
    return 0


def _cmd_history_sweep(args: argparse.Namespace) -> int:
    from llmrec.experiments.ctr import HistorySweepConfig, format_history_sweep, run_history_sweep

    cfg = resolve(HistorySweepConfig, args, args.config)
    print(format_history_sweep(run_history_sweep(cfg)))
    print(f"written {cfg.out}/history_sweep.json, history_sweep.md, history_sweep.png")
    return 0


def _cmd_context_sweep(args: argparse.Namespace) -> int:
    from llmrec.experiments.illmrec import ContextSweepConfig, run_context_sweep

    cfg = resolve(ContextSweepConfig, args, args.config)
    run_context_sweep(cfg)
    print((Path(cfg.out) / "context_sweep.md").read_text(), end="")
    print(f"written {cfg.out}/context_sweep.json, context_sweep.md, context_sweep.csv, context_sweep.png")
    return 0


def _cmd_repr_grid(args: argparse.Namespace) -> int:
    from llmrec.experiments.illmrec import ReprGridConfig, run_repr_grid

    cfg = resolve(ReprGridConfig, args, args.config)
    run_repr_grid(cfg)
    print((Path(cfg.out) / "repr_grid.md").read_text(), end="")
    print(f"written {cfg.out}/repr_grid.json, repr_grid.md, repr_grid.csv, repr_grid.png")
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from llmrec.report import TableConfig, make_table

    print(make_table(resolve(TableConfig, args, args.config)))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from llmrec.experiments.bench import BenchConfig, format_bench, run_bench

    print(format_bench(run_bench(resolve(BenchConfig, args, args.config))))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from llmrec.experiments.demo import DemoConfig, run_demo

    run_demo(resolve(DemoConfig, args, args.config))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from llmrec.serve import ServeConfig, serve

    serve(resolve(ServeConfig, args, args.config))
    return 0


def _cmd_bench_serve(args: argparse.Namespace) -> int:
    from llmrec.experiments.serve_bench import BenchServeConfig, format_bench_serve, run_bench_serve

    cfg = resolve(BenchServeConfig, args, args.config)
    result = run_bench_serve(cfg)
    print(format_bench_serve(result))
    print(f"written {result['out']}/bench_serve.json, bench_serve.md, bench_serve.png")
    return 0


def _print_metrics(run_dir: Any) -> None:
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    for split, values in metrics.items():
        print(f"{split}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
    print(f"run directory: {run_dir}")


def _add_placement(p: argparse.ArgumentParser) -> None:
    """--device and --dtype of the commands that load a saved model."""
    from llmrec.devices import DEVICE_HELP, DTYPES

    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="LLM backbone weights (auto: bf16 on CUDA, fp32 on CPU)",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--option",
        dest="options",
        action="append",
        metavar="KEY=VALUE",
        default=argparse.SUPPRESS,
        help="model option (repeatable)",
    )


def _setup_prepare(p: argparse.ArgumentParser) -> None:
    from llmrec.data.importers import available_importers
    from llmrec.data.processing import PrepareConfig

    p.add_argument("dataset", help="importer name: " + ", ".join(available_importers()))
    add_arguments(p, PrepareConfig, skip=("dataset",))


def _setup_images(p: argparse.ArgumentParser) -> None:
    from llmrec.data.images import ImagesConfig

    add_arguments(p, ImagesConfig)


def _setup_features(p: argparse.ArgumentParser) -> None:
    from llmrec.features.build import FeaturesConfig

    add_arguments(p, FeaturesConfig)


def _setup_train(p: argparse.ArgumentParser) -> None:
    from llmrec.models.base import available_models
    from llmrec.pipeline import EvalConfig, TrainConfig

    p.add_argument("model", help="model name: " + ", ".join(available_models()))
    _add_model_options(p)
    add_arguments(p, TrainConfig, skip=("model", "options"))
    add_arguments(p, EvalConfig)
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
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


def _setup_prompts(p: argparse.ArgumentParser) -> None:
    from llmrec.pipeline import TrainConfig

    p.add_argument("model", help="an LLM model: illmrec, histllm or one of its presets (tallrec, collm, ...)")
    _add_model_options(p)
    add_arguments(p, TrainConfig, skip=("model", "options", "out", "log_with"))
    p.add_argument("--user", help="external user id (default: the dataset's first user)")
    p.add_argument("--json", action="store_true", help="print JSON (text, token counts) instead")


def _setup_evaluate(p: argparse.ArgumentParser) -> None:
    from llmrec.pipeline import EvalConfig

    p.add_argument("run", help="run directory written by 'llmrec train'")
    p.add_argument("--data", default=None, help="the run's dataset moved: its new folder (checksum verified)")
    add_arguments(p, EvalConfig)
    _add_placement(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def _setup_recommend(p: argparse.ArgumentParser) -> None:
    from llmrec.recommend import RecommendConfig

    p.add_argument("run", nargs="?", default=argparse.SUPPRESS, help="run directory of a trained model")
    add_arguments(p, RecommendConfig, skip=("run",))


def _setup_probe(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.probe import ProbeConfig

    add_arguments(p, ProbeConfig)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _setup_describe(p: argparse.ArgumentParser) -> None:
    from llmrec.llm.describe import DescribeConfig

    add_arguments(p, DescribeConfig)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _setup_efficiency(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.efficiency import EfficiencyConfig

    add_arguments(p, EfficiencyConfig)


def _setup_ctr_efficiency(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.ctr import CtrEfficiencyConfig

    add_arguments(p, CtrEfficiencyConfig)


def _setup_history_sweep(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.ctr import HistorySweepConfig

    add_arguments(p, HistorySweepConfig)


def _setup_context_sweep(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.illmrec import ContextSweepConfig

    _add_model_options(p)
    add_arguments(p, ContextSweepConfig, skip=("options",))


def _setup_repr_grid(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.illmrec import ReprGridConfig

    _add_model_options(p)
    add_arguments(p, ReprGridConfig, skip=("options",))


def _setup_table(p: argparse.ArgumentParser) -> None:
    from llmrec.report import TableConfig

    p.add_argument("runs", nargs="+", help="run directories")
    add_arguments(p, TableConfig, skip=("runs",))


def _setup_bench(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.bench import BenchConfig

    _add_model_options(p)
    add_arguments(p, BenchConfig, skip=("options",))


def _setup_bench_training(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.training_bench import TrainingBenchConfig

    add_arguments(p, TrainingBenchConfig)


def _setup_bench_prepare(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.prepare_bench import PrepareBenchConfig

    add_arguments(p, PrepareBenchConfig)


def _setup_demo(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.demo import DemoConfig

    add_arguments(p, DemoConfig)


def _setup_serve(p: argparse.ArgumentParser) -> None:
    from llmrec.serve import ServeConfig

    p.add_argument("run", nargs="?", default=argparse.SUPPRESS, help="run directory of a trained model")
    add_arguments(p, ServeConfig, skip=("run",))


def _setup_bench_serve(p: argparse.ArgumentParser) -> None:
    from llmrec.experiments.serve_bench import BenchServeConfig

    p.add_argument("run", nargs="?", default=argparse.SUPPRESS, help="run directory of a trained model")
    add_arguments(p, BenchServeConfig, skip=("run",))


Setup = Callable[[argparse.ArgumentParser], None]
# name, one-line help, what it runs, its flags (added only when the command is used: a command's options
# import only its own module, so `llmrec --help` or `llmrec table` never imports torch)
COMMANDS: list[tuple[str, str, Callable[[argparse.Namespace], int], Setup]] = [
    ("prepare", "import a dataset, filter it, split it and freeze evaluation candidates", _cmd_prepare, _setup_prepare),
    ("images", "download or collect item images; record every failure in a manifest", _cmd_images, _setup_images),
    ("features", "compute item text/image features into the dataset's feature store", _cmd_features, _setup_features),
    ("train", "train a model, save it and evaluate it into a run directory", _cmd_train, _setup_train),
    ("evaluate", "re-evaluate a saved run (metrics.json is rewritten)", _cmd_evaluate, _setup_evaluate),
    ("prompts", "the exact prompts (training, ILA, evaluation) an LLM model builds for a user, with token counts", _cmd_prompts, _setup_prompts),
    ("recommend", "top-k catalog items for a user id or an ad-hoc history of item ids", _cmd_recommend, _setup_recommend),
    ("probe", "linear probe: which item attributes a model's user states encode (I-LLMRec [REC])", _cmd_probe, _setup_probe),
    ("describe", "generate item texts with an LLM (TRSR summaries, HistLLM descriptions)", _cmd_describe, _setup_describe),
    ("efficiency", "tokens and inference time of item representations, side by side", _cmd_efficiency, _setup_efficiency),
    ("ctr-efficiency", "HistLLM with vs without UHEM: prompt tokens, inference and training time", _cmd_ctr_efficiency, _setup_ctr_efficiency),
    ("history-sweep", "AUC/UAUC against the number of history items (TALLRec vs HistLLM)", _cmd_history_sweep, _setup_history_sweep),
    ("context-sweep", "I-LLMRec hit/NDCG@10 and prompt tokens as the context budget shrinks, per representation", _cmd_context_sweep, _setup_context_sweep),
    ("repr-grid", "I-LLMRec item representations over datasets x LLM backbones x image encoders", _cmd_repr_grid, _setup_repr_grid),
    ("table", "metrics of several runs side by side (Markdown; --out also writes CSV)", _cmd_table, _setup_table),
    ("bench", "training and evaluation throughput of a torch model", _cmd_bench, _setup_bench),
    ("bench-training", "seconds per LLM training step: two passes vs one pass vs cached prefix", _cmd_bench_training, _setup_bench_training),
    ("bench-prepare", "seconds and peak memory of 'llmrec prepare amazon2023' on generated Amazon-scale reviews", _cmd_bench_prepare, _setup_bench_prepare),
    ("serve", "answer recommendation requests over HTTP (FastAPI), micro-batched", _cmd_serve, _setup_serve),
    ("bench-serve", "throughput and latency of 'llmrec serve', micro-batching on vs off", _cmd_bench_serve, _setup_bench_serve),
    ("demo", "the whole pipeline on MovieLens-100K with the embedded offline models", _cmd_demo, _setup_demo),
]  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse with llmrec's error line: one line naming the command and where its help is, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, every command is listed but only that one gets its flags
    (what :func:`main` builds: the other commands' modules are never imported)."""
    parser = _Parser(prog="llmrec", description="LLM-based multimodal recommendation")
    parser.add_argument("--version", action="version", version=f"llmrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="an unexpected error prints its traceback here, not in a crash log",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help, fn, setup in COMMANDS:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", help="YAML/JSON file with options (flags override it)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(fn=fn)
        if only is None or only == name:
            setup(p)
    return parser


def _command_in(argv: list[str]) -> str:
    """The subcommand named in ``argv`` ("" when none is: top-level --help, --version, a typo)."""
    first = next((a for a in argv if not a.startswith("-")), "")
    return first if first in {c[0] for c in COMMANDS} else ""


def crash_dir() -> Path:
    """Where unexpected errors leave their traceback: $LLMREC_CRASH_DIR, else ~/.local/state/llmrec/crashes."""
    if os.environ.get("LLMREC_CRASH_DIR"):
        return Path(os.environ["LLMREC_CRASH_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "llmrec" / "crashes"


def _write_crash_log(command: str, argv: list[str]) -> Path | None:
    """The current exception's traceback, the command line and versions in a new file; None if unwritable."""
    import datetime as dt
    import platform

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = (
        f"llmrec {__version__} {command}: {' '.join(argv)}\n"
        f"python {sys.version.split()[0]} on {platform.platform()}\n\n{traceback.format_exc()}"
    )
    try:
        folder = crash_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{stamp}-{os.getpid()}.log"
        path.write_text(text, encoding="utf-8")
        return path
    except OSError:
        return None


def _os_error_line(e: OSError) -> str:
    """A system error (permission, disk full, missing file) as llmrec's one line: what, which file, what to do."""
    what = e.strerror or type(e).__name__
    where = ", ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    hints = {
        errno.ENOSPC: "free some disk space and re-run the same command (it resumes)",
        errno.EDQUOT: "free some space within your disk quota and re-run the same command (it resumes)",
        errno.EACCES: "check the permissions of that path or choose another one",
        errno.EROFS: "choose a writable location",
        errno.ENOENT: "check the path",
    }
    hint = hints.get(e.errno or 0, "check that path and re-run the same command")
    return f"{where + ': ' if where else ''}{what}; {hint}"


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 bad input (one line on stderr: what, where, what to do),
    70 an unexpected error (one line naming a crash log with the traceback; ``--debug`` prints it inline),
    130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_in(argv))
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:  # --help, --version, or argparse's one error line already printed
        return e.code if isinstance(e.code, int) else 2
    if unknown:
        name = f"llmrec {args.command}"
        print(
            f"{name}: error: unrecognized arguments: {' '.join(unknown)}; see '{name} --help'",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "sentence_transformers", "transformers", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    prog = f"llmrec {args.command}"
    from llmrec.utils import lock

    lock.COMMAND = args.command  # a command refused by this one's lock is told which command holds it
    try:
        return args.fn(args)
    except LlmrecError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            traceback.print_exc()
            return 70
        log_file = _write_crash_log(args.command, argv)
        where = f"traceback in {log_file}" if log_file else "re-run with --debug for the traceback"
        print(
            f"{prog}: internal error ({type(e).__name__}: {_first_line(e)}); {where} - please report it",
            file=sys.stderr,
        )
        return 70


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else "no message"


__all__ = ["main", "build_parser"]
