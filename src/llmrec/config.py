"""Typed, validated configs: dataclasses whose fields carry their own help text.

Every config is a dataclass built with :func:`option` fields. :func:`from_dict` rejects unknown keys and
wrong types with a one-line :class:`~llmrec.errors.ConfigError`; :func:`add_arguments` turns the same
fields into command-line flags, so the CLI, YAML files and Python callers share one definition.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from llmrec.errors import ConfigError

T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with a one-line help text (shown by ``--help`` and kept in the docs).

    ``ge``/``gt``/``le``/``lt`` bound a numeric option (``>=``, ``>``, ``<=``, ``<``): :func:`check_ranges`,
    called by the config's ``__post_init__``, refuses a value outside them (and any NaN or infinity)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, **({"bounds": bounds} if bounds else {})}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _range_text(bounds: dict[str, float]) -> str:
    """``{"ge": 0, "lt": 1}`` -> ``in [0, 1)``; one bound -> ``>= 0``."""

    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(float(v))

    low = ("ge", "[") if "ge" in bounds else ("gt", "(") if "gt" in bounds else None
    high = ("le", "]") if "le" in bounds else ("lt", ")") if "lt" in bounds else None
    if low and high:
        return f"in {low[1]}{num(bounds[low[0]])}, {num(bounds[high[0]])}{high[1]}"
    op = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    key = (low or high)[0]  # type: ignore[index]
    return f"{op[key]} {num(bounds[key])}"


def check_ranges(cfg: Any) -> None:
    """Refuse a numeric field of the dataclass ``cfg`` outside the bounds its :func:`option` declares, or
    not finite, with a ConfigError naming the option and its valid range (None, "unset", passes)."""
    import math

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        bounds = f.metadata.get("bounds", {})
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"{f.name} must be a finite number{' ' + _range_text(bounds) if bounds else ''}, got {value}"
            )
        ok = (
            value >= bounds.get("ge", -math.inf)
            and value > bounds.get("gt", -math.inf)
            and value <= bounds.get("le", math.inf)
            and value < bounds.get("lt", math.inf)
        )
        if not ok:
            raise ConfigError(f"{f.name} must be {_range_text(bounds)}, got {value}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow only lossless conversions (int -> float, str -> Path)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    return value


def unflatten(data: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys of one mapping become nested mappings: ``{"backbone.dtype": "bfloat16"}`` ->
    ``{"backbone": {"dtype": "bfloat16"}}`` (values are not looked into; colliding groups merge)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        *parents, leaf = str(key).split(".")
        for part in reversed(parents):
            value = {leaf: value}
            leaf = part
        if isinstance(value, dict) and isinstance(out.get(leaf), dict):
            value = merge(out[leaf], value)
        elif leaf in out:
            raise ConfigError(f"{key}: '{leaf}' is given twice, as a value and as a group of options")
        out[leaf] = value
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The inverse of :func:`unflatten`: nested mappings as dotted keys (an empty mapping stays a value)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base`` at every depth (a mapping merges into a mapping; anything else
    replaces); dotted keys of either side count as nested. Neither argument is modified."""
    out = unflatten(base)
    for key, value in unflatten(override).items():
        value = unflatten(value) if isinstance(value, dict) else value
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def load_object(path: str) -> Any:
    """``"package.module:name"`` -> that object (its module imported only now): how the command table names
    a command's function and config class."""
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError.

    ``data`` overrides the defaults at every depth: a mapping given for a sub-config field merges into that
    field's default (``{"backbone": {"dtype": "bfloat16"}}`` keeps every other backbone default, including
    a default the parent config chose for it), and dotted keys (``"backbone.dtype"``) mean the same.
    """
    named, where = where is not None, where or cls.__name__
    data = unflatten(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    for k, v in data.items():
        default = _field_default(fields[k])
        if isinstance(v, dict) and dataclasses.is_dataclass(default):
            data[k] = merge(to_dict(default), v)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
        check_ranges(obj)  # every config's declared bounds, whether or not its __post_init__ checks them
        return obj
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None
    except ConfigError as e:  # refused by its own checks (__post_init__): say whose options they are
        if not named:
            raise
        raise ConfigError(f"{where}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-safe dict of a config (paths become strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (errors name the file)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file; --config takes a YAML/JSON file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a text file (byte {e.start}: {e.reason}); --config takes a YAML/JSON file"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML/JSON ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of option names to values")
    return data


# ----------------------------------------------------------------------------- argparse bridge


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help_with_default(help_text: str, default: Any, bounds: dict[str, float] | None) -> str:
    """``help (default: D; range)``, said once: a help text that already names its default in words
    (``"run directory (default: runs/<model>-...)"``) gets only the range added inside its parentheses."""
    valid = _range_text(bounds) if bounds else ""
    if "(default:" in help_text:
        if not valid:
            return help_text
        if help_text.endswith(")"):
            return f"{help_text[:-1]}; {valid})"
        return f"{help_text} ({valid})"
    said = f"default: {default}{'; ' + valid if valid else ''}"
    return f"{help_text} ({said})" if help_text else said


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    flags: dict[str, str] | None = None,
) -> None:
    """Add one flag per (scalar or list) field of ``cls``; values stay unset unless given on the command line.

    ``flags`` spells some fields' flags otherwise (``{"candidates": "--num-candidates"}``): the value
    still lands in the field of that name, so config files keep the field's own key."""
    hints = typing.get_type_hints(cls)
    spelt = {name: flag for name, flag in (flags or {}).items()}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = hints[f.name]
        default = _field_default(f)
        default = None if default is dataclasses.MISSING else default
        if dataclasses.is_dataclass(default):
            continue
        help_text = _help_with_default(f.metadata.get("help", ""), default, f.metadata.get("bounds"))
        for name, flag in spelt.items():  # a help text naming a renamed flag names it as it is spelt now
            help_text = re.sub(rf"{re.escape(_flag(name))}(?![\w-])", flag, help_text)
        flag = spelt.get(f.name, _flag(f.name))
        base = _strip_optional(tp)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()  # as argparse names it, from the flag
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
            del kw["metavar"]
        elif get_origin(base) is dict:
            kw["nargs"] = "*"
            kw["type"] = str
            kw["metavar"] = "KEY=VALUE"
        elif get_origin(base) in (list, tuple):
            kw["nargs"] = "*"
            inner = (get_args(base) or (str,))[0]
            kw["type"] = _parser_for(inner)
        elif get_origin(base) is Literal:
            kw["choices"] = list(get_args(base))
            kw["type"] = type(get_args(base)[0])
            del kw["metavar"]  # argparse shows the choices
        else:
            kw["type"] = _parser_for(base)
        parser.add_argument(flag, **kw)


