"""The typed, validated configuration of one run, and its content hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from drt.data import DATASETS
from drt.errors import DrtError
from drt.experiments.recipes import recipe
from drt.experiments.renames import stored_names, upgrade_settings
from drt.methods import METHODS, REGULARISERS
from drt.models import MODELS
from drt.options import build, field_types, opt, to_dict
from drt.train.config import TrainConfig


@dataclass(frozen=True)
class DataConfig:
    title: ClassVar[str] = "data"
    dataset: str = opt("mnist5k", "data set name (see `drt list datasets`)")
    data_dir: str | None = opt(None, "folder of this data set (overrides --data-root / DRT_DATA_DIR)")
    data_root: str | None = opt(None, "folder holding one sub-folder per data set (default: $DRT_DATA_DIR)")
    subset: int | None = opt(None, "use a fixed subset of this many training images")
    val_size: float = opt(0.0, "validation split carved from train: a fraction in [0, 1) or a count")
    augment: str = opt("auto", "training augmentation (auto: the data set's default)", ("auto", "none", "crop-flip"))
    image_size: int | None = opt(None, "imagefolder: resize every image to this size (default: the first image's)")

    def __post_init__(self) -> None:
        DATASETS.get(self.dataset)
        if self.subset is not None and self.subset <= 0:
            raise DrtError(f"subset must be a positive number of images, got {self.subset}")
        if self.val_size < 0:
            raise DrtError(f"val_size must be >= 0, got {self.val_size}")


@dataclass(frozen=True)
class ModelConfig:
    title: ClassVar[str] = "model"
    model: str = opt("mlp", "model name (see `drt list models`)")
    width: int | None = opt(None, "base width (resnets: filters of the first stage)")
    hidden: tuple[int, ...] | None = opt(None, "mlp hidden sizes, e.g. 300,100")
    shortcut: str | None = opt(None, "cifar resnets: 'conv' (1x1 projection) or 'pad' (zero-padding identity)",
                               ("conv", "pad"))
    depth: int | None = opt(None, "vit: transformer blocks")
    heads: int | None = opt(None, "vit: attention heads (width must divide by them)")
    mlp_ratio: float | None = opt(None, "vit: MLP hidden width / model width")
    patch: int | None = opt(None, "vit: patch size (pixels)")

    def __post_init__(self) -> None:
        MODELS.get(self.model)

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "model" and v is not None}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: str = "dense"
    method_options: Any = None  # the method's own Options dataclass
    reg: tuple[str, ...] = ()
    reg_options: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def run_id(self) -> str:
        """Content hash of the resolved settings: the run's name in the store and on disk.

        Settings that do not change what is trained (``NOT_TRAINING``: where the data set was read
        from, how often the test set is evaluated) are not part of the identity; renamed settings
        count under their first stored names (``renames``).
        """
        d = stored_names(self.to_dict())  # a renamed or added setting keeps its runs' ids
        d["data"] = {k: v for k, v in d["data"].items() if k not in NOT_TRAINING}
        d["train"] = {k: v for k, v in d["train"].items() if k not in NOT_TRAINING}
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label(self) -> str:
        parts = [self.model.model, self.data.dataset, self.method, *self.reg, f"seed{self.train.seed}"]
        return "/".join(parts)


NOT_TRAINING = ("data_dir", "data_root", "eval_every")  # settings outside a run's identity

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
TOP = {"method": "method (see `drt list methods`)", "reg": "regularisers to add, e.g. cka-sr",
       "recipe": "start from a named recipe (see `drt list recipes`); other settings given win"}


def option_classes() -> list[type]:
    """Every options dataclass whose fields are settable (sections, methods, regularisers)."""
    classes = list(SECTIONS.values())
    for reg in (METHODS, REGULARISERS):
        classes += [reg.get(n).Options for n in reg.names()]
    return classes


def valid_keys() -> list[str]:
    keys = list(TOP)
    for cls in option_classes():
        keys += [k for k in field_types(cls) if k not in keys]
    return keys


def make_config(values: dict[str, Any]) -> RunConfig:
    """A validated ``RunConfig`` from flat settings (YAML keys or flags; None = not given)."""
    values = upgrade_settings({k: v for k, v in values.items() if v is not None})
    if "recipe" in values:  # the recipe's settings under everything given explicitly
        values = {**recipe(str(values.pop("recipe"))), **values}
    unknown = sorted(set(values) - set(valid_keys()))
    if unknown:
        raise DrtError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(valid_keys())}")
    sections = {}
    for name, cls in SECTIONS.items():
        keys = field_types(cls)
        sections[name] = build(cls, {k: v for k, v in values.items() if k in keys}, name)
    method = str(values.get("method", "dense"))
    method_cls = METHODS.get(method)
    reg = values.get("reg", ())
    reg = tuple(r for r in (reg.replace(",", " ").split() if isinstance(reg, str) else reg) if r)
    if len(set(reg)) < len(reg):
        raise DrtError(f"reg {','.join(reg)} names a regulariser twice")
    reg_classes = [REGULARISERS.get(r) for r in reg]
    claimed = set(TOP).union(*(field_types(c) for c in SECTIONS.values()))
    plugin_opts = []
    owners = [(f"method {method!r}", method_cls)]
    owners += [(f"regulariser {r!r}", c) for r, c in zip(reg, reg_classes, strict=True)]
    for owner, cls in owners:
        keys = field_types(cls.Options)
        plugin_opts.append(build(cls.Options, {k: v for k, v in values.items() if k in keys}, owner))
        claimed |= set(keys)
    stray = sorted(set(values) - claimed)
    if stray:
        raise DrtError(f"setting(s) {', '.join(stray)} do not apply to method {method!r}"
                       + (f" with regulariser(s) {', '.join(reg)}" if reg else ""))
    return RunConfig(data=sections["data"], model=sections["model"], train=sections["train"], method=method,
                     method_options=plugin_opts[0], reg=reg, reg_options=tuple(plugin_opts[1:]))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Flat settings from a YAML file (sections ``data:``/``model:``/``train:`` may nest them)."""
    path = Path(path)
    if not path.is_file():
        raise DrtError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise DrtError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise DrtError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise DrtError(f"config file {path} must be a mapping of settings")
    flat: dict[str, Any] = {}
    for k, v in raw.items():
        k = str(k).replace("-", "_")
        if isinstance(v, dict):
            flat.update({str(a).replace("-", "_"): b for a, b in v.items()})
        else:
            flat[k] = v
    return flat
