"""``drt analyze cka``: layer × layer linear CKA within one model or between two (runs or checkpoints).

Minibatch CKA (Nguyen, Raghu & Kornblith 2021): HSIC averaged over held-out test batches, then the
ratio; features captured by forward hooks on named modules, models in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from drt.analysis.cka_analysis import cka_table, layer_cka, plot_cka_heatmap
from drt.data import Dataset, TensorLoader
from drt.errors import DrtError
from drt.experiments.analyze import markdown
from drt.experiments.analyze_cli import checkpoint_tag, common_flags, refuse_settings, settings
from drt.experiments.config import DataConfig, ModelConfig
from drt.experiments.env import resolve_device
from drt.experiments.loading import config_from_dict, load_checkpoint_model, load_run_model, resolve_run
from drt.experiments.store import to_csv
from drt.options import build

DATA_KEYS = ("dataset", "subset", "val_size", "image_size")


def default_layers(model: nn.Module) -> list[str]:
    """The model's ``drt_stages`` flattened (ResNet blocks, VGG ReLUs, MLP hidden ReLUs)."""
    names = [n for stage in getattr(model, "drt_stages", None) or [] for n in stage]
    if not names:
        valid = ", ".join(n for n, _ in model.named_modules() if n)
        raise DrtError(f"{type(model).__name__} has no drt_stages; pass --layers (valid names: {valid})")
    return names


def check_same_data(a: dict[str, Any], b: dict[str, Any], what: str = "the two models") -> None:
    """DrtError naming the first data setting (dataset, subset, val_size, image_size) that differs."""
    for k in DATA_KEYS:
        if a.get(k) != b.get(k):
            raise DrtError(f"{what} were trained on different data ({k}: {a.get(k)!r} vs {b.get(k)!r}); "
                           "CKA needs the same inputs for both")


def analyze_cka(model_a: nn.Module, data: Dataset, out: str | Path, *, model_b: nn.Module | None = None,
                names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None, unbiased: bool = False,
                batches: int = 10, batch_size: int = 256, labels: tuple[str, str] = ("A", "A"),
                title: str = "Linear CKA") -> dict[str, Any]:
    """CKA between layers ``names_a`` of ``model_a`` and ``names_b`` of ``model_b`` (default: ``model_a``) on up to
    ``batches`` test batches of ``batch_size``; writes cka.png, cka.md and cka.csv to ``out``.

    Layers default to each model's ``drt_stages``. Returns {matrix (La, Lb) float64, names_a, names_b, files}.
    """
    if batches < 1 or batch_size < (4 if unbiased else 2):
        raise DrtError(f"need batches >= 1 and batch_size >= {4 if unbiased else 2}; got {batches}, {batch_size}")
    names_a = list(names_a or default_layers(model_a))
    names_b = list(names_b or (default_layers(model_b) if model_b is not None else names_a))
    loader = TensorLoader(data.x_test, data.y_test, batch_size, shuffle=False)
    matrix = layer_cka(model_a, loader, names_a, model_b, names_b, unbiased=unbiased, max_batches=batches)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    used = min(batches, len(loader))
    kind = "unbiased" if unbiased else "biased"
    files = [plot_cka_heatmap(matrix, names_a, names_b, out / "cka.png", title)]
    (out / "cka.md").write_text(f"# {title}\n\nRows: {labels[0]}; columns: {labels[1]}. Minibatch linear CKA "
                                f"({kind} HSIC averaged over {used} held-out test batches of up to {batch_size}, "
                                f"then normalised), eval mode.\n\n{cka_table(matrix, names_a, names_b)}\n")
    rows = [{"layer": n, **{m: f"{v:.6f}" for m, v in zip(names_b, r, strict=True)}}
            for n, r in zip(names_a, matrix.tolist(), strict=True)]
    (out / "cka.csv").write_text(to_csv(rows))
    return {"matrix": matrix, "names_a": names_a, "names_b": names_b, "files": [*files, out / "cka.md",
                                                                                   out / "cka.csv"]}


def add_cka_parser(sub: Any) -> None:
    """The ``cka`` sub-command of ``drt analyze``."""
    from drt.options import add_flags

    p = sub.add_parser("cka", help="layer x layer linear CKA within a model or between two")
    p.add_argument("--run", help="model A: a stored run id (or unique prefix)")
    p.add_argument("--run-b", help="model B: a stored run (default: A itself)")
    p.add_argument("--checkpoint", help="model A from a bare checkpoint (with --model, --dataset)")
    p.add_argument("--checkpoint-b", help="model B from a bare checkpoint (architecture of A unless --model-b)")
    p.add_argument("--model-b", help="--checkpoint-b: its model name (model options as A's)")
    p.add_argument("--layers", nargs="+", help="module names of A (default: its drt_stages)")
    p.add_argument("--layers-b", nargs="+", help="module names of B (default: its drt_stages)")
    p.add_argument("--unbiased", action="store_true", help="unbiased (minibatch) HSIC estimator")
    p.add_argument("--batches", type=int, default=10, help="held-out test batches to average over")
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch")
    common_flags(p)
    seen: set[str] = set()
    for cls in (DataConfig, ModelConfig):
        add_flags(p.add_argument_group(cls.__name__), cls, seen)


