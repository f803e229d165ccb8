"""How much of the input reaches the logits of a sparse LeNet-5 at initialisation, per method and sparsity.

    python benchmarks/signal_at_init.py

For each method's mask as chosen at setup (through drt's own plug-ins, on real Fashion-MNIST
batches), the input-dependent part of the logits — their standard deviation over 512 training
images, averaged over classes — next to their mean size (the bias path). A mask whose logits do not
depend on the input gets no useful gradient: this is why the random-start methods do not learn at
98% on this BN-free network (see BENCHMARKS.md). Writes benchmarks/results/signal_at_init.json.
"""

from __future__ import annotations

from functools import partial

import torch
from common import data_root, write_result

from drt.data import load
from drt.methods import METHODS
from drt.methods.driver import Driver
from drt.models import create
from drt.train import TrainConfig
from drt.train.loop import make_optimizer

METHOD_NAMES = ("dense", "random", "snip", "grasp", "synflow", "freezenet")
SPARSITIES = (0.9, 0.98)
SEEDS = (0, 1)


def logit_signal(method: str, sparsity: float | None, seed: int, data) -> dict[str, float]:
    torch.manual_seed(seed)
    model = create("lenet5", tuple(data.input_shape), data.num_classes)
    cls = METHODS.get(method)
    key = "freeze_fraction" if method == "freezenet" else "sparsity"  # freezenet's s: the fraction frozen
    opts = cls.Options(**{key: sparsity}) if sparsity is not None else cls.Options()
    x, y = data.x_train[:512], data.y_train[:512]
    drv = Driver(cls(opts), model, partial(make_optimizer, TrainConfig()), batches=lambda: iter([(x[:128], y[:128])]),
                 epochs=15, steps_per_epoch=469, input_shape=tuple(data.input_shape), num_classes=data.num_classes,
                 seed=seed)
    with torch.no_grad():
        out = drv.model.eval()(x)
    return {"input_dependent_std": float(out.std(0).mean()), "mean_abs": float(out.mean(0).abs().mean())}


def main() -> None:
    data = load("fashion-mnist", data_root=str(data_root()))
    rows = []
    for method in METHOD_NAMES:
        for sparsity in (None,) if method == "dense" else SPARSITIES:
            per_seed = [logit_signal(method, sparsity, s, data) for s in SEEDS]
            row = {"method": method, "sparsity": sparsity or 0.0,
                   **{k: float(f"{sum(p[k] for p in per_seed) / len(per_seed):.3g}") for k in per_seed[0]}}
            print(row, flush=True)
            rows.append(row)
    print("wrote", write_result("signal_at_init", rows, "python benchmarks/signal_at_init.py", seeds=list(SEEDS),
                                model="lenet5", dataset="fashion-mnist", images=512))


if __name__ == "__main__":
    main()
