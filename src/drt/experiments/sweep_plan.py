"""Planning a sweep: the YAML grid expanded into distinct, validated runs (see ``sweep`` for the format)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from drt.errors import DrtError
from drt.experiments.config import SECTIONS, RunConfig, make_config, option_classes
from drt.options import field_types, is_tuple

TOP_KEYS = ("base", "grid", "runs", "workers")


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: the planned runs (flat settings, one per distinct config) and workers."""

    path: Path
    settings: tuple[dict[str, Any], ...]
    configs: tuple[RunConfig, ...]
    workers: int


def _flat(mapping: Any, where: str, nested: bool = True) -> dict[str, Any]:
    """Flat settings from a mapping whose ``data:``/``model:``/``train:`` sections may nest them."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise DrtError(f"{where} must be a mapping of settings, got {type(mapping).__name__}")
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if isinstance(v, dict):
            if not nested or k not in SECTIONS:
                raise DrtError(f"{where}.{k}: only the sections {', '.join(SECTIONS)} may nest settings")
            items = list(_flat(v, f"{where}.{k}", nested=False).items())
        else:
            items = [(str(k).replace("-", "_"), v)]
        for key, value in items:
            if key in out:
                raise DrtError(f"{where}: setting {key!r} is given twice")
            out[key] = value
    return out


def tuple_keys() -> set[str]:
    """Settings holding a tuple (``hidden``, ``milestones``, ...): each alternative is a list or comma string."""
    return {k for cls in option_classes() for k, tp in field_types(cls).items() if is_tuple(tp)}


def _expand(choices: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Cartesian product of settings whose list values are alternatives (a scalar is one value).

    A tuple-valued setting (``hidden``, ``milestones``) is given per alternative as a nested
    list or a comma string: ``hidden: [[300, 100], "64"]``.
    """
    tuples = tuple_keys()
    for k, v in choices.items():
        if isinstance(v, list) and not v:
            raise DrtError(f"{where}: {k!r} has an empty list of values")
        if k in tuples and isinstance(v, list) and not all(isinstance(a, list | str) for a in v):
            raise DrtError(f"{where}: {k!r} takes a list per alternative: write [{v!r}] for one value, "
                           f"or [[a, b], [c]] for several")
    lists = {k: v if isinstance(v, list) else [v] for k, v in choices.items()}
    return [dict(zip(lists, combo, strict=True)) for combo in itertools.product(*lists.values())]


def plan(raw: Any, path: str | Path = "<sweep>") -> tuple[list[dict[str, Any]], int]:
    """(flat settings of every distinct run, workers) from a parsed sweep mapping; validates everything."""
    if not isinstance(raw, dict):
        raise DrtError(f"sweep file {path} must be a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = sorted(str(k) for k in raw if k not in TOP_KEYS)
    if unknown:
        raise DrtError(f"unknown key(s) {', '.join(unknown)} in sweep file {path}; valid: {', '.join(TOP_KEYS)}")
    base = _flat(raw.get("base"), "base")
    grid = _flat(raw.get("grid"), "grid")
    entries = raw.get("runs") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DrtError(f"sweep file {path}: `runs:` must be a list of mappings of settings")
    if not grid and not entries:
        raise DrtError(f"sweep file {path} has an empty grid: give `grid:` lists of values and/or `runs:`")
    workers = raw.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DrtError(f"sweep file {path}: workers must be a positive integer, got {workers!r}")
    points = _expand(grid, "grid")
    variants = [v for i, e in enumerate(entries) for v in _expand(_flat(e, f"runs[{i}]"), f"runs[{i}]")] or [{}]
    out, seen = [], set()
    for variant in variants:
        for point in points:
            values = {**base, **point, **variant}
            try:
                run_id = make_config(values).run_id()
            except DrtError as e:
                raise DrtError(f"sweep file {path}: {e}") from None
            if run_id not in seen:
                seen.add(run_id)
                out.append(values)
    return out, workers


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep YAML file."""
    path = Path(path)
    if not path.is_file():
        raise DrtError(f"sweep file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise DrtError(f"sweep file {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise DrtError(f"sweep file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    settings, workers = plan(raw, path)
    return Sweep(path, tuple(settings), tuple(make_config(s) for s in settings), workers)
