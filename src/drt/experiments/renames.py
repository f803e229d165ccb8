"""Settings renamed or added after runs were stored; old configs keep working.

``RENAMED[method][old] = new``: a method's setting that got its own name (one name, one meaning).
Stored configs are upgraded when read (``upgrade``: ``Store.runs``, ``config_from_dict``); YAML
files, sweep grids and flags with the old name are read with a FutureWarning (``upgrade_settings``).
A rename keeps the setting's meaning, so a run keeps its id: the hash is taken over the names the
config was first stored with (``stored_names``, in ``RunConfig.run_id``).

``ADDED[section]``: settings added later, unset (None) by default. ``upgrade`` gives an older config
them unset, so old and new runs of one setting compare equal (report rows, time-to-accuracy
references); ``stored_names`` leaves them out while unset, so old runs keep their ids.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from drt.errors import DrtError

# issue 16: freezenet's ``sparsity`` was the fraction *frozen*, not pruned
RENAMED: dict[str, dict[str, str]] = {"freezenet": {"sparsity": "freeze_fraction"}}
# issue 14: the transformers' shape settings
ADDED: dict[str, tuple[str, ...]] = {"model": ("depth", "heads", "mlp_ratio", "patch")}


def _renamed(options: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names.get(k, k): v for k, v in options.items()}


def upgrade(config: dict[str, Any]) -> dict[str, Any]:
    """A stored ``RunConfig.to_dict()`` with today's setting names and the settings added since, unset
    (a copy; current configs unchanged)."""
    names = RENAMED.get(config.get("method", ""), {})
    renamed = bool(names and set(names) & set(config.get("method_options") or {}))
    missing = {s: [k for k in keys if k not in config.get(s, {})] for s, keys in ADDED.items() if s in config}
    if not renamed and not any(missing.values()):
        return config
    out = copy.deepcopy(config)
    if renamed:
        out["method_options"] = _renamed(out["method_options"], names)
    for section, keys in missing.items():
        out[section].update(dict.fromkeys(keys))
    return out


def stored_names(config: dict[str, Any]) -> dict[str, Any]:
    """``upgrade`` undone: a current config with the names its runs were first stored under, without the
    settings added since while they are unset."""
    out = {**config, **{s: {k: v for k, v in config[s].items() if not (k in keys and v is None)}
                        for s, keys in ADDED.items() if s in config}}
    names = RENAMED.get(config.get("method", ""), {})
    if names:
        out["method_options"] = _renamed(config["method_options"] or {}, {v: k for k, v in names.items()})
    return out


def upgrade_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Flat settings (YAML keys, flags) with old names of the chosen method renamed, warning once per name."""
    names = RENAMED.get(str(values.get("method", "dense")), {})
    out = dict(values)
    for old, new in names.items():
        if old in out and values.get(old) is not None:
            if values.get(new) is not None:
                raise DrtError(f"{old} and {new} name the same setting of {values['method']}; give {new} only")
            warnings.warn(f"{values['method']}: setting {old} is read as {new} (its name since issue 16)",
                          FutureWarning, stacklevel=3)
            out[new] = out.pop(old)
    return out
