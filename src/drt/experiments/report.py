"""``drt report``: finished runs of a results store as tables and plots (HTML + Markdown twin).

Runs are grouped by (data set, model, epochs) — data sets are never mixed in one table or
plot — and within a group by method/budget; each row is mean ± std over seeds.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drt.errors import DrtError
from drt.experiments import tta
from drt.experiments.config import SECTIONS, valid_keys
from drt.experiments.store import STORE_NAME, Store
from drt.methods import METHODS, REGULARISERS
from drt.options import to_dict

GROUP_BY = ("dataset", "model", "epochs")
NOT_IDENTITY = ("seed", "data_dir", "data_root", "eval_every")  # seed + config.NOT_TRAINING
BUDGET_KEYS = ("sparsity", "freeze_fraction", "pcn_keep", "pcn_epoch", "eb_ratio", "imp_rounds", "cka_beta")
RUN_ID = re.compile(r"\b[0-9a-f]{16}\b")


def flat_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config as flat settings (the keys of `drt train` flags and YAML files)."""
    flat = {**config["data"], **config["model"], **config["train"], "method": config["method"]}
    flat.update(config.get("method_options") or {})
    for opts in config.get("reg_options") or []:
        flat.update(opts)
    flat["reg"] = ",".join(config.get("reg") or [])
    return flat


def _defaults(method: str) -> dict[str, Any]:
    """Flat default settings for ``method`` (empty for its options if the method is no longer registered)."""
    out: dict[str, Any] = {"reg": ""}
    for cls in SECTIONS.values():
        out.update(to_dict(cls()))
    for reg, name in [(METHODS, method), *((REGULARISERS, r) for r in REGULARISERS.names())]:
        with contextlib.suppress(DrtError):
            out.update(to_dict(reg.get(name).Options()))
    return out


def budget_label(config: dict[str, Any]) -> str:
    """The method, its regularisers and its budget / non-default options, e.g. ``snip sparsity=0.98``."""
    flat, defaults = flat_settings(config), _defaults(config["method"])
    opts = {**(config.get("method_options") or {})}
    for o in config.get("reg_options") or []:
        opts.update(o)
    parts = [config["method"], *(f"+{r}" for r in config.get("reg") or [])]
    parts += [f"{k}={show(flat[k])}" for k in opts if k in BUDGET_KEYS or flat[k] != defaults.get(k)]
    return " ".join(parts)


