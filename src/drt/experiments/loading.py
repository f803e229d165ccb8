"""Rebuild a stored run's model exactly (its PCN layers included) from the results store or a bare file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drt.data import Dataset, load
from drt.errors import DrtError
from drt.experiments.config import DataConfig, ModelConfig, RunConfig, make_config
from drt.experiments.renames import upgrade
from drt.experiments.store import STORE_NAME, Store, run_folder
from drt.io import load_file
from drt.methods import METHODS, REGULARISERS
from drt.models import create
from drt.options import build
from drt.pcn import rebuild
from drt.pcn.spec import FORMAT
from drt.train.checkpoint import load_checkpoint


def resolve_run(results_dir: str | Path, run: str) -> dict[str, Any]:
    """The store row of run ``run`` (a full id or a unique prefix); DrtError listing known ids otherwise."""
    path = Path(results_dir) / STORE_NAME
    if not path.exists():
        raise DrtError(f"no results store at {path}; train something first or pass --results-dir")
    runs = Store(path).runs()
    hits = [r for r in runs if r["id"] == run] or [r for r in runs if r["id"].startswith(run)]
    if not hits:
        known = ", ".join(r["id"] for r in runs[-5:]) or "none"
        raise DrtError(f"unknown run {run!r} in {path}; known runs include: {known}")
    if len(hits) > 1:
        raise DrtError(f"run prefix {run!r} is ambiguous: matches {', '.join(r['id'] for r in hits[:5])}")
    return hits[0]


def config_from_dict(d: dict[str, Any], **data_overrides: str | None) -> RunConfig:
    """The ``RunConfig`` of a stored ``cfg.to_dict()``; non-None ``data_overrides`` (data_dir, data_root) win."""
    d = upgrade(d)
    flat = {**d["data"], **d["model"], **d["train"], "method": d["method"], "reg": list(d.get("reg") or [])}
    flat.update(d.get("method_options") or {})
    for o in d.get("reg_options") or []:
        flat.update(o)
    flat.update({k: v for k, v in data_overrides.items() if v is not None})
    return make_config(flat)


def load_data(data: DataConfig) -> Dataset:
    """The data set exactly as the runner loads it for these settings."""
    return load(data.dataset, data_dir=data.data_dir, data_root=data.data_root, val_size=data.val_size,
                subset=data.subset, image_size=data.image_size)


def _fresh(model: ModelConfig, data: Dataset) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the weights are loaded next; leave the caller's RNG alone
        return create(model.model, data.input_shape, data.num_classes, **model.options())


def _load_state(model: nn.Module, state: dict[str, Any], where: Path) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = str(e).splitlines()
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip().rstrip(", .")[:160]
        raise DrtError(f"weights in {where} do not fit the model ({detail}); a PCN-transformed model needs a "
                       "checkpoint carrying its spec") from None
    return model


def load_run_model(results_dir: str | Path, run: str, *, checkpoint: bool = False, data_dir: str | None = None,
                   data_root: str | None = None) -> tuple[nn.Module, RunConfig, Dataset]:
    """(model in eval mode on CPU, config, data set) of a stored run: its final ``model.pt``, or with
    ``checkpoint`` the last ``checkpoint.pt``. The architecture is rebuilt by the run's plug-ins from the
    checkpoint (a PCN run's transformed layers); ``data_dir``/``data_root`` override where data is read."""
    row = resolve_run(results_dir, run)
    run_dir = run_folder(results_dir, row["id"])
    cfg = config_from_dict(row["config"], data_dir=data_dir, data_root=data_root)
    data = load_data(cfg.data)
    model = _fresh(cfg.model, data)
    ckpt = run_dir / "checkpoint.pt"
    payload = load_checkpoint(ckpt) if ckpt.exists() else None
    if payload is not None:
        plugins = [METHODS.get(cfg.method)(cfg.method_options)]
        plugins += [REGULARISERS.get(r)(o) for r, o in zip(cfg.reg, cfg.reg_options, strict=True)]
        for p, ps in zip(plugins, payload["plugins"], strict=True):
            model = p.load_state_dict(ps, model)
    if checkpoint:
        if payload is None:
            raise DrtError(f"run {row['id']} has no checkpoint at {ckpt}")
        return _load_state(model, payload["model"], ckpt).eval(), cfg, data
    final = run_dir / "model.pt"
    if not final.exists():
        raise DrtError(f"run {row['id']} ({row['status']}) has no final model at {final}; "
                       "analyse its last checkpoint instead (--use-checkpoint)")
    return _load_state(model, load_file(final, "final model"), final).eval(), cfg, data


def _find_spec(payload: dict[str, Any]) -> dict[str, Any] | None:
    found = [payload.get("spec"), payload.get("pcn_spec")]
    found += [ps.get("spec") for ps in payload.get("plugins", []) if isinstance(ps, dict)]
    for s in found:
        if isinstance(s, str):
            try:
                s = json.loads(s)
            except ValueError:
                continue
        if isinstance(s, dict) and s.get("format") == FORMAT:
            return s
    return None


def load_checkpoint_model(path: str | Path, model_name: str, dataset: str, *,
                          model_options: dict[str, Any] | None = None, **data: Any) -> tuple[nn.Module, Dataset]:
    """(model in eval mode, data set) from a bare file: a plain state dict, a drt ``checkpoint.pt``, or
    ``{"model": state, "spec": pcn_spec}``; a PCN spec found in it rebuilds the transformed layers.
    ``data``: DataConfig settings (data_dir, data_root, subset, val_size, image_size)."""
    path = Path(path)
    payload = load_file(path)  # a missing or damaged file: a clear error before any data is loaded
    dcfg = build(DataConfig, {"dataset": dataset, **{k: v for k, v in data.items() if v is not None}}, "data")
    opts = {k: v for k, v in (model_options or {}).items() if v is not None}
    mcfg = build(ModelConfig, {"model": model_name, **opts}, "model")
    ds = load_data(dcfg)
    if not isinstance(payload, dict):
        raise DrtError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    model = _fresh(mcfg, ds)
    spec = _find_spec(payload)
    if spec is not None:
        model = rebuild(model, spec)
    state = payload["model"] if isinstance(payload.get("model"), dict) else payload
    return _load_state(model, state, path).eval(), ds
