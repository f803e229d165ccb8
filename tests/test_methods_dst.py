"""SET, RigL, ITOP, GraNet and SNFS through the real loop on digits: counts, schedules, zero state, resume, CLI."""

from __future__ import annotations

import math

import pytest
import torch

import drt.methods  # noqa: F401  (registers set, rigl, granet)
from drt.cli import main
from drt.errors import DrtError
from drt.experiments.store import Store
from drt.methods import METHODS, Method
from drt.methods.dst import ITOP, DSTOptions, ITOPOptions, RigL
from drt.methods.granet import GraNet, GraNetOptions
from drt.methods.snfs import SNFS
from drt.models import create
from drt.sparse import kept_total, redistribute
from drt.train import TrainConfig, train

from helpers import train_until

CPU = torch.device("cpu")
STEPS_PER_EPOCH = 23  # digits: 1438 training images at batch 64


def _model(digits, name="mlp", seed=0):
    torch.manual_seed(seed)
    options = {"hidden": [64, 32]} if name == "mlp" else {"width": 4}
    return create(name, digits.input_shape, digits.num_classes, **options)


def _cfg(epochs=3, optimizer="sgd", seed=1):
    return TrainConfig(epochs=epochs, batch_size=64, lr=0.05, optimizer=optimizer, seed=seed)


class Probe(Method):
    """Runs after the method's hooks: checks invariants on every step and keeps the last state."""

    def __init__(self, method):
        super().__init__()
        self.method, self.start, self.state = method, None, None

    def setup(self, state):
        self.start = {n: m.clone() for n, m in self.method.mask.items()}
        self.prev = dict(self.start)

    def after_step(self, state):
        self.state = state
        params = dict(state.model.named_parameters())
        for n, m in self.method.mask.items():
            assert int(m.sum()) == int(self.start[n].sum()) or isinstance(self.method, GraNet | SNFS), n
            fresh = m & ~self.prev[n]  # grown this step from inactive: value and optimizer state start at 0
            assert not params[n][fresh].any(), n
            for v in state.optimizer.state[params[n]].values():
                if torch.is_tensor(v) and v.shape == m.shape:
                    assert not v[fresh].any() and not v[~m].any(), n
        self.prev = {n: m.clone() for n, m in self.method.mask.items()}


class CheckedRigL(RigL):
    """RigL that also checks, on each update, that new connections have the largest dense |gradient|."""

    def after_backward(self, state):
        self.dense_grad = {n: p.grad.detach().abs().clone() for n, p in self._weights(state).items()}
        super().after_backward(state)

    def update(self, state, step, plan):
        old = {n: m.clone() for n, m in self.mask.items()}
        super().update(state, step, plan)
        for n, new in self.mask.items():
            g, fresh = self.dense_grad[n], new & ~old[n]
            if fresh.any() and (~new).any():
                assert g[fresh].min() >= g[~new].max(), n  # grown = top-k |grad| among inactive-after-drop


