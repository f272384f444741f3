"""The one typed config loader: a JSON object -> a frozen dataclass, every mistake named by its full key path.

Every stage describes its settings as a frozen dataclass whose field defaults are THE defaults (nothing else
repeats them). Ranges are declared once, on the field::

    @dataclass(frozen=True)
    class OptimConfig:
        lr: float = field(5e-4, gt=0)
        max_steps: int | None = field(120, ge=1)

`load(OptimConfig, {"lr": -1}, "encoders.x.train.optim")` then raises `ConfigError("'encoders.x.train.optim.lr':
-1 is out of range; expected a (finite) number > 0")`. Unknown keys, wrong types (int, float, bool, str, Literal,
Optional, unions, tuples, dict[str, ...], nested dataclasses) and missing required keys are errors of the same
form. Cross-field rules stay in the dataclass's `__post_init__`; their errors get the key path of the block.

This module imports nothing heavy: the workflow calls it while Snakemake parses the config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

MISSING = dataclasses.MISSING
_RANGE = "config_range"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the full key path and what was expected."""


def field(default: Any = MISSING, *, default_factory: Any = MISSING, ge: float | None = None,
          gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with an allowed range (checked by `load` on numbers; None values are not checked)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_RANGE: bounds})


def field_range(f: dataclasses.Field) -> dict[str, float]:
    return dict(f.metadata.get(_RANGE, {}))


def describe_range(bounds: Mapping[str, float]) -> str:
    """{"ge": 0, "le": 1} -> "in [0, 1]"; {"gt": 0} -> "> 0"."""
    lo = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    hi = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}"


def _in_range(value: float, bounds: Mapping[str, float]) -> bool:
    return (("ge" not in bounds or value >= bounds["ge"]) and ("gt" not in bounds or value > bounds["gt"])
            and ("le" not in bounds or value <= bounds["le"]) and ("lt" not in bounds or value < bounds["lt"]))


def type_name(hint: Any) -> str:
    """A readable name of a type hint: 'an integer', 'one of ['a', 'b']', 'a list of 2 numbers', ..."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(type_name(a) for a in args)})"
    if origin is dict or hint is dict:
        return "a JSON object"
    if dataclasses.is_dataclass(hint):
        return f"a JSON object ({hint.__name__})"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any, where: str, base: Any = None) -> Any:
    """A JSON value as the field's type (lists -> tuples, ints -> floats), or a ConfigError naming `where`."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where!r}: null is not allowed; expected {type_name(hint)}")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, base)
            except ConfigError as err:
                errors.append(err)
        # One non-null member (Optional[X]): its own message says more than the union's.
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where!r}: {value!r} is not {type_name(hint)}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) or value not in choices:
            raise ConfigError(f"{where!r}: {value!r} is not allowed; expected one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(hint):
        return load(hint, value, where, base=base if isinstance(base, hint) else None)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where!r}: expected {type_name(hint)}, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where!r}: expected {type_name(hint)}, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where!r}: expected a JSON object, got {value!r}")
        key_hint, value_hint = typing.get_args(hint) or (str, Any)
        return {_coerce(k, key_hint, f"{where} key"): _coerce(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where!r}: expected true/false, got {value!r}")
        return value
    if hint is int:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise ConfigError(f"{where!r}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where!r}: expected a (finite) number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where!r}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: the config loader does not handle the type {hint!r}")


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def load[T](cls: type[T], values: Mapping[str, Any] | None, where: str = "", *, base: T | None = None) -> T:
    """The frozen dataclass `cls` from a JSON object; `where` is the key path of `values` in error messages.

    Missing keys take the dataclass defaults, or `base`'s values when given (a preset that `values` overrides;
    nested dataclass blocks then override `base`'s blocks key by key).
    """
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where or 'config'!r}: expected a JSON object ({cls.__name__}), got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'config'!r}: unknown key(s) {[_path(where, k) for k in unknown]}; known keys: "
                          f"{sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        path = _path(where, name)
        if name not in values:
            if base is not None:
                kwargs[name] = getattr(base, name)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{where or 'config'!r}: missing key {path!r} ({type_name(hints[name])})")
            continue
        value = _coerce(values[name], hints[name], path, getattr(base, name, None))
        bounds = field_range(f)
        if bounds and isinstance(value, int | float) and not isinstance(value, bool) and not _in_range(value, bounds):
            raise ConfigError(f"{path!r}: {values[name]!r} is out of range; expected {type_name(hints[name])} "
                              f"{describe_range(bounds)}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # ConfigError included: __post_init__'s cross-field rules
        raise ConfigError(f"{where!r}: {err}" if where else str(err)) from None


def loads[T](cls: type[T], text: str | None, where: str = "--config", *, path: str = "") -> T:
    """The config of an entry point's `--config` JSON text (what the workflow passes: `dumps` of the resolved
    dataclass, so it loads back unchanged); empty text means all defaults. A class with a `from_dict` classmethod
    (presets: spidr.config.TrainConfig, lm.config.TrainConfig; eval.published.PublishedNames) resolves its defaults
    there. `where` names the argument in JSON errors, `path` prefixes key paths in the others."""
    values: Any = {}
    if text:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where} is not valid JSON ({err}): {text[:200]!r}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a JSON object ({cls.__name__}), got {text[:200]!r}")
    from_dict = getattr(cls, "from_dict", None)
    return from_dict(values, path) if from_dict is not None else load(cls, values, path)


def to_jsonable(obj: Any) -> Any:
    """A config (dataclass, dict, tuple) as plain JSON values, so it round-trips through `load` unchanged."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Key-sorted JSON of a config: what the workflow passes as `--config` (reordered keys are no change)."""
    return json.dumps(to_jsonable(obj), sort_keys=True)
