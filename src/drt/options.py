"""Typed option dataclasses <-> flat dicts, YAML and argparse flags, validated at the boundary.

Every setting lives in a frozen dataclass field whose ``metadata`` carries its help text
(and optional ``choices``). The same fields generate command-line flags (``batch_size`` ->
``--batch-size``) and are the keys of a YAML config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from drt.errors import DrtError


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with help text (and optional choices) for flags and docs."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``T | None`` annotations."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def is_tuple(tp: Any) -> bool:
    """Whether a field of type ``tp`` holds a tuple (given as a list or a comma string)."""
    return typing.get_origin(_base_type(tp)[0]) is tuple


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert one value from YAML or the command line to the field's type."""
    inner, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise DrtError(f"option {key!r} may not be empty")
    origin = typing.get_origin(inner)
    if origin is tuple:
        elem = typing.get_args(inner)[0]
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list | tuple):
            value = [value]
        return tuple(coerce(key, v, elem) for v in value)
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise DrtError(f"option {key!r} must be true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise DrtError(f"option {key!r} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise DrtError(f"option {key!r} must be an integer, got {value!r}") from None
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise DrtError(f"option {key!r} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise DrtError(f"option {key!r} must be a number, got {value!r}") from None
    if inner is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise DrtError(f"option {key!r} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported option type {tp} for {key}")


def build(cls: type, values: dict[str, Any], what: str) -> Any:
    """Instantiate ``cls`` from a dict, rejecting unknown keys and checking types and choices."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise DrtError(f"unknown {what} option(s) {', '.join(unknown)}; valid: {', '.join(types_)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = coerce(f.name, values[f.name], types_[f.name])
        choices = f.metadata.get("choices")
        if choices and v is not None and v not in choices:
            raise DrtError(f"option {f.name!r} got {v!r}; valid: {', '.join(choices)}")
        kwargs[f.name] = v
    return cls(**kwargs)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser | Any, cls: type, seen: set[str]) -> None:
    """Add one flag per dataclass field (skipping names already added); defaults are None."""
    types_ = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in seen:
            continue
        seen.add(f.name)
        inner, _ = _base_type(types_[f.name])
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = f"{help_} (default: {default})" if default not in (None, ()) else help_
        if inner is bool:
            parser.add_argument(flag(f.name), dest=f.name, default=None, help=help_,
                                action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag(f.name), dest=f.name, default=None, help=help_,
                                choices=f.metadata.get("choices"), metavar=f.name.upper())


def to_dict(obj: Any) -> dict[str, Any]:
    """JSON-friendly dict of a (nested) option dataclass; tuples become lists."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(obj)