def option_lines(cfg: Any) -> list[str]:
    """One line per option of the config ``cfg`` (a dataclass instance) as ``-o KEY=VALUE`` takes it:
    ``key=default  (type, range)  help``, a nested config's options dotted (``backbone.lora_r=8``).

    What ``llmrec train MODEL --help`` lists: read from the dataclass itself, so it cannot drift from what
    ``-o`` accepts; the defaults are those of ``cfg`` (a preset's or recipe's, where it has one)."""
    rows = list(_option_rows(cfg, ""))
    width = min(max((len(key) for key, _ in rows), default=0), 40)
    return [f"  {key:<{width}}  {about}".rstrip() for key, about in rows]


def option_rows(cfg: Any, prefix: str = "") -> typing.Iterator[dict[str, str]]:
    """One row per option of the config instance ``cfg`` as ``-o KEY=VALUE`` (or a keyword) takes it: key
    (nested options dotted), default, type, range and help, as text (``train MODEL --help`` and the options
    reference of the documentation print these)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from option_rows(value, f"{key}.")
            continue
        bounds = f.metadata.get("bounds")
        yield {
            "key": key,
            "default": _value_text(value),
            "type": _type_text(hints[f.name]),
            "range": _range_text(bounds) if bounds else "",
            "help": f.metadata.get("help", ""),
        }


def _option_rows(cfg: Any, prefix: str) -> typing.Iterator[tuple[str, str]]:
    for row in option_rows(cfg, prefix):
        kind = row["type"] + (f", {row['range']}" if row["range"] else "")
        yield f"{row['key']}={row['default']}", f"({kind})  {row['help']}"


def _type_text(tp: Any) -> str:
    """An annotation as a user reads it: ``int | null``, ``{a,b}`` (one of), ``list[str]``, ``mapping``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = [_type_text(a) for a in args if a is not type(None)]
        return " | ".join(kinds + (["null"] if type(None) in args else []))
    if origin is Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin in (list, tuple):
        return f"list[{_type_text(args[0]) if args else 'any'}]"
    if origin is dict:
        return "mapping"
    if tp is Path:
        return "path"
    return "any" if tp is Any else _type_name(tp)