@pytest.mark.parametrize("model, optimizer", [("mlp", "sgd"), ("conv4", "adam")])
def test_rigl_counts_cosine_schedule_and_zero_state(digits, model, optimizer):
    s, alpha, dt = 0.8, 0.3, 5
    method = CheckedRigL(DSTOptions(sparsity=s, delta_t=dt, alpha=alpha))
    probe = Probe(method)
    out = train(_model(digits, model), digits, _cfg(optimizer=optimizer), method, [probe], device=CPU)
    total = 3 * STEPS_PER_EPOCH
    t_end = math.floor(0.75 * total + 0.5)
    assert [u["step"] for u in method.updates] == list(range(dt, t_end, dt))
    for u in method.updates:  # RigL's alpha_t, floored per layer; counts never change
        a_t = alpha / 2 * (1 + math.cos(math.pi * u["step"] / t_end))
        assert u["fraction"] == pytest.approx(a_t, abs=1e-15)
        assert u["active"] == {n: int(m.sum()) for n, m in probe.start.items()}
        numel = {n: m.numel() for n, m in probe.start.items()}  # ERK leaves some layers dense: nothing to swap
        assert u["dropped"] == {n: math.floor(a_t * k) if k < numel[n] else 0 for n, k in u["active"].items()}
    assert sum(sum(u["new"].values()) for u in method.updates) > 0
    mask = method.mask
    assert mask.kept() == kept_total(mask.numel(), s) and out.final["sparsity_achieved"] == mask.sparsity()
    assert [r["kept"] for r in out.final["layers"]] == [int(m.sum()) for m in probe.start.values()]
    params = dict(out.model.named_parameters())
    for n, m in mask.items():
        assert not params[n][~m].any(), n
        state = probe.state.optimizer.state[params[n]]
        buffers = [state["momentum_buffer"]] if optimizer == "sgd" else [state["exp_avg"], state["exp_avg_sq"]]
        assert all(not b[~m].any() for b in buffers), n
    assert 1 - s < out.final["exploration_rate"] <= 1
    assert out.final["updates"] == len(method.updates) and out.history[-1]["dst_updates"] == len(method.updates)


def test_set_grows_at_random_and_keeps_counts(digits):
    runs = {}
    for name in ("set", "rigl"):
        method = METHODS.get(name)(DSTOptions(sparsity=0.8, delta_t=5))
        probe = Probe(method)  # asserts constant per-layer counts on every step
        train(_model(digits), digits, _cfg(), method, [probe], device=CPU)
        runs[name] = (method, probe)
    (set_, set_probe), (rigl, rigl_probe) = runs["set"], runs["rigl"]
    assert all(torch.equal(set_probe.start[n], rigl_probe.start[n]) for n in set_probe.start)  # same start
    assert len(set_.updates) == len(rigl.updates) > 0
    assert {u["fraction"] for u in set_.updates} == {0.3}  # SET's zeta is constant
    assert all(sum(u["new"].values()) > 0 for u in set_.updates)
    assert set_.mask.kept() == rigl.mask.kept() == kept_total(set_.mask.numel(), 0.8)
    assert set_.mask != rigl.mask  # random vs gradient growth from the same start


