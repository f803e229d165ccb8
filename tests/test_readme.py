"""The README's Python examples run as written, and its CLI listing matches the registries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_example_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README block {index}", "exec"), {"__name__": "__readme__"})


def test_examples_exist():
    assert len(BLOCKS) >= 3


def test_every_method_is_documented():
    from drt.methods import METHODS, REGULARISERS

    for name in [*METHODS.names(), *REGULARISERS.names()]:
        assert f"`{name}`" in README or f"--reg {name}" in README, name
