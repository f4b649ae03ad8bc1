#!/usr/bin/env python
"""Search quality on ground truth: every method on NAS-Bench-201 cells, the found cells scored by the table.

For each method (registry names: twostage, onestage, darts, random, params, tenas) and seed, one search at the
given preset (``cpu`` or ``paper``) through :func:`istanas.search.run_search` with ``table=`` (the table is opened
only after each search); prints and writes (``--json``) per method the CIFAR-10 / CIFAR-100 / ImageNet16-120 table
accuracy mean +/- std over the seeds, the CIFAR-10 percentile, the search wall time and the found cells.

Random search: one uniformly random cell per seed, no training (wall time ~0; the space's prior, see
benchmarks/README.md).  #params: deterministic (the same cell for every seed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from istanas.checkpoint import atomic_write_json  # noqa: E402
from istanas.config import deep_merge, from_dict, preset_data  # noqa: E402
from istanas.methods import get_method  # noqa: E402
from istanas.search import run_search  # noqa: E402
from spaces.nb201 import TABLE_DATASETS  # noqa: E402

DEFAULT_TABLE = os.path.join(os.path.dirname(_ROOT), "shared", "data", "nasbench201_full.csv")


def _config(method: str, preset: str, seed: int, device: str):
    m = get_method(method)
    name = preset if preset in m.presets else m.default_preset
    data = preset_data(m.config_cls, name, presets=m.presets)
    extra = {"seed": seed}
    if "device" in data:
        extra["device"] = device
    if method == "tenas":
        extra = {"seed": seed, "device": device, "tenas": {"space": "nb201"}}
    return from_dict(m.config_cls, deep_merge(data, extra)), name


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
    p.add_argument("--methods", nargs="+", default=["twostage", "onestage", "darts", "random", "params"])
    args = p.parse_args(argv)
    for m in args.methods:
        get_method(m)
    if not os.path.isfile(args.table):
        print(f"--table: file not found: {args.table}", file=sys.stderr)
        return 2
    out = {"preset": args.preset, "seeds": args.seeds, "device": args.device, "table": args.table, "methods": {}}
    for method in args.methods:
        runs = []
        for seed in args.seeds:
            cfg, name = _config(method, args.preset, seed, args.device)
            t0 = time.perf_counter()
            r = run_search(method, cfg, table=args.table, progress=False)
            rec = r.extra["benchmark"]
            runs.append({"seed": seed, "arch": rec["arch"], "wall_time_s": float(r.wall_time_s),
                         "session_time_s": time.perf_counter() - t0,
                         **{d: rec[d] for d in TABLE_DATASETS}, "percentile": rec["percentile"]})
            print(f"{method} seed {seed}: {rec['arch']} cifar10 {rec['cifar10']} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        summ = {d: _stats([x[d] for x in runs]) for d in TABLE_DATASETS}
        summ["percentile_cifar10"] = _stats([x["percentile"]["cifar10"] for x in runs])
        summ["wall_time_s"] = _stats([x["wall_time_s"] for x in runs])
        out["methods"][method] = {"preset": name, "runs": runs, "summary": summ}
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
