"""Text listings of the registries for ``drt list``."""

from __future__ import annotations

from drt.data import DATASETS
from drt.experiments.recipes import RECIPES
from drt.methods import METHODS, REGULARISERS
from drt.models import MODELS


def describe(what: str) -> str:
    lines = []
    if what == "models":
        for n in MODELS.names():
            m = MODELS.meta(n)
            lines.append(f"{n:12s} [{m.get('inputs', 'any')}] {m.get('help', '')}")
    elif what == "datasets":
        for n in DATASETS.names():
            m = DATASETS.meta(n)
            where = "needs a data folder" if m.get("needs_dir") else "bundled, no download"
            lines.append(f"{n:14s} ({where}) {m.get('help', '')}")
    elif what == "recipes":
        for n in RECIPES.names():
            m = RECIPES.meta(n)
            settings = " ".join(_flag(k, v) for k, v in RECIPES.get(n).items())
            lines += [f"{n:22s} {m['help']}", f"{'':22s} reached: {m['measured']}", f"{'':22s} {settings}"]
    else:
        for n in METHODS.names():
            lines.append(f"{n:14s} {METHODS.meta(n).get('help', '')}")
        for n in REGULARISERS.names():
            lines.append(f"{n:14s} (regulariser, --reg {n}) {REGULARISERS.meta(n).get('help', '')}")
    return "\n".join(lines)


def _flag(key: str, value: object) -> str:
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"
