"""The ``llmrec`` command line, built from one table of commands (:data:`COMMANDS`).

Two groups: the everyday pipeline at the top level (``llmrec prepare``, ``train``, ``recommend``,
``serve``, ...) and the papers' figures and benchmarks under ``llmrec experiments COMMAND``. Flags are
generated from each command's typed config; every command accepts ``--config FILE`` (YAML/JSON with the
config's keys) and flags given on the command line override the file. Bad input ends with one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import json
import logging
import os
import shutil
import sys
import textwrap
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from llmrec import __version__
from llmrec.config import add_arguments, resolve
from llmrec.errors import LlmrecError

log = logging.getLogger("llmrec")


# ----------------------------------------------------------------------------- what the commands print


def _print(text: str) -> None:
    """``text`` on stdout, ending in exactly one newline (a Markdown file read back already has its own)."""
    if text:
        print(text, end="" if text.endswith("\n") else "\n")


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
    if args.print_config:
        cfg = evaluation_config(args.run, overrides, args.data)
        cfg.device, cfg.dtype = args.device, args.dtype
        print(json.dumps({**cfg.resolved(), "eval": to_dict(cfg.eval)}, indent=2))
        return 0
    use_threads(getattr(args, "threads", None))
    evaluate_run(args.run, overrides, args.data, device=args.device, dtype=args.dtype)
    _print_metrics(args.run)
    return 0


def _setup_evaluate(p: argparse.ArgumentParser) -> None:
    from llmrec.devices import DEVICE_HELP, DTYPES
    from llmrec.pipeline import EvalConfig

    p.add_argument("run", help="run directory written by 'llmrec train'")
    p.add_argument("--data", default=None, help="the run's dataset moved: its new folder (checksum verified)")
    add_arguments(p, EvalConfig)
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="LLM backbone weights (auto: bf16 on CUDA, fp32 on CPU)",
    )
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
    table = model.recommend(**who, k=cfg.k, exclude_history=cfg.exclude_history)
    recs = table[["rank", "item_id", "title", "score"]].to_dict("records")
    if cfg.json:
        print(json.dumps(recs, indent=2))
    else:
        for r in recs:
            print(f"{r['rank']:>3}. {r['item_id']}\t{r['title']}\t{r['score']:.4f}")
    return 0


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
    Command("serve", EVERYDAY, "answer recommendation requests over HTTP (FastAPI), micro-batched", "llmrec.serve:serve", "llmrec.serve:ServeConfig", positional="run", torch=True, old_flags=_CANDIDATES),
    Command("table", EVERYDAY, "metrics of several runs side by side (Markdown; --out also writes CSV)", "llmrec.report:make_table", "llmrec.report:TableConfig", show=_as_is, positional="runs"),
    Command("prompts", EVERYDAY, "the exact prompts (training, ILA, evaluation) an LLM model builds for a user, with token counts", _run_prompts, setup=_setup_prompts, model_options=True, torch=True),
    Command("demo", EVERYDAY, "the whole pipeline on MovieLens-100K with the embedded offline models", _EXP + "demo:run_demo", _EXP + "demo:DemoConfig", torch=True),
    Command("efficiency", EXPERIMENTS, "tokens and inference time of item representations, side by side", _EXP + "efficiency:run_efficiency", _EXP + "efficiency:EfficiencyConfig", show=_formatted(_EXP + "efficiency:format_efficiency"), written="{cfg.out}/efficiency.json, efficiency.md, efficiency.png", torch=True),
    Command("ctr-efficiency", EXPERIMENTS, "HistLLM with vs without UHEM: prompt tokens, inference and training time", _EXP + "ctr:run_ctr_efficiency", _EXP + "ctr:CtrEfficiencyConfig", show=_formatted(_EXP + "ctr:format_ctr_efficiency"), written="{cfg.out}/ctr_efficiency.json, ctr_efficiency.md and its plots (.png)", torch=True),
    Command("history-sweep", EXPERIMENTS, "AUC/UAUC against the number of history items (TALLRec vs HistLLM)", _EXP + "ctr:run_history_sweep", _EXP + "ctr:HistorySweepConfig", show=_formatted(_EXP + "ctr:format_history_sweep"), written="{cfg.out}/history_sweep.json, history_sweep.md, history_sweep.png", torch=True),
    Command("context-sweep", EXPERIMENTS, "I-LLMRec hit/NDCG@10 and prompt tokens as the context budget shrinks, per representation", _EXP + "illmrec:run_context_sweep", _EXP + "illmrec:ContextSweepConfig", show=_markdown("context_sweep.md"), written="{cfg.out}/context_sweep.json, context_sweep.md, context_sweep.csv, context_sweep.png", model_options=True, model="illmrec", torch=True),
    Command("repr-grid", EXPERIMENTS, "I-LLMRec item representations over datasets x LLM backbones x image encoders", _EXP + "illmrec:run_repr_grid", _EXP + "illmrec:ReprGridConfig", show=_markdown("repr_grid.md"), written="{cfg.out}/repr_grid.json, repr_grid.md, repr_grid.csv, repr_grid.png", model_options=True, model="illmrec", torch=True),
    Command("probe", EXPERIMENTS, "linear probe: which item attributes a model's user states encode (I-LLMRec [REC])", _EXP + "probe:run_probe", _EXP + "probe:ProbeConfig", show=_formatted(_EXP + "probe:format_probe"), positional="run", torch=True, old_flags=(("--run", "a positional argument (llmrec experiments probe RUN)"),)),
    Command("bench", EXPERIMENTS, "training and evaluation throughput of a torch model", _EXP + "bench:run_bench", _EXP + "bench:BenchConfig", show=_formatted(_EXP + "bench:format_bench"), model_options=True, torch=True),
    Command("bench-training", EXPERIMENTS, "seconds per LLM training step: two passes vs one pass vs cached prefix", _EXP + "training_bench:run_training_bench", _EXP + "training_bench:TrainingBenchConfig", show=_formatted(_EXP + "training_bench:format_training_bench"), written="{cfg.out}/bench_training.json, bench_training.md, bench_training.png", torch=True),
    Command("bench-prepare", EXPERIMENTS, "seconds and peak memory of 'llmrec prepare amazon2023' on generated Amazon-scale reviews", _EXP + "prepare_bench:run_prepare_bench", _EXP + "prepare_bench:PrepareBenchConfig", show=_formatted(_EXP + "prepare_bench:format_prepare_bench"), written=lambda cfg, result: ", ".join(result["files"])),
    Command("bench-serve", EXPERIMENTS, "throughput and latency of 'llmrec serve', micro-batching on vs off", _EXP + "serve_bench:run_bench_serve", _EXP + "serve_bench:BenchServeConfig", show=_formatted(_EXP + "serve_bench:format_bench_serve"), written="{result[out]}/bench_serve.json, bench_serve.md, bench_serve.png", positional="run"),
]  # fmt: skip
# One concept, one flag: the count of items a retriever hands over is --num-candidates wherever it is a flag
# (its config key stays 'candidates'); 'candidates' in the API and over HTTP is a list of item ids.
FLAG_NAMES = {"candidates": "--num-candidates"}


def _load(path: str) -> Any:
    """``"package.module:name"`` -> that object (the command's module is imported only now)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def use_threads(threads: int | None) -> None:
    """Apply ``--threads`` (torch CPU threads): the one place the CLI sets them. Configs that carry a
    ``threads`` field also get the value (they record it, and set it for API callers)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _run(spec: Command, args: argparse.Namespace) -> int:
    """Resolve the command's config, run it, print its result and what it wrote."""
    if not isinstance(spec.run, str):
        return spec.run(args)
    cfg = resolve(_load(spec.config), args, args.config)
    if spec.torch:
        use_threads(getattr(cfg, "threads", None) or getattr(args, "threads", None))
    result = _load(spec.run)(cfg)
    if spec.show is not None:
        _print(spec.show(cfg, result))
    if spec.written:
        what = (
            spec.written(cfg, result)
            if callable(spec.written)
            else spec.written.format(cfg=cfg, result=result)
        )
        print(f"written {what}")
    return 0


# ----------------------------------------------------------------------------- flags every command shares


def _threads(text: str) -> int:
    """``--threads``' value, refused before anything runs when it is not a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"threads must be >= 1, got {value}")
    return value


def add_threads(p: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--threads N`` of every command that runs torch, declared here only (see :func:`use_threads`)."""
    said = default if default else "torch's choice"
    p.add_argument(
        "--threads",
        type=_threads,
        default=argparse.SUPPRESS,
        metavar="N",
        help=f"torch CPU threads (default: {said}; >= 1)",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--option",
        dest="options",
        action="append",
        metavar="KEY=VALUE",
        default=argparse.SUPPRESS,
        help="model option (repeatable; --help after the model name lists them)",
    )


class _OldFlag(argparse.Action):
    """A flag's old spelling, kept hidden for one release: it still works and says its new spelling once."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        print(
            f"{parser.prog}: {option_string} is now {self.new}; the old spelling goes in the next release",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


class _ModelHelp(argparse.Action):
    """``--help`` that also lists the model's ``-o`` options once the model is known (``llmrec train
    illmrec --help``: the model name comes before ``--help``; or the command fixes it)."""

    def __init__(self, option_strings: list[str], dest: str, model: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.model = model

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        name = getattr(namespace, "model", None) or self.model
        if name:
            try:
                parser.epilog = model_options_help(name)
            except LlmrecError as e:
                parser.error(str(e))
        parser.print_help()
        parser.exit()


def model_options_help(name: str) -> str:
    """Every ``-o`` option of model ``name``: key=default (with its preset's and recipe's defaults), type,
    range and help, one line each, generated from its config dataclass."""
    from llmrec.config import option_lines
    from llmrec.models.base import model_config

    cfg = model_config(name, {})
    head = f"model options of {name} (-o KEY=VALUE, repeatable; nested keys dotted), each at its default:"
    return "\n".join([head, *option_lines(cfg)])


def _setup(spec: Command, p: argparse.ArgumentParser) -> None:
    """The command's flags: its own ``setup`` or its config's fields, then the flags commands share."""
    threads_default = None
    if spec.model_options:
        _add_model_options(p)
    if spec.setup is not None:
        spec.setup(p)
    elif spec.config:
        cls = _load(spec.config)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if spec.positional:
            _add_positional(p, cls, fields[spec.positional])
        if spec.torch and "threads" in fields:
            threads_default = fields["threads"].default
        skip = (spec.positional, "options" if spec.model_options else "", "threads" if spec.torch else "")
        add_arguments(p, cls, skip=skip, flags=FLAG_NAMES)
    if spec.torch:
        add_threads(p, threads_default)
    for old, new in spec.old_flags:  # a renamed flag (takes what the new one takes), or the positional's
        now = p._option_string_actions.get(new)
        p.add_argument(
            old,
            dest=now.dest if now else spec.positional,
            type=now.type if now else None,
            nargs=now.nargs if now else None,
            action=_OldFlag,
            new=new,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )


def _add_positional(p: argparse.ArgumentParser, cls: type, f: dataclasses.Field) -> None:
    """A config field given positionally: a list takes one or more values, anything else is optional
    (the config's own check names it when neither the command line nor the file gives it)."""
    many = typing.get_origin(typing.get_type_hints(cls)[f.name]) is list
    default = None if many else f.default
    help_text = f.metadata.get("help", "") + (f" (default: {default})" if default else "")
    p.add_argument(f.name, nargs="+" if many else "?", default=argparse.SUPPRESS, help=help_text)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's layout, with a command name as long as ``ctr-efficiency`` kept on its help's line
    (argparse measures a subcommand's name without its extra indent and wraps it)."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction) and action.help is not argparse.SUPPRESS:
            for sub in action._get_subactions():
                length = (
                    len(self._format_action_invocation(sub)) + self._current_indent + self._indent_increment
                )
                self._action_max_length = max(self._action_max_length, length)


class _Parser(argparse.ArgumentParser):
    """argparse with llmrec's error line: one line naming the command and where its help is, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only`` (a command's name), every command is listed but only that one
    gets its flags (what :func:`main` builds: the other commands' modules are never imported)."""
    parser = _Parser(
        prog="llmrec",
        description="LLM-based multimodal recommendation",
        epilog=_listing(EXPERIMENTS),
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"llmrec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="an unexpected error prints its traceback here, not in a crash log",
    )
    top = parser.add_subparsers(
        title="commands (the pipeline, then the experiments)",
        dest="command",
        metavar="COMMAND",
        required=True,
        parser_class=_Parser,
    )
    for spec in COMMANDS:
        if spec.group == EVERYDAY:
            _add_command(top, spec, only)
    about = "the papers' figures and benchmarks"
    experiments = top.add_parser(
        EXPERIMENTS,
        help=f"{about} (listed below)",
        description=about,
        formatter_class=_Formatter,
    )
    sub = experiments.add_subparsers(
        title="commands", dest="experiment", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for spec in COMMANDS:
        if spec.group == EXPERIMENTS:
            _add_command(sub, spec, only)
    return parser


def _add_command(sub: Any, spec: Command, only: str | None) -> None:
    p = sub.add_parser(
        spec.name,
        help=spec.help,
        description=spec.help,
        add_help=not spec.model_options,
        # the model options' list keeps its lines
        formatter_class=argparse.RawDescriptionHelpFormatter
        if spec.model_options
        else argparse.HelpFormatter,
    )
    if spec.model_options:
        p.add_argument(
            "-h", "--help", action=_ModelHelp, model=spec.model, help="show this help message and exit"
        )
        if not spec.model:  # the model is an argument: named before --help, its options are listed
            how = f"{p.prog} --model NAME --help" if spec.config else f"{p.prog} MODEL --help"
            p.epilog = f"model options (-o KEY=VALUE): '{how}' lists a model's, with defaults and ranges"
    p.add_argument("--config", help="YAML/JSON file with options (flags override it)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(spec=spec)
    if only is None or only == spec.name:
        _setup(spec, p)


def _listing(group: str) -> str:
    """The commands of ``group`` laid out as argparse lays out the top-level ones (for ``llmrec --help``)."""
    specs = [spec for spec in COMMANDS if spec.group == group]
    width = max(shutil.get_terminal_size().columns - 2, 40)
    column = 4 + max(len(spec.name) for spec in specs) + 2
    lines = [f"{group} (the papers' figures and benchmarks):", f"  llmrec {group} COMMAND"]
    for spec in specs:
        head = f"    {spec.name:<{column - 6}}  "
        lines += textwrap.wrap(
            spec.help, width, initial_indent=head, subsequent_indent=" " * column, break_on_hyphens=False
        )
    return "\n".join(lines)


# the experiments' old top-level names ('llmrec bench'), kept hidden for one release
_OLD_NAMES = {spec.name for spec in COMMANDS if spec.group == EXPERIMENTS}


def _new_spelling(argv: list[str]) -> list[str]:
    """``llmrec bench ...`` -> ``llmrec experiments bench ...``, with one line on stderr saying so."""
    i = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if i is None or argv[i] not in _OLD_NAMES:
        return argv
    print(
        f"llmrec {argv[i]}: now spelled 'llmrec experiments {argv[i]}'; the old name goes in the next release",
        file=sys.stderr,
    )
    return [*argv[:i], EXPERIMENTS, *argv[i:]]


def _command_in(argv: list[str]) -> str:
    """The command named in ``argv`` ("" when none is: top-level --help, --version, a typo)."""
    words = [a for a in argv if not a.startswith("-")][:2]
    name = words[1] if words[:1] == [EXPERIMENTS] and len(words) > 1 else next(iter(words), "")
    return name if name in {spec.name for spec in COMMANDS} else ""


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
    argv = _new_spelling(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser(only=_command_in(argv))
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:  # --help, --version, or argparse's one error line already printed
        return e.code if isinstance(e.code, int) else 2
    spec: Command = args.spec
    if unknown:
        name = f"llmrec {spec.path}"
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
    prog = f"llmrec {spec.path}"
    from llmrec.utils import lock

    lock.COMMAND = spec.path  # a command refused by this one's lock is told which command holds it
    try:
        return _run(spec, args)
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
        log_file = _write_crash_log(spec.path, argv)
        where = f"traceback in {log_file}" if log_file else "re-run with --debug for the traceback"
        print(
            f"{prog}: internal error ({type(e).__name__}: {_first_line(e)}); {where} - please report it",
            file=sys.stderr,
        )
        return 70


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else "no message"


__all__ = ["COMMANDS", "Command", "build_parser", "main"]
