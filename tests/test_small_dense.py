"""Small dense baselines at a compressed run's trainable count, and the Torch-Pruning peer of PCN runs."""

from __future__ import annotations

import pytest
import torch

import drt.methods  # noqa: F401  (registers tp-channel)
from drt.errors import DrtError
from drt.experiments.config import make_config
from drt.experiments.runner import STORE_NAME, run
from drt.experiments.small_dense import (
    dense_trainable,
    relative_error,
    small_dense_config,
    small_dense_for_runs,
    small_dense_options,
    small_dense_plan,
    tp_channel_for_runs,
)
from drt.experiments.store import Store
from drt.models import create

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def _count(name, shape, **options):
    return sum(p.numel() for p in create(name, shape, 10, **options).parameters())


@pytest.mark.parametrize(("name", "shape", "target", "options", "achieved"), [
    # 784*62+62 + 62*21+21 + 21*10+10: hidden 300-100 scaled by 62/300
    ("mlp", MNIST, 50_000, {"hidden": [62, 21]}, 50_213),
    # width 68: conv 3, 9 channels; fc 68, 48 units (6, 16, 120, 84 scaled by 68/120)
    ("lenet5", MNIST, 20_000, {"width": 68}, 19_932),
    ("resnet20", CIFAR, 100_000, {"width": 10}, 107_060),
    ("resnet20", CIFAR, 272_474, {"width": 16}, 272_474),  # the full model at its own count
])
def test_exact_widths_and_counts(name, shape, target, options, achieved):
    got, n = small_dense_options(name, shape, 10, target)
    assert got == options and n == achieved == _count(name, shape, **options)
    assert relative_error(n, target) == pytest.approx(achieved / target - 1)
    if "width" in options and options["width"] > 1:  # nearest: neither neighbour is closer
        for w in (options["width"] - 1, options["width"] + 1):
            if w <= {"lenet5": 120, "resnet20": 16}[name]:
                assert abs(_count(name, shape, width=w) - target) >= abs(n - target)


def test_lenet5_width_scales_every_layer():
    net = create("lenet5", MNIST, 10, width=60)
    assert [net.conv1.out_channels, net.conv2.out_channels, net.fc1.out_features, net.fc2.out_features] == \
        [3, 8, 60, 42]
    assert _count("lenet5", MNIST) == 61_706  # the classic net is the default


def test_base_options_and_meta_counting_leave_rng_alone():
    state = torch.get_rng_state()
    got, n = small_dense_options("mlp", MNIST, 10, 50_000, {"hidden": [500]})
    assert got == {"hidden": [63]} and n == 784 * 63 + 63 + 63 * 10 + 10
    assert dense_trainable("vgg16", CIFAR, 10) == 14_724_042  # built on the meta device: no memory
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize(("name", "shape", "target", "match"), [
    ("mlp", MNIST, 500, r"target 500 .* below the smallest mlp \(807 at width 1\)"),
    ("mlp", MNIST, 300_000, r"above the mlp at its own width 300 \(266,610\); small dense only narrows"),
    ("resnet20", CIFAR, 300_000, r"above the resnet20 at its own width 16 \(272,474\)"),
    ("lenet5", MNIST, 99, r"below the smallest lenet5 \(100 at width 1\)"),  # 1 channel/unit per layer
])
def test_target_out_of_range(name, shape, target, match):
    with pytest.raises(DrtError, match=match) as err:
        small_dense_options(name, shape, 10, target)
    assert "\n" not in str(err.value)


def test_config_keeps_everything_but_method_and_width():
    base = {"dataset": "digits", "model": "mlp", "hidden": (64, 32), "epochs": 3, "lr": 0.02, "seed": 4,
            "batch_size": 32, "subset": 1000}
    cfg = make_config({**base, "method": "pcn", "pcn_keep": "0.9", "reg": "cka-sr"})
    small = small_dense_config(cfg, 2_000, shape=((1, 8, 8), 10))
    # 64*24+24 + 24*12+12 + 12*10+10 = 1,990 (the next sizes, 25-13, give 2,103)
    assert small.method == "dense" and small.reg == () and small.model.hidden == (24, 12)
    assert small.train == cfg.train and small.data == cfg.data
    assert small.run_id() == make_config({**base, "hidden": "24,12"}).run_id()  # as if typed on the command line


def test_from_a_store_of_real_runs(tmp_path):
    base = {"dataset": "digits", "model": "mlp", "hidden": (64,), "epochs": 2, "batch_size": 64, "lr": 0.05}
    for seed in (0, 1):
        run(make_config({**base, "seed": seed, "method": "pcn", "pcn_keep": "0.9"}), tmp_path, device="cpu",
            log=lambda *_: None)
    run(make_config({**base, "method": "dense"}), tmp_path, device="cpu", log=lambda *_: None)
    runs = Store(tmp_path / STORE_NAME).runs()
    pcn = [r["metrics"]["params_trainable"] for r in runs if r["method"] == "pcn"]
    target = sum(pcn) / 2
    plan = small_dense_plan(runs)
    assert [p["source_id"] for p in plan] == [r["id"] for r in runs if r["method"] == "pcn"]  # dense not a source
    assert {p["target"] for p in plan} == {target}
    configs = small_dense_for_runs(runs)
    assert [c.train.seed for c in configs] == [0, 1]
    assert all(c.method == "dense" and c.model.hidden == configs[0].model.hidden for c in configs)
    got = run(configs[0], tmp_path, device="cpu", log=lambda *_: None)
    assert got["params_trainable"] == plan[0]["achieved"]
    assert abs(relative_error(got["params_trainable"], target)) <= 0.01
    # the Torch-Pruning peer of the PCN runs: same seeds, PCN's count as its target, pruning at PCN's epoch
    peers = tp_channel_for_runs(runs)
    assert [(c.method, c.train.seed, c.method_options.tp_target, c.method_options.tp_epoch) for c in peers] == \
        [("tp-channel", 0, round(target), 1), ("tp-channel", 1, round(target), 1)]
    got = run(peers[0], tmp_path, device="cpu", log=lambda *_: None)
    assert abs(relative_error(got["params_trainable"], round(target))) <= 0.02
