"""The model-family registry: family name -> config class, model class and named size presets.

A model folder's `config.json` names its `family`; save, load, `plinth.load` and checkpoint restore all look the
class up here. `plinth/models/__init__.py` registers the built-in families; adding one is a new file plus one
`register(...)` line there (see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from plinth.config import PlinthError, coerce, field_types, from_dict, suggest


@dataclass(frozen=True)
class Family:
    """One model family: its config dataclass, its `nn.Module` (built from that config) and its presets."""

    name: str
    config_class: type
    model_class: type[nn.Module]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""


_FAMILIES: dict[str, Family] = {}

# Every initialiser in torch.nn.init that modules' constructors and our init_weights call (transformers' list in
# `no_init_weights`).
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                   "sparse_")


@contextmanager
def _no_init() -> Iterator[None]:
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
    try:
        for name in saved:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def on_meta(model_class: type[nn.Module], config: Any) -> nn.Module:
    """`model_class(config)` on the meta device (shapes only, no memory) without running weight initialisers.

    Initialising meta tensors does nothing useful and is slow: torch runs meta `normal_` through Python
    decompositions and, on the first call, imports torch._dynamo (~2 s of every command that loads a model, measured
    with cProfile on `plinth generate`). So `torch.nn.init`'s functions are no-ops while the model is built, as
    transformers' `no_init_weights` does. Not thread-safe against another thread initialising weights meanwhile.
    """
    with _no_init(), torch.device("meta"):
        return model_class(config)


def register(family: Family) -> Family:
    """Add a family (its name must be new, and so must each of its preset names)."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    taken = {p: f.name for f in _FAMILIES.values() for p in f.presets}
    clash = sorted(set(family.presets) & set(taken))
    if clash:
        raise ValueError(f"preset names {clash} of family {family.name!r} are already used")
    _FAMILIES[family.name] = family
    return family


def families() -> list[Family]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())


def get_family(name: str, source: str = "model config") -> Family:
    """The family called `name`; PlinthError naming `source` when no such family is registered."""
    if name not in _FAMILIES:
        raise PlinthError(f"{source}: unknown model family {name!r}{suggest(str(name), list(_FAMILIES))}")
    return _FAMILIES[name]


def family_of(obj: Any) -> Family:
    """The family of a config instance or model instance."""
    config = getattr(obj, "config", obj)
    return get_family(getattr(type(config), "family", "?"), source=type(config).__name__)


def find_preset(name: str) -> tuple[Family, dict[str, Any]]:
    """(family, keyword arguments) of the preset called `name`, across families; PlinthError with suggestions."""
    for fam in _FAMILIES.values():
        if name in fam.presets:
            return fam, dict(fam.presets[name])
    names = [p for f in _FAMILIES.values() for p in f.presets]
    raise PlinthError(f"unknown model preset {name!r}{suggest(name, names)}; see `plinth models ls`")


def make_config(preset: str, overrides: dict[str, Any] | None = None, where: str = "arch", **fixed: Any):
    """The config of preset `preset` with `overrides` (values may be strings from the command line) and `fixed`.

    None values in `overrides` mean "keep the preset's". Raises a one-line PlinthError naming `where.FIELD` for an
    unknown field, a value of the wrong type or out of range.
    """
    family, kwargs = find_preset(preset)
    cls = family.config_class
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs["name"] = preset
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in names:
            raise PlinthError(f"{where}: unknown field {key!r} of the {family.name} family{suggest(str(key), names)}")
        kwargs[key] = coerce(value, hints[key], f"--{where}.{key}")
    kwargs.update(fixed)
    try:
        return cls(**kwargs)
    except PlinthError as e:
        raise PlinthError(f"{where}: {str(e).removeprefix('model config: ')}") from None


def config_from_dict(data: dict[str, Any], source: str):
    """A family config from a config.json mapping (its `family` key picks the class; types checked strictly)."""
    family = get_family(data.get("family", "gpt"), source)
    return from_dict(family.config_class, data, source, strict=True, ignore=("family", "format_version"))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config as the mapping config.json stores: `family` first, then every field."""
    return {"family": type(config).family, **dataclasses.asdict(config)}


def build_model(config: Any) -> nn.Module:
    """A freshly initialised model of `config`'s family (on the current default device)."""
    return family_of(config).model_class(config)
