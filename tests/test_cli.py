"""The command line: listings, training, and every bad input as one clear line with exit 2."""

from __future__ import annotations

import json

import pytest

from drt.cli import main

TINY = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--no-progress"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("what, expect", [("models", "resnet20"), ("datasets", "cifar10"), ("methods", "dense")])
def test_list_registries(capsys, what, expect):
    code, out, _ = run_cli(capsys, "list", what)
    assert code == 0 and expect in out


@pytest.fixture
def finished(capsys, results):
    code, out, err = run_cli(capsys, "train", *TINY, "--results-dir", str(results))
    assert code == 0, err
    assert "test acc" in out and "recorded in" in out
    return results


def test_list_runs_and_export(capsys, finished, tmp_path):
    code, out, _ = run_cli(capsys, "list", "runs", "--results-dir", str(finished))
    assert code == 0 and "done" in out and "digits" in out
    code, out, _ = run_cli(capsys, "list", "runs", "--results-dir", str(finished), "--format", "json")
    (row,) = json.loads(out)
    assert row["status"] == "done" and 0 < row["test_acc"] <= 1 and row["params_trainable"] > 0
    csv_path = tmp_path / "runs.csv"
    code, _, _ = run_cli(capsys, "list", "runs", "--results-dir", str(finished), "--format", "csv",
                         "--output", str(csv_path))
    header, line = csv_path.read_text().splitlines()[:2]
    assert "test_acc" in header.split(",") and line.split(",")[1] == "done"


def test_yaml_config_and_flags_override(capsys, results, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("dataset: digits\nmodel: mlp\nhidden: [16]\ntrain:\n  epochs: 3\n  lr: 0.05\n")
    code, out, err = run_cli(capsys, "train", "--config", str(cfg), "--epochs", "1", "--no-progress",
                             "--results-dir", str(results))
    assert code == 0, err
    code, out, _ = run_cli(capsys, "list", "runs", "--results-dir", str(results), "--format", "json")
    from drt.experiments.store import Store

    (run,) = Store(results / "drt.sqlite").runs()
    assert run["config"]["train"]["epochs"] == 1 and run["config"]["train"]["lr"] == 0.05


BAD = {
    "unknown model": (["--model", "nope"], "unknown model 'nope'; valid: "),
    "unknown data set": (["--dataset", "nope"], "unknown data set 'nope'; valid: "),
    "unknown method": (["--method", "nope"], "unknown method 'nope'; valid: "),
    "model does not fit": (["--model", "conv1d"], "needs 1-D signals"),
    "too small for model": (["--model", "lenet5"], "needs images of at least"),
    "missing data dir": (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "not found"),
    "zero epochs": (["--epochs", "0"], "epochs must be a positive integer"),
    "negative epochs": (["--epochs", "-3"], "epochs must be a positive integer"),
    "zero batch": (["--batch-size", "0"], "batch_size must be a positive integer"),
    "negative lr": (["--lr", "-0.1"], "lr must be a positive number"),
    "zero lr": (["--lr", "0"], "lr must be a positive number"),
    "wrong type": (["--epochs", "ten"], "must be an integer"),
    "bad choice": (["--optimizer", "rmsprop"], "invalid choice"),
    "unknown flag": (["--bogus", "1"], "unrecognized arguments"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_and_keeps_results(capsys, finished, name):
    argv, message = BAD[name]
    before = (finished / "drt.sqlite").read_bytes()
    # TINY first, the bad setting after it wins (argparse: last one counts)
    code, out, err = run_cli(capsys, "train", *TINY, *argv, "--results-dir", str(finished))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drt: error: ") and message in lines[0], err
    assert "Traceback" not in err
    from drt.experiments.store import Store

    assert [r["status"] for r in Store(finished / "drt.sqlite").runs()] == ["done"], before[:0]


def test_data_dir_without_expected_files(capsys, results, tmp_path):
    code, _, err = run_cli(capsys, "train", *TINY, "--dataset", "mnist", "--data-dir", str(tmp_path),
                           "--results-dir", str(results))
    assert code == 2 and "train-images-idx3-ubyte" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text, message", [
    ("epochs: 2\nbogus_key: 1\n", "unknown setting(s) bogus_key"),
    ("epochs: two\n", "'epochs' must be an integer"),
    ("lr: [1, 2]\n", "'lr' must be a number"),
    ("nesterov: maybe\n", "'nesterov' must be true or false"),
    ("- a\n- b\n", "must be a mapping"),
    ("epochs: [\n", "not valid YAML"),
])
def test_bad_yaml(capsys, results, tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, _, err = run_cli(capsys, "train", "--config", str(cfg), "--results-dir", str(results))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_resume_from_corrupted_checkpoint(capsys, results):
    argv = ["train", *TINY, "--epochs", "2", "--results-dir", str(results)]
    assert run_cli(capsys, *argv)[0] == 0
    (ckpt,) = (results / "runs").glob("*/checkpoint.pt")
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    model = ckpt.parent / "model.pt"
    saved = model.read_bytes()
    code, _, err = run_cli(capsys, *argv, "--resume", "--force")
    assert code == 2 and "corrupted or truncated" in err and len(err.strip().splitlines()) == 1
    assert model.read_bytes() == saved  # earlier results intact


def test_a_run_busy_in_another_live_process_is_not_trained_twice(results):
    import subprocess
    import sys

    from drt.errors import DrtError
    from drt.experiments.config import make_config
    from drt.experiments.runner import run
    from drt.experiments.store import Store

    cfg = make_config({"dataset": "digits", "model": "mlp", "hidden": (8,), "epochs": 1})
    store = Store(results / "drt.sqlite")
    store.start(cfg.run_id(), cfg.label(), cfg.to_dict(), {})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import socket

        with store._conn() as c:
            c.execute("UPDATE runs SET owner=? WHERE id=?", (f"{socket.gethostname()}:{other.pid}", cfg.run_id()))
        with pytest.raises(DrtError, match="is being trained by process"):
            run(cfg, results, log=lambda *_: None)
    finally:
        other.kill()
        other.wait()
    # the owner is gone (killed run): the run is taken over and finished, once
    assert not run(cfg, results, log=lambda *_: None)["skipped"]
    assert [r["status"] for r in store.runs()] == ["done"]