def show(v: Any) -> str:
    if isinstance(v, list | tuple):
        return ",".join(str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_filters(items: list[str]) -> dict[str, list[str]]:
    """``["dataset=cifar10", "method=pcn", "method=dense"]`` -> {key: accepted values} (same key = any of)."""
    out: dict[str, list[str]] = defaultdict(list)
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise DrtError(f"--filter wants key=value (e.g. dataset=cifar10), got {item!r}")
        if key not in (*valid_keys(), "id"):
            raise DrtError(f"unknown --filter key {key!r}; valid: id, {', '.join(valid_keys())}")
        out[key].append(value.strip())
    return dict(out)


def _same(v: Any, want: str) -> bool:
    if show(v).lower() == want.lower():
        return True
    try:
        return not isinstance(v, bool) and float(v) == float(want)
    except (TypeError, ValueError):
        return False


def matches(flat: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    return all(any(_same(flat.get(k), w) for w in wants) for k, wants in filters.items())


@dataclass
class Row:
    """One method/budget in a group: its runs over seeds."""

    number: int
    label: str
    method: str
    runs: list[dict[str, Any]]

    def stat(self, key: str) -> tuple[float, float]:
        xs = [float(r["metrics"][key]) for r in self.runs if r["metrics"].get(key) is not None]
        if not xs:
            return float("nan"), float("nan")
        return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


@dataclass
class Group:
    """Runs of one data set, model and length; ``common``: settings shared by all its runs (non-default)."""

    key: dict[str, Any]
    rows: list[Row]
    common: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        k = self.key
        rest = ", ".join(f"{a} {show(b)}" for a, b in k.items() if a not in ("dataset", "model", "epochs"))
        return (f"{k.get('model', '?')} on {k['dataset']}" + (f", {k['epochs']} epochs" if "epochs" in k else "")
                + (f", {rest}" if rest else ""))

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", "-".join(show(v) for v in self.key.values()).lower()).strip("-")


def run_settings(run: dict[str, Any]) -> dict[str, Any]:
    """A stored run's flat settings, with ``processes`` when it trained on several (another global batch)."""
    flat = flat_settings(run["config"])
    world = (run.get("env") or {}).get("world_size", 1)
    return {**flat, "processes": world} if world != 1 else flat


def group_runs(runs: list[dict[str, Any]], by: tuple[str, ...] = GROUP_BY) -> list[Group]:
    """Finished runs grouped by ``by`` (always including the data set), rows by every other setting but seed."""
    by = ("dataset", *(k for k in by if k != "dataset"))
    flats = {r["id"]: run_settings(r) for r in runs}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[json.dumps([flats[r["id"]].get(k) for k in by])].append(r)
    out = []
    for key_json, members in sorted(groups.items()):
        shown = {}
        for r in members:
            f, d = flats[r["id"]], _defaults(r["method"])
            shown[r["id"]] = {k: v for k, v in f.items() if k not in (*by, *NOT_IDENTITY, "method")
                              and (v != d.get(k) or k in BUDGET_KEYS)}
        keys = set().union(*(s.keys() for s in shown.values()))
        varying = {k for k in keys if len({json.dumps(s.get(k)) for s in shown.values()}) > 1}
        common = {k: show(v) for k, v in shown[members[0]["id"]].items() if k not in varying}
        # a varying setting other than the budget is named only where it departs from its usual value
        usual = {k: Counter(json.dumps(s.get(k)) for s in shown.values()).most_common(1)[0][0]
                 for k in varying - set(BUDGET_KEYS)}
        common.update({k: f"{show(json.loads(v))} (unless a row says otherwise)" for k, v in usual.items()
                       if v != "null"})
        rows: dict[str, Row] = {}
        for r in members:
            f = flats[r["id"]]
            ident = json.dumps({k: v for k, v in f.items() if k not in NOT_IDENTITY}, sort_keys=True)
            if ident not in rows:
                mine = shown[r["id"]]  # a default value is absent here: named by its value when unusual
                extra = [f"{k}={show(v)}" for k, v in f.items() if k in varying and k != "reg"
                         and (json.dumps(mine.get(k)) != usual[k] if k in usual else k in mine)]
                reg = f" +{f['reg'].replace(',', ' +')}" if f["reg"] else ""
                rows[ident] = Row(0, " ".join([f["method"] + reg, *extra]), f["method"], [])
            rows[ident].runs.append(r)
        ordered = sorted(rows.values(), key=lambda row: -row.stat("test_acc")[0])
        for i, row in enumerate(ordered, 1):
            row.number = i
            row.runs.sort(key=lambda r: r["seed"])
        out.append(Group(dict(zip(by, json.loads(key_json), strict=True)), ordered, common))
    return out


def _ms(m: float, s: float, n: int, fmt: str, exact: bool = False) -> str:
    """``mean ± std`` (std over seeds; omitted for one seed, and for counts identical across seeds)."""
    if m != m:
        return "-"
    return format(m, fmt) if n < 2 or (exact and s == 0) else f"{m:{fmt}} ± {s:{fmt}}"


COLUMNS = ("#", "method / budget", "seeds", "test acc %", "trainable params", "MFLOPs/sample (dense-eq.)",
           "MFLOPs/sample (effective)", "ms/step", "train s", "s to target", "vs dense")


def _time_to_target(row: Row) -> tuple[str, str]:
    """The row's time to the dense target (mean ± std over the seeds that reach it) and its ratio to dense."""
    timed = [r for r in row.runs if "tta_target" in r["metrics"]]
    if not timed:
        return "-", "-"  # no dense reference in the store
    reached = [r["metrics"] for r in timed if r["metrics"]["time_to_target"] is not None]
    if not reached:
        return "not reached", "-"
    t, ratio = row.stat("time_to_target"), row.stat("tta_vs_dense")
    seeds = f" ({len(reached)}/{len(row.runs)} seeds)" if len(reached) < len(row.runs) else ""
    cell = _ms(*t, len(reached), ".2f" if t[0] < 10 else ".0f") + seeds
    return cell, ("-" if ratio[0] != ratio[0] else f"{ratio[0]:.2f}×")


def table_rows(group: Group) -> list[list[str]]:
    """The group's table: one row per method/budget, mean ± std over seeds."""
    out = []
    for row in group.rows:
        n = len(row.runs)
        acc, params = row.stat("test_acc"), row.stat("params_trainable")
        flops, eff = row.stat("flops"), row.stat("flops_effective")
        step, total = row.stat("step_time"), row.stat("train_time")
        out.append([str(row.number), row.label, ",".join(str(r["seed"]) for r in row.runs),
                    _ms(100 * acc[0], 100 * acc[1], n, ".2f"), _ms(*params, n, ",.0f", exact=True),
                    _ms(flops[0] / 1e6, flops[1] / 1e6, n, ".3f", exact=True),
                    _ms(eff[0] / 1e6, eff[1] / 1e6, n, ".3f", exact=True),
                    _ms(1000 * step[0], 1000 * step[1], n, ".2f"),
                    _ms(*total, n, ".2f" if total[0] < 10 else ".0f"), *_time_to_target(row)])
    return out


def curves(store: Store, group: Group, x: str = "epoch") -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, x, test accuracy of shape (seeds, epochs)) per row, over the epochs every seed recorded; x is
    the epoch, or with ``x="wall_clock"`` the training wall-clock at each epoch's end (mean over seeds)."""
    out = []
    for row in group.rows:
        per_run = []
        for r in row.runs:
            history = store.epochs(r["id"])
            per_run.append({e["epoch"]: (e["test_acc"], t) for e, t in zip(history, tta.clock(history), strict=True)
                            if "test_acc" in e})
        per_run = [a for a in per_run if a]
        epochs = sorted(set.intersection(*(set(a) for a in per_run))) if per_run else []
        if epochs:
            at = np.array([[a[e] for e in epochs] for a in per_run])  # (seeds, epochs, [acc, clock])
            xs = np.array(epochs) if x == "epoch" else at[:, :, 1].mean(0)
            out.append((f"#{row.number} {row.label}", xs, at[:, :, 0]))
    return out


def with_time_to_target(store: Store, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` with each one's time to accuracy (``drt.experiments.tta``, against every finished dense run in
    the store) merged into its metrics, in memory."""
    found = tta.annotate(store.runs("done"), store.epochs)
    for r in runs:
        r["metrics"] = {**r["metrics"], **found.get(r["id"], {})}
    return runs


def finished_runs(results_dir: str | Path, filters: dict[str, list[str]] | None = None
                  ) -> tuple[Store, list[dict[str, Any]]]:
    """The store and its ``done`` runs matching ``filters``; DrtError if there are none."""
    path = Path(results_dir) / STORE_NAME
    if not path.exists():
        raise DrtError(f"no results store at {path}; run `drt train` or `drt sweep` first, or pass --results-dir")
    store = Store(path)
    done = store.runs("done")
    if not done:
        raise DrtError(f"no finished runs in {path}")
    runs = [r for r in done if matches({**flat_settings(r["config"]), "id": r["id"]}, filters or {})]
    if not runs:
        want = " ".join(f"{k}={'|'.join(v)}" for k, v in (filters or {}).items())
        raise DrtError(f"no finished runs in {path} match {want} ({len(done)} finished runs in total)")
    return store, with_time_to_target(store, runs)


def analysis_images(results_dir: str | Path, run_ids: set[str]) -> list[Path]:
    """PNGs under ``<results>/analysis/`` (written by `drt analyze`); those naming another run id are left out."""
    root = Path(results_dir) / "analysis"
    found = sorted(root.rglob("*.png")) if root.is_dir() else []
    return [p for p in found if all(i in run_ids for i in RUN_ID.findall(str(p.relative_to(root))))]