@pytest.mark.parametrize("s_i", [0.0, 0.5])
def test_granet_follows_cubic_schedule_to_target_by_t_f(digits, s_i):
    s_f, dt, epochs = 0.9, 4, 4
    method = GraNet(GraNetOptions(sparsity=s_f, delta_t=dt, granet_initial=s_i))
    probe = Probe(method)
    out = train(_model(digits), digits, _cfg(epochs=epochs), method, [probe], device=CPU)
    total = epochs * STEPS_PER_EPOCH
    t_f = dt * (math.floor(0.5 * total + 0.5) // dt)  # half of training, rounded down to a multiple of dt
    n = method.mask.numel()
    assert sum(int(m.sum()) for m in probe.start.values()) == kept_total(n, s_i)

    def schedule(t):
        return s_f + (s_i - s_f) * (1 - min(t, t_f) / t_f) ** 3

    kept = kept_total(n, s_i)
    for u in method.updates:
        if u["step"] <= t_f:
            assert u["target_sparsity"] == pytest.approx(schedule(u["step"]), abs=1e-12)
            kept = kept_total(n, schedule(u["step"]))
        else:
            assert "target_sparsity" not in u  # no pruning after t_f, drop/regrow goes on
        assert sum(u["active"].values()) == kept  # after this step's pruning, before drop/regrow
        r_t = 0.005 + (0.5 - 0.005) / 2 * (1 + math.cos(math.pi * u["step"] / total))
        assert u["fraction"] == pytest.approx(r_t, abs=1e-15)
        assert u["dropped"] == {k: math.ceil(u["fraction"] * a) for k, a in u["active"].items()}
    assert max(u["step"] for u in method.updates) > t_f
    for h in out.history:  # at the epoch checkpoints: the schedule at the last pruning step
        last = max((u["step"] for u in method.updates if u["step"] <= h["epoch"] * STEPS_PER_EPOCH), default=0)
        assert h["mask_sparsity"] == 1 - kept_total(n, schedule(last) if last else s_i) / n
    assert out.history[1]["epoch"] * STEPS_PER_EPOCH >= t_f and out.history[1]["mask_sparsity"] == 1 - kept_total(
        n, s_f) / n
    assert method.mask.kept() == kept_total(n, s_f) and out.final["sparsity_achieved"] == method.mask.sparsity()


@pytest.mark.parametrize("name", ["rigl", "set", "granet", "snfs"])
def test_resume_matches_uninterrupted_run(digits, tmp_path, name):
    opts = (GraNetOptions if name == "granet" else DSTOptions)(sparsity=0.8, delta_t=5)
    full_method = METHODS.get(name)(opts)
    full = train(_model(digits), digits, _cfg(epochs=4), full_method, device=CPU)
    ckpt = tmp_path / "ck.pt"

    train_until(2, _model(digits), digits, _cfg(epochs=4), METHODS.get(name)(opts), device=CPU, checkpoint=ckpt)
    method = METHODS.get(name)(opts)
    resumed = train(_model(digits, seed=99), digits, _cfg(epochs=4), method, device=CPU, checkpoint=ckpt,
                    resume=True)
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert method.mask == full_method.mask and method.updates == full_method.updates
    assert method.tracker.rate() == full_method.tracker.rate()
    assert torch.equal(method.generator.get_state(), full_method.generator.get_state())
    if name == "snfs":
        assert all(torch.equal(method.momentum[n], m) for n, m in full_method.momentum.items())


class CheckedSNFS(SNFS):
    """SNFS that keeps its own dense-gradient momentum and checks every update against it."""

    def setup(self, state):
        super().setup(state)
        self.mine = {n: torch.zeros_like(m) for n, m in self.momentum.items()}

    def after_backward(self, state):
        for n, p in self._weights(state).items():
            self.mine[n] = 0.9 * self.mine[n] + p.grad  # dense: taken before the method masks grads
        super().after_backward(state)

    def update(self, state, step, plan):
        old = {n: m.clone() for n, m in self.mask.items()}
        for n, m in self.mine.items():
            torch.testing.assert_close(self.momentum[n], m)
        shares = {n: float(self.mine[n].abs()[old[n]].mean()) for n in old}
        super().update(state, step, plan)
        u = self.updates[-1]
        after = {n: int(old[n].sum()) - u["dropped"][n] for n in old}
        want = redistribute(sum(u["dropped"].values()), shares, {n: old[n].numel() - after[n] for n in old})
        assert {n: int(m.sum()) - after[n] for n, m in self.mask.items()} == want
        for n, new in self.mask.items():
            mom, fresh = self.mine[n].abs(), new & ~old[n]
            if fresh.any() and (~new).any():
                assert mom[fresh].min() >= mom[~new].max(), n  # grown = top |momentum| among inactive


def test_snfs_redistributes_by_momentum_each_epoch_and_keeps_the_total(digits):
    s, epochs = 0.9, 3
    method = CheckedSNFS(DSTOptions(sparsity=s, distribution="uniform"))
    probe = Probe(method)
    out = train(_model(digits), digits, _cfg(epochs=epochs), method, [probe], device=CPU)
    total = epochs * STEPS_PER_EPOCH
    assert [u["step"] for u in method.updates] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]  # not after the last
    for u in method.updates:  # cosine from 0.5 to 0.005 over all steps, ceiled per layer
        p_t = 0.005 + (0.5 - 0.005) / 2 * (1 + math.cos(math.pi * u["step"] / total))
        assert u["fraction"] == pytest.approx(p_t, abs=1e-15)
        assert u["dropped"] == {n: math.ceil(p_t * a) for n, a in u["active"].items()}
    start = {n: int(m.sum()) for n, m in probe.start.items()}
    end = {n: int(m.sum()) for n, m in method.mask.items()}
    assert end != start and sum(end.values()) == kept_total(method.mask.numel(), s)  # moved between layers
    assert out.final["sparsity_achieved"] == method.mask.sparsity() and out.final["updates"] == 2


