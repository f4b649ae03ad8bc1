#!/usr/bin/env python
"""Search quality on ground truth: every method on NAS-Bench-201 cells, the found cells scored by the table.

For each method (registry names: twostage, onestage, darts, random, params, tenas) and seed, one search at the
given preset (``cpu`` or ``paper``) through :func:`istanas.search.run_search` with ``table=`` (the table is opened
only after each search); prints and writes (``--json``) per method the CIFAR-10 / CIFAR-100 / ImageNet16-120 table
accuracy mean +/- std over the seeds, the CIFAR-10 percentile, the search wall time and the found cells.

Random search: one uniformly random cell per seed, no training (wall time ~0; the space's prior, see
benchmarks/README.md).  ``random_trained``: the wall-time-matched random search (registry method ``random`` with
preset ``cpu_trained`` / ``paper_trained``, ``pick: trained``): cells sampled and short-trained one after another
until the budget is spent, the best validation accuracy picked; the budget is ``--random-budget-s`` or else the
mean ``wall_time_s`` of this run's two-stage searches (``twostage`` must then be among ``--methods``; it runs
first).  #params: deterministic (the same cell for every seed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from istanas.checkpoint import atomic_write_json  # noqa: E402
from istanas.config import ConfigError, deep_merge, from_dict, merge_overrides, preset_data  # noqa: E402
from istanas.data import shared_data_dir  # noqa: E402
from istanas.methods import get_method  # noqa: E402
from istanas.search import run_search  # noqa: E402
from spaces.nb201 import TABLE_DATASETS  # noqa: E402

DEFAULT_TABLE = os.path.join(shared_data_dir() or os.path.join(os.path.dirname(_ROOT), "shared", "data"),
                             "nasbench201_full.csv")   # $ISTANAS_SHARED_DATA, else ../shared/data


#: Bench-only method names -> (registry method, preset suffix).
DERIVED = {"random_trained": ("random", "_trained")}


def parse_set(text: str) -> tuple[Optional[str], str, str]:
    """``[METHOD:]KEY=VALUE`` -> (METHOD or None, KEY's top-level field, ``KEY=VALUE``); ``ValueError`` if no ``=``."""
    head, sep, rest = text.partition(":")
    method, override = (head.strip(), rest) if sep and "=" not in head else (None, text)
    if "=" not in override:
        raise ValueError(f"expected [METHOD:]KEY=VALUE, got {text!r}")
    return method, override.split("=", 1)[0].split(".", 1)[0].strip(), override


def overrides_for(method: str, sets: tuple[str, ...], fields: set[str]) -> list[str]:
    """The ``--set`` overrides that reach registry method ``method`` (config fields ``fields``):
    ``METHOD:KEY=VALUE`` that method only, ``KEY=VALUE`` every method whose config has the top-level field ``KEY``
    (:func:`_config` hands a bench-only name's, e.g. ``random_trained:``, to its registry method)."""
    out = []
    for text in sets:
        target, key, override = parse_set(text)
        if target == method if target is not None else key in fields:
            out.append(override)
    return out


def _fields(method: str) -> set[str]:
    return {f.name for f in dataclasses.fields(get_method(DERIVED.get(method, (method,))[0]).config_cls)}


def _config(method: str, preset: str, seed: int, device: str, budget_s: Optional[float] = None,
            sets: tuple[str, ...] = ()):
    if method in DERIVED:
        base, suffix = DERIVED[method]
        renamed = tuple(f"{base}:{t.partition(':')[2]}" if parse_set(t)[0] == method else t for t in sets)
        cfg, name = _config(base, preset + suffix, seed, device, sets=renamed)
        cfg.device = device
        if budget_s is not None:
            cfg.time_budget_s = float(budget_s)
        return cfg, name
    m = get_method(method)
    name = preset if preset in m.presets else m.default_preset
    data = preset_data(m.config_cls, name, presets=m.presets)
    extra = {"seed": seed}
    if "device" in data:
        extra["device"] = device
    if method == "tenas":
        extra = {"seed": seed, "device": device, "tenas": {"space": "nb201"}}
    data = merge_overrides(deep_merge(data, extra), overrides_for(method, sets, _fields(method)))
    return from_dict(m.config_cls, data), name


def _stats(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, metavar="PATH")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--table", default=DEFAULT_TABLE, metavar="PATH")
    p.add_argument("--methods", nargs="+", default=["twostage", "onestage", "darts", "random", "params"],
                   help="registry methods, and random_trained (module doc)")
    p.add_argument("--random-budget-s", type=float, default=None, metavar="S",
                   help="random_trained's training budget per search (default: this run's mean two-stage wall time)")
    p.add_argument("--set", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                   help="override a preset value for every method (KEY=VALUE) or one (METHOD:KEY=VALUE), e.g. "
                        "--set epochs=16 --set data.image_size=32 --set darts:arch_lr=3e-4; repeatable")
    args = p.parse_args(argv)
    for m in args.methods:
        if m not in DERIVED:
            try:
                get_method(m)
            except ValueError as e:
                print(f"--methods: {e}", file=sys.stderr)
                return 2
    for text in args.set:  # a typo is an error, not a no-op
        try:
            target, key, _ = parse_set(text)
        except ValueError as e:
            print(f"--set: {e}", file=sys.stderr)
            return 2
        if target is not None and target not in args.methods + [DERIVED.get(m, (m,))[0] for m in args.methods]:
            print(f"--set {text!r}: {target!r} is not in --methods {args.methods}", file=sys.stderr)
            return 2
        if target is None and not any(key in _fields(m) for m in args.methods):
            print(f"--set: no method in --methods has the key {key!r}", file=sys.stderr)
            return 2
    for m in args.methods:  # every override must fit every method it reaches, before any search runs
        try:
            _config(m, args.preset, args.seeds[0], args.device, 0.0 if m in DERIVED else None, tuple(args.set))
        except (ConfigError, ValueError, TypeError) as e:
            print(f"--set ({m}): {e}", file=sys.stderr)
            return 2
    if not os.path.isfile(args.table):
        print(f"--table: file not found: {args.table}", file=sys.stderr)
        return 2
    if "random_trained" in args.methods and args.random_budget_s is None and "twostage" not in args.methods:
        print("--random-budget-s: give it, or add twostage to --methods (its mean wall time is the budget)",
              file=sys.stderr)
        return 2
    if args.random_budget_s is not None and not args.random_budget_s >= 0:
        print(f"--random-budget-s: must be >= 0, got {args.random_budget_s}", file=sys.stderr)
        return 2
    # random_trained's budget may come from this run's two-stage searches: run it after them
    args.methods = [m for m in args.methods if m != "random_trained"] + \
        (["random_trained"] if "random_trained" in args.methods else [])
    out = {"preset": args.preset, "set": args.set, "seeds": args.seeds, "device": args.device, "table": args.table,
           "methods": {}, "loadavg_start": list(os.getloadavg())}
    for method in args.methods:
        runs = []
        budget = None
        if method == "random_trained":
            budget = args.random_budget_s
            if budget is None:
                budget = _stats([x["wall_time_s"] for x in out["methods"]["twostage"]["runs"]])["mean"]
            out["random_trained_budget_s"] = budget
        for seed in args.seeds:
            cfg, name = _config(method, args.preset, seed, args.device, budget, tuple(args.set))
            t0 = time.perf_counter()
            r = run_search(DERIVED[method][0] if method in DERIVED else method, cfg, table=args.table,
                           progress=False)
            rec = r.extra["benchmark"]
            runs.append({"seed": seed, "arch": rec["arch"], "wall_time_s": float(r.wall_time_s),
                         "session_time_s": time.perf_counter() - t0,
                         **{d: rec[d] for d in TABLE_DATASETS}, "percentile": rec["percentile"]})
            if method == "random_trained":
                runs[-1]["cells_trained"] = int(r.final["samples"])
                runs[-1]["val_acc"] = float(r.final["val_acc"])
            print(f"{method} seed {seed}: {rec['arch']} cifar10 {rec['cifar10']} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        summ = {d: _stats([x[d] for x in runs]) for d in TABLE_DATASETS}
        summ["percentile_cifar10"] = _stats([x["percentile"]["cifar10"] for x in runs])
        summ["wall_time_s"] = _stats([x["wall_time_s"] for x in runs])
        if method == "random_trained":
            summ["cells_trained"] = _stats([x["cells_trained"] for x in runs])
        out["methods"][method] = {"preset": name, "runs": runs, "summary": summ}
        out["loadavg_end"] = list(os.getloadavg())
        atomic_write_json(args.json, out)
    print("\n| method | CIFAR-10 | CIFAR-100 | ImageNet16-120 | CIFAR-10 percentile | search s |")
    print("|---|---|---|---|---|---|")
    for method, rec in out["methods"].items():
        s = rec["summary"]
        cell = lambda k: "-" if s[k]["mean"] is None else f"{s[k]['mean']:.2f} +/- {s[k]['std']:.2f}"
        print(f"| {method} | {cell('cifar10')} | {cell('cifar100')} | {cell('ImageNet16-120')} | "
              f"{cell('percentile_cifar10')} | {cell('wall_time_s')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
