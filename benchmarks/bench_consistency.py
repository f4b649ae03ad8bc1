#!/usr/bin/env python
"""Consistency on ground truth (the ISTA-NAS paper's Table 2): super-net accuracy vs stand-alone accuracy.

For each method (two-stage, one-stage, DARTS), ONE search on ``--space nb201`` at ``--preset`` (cpu / paper,
:func:`istanas.search.run_search`, which hands the task and so the trained super-net back through ``task_out``),
then ``--cells`` K cells drawn uniformly with ``--seed`` (the same K cells for every method,
:func:`istanas.supernet_eval.sample_nb201_cells`; ``--pool no_none``: the 4,096 cells with an op on every edge, the
supports an s = 3 search can pick; ``all``: the 15,625 cells, ``none`` edges left out) are evaluated with the
super-net's inherited weights (:func:`istanas.supernet_eval.evaluate_cells`; ``--weights unit``: each cell's ops
with weight 1, the discretised cell; ``arch``: the search's trained architecture weights restricted to the cell,
Eq. 11 coefficients of its support for ISTA-NAS, softmax(alpha) of its ops for DARTS; both by default), every BN
reset and recomputed as the cumulative average over ``--recal-batches`` training batches of the method's
own training data in train mode, then eval mode on a fixed set of ``--eval-images`` CIFAR-10 test images, the same
for every method; no method trains on the test images).  Only after every search and evaluation is the table
opened: Kendall tau (tau-b) and Spearman rho between the inherited accuracies and the table's CIFAR-10 test
accuracies, per method, plus the search and evaluation wall times.  Paper (DARTS space, 10 cells): DARTS -0.36,
two-stage 0.43, one-stage 0.57.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (_ROOT, os.path.dirname(os.path.abspath(__file__))):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

from bench_search_quality import DEFAULT_TABLE, _config  # noqa: E402
from istanas.checkpoint import atomic_write_json  # noqa: E402
from istanas.data import get_loaders  # noqa: E402
from istanas.engine import resolve_device  # noqa: E402
from istanas.search import run_search  # noqa: E402
from istanas.supernet_eval import (CELL_POOLS, arch_weighted_forward, evaluate_cells, fixed_batches,  # noqa: E402
                                   sample_nb201_cells, supernet_of)
from spaces.nb201 import open_nb201_table  # noqa: E402

METHODS = ("twostage", "onestage", "darts")
WEIGHTS = ("unit", "arch")
PAPER_TAU = {"darts": -0.36, "twostage": 0.43, "onestage": 0.57}
MIN_CELLS = 50


def rank_correlation(x: list, y: list) -> dict:
    """Kendall tau-b and Spearman rho of ``x`` against ``y`` (scipy.stats)."""
    from scipy.stats import kendalltau, spearmanr

    return {"kendall_tau": float(kendalltau(x, y)[0]), "spearman_rho": float(spearmanr(x, y)[0])}


def _eval_data(cfg, args, device: torch.device, cache: dict) -> tuple[list, list]:
    """(recalibration batches: the method's own training images, eval batches: ``--eval-images`` test images)."""
    data = dataclasses.replace(cfg.data, limit_test=args.eval_images)
    key = repr(dataclasses.asdict(data))
    if key not in cache:
        loaders = get_loaders(data, "train", seed=args.seed, device=device if data.on_device else None)
        torch.manual_seed(args.seed)                  # the shuffle / augmentation seed of the one recal pass
        cache[key] = (fixed_batches(loaders.train, args.recal_batches), fixed_batches(loaders.valid, 10 ** 9))
    return cache[key]


def _search_config(method: str, args):
    cfg, name = _config(method, args.preset, args.seed, args.device)
    if args.epochs is not None:
        cfg.epochs = args.epochs
        if hasattr(cfg, "search_epochs") and cfg.search_epochs is not None:
            cfg.search_epochs = min(cfg.search_epochs, args.epochs)
    return cfg, name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, metavar="PATH")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    p.add_argument("--cells", type=int, default=MIN_CELLS, help=f"K sampled cells (>= {MIN_CELLS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the searches and of the cell sample")
    p.add_argument("--device", default="cpu")
    p.add_argument("--table", default=DEFAULT_TABLE, metavar="PATH")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--pool", default="no_none", choices=list(CELL_POOLS))
    p.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=list(WEIGHTS),
                   help="op weights of a cell on the super-net (module doc)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's search epochs")
    p.add_argument("--recal-batches", type=int, default=8, help="training batches per BN recalibration")
    p.add_argument("--eval-images", type=int, default=1000, help="CIFAR-10 test images of the evaluation")
    args = p.parse_args(argv)
    bad = ([f"--cells: must be >= {MIN_CELLS}, got {args.cells}"] if args.cells < MIN_CELLS else []) + \
        [f"--methods: {m!r} has no super-net; choose from {list(METHODS)}" for m in args.methods if m not in METHODS] + \
        ([f"--table: file not found: {args.table}"] if not os.path.isfile(args.table) else []) + \
        ([f"--epochs: must be >= 1, got {args.epochs}"] if args.epochs is not None and args.epochs < 1 else []) + \
        ([f"--recal-batches: must be >= 1, got {args.recal_batches}"] if args.recal_batches < 1 else []) + \
        ([f"--eval-images: must be >= 1, got {args.eval_images}"] if args.eval_images < 1 else [])
    if bad:
        print(bad[0], file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    cells = [g.to_arch_str() for g in sample_nb201_cells(args.cells, args.seed, args.pool)]
    out = {"preset": args.preset, "seed": args.seed, "device": str(device), "pool": args.pool, "cells": cells,
           "epochs_override": args.epochs, "recal_batches": args.recal_batches, "eval_images": args.eval_images,
           "bn_recalibration": "reset_running_stats, momentum=None (cumulative average), train-mode forwards over "
                               "the recal batches, then eval mode", "table": args.table, "methods": {},
           "loadavg_start": list(os.getloadavg())}
    cache: dict = {}
    for method in args.methods:
        cfg, name = _search_config(method, args)
        tasks: list = []
        t0 = time.perf_counter()
        r = run_search(method, cfg, progress=False, task_out=tasks)
        search_s = time.perf_counter() - t0
        recal, evals = _eval_data(cfg, args, device, cache)
        net = supernet_of(tasks[0])
        found = r.genotype.to_arch_str()
        rec = {"preset": name, "epochs": int(cfg.epochs), "found": found,
               "supernet_val_acc": r.final.get("val_acc", r.final.get("test_acc")),
               "search_wall_time_s": float(r.wall_time_s), "search_session_s": search_s, "weights": {}}
        for w in args.weights:
            fwd = net.forward_cell if w == "unit" else arch_weighted_forward(tasks[0])
            t1 = time.perf_counter()
            res = evaluate_cells(net, cells + [found], recal, evals, device, fwd)
            eval_s = time.perf_counter() - t1
            rec["weights"][w] = {"eval_time_s": eval_s, "eval_images": int(res[0]["n"]),
                                 "inherited_acc": [x["acc"] for x in res[:-1]],
                                 "inherited_loss": [x["loss"] for x in res[:-1]], "found_inherited_acc": res[-1]["acc"]}
            print(f"{method} ({w} weights): search {search_s:.0f} s, {len(cells)} cells evaluated in {eval_s:.0f} s, "
                  f"inherited acc {min(x['acc'] for x in res):.3f}..{max(x['acc'] for x in res):.3f}, found cell "
                  f"{res[-1]['acc']:.3f}", flush=True)
        out["methods"][method] = rec
        del tasks, r
        out["loadavg_end"] = list(os.getloadavg())
        atomic_write_json(args.json, out)
    # ---- only now: the ground truth
    tab = open_nb201_table(args.table)
    truth = [tab.accuracy(a, "cifar10") for a in cells]
    out["table_cifar10"] = truth
    for method, rec in out["methods"].items():
        for w in rec["weights"].values():
            w.update(rank_correlation(w["inherited_acc"], truth))
        rec["paper_kendall_tau"] = PAPER_TAU[method]
        rec["found_cifar10"] = tab.accuracy(rec["found"], "cifar10")
    out["loadavg_end"] = list(os.getloadavg())
    atomic_write_json(args.json, out)
    print(f"\n{len(cells)} cells ({args.pool}), seed {args.seed}, preset {args.preset}"
          + (f", {args.epochs} epochs" if args.epochs else ""))
    print("| method | weights | Kendall tau | Spearman rho | paper tau | search s | eval s | mean inherited acc | "
          "found cell: inherited acc / CIFAR-10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, rec in out["methods"].items():
        for wn, w in rec["weights"].items():
            mean = sum(w["inherited_acc"]) / len(w["inherited_acc"])
            print(f"| {method} | {wn} | {w['kendall_tau']:+.3f} | {w['spearman_rho']:+.3f} | "
                  f"{rec['paper_kendall_tau']:+.2f} | {rec['search_session_s']:.0f} | {w['eval_time_s']:.0f} | "
                  f"{mean:.3f} | {w['found_inherited_acc']:.3f} / {rec['found_cifar10']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
