"""Named recipes: what they set, what wins over them, and how a wrong name is reported."""

from __future__ import annotations

import pytest

from drt.cli import main
from drt.errors import DrtError
from drt.experiments.config import make_config, read_yaml
from drt.experiments.recipes import RECIPES, recipe


@pytest.mark.parametrize("name", RECIPES.names())
def test_every_recipe_is_a_valid_config_that_sets_what_it_says(name):
    cfg = make_config({"recipe": name})
    settings = recipe(name)
    assert cfg.model.model == settings["model"] and cfg.data.dataset == settings["dataset"]
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.optimizer) == (settings["lr"], settings["epochs"], "sgd")


def test_settings_given_win_over_the_recipe_and_the_run_id_is_the_settings():
    cfg = make_config({"recipe": "vgg11-cifar10", "epochs": 30, "lr": 0.1})
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.warmup_epochs) == (30, 0.1, 1)
    spelled_out = make_config({**recipe("vgg11-cifar10"), "epochs": 30, "lr": 0.1})
    assert cfg.run_id() == spelled_out.run_id()  # a recipe is a shorthand, not part of a run's identity


def test_a_recipe_named_in_a_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: resnet20-cifar10\ntrain:\n  epochs: 2\n")
    cfg = make_config(read_yaml(path))
    assert (cfg.model.model, cfg.train.epochs, cfg.train.nesterov) == ("resnet20", 2, True)


def test_an_unknown_recipe_lists_the_valid_ones(capsys):
    with pytest.raises(DrtError, match="unknown recipe 'vgg'; valid: vgg11-cifar10"):
        make_config({"recipe": "vgg"})
    assert main(["train", "--recipe", "vgg", "--no-progress"]) == 2
    assert "drt: error: unknown recipe 'vgg'" in capsys.readouterr().err


def test_list_recipes_shows_each_with_its_flags(capsys):
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    for name in RECIPES.names():
        assert name in out
    assert "--warmup-epochs 1" in out and "--nesterov" in out and "--no-nesterov" in out
