"""`drt demo`: every method of the main job, a small-dense baseline at PCN's size, the ranked table and the report."""

from __future__ import annotations

from drt.cli import main
from drt.experiments.demo import DEMO_RUNS
from drt.experiments.store import Store


def test_demo_trains_every_method_and_a_small_dense_net_of_pcn_size(tmp_path, capsys):
    assert main(["demo", "--epochs", "3", "--results-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    methods = {"dense", "pcn", "snip", "synflow", "rigl", "imp", "freezenet"}
    assert methods <= {s["method"] for s in DEMO_RUNS} and any(s.get("reg") == "cka-sr" for s in DEMO_RUNS)
    table = out[out.index("drt demo: lenet5 on mnist5k"):]
    for name in ["/dense", "/pcn", "/snip", "/synflow", "/rigl", "/rigl/cka-sr", "/imp", "/freezenet",
                 "small-dense (width"]:
        assert name in table, name
    runs = Store(tmp_path / "demo" / "drt.sqlite").runs("done")
    assert len(runs) == 2 * (len(DEMO_RUNS) + 1)  # two seeds each, small-dense included
    pcn = [r["metrics"]["params_trainable"] for r in runs if r["method"] == "pcn"]
    small = [r["metrics"]["params_trainable"] for r in runs if r["method"] == "dense" and r["config"]["model"]["width"]]
    assert len(small) == 2 and abs(small[0] / (sum(pcn) / 2) - 1) < 0.2  # the nearest width to PCN's count
    assert (tmp_path / "demo" / "report" / "report.html").is_file()
