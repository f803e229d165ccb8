"""Text listings of the registries for ``drt list``."""

from __future__ import annotations

from drt.data import DATASETS
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
    else:
        for n in METHODS.names():
            lines.append(f"{n:14s} {METHODS.meta(n).get('help', '')}")
        for n in REGULARISERS.names():
            lines.append(f"{n:14s} (regulariser, --reg {n}) {REGULARISERS.meta(n).get('help', '')}")
    return "\n".join(lines)
