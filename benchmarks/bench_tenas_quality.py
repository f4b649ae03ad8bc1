"""Search quality of TE-NAS and of the combined training-free score on NAS-Bench-201 ground truth.

Usage::

    nice -n 10 python benchmarks/bench_tenas_quality.py --json /tmp/btq.json [--seeds 5] [--cells 1000] [--all]
        [--couplings frozen,batch] [--device cuda]

* ``search``: for each BN coupling of ``--couplings`` and seeds ``0..--seeds-1``, the TE-NAS pruning search with
  the ``paper`` settings (batch 72, 3000 patches, 3 repeats, init as released) on the whole CIFAR-10 training
  set (``../shared/data/cifar10-jpg.zip``, un-augmented pool), and the same search with ``score: combined``
  (``--combined-couplings``); each found cell looked up, after the search, in ``nasbench201_full.csv``:
  CIFAR-10 / CIFAR-100 / ImageNet16-120 test accuracy, mean +/- std over the seeds, and the time per search.
* ``correlation``: a fixed random sample of ``--cells`` cells of the table (seed ``--sample-seed``; all 15,625
  with ``--all``), each scored once (``--score-repeats``) on the same images: Kendall tau / Spearman rho against
  the three accuracies of every component (``ntk_cond`` negated), TE-NAS's rank sum, ``log R - log kappa``, the
  log-rank combinations of :data:`COMBINATIONS`, and ``tenas_ref32``: the sweep's objective (each cell's
  TE-NAS rank combination against 32 other cells of the sample, ``score.reference_rank_objective``); #params and
  FLOPs (of the cell's C=16, N=5 network) are the baselines.  ``time_per_cell_s``: wall time per scored cell (all
  components), ``time_per_cell_s_by_component`` its split; ``loadavg`` the machine's load when it ended.
* ``pick_best``: the pre-filter as a search: for each ``n`` of ``--pick-n`` and seeds ``0..--seeds-1``, ``n`` cells
  drawn from the scored sample, the best by each score kept; its three table accuracies, mean +/- std over the
  seeds (the scores are the correlation's, so no cell is scored twice; the table is read after the pick).
  ``--columns PATH.npz`` also saves every component's column with the sample's cell strings.

The JSON is rewritten (atomically) after every search and after the correlation study, so a run cut short
keeps what it finished.  The table is read only to look found cells up and to correlate, never by a search.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from istanas.checkpoint import atomic_write_json  # noqa: E402
from istanas.data import DataConfig, default_root, image_batch  # noqa: E402
from istanas.tenas.job import TENAS_PRESETS, TenasConfig, tenas_search  # noqa: E402
from istanas.tenas.score import (COMPONENTS, oriented_scores, rank_correlations, reference_rank_objective,  # noqa: E402
                                 score_cells)
from spaces.nb201 import TABLE_DATASETS, open_nb201_table  # noqa: E402

#: Log-rank combinations reported (fixed before any measurement; "combined" is the default of ``score: combined``).
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "combined": ("ntk_cond", "linear_regions", "naswot", "flops"),
    "combined_all": ("ntk_cond", "linear_regions", "naswot", "params", "flops"),
    "naswot+flops": ("naswot", "flops"),
    "tenas+flops": ("ntk_cond", "linear_regions", "flops"),
    # with SynFlow (added after the 150-cell study put "combined" at tau 0.625 < 0.70; reported with and without)
    "combined+synflow": ("ntk_cond", "linear_regions", "naswot", "flops", "synflow"),
    "naswot+flops+synflow": ("naswot", "flops", "synflow"),
    # with AZ-NAS's components (Lee & Ham, CVPR 2024): its own combination (complexity = FLOPs), and mixed in
    "aznas": ("expressivity", "progressivity", "trainability", "flops"),
    "aznas+naswot": ("expressivity", "progressivity", "trainability", "flops", "naswot"),
    "aznas+naswot+synflow": ("expressivity", "progressivity", "trainability", "flops", "naswot", "synflow"),
    "combined+aznas": ("ntk_cond", "linear_regions", "naswot", "flops", "expressivity", "progressivity",
                       "trainability"),
    "combined+aznas+synflow": ("ntk_cond", "linear_regions", "naswot", "flops", "expressivity", "progressivity",
                               "trainability", "synflow"),
}

#: Reference cells of the sweep-objective score ``tenas_ref32``.
REFERENCE_CELLS = 32


def reference_scores(kappa: np.ndarray, regions: np.ndarray, seed: int) -> np.ndarray:
    """Each cell's ``reference_rank_objective`` against :data:`REFERENCE_CELLS` random other cells of the sample
    (one fixed draw; a cell of the draw is compared with the other ones)."""
    ref = np.random.default_rng(seed).choice(len(kappa), size=min(REFERENCE_CELLS + 1, len(kappa)), replace=False)
    out = np.empty(len(kappa))
    for i in range(len(kappa)):
        r = [j for j in ref if j != i][:REFERENCE_CELLS]
        out[i] = reference_rank_objective(kappa[i], regions[i], kappa[r], regions[r])["objective"]
    return out


#: The searches' settings: ``paper`` = ``TENAS_PRESETS["paper"]`` (the released values, TenasConfig defaults);
#: ``small`` = ``TENAS_PRESETS["small"]`` (16x16 inputs, NTK batch 16, 500 patches, 1 repeat).
PRESET_SETTINGS: dict[str, dict] = {name: dict(TENAS_PRESETS[name]["tenas"]) for name in ("paper", "small")}


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def run_searches(out: dict, args: argparse.Namespace, images: torch.Tensor, table, save) -> None:
    runs = [("tenas", c) for c in args.couplings] + [("combined", c) for c in args.combined_couplings]
    comps = args.combined_components
    for score, coupling in runs:
        extra = {"components": list(COMBINATIONS.get(comps, comps.split(",")))} if score == "combined" and comps \
            else {}
        name = f"{score}[{comps}]_{coupling}" if extra else f"{score}_{coupling}"
        rec = out["search"].setdefault(name, {"score": score, "bn_coupling": coupling, "preset": args.preset,
                                              **extra, "runs": []})
        for seed in range(args.seeds):
            cfg = TenasConfig(**{**PRESET_SETTINGS[args.preset], "bn_coupling": coupling, "score": score,
                                 "seed": seed, "device": args.device, **extra}).validate()
            t0 = time.perf_counter()
            res = tenas_search(cfg, images)
            found = table.lookup(res["arch"])
            rec["runs"].append({"seed": seed, "arch": res["arch"], "search_time_s": res["wall_time_s"],
                                "total_time_s": time.perf_counter() - t0,
                                **{d: found[d] for d in TABLE_DATASETS}, "percentile": found["percentile"]})
            for d in TABLE_DATASETS:
                rec[d] = _summary([r[d] for r in rec["runs"]])
            rec["search_time_s"] = _summary([r["search_time_s"] for r in rec["runs"]])
            print(f"{name} seed {seed}: {res['arch']} cifar10 {found['cifar10']:.2f} "
                  f"({res['wall_time_s']:.0f} s)", flush=True)
            save()


def score_in_chunks(sample: list[str], images: torch.Tensor, cfg: TenasConfig, chunk: int = 100) -> dict:
    """:func:`score_cells` of every component, ``chunk`` cells at a time with a progress line (the seeded units
    make the chunks' values the same as one call's); times are per cell over all chunks."""
    parts = []
    for s in range(0, len(sample), chunk):
        parts.append(score_cells(sample[s:s + chunk], images, cfg, list(COMPONENTS)))
        done = min(s + chunk, len(sample))
        print(f"  scored {done}/{len(sample)} cells, {parts[-1]['time_per_cell_s']:.2f} s/cell", flush=True)
    n = len(sample)
    out: dict = {c: np.concatenate([p[c] for p in parts]) for c in COMPONENTS}
    out["time_per_cell_s"] = sum(p["time_per_cell_s"] * len(p["ntk_cond"]) for p in parts) / n
    out["time_per_cell_s_by_component"] = {
        k: sum(p["time_per_cell_s_by_component"][k] * len(p["ntk_cond"]) for p in parts) / n
        for k in parts[0]["time_per_cell_s_by_component"]}
    return out


def pick_best(cols: dict, sample: list[str], table, sizes: list[int], seeds: int) -> dict:
    """``{n: {score: {dataset: summary, "archs": [...]}}}``: per seed, ``n`` cells of ``sample`` drawn (seeded),
    every score of :func:`oriented_scores` computed on the draw alone (log-ranks within the ``n``), the cell with
    the highest kept (NaN lowest, first in sample order on ties) and looked up in ``table``."""
    out: dict = {}
    for n in sizes:
        picks: dict[str, list[str]] = {}
        for seed in range(seeds):
            d = np.sort(np.random.default_rng(1000 + seed).choice(len(sample), size=min(n, len(sample)),
                                                                  replace=False))
            sub = oriented_scores({k: np.asarray(cols[k])[d] for k in COMPONENTS}, COMBINATIONS)
            for name, sc in sub.items():
                sc = np.where(np.isnan(sc), -np.inf, sc)
                picks.setdefault(name, []).append(sample[int(d[np.argmax(sc)])])
        out[str(n)] = {name: {**{ds: _summary([table.accuracy(a, ds) for a in ps]) for ds in TABLE_DATASETS},
                              "archs": ps} for name, ps in picks.items()}
    return out


def run_correlation(out: dict, args: argparse.Namespace, images: torch.Tensor, table, save) -> None:
    archs = sorted(table.archs())
    n = len(archs) if args.all else args.cells
    pick = sorted(np.random.default_rng(args.sample_seed).choice(len(archs), size=n, replace=False))
    sample = [archs[i] for i in pick]
    cfg = TenasConfig(bn_coupling=args.score_coupling, repeats=args.score_repeats, device=args.device,
                      naswot_cells=args.naswot_cells, naswot_batch=args.naswot_batch,
                      **{k: v for k, v in (("lr_samples", args.lr_samples), ("ntk_batch", args.ntk_batch))
                         if v is not None})
    t0 = time.perf_counter()
    cols = score_in_chunks(sample, images, cfg.resolved())
    scores = oriented_scores(cols, COMBINATIONS)
    scores["tenas_ref32"] = reference_scores(cols["ntk_cond"], cols["linear_regions"], args.sample_seed + 1)
    out["correlation"] = {
        "cells": n, "sample_seed": args.sample_seed, "score_repeats": args.score_repeats,
        "bn_coupling": args.score_coupling, "naswot_cells": args.naswot_cells, "naswot_batch": args.naswot_batch,
        "time_per_cell_s": cols["time_per_cell_s"], "wall_s": time.perf_counter() - t0,
        "time_per_cell_s_by_component": cols["time_per_cell_s_by_component"], "loadavg": list(os.getloadavg()),
        "lr_samples": args.lr_samples, "ntk_batch": args.ntk_batch, "threads": torch.get_num_threads(),
        "combinations": {k: list(v) for k, v in COMBINATIONS.items()},
        "by_dataset": {d: rank_correlations(scores, [table.accuracy(a, d) for a in sample]) for d in TABLE_DATASETS},
    }
    out["pick_best"] = pick_best(cols, sample, table, args.pick_n, args.seeds)
    if args.columns:
        np.savez(args.columns, archs=np.array(sample), **{k: np.asarray(cols[k]) for k in COMPONENTS})
    print(f"correlation over {n} cells, {cols['time_per_cell_s']:.2f} s/cell "
          f"({', '.join(f'{k} {v:.3f}' for k, v in cols['time_per_cell_s_by_component'].items())})", flush=True)
    for k, v in out["correlation"]["by_dataset"]["cifar10"].items():
        print(f"  {k:18s} tau {v['kendall_tau']:+.3f} rho {v['spearman_rho']:+.3f}", flush=True)
    for n_pick, rec in out["pick_best"].items():
        print(f"best of {n_pick} cells (cifar10 mean +/- std over {args.seeds} draws): " + ", ".join(
            f"{k} {v['cifar10']['mean']:.2f}+/-{v['cifar10']['std']:.2f}" for k, v in rec.items()), flush=True)
    save()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--table", default=None, help="nasbench201_full.csv (default: ../shared/data)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--preset", choices=sorted(PRESET_SETTINGS), default="paper", help="the searches' settings")
    p.add_argument("--couplings", default="frozen", help="TE-NAS searches: comma list of batch, frozen ('' = none)")
    p.add_argument("--combined-couplings", default="frozen", help="score: combined searches ('' = none)")
    p.add_argument("--combined-components", default="",
                   help="score: combined searches' components: a combination name of COMBINATIONS or a comma list "
                        "('' = the default, pruning.COMBINED_DEFAULT)")
    p.add_argument("--cells", type=int, default=1000)
    p.add_argument("--all", action="store_true", help="correlate all 15,625 cells")
    p.add_argument("--pick-n", default="100,1000", help="pick_best: draw sizes (comma list)")
    p.add_argument("--columns", default=None, help="also save the components' columns to this .npz")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--score-repeats", type=int, default=1)
    p.add_argument("--score-coupling", default="frozen")
    p.add_argument("--naswot-cells", type=int, default=None, help="cells per stage of the NASWOT network (5)")
    p.add_argument("--naswot-batch", type=int, default=128)
    p.add_argument("--lr-samples", type=int, default=None, help="patches per region count (default: 3000)")
    p.add_argument("--ntk-batch", type=int, default=None, help="NTK batch of the correlation (default: 72)")
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--skip-correlation", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.couplings = [c for c in args.couplings.split(",") if c]
    args.pick_n = [int(n) for n in args.pick_n.split(",") if n]
    args.combined_couplings = [c for c in args.combined_couplings.split(",") if c]
    table_path = args.table or os.path.join(os.path.dirname(default_root("cifar10") or "../shared/data/x"),
                                            "nasbench201_full.csv")
    if default_root("cifar10") is None:
        print("bench_tenas_quality: no CIFAR-10 found (../shared/data/cifar10-jpg.zip)", file=sys.stderr)
        return 2
    table = open_nb201_table(table_path)
    images = image_batch(DataConfig(dataset="cifar10"), 1 << 40)
    out: dict = {"argv": sys.argv[1:], "table": table_path, "table_cells": len(table), "images": list(images.shape),
                 "torch_threads": torch.get_num_threads(), "search": {}}

    def save() -> None:
        atomic_write_json(args.json, out)

    if not args.skip_correlation:
        run_correlation(out, args, images, table, save)
    if not args.skip_search:
        run_searches(out, args, images, table, save)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
