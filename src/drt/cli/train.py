"""``drt train``: one configuration from flags or a YAML file (``--nproc N``: under torchrun, DDP)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from drt.cli.common import Parser, add_run_flags, epoch_lines, progress
from drt.cli.settings import add_settings, owners
from drt.errors import DrtError
from drt.experiments import config as config_mod
from drt.experiments.env import resolve_device
from drt.experiments.runner import run
from drt.experiments.store import STORE_NAME, Store
from drt.experiments.table import format_table, method_lines, summary_row, tta_line
from drt.experiments.tta import annotate
from drt.methods import METHODS, REGULARISERS
from drt.train.distributed import launched, process_group

USAGE = ("%(prog)s [--method NAME] [--reg R,...] [--config YAML] [--<setting> VALUE ...] [--resume] [--force] "
         "[--nproc N] [--results-dir DIR] [--device D] [--no-progress]")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train one configuration (flags or --config YAML)", add_help=False,
                       usage=USAGE)
    build(p)
    return p


def build(p: argparse.ArgumentParser, method: str | None = None, regs: Sequence[str] = ()) -> None:
    """The flags of ``drt train``; settings of ``method`` and ``regs`` only, if a method is given."""
    p.add_argument("-h", "--help", action="store_true",
                   help="show the settings and exit (with --method X, --reg R: only theirs, with X's defaults)")
    p.add_argument("--config", help="YAML file of settings (flags given on the command line win)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--force", action="store_true", help="re-run even if this config already finished")
    p.add_argument("--nproc", type=int, help="data-parallel processes on this machine: re-launches under torchrun "
                                             "(DDP; the global batch is nproc x batch size)")
    add_run_flags(p)
    p.add_argument("--method", help=f"training method: {', '.join(METHODS.names())} (see `drt list methods`)")
    p.add_argument("--reg", help=f"regularisers to add, comma-separated: {', '.join(REGULARISERS.names())}")
    p.add_argument("--recipe", help="start from a named training recipe (see `drt list recipes`); "
                                    "the config file and flags given win")
    add_settings(p, owners(method, regs), used_by=method is None)


def help_text(args: argparse.Namespace) -> str:
    """``drt train --help``: every setting, or those of the chosen method (flag or YAML) and regularisers."""
    given = config_mod.read_yaml(args.config) if args.config else {}
    method = args.method or given.get("method")
    reg = args.reg or given.get("reg") or ()
    regs = [r for r in (reg.replace(",", " ").split() if isinstance(reg, str) else reg) if r]
    p = Parser(prog="drt train", usage=USAGE, add_help=False,
               description=f"--method {method}: {METHODS.meta(method).get('help', '')}" if method else None)
    build(p, method, regs)
    return p.format_help()


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run ``drt <argv>`` without ``--nproc`` under torchrun with ``nproc`` processes; its exit code."""
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
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stderr is not None
    with proc.stderr:
        said, cause = forward_worker_lines(proc.stderr, sys.stderr)
    code = proc.wait()
    if code and not said:  # a process died without a word (killed, out of memory): name it
        print(f"drt: error: {cause or 'a process of the job failed'}; the job stopped. The last checkpoint "
              "is kept: the same command with --resume continues the run", file=sys.stderr)
    return 2 if code else 0


AGENT_LOG = re.compile(r"^[WEI]\d{4} [\d:.]+ \d+ \S*torch/distributed/")  # the launcher's own log lines


def forward_worker_lines(lines: Iterable[str], out: TextIO) -> tuple[bool, str | None]:
    """Copy the workers' stderr from torchrun's to ``out``, without torchrun's own logs and failure report
    and without the workers' "lost another process" lines (the report names the process that stopped);
    (whether a worker said ``drt: error``, the report's root cause, e.g. "rank 1 was killed by SIGKILL")."""
    said, report, root, rank, cause = False, False, False, None, None
    for line in lines:
        text = re.sub(r"^\[(?:rank|default)?\d+\]:\s?", "", line)  # torchrun's rank prefix
        if report or AGENT_LOG.match(line) or line.startswith("Traceback (most recent call last)"):
            report = report or line.startswith("Traceback")  # from here on: torchrun's failure report
            root = root or line.startswith("Root Cause")
            if root and (m := re.match(r"\s+rank\s+: (\d+)", line)):
                rank = m.group(1)
            if root and rank and cause is None and (m := re.match(r"\s+exitcode\s+: (-?\d+)(?:.*\((SIG\w+)\))?", line)):
                cause = f"rank {rank} " + (f"was killed by {m.group(2)}" if m.group(2) else f"exited with {m.group(1)}")
            continue
        if text.startswith("drt: error") and "lost another process of this job" in text:
            continue
        said = said or text.startswith("drt: error")
        out.write(text)
        out.flush()
    return said, cause


def command(args: argparse.Namespace) -> int:
    if args.help:
        print(help_text(args), end="")
        return 0
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
                      progress=progress(args), epoch_lines=epoch_lines(args))
    if not ranks.is_main:  # rank 0 alone prints
        return 0
    print(format_table([summary_row(cfg.label(), metrics)]))
    for line in method_lines(metrics):
        print(line)
    store = Store(Path(args.results_dir) / STORE_NAME)
    tta = annotate(store.runs("done"), store.epochs).get(metrics["run_id"])
    said = tta_line(tta) if tta else None
    if said:
        print(said)
    if ranks.world_size > 1:
        print(f"{ranks.world_size} processes (DDP): global batch {ranks.world_size} x {cfg.train.batch_size}")
    print(f"run {metrics['run_id']} recorded in {Path(args.results_dir) / STORE_NAME}")
    return 0
