"""Search spaces of ``llmrec tune``: what each trial searches, read from YAML and checked before any trial.

A space file has two mappings of model options (llmrec's names, dotted keys for nested ones):

- ``fixed``: set in every trial, not searched (e.g. the epoch budget);
- ``params``: one entry per searched option: ``{low: L, high: H}`` (a float range, or an integer range when
  both bounds are integers; ``log: true`` samples on a log scale; ``step`` for a grid on it) or
  ``{choices: [...]}`` (categorical).

llmrec ships one per baseline (``spaces/<model>.yaml``, each range commented with its source). A user's
``--space FILE`` extends the shipped one: its ``fixed`` and ``params`` entries replace the shipped entries of
the same name (``null`` removes one), others are added; ``replace: true`` at its top level drops the shipped
space instead. Every bound and choice is checked against the model's config before any trial runs, so a
misspelt option or a value the model refuses is one line naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from llmrec.config import load_file, unflatten
from llmrec.errors import ConfigError

_PARAM_KEYS = {"low", "high", "log", "step", "choices"}
_TOP_KEYS = {"fixed", "params", "replace"}


def shipped_space_path(model: str) -> Path | None:
    """The space llmrec ships for ``model`` (None when it ships none)."""
    path = Path(str(resources.files("llmrec.tuning") / "spaces" / f"{model}.yaml"))
    return path if path.is_file() else None


def shipped_models() -> list[str]:
    """The models llmrec ships a search space for."""
    folder = Path(str(resources.files("llmrec.tuning") / "spaces"))
    return sorted(p.stem for p in folder.glob("*.yaml"))


@dataclass(frozen=True)
class Param:
    """One searched option: a float/int range (``low``..``high``, ``log``, ``step``) or ``choices``."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def is_int(self) -> bool:
        """An integer range: both bounds (and the step) are integers."""
        values = (self.low, self.high) + ((self.step,) if self.step is not None else ())
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool) for v in values)

    def suggest(self, trial: Any) -> Any:
        """This option's value for an Optuna ``trial``."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take (e.g. the model's default)."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        assert self.low is not None and self.high is not None
        if self.is_int and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """As the space file writes it."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class SearchSpace:
    """The options every trial fixes and those it searches, with the files they came from."""

    fixed: dict[str, Any] = field(default_factory=dict)
    params: tuple[Param, ...] = ()
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """What a study records of its space (a changed one is refused on resume)."""
        return {"fixed": dict(self.fixed), "params": {p.name: p.to_dict() for p in self.params}}


def load_space(model: str, path: str | Path | None = None) -> SearchSpace:
    """The search space of ``model``: llmrec's shipped one, extended (or replaced) by the file ``path``."""
    shipped = shipped_space_path(model)
    if shipped is None and path is None:
        raise ConfigError(
            f"llmrec ships no search space for '{model}' (it has: {', '.join(shipped_models())})",
            hint="give one with --space FILE (fixed: and params: mappings, see 'llmrec tune --help')",
        )
    fixed: dict[str, Any] = {}
    params: dict[str, dict[str, Any]] = {}
    sources: list[str] = []
    user = _read(Path(path)) if path is not None else None
    if shipped is not None and not (user is not None and user.get("replace")):
        base = _read(shipped)
        fixed, params = dict(base.get("fixed") or {}), dict(base.get("params") or {})
        sources.append(str(shipped))
    if user is not None:
        fixed = _extended(fixed, user.get("fixed"))
        params = _extended(params, user.get("params"))
        sources.append(str(path))
    where = str(path) if path is not None else str(shipped)
    parsed = tuple(_param(name, spec, where) for name, spec in params.items())
    if overlap := sorted(set(fixed) & {p.name for p in parsed}):
        raise ConfigError(f"{where}: {overlap[0]} is both fixed and searched; keep it in one of the two")
    if not parsed:
        raise ConfigError(f"{where}: params is empty: nothing to search")
    return SearchSpace(fixed=fixed, params=parsed, sources=tuple(sources))


def _extended(shipped: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """``shipped`` with ``given``'s entries replacing or adding theirs; a ``null`` entry removes its name."""
    out = {**shipped, **(given or {})}
    return {name: value for name, value in out.items() if value is not None}


def _read(path: Path) -> dict[str, Any]:
    data = load_file(path)
    if unknown := sorted(set(data) - _TOP_KEYS):
        raise ConfigError(
            f"{path}: unknown key '{unknown[0]}' (a space file has {', '.join(sorted(_TOP_KEYS))})"
        )
    for key in ("fixed", "params"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"{path}: {key} must be a mapping of option names, got {data[key]!r}")
    return data


def _param(name: str, spec: Any, where: str) -> Param:
    """One ``params`` entry -> a Param; a malformed one is a one-line error naming the file and key."""
    at = f"{where}: params.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{at}: give {{low: L, high: H}} or {{choices: [...]}}, got {spec!r}")
    if unknown := sorted(set(spec) - _PARAM_KEYS):
        raise ConfigError(f"{at}: unknown key '{unknown[0]}' (use low, high, log, step or choices)")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise ConfigError(f"{at}: choices cannot be combined with low/high/log/step")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{at}: choices must be a non-empty list, got {choices!r}")
        return Param(name, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{at}: a range needs both low and high (or give choices)")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    for key, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{at}.{key}: not a number ({value!r})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{at}.{key}: not a finite number ({value!r})")
    if not isinstance(log, bool):
        raise ConfigError(f"{at}.log: true or false, got {log!r}")
    if low > high:
        raise ConfigError(f"{at}: low {low} is above high {high}")
    if log and low <= 0:
        raise ConfigError(f"{at}: a log range needs low > 0, got {low}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{at}.step: must be > 0 and not combined with log, got {step}")
    return Param(name, low=low, high=high, log=log, step=step)


def check_space(space: SearchSpace, model: str, base: dict[str, Any], where: str) -> None:
    """Every option of ``space`` is one of ``model``'s and every bound and choice a value it accepts (on top
    of ``base``, the options given with -o): refused before any trial runs, naming the file and key."""
    from llmrec.models.base import model_config

    def accepted(key: str, options: dict[str, Any]) -> None:
        try:
            model_config(
                model, {**unflatten(options), **base} if key == "fixed" else {**base, **unflatten(options)}
            )
        except ConfigError as e:
            raise ConfigError(f"{where}: {key}: {e}") from None

    accepted("fixed", space.fixed)
    for p in space.params:
        values = list(p.choices) if p.choices is not None else [p.low, p.high]
        for value in values:
            accepted(f"params.{p.name}", {**space.fixed, p.name: value})


__all__ = ["Param", "SearchSpace", "check_space", "load_space", "shipped_models", "shipped_space_path"]
