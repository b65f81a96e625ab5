"""The ``llmrec`` command line, built from one table of commands (:data:`COMMANDS`, in
:mod:`llmrec.cli_commands`): its parser, the flags every command shares, and :func:`main`.

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
import logging
import os
import shutil
import sys
import textwrap
import traceback
import typing
from pathlib import Path
from typing import Any, NoReturn

from llmrec import __version__
from llmrec.cli_commands import COMMANDS, EVERYDAY, EXPERIMENTS, FLAG_NAMES, Command, _load, use_threads
from llmrec.config import add_arguments, resolve
from llmrec.errors import LlmrecError

log = logging.getLogger("llmrec")


# ----------------------------------------------------------------------------- running a command


def _print(text: str) -> None:
    """``text`` on stdout, ending in exactly one newline (a Markdown file read back already has its own)."""
    if text:
        print(text, end="" if text.endswith("\n") else "\n")


def _run(spec: Command, args: argparse.Namespace) -> int:
    """Resolve the command's config, run it, print its result and what it wrote."""
    if not isinstance(spec.run, str):
        return spec.run(args)
    cfg = resolve(_load(spec.config), args, args.config, env_prefix=spec.env_prefix)
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
    """A config field given positionally: a list takes any number of values, anything else is optional
    (the config's own check names it when neither the command line, the environment nor the file gives it)."""
    hint = typing.get_type_hints(cls)[f.name]
    many = list in (typing.get_origin(hint), *(typing.get_origin(a) for a in typing.get_args(hint)))
    default = None if many else f.default
    help_text = f.metadata.get("help", "") + (f" (default: {default})" if default else "")
    p.add_argument(f.name, nargs="*" if many else "?", default=argparse.SUPPRESS, help=help_text)


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
            named = spec.config and spec.positional != "model"  # a --model flag, else the positional MODEL
            how = f"{p.prog} --model NAME --help" if named else f"{p.prog} MODEL --help"
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
    try:  # a command's options import its module: one of an extra not installed is named in one line
        parser = build_parser(only=_command_in(argv))
    except LlmrecError as e:
        print(f"llmrec: error: {e}", file=sys.stderr)
        return 2
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
