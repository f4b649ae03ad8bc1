"""Shared command-line plumbing for the ``launch/*.py`` scripts.

Every launcher takes the same common flags (:func:`add_common_args`), builds its typed config with one precedence
rule (:func:`build_config`: dataclass defaults < ``--config`` YAML < explicit flags < ``--set``), writes
``OUT/run_info.json`` (:func:`write_run_info`), checkpoints every epoch to ``OUT/checkpoint.pt`` and logs
``OUT/metrics.jsonl`` in one engine hook (:func:`run_hooks`), refuses to overwrite an existing run unless
``--resume`` is given (:func:`load_resume`), and turns user errors into a one-line message with exit status 2
(:func:`main_guard`).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Optional, TypeVar

import torch

from . import checkpoint as ckpt
from .config import ConfigError, deep_merge, from_dict, merge_overrides, read_yaml, to_dict

T = TypeVar("T")

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
RUN_INFO_NAME = "run_info.json"

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------------------- args
def add_common_args(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    """Add ``--config --set --out --resume --device --seed --no-progress`` to ``parser``.

    ``--device`` and ``--seed`` default to ``None`` ("not given"), so a value from ``--config`` is kept unless the
    flag is passed explicitly; :func:`build_config` applies them to configs that have such fields.
    """
    g = parser.add_argument_group("common options")
    g.add_argument("--config", metavar="PATH", default=None,
                   help="YAML file with config values (overrides the built-in defaults)")
    g.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="override one config value, parsed as YAML; dotted keys reach nested configs "
                        "(e.g. --set data.batch_size=64 --set lr=0.05); repeatable, applied last")
    g.add_argument("--out", metavar="DIR", default=default_out,
                   help=f"output folder for checkpoint, metrics and results (default: {default_out})")
    g.add_argument("--resume", action="store_true",
                   help=f"continue the run in --out from its {CHECKPOINT_NAME}; the config must be the recorded one "
                        f"(run_info.json) but for --allow-change keys")
    g.add_argument("--allow-change", metavar="KEY", action="append", default=[], dest="allow_change",
                   help="with --resume: let this config key (dotted, e.g. epochs) differ from the recorded run's; "
                        "repeatable.  More epochs on a finished run then really train, the learning-rate schedule "
                        "recomputed over the new total (cosine: a warm restart)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where to train (default: the config's value, normally auto = CUDA when available)")
    g.add_argument("--seed", type=int, default=None, metavar="N", help="random seed (default: the config's value)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. for log files)")
    parser.set_defaults(_out_default=default_out)


def build_config(cls: type[T], args: argparse.Namespace, extra: Optional[dict] = None, *,
                 base: Optional[Mapping[str, Any]] = None) -> T:
    """The job config: dataclass defaults < ``base`` (a preset) < ``--config`` YAML < explicit flags < ``--set``,
    then ``validate()``.

    ``extra`` holds the launcher's own explicit flags (``None`` = not given); dotted keys or nested dicts reach
    nested configs.  The common ``--device``/``--seed`` flags are applied when ``cls`` has such fields, and
    ``--out`` when ``cls`` has an ``out`` field (unless ``--out`` was left at its default and the YAML names one).
    Raises :class:`ConfigError` (a ``ValueError``) naming the bad field.
    """
    data: dict[str, Any] = deep_merge({}, base or {}, skip_none=False)   # a preset's None is a value (e.g. train_epochs)
    if getattr(args, "config", None):
        data = deep_merge(data, read_yaml(args.config), skip_none=False)
    names = {f.name for f in dataclasses.fields(cls)}
    common = {k: getattr(args, k, None) for k in ("device", "seed") if k in names}
    out = getattr(args, "out", None)
    if "out" in names and out is not None and (out != getattr(args, "_out_default", None) or "out" not in data):
        common["out"] = out
    data = deep_merge(data, common)
    data = deep_merge(data, extra or {})
    data = merge_overrides(data, list(getattr(args, "set", None) or []))
    cfg = from_dict(cls, data)
    validate = getattr(cfg, "validate", None)
    try:
        if callable(validate):
            validate()
    except RecursionError:
        field = "genotype" if "genotype" in names else cls.__name__
        raise ConfigError(f"{field}: the input is nested too deeply to parse (RecursionError); a genotype is a "
                          f"flat JSON object of cells") from None
    check_run_config(cfg)
    return cfg


#: Data sets read from files under ``data.root`` (an empty folder there is an error before any work).
IMAGE_DATASETS = ("cifar10", "cifar100", "imagenet")
#: Learning rates above this are taken for a typo (the papers use 0.025 .. 0.5).
MAX_LR = 10.0
_LR_FIELDS = ("lr", "arch_lr", "lr_min")
_DECAY_FIELDS = ("weight_decay", "arch_weight_decay")


def existing_ancestor_file(path: str | os.PathLike) -> Optional[str]:
    """The first existing non-folder among ``path`` and its parents (``/etc/passwd`` for ``/etc/passwd/x``)."""
    p = os.path.abspath(os.path.expanduser(os.fspath(path)))
    while True:
        if os.path.exists(p):
            return None if os.path.isdir(p) else p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def check_out_dir(path: str | os.PathLike, field: str = "out") -> None:
    """``ConfigError`` when ``path`` is, or lies under, an existing file (it could never be created)."""
    bad = existing_ancestor_file(path)
    if bad is not None:
        where = "is a file" if os.path.abspath(os.fspath(path)) == bad else f"lies under the file {bad}"
        raise ConfigError(f"{field}: {os.fspath(path)} {where}; give a folder")


def check_run_config(cfg: Any) -> None:
    """Checks every launcher's job config gets after its own ``validate()`` (fields it has): ``seed`` in
    [0, 2**32); finite learning rates in (0, :data:`MAX_LR`] (``lr_min`` >= 0); finite, non-negative weight decays;
    ``out`` not under a file; a batch larger than ``data.limit_train`` images.  ``ConfigError`` naming the field."""
    seed = getattr(cfg, "seed", None)
    if seed is not None and not isinstance(seed, bool):
        if not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    for name in _LR_FIELDS:
        v = getattr(cfg, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            low_ok = v >= 0 if name == "lr_min" else v > 0
            if not (math.isfinite(v) and low_ok and v <= MAX_LR):
                raise ConfigError(f"{name} must be finite and in {'[0' if name == 'lr_min' else '(0'}, {MAX_LR:g}], "
                                  f"got {v!r}")
    for name in _DECAY_FIELDS:
        v = getattr(cfg, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"{name} must be finite and >= 0, got {v!r}")
    out = getattr(cfg, "out", None)
    if isinstance(out, str) and out:
        check_out_dir(out)
    data = getattr(cfg, "data", None)
    root = getattr(data, "root", None)
    if isinstance(root, str) and getattr(data, "dataset", "") in IMAGE_DATASETS and not getattr(data, "download",
                                                                                                  False):
        folder = os.path.expanduser(root)
        if os.path.isdir(folder) and not any(files for _, _, files in os.walk(folder)):
            raise ConfigError(f"data.root: {root} is an empty folder; point it at the {data.dataset} copy (CIFAR "
                              f"batches, an ImageFolder with train/ and test/, or a .zip)")
    limit, batch = getattr(data, "limit_train", None), getattr(data, "batch_size", None)
    if isinstance(limit, int) and isinstance(batch, int) and limit > 0 and batch > limit:
        raise ConfigError(f"data.batch_size: {batch} is larger than the {limit} training images "
                          f"(data.limit_train); no full batch could be drawn")


# ----------------------------------------------------------------------------------------------------- main guard
def main_guard(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` and map outcomes to exit codes.

    Returns ``fn``'s integer result (0 when it returns anything else).  ``ConfigError`` / ``ValueError`` /
    ``FileNotFoundError`` print ``error: ...`` on stderr and give 2; ``KeyboardInterrupt`` prints how to resume and
    gives 130.  Other exceptions propagate with their traceback (they are bugs, not user errors).
    """
    try:
        rc = fn()
    except KeyboardInterrupt:
        print("\ninterrupted; resume with --resume (same --out)", file=sys.stderr)
        return 130
    except (ConfigError, ValueError, FileNotFoundError) as e:
        msg = str(e)
        if isinstance(e, FileNotFoundError) and e.filename and e.filename not in msg:
            msg = f"{msg}: {e.filename}"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0


