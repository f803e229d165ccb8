"""Typed option dataclasses <-> flat dicts, YAML and argparse flags, validated at the boundary.

Every setting lives in a frozen dataclass field whose ``metadata`` carries its help text
(and optional ``choices``). The same fields generate command-line flags (``batch_size`` ->
``--batch-size``) and are the keys of a YAML config file.

One name, one meaning: flags and YAML keys form one flat namespace, so a setting several methods
share is declared once (in a shared ``Options`` class, with a human ``title`` for ``--help``) and
inherited; a method that needs another default re-declares it with ``own_default`` (same type and
help). ``conflicts`` finds every other re-declaration.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, ClassVar

from drt.errors import DrtError


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with help text (and optional choices) for flags and docs."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def own_default(base: type, name: str, default: Any) -> Any:
    """The setting ``name`` as ``base`` declares it (type, help, choices), with this class's own default."""
    return dataclasses.field(default=default, metadata={**field_of(base, name).metadata, "own_default": True})


def field_of(cls: type, name: str) -> dataclasses.Field[Any]:
    """The dataclass field ``name`` of ``cls`` (KeyError if it has none)."""
    return {f.name: f for f in dataclasses.fields(cls)}[name]


@dataclasses.dataclass(frozen=True)
class Options:
    """Root of shared option classes: ``title`` names their group in ``--help``; ``__post_init__``
    chains, so each class checks its own fields and calls ``super().__post_init__()``."""

    title: ClassVar[str] = ""

    def __post_init__(self) -> None:
        pass


def declared_in(cls: type, name: str) -> type:
    """The class that declares the setting ``name`` of ``cls`` (the first in its bases' order)."""
    for base in reversed(cls.__mro__):
        if name in base.__dict__.get("__dataclass_fields__", {}) and name in base.__dict__.get("__annotations__", {}):
            return base
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def title(cls: type) -> str:
    """The human name of the settings ``cls`` declares (its own ``title``, never inherited)."""
    return str(cls.__dict__.get("title") or "")


def conflicts(classes: list[type]) -> list[str]:
    """Why the settings of ``classes`` do not give each name one meaning (empty: they do).

    A name may be declared by one class only; a subclass may re-declare it only through
    ``own_default`` (the same type, help and choices; another default).
    """
    out: list[str] = []
    roots: dict[str, type] = {}
    for cls in dict.fromkeys(classes):
        types_ = field_types(cls)
        for f in dataclasses.fields(cls):
            root = declared_in(cls, f.name)
            if roots.setdefault(f.name, root) is not root:
                out.append(f"{f.name} is declared by {roots[f.name].__name__} and by {root.__name__}")
            rf = field_of(root, f.name)
            same = types_[f.name] == field_types(root)[f.name] and all(
                f.metadata.get(k) == rf.metadata.get(k) for k in ("help", "choices"))
            if f is not rf and not (same and f.metadata.get("own_default")):
                out.append(f"{cls.__name__} re-declares {f.name} of {root.__name__}: inherit it, or use own_default")
            if not title(root):
                out.append(f"{root.__name__} declares {f.name} but has no title for --help")
    return list(dict.fromkeys(out))


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


def default_text(default: Any) -> str | None:
    """How ``--help`` shows a default (None: nothing to show)."""
    if default is dataclasses.MISSING or default in (None, ()):
        return None
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)


def add_flag(parser: argparse.ArgumentParser | Any, cls: type, name: str, default: str | None = None) -> None:
    """The flag of setting ``name`` of ``cls`` (argparse default None: "not given"); ``default`` is
    the text shown as its default (by default that of ``cls``)."""
    f = field_of(cls, name)
    inner, _ = _base_type(field_types(cls)[name])
    shown = default if default is not None else default_text(f.default)
    help_ = f.metadata.get("help", "")
    help_ = f"{help_} (default: {shown})" if shown else help_
    if inner is bool:
        parser.add_argument(flag(name), dest=name, default=None, help=help_, action=argparse.BooleanOptionalAction)
    else:
        parser.add_argument(flag(name), dest=name, default=None, help=help_, choices=f.metadata.get("choices"),
                            metavar=name.upper())


def add_flags(parser: argparse.ArgumentParser | Any, cls: type, seen: set[str]) -> None:
    """Add one flag per dataclass field (skipping names already added); defaults are None."""
    for f in dataclasses.fields(cls):
        if f.name not in seen:
            seen.add(f.name)
            add_flag(parser, cls, f.name)


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