def _value_text(value: Any) -> str:
    """A default as ``-o`` would take it (YAML): text as is, else JSON (``null``, ``true``, ``[5, 10]``)."""
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(to_dict(value), default=str)


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parser_for(tp: Any) -> Any:
    if tp in (int, float, str):
        return tp
    if tp is Path:
        return str
    if get_origin(tp) is Literal:
        return type(get_args(tp)[0])
    return str


def parse_key_values(pairs: list[str], where: str) -> dict[str, Any]:
    """``["lr=1e-3", "name=x"]`` -> ``{"lr": 0.001, "name": "x"}``; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: expected KEY=VALUE, got {pair!r}")
        out[key] = _scalar(value)
    return out


def _scalar(value: str) -> Any:
    """A value given as text, read as a YAML scalar (``8`` -> 8, ``false`` -> False, ``1e-4`` -> 0.0001)."""
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str):  # YAML 1.1 reads "1e-4" as a string; a number is meant
        with contextlib.suppress(ValueError):
            parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
    return parsed


def resolve(
    cls: type[T],
    args: argparse.Namespace,
    config_file: str | Path | None = None,
    nested: dict[str, type] | None = None,
    env_prefix: str = "",
) -> T:
    """Config = defaults, overridden by ``config_file`` (YAML/JSON), overridden by ``env_prefix``
    environment variables (:func:`environment_values`), overridden by explicit CLI flags.

    ``nested`` maps a field holding a sub-config to its class: flags of that class fill the sub-config.
    """
    return from_dict(cls, resolved_dict(cls, args, config_file, nested, env_prefix))


def environment_values(
    cls: type, prefix: str, environ: typing.Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The fields of ``cls`` set by environment variables ``<prefix><FIELD>`` (``LLMREC_SERVE_PORT=9000``):
    values read as YAML scalars (a ``str`` field keeps the text as it is; a list field takes
    comma-separated values). A variable with the prefix that names no field is an error listing the
    valid names, so a typo is never ignored."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    fields = {f"{prefix}{f.name.upper()}": f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(k for k in environ if k.startswith(prefix) and k not in fields)
    if unknown:
        raise ConfigError(f"unknown environment variable(s) {unknown}; valid names are {sorted(fields)}")
    out: dict[str, Any] = {}
    for var, name in fields.items():
        if var not in environ:
            continue
        text, tp = environ[var], _strip_optional(hints[name])
        if tp is str or tp is Path:
            out[name] = text
        elif get_origin(tp) is list:
            out[name] = [v.strip() for v in text.split(",") if v.strip()]
        else:
            out[name] = _scalar(text)
    return out


def resolved_dict(
    cls: type,
    args: argparse.Namespace,
    config_file: str | Path | None = None,
    nested: dict[str, type] | None = None,
    env_prefix: str = "",
) -> dict[str, Any]:
    """What :func:`resolve` builds its config from: the file's mapping, then the ``env_prefix`` environment
    variables, with the flags merged in (at every depth: ``-o backbone.dtype=bfloat16`` on top of a file's
    ``options: {backbone: {lora_r: 4}}`` keeps both)."""
    data: dict[str, Any] = unflatten(load_file(config_file)) if config_file else {}
    if env_prefix:
        data.update(environment_values(cls, env_prefix))
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    given = vars(args)
    for k, v in given.items():
        if k in names:
            tp = _strip_optional(hints[k])
            if get_origin(tp) is dict and isinstance(v, list):
                given_pairs = parse_key_values(v, _flag(k))
                if get_args(tp)[1:] == (Any,):  # options of a config (model options): merged at every depth
                    v = merge(data.get(k) or {}, given_pairs)
                else:  # a plain mapping (e.g. column names, which may hold dots)
                    v = {**(data.get(k) or {}), **given_pairs}
            data[k] = v
    for field_name, sub_cls in (nested or {}).items():
        sub_names = {f.name for f in dataclasses.fields(sub_cls)}
        flags = {k: v for k, v in given.items() if k in sub_names and k not in names}
        if flags:
            data[field_name] = merge(data.get(field_name) or {}, flags)
    return data