def test_itop_updates_to_the_end_on_the_whole_run_cosine_and_keeps_counts(digits):
    runs = {}
    for grow in ("gradient", "random"):
        method = ITOP(ITOPOptions(sparsity=0.8, delta_t=5, itop_grow=grow))
        probe = Probe(method)  # per-layer counts constant, fresh weights and their state start at 0
        out = train(_model(digits), digits, _cfg(), method, [probe], device=CPU)
        runs[grow] = (method, probe, out)
    total = 3 * STEPS_PER_EPOCH
    method, probe, out = runs["gradient"]
    assert [u["step"] for u in method.updates] == list(range(5, total, 5))  # to the end, not at the last step
    for u in method.updates:
        p_t = 0.005 + (0.5 - 0.005) / 2 * (1 + math.cos(math.pi * u["step"] / total))
        assert u["fraction"] == pytest.approx(p_t, abs=1e-15)
        assert u["dropped"] == {n: math.ceil(p_t * a) if a < probe.start[n].numel() else 0
                                for n, a in u["active"].items()}
    rigl = RigL(DSTOptions(sparsity=0.8, delta_t=5))
    train(_model(digits), digits, _cfg(), rigl, device=CPU)
    assert out.final["exploration_rate"] > rigl.tracker.rate()  # the point of ITOP: more weights explored
    random_method, random_probe, _ = runs["random"]
    assert all(torch.equal(random_probe.start[n], m) for n, m in probe.start.items())  # same start
    assert random_method.mask != method.mask and random_method.mask.kept() == method.mask.kept()


def test_snfs_guard_keeps_a_starved_layer():
    class Net(torch.nn.Module):  # layer a's output is damped: its momentum share is ~0, the split would empty it
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(8, 8), torch.nn.Linear(8, 64), torch.nn.Linear(64, 3)

        def forward(self, x):
            return self.c(torch.relu(self.b(1e-3 * torch.relu(self.a(x)) + x)))

    from drt.methods import Driver

    torch.manual_seed(0)
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    for guard in (True, False):
        method = SNFS(DSTOptions(sparsity=0.9, guard=guard))
        drv = Driver(method, Net(), lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), batches=lambda: iter(batches),
                     epochs=6, steps_per_epoch=len(batches), input_shape=(8,), num_classes=3)
        for _ in range(6):
            for xb, yb in batches:
                loss = drv.loss(drv.net(xb), yb)
                drv.optimizer.zero_grad()
                loss.backward()
                drv.step()
            drv.end_epoch()
        summary = method.summary(drv.state)
        if guard:
            assert method.mask.kept("a.weight") >= 1 and summary["guard_fired"] == ["a.weight"]
        else:
            assert method.mask.kept("a.weight") == 0 and summary["guard_fired"] == []  # what the guard prevents
        assert method.mask.kept() == kept_total(method.mask.numel(), 0.9)


def test_snfs_full_layers_keep_exchanging(digits):
    method = SNFS(DSTOptions(sparsity=0.5))
    train(_model(digits), digits, _cfg(epochs=3), method, device=CPU)
    numel = {n: m.numel() for n, m in method.mask.items()}
    full = [(u, n) for u in method.updates for n, a in u["active"].items() if a == numel[n]]
    assert full  # the classifier fills up at the first update here
    assert all(u["dropped"][n] > 0 for u, n in full)  # and still drops its share and competes for regrowth


def test_per_epoch_updates_never_move_into_an_epoch(digits):
    method = SNFS(DSTOptions(sparsity=0.8))
    with pytest.warns(UserWarning, match="holds no epoch end; the mask stays fixed"):
        train(_model(digits), digits, _cfg(epochs=1), method, device=CPU)
    assert method.updates == []


