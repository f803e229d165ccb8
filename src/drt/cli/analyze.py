"""``drt analyze spectra|cka``: PCN spectra and CKA heatmaps of stored runs or bare checkpoints."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from drt.cli.common import add_device, add_no_progress, add_results_dir, progress, settings
from drt.data import Dataset
from drt.errors import DrtError
from drt.experiments.analyze import analyze_spectra, markdown, track_spectra
from drt.experiments.analyze_cka import DATA_KEYS, analyze_cka, check_same_data
from drt.experiments.config import DataConfig, ModelConfig, make_config, read_yaml
from drt.experiments.env import resolve_device
from drt.experiments.loading import config_from_dict, load_checkpoint_model, load_run_model, resolve_run
from drt.options import add_flags, build, title
from drt.pcn import parse_keep
from drt.train.config import TrainConfig


def common_flags(p: argparse.ArgumentParser) -> None:
    """--results-dir, --out, --device, --use-checkpoint (shared by the analyze sub-commands)."""
    add_results_dir(p)
    p.add_argument("--out", help="output folder (default <results>/analysis/<run or model-dataset>/)")
    add_device(p)
    p.add_argument("--use-checkpoint", action="store_true", help="--run: the last checkpoint.pt, not model.pt")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """``analyze`` with sub-commands ``spectra`` and ``cka`` (sub-parsers of the same class)."""
    p = sub.add_parser("analyze", help="PCN spectra and CKA heatmaps of runs or checkpoints")
    sub = p.add_subparsers(dest="analysis", required=True, parser_class=type(p))
    s = sub.add_parser("spectra", help="per-layer PCA spectra, k vs threshold; --track: over training")
    s.add_argument("--run", help="stored run id (or unique prefix): spectra of its final model")
    s.add_argument("--checkpoint", help="a bare checkpoint / state dict (with --model, --dataset)")
    s.add_argument("--track", action="store_true", help="train dense (flags, --config or --run's config) "
                   "and track spectra, subspace overlap and accuracy vs k per epoch")
    s.add_argument("--config", help="--track: YAML settings (flags given win)")
    s.add_argument("--samples", type=int, help="training samples for the statistics (default 5000; --track 1000)")
    s.add_argument("--thresholds", default="0.9,0.99,0.999", help="explained-variance thresholds for k")
    s.add_argument("--overlap-keep", type=float, default=0.99, help="--track: k rule of the subspace overlap")
    s.add_argument("--at-epoch", help="--track: epochs after which to measure accuracy vs k (default: the last)")
    s.add_argument("--keeps", default="0.8,0.9,0.95,0.99,0.999,all", help="--track: keep rules for accuracy vs k")
    add_no_progress(s)
    common_flags(s)
    seen: set[str] = set()
    for cls in (DataConfig, ModelConfig, TrainConfig):
        add_flags(s.add_argument_group(title(cls)), cls, seen)

    c = sub.add_parser("cka", help="layer x layer linear CKA within a model or between two")
    c.add_argument("--run", help="model A: a stored run id (or unique prefix)")
    c.add_argument("--run-b", help="model B: a stored run (default: A itself)")
    c.add_argument("--checkpoint", help="model A from a bare checkpoint (with --model, --dataset)")
    c.add_argument("--checkpoint-b", help="model B from a bare checkpoint (architecture of A unless --model-b)")
    c.add_argument("--model-b", help="--checkpoint-b: its model name (model options as A's)")
    c.add_argument("--layers", nargs="+", help="module names of A (default: its drt_stages)")
    c.add_argument("--layers-b", nargs="+", help="module names of B (default: its drt_stages)")
    c.add_argument("--unbiased", action="store_true", help="unbiased (minibatch) HSIC estimator")
    c.add_argument("--batches", type=int, default=10, help="held-out test batches to average over")
    c.add_argument("--batch-size", type=int, default=256, help="samples per batch")
    common_flags(c)
    seen = set()
    for cls in (DataConfig, ModelConfig):
        add_flags(c.add_argument_group(title(cls)), cls, seen)
    return p


def command(args: argparse.Namespace) -> int:
    """Run ``drt analyze spectra`` or ``drt analyze cka``; prints the table and where the files are."""
    return {"spectra": spectra, "cka": cka}[args.analysis](args)


def refuse_settings(args: argparse.Namespace, classes: Sequence[type], why: str) -> None:
    extra = sorted(set(settings(args, classes)) - {"data_dir", "data_root"})
    if extra:
        raise DrtError(f"setting(s) {', '.join(extra)} do not apply {why}")


def checkpoint_tag(path: str | Path) -> str:
    """``<folder>-<stem>`` of a checkpoint file, to name its analysis folder."""
    return f"{Path(path).resolve().parent.name}-{Path(path).stem}"


def numbers(text: str, what: str, cast: type = float) -> list[Any]:
    try:
        return [cast(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise DrtError(f"{what} must be a comma-separated list of numbers; got {text!r}") from None


def report(files: Sequence[Path], table: list[dict[str, Any]]) -> None:
    print(markdown(table))
    folder = files[0].parent
    print(f"wrote {len(files)} files to {folder}: " + ", ".join(str(f.relative_to(folder)) for f in files))


def spectra(args: argparse.Namespace) -> int:
    ths = numbers(args.thresholds, "--thresholds")
    if any(not 0 < t <= 1 for t in ths) or not ths:
        raise DrtError(f"--thresholds must be fractions in (0, 1]; got {args.thresholds!r}")
    if args.samples is not None and args.samples < 2:
        raise DrtError(f"--samples must be >= 2; got {args.samples}")
    root = Path(args.results_dir) / "analysis"
    given = settings(args, (DataConfig, ModelConfig, TrainConfig))
    if not (args.run or args.checkpoint or args.track or args.config or given):
        raise DrtError("give --run RUN, --checkpoint PATH (with --model, --dataset), or training settings "
                       "(--model, --dataset, --epochs, ... or --config) to track spectra over training")
    if args.track or not (args.run or args.checkpoint):
        if args.checkpoint:
            raise DrtError("--track trains from a configuration; it does not take --checkpoint")
        values: dict[str, Any] = read_yaml(args.config) if args.config else {}
        if args.run:
            values = config_from_dict(resolve_run(args.results_dir, args.run)["config"]).to_dict()
            values = {**values["data"], **values["model"], **values["train"]}
        cfg = make_config({**values, **given})
        out = Path(args.out or root / f"{cfg.model.model}-{cfg.data.dataset}-{cfg.run_id()}")
        keeps = [parse_keep(k) for k in args.keeps.split(",") if k.strip()]
        res = track_spectra(cfg, out, samples=args.samples or 1000, thresholds=ths, overlap_keep=args.overlap_keep,
                            at_epochs=numbers(args.at_epoch, "--at-epoch", int) if args.at_epoch else None,
                            keeps=keeps, device=args.device, progress=progress(args))
        report(res["files"], res["accuracy"] or res["history"])
        return 0
    if args.run and args.checkpoint:
        raise DrtError("give either --run or --checkpoint, not both")
    if args.run:
        refuse_settings(args, (DataConfig, ModelConfig, TrainConfig), "to --run (its settings come from the store)")
        model, cfg, data = load_run_model(args.results_dir, args.run, checkpoint=args.use_checkpoint,
                                          data_dir=args.data_dir, data_root=args.data_root)
        out, title, seed = Path(args.out or root / cfg.run_id()), f"{cfg.label()} ({cfg.run_id()})", cfg.train.seed
    else:
        if not args.model or not args.dataset:
            raise DrtError("--checkpoint needs --model and --dataset (and the model options it was built with)")
        m = settings(args, (ModelConfig,))
        d = settings(args, (DataConfig,))
        model, data = load_checkpoint_model(args.checkpoint, m.pop("model"), d.pop("dataset"), model_options=m, **d)
        out = Path(args.out or root / f"{args.model}-{args.dataset}-{checkpoint_tag(args.checkpoint)}")
        title, seed = f"{args.model} on {args.dataset}: {args.checkpoint}", args.seed or 0
    res = analyze_spectra(model.to(resolve_device(args.device)), data, out, samples=args.samples or 5000,
                          thresholds=ths, seed=seed, title=title)
    report(res["files"], res["rows"])
    return 0


def _side(args: argparse.Namespace, run: str | None, ckpt: str | None,
          base: dict[str, Any] | None) -> tuple[nn.Module, Dataset, dict[str, Any], str, str]:
    """(model, data, data settings, label, tag) of one side, from a run or a checkpoint.

    ``base``: model and data settings a ``--checkpoint-b`` inherits from side A (flags override data).
    """
    if run:
        model, cfg, data = load_run_model(args.results_dir, run, checkpoint=args.use_checkpoint,
                                          data_dir=args.data_dir, data_root=args.data_root)
        d = cfg.to_dict()
        return model, data, d["data"], f"{cfg.label()} [{cfg.run_id()[:8]}]", cfg.run_id()
    assert ckpt is not None  # one of run / ckpt is given (checked by the caller)
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


def cka(args: argparse.Namespace) -> int:
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
    print(markdown([{"layer": n, **{c: f"{v:.3f}" for c, v in zip(res["names_b"], r, strict=True)}}
                    for n, r in zip(res["names_a"], res["matrix"].tolist(), strict=True)]))
    print(f"wrote {len(res['files'])} files to {out}: " + ", ".join(f.name for f in res["files"]))
    return 0