def launch(build_parser: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], Any],
           argv: Optional[list[str]] = None) -> int:
    """A launcher's ``main``: parse ``argv`` with ``build_parser()``, run ``run(args)`` under :func:`main_guard`."""
    args = build_parser().parse_args(argv)
    return main_guard(lambda: run(args))


# -------------------------------------------------------------------------------------------------------- run info
_LIBS = ("torch", "torchvision", "numpy", "ray", "optuna", "cvxpy", "sklearn", "yaml")


def library_versions() -> dict[str, str]:
    """Python and library versions (only those importable)."""
    out = {"python": platform.python_version()}
    for name in _LIBS:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        out[name] = str(getattr(mod, "__version__", "unknown"))
    return out


def git_commit(path: str = _REPO_ROOT) -> Optional[str]:
    """The git commit of the checkout at ``path`` (``+dirty`` when modified), or ``None``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        commit = sha.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=5)
        if dirty.returncode == 0 and dirty.stdout.strip():
            commit += "+dirty"
        return commit
    except Exception:
        return None


def _device_info(cfg: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"requested": getattr(cfg, "device", None)}
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["cuda_name"] = torch.cuda.get_device_name(0)
            info["cuda_count"] = torch.cuda.device_count()
        info["cpu_threads"] = torch.get_num_threads()
    except Exception:
        pass
    info["host"] = platform.node()
    return info


def write_run_info(out_dir: str | os.PathLike, cfg: Any, seed: Optional[int]) -> None:
    """Atomically write ``OUT/run_info.json``: config, seed, versions, device, git commit, start time, argv."""
    info = {
        "config": to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg,
        "config_class": type(cfg).__name__,
        "seed": seed,
        "versions": library_versions(),
        "device": _device_info(cfg),
        "git_commit": git_commit(),
        "start_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv),
    }
    ckpt.atomic_write_json(os.path.join(os.fspath(out_dir), RUN_INFO_NAME), info)


# ------------------------------------------------------------------------------------------ checkpoint and resume
def checkpoint_path(out_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(out_dir), CHECKPOINT_NAME)


def checkpoint_hook(out_dir: str | os.PathLike) -> Callable[[dict], None]:
    """``hook(state)`` saves an engine state atomically to ``OUT/checkpoint.pt`` with its size / SHA-256 record,
    keeping the one before as ``checkpoint.prev.pt`` (see :func:`run_hooks`)."""
    path = checkpoint_path(out_dir)

    def hook(state: dict) -> None:
        ckpt.save(state, path, keep_previous=True, packed=True)

    return hook


#: Keys that say where / how a run executes, not what it computes: they may differ on --resume.
RUNTIME_KEYS = frozenset({"out", "device", "data.root", "data.num_workers", "data.download", "data.decode",
                          "data.in_memory", "data.eval_batch_size", "recovery.device", "tenas.device"})


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(recorded: Mapping[str, Any], cfg: Any) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (recorded value, new value)}`` for keys both configs have and that differ."""
    old = flatten(recorded)
    new = flatten(to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg))
    return {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]}


