"""`drt report`: grouping and mean ± std over seeds, filters, bad stores, and the HTML in a real browser."""

from __future__ import annotations

import argparse
import io
import re
import shutil
import statistics
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from drt.cli import report as report_cli
from drt.errors import DrtError
from drt.experiments.config import make_config
from drt.experiments.plots import pareto_front
from drt.experiments.report import finished_runs, group_runs, parse_filters, table_rows
from drt.experiments.report_render import to_html, write_report
from drt.experiments.runner import run
from drt.experiments.store import Store

TINY = {"model": "mlp", "hidden": [32], "epochs": 2, "batch_size": 64, "lr": 0.05}
RUNS = [{"dataset": "digits", "method": "dense", "seed": s} for s in (0, 1)]
RUNS += [{"dataset": "digits", "method": "snip", "sparsity": 0.9, "seed": s} for s in (0, 1)]
RUNS += [{"dataset": "digits", "method": "snip", "sparsity": 0.98, "seed": 0},
         {"dataset": "mnist1d", "method": "dense", "seed": 0}]


def _png(value: float) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().imshow(np.eye(4) * value)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A store with real tiny runs on two data sets, one killed run, and two analysis figures."""
    root = tmp_path_factory.mktemp("report") / "results"
    ids = [run(make_config({**TINY, **v}), root, log=lambda _: None)["run_id"] for v in RUNS]
    killed = make_config({**TINY, "dataset": "digits", "method": "dense", "seed": 7})
    Store(root / "drt.sqlite").start(killed.run_id(), killed.label(), killed.to_dict(), {})  # never finished
    (root / "analysis" / ids[2]).mkdir(parents=True)
    (root / "analysis" / ids[2] / "spectra.png").write_bytes(_png(1.0))
    (root / "analysis" / "0123456789abcdef").mkdir()
    (root / "analysis" / "0123456789abcdef" / "cka.png").write_bytes(_png(2.0))  # a run not in the store
    return root


def test_pareto_front_exact():
    xs, ys = [1, 2, 3, 2, 5], [50, 70, 60, 70, 90]
    assert pareto_front(xs, ys) == [True, True, False, True, True]  # ties on both axes are both on the front


def test_groups_never_mix_datasets_and_rows_are_mean_std_over_seeds(results):
    store, runs = finished_runs(results)
    assert len(runs) == len(RUNS)  # the killed run is not counted
    groups = group_runs(runs)
    assert [g.key["dataset"] for g in groups] == ["digits", "mnist1d"]
    digits = groups[0]
    assert {r["config"]["data"]["dataset"] for row in digits.rows for r in row.runs} == {"digits"}
    assert sorted(row.label for row in digits.rows) == ["dense", "snip sparsity=0.9", "snip sparsity=0.98"]
    assert digits.common == {"hidden": "32", "batch_size": "64", "lr": "0.05"}
    snip = next(row for row in digits.rows if row.label == "snip sparsity=0.9")
    accs = [r["metrics"]["test_acc"] for r in store.runs("done") if r["method"] == "snip"
            and r["config"]["method_options"]["sparsity"] == 0.9]
    cells = table_rows(digits)[snip.number - 1]
    assert cells[1:4] == ["snip sparsity=0.9", "0,1",
                          f"{100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f}"]
    accs_sorted = [row.stat("test_acc")[0] for row in digits.rows]
    assert accs_sorted == sorted(accs_sorted, reverse=True) and [r.number for r in digits.rows] == [1, 2, 3]


def test_time_to_target_is_the_dense_final_accuracy_minus_half_a_point_on_the_stored_clock(results):
    store, runs = finished_runs(results, parse_filters(["dataset=digits"]))
    dense = [r for r in runs if r["method"] == "dense"]
    target = statistics.mean(r["metrics"]["test_acc"] for r in dense) - 0.005
    for r in runs:
        m, history = r["metrics"], store.epochs(r["id"])
        assert m["tta_target"] == pytest.approx(target)
        first = next((h["wall_clock"] for h in history if h["test_acc"] >= target - 1e-12), None)
        assert m["time_to_target"] == first
    (group,) = group_runs(runs)
    for row, cells in zip(group.rows, table_rows(group), strict=True):
        times = [r["metrics"]["time_to_target"] for r in row.runs]
        if all(t is None for t in times):
            assert cells[-2:] == ["not reached", "-"]
        elif None not in times:
            assert cells[-2].split(" ")[0] == f"{statistics.mean(times):.2f}" and cells[-1].endswith("×")
    _, mnist1d = finished_runs(results, parse_filters(["dataset=mnist1d"]))
    assert mnist1d[0]["metrics"]["time_to_target"] is not None  # a lone dense run reaches its own target


def test_runs_on_several_processes_get_their_own_row(results):
    _, runs = finished_runs(results, parse_filters(["method=dense", "dataset=digits"]))
    ddp = {**runs[0], "id": "f" * 16, "env": {**runs[0]["env"], "world_size": 2}}  # another global batch
    (group,) = group_runs([*runs, ddp])
    assert sorted(row.label for row in group.rows) == ["dense", "dense processes=2"]
    assert [len(row.runs) for row in group.rows if row.label == "dense"] == [2]


def test_an_unusual_setting_is_named_only_on_its_rows(results):
    import copy

    _, runs = finished_runs(results, parse_filters(["dataset=digits", "method=snip"]))

    def variant(run, lr, i):
        out = copy.deepcopy(run)
        out["id"], out["config"]["train"]["lr"] = f"{i:016x}", lr
        return out

    odd = [variant(runs[0], 0.5, 1), variant(runs[0], 0.1, 2)]  # 0.1 is the default: absent from the settings
    (group,) = group_runs([*runs, *odd])
    assert group.common["lr"] == "0.05 (unless a row says otherwise)"
    assert sorted(row.label for row in group.rows) == ["snip lr=0.1 sparsity=0.9", "snip lr=0.5 sparsity=0.9",
                                                       "snip sparsity=0.9", "snip sparsity=0.98"]


def test_filters(results):
    assert {r["method"] for r in finished_runs(results, parse_filters(["method=snip"]))[1]} == {"snip"}
    _, runs = finished_runs(results, parse_filters(["dataset=digits", "sparsity=0.9", "sparsity=0.98"]))
    assert len(runs) == 3
    with pytest.raises(DrtError, match="no finished runs in .* match dataset=cifar10 .6 finished"):
        finished_runs(results, parse_filters(["dataset=cifar10"]))
    with pytest.raises(DrtError, match="unknown --filter key 'colour'"):
        parse_filters(["colour=red"])
    with pytest.raises(DrtError, match="key=value"):
        parse_filters(["digits"])


def test_empty_or_missing_store(tmp_path):
    with pytest.raises(DrtError, match="no results store at"):
        finished_runs(tmp_path / "nothing")
    cfg = make_config({**TINY, "dataset": "digits"})
    Store(tmp_path / "drt.sqlite").start(cfg.run_id(), cfg.label(), cfg.to_dict(), {})
    with pytest.raises(DrtError, match=f"no finished runs in {re.escape(str(tmp_path / 'drt.sqlite'))}$"):
        finished_runs(tmp_path)


@pytest.fixture(scope="module")
def report(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    html, md, n = write_report(results, out)
    assert n == len(RUNS) and html == out / "report.html" and md == out / "report.md"
    return out


def test_report_files_are_self_contained_twins(report):
    page, md = (report / "report.html").read_text(), (report / "report.md").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in page and "<link" not in page and "http" not in page.replace("http-equiv", "")
    pngs = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert len(pngs) == len(srcs) and all((report / p).stat().st_size > 1000 for p in pngs)
    # digits: Pareto + curves (per epoch and vs wall-clock); mnist1d (one row): curves only; analysis: only the
    # figure of a run in the report
    assert sorted(p for p in pngs if not p.startswith("analysis-")) == [
        "curves-digits-mlp-2.png", "curves-mnist1d-mlp-2.png", "pareto-digits-mlp-2.png",
        "wallclock-digits-mlp-2.png", "wallclock-mnist1d-mlp-2.png"]
    assert [p for p in pngs if p.startswith("analysis-")] == [next(p for p in pngs if p.endswith("-spectra.png"))]
    assert "cka.png" not in page and md.count("\n| 1 | ") == 2 and page.count("<table>") == 2
    assert "1 unfinished" in md


def test_cmd_report(results, tmp_path, capsys):
    p = argparse.ArgumentParser()
    report_cli.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["report", "--results-dir", str(results), "--out", str(tmp_path), "--filter",
                         "dataset=mnist1d"])
    assert report_cli.command(args) == 0
    assert "report of 1 finished runs" in capsys.readouterr().out
    assert "mnist1d" in (tmp_path / "report.md").read_text() and "digits" not in (tmp_path / "report.md").read_text()


def test_html_escapes_text():
    from drt.experiments.report_render import Heading, Table

    page = to_html([Heading(2, "a<b"), Table(("x",), [["<i>"]])])
    assert "a&lt;b" in page and "&lt;i&gt;" in page and "<i>" not in page


def test_strings_from_the_store_are_escaped_and_forged_ids_refused(tmp_path):
    """Issue 15, C12: a store is a file users share; what its rows say is text, never markup or a path."""
    import json
    import sqlite3

    from drt.experiments.loading import load_run_model

    root = tmp_path / "results"
    rid = run(make_config({**TINY, "dataset": "digits"}), root, log=lambda _: None)["run_id"]
    evil = "<script>alert(1)</script>"
    with sqlite3.connect(root / "drt.sqlite") as c:
        (config, env) = c.execute("SELECT config, env FROM runs WHERE id=?", (rid,)).fetchone()
        config, env = json.loads(config), json.loads(env)
        config["data"]["dataset"], config["train"]["milestones"] = evil, f"<img src=x onerror=alert(2)>{evil}"
        env["cpu"] = evil
        c.execute("UPDATE runs SET config=?, env=? WHERE id=?", (json.dumps(config), json.dumps(env), rid))
        forged = c.execute("SELECT * FROM runs WHERE id=?", (rid,)).fetchone()
        c.execute(f"INSERT INTO runs VALUES ({','.join('?' * len(forged))})", ("../../../etc", *forged[1:]))
    html, _, n = write_report(root, tmp_path / "out", {"dataset": [evil]})
    page = html.read_text()
    assert n == 2 and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "<img src=x" not in page
    with pytest.raises(DrtError, match="'../../../etc' is not a run id"):
        load_run_model(root, "../../../etc")


CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_html_renders_in_headless_chromium(report, tmp_path):
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium not installed: on Debian as root run `apt-get install -y chromium` to test the "
                    "report in a real browser")
    base = [exe, *CHROMIUM, f"--user-data-dir={tmp_path / 'profile'}"]
    url = (report / "report.html").resolve().as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<table>") == 2 and "mlp on digits, 2 epochs" in dom and "snip sparsity=0.98" in dom
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) == 6 and all('src="data:image/png;base64,' in i for i in imgs)
    shot = tmp_path / "shot.png"
    subprocess.run([*base, "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1280, 2000)
    assert len(data) > 50_000  # text, tables and plots, not a blank page
