"""The report as a list of blocks, written as self-contained HTML (base64 images, inline CSS) and Markdown."""

from __future__ import annotations

import base64
import datetime
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drt.experiments import plots
from drt.experiments.report import COLUMNS, analysis_images, curves, finished_runs, group_runs, table_rows


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    name: str  # file name beside report.md
    data: bytes  # PNG
    alt: str


CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #446;padding-bottom:.2em}
h2{margin-top:2em;border-bottom:1px solid #ccd}table{border-collapse:collapse;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ccd;padding:.3em .6em;text-align:right;white-space:nowrap}
th{background:#eef;white-space:normal;vertical-align:bottom}
td:nth-child(2),th:nth-child(2){text-align:left;white-space:normal;min-width:12em}
tr:nth-child(even) td{background:#f7f7fb}img{max-width:100%;display:block;margin:1em 0}
p.note{color:#555;font-size:.92em}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}"""


def _environment(runs: list[dict[str, Any]]) -> str:
    envs = sorted({f"{e.get('cpu', '?')} ({e.get('torch_threads', '?')} torch threads, {e.get('device', '?')}), "
                   f"torch {e.get('torch', '?')}, drt {e.get('code_version', '?')}"
                   for e in (r["env"] or {} for r in runs)})
    return "; ".join(envs)


def blocks(results_dir: str | Path, filters: dict[str, list[str]] | None = None) -> tuple[list[Any], int]:
    """The report's content and the number of runs in it."""
    store, runs = finished_runs(results_dir, filters)
    unfinished = len(store.runs()) - len(store.runs("done"))
    out: list[Any] = [Heading(1, "drt report"), Para(
        f"{len(runs)} finished runs from {store.path}"
        + (f" (filter: {' '.join(f'{k}={chr(124).join(v)}' for k, v in filters.items())})" if filters else "")
        + (f"; {unfinished} unfinished (running or failed) runs are not included" if unfinished else "")
        + f". Generated {datetime.datetime.now().isoformat(timespec='seconds')}."), Para(
        "Accuracy is final-epoch accuracy on the held-out test split. Each row is one method/budget; values are "
        "mean ± sample std over seeds (counts identical across seeds are shown without ±). Trainable params count "
        "the parameters the optimizer updates that are not masked or frozen. FLOPs are forward FLOPs per sample "
        "(multiply-add = 2): dense-equivalent as run, and effective (each layer weighted by its density). "
        "ms/step and train s are measured training time (evaluation excluded). s to target is time to accuracy: the "
        "training wall-clock (set-up, PCN statistics and transforms, pruning scores included; evaluation excluded) "
        "until the test accuracy first reaches the target, the final accuracy of the table's dense run (the "
        "largest dense model of that name, same data and epochs) minus 0.5 points; vs dense is its ratio to the "
        "dense run's own time to that target. The number beside each point in "
        "the plots is the row's #; filled markers are on the Pareto front (higher accuracy at lower cost)."),
        Para(f"Measured on: {_environment(runs)}.")]
    for g in group_runs(runs):
        out += [Heading(2, g.title)]
        if g.common:
            out.append(Para("Settings shared by these runs (non-default): "
                            + ", ".join(f"{k}={v}" for k, v in sorted(g.common.items()))))
        out.append(Table(COLUMNS, table_rows(g)))
        points = [plots.Point(r.number, r.label, r.method, r.stat("test_acc"),
                              {k: r.stat(k) for k, _, _ in plots.AXES}) for r in g.rows]
        if len(points) > 1:
            out.append(Image(f"pareto-{g.slug}.png", plots.pareto_png(points, f"{g.title}: accuracy vs cost"),
                             f"Pareto plots, {g.title}"))
        cs = curves(store, g)
        if cs:
            out.append(Image(f"curves-{g.slug}.png", plots.curves_png(cs, f"{g.title}: test accuracy per epoch"),
                             f"Training curves, {g.title}"))
            targets = sorted({r["metrics"]["tta_target"] for row in g.rows for r in row.runs
                              if "tta_target" in r["metrics"]})
            out.append(Image(f"wallclock-{g.slug}.png",
                             plots.curves_png(curves(store, g, x="wall_clock"), f"{g.title}: test accuracy vs time",
                                              xlabel="training wall-clock (s)", targets=targets),
                             f"Accuracy vs training wall-clock, {g.title}"
                             + (f" (dashed: target {', '.join(f'{100 * t:.2f}%' for t in targets)})" if targets
                                else "")))
    extra = analysis_images(results_dir, {r["id"] for r in runs})
    if extra:
        root = Path(results_dir) / "analysis"
        out += [Heading(2, "Analysis (PCN spectra, CKA heatmaps)"),
                Para(f"Figures written by `drt analyze` under {root}.")]
        for p in extra:
            rel = p.relative_to(root).as_posix()
            out.append(Image("analysis-" + rel.replace("/", "-"), p.read_bytes(), rel))
    return out, len(runs)


def to_html(content: list[Any]) -> str:
    """One self-contained page: inline CSS, images as data URIs, no scripts or external resources."""
    e = html.escape
    parts = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>drt report</title><style>{CSS}</style></head><body>"]
    for b in content:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f'<p class="note">{e(b.text)}</p>')
        elif isinstance(b, Table):
            parts.append("<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in b.columns) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows]
            parts.append("</tbody></table>")
        else:
            uri = "data:image/png;base64," + base64.b64encode(b.data).decode()
            parts.append(f'<figure><img src="{uri}" alt="{e(b.alt)}"><figcaption>{e(b.alt)}</figcaption></figure>')
    return "\n".join([*parts, "</body></html>", ""])


def to_markdown(content: list[Any]) -> str:
    """The Markdown twin; images are referenced as files beside it."""
    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    lines: list[str] = []
    for b in content:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Table):
            lines += ["| " + " | ".join(cell(c) for c in b.columns) + " |",
                      "|" + "|".join("---" if i == 1 else "--:" for i in range(len(b.columns))) + "|"]
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        else:
            lines += [f"![{b.alt}]({b.name})", ""]
    return "\n".join(lines)


def write_report(results_dir: str | Path, out_dir: str | Path,
                 filters: dict[str, list[str]] | None = None) -> tuple[Path, Path, int]:
    """Write ``report.html``, ``report.md`` and the PNGs into ``out_dir``; returns their paths and the run count."""
    content, n = blocks(results_dir, filters)
    out_dir = Path(out_dir)
    earlier = out_dir / "report.md"
    if earlier.is_file():  # drop the PNGs an earlier report wrote (and only those) so none are stale
        for name in re.findall(r"^!\[[^\]]*\]\(([^()/\\]+\.png)\)$", earlier.read_text(encoding="utf-8"), re.M):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for b in content:
        if isinstance(b, Image):
            (out_dir / b.name).write_bytes(b.data)
    (out_dir / "report.html").write_text(to_html(content), encoding="utf-8")
    (out_dir / "report.md").write_text(to_markdown(content), encoding="utf-8")
    return out_dir / "report.html", out_dir / "report.md", n

