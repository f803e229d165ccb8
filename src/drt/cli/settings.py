"""The settings flags of ``drt train``: one flag per name, grouped under the human title of the class
that declares it (``drt.options``), each showing its default — or the per-method defaults."""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from collections.abc import Sequence

from drt.experiments.config import SECTIONS
from drt.methods import METHODS, REGULARISERS
from drt.options import add_flag, declared_in, default_text, field_of, title

Owner = tuple[str, type]  # (method, regulariser or section name, its options class)


def owners(method: str | None = None, regs: Sequence[str] = ()) -> list[Owner]:
    """The sections, then ``method`` and ``regs`` (by default every method and regulariser)."""
    out: list[Owner] = list(SECTIONS.items())
    if method is None:
        return out + [(n, reg.get(n).Options) for reg in (METHODS, REGULARISERS) for n in reg.names()]
    return out + [(method, METHODS.get(method).Options)] + [(r, REGULARISERS.get(r).Options) for r in regs]


def defaults(name: str, holders: Sequence[Owner]) -> str | None:
    """The default shown for setting ``name``: the common one, then those of the owners that differ."""
    shown = {o: default_text(field_of(cls, name).default) for o, cls in holders}
    common = Counter(shown.values()).most_common(1)[0][0]
    rest = [f"{o} {d or 'none'}" for o, d in shown.items() if d != common]
    return f"{common or 'none'}; {', '.join(rest)}" if rest else common


def add_settings(parser: argparse.ArgumentParser, holders: Sequence[Owner], used_by: bool = True) -> None:
    """A group per title of the declaring classes; ``used_by``: say which methods read each group."""
    groups: dict[str, dict[str, list[Owner]]] = {}
    for owner, cls in holders:
        for f in dataclasses.fields(cls):
            root = declared_in(cls, f.name)
            groups.setdefault(title(root) or root.__name__, {}).setdefault(f.name, []).append((owner, cls))
    for heading, settings in groups.items():
        users = list(dict.fromkeys(o for held in settings.values() for o, _ in held if o not in SECTIONS))
        group = parser.add_argument_group(heading, f"used by {', '.join(users)}" if used_by and users else None)
        for name, held in settings.items():
            add_flag(group, held[0][1], name, defaults(name, held))