def _side(args: Any, run: str | None, ckpt: str | None,
          base: dict[str, Any] | None) -> tuple[nn.Module, Dataset, dict[str, Any], str, str]:
    """(model, data, data settings, label, tag) of one side, from a run or a checkpoint.

    ``base``: model and data settings a ``--checkpoint-b`` inherits from side A (flags override data).
    """
    if run:
        model, cfg, data = load_run_model(args.results_dir, run, checkpoint=args.use_checkpoint,
                                          data_dir=args.data_dir, data_root=args.data_root)
        d = cfg.to_dict()
        return model, data, d["data"], f"{cfg.label()} [{cfg.run_id()[:8]}]", cfg.run_id()
    m, d = settings(args, (ModelConfig,)), settings(args, (DataConfig,))
    if base is not None:
        m, d = {**base["model"], **({"model": args.model_b} if args.model_b else {})}, {**base["data"], **d}
    if "model" not in m or "dataset" not in d:
        raise DrtError("--checkpoint needs --model and --dataset (and the model options it was built with)")
    name = m.pop("model")
    model, data = load_checkpoint_model(ckpt, name, d.pop("dataset"), model_options=m, **d)
    full = build(DataConfig, {"dataset": data.name, **d}, "data")
    return model, data, {k: getattr(full, k) for k in DATA_KEYS}, f"{name}: {ckpt}", checkpoint_tag(ckpt)


def _inherit(model: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Side A's model and data settings (None dropped), for a ``--checkpoint-b``."""
    return {"model": {k: v for k, v in model.items() if v is not None},
            "data": {k: v for k, v in data.items() if v is not None}}


def cmd_cka(args: Any) -> int:
    """``drt analyze cka``: heatmap, Markdown and CSV; prints the table and where the files are."""
    if bool(args.run) == bool(args.checkpoint):
        raise DrtError("give model A as either --run RUN or --checkpoint PATH (with --model, --dataset)")
    if args.run_b and args.checkpoint_b:
        raise DrtError("give model B as either --run-b or --checkpoint-b, not both")
    if args.run:
        refuse_settings(args, (DataConfig, ModelConfig), "to --run (its settings come from the store)")
        if args.run_b:  # compare the stored data settings before loading anything
            ra, rb = (resolve_run(args.results_dir, r)["config"]["data"] for r in (args.run, args.run_b))
            check_same_data(ra, rb, f"runs {args.run} and {args.run_b}")
    model_a, data, data_a, label_a, tag = _side(args, args.run, args.checkpoint, None)
    model_b, label_b = None, label_a
    if args.run_b or args.checkpoint_b:
        base = None
        if args.checkpoint_b:
            model_a_cfg = (config_from_dict(resolve_run(args.results_dir, args.run)["config"]).to_dict()["model"]
                           if args.run else settings(args, (ModelConfig,)))
            base = _inherit(model_a_cfg, data_a)
        model_b, _, data_b, label_b, tag_b = _side(args, args.run_b, args.checkpoint_b, base)
        check_same_data(data_a, data_b)
        tag = f"{tag}-vs-{tag_b}"
    dev = resolve_device(args.device)
    out = Path(args.out or Path(args.results_dir) / "analysis" / f"cka-{tag}")
    res = analyze_cka(model_a.to(dev), data, out, model_b=None if model_b is None else model_b.to(dev),
                      names_a=args.layers, names_b=args.layers_b, unbiased=args.unbiased, batches=args.batches,
                      batch_size=args.batch_size, labels=(label_a, label_b),
                      title=f"Linear CKA: {label_a}" + ("" if model_b is None else f" (rows) vs {label_b}"))
    m: Tensor = res["matrix"]
    print(markdown([{"layer": n, **{c: f"{v:.3f}" for c, v in zip(res["names_b"], r, strict=True)}}
                    for n, r in zip(res["names_a"], m.tolist(), strict=True)]))
    print(f"wrote {len(res['files'])} files to {out}: " + ", ".join(f.name for f in res["files"]))
    return 0
