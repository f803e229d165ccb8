"""Run ``drt`` in this process and SIGKILL it at the N-th call of a function (tests/test_kill_anywhere.py).

    python tests/kill_child.py MODULE:ATTR N [partial] -- DRT ARGS...

``MODULE:ATTR`` names a function or a class's method (``drt.methods.driver:Driver.step``); at its
N-th call the process kills itself (SIGKILL: no handler, no cleanup, like a power cut or the OOM
killer). ``partial``: the call runs halfway first — for ``torch:save`` it writes half of the
file's bytes, so the kill lands in the middle of a checkpoint write. ``none`` runs uninterrupted.
"""

from __future__ import annotations

import importlib
import io
import os
import signal
import sys
from typing import Any


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(target: str, n: int, partial: bool) -> None:
    module, attr = target.split(":")
    owner: Any = importlib.import_module(module)
    *path, name = attr.split(".")
    for p in path:
        owner = getattr(owner, p)
    real = getattr(owner, name)
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n:
            if partial:  # torch.save(obj, file): half of the bytes reach the file
                buf = io.BytesIO()
                real(args[0], buf)
                f = args[1]
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
            _die()
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


def main() -> int:
    sep = sys.argv.index("--")
    target, *rest = sys.argv[1:sep]
    if target != "none":
        arm(target, int(rest[0]), "partial" in rest[1:])
    from drt.cli import main as drt

    return drt(sys.argv[sep + 1:])


if __name__ == "__main__":
    sys.exit(main())
