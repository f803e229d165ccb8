"""Capture the outputs of named modules with forward hooks (for CKA-SR and CKA analysis)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from drt.errors import DrtError


class FeatureHooks:
    """Forward hooks on ``model``'s modules named ``names`` (fully-qualified, as in ``named_modules``).

    After a forward pass ``.features`` maps each name (in the order of ``names``) to its module's
    latest output (the first element if the module returns a tuple / list). ``detach=False`` keeps
    the autograd graph (regularisers); ``detach=True`` stores detached tensors (analysis).
    Mutates ``model`` by registering hooks until ``remove()`` (called on leaving a ``with`` block).
    """

    def __init__(self, model: nn.Module, names: Sequence[str], detach: bool = False) -> None:
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            valid = [n for n in modules if n]
            shown = ", ".join(valid[:12]) + (f", ... ({len(valid)} modules)" if len(valid) > 12 else "")
            raise DrtError(f"unknown module name(s) {', '.join(map(repr, unknown))}; valid names: {shown}")
        self.names = list(dict.fromkeys(names))
        self.detach = detach
        self._store: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = [
            modules[n].register_forward_hook(self._hook(n)) for n in self.names
        ]

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple | list) else output
            self._store[name] = out.detach() if self.detach else out

        return hook

    @property
    def features(self) -> dict[str, Tensor]:
        """Captured outputs, ordered as ``names`` (modules not yet run are absent)."""
        return {n: self._store[n] for n in self.names if n in self._store}

    def clear(self) -> None:
        """Drop the captured outputs (and with them any graph they keep alive)."""
        self._store.clear()

    def remove(self) -> None:
        """Remove the hooks from the model (captured outputs stay readable); safe to call twice."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureHooks:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()
