"""`drt sweep`: planning a grid from YAML, bad sweep files, and a sweep killed mid-run and restarted."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drt.cli import sweep as sweep_cli
from drt.errors import DrtError
from drt.experiments.report import finished_runs, group_runs, table_rows
from drt.experiments.store import Store
from drt.experiments.sweep import threads_per_worker
from drt.experiments.sweep_plan import plan

BASE = {"dataset": "digits", "model": "mlp", "epochs": 2}


def test_plan_crosses_runs_with_the_grid_and_drops_duplicates():
    raw = {"base": BASE, "grid": {"seed": [0, 1]},
           "runs": [{"method": "dense"}, {"method": "snip", "sparsity": [0.9, 0.98]}, {"method": "dense"}]}
    settings, workers = plan(raw)
    assert workers == 1 and len(settings) == 6  # (dense + 2 snip budgets) x 2 seeds; the repeated dense is one
    got = {(s["method"], s.get("sparsity"), s["seed"]) for s in settings}
    assert got == {(m, b, seed) for m, b in (("dense", None), ("snip", 0.9), ("snip", 0.98)) for seed in (0, 1)}
    assert all(s["dataset"] == "digits" and s["epochs"] == 2 for s in settings)


def test_plan_tuple_settings_and_sections():
    train = {"epochs": 3, "schedule": "multistep", "milestones": [1, 2]}
    raw = {"base": {"data": {"dataset": "digits"}, "train": train},
           "grid": {"hidden": [[32], "16,8"], "lr": [0.1, 0.05]}, "workers": 2}
    settings, workers = plan(raw)
    assert workers == 2 and len(settings) == 4
    assert {str(s["hidden"]) for s in settings} == {"[32]", "16,8"}
    assert all(s["milestones"] == [1, 2] and s["dataset"] == "digits" for s in settings)


@pytest.mark.parametrize("raw, expect", [
    ({"base": BASE, "grid": {"seed": [0]}, "seeds": [0, 1]}, "unknown key(s) seeds in sweep file"),
    ({"base": BASE}, "empty grid"),
    ({"base": BASE, "grid": {}}, "empty grid"),
    ({"base": BASE, "grid": {"seed": []}}, "'seed' has an empty list"),
    ({"base": BASE, "grid": {"sed": [0, 1]}}, "unknown setting(s) sed; valid:"),
    ({"base": BASE, "grid": {"sparsity": [0.9]}}, "do not apply to method 'dense'"),
    ({"base": BASE, "grid": {"method": ["dense", "nope"]}}, "nope"),
    ({"base": BASE, "grid": {"seed": [0]}, "workers": 0}, "workers must be a positive integer"),
    ({"base": BASE, "runs": {"method": "dense"}}, "`runs:` must be a list"),
    ({"base": BASE, "runs": [{"hidden": [300, 100]}]}, "'hidden' takes a list per alternative: write [[300, 100]]"),
    ({"base": {"trian": {"epochs": 1}}, "grid": {"seed": [0]}}, "base.trian: only the sections data, model, train"),
    ({"base": {**BASE, "train": {"epochs": 3}}, "grid": {"seed": [0]}}, "setting 'epochs' is given twice"),
    ([1, 2], "must be a mapping"),
])
def test_bad_sweep_files(raw, expect):
    with pytest.raises(DrtError) as e:
        plan(raw, "s.yaml")
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_threads_per_worker_divides_the_cores():
    assert [threads_per_worker(w, cores=2) for w in (1, 2, 3)] == [2, 1, 1]
    assert threads_per_worker(3, cores=8) == 2


def test_claiming_a_new_run_is_exclusive_and_a_dead_claim_is_taken_over(tmp_path, monkeypatch):
    import drt.experiments.store as store_mod

    store = Store(tmp_path / "drt.sqlite")
    host = store_mod.owner().rpartition(":")[0]
    monkeypatch.setattr(store_mod, "owner", lambda: f"{host}:{os.getppid()}")  # another live process
    assert store.claim("abc", "mlp/digits/dense/seed0", {"method": "dense"}) is None
    monkeypatch.undo()
    assert store.claim("abc", "mlp/digits/dense/seed0", {"method": "dense"}) == f"{host}:{os.getppid()}"
    store.release("abc")  # not ours: kept
    assert store.status("abc") == "running"
    with store._conn() as c:  # its owner dies
        c.execute("UPDATE runs SET owner=? WHERE id='abc'", (f"{host}:999999999",))
    assert store.claim("abc", "", {}) is None
    store.release("abc")  # ours now and never started: gone
    assert store.status("abc") is None
    cfg = {"model": {"model": "mlp"}, "data": {"dataset": "digits"}, "train": {"seed": 0}, "method": "dense"}
    store.start("abc", "", cfg, {})
    store.finish("abc", {"test_acc": 0.5})  # finished by another process between a check and a claim
    assert store.claim("abc", "", {}) == "done" and store.status("abc") == "done"
    assert store.claim("abc", "", {}, redo=True) is None  # --force


def test_cli_run_that_cannot_start_leaves_no_placeholder(tmp_path, capsys):
    from drt.cli import main

    code = main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "missing"), "--epochs", "1",
                 "--results-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "\n" not in capsys.readouterr().err.strip()
    assert Store(tmp_path / "r" / "drt.sqlite").runs() == []


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sweep_cli.add_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["sweep", *argv])


def test_cmd_sweep_dry_run_and_missing_file(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text("base: {dataset: digits, model: mlp, epochs: 1}\ngrid:\n  seed: [0, 1, 2]\n")
    assert sweep_cli.command(_args(str(f), "--results-dir", str(tmp_path / "r"), "--dry-run")) == 0
    out = capsys.readouterr().out
    assert out.count("planned ") == 3 and "3 runs planned, 0 already done" in out
    with pytest.raises(DrtError, match="not found"):
        sweep_cli.command(_args(str(tmp_path / "none.yaml")))
    f.write_text("grid: [unclosed\n")
    with pytest.raises(DrtError, match="not valid YAML"):
        sweep_cli.command(_args(str(f)))


SWEEP = """\
base: {dataset: digits, model: mlp, hidden: [64], epochs: %d, batch_size: 8, lr: 0.05}
grid:
  seed: [0, 1, 2]
