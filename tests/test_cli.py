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


def test_list_runs_reads_like_train_and_puts_failed_runs_apart(capsys, finished):
    from drt.experiments.store import Store

    store = Store(finished / "drt.sqlite")
    (done,) = store.runs("done")
    store.start("f" * 16, "broken", done["config"], {})
    store.fail("f" * 16, "DrtError: the data folder went away")
    code, out, _ = run_cli(capsys, "list", "runs", "--results-dir", str(finished))
    table, failed = out.split("failed runs (1):")
    assert f"{100 * done['metrics']['test_acc']:.2f}" in table and "s to target" in table and "f" * 16 not in table
    assert "f" * 16 in failed and "the data folder went away" in failed
    # a lone dense run is its own reference: it reaches its final accuracy minus half a point
    assert "not reached" not in table


def test_train_says_its_time_to_accuracy(capsys, finished):
    code, out, err = run_cli(capsys, "train", *TINY, "--method", "snip", "--results-dir", str(finished))
    assert code == 0, err
    assert "test accuracy (the dense run's final accuracy - 0.5 points):" in out


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
    "negative gamma": (["--schedule", "multistep", "--gamma", "-1"], "gamma must be > 0"),
    "milestone after the end": (["--schedule", "multistep", "--milestones", "7,9"],
                                "milestones must be increasing epochs in (0, epochs=1]"),
    "milestones without multistep": (["--milestones", "1"], "milestones apply to the multistep schedule"),
    "nesterov with adam": (["--optimizer", "adam", "--nesterov"], "nesterov applies to sgd"),
    "a layer named twice": (["--method", "pcn", "--pcn-keep", "fc1=10,fc1=20"], "names 'fc1' twice"),
    "output option without output": (["--method", "pcn", "--pcn-output-keep", "5"], "add pcn_output"),
    "a regulariser twice": (["--reg", "cka-sr,cka-sr"], "names a regulariser twice"),
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
    from drt.experiments.store import Store

    Store(results / "drt.sqlite").fail(ckpt.parent.name, "killed")  # an unfinished run to resume
    code, _, err = run_cli(capsys, *argv, "--resume")
    assert code == 2 and "corrupted or truncated" in err and len(err.strip().splitlines()) == 1
    assert model.read_bytes() == saved  # earlier results intact
    ckpt.write_bytes(b"\x80garbage")
    code, _, err = run_cli(capsys, "analyze", "spectra", "--run", ckpt.parent.name, "--use-checkpoint",
                           "--results-dir", str(results), "--out", str(results / "a"))
    assert code == 2 and "corrupted" in err and len(err.strip().splitlines()) == 1, err


def _one_line(code, err, message):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_paths_that_are_not_what_they_should_be(capsys, finished, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _one_line(*run_cli(capsys, "train", *TINY, "--results-dir", str(afile))[::2], "cannot use results store")
    _one_line(*run_cli(capsys, "report", "--results-dir", str(finished), "--out", str(afile))[::2], "exists")
    _one_line(*run_cli(capsys, "list", "runs", "--results-dir", str(finished), "--output", str(tmp_path))[::2],
              "Is a directory")
    notdb = tmp_path / "notdb"
    notdb.mkdir()
    (notdb / "drt.sqlite").write_text("my notes")
    for argv in (["train", *TINY], ["list", "runs"], ["report", "--out", str(tmp_path / "r")]):
        _one_line(*run_cli(capsys, *argv, "--results-dir", str(notdb))[::2], "is not a usable drt results store")
    assert (notdb / "drt.sqlite").read_text() == "my notes" and afile.read_text() == "mine"
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xfe\xff\x00\x01")
    _one_line(*run_cli(capsys, "train", "--config", str(binary))[::2], "is not UTF-8 text")
    _one_line(*run_cli(capsys, "sweep", str(binary))[::2], "is not UTF-8 text")


def test_report_replaces_its_own_images_only(capsys, finished, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"mine")
    for _ in range(2):
        assert run_cli(capsys, "report", "--results-dir", str(finished), "--out", str(out))[0] == 0
    assert (out / "holiday.png").read_bytes() == b"mine" and len(list(out.glob("*.png"))) > 1


def test_resume_with_another_models_checkpoint(capsys, results):
    argv = ["train", *TINY, "--results-dir", str(results)]
    assert run_cli(capsys, *argv)[0] == 0
    (ckpt,) = (results / "runs").glob("*/checkpoint.pt")
    other = ["train", *TINY, "--hidden", "8", "--results-dir", str(results)]
    assert run_cli(capsys, *other)[0] == 0
    (mine,) = set((results / "runs").glob("*/checkpoint.pt")) - {ckpt}
    from drt.experiments.store import Store

    Store(results / "drt.sqlite").fail(mine.parent.name, "killed")
    mine.write_bytes(ckpt.read_bytes())
    _one_line(*run_cli(capsys, *other, "--resume")[::2], "does not fit this run's model")


def test_a_diverged_model_is_not_a_finished_run(capsys, results):
    code, _, err = run_cli(capsys, "train", *TINY, "--subset", "200", "--lr", "1e6", "--results-dir", str(results))
    _one_line(code, err, "diverged: test loss nan")
    from drt.experiments.store import Store

    assert [r["status"] for r in Store(results / "drt.sqlite").runs()] == ["failed"]


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


def test_a_setting_refused_at_set_up_leaves_no_row_and_no_folder(capsys, results):
    for bad in (["--method", "pcn"], ["--method", "freeze-layers", "--freeze", "nolayer"],
                ["--method", "pcn", "--epochs", "2", "--pcn-keep", "nolayer=3"]):
        code, _, err = run_cli(capsys, "train", *TINY, *bad, "--results-dir", str(results))
        assert code == 2 and err.count("\n") == 1 and err.startswith("drt: error: ")
    assert "SequentialNet" not in err and "matches no" in err
    from drt.experiments.store import Store

    assert Store(results / "drt.sqlite").runs() == [] and not (results / "runs").exists()


def test_library_warnings_are_one_clean_line(capsys, results):
    code, _, err = run_cli(capsys, "train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--method",
                           "rigl", "--no-progress", "--results-dir", str(results))
    assert code == 0
    (line,) = [x for x in err.splitlines() if "delta_t" in x]
    assert line.startswith("drt: warning: RigL: delta_t=100") and ".py:" not in err and "warnings.warn" not in err


def test_epoch_lines_quiet_and_the_resume_message(capsys, results, monkeypatch):
    argv = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "3", "--no-progress",
            "--results-dir", str(results)]
    from drt.experiments.store import Store

    real = Store.add_epoch

    def killed_after_first_epoch(self, run_id, metrics):
        real(self, run_id, metrics)
        raise KeyboardInterrupt  # the checkpoint of epoch 1 is on disk

    monkeypatch.setattr(Store, "add_epoch", killed_after_first_epoch)
    assert run_cli(capsys, *argv)[0] == 130
    monkeypatch.setattr(Store, "add_epoch", real)
    code, out, err = run_cli(capsys, *argv, "--resume")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("resuming run ") and lines[0].endswith("at epoch 1/3")
    assert lines[1].startswith("epoch 2/3: train loss ") and "test acc" in lines[1] and "ETA" in lines[1]
    assert lines[2].startswith("epoch 3/3: ")
    code, out, _ = run_cli(capsys, *argv, "--force", "--quiet")
    assert code == 0 and "epoch 1/3" not in out and "test acc %" in out
