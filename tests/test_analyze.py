"""`drt analyze`: exact run loading, PCN spectra (static and over training), CKA heatmaps, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from drt.cli import Parser
from drt.cli import analyze as analyze_cli
from drt.errors import DrtError
from drt.experiments.analyze import track_spectra
from drt.experiments.analyze_cka import analyze_cka
from drt.experiments.config import make_config
from drt.experiments.loading import load_checkpoint_model, load_run_model
from drt.experiments.runner import run
from drt.pcn import pcn_layers
from drt.train.loop import evaluate

BASE = {"dataset": "digits", "epochs": 2, "batch_size": 64, "lr": 0.05}
RUNS = {
    "mlp": {"model": "mlp"},
    "conv4": {"model": "conv4", "width": 8},
    "pcn": {"model": "conv4", "width": 8, "method": "pcn", "pcn_epoch": "1", "pcn_keep": "0.9"},
    "resnet": {"model": "resnet20", "width": 4},
    "mlp_subset": {"model": "mlp", "subset": 500, "epochs": 1},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Tiny finished runs in one results folder: (results dir, name -> stored metrics)."""
    results = tmp_path_factory.mktemp("results")
    return results, {k: run(make_config({**BASE, **v}), results, log=lambda *a: None) for k, v in RUNS.items()}