def check_resume_config(out_dir: str | os.PathLike, cfg: Any, allow: tuple[str, ...] | list[str] = ()) -> dict:
    """On ``--resume``: compare ``cfg`` with the config ``OUT/run_info.json`` recorded.  A change to a key that
    defines the run (not in :data:`RUNTIME_KEYS` nor ``allow``) is a :class:`ConfigError` naming the keys; the
    allowed changes are written back to ``run_info.json`` (``config`` and ``resume_changes``) and returned."""
    info_path = os.path.join(os.fspath(out_dir), RUN_INFO_NAME)
    if not os.path.isfile(info_path):
        return {}
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume: {info_path} is unreadable ({type(e).__name__}); it records the run's config")
    recorded = info.get("config") if isinstance(info, dict) else None
    if not isinstance(recorded, dict):
        return {}
    allowed = set(RUNTIME_KEYS) | {a.strip() for a in allow}
    changes = config_changes(recorded, cfg)
    bad = {k: v for k, v in changes.items() if k not in allowed}
    if bad:
        what = ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in bad.items())
        raise ConfigError(f"--resume: the run in {os.fspath(out_dir)} was started with other settings: {what}; "
                          f"resume it unchanged, start a new run in another --out, or pass "
                          + " ".join(f"--allow-change {k}" for k in bad))
    kept = {k: v for k, v in changes.items() if k not in RUNTIME_KEYS}
    if kept:
        info["config"] = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
        info["resume_changes"] = {**info.get("resume_changes", {}), **{k: list(v) for k, v in kept.items()}}
        ckpt.atomic_write_json(info_path, info)
    return kept