def test_delta_t_too_large_is_clamped_with_a_warning(digits):
    method = RigL(DSTOptions(sparsity=0.8))  # default delta_t = 100 > the 17-step window of one epoch
    with pytest.warns(UserWarning, match="delta_t=100 steps leaves no update.*using delta_t=8"):
        out = train(_model(digits), digits, _cfg(epochs=1), method, device=CPU)
    assert [u["step"] for u in method.updates] == [8, 16] and out.final["delta_t"] == 8


@pytest.mark.parametrize("kwargs, message", [
    ({"delta_t": 0}, "delta_t must be >= 1"),
    ({"alpha": 0.0}, r"alpha \(drop fraction\) must be in \(0, 1\]"),
    ({"alpha": 1.5}, r"alpha \(drop fraction\) must be in \(0, 1\]"),
    ({"t_end": 0.0}, r"t_end must be a fraction of training in \(0, 1\]"),
    ({"t_end": 1.2}, r"t_end must be a fraction of training in \(0, 1\]"),
    ({"sparsity": 0.8, "granet_initial": 0.8}, r"granet_initial must be in \[0, sparsity=0.8\)"),
])
def test_bad_options_raise_one_line(kwargs, message):
    with pytest.raises(DrtError, match=message):
        GraNetOptions(**kwargs)


TINY = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--batch-size", "64", "--no-progress"]


def test_cli_trains_rigl_and_rejects_bad_options(capsys, results):
    code = main([*TINY, "--method", "rigl", "--sparsity", "0.9", "--delta-t", "10", "--results-dir", str(results)])
    _, err = capsys.readouterr()
    assert code == 0, err
    (run,) = Store(results / "drt.sqlite").runs()
    m = run["metrics"]
    assert m["sparsity_achieved"] == pytest.approx(0.9, abs=1e-3) and m["updates"] == 3  # steps 10, 20, 30
    assert 0.1 < m["exploration_rate"] <= 1 and run["config"]["method_options"]["delta_t"] == 10
    for argv, message in [
        (["--method", "rigl", "--delta-t", "0"], "delta_t must be >= 1"),
        (["--method", "set", "--alpha", "2"], "alpha (drop fraction) must be in (0, 1]"),
        (["--method", "rigl", "--t-end", "0"], "t_end must be a fraction"),
        (["--method", "granet", "--sparsity", "0.8", "--granet-initial", "0.9"], "granet_initial must be in"),
        (["--method", "rigl", "--granet-initial", "0.5"], "do not apply to method 'rigl'"),
        (["--method", "snfs", "--alpha", "0"], "alpha (drop fraction) must be in (0, 1]"),
        (["--method", "itop", "--itop-grow", "momentum"], "invalid choice: 'momentum'"),
    ]:
        code = main([*TINY, *argv, "--results-dir", str(results)])
        _, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], err



def test_rigl_skips_an_update_whose_dense_gradient_is_not_finite(digits):
    from drt.methods import Driver

    method = RigL(DSTOptions(sparsity=0.8, delta_t=5))
    drv = Driver(method, _model(digits), lambda g: torch.optim.SGD(g, lr=0.05), batches=None, epochs=1,
                 steps_per_epoch=20, input_shape=digits.input_shape, num_classes=digits.num_classes)
    before = {n: m.clone() for n, m in method.mask.items()}
    method._grow = {n: torch.full(m.shape, float("nan")) for n, m in method.mask.items()}  # e.g. an AMP overflow
    with pytest.warns(UserWarning, match="non-finite gradient at step 5; update skipped"):
        method.update(drv.state, 5, method.plan(drv.state))
    assert all(torch.equal(method.mask[n], m) for n, m in before.items())
    assert method.updates == [{"step": 5, "skipped": "non-finite gradient"}]
    assert method.summary(drv.state)["updates_skipped"] == 1