def cli(*argv: str) -> int:
    parser = Parser(prog="drt")
    analyze_cli.add_parser(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    return analyze_cli.command(parser.parse_args(["analyze", *argv]))


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def one_line_error(fn, *args, match: str, **kw) -> str:
    with pytest.raises(DrtError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_load_run_model_rebuilds_pcn_exactly(finished):
    results, m = finished
    pcn_id = m["pcn"]["run_id"]
    model, cfg, data = load_run_model(results, pcn_id[:7])  # a unique prefix is enough
    assert cfg.run_id() == pcn_id and cfg.method == "pcn"
    layers = pcn_layers(model)
    assert layers and any(layer.k < layer.d for layer in layers.values())
    _, acc = evaluate(model, data.x_test, data.y_test, 1000, torch.device("cpu"))
    assert acc == m["pcn"]["test_acc"]
    last, _, _ = load_run_model(results, pcn_id, checkpoint=True)  # the final checkpoint holds the same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), last.state_dict().values(), strict=True))
    bare, data2 = load_checkpoint_model(results / "runs" / pcn_id / "checkpoint.pt", "conv4", "digits",
                                        model_options={"width": 8})
    assert torch.equal(bare(data2.x_test[:50]), model(data.x_test[:50]))


def test_spectra_of_a_run_match_a_direct_eigh(finished, tmp_path, capsys):
    results, m = finished
    out = tmp_path / "spectra"
    assert cli("spectra", "--run", m["mlp"]["run_id"], "--results-dir", str(results), "--out", str(out)) == 0
    assert str(out) in capsys.readouterr().out
    for name in ("spectra.png", "explained_variance.png"):
        assert is_png(out / name)
    rows = {r["layer"]: r for r in read_csv(out / "spectra.csv")}
    assert list(rows) == ["fc1", "fc2", "fc3"] and "| fc2 |" in (out / "spectra.md").read_text()
    # direct: covariance of fc2's input (relu1's output) over all 1438 training samples (< --samples 5000)
    model, _, data = load_run_model(results, m["mlp"]["run_id"])
    seen = []
    handle = model.fc2.register_forward_pre_hook(lambda mod, args: seen.append(args[0].double()))
    with torch.no_grad():
        model(data.x_train)
    handle.remove()
    vals = torch.linalg.eigvalsh(torch.cov(seen[0].T)).flip(0).clamp_min(0)
    ratio = vals.cumsum(0) / vals.sum()
    row = rows["fc2"]
    assert int(row["d"]) == 300 == vals.numel()  # mlp hidden sizes 300, 100
    for t in (0.9, 0.99, 0.999):
        k = int(row[f"k@{t:g}"])
        assert ratio[k - 1] >= t - 1e-9 and (k == 1 or ratio[k - 2] < t), t  # the smallest such k
        assert int(row[f"params@{t:g}"]) == 100 * (k + 1)  # fc2: 100 outputs on k components, + bias
    eig = json.loads((out / "spectra.json").read_text())["eigenvalues"]["fc2"]
    assert torch.allclose(torch.tensor(eig, dtype=torch.float64), vals, atol=1e-9 * float(vals[0]))


def test_spectra_of_pcn_and_resnet_runs(finished, tmp_path):
    results, m = finished
    assert cli("spectra", "--run", m["pcn"]["run_id"], "--results-dir", str(results), "--out", str(tmp_path)) == 0
    rows = {r["layer"]: r for r in read_csv(tmp_path / "spectra.csv")}
    assert int(rows["fc1"]["k_now"]) < int(rows["fc1"]["d"]) == 64  # transformed layers: full input width d
    assert "input" in rows["conv1"]["note"]
    ckpt = str(results / "runs" / m["pcn"]["run_id"] / "checkpoint.pt")  # the same model from the bare file
    cli("spectra", "--checkpoint", ckpt, "--model", "conv4", "--width", "8", "--dataset", "digits",
        "--out", str(tmp_path / "ck"))
    assert {r["layer"]: r for r in read_csv(tmp_path / "ck" / "spectra.csv")} == rows
    cli("spectra", "--run", m["resnet"]["run_id"], "--results-dir", str(results), "--out", str(tmp_path / "r"))
    rows = {r["layer"]: r for r in read_csv(tmp_path / "r" / "spectra.csv")}
    assert rows["layer2.0.shortcut.0"]["note"] == "shares the basis of layer2.0.conv1"


def test_tracking_records_overlaps_and_exact_accuracy_at_all(finished, tmp_path):
    results, m = finished
    cfg = make_config({**BASE, **RUNS["mlp"]})
    res = track_spectra(cfg, tmp_path, samples=500, keeps=(0.9, "all"), at_epochs=[1, 2])
    hist = res["history"]
    layers = ["fc1", "fc2", "fc3"]
    assert [(h["epoch"], h["layer"]) for h in hist] == [(e, n) for e in (1, 2) for n in layers]
    assert all(h["overlap"] is None for h in hist if h["epoch"] == 1)
    later = [h["overlap"] for h in hist if h["epoch"] > 1]
    assert len(later) == len(layers) and all(0.0 <= v <= 1.0 + 1e-9 for v in later)
    # the tracker does not perturb training: the same final model as the runner's dense run
    assert res["train"][-1]["test_acc"] == m["mlp"]["test_acc"]
    acc = {(r["epoch"], r["keep"]): r for r in res["accuracy"]}
    for e in (1, 2):
        assert acc[e, "all"]["test_acc"] == pytest.approx(acc[e, "dense"]["test_acc"], abs=1 / 359)  # k = d
        assert acc[e, "all"]["params_trainable"] == acc[e, "dense"]["params_trainable"]
        assert acc[e, "0.9"]["params_trainable"] < acc[e, "dense"]["params_trainable"]
    assert acc[2, "dense"]["test_acc"] == m["mlp"]["test_acc"]
    for name in ("k_vs_epoch.png", "overlap_vs_epoch.png", "accuracy_vs_params.png", "final_spectra/spectra.png"):
        assert is_png(tmp_path / name), name
    assert len(read_csv(tmp_path / "tracking.csv")) == 6 and len(read_csv(tmp_path / "accuracy_vs_k.csv")) == 6
    again = track_spectra(cfg, tmp_path / "again", samples=500, keeps=(0.9, "all"), at_epochs=[1, 2])
    assert again["history"] == hist and again["accuracy"] == res["accuracy"]  # deterministic given the seed


def test_cka_within_one_model_is_symmetric_with_unit_diagonal(finished, tmp_path, capsys):
    results, m = finished
    model, _, data = load_run_model(results, m["resnet"]["run_id"])
    res = analyze_cka(model, data, tmp_path, batches=2)
    c = res["matrix"]
    assert res["names_a"] == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert torch.allclose(c.diagonal(), torch.ones(9, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(c, c.T, atol=1e-12) and bool((c > 0).all())
    assert is_png(tmp_path / "cka.png") and len(read_csv(tmp_path / "cka.csv")) == 9
    assert cli("cka", "--run", m["resnet"]["run_id"], "--results-dir", str(results), "--unbiased") == 0
    assert (results / "analysis" / f"cka-{m['resnet']['run_id']}" / "cka.md").exists()


def test_cka_dense_vs_pcn_run(finished, tmp_path):
    results, m = finished
    out = tmp_path / "ab"
    args = ["--run", m["conv4"]["run_id"], "--run-b", m["pcn"]["run_id"], "--results-dir", str(results)]
    assert cli("cka", *args, "--out", str(out), "--layers", "relu2", "relu4", "relu6") == 0
    rows = read_csv(out / "cka.csv")
    assert [r["layer"] for r in rows] == ["relu2", "relu4", "relu6"] and len(rows[0]) == 7  # B: all 6 ReLUs
    values = [float(v) for r in rows for k, v in r.items() if k != "layer"]
    assert all(0 <= v <= 1 + 1e-9 for v in values) and max(values) < 1 - 1e-6  # two different models
    assert is_png(out / "cka.png")
    # the same comparison with B as a bare checkpoint (architecture of A, spec from the checkpoint)
    ckpt = str(results / "runs" / m["pcn"]["run_id"] / "checkpoint.pt")
    cli("cka", "--run", m["conv4"]["run_id"], "--checkpoint-b", ckpt, "--results-dir", str(results),
        "--out", str(tmp_path / "ck"), "--layers", "relu2", "relu4", "relu6")
    assert read_csv(tmp_path / "ck" / "cka.csv") == rows


def test_bad_input_is_one_line_drt_error(finished, tmp_path):
    results, m = finished
    msg = one_line_error(cli, "spectra", "--run", "nope", "--results-dir", str(results), match="unknown run 'nope'")
    assert m["mlp"]["run_id"] in msg  # lists known ids
    one_line_error(load_run_model, results, "", match="ambiguous")
    one_line_error(cli, "cka", "--run", m["mlp"]["run_id"], "--results-dir", str(results), "--layers", "relu9",
                   match="unknown module name.*'relu9'.*valid names: .*relu1")
    one_line_error(cli, "cka", "--run", m["mlp"]["run_id"], "--run-b", m["mlp_subset"]["run_id"],
                   "--results-dir", str(results), match="different data .*subset")
    one_line_error(cli, "spectra", "--run", m["mlp"]["run_id"], "--results-dir", str(results), "--width", "3",
                   match="width do not apply to --run")
    one_line_error(cli, "spectra", "--run", m["mlp"]["run_id"], "--results-dir", str(results),
                   "--thresholds", "0.9,1.5", match="thresholds")
    one_line_error(load_checkpoint_model, tmp_path / "x.pt", "mlp", "digits", match="no checkpoint")
    (tmp_path / "x.pt").write_bytes(b"")
    one_line_error(load_checkpoint_model, tmp_path / "x.pt", "mlp", "cifar10", data_dir=str(tmp_path / "none"),
                   match="corrupted or truncated")  # checked before any data is loaded
    one_line_error(track_spectra, make_config({**BASE, **RUNS["pcn"]}), tmp_path, match="trains the dense model")
    one_line_error(track_spectra, make_config({**BASE, **RUNS["mlp"]}), tmp_path, keeps=(1.5,), match="1.5")
    one_line_error(cli, "spectra", "--results-dir", str(results), "--model", "mlp", "--dataset", "digits",
                   "--epochs", "2", "--at-epoch", "5", match="1..2")