def load_resume(out_dir: str | os.PathLike, resume: bool, *, cfg: Any = None,
                args: Optional[argparse.Namespace] = None) -> Optional[dict]:
    """The state to resume from, or ``None`` for a fresh run.

    With ``resume`` and ``cfg`` the config is first checked against the recorded one
    (:func:`check_resume_config`, ``args.allow_change``).  With ``resume`` a missing checkpoint is a
    ``FileNotFoundError``; a corrupt or truncated one (size / SHA-256
    record, or an unreadable file) falls back to ``checkpoint.prev.pt`` when that one is good, else is a
    :class:`istanas.checkpoint.CheckpointError` naming the file(s).  Without ``resume`` an existing checkpoint in
    ``out_dir`` is a ``ConfigError`` (never silently overwrite work).
    """
    path = checkpoint_path(out_dir)
    if resume:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: no checkpoint at {path}; start a fresh run without --resume")
        changes = check_resume_config(out_dir, cfg, getattr(args, "allow_change", None) or ()) \
            if cfg is not None else {}
        state = ckpt.load_with_fallback(path)[0]
        epochs = getattr(cfg, "epochs", None)
        if "epochs" in changes and isinstance(epochs, int) and state.get("done") and epochs > int(state["epoch"]):
            state["done"] = False  # more epochs allowed on a finished run: they really train
        return state
    if os.path.exists(path):
        raise ConfigError(f"{path} exists; pass --resume to continue that run or another --out")
    return None


# --------------------------------------------------------------------------------------------------------- metrics
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v)


def metrics_logger(out_dir: str | os.PathLike, *, echo: bool = True, stream=None,
                   resume_epoch: Optional[int] = None) -> Callable[[dict], None]:
    """A report callback: appends one JSON line per call to ``OUT/metrics.jsonl`` and prints a one-line summary.

    ``resume_epoch``: when resuming from a checkpoint taken after that epoch, rows of later epochs (written by the
    interrupted run after its last checkpoint) are dropped first, so the file ends with one row per epoch.
    """
    path = os.path.join(os.fspath(out_dir), METRICS_NAME)
    os.makedirs(os.fspath(out_dir), exist_ok=True)
    if resume_epoch is not None and os.path.isfile(path):
        kept = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the interruption
                if not isinstance(row, dict) or int(row.get("epoch", 0)) <= resume_epoch:
                    kept.append(json.dumps(row, sort_keys=True) + "\n")
        ckpt.atomic_write_text(path, "".join(kept))

    def log(metrics: dict) -> None:
        row = dict(metrics)
        row.setdefault("time", time.time())
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True, default=ckpt._json_default) + "\n")
            f.flush()
        if echo:
            parts = [f"epoch {metrics['epoch']}"] if "epoch" in metrics else []
            parts += [f"{k} {_fmt(v)}" for k, v in metrics.items()
                      if k not in ("epoch", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)]
            print(" | ".join(parts), file=stream or sys.stdout, flush=True)

    return log


def run_hooks(out_dir: str | os.PathLike, *, echo: bool = True, stream=None, resume_epoch: Optional[int] = None,
              checkpoint: bool = True) -> Callable[[dict, dict], None]:
    """The CLI's ``on_epoch_end(metrics, state)`` for :func:`istanas.engine.run`: the state saved atomically to
    ``OUT/checkpoint.pt`` (:func:`checkpoint_hook`; skipped with ``checkpoint=False``), then one line appended to
    ``OUT/metrics.jsonl`` (:func:`metrics_logger`, same arguments), so a metrics row never names an epoch the
    checkpoint does not hold.  An empty state (a method without engine state) is not saved."""
    save = checkpoint_hook(out_dir) if checkpoint else None
    log = metrics_logger(out_dir, echo=echo, stream=stream, resume_epoch=resume_epoch)

    def hook(metrics: dict, state: dict) -> None:
        if save is not None and state:
            save(state)
        log(metrics)

    return hook


def repo_root() -> str:
    """The checkout root (the folder holding ``istanas/``)."""
    return _REPO_ROOT
