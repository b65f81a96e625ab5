"""The reference pages, written from the code when the site is built (an MkDocs hook, see mkdocs.yml).

Each page under ``docs/reference/`` is a short committed file whose body holds a marker such as
``<!-- generated: cli -->``; :func:`on_page_markdown` replaces the marker with what the code says now, so
the reference cannot drift from the code and no generated copy is committed:

- ``cli``: every command and flag, from :func:`llmrec.cli.build_parser`;
- ``options``: every model's ``-o`` options with default, type, range and help, from its config dataclass;
- ``python-api``: a mkdocstrings block per public name of ``llmrec`` (rendered from its docstring) and the
  settings tables of the configs the API functions take as keywords;
- ``http-api``: every route of the service, from its OpenAPI schema (the app is built around a stand-in,
  so no model is loaded).

:func:`on_config` fails the build when a public name has no docstring (:func:`missing_docstrings`) and
lists every ``results/*.md`` page under "Results". The tests call these functions directly.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _use_checkout() -> None:
    """Document this checkout's llmrec, whatever is installed (MkDocs restores ``sys.path`` after loading
    a hook, so :func:`on_config` says it again)."""
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))


_use_checkout()

MARKER = re.compile(r"<!-- generated: ([\w-]+) -->")
OPTIONS_PAGE = "options.md"  # where the CLI page sends readers for -o (a sibling page)


# ----------------------------------------------------------------------------- MkDocs hooks


def on_config(config: Any) -> Any:
    """Refuse to build with a docstring-less public name; list the results pages in the nav."""
    from mkdocs.exceptions import PluginError

    _use_checkout()
    missing = missing_docstrings()
    if missing:
        raise PluginError(
            "public names without a docstring: " + ", ".join(missing) + "; give each one a docstring"
        )
    results = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs/results").glob("*.md"))
    for section in config["nav"] or []:
        if isinstance(section, dict) and "Results" in section:
            listed = set(section["Results"])
            section["Results"] += [page for page in results if page not in listed]
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Each ``<!-- generated: NAME -->`` marker replaced by the page that :data:`PAGES` names."""
    from mkdocs.exceptions import PluginError

    def generated(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in PAGES:
            raise PluginError(f"{page.file.src_path}: no generated page {name!r}; one of {sorted(PAGES)}")
        return PAGES[name]()

    return MARKER.sub(generated, markdown)


# ----------------------------------------------------------------------------- Markdown helpers


def cell(text: Any) -> str:
    """Text safe in a Markdown table cell: ``<`` and ``&`` escaped (``<model>`` stays visible, not a tag),
    pipes and asterisks escaped."""
    text = " ".join(str(text).split()).replace("&", "&amp;").replace("<", "&lt;")
    return text.replace("|", "\\|").replace("*", "\\*")


def code(text: Any) -> str:
    """Inline code in a table cell (a backtick inside is kept by a longer fence)."""
    text = str(text).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def prose(doc: str | None) -> str:
    """A docstring's first paragraph as Markdown (Sphinx roles such as ``:class:`X``` become code)."""
    first = inspect.cleandoc(doc or "").split("\n\n")[0]
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", " ".join(first.split())).replace("``", "`")
    parts = text.split("`")  # outside code spans (the even parts), a <placeholder> is text, not a tag
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command line


def _parsers(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """``(path, help, parser)`` of ``parser`` and every subcommand under it, depth first, in CLI order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._get_subactions()}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helps.get(name, ""), sub
                yield from _parsers(sub, f"{path} {name}")


def _value(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """What a flag takes, as ``--help`` shows it (``N``, ``{cpu,cuda}``, ``[RUNS ...]``); "" for a switch."""
    if action.nargs == 0:
        return ""
    formatter = parser._get_formatter()
    default = action.dest.upper() if action.option_strings else action.dest
    return formatter._format_args(action, default)


def _slug(path: str) -> str:
    """The anchor of a command's heading (``llmrec experiments bench`` -> ``llmrec-experiments-bench``)."""
    return path.replace(" ", "-")


def _hidden_note(action: argparse.Action, top: argparse.ArgumentParser) -> str:
    new = getattr(action, "new", None)
    if new:
        return f"old spelling of {new}, still accepted for one release"
    if any(s in top._option_string_actions for s in action.option_strings):
        return "the same as the top-level flag"
    return "not listed by --help"


def cli_page() -> str:
    """Every command of ``llmrec`` with its usage, description and every flag (help texts as ``--help``
    prints them, defaults and ranges included), top level first, then the commands in CLI order."""
    from llmrec.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal: fixed here
    try:
        top = build_parser()
        out = [_command_section("llmrec", top.description or "", top, top, level=2)]
        for path, about, parser in _parsers(top, "llmrec"):
            level = 2 + path.count(" ") - 1
            out.append(_command_section(path, about, parser, top, level=min(level, 4)))
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n\n".join(out) + "\n"


def _command_section(
    path: str, about: str, parser: argparse.ArgumentParser, top: argparse.ArgumentParser, level: int
) -> str:
    usage = parser.format_usage().strip().removeprefix("usage: ").replace("\n" + " " * len("usage: "), "\n")
    lines = [f"{'#' * level} `{path}`", "", cell(about) if about else "", "", f"```text\n{usage}\n```", ""]
    rows, hidden, commands = [], [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands += [
                [f"[{code(f'{path} {a.dest}')}](#{_slug(f'{path} {a.dest}')})", cell(a.help or "")]
                for a in action._get_subactions()
            ]
            continue
        name = ", ".join(action.option_strings) or (action.metavar or action.dest)
        if action.help == argparse.SUPPRESS:
            hidden.append(f"{code(name)} ({_hidden_note(action, top)})")
            continue
        helptext = parser._get_formatter()._expand_help(action) if action.help else ""
        value = _value(parser, action) if action.option_strings else ""  # a positional's name says it
        rows.append([code(name), code(value) if value else "", cell(helptext)])
    if commands:
        lines += [table(["Command", "What it does"], commands), ""]
    if rows:
        lines += [table(["Argument", "Value", "Description"], rows), ""]
    if any(
        getattr(a, "model", None) is not None for a in parser._actions if a.option_strings == ["-h", "--help"]
    ):
        lines += [
            f"The model's `-o KEY=VALUE` options are listed per model in [Model options]({OPTIONS_PAGE}).",
            "",
        ]
    if hidden:
        lines += ["Also accepted, not listed by `--help`: " + "; ".join(hidden) + ".", ""]
    return "\n".join(lines).rstrip()


def cli_option_strings() -> tuple[list[str], list[str]]:
    """Every command path (``llmrec train``) and every option string of the parser: what the CLI page
    must name."""
    from llmrec.cli import build_parser

    top = build_parser()
    parsers = [("llmrec", top)] + [(path, p) for path, _, p in _parsers(top, "llmrec")]
    flags = sorted({s for _, p in parsers for a in p._actions for s in a.option_strings})
    return [path for path, _ in parsers], flags


# ----------------------------------------------------------------------------- model options


def option_rows(cfg: Any, prefix: str = "") -> Iterator[dict[str, str]]:
    """The config's options as ``train MODEL --help`` prints them (llmrec.config.option_rows)."""
    from llmrec.config import option_rows as rows

    return rows(cfg, prefix)


def options_table(cfg: Any) -> str:
    rows = [
        [code(r["key"]), code(r["default"]), cell(r["type"]), cell(r["range"]), cell(r["help"])]
        for r in option_rows(cfg)
    ]
    return table(["Option", "Default", "Type", "Range", "Help"], rows)


def _about_model(cls: type) -> str:
    """The model's own docstring, else its module's: first paragraph."""
    own = cls.__dict__.get("__doc__")
    return prose(own or sys.modules[cls.__module__].__doc__)


def options_page() -> str:
    """Every registered model, each with its options at their defaults (its preset's and default recipe's
    where it has them), and what each recipe sets."""
    from llmrec.config import _value_text, flatten
    from llmrec.models.base import available_models, get_model_class, model_config

    names = available_models()
    out = ["Models: " + ", ".join(f"[`{n}`](#{n.replace('_', '-')})" for n in names) + ".", ""]
    for name in names:
        cls = get_model_class(name)
        cfg = model_config(name, {})
        out += [f"## `{name}` {{#{name.replace('_', '-')}}}", ""]
        if cls.preset:
            base = next((n for n in names if get_model_class(n) is cls.__mro__[1]), "")
            of = f" of [`{base}`](#{base.replace('_', '-')})" if base else ""
            fixed = ", ".join(code(f"{k}={_value_text(v)}") for k, v in flatten(cls.preset).items())
            out += [f"A preset{of}: these options default to {fixed} (any of them can still be given).", ""]
        about = _about_model(cls)
        if about and "preset: {" not in about:
            out += [about, ""]
        if cls.recipes:
            default = getattr(type(cfg), "recipe", None)
            rows = [
                [
                    code(recipe) + (" (default)" if recipe == default else ""),
                    ", ".join(code(f"{k}={_value_text(v)}") for k, v in flatten(values).items())
                    or "nothing beyond the defaults below",
                ]
                for recipe, values in cls.recipes.items()
            ]
            out += [
                f"`-o recipe=NAME` selects a set of defaults (options given alongside override it); "
                f"the table below is at the default recipe, `{default}`.",
                "",
                table(["Recipe", "Sets"], rows),
                "",
            ]
        out += [options_table(cfg), ""]
    return "\n".join(out)


def model_option_keys() -> dict[str, list[str]]:
    """Every model's option keys (nested ones dotted): what the options page must name."""
    from llmrec.models.base import available_models, model_config

    return {name: [r["key"] for r in option_rows(model_config(name, {}))] for name in available_models()}


# ----------------------------------------------------------------------------- the Python API


def api_configs() -> list[tuple[str, str, type]]:
    """The configs whose fields the API functions take as keywords: (heading, what takes them, class)."""
    from llmrec.data.processing import PrepareConfig
    from llmrec.pipeline import EvalConfig, TrainConfig

    return [
        (
            "prepare's options",
            "`llmrec.prepare(dataset, out, **options)` and `llmrec prepare`",
            PrepareConfig,
        ),
        (
            "train's settings",
            "`llmrec.train(model, data, out, options, **settings)` and `llmrec train`",
            TrainConfig,
        ),
        (
            "evaluation settings",
            "`llmrec.evaluate(run, **eval_options)`, `train(..., eval={...})`",
            EvalConfig,
        ),
    ]


#: the order the reference lists the public names in (the pipeline's); any other public name follows
ORDER = ["prepare", "train", "evaluate", "load", "Model", "TrainedRun", "QueryError"]


def public_api() -> list[tuple[str, Any]]:
    """``(name, object)`` of every public name of ``llmrec`` (``dir(llmrec)`` without underscores)."""
    import llmrec

    names = [name for name in dir(llmrec) if not name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return [(name, getattr(llmrec, name)) for name in names]


def _target(obj: Any) -> str:
    """Where mkdocstrings finds ``obj``: the module that defines it (``llmrec.api.load``)."""
    return f"{obj.__module__}.{obj.__qualname__}"


def python_api_page() -> str:
    """A mkdocstrings block per public name (functions, then classes), then the settings tables."""
    items = public_api()
    functions = [(n, o) for n, o in items if inspect.isfunction(o)]
    classes = [(n, o) for n, o in items if inspect.isclass(o)]
    others = [(n, o) for n, o in items if (n, o) not in functions + classes]
    out = ["## Functions", ""]
    for name, obj in functions:
        out += [f"::: {_target(obj)}", "    options:", f'      heading: "llmrec.{name}"', ""]
    out += ["## Classes", ""]
    for name, obj in classes:
        out += [f"::: {_target(obj)}", "    options:", f'      heading: "llmrec.{name}"', ""]
    for name, _obj in others:
        out += [f"::: llmrec.{name}", ""]
    out += [
        "## Options and settings",
        "",
        "The functions take these as keywords, with the same names, defaults and checks as the "
        "command's flags (an unknown key, a wrong type or a value out of range is an error). A model's "
        f"own options (`train(options={{...}})`) are in [Model options]({OPTIONS_PAGE}).",
        "",
    ]
    for heading, takes, cls in api_configs():
        out += [f"### {heading}", "", f"Taken by {takes}. {prose(cls.__doc__)}", "", options_table(cls()), ""]
    return "\n".join(out)


def _auto_doc(cls: type) -> bool:
    """The docstring a dataclass makes up for a class without one (its signature)."""
    return (cls.__doc__ or "").startswith(f"{cls.__name__}(")


def _undocumented(name: str, obj: Any) -> Iterator[str]:
    if inspect.isclass(obj):
        if not (obj.__doc__ or "").strip() or _auto_doc(obj):
            yield name
        for member, value in vars(obj).items():
            if member.startswith("_"):
                continue
            if isinstance(value, property):
                value = value.fget
            elif isinstance(value, staticmethod | classmethod):
                value = value.__func__
            if inspect.isfunction(value) and not (value.__doc__ or "").strip():
                yield f"{name}.{member}"
    elif callable(obj) and not (obj.__doc__ or "").strip():
        yield name


def missing_docstrings() -> list[str]:
    """Public names of ``llmrec`` (and public methods and properties of its classes) without a docstring,
    and API configs without one, as ``llmrec.Model.rank``."""
    missing = [f"llmrec.{m}" for name, obj in public_api() for m in _undocumented(name, obj)]
    missing += [_target(cls) for _, _, cls in api_configs() if _auto_doc(cls) or not cls.__doc__]
    return missing


# ----------------------------------------------------------------------------- the HTTP API


def openapi_schema() -> dict[str, Any]:
    """The service's OpenAPI schema, from an app built around a stand-in for a loaded model (the routes
    only name the model when they answer; nothing is loaded or served)."""
    from llmrec.serve import create_app

    stand_in = types.SimpleNamespace(name="MODEL", run="RUN", item_ids=[])
    return create_app(stand_in).openapi()  # type: ignore[arg-type]


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _schema_link(name: str) -> str:
    return f"[{name}](#schema-{name.lower()})"


def _json_type(s: dict[str, Any]) -> str:
    """A JSON schema as a short type: ``string``, ``array of string``, ``integer | null``, a schema link."""
    if "$ref" in s:
        return _schema_link(_ref_name(s["$ref"]))
    for key in ("anyOf", "oneOf"):
        if key in s:
            return " or ".join(_json_type(x) for x in s[key])
    if "enum" in s:
        return "one of " + ", ".join(code(v) for v in s["enum"])
    kind = s.get("type", "any")
    if kind == "array":
        return f"array of {_json_type(s.get('items', {}))}"
    if kind == "object" and "additionalProperties" in s and isinstance(s["additionalProperties"], dict):
        return f"object of {_json_type(s['additionalProperties'])}"
    return str(kind)


_BOUNDS = {
    "minimum": ">= {}",
    "exclusiveMinimum": "> {}",
    "maximum": "<= {}",
    "exclusiveMaximum": "< {}",
    "minLength": "at least {} characters",
    "maxLength": "at most {} characters",
    "minItems": "at least {} items",
    "maxItems": "at most {} items",
}


def _constraints(s: dict[str, Any]) -> str:
    def num(v: Any) -> Any:
        return int(v) if isinstance(v, float) and v.is_integer() else v

    found = []
    for part in [s, *s.get("anyOf", [])]:
        found += [fmt.format(num(part[k])) for k, fmt in _BOUNDS.items() if k in part]
    return ", ".join(found)


def http_api_page() -> str:
    """Every route (method, path, what it does, parameters, request body, answers by status), then every
    schema the routes name, field by field."""
    schema = openapi_schema()
    out = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            out += [f"## `{method.upper()} {path}`", ""]
            if op.get("description") or op.get("summary"):
                out += [cell(op.get("description") or op.get("summary")), ""]
            params = op.get("parameters", [])
            if params:
                rows = [
                    [
                        code(p["name"]),
                        p["in"],
                        _json_type(p.get("schema", {})),
                        "yes" if p.get("required") else "no",
                    ]
                    for p in params
                ]
                out += ["Parameters:", "", table(["Name", "In", "Type", "Required"], rows), ""]
            body = op.get("requestBody")
            if body:
                kinds = body.get("content", {})
                for media, content in kinds.items():
                    out += [f"Request body ({media}): {_json_type(content.get('schema', {}))}", ""]
            rows = []
            for status, answer in op.get("responses", {}).items():
                content = answer.get("content", {}).get("application/json", {})
                body_type = _json_type(content["schema"]) if content.get("schema") else ""
                rows.append([code(status), cell(answer.get("description", "")), body_type])
            out += ["Responses:", "", table(["Status", "Meaning", "Body (application/json)"], rows), ""]
    out += ["## Schemas", ""]
    for name, s in schema.get("components", {}).get("schemas", {}).items():
        out += [f"### {name} {{#schema-{name.lower()}}}", ""]
        if s.get("description"):
            out += [cell(s["description"]), ""]
        required = set(s.get("required", []))
        rows = [
            [
                code(field),
                _json_type(p),
                "yes" if field in required else "no",
                code(repr_json(p["default"])) if "default" in p else "",
                cell(_constraints(p)),
                cell(p.get("description", "")),
            ]
            for field, p in s.get("properties", {}).items()
        ]
        if rows:
            out += [table(["Field", "Type", "Required", "Default", "Constraints", "Description"], rows), ""]
    return "\n".join(out)


def repr_json(value: Any) -> str:
    import json

    return json.dumps(value)


PAGES: dict[str, Callable[[], str]] = {
    "cli": cli_page,
    "options": options_page,
    "python-api": python_api_page,
    "http-api": http_api_page,
}
