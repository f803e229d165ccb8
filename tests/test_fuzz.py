"""Fuzzed settings (issue 15, C11): whatever a YAML file says, `drt train` either trains or refuses.

Hypothesis draws a method and values for its settings and for some data, model and training
settings — in range, out of range, of the wrong type, empty, NaN — writes them to a YAML file and
runs ``drt train --config`` in this process on a tiny model and data set. Each draw must end with
exit 0 and finite results in the store, or exit 2 with one ``drt: error:`` line (warnings aside) —
never a traceback (an exception escaping ``main`` fails the test) and never a NaN stored as a result.
Derandomized, so CI runs the same draws each time.
"""

from __future__ import annotations

import math
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drt.cli import main
from drt.experiments.store import Store
from drt.methods import METHODS
from drt.options import _base_type, field_of, field_types, is_tuple
from drt.train.config import TrainConfig

DRAWS = 300
WRONG = st.one_of(st.text(max_size=4), st.lists(st.integers(-2, 3), max_size=2), st.just({"a": 1}), st.none())
NUMBERS = st.one_of(st.floats(-1.5, 2.5), st.sampled_from([0.0, 1.0, -1.0, math.nan, math.inf, 1e9]))


def values_for(cls: type, name: str) -> st.SearchStrategy[Any]:
    """Values for setting ``name`` of ``cls``: of its type (in and out of range) or not, or empty."""
    tp = field_types(cls)[name]
    inner, _ = _base_type(tp)
    choices = field_of(cls, name).metadata.get("choices")
    if choices:
        good: st.SearchStrategy[Any] = st.sampled_from(choices)
    elif is_tuple(tp):
        good = st.lists(st.one_of(st.integers(-1, 40), st.sampled_from(["fc1", "conv1", "*", "x"])), max_size=3)
    elif inner is bool:
        good = st.booleans()
    elif inner is int:
        good = st.integers(-3, 8)
    elif inner is float:
        good = NUMBERS
    else:  # rules and names
        good = st.sampled_from(["all", "0.99", "0.5", "16", "auto", "1", "fc1=0.9", "conv*", "", "x"])
    return st.integers(0, 7).flatmap(lambda toss: WRONG if toss == 0 else good)  # mostly of its type


@st.composite
def draws(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(st.sampled_from(sorted(METHODS.names())))
    cls = METHODS.get(method).Options
    names = [f for f in field_types(cls) if draw(st.integers(0, 2)) == 0]
    chosen = {n: draw(values_for(cls, n)) for n in names}
    base: dict[str, Any] = {"dataset": "digits", "model": "mlp", "hidden": [16], "epochs": 1, "batch_size": 64,
                            "subset": 300, "method": method}
    for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "epochs", "batch_size", "schedule"):
        if draw(st.integers(0, 11)) == 0:  # now and then a training setting too
            base[name] = draw(values_for(TrainConfig, name))
    if draw(st.integers(0, 5)) == 0:
        base.update(model="resnet20", width=draw(st.sampled_from([2, 0, -4, "x"])), hidden=None)
    if draw(st.integers(0, 7)) == 0:
        base["subset"] = draw(st.sampled_from([0, 5, -1, 10**9, "x"]))
    return {k: v for k, v in {**base, **chosen}.items() if v is not None or k in chosen}


def _finite(x: Any) -> bool:
    return not isinstance(x, float) or math.isfinite(x)


@settings(max_examples=DRAWS, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=draws())
def test_fuzzed_settings_train_or_end_in_one_error_line(values, tmp_path_factory, capsys):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "run.yaml").write_text(yaml.safe_dump(values))
    capsys.readouterr()
    code = main(["train", "--config", str(d / "run.yaml"), "--results-dir", str(d / "r"), "--no-progress",
                 "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    problems = [line for line in err if not line.startswith("drt: warning:")]
    if code == 0:
        (row,) = Store(d / "r" / "drt.sqlite").runs("done")
        assert all(_finite(v) for v in row["metrics"].values()), row["metrics"]
        assert not problems, err
    else:
        assert code == 2, (values, err)
        assert len(problems) == 1 and problems[0].startswith("drt: error: "), (values, err)
