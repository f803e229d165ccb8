"""The ``drt`` command: train, list, demo."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from drt.errors import DrtError
from drt.experiments import config as config_mod
from drt.experiments.env import DEVICES
from drt.options import add_flags


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise DrtError(f"{message} (see `{self.prog} --help`)")


def results_dir_default() -> str:
    return os.environ.get("DRT_RESULTS_DIR", "results")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results-dir", default=results_dir_default(), help="where the store and runs live")
    p.add_argument("--device", default="auto", choices=DEVICES, help="compute device")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def make_parser() -> Parser:
    parser = Parser(prog="drt", description="Dimensionality-reduced training for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train one configuration (flags or --config YAML)")
    p.add_argument("--config", help="YAML file of settings (flags given on the command line win)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--force", action="store_true", help="re-run even if this config already finished")
    p.add_argument("--nproc", type=int, help="data-parallel processes on this machine: re-launches under torchrun "
                                             "(DDP; the global batch is nproc x batch size)")
    add_run_flags(p)
    p.add_argument("--method", help="training method (see `drt list methods`)")
    p.add_argument("--reg", help="regularisers to add, comma-separated (e.g. cka-sr)")
    seen: set[str] = set()
    for cls in config_mod.option_classes():
        group = p.add_argument_group(cls.__name__)
        add_flags(group, cls, seen)

    p = sub.add_parser("list", help="list models, datasets, methods or runs")
    p.add_argument("what", choices=("models", "datasets", "methods", "runs"))
    p.add_argument("--results-dir", default=results_dir_default())
    p.add_argument("--format", default="table", choices=("table", "csv", "json"), help="output format (runs)")
    p.add_argument("--output", help="write to this file instead of stdout")

    p = sub.add_parser("demo", help="the main job on the embedded mnist5k data set")
    add_run_flags(p)
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")

    from drt.experiments.analyze_cli import add_analyze_parser
    from drt.experiments.report import add_report_parser
    from drt.experiments.sweep import add_sweep_parser

    add_sweep_parser(sub)
    add_report_parser(sub)
    add_analyze_parser(sub)
    return parser


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run ``drt <argv>`` without ``--nproc`` under torchrun with ``nproc`` processes; its exit code."""
    from drt.train.distributed import launched

    if launched():
        raise DrtError("--nproc starts its own processes; drop it when running under torchrun")
    rest, skip = [], False
    for a in argv:
        if skip or a.startswith("--nproc="):
            skip = False
            continue
        skip = a == "--nproc"
        if not skip:
            rest.append(a)
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # cores / process
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "drt", *rest]
    return subprocess.run(cmd, env=env).returncode


def cmd_train(args: argparse.Namespace) -> int:
    from drt.experiments.env import resolve_device
    from drt.experiments.runner import run
    from drt.train.distributed import process_group

    if args.nproc is not None and args.nproc < 1:
        raise DrtError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc is not None and args.nproc > 1:
        return relaunch(args.nproc, args.argv)
    values: dict[str, Any] = config_mod.read_yaml(args.config) if args.config else {}
    for key in config_mod.valid_keys():
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    cfg = config_mod.make_config(values)
    with process_group(resolve_device(args.device)) as ranks:  # joins the torchrun job, if any
        metrics = run(cfg, args.results_dir, device=args.device, force=args.force, resume=args.resume,
                      progress=not args.no_progress and sys.stderr.isatty())
    if not ranks.is_main:  # rank 0 alone prints
        return 0
    from drt.experiments.table import format_table, method_lines, summary_row

    print(format_table([summary_row(cfg.label(), metrics)]))
    for line in method_lines(metrics):
        print(line)
    if ranks.world_size > 1:
        print(f"{ranks.world_size} processes (DDP): global batch {ranks.world_size} x {cfg.train.batch_size}")
    print(f"run {metrics['run_id']} recorded in {Path(args.results_dir) / 'drt.sqlite'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from drt.experiments import registries

    if args.what == "runs":
        from drt.experiments.store import Store, flat_rows, to_csv
        from drt.experiments.table import format_table

        store_path = Path(args.results_dir) / "drt.sqlite"
        if not store_path.exists():
            raise DrtError(f"no results store at {store_path}; train something first or pass --results-dir")
        rows = flat_rows(Store(store_path).runs())
        if args.format == "json":
            text = json.dumps(rows, indent=2)
        elif args.format == "csv":
            text = to_csv(rows)
        else:
            cols = ["id", "status", "model", "dataset", "method", "seed", "test_acc", "params_trainable",
                    "flops", "step_time"]
            text = format_table([{c: r.get(c, "") for c in cols} for r in rows])
    else:
        text = registries.describe(args.what)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from drt.experiments.demo import demo

    demo(args.results_dir, device=args.device, epochs=args.epochs,
         progress=not args.no_progress and sys.stderr.isatty())
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        from drt.experiments.analyze_cli import cmd_analyze
        from drt.experiments.report import cmd_report
        from drt.experiments.sweep import cmd_sweep

        commands = {"train": cmd_train, "list": cmd_list, "demo": cmd_demo, "sweep": cmd_sweep,
                    "report": cmd_report, "analyze": cmd_analyze}
        return commands[args.command](args)
    except DrtError as e:
        rank = os.environ.get("RANK", "0")  # set by torchrun
        print(f"drt: error{f' (rank {rank})' if rank != '0' else ''}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output path that is a file, a directory, or not writable
        where = f": {e.filename}" if e.filename else ""
        print(f"drt: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("drt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
