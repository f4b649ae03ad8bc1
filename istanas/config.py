"""Typed, validated job configs: dataclasses filled from YAML (``yaml.safe_load``) and ``key=value`` overrides.

Every job (retrain, two-stage, one-stage, DARTS, TE-NAS, sweep, ImageNet search) defines one dataclass with
defaults, a ``validate()`` method (schema checks only; machine probes live in ``istanas.search.check_runtime``) and
its named whole setups in a ``PRESETS`` class variable (:func:`preset_data` / :func:`preset`).  The one merge:
defaults < preset < YAML < flags < ``--set``, layer by layer with :func:`deep_merge` (nested mappings merge, dotted
keys reach nested fields) and :func:`merge_overrides` for ``key=value`` texts (``istanas.cli.build_config`` is the
launchers' chain, the sweep and the Ray Train job use the same two functions); :func:`from_dict` rejects unknown
keys with a "did you mean" hint and coerces scalar types, and ``validate()`` runs before any data is read or any
cluster starts.  :class:`SearchOptimConfig` holds the fields
that every weight-sharing search (two-stage, DARTS, one-stage) shares.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value or key; the message names the field."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` (scalars, Optional, list/tuple, Literal, nested dataclasses)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{name}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{name}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ConfigError`` with a suggestion."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(types_), n=1)
        hint = f" (did you mean {prefix}{close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown key {prefix}{k!r}{hint}; known keys: {sorted(types_)}")
    kwargs = {k: _coerce(v, types_[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-able dict of a config dataclass (tuples become lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=1e-3"`` -> (["a", "b"], 0.001); the value is parsed as YAML (safe), so lists work: ``m=[7,7,8,9]``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse value ({e})") from None
    return key.split("."), value


def set_path(data: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """``data[p0][p1]...[pn] = value``, copying (or creating) the nested mappings on the way."""
    node = data
    for p in path[:-1]:
        child = node.get(p)
        child = dict(child) if isinstance(child, Mapping) else {}
        node[p] = child
        node = child
    node[path[-1]] = value


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any], *, skip_none: bool = True) -> dict:
    """Merge ``extra`` into a copy of ``base``; nested mappings merge, ``None`` values are skipped when
    ``skip_none`` (a flag not given), and dotted keys (``"data.dataset"``) address nested configs."""
    out = {k: (deep_merge({}, v, skip_none=False) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in extra.items():
        if value is None and skip_none:
            continue
        path = str(key).replace("-", "_").split(".")
        if isinstance(value, Mapping):
            node = out
            for p in path:
                child = node.get(p)
                node[p] = dict(child) if isinstance(child, Mapping) else {}
                node = node[p]
            merged = deep_merge(node, value, skip_none=skip_none)
            node.clear()
            node.update(merged)
        else:
            set_path(out, path, value)
    return out


def merge_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with every ``key.sub=value`` override applied in order."""
    out = dict(data)
    for text in overrides:
        set_path(out, *parse_override(text))
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; a missing file or a non-mapping raises ``ConfigError``."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                base: Mapping[str, Any] | None = None) -> T:
    """Defaults < ``base`` < YAML file < overrides, then ``validate()``."""
    data = deep_merge({}, base or {}, skip_none=False)
    if path:
        data = deep_merge(data, read_yaml(path), skip_none=False)
    data = merge_overrides(data, overrides)
    cfg = from_dict(cls, data)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def check(cond: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def did_you_mean(field: str, name: Any, known: Sequence[str], kind: str = "") -> ConfigError:
    """``ConfigError("<field>: unknown <kind> 'x' (did you mean 'y'?); choose one of [...]")``."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{field}: unknown {kind + ' ' if kind else ''}{name!r}{hint}; choose one of {sorted(known)}")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"limit_train": 5}, "lr": 1}`` -> ``{"data.limit_train": 5, "lr": 1}`` (the dotted form of a
    nested mapping; :func:`deep_merge` ``({}, flat)`` is its inverse)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# -------------------------------------------------------------------------------------------------- presets
def preset_names(cls: type) -> list[str]:
    """The names of ``cls.PRESETS`` (sorted)."""
    return sorted(getattr(cls, "PRESETS", {}) or {})


def preset_data(cls: type, name: str, overrides: Mapping[str, Any] | None = None, *,
                presets: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The full field mapping of preset ``name`` of ``cls``: defaults < ``presets[name]`` (default
    ``cls.PRESETS``) < ``overrides`` (nested mappings such as ``data`` / ``recovery`` merge, dotted keys reach
    nested fields).  An unknown name raises :class:`ConfigError` listing the presets."""
    presets = getattr(cls, "PRESETS", {}) if presets is None else presets
    if name not in presets:
        raise ConfigError(f"preset: must be one of {sorted(presets)}, got {name!r}")
    data = deep_merge(to_dict(cls()), presets[name], skip_none=False)
    return deep_merge(data, overrides or {}, skip_none=False)


def preset(cls: type[T], name: str, **overrides: Any) -> T:
    """An instance of ``cls`` from preset ``name`` (see :func:`preset_data`); not validated."""
    return from_dict(cls, preset_data(cls, name, overrides))


# ------------------------------------------------------------------------------------- shared search settings
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass
class SearchOptimConfig:
    """Network and optimiser settings shared by the weight-sharing searches (two-stage, DARTS, one-stage); each
    subclass adds its ``data`` field and its own settings and re-declares the defaults it changes.

    The super-net: ``C`` channels, ``layers`` cells (reduction cells at layers/3 and 2 layers/3), ``steps`` nodes
    per cell.  Weights: SGD (``lr`` cosine to ``lr_min``, ``momentum``, ``weight_decay``, gradient-norm clip
    ``grad_clip``, 0 = off).  Architecture: Adam (``arch_lr``, ``arch_betas``, ``arch_weight_decay``).
    ``deterministic``: deterministic CUDA algorithms (same seed and device -> same genotype); ``bf16`` /
    ``channels_last``: CUDA-only engine settings.  ``space``: the cell space, ``"darts"`` (default) or
    ``"nb201"`` (NAS-Bench-201: ``layers`` = cells per stage N, ``steps`` unused; see istanas/cell_space.py).
    """

    C: int = 16
    layers: int = 8
    steps: int = 4
    epochs: int = 50
    lr: float = 0.1
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 6e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    bf16: bool = False
    channels_last: bool = False
    space: str = "darts"
    out: str = "runs/search"

    def validate_common(self) -> None:
        """Schema checks of the shared fields (and of ``self.data``); probes nothing."""
        data = getattr(self, "data", None)
        if data is not None:
            data.validate()
        for name in ("C", "steps", "epochs"):
            v = getattr(self, name)
            check(_is_int(v) and v >= 1, f"{name}: must be an integer >= 1, got {v!r}")
        check(self.space in ("darts", "nb201"), f"space: must be 'darts' or 'nb201', got {self.space!r}")
        if self.space == "nb201":   # NAS-Bench-201: layers = cells per stage N (3 stages), steps unused
            check(_is_int(self.layers) and self.layers >= 1,
                  f"layers: must be an integer >= 1 (nb201: cells per stage N), got {self.layers!r}")
        else:
            check(isinstance(self.layers, int) and self.layers >= 3,
                  f"layers: must be an integer >= 3 (two reduction cells at layers/3 and 2*layers/3), "
                  f"got {self.layers!r}")
        check(math.isfinite(self.lr) and self.lr > 0, f"lr: must be a number > 0, got {self.lr!r}")
        check(0 <= self.lr_min <= self.lr, f"lr_min: must be in [0, lr={self.lr}], got {self.lr_min!r}")
        check(0 <= self.momentum < 1, f"momentum: must be in [0, 1), got {self.momentum!r}")
        check(self.weight_decay >= 0, f"weight_decay: must be >= 0, got {self.weight_decay!r}")
        check(self.grad_clip >= 0, f"grad_clip: must be >= 0 (0 = off), got {self.grad_clip!r}")
        check(math.isfinite(self.arch_lr) and self.arch_lr > 0,
              f"arch_lr: must be a number > 0, got {self.arch_lr!r}")
        betas = tuple(self.arch_betas)
        check(len(betas) == 2 and all(0 <= b < 1 for b in betas),
              f"arch_betas: must be two numbers in [0, 1), got {self.arch_betas!r}")
        check(self.arch_weight_decay >= 0, f"arch_weight_decay: must be >= 0, got {self.arch_weight_decay!r}")
        check(_is_int(self.seed), f"seed: must be an integer, got {self.seed!r}")
        check(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda")
                                                or self.device.startswith("cuda:")),
              f"device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")
