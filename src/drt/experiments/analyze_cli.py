"""``drt analyze spectra|cka``: the command line over ``analyze`` (PCN spectra) and ``analyze_cka``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drt.errors import DrtError
from drt.experiments.analyze import (
    analyze_spectra,
    markdown,
    track_spectra,
)
from drt.experiments.config import DataConfig, ModelConfig, make_config
from drt.experiments.env import resolve_device
from drt.experiments.loading import (
    config_from_dict,
    load_checkpoint_model,
    load_run_model,
    resolve_run,
    results_dir_default,
)


def common_flags(p: Any) -> None:
    """--results-dir, --out, --device, --use-checkpoint (shared by the analyze sub-commands)."""
    from drt.experiments.env import DEVICES

    p.add_argument("--results-dir", default=results_dir_default(), help="where the store and runs live")
    p.add_argument("--out", help="output folder (default <results>/analysis/<run or model-dataset>/)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="compute device")
    p.add_argument("--use-checkpoint", action="store_true", help="--run: the last checkpoint.pt, not model.pt")


def settings(args: Any, classes: Sequence[type]) -> dict[str, Any]:
    """The config settings given on the command line (flags of ``classes``' fields)."""
    from drt.options import field_types

    return {k: getattr(args, k) for c in classes for k in field_types(c) if getattr(args, k, None) is not None}


def refuse_settings(args: Any, classes: Sequence[type], why: str) -> None:
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


def add_analyze_parser(subparsers: Any) -> Any:
    """Add ``analyze`` with sub-commands ``spectra`` and ``cka`` (sub-parsers of the same class)."""
    from drt.experiments.analyze_cka import add_cka_parser
    from drt.options import add_flags
    from drt.train.config import TrainConfig

    p = subparsers.add_parser("analyze", help="PCN spectra and CKA heatmaps of runs or checkpoints")
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
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    common_flags(s)
    seen: set[str] = set()
    for cls in (DataConfig, ModelConfig, TrainConfig):
        add_flags(s.add_argument_group(cls.__name__), cls, seen)
    add_cka_parser(sub)
    return p


def cmd_analyze(args: Any) -> int:
    """Run ``drt analyze spectra`` or ``drt analyze cka``; prints the table and where the files are."""
    from drt.experiments.analyze_cka import cmd_cka

    return {"spectra": cmd_spectra, "cka": cmd_cka}[args.analysis](args)


def report(files: Sequence[Path], table: list[dict[str, Any]]) -> None:
    print(markdown(table))
    folder = files[0].parent
    print(f"wrote {len(files)} files to {folder}: " + ", ".join(str(f.relative_to(folder)) for f in files))


def cmd_spectra(args: Any) -> int:
    import sys

    from drt.experiments import config as config_mod
    from drt.methods.pcn import parse_keep
    from drt.train.config import TrainConfig

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
        values: dict[str, Any] = config_mod.read_yaml(args.config) if args.config else {}
        if args.run:
            values = config_from_dict(resolve_run(args.results_dir, args.run)["config"]).to_dict()
            values = {**values["data"], **values["model"], **values["train"]}
        cfg = make_config({**values, **given})
        out = Path(args.out or root / f"{cfg.model.model}-{cfg.data.dataset}-{cfg.run_id()}")
        keeps = [parse_keep(k) for k in args.keeps.split(",") if k.strip()]
        res = track_spectra(cfg, out, samples=args.samples or 1000, thresholds=ths, overlap_keep=args.overlap_keep,
                            at_epochs=numbers(args.at_epoch, "--at-epoch", int) if args.at_epoch else None,
                            keeps=keeps, device=args.device, progress=not args.no_progress and sys.stderr.isatty())
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