"""
CHILD = ("import argparse, sys\n"
         "from drt.cli import sweep\n"
         "p = argparse.ArgumentParser(); sweep.add_parser(p.add_subparsers(dest='command'))\n"
         "sys.exit(sweep.command(p.parse_args(['sweep', *sys.argv[1:]])))\n")


def _state(db: Path) -> dict[str, dict]:
    if not db.exists():
        return {}
    store = Store(db)
    return {r["id"]: {**r, "n_epochs": len(store.epochs(r["id"]))} for r in store.runs()}


def test_killed_sweep_resumes_without_repeating_finished_runs(tmp_path):
    epochs = 12
    f, results = tmp_path / "sweep.yaml", tmp_path / "results"
    f.write_text(SWEEP % epochs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    argv = [sys.executable, "-c", CHILD, str(f), "--results-dir", str(results), "--no-progress"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db, deadline, before = results / "drt.sqlite", time.time() + 120, {}
    try:
        while time.time() < deadline and proc.poll() is None:
            before = _state(db)
            done = [r for r in before.values() if r["status"] == "done"]
            busy = [r for r in before.values() if r["status"] == "running" and 0 < r["n_epochs"] < epochs]
            if done and busy:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep finished before it could be killed: " + proc.stdout.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed = _state(db)
    done_ids = {i for i, r in killed.items() if r["status"] == "done"}
    killed_ids = {i for i, r in killed.items() if r["status"] != "done"}
    assert done_ids and killed_ids and all(killed[i]["status"] == "running" for i in killed_ids)
    assert len(finished_runs(results)[1]) == len(done_ids)  # a killed run is never counted as done

    out = subprocess.run([*argv, "--workers", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"3 runs planned, {len(done_ids)} already done, {3 - len(done_ids)} to run" in out.stdout
    after = _state(db)
    assert len(after) == 3 and all(r["status"] == "done" and r["n_epochs"] == epochs for r in after.values())
    for i in done_ids:  # finished runs were not touched again
        assert (after[i]["created"], after[i]["updated"]) == (killed[i]["created"], killed[i]["updated"])
    for i in killed_ids:  # the killed run was resumed under the same row and finished
        assert after[i]["created"] == killed[i]["created"] and after[i]["updated"] > killed[i]["updated"]
    (group,) = group_runs(finished_runs(results)[1])
    assert [row[2] for row in table_rows(group)] == ["0,1,2"]  # the report counts each run once


READER = ("import sys, pathlib, contextlib, io\n"
          "from drt.cli import main\n"
          "results, stop = sys.argv[1], pathlib.Path(sys.argv[2])\n"
          "codes = []\n"
          "while not stop.exists():\n"
          "    for argv in (['list', 'runs', '--results-dir', results], ['report', '--results-dir', results]):\n"
          "        err = io.StringIO()\n"
          "        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
          "            code = main(argv)\n"
          "        # before the first run is stored, 'no results store' / 'no finished runs' is the right answer\n"
          "        if code and 'no results store' not in err.getvalue() and 'no finished' not in err.getvalue():\n"
          "            print(argv[0], code, err.getvalue().strip()); sys.exit(1)\n"
          "        codes.append(code)\n"
          "print('reads', len(codes))\n")


def test_two_sweeps_on_one_store_run_every_run_once_while_a_reader_reads(tmp_path):
    """Issue 15, C10: two `drt sweep` processes started together over one grid and store, a third reading."""
    runs = 8
    f, results, stop = tmp_path / "sweep.yaml", tmp_path / "results", tmp_path / "stop"
    f.write_text("base: {dataset: digits, model: mlp, hidden: [32], epochs: 3, batch_size: 32, lr: 0.05}\n"
                 f"grid:\n  seed: {list(range(runs))}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    argv = [sys.executable, "-c", CHILD, str(f), "--results-dir", str(results), "--no-progress"]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(results), str(stop)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweeps = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in sweeps]
    stop.touch()
    read = reader.communicate(timeout=120)[0]
    assert [p.returncode for p in sweeps] == [0, 0], outs
    assert reader.returncode == 0 and read.startswith("reads "), read
    assert int(read.split()[1]) > 0, read
    trained = [line.split()[1] for out in outs for line in out.splitlines() if ": test acc " in line]
    assert sorted(trained) == sorted(set(trained)) and len(trained) == runs  # each run trained by one process
    assert "locked" not in "".join(outs)
    state = _state(results / "drt.sqlite")
    assert len(state) == runs and all(r["status"] == "done" and r["n_epochs"] == 3 for r in state.values())
