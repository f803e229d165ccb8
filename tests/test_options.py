"""One name, one meaning: every setting is declared once; `drt train --method X --help` shows X's
settings with X's defaults; renamed settings keep old stored runs readable under their run ids."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import warnings
from dataclasses import dataclass
from typing import ClassVar

import pytest

from drt.cli import main
from drt.cli.common import Parser
from drt.cli.train import build
from drt.errors import DrtError
from drt.experiments.config import SECTIONS, make_config, option_classes
from drt.experiments.loading import config_from_dict
from drt.experiments.store import Store
from drt.methods import METHODS, REGULARISERS
from drt.options import Options, conflicts, default_text, opt, own_default

TOP = {
    "help", "config", "resume", "force", "nproc", "results_dir", "device", "no_progress",
    "method", "reg", "recipe", "quiet",
}


def test_every_registered_setting_has_one_declaration_and_meaning():
    assert conflicts(option_classes()) == []


@dataclass(frozen=True)
class Rate(Options):
    title: ClassVar[str] = "rates"
    rate: float = opt(0.5, "a fraction")


@dataclass(frozen=True)
class Other(Options):
    title: ClassVar[str] = "others"
    rate: float = opt(0.5, "a fraction")


@dataclass(frozen=True)
class Redeclared(Rate):
    rate: float = opt(0.7, "a fraction")


@dataclass(frozen=True)
class NewMeaning(Rate):
    rate: float = opt(0.5, "a count")


@dataclass(frozen=True)
class NewType(Rate):
    rate: int = opt(1, "a fraction")


@dataclass(frozen=True)
class OwnDefault(Rate):
    rate: float = own_default(Rate, "rate", 0.7)


@dataclass(frozen=True)
class Untitled:
    size: int = opt(1, "a size")


def test_conflicts_name_each_kind_of_second_declaration():
    assert conflicts([Rate, OwnDefault]) == []  # same type and help, this class's default
    assert conflicts([Rate, Other]) == ["rate is declared by Rate and by Other"]  # even with the same meaning
    for cls in (Redeclared, NewMeaning, NewType):  # another default, help or type without own_default
        assert conflicts([cls]) == [f"{cls.__name__} re-declares rate of Rate: inherit it, or use own_default"]
    assert conflicts([Untitled]) == ["Untitled declares size but has no title for --help"]
    assert OwnDefault().rate == 0.7 and Rate().rate == 0.5


def _dests(method: str | None = None, regs: tuple[str, ...] = ()) -> dict[str, str]:
    p = Parser(prog="drt train", add_help=False)
    build(p, method, regs)
    return {a.dest: a.help or "" for a in p._actions}


@pytest.mark.parametrize("method", METHODS.names())
def test_method_help_shows_exactly_its_settings_with_its_defaults(method):
    cls = METHODS.get(method).Options
    dests = _dests(method)
    own = {f.name for c in [*SECTIONS.values(), cls] for f in dataclasses.fields(c)}
    assert set(dests) - TOP == own
    for f in dataclasses.fields(cls):
        shown = default_text(f.default)
        assert (f"(default: {shown})" in dests[f.name]) == (shown is not None), (f.name, dests[f.name])


def test_help_lists_per_method_defaults_and_human_group_titles(capsys):
    assert main(["train", "--method", "edge-popup", "--help"]) == 0
    popup = capsys.readouterr().out
    assert "--sparsity" in popup and "(default: 0.5)" in _dests("edge-popup")["sparsity"]
    assert "--delta-t" not in popup and "--freeze-fraction" not in popup and "--cka-beta" not in popup
    assert main(["train", "--method", "rigl", "--reg", "cka-sr", "--help"]) == 0
    assert "--cka-beta" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    everything = capsys.readouterr().out
    for title in ("\ndata:", "\ntraining:", "\nsparse methods:", "\ndynamic sparse training:", "\nPCN:",
                  "\nfreezing:", "\nCKA-SR regulariser:"):
        assert title in everything
    assert "Options" not in everything and "Config" not in everything  # no Python class names
    dests = _dests()
    assert "0.9; edge-popup 0.5" in dests["sparsity"] and "0.9; freeze-layers 0.0" in dests["freeze_fraction"]
    assert set(dests) - TOP == {f.name for c in option_classes() for f in dataclasses.fields(c)}


def test_every_regulariser_setting_is_a_flag():
    for name in REGULARISERS.names():
        assert {f.name for f in dataclasses.fields(REGULARISERS.get(name).Options)} <= set(_dests("dense", (name,)))


# A freezenet config as stored before issue 16 (its frozen fraction under `sparsity`) and its run id,
# computed by that code: a renamed setting keeps its meaning, so the run keeps its id.
OLD_FREEZENET = {
    "data": {"dataset": "mnist5k", "data_dir": None, "data_root": None, "subset": None, "val_size": 0.0,
             "augment": "auto", "image_size": None},
    "model": {"model": "mlp", "width": None, "hidden": None, "shortcut": None},
    "train": {"epochs": 10, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
              "weight_decay": 0.0005, "schedule": "cosine", "milestones": None, "gamma": 0.1, "warmup_epochs": 0.0,
              "seed": 0, "amp": False, "eval_batch_size": 1000, "eval_every": 1},
    "method": "freezenet", "method_options": {"sparsity": 0.98, "score_batches": 1}, "reg": [], "reg_options": []}
OLD_FREEZENET_ID = "bc34dc49c6e5c9d9"


def test_old_stored_config_loads_upgraded_and_keeps_its_run_id(results):
    cfg = config_from_dict(OLD_FREEZENET)
    assert cfg.method_options.freeze_fraction == 0.98 and cfg.run_id() == OLD_FREEZENET_ID
    assert cfg.to_dict()["method_options"] == {"freeze_fraction": 0.98, "score_batches": 1}
    store = Store(results / "drt.sqlite")  # a row written as the old code wrote it
    with sqlite3.connect(store.path) as c:
        c.execute("INSERT INTO runs (id, label, status, model, dataset, method, seed, config, created, updated) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?)", (OLD_FREEZENET_ID, "old", "done", "mlp", "mnist5k", "freezenet", 0,
                                                   json.dumps(OLD_FREEZENET), 0.0, 0.0))
    (row,) = store.runs()
    assert row["config"]["method_options"] == {"freeze_fraction": 0.98, "score_batches": 1}
    assert config_from_dict(row["config"]).run_id() == row["id"]
    # settings added since (the transformers' shape) read as unset: the old row and today's config agree
    assert row["config"]["model"] == cfg.to_dict()["model"] and row["config"]["model"]["depth"] is None


def test_old_setting_name_in_flags_or_yaml_is_read_with_a_warning():
    with pytest.warns(FutureWarning, match="sparsity is read as freeze_fraction"):
        old = make_config({"method": "freezenet", "sparsity": 0.98})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = make_config({"method": "freezenet", "freeze_fraction": 0.98})
        assert make_config({"method": "snip", "sparsity": 0.98}).method_options.sparsity == 0.98  # not renamed
    assert old == new and new.run_id() == OLD_FREEZENET_ID
    with pytest.raises(DrtError, match="name the same setting"):
        make_config({"method": "freezenet", "sparsity": 0.9, "freeze_fraction": 0.9})
    with pytest.raises(DrtError, match="do not apply"):
        make_config({"method": "freeze-layers", "sparsity": 0.9})  # only freezenet's old name is renamed


# Run ids of each method's default config (and a few others) before issue 16's settings changes.
RUN_IDS = [
    ({"method": "dense"}, "2abfab675c881296"), ({"method": "set"}, "801dea63699bd766"),
    ({"method": "rigl"}, "a915196653a73fc4"), ({"method": "itop"}, "070c77970086fd49"),
    ({"method": "earlybird"}, "3636b976d3ae8d29"), ({"method": "freezenet"}, "7e0fa00960ef9527"),
    ({"method": "bn-only"}, "9679beee9c5332cb"), ({"method": "freeze-layers"}, "d7a7d9259f11e71e"),
    ({"method": "granet"}, "8c0555f49dbde1c3"), ({"method": "imp"}, "b028d7c412aeaac1"),
    ({"method": "pcn"}, "a85fe35a1b6ba16c"), ({"method": "edge-popup"}, "2175e84181c343af"),
    ({"method": "random"}, "550dda153d49bf02"), ({"method": "magnitude"}, "c63beccffeaf074d"),
    ({"method": "snip"}, "b23647a2de399c42"), ({"method": "grasp"}, "f7e06fd586c85776"),
    ({"method": "synflow"}, "6f08e8e0ffcc097e"), ({"method": "iter-snip"}, "9e8cba6991c3ee33"),
    ({"method": "force"}, "af2b57e26fa5ca27"), ({"method": "snfs"}, "bea435ed852ad10d"),
    ({"method": "subspace"}, "61f619bc84f3dbf1"), ({"method": "torch-prune"}, "c023f1816e0f0d4b"),
    ({"method": "tp-channel"}, "12771ffa4f5cfec8"),
    ({"method": "freezenet", "freeze_fraction": 0.98, "score_batches": 2}, "753cc94bb8de68cb"),
    ({"method": "imp", "sparsity": 0.8, "dense_first": True, "guard": False, "imp_rounds": 2}, "baf695fc5071c86d"),
    ({"method": "edge-popup", "sparsity": 0.7, "distribution": "erk"}, "cf837be4ee4617a7"),
    ({"method": "torch-prune", "sparsity": 0.5}, "6918d27bd39e4d02"),
    ({"method": "rigl", "sparsity": 0.98, "distribution": "uniform", "delta_t": 20, "reg": "cka-sr"},
     "275f345face5f887"),
    ({"method": "freeze-layers", "freeze": "conv1", "freeze_fraction": 0.5}, "d7b13c117eceae43"),
]


@pytest.mark.parametrize("settings, run_id", RUN_IDS)
def test_run_ids_of_existing_configs_are_unchanged(settings, run_id):
    assert make_config(settings).run_id() == run_id
