"""Benchmark of TE-NAS: vectorised NTK Jacobian vs the released per-sample backward loop, and a whole search.

Usage::

    python benchmarks/bench_tenas.py --json bench-results/tenas.json [--device cuda] [--correlation-archs 50]
        [--seeds 3] [--preset paper|small] [--couplings batch,frozen]

* ``ntk``: on the TE-NAS NTK proxies (the NB201 super-net, C=3, batch 72, 32x32; the DARTS super-net, C=1,
  batch 14) with every op live, for each BN coupling (``--couplings``), time ``istanas.tenas.indicators.ntk_jacobian``
  against ``ntk_jacobian_loop`` (one forward, B backward passes, as released) on the same network, batch and
  coupling; check both give the same Jacobian and kappa.  ``batch`` (the paper's kernel, the default) is
  ``jacrev`` over the batched function (one vmapped VJP over B coupled cotangents); ``frozen`` (BN statistics
  held constant) is ``vmap(grad)`` over single samples.  ``ntk_speedup_vs_loop`` = loop / vectorised time on the
  NB201 proxy with the default coupling; ``ntk_speedup_vs_loop_frozen`` the same with ``frozen``.
* ``coupling_agreement``: round 0 of the NB201 search (24 candidates, one repeat) scored with both couplings:
  Kendall tau of the two kappa changes and whether the round prunes the same ops.
* ``search``: for each coupling and seeds ``0..--seeds-1``, a whole NAS-Bench-201 TE-NAS search with the
  ``--preset`` settings (``paper``: the released ones, 3 rounds, 3 repeats, batch 72, 3000 patches; ``small``:
  ``TENAS_PRESETS["small"]``) on the loaded image pool; each found cell looked up, after its search, in the full
  table (``nasbench201_full.csv``, :func:`spaces.nb201.open_nb201_table`): CIFAR-10 / CIFAR-100 /
  ImageNet16-120 test accuracy and percentile per run, mean +/- std over the seeds (``summary``), wall time.
* ``correlations`` (``--correlation-archs N``): Kendall tau / Spearman rho of kappa_N and R_N against accuracy,
  for each coupling.

Images: real CIFAR-10 training JPEGs from ``cifar10-jpg.zip`` (``--data-dir``, default ``../shared/data``), or a
uint8 array [N, 32, 32, 3] saved with ``numpy.save`` (``--images-npy``), else scikit-learn digits.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import zipfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from istanas.data import DataConfig, image_batch, shared_data_dir  # noqa: E402
from istanas.tenas.indicators import gram_condition, init_weights, ntk_jacobian, ntk_jacobian_loop  # noqa: E402
from istanas.tenas.job import TENAS_PRESETS, TenasConfig, correlation_study, tenas_search  # noqa: E402
from istanas.tenas.proxies import build_proxies  # noqa: E402
from istanas.tenas.pruning import Measurer, prepare_images, sample_ntk_batch, select_prunes  # noqa: E402
from spaces.nb201 import TABLE_DATASETS, open_nb201_table  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def load_cifar_uint8(zip_path: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random CIFAR-10 training images from the JPEG zip -> uint8 [n, 32, 32, 3]."""
    from PIL import Image

    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(nm for nm in zf.namelist() if "/train/" in nm and nm.lower().endswith(".jpg"))
        pick = np.random.default_rng(seed).choice(len(names), size=min(n, len(names)), replace=False)
        out = np.stack([np.asarray(Image.open(io.BytesIO(zf.read(names[i]))).convert("RGB")) for i in sorted(pick)])
    return out


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float [N, 3, H, W] (CIFAR mean/std)."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CIFAR_MEAN)[None, :, None, None]
    std = torch.tensor(CIFAR_STD)[None, :, None, None]
    return (x - mean) / std


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, reps: int) -> tuple[float, object]:
    """Median wall time of ``reps`` calls after one warm-up call; returns (seconds, last result)."""
    out = fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_ntk(space: str, images: torch.Tensor, device: torch.device, reps: int, chunk: int | None,
              coupling: str, batch: int | None = None) -> dict:
    cfg = TenasConfig(space=space, device=str(device), bn_coupling=coupling).resolved()
    if batch is not None:  # a smaller NTK batch than the space's (a smoke run: the loop baseline is B backwards)
        cfg.ntk_batch = batch
    ntk_net, _ = build_proxies(cfg)
    ntk_net = ntk_net.to(device)
    init_weights(ntk_net, "kaiming_fanout", seed=0)
    x = sample_ntk_batch(prepare_images(images, cfg.input_size, device), cfg.ntk_batch, seed=0)
    chunk = cfg.jac_chunk if chunk is None else chunk
    t_vec, j_vec = time_call(lambda: ntk_jacobian(ntk_net, x, bn_coupling=coupling, chunk_size=chunk or None),
                             device, reps)
    t_loop, j_loop = time_call(lambda: ntk_jacobian_loop(ntk_net, x, bn_coupling=coupling), device, reps)
    k_vec, k_loop = float(gram_condition(j_vec)), float(gram_condition(j_loop))
    return {
        "network": f"{space} NTK proxy (C={cfg.ntk_width}, all ops live)", "bn_coupling": coupling,
        "batch": cfg.ntk_batch, "input_size": cfg.input_size, "num_params": int(j_vec.shape[1]), "jac_chunk": chunk,
        "vectorised_s": t_vec, "loop_s": t_loop, "speedup": t_loop / t_vec,
        "kappa_vectorised": k_vec, "kappa_loop": k_loop, "kappa_rel_diff": abs(k_vec - k_loop) / abs(k_loop),
        "jacobian_max_abs_diff": float((j_vec - j_loop).abs().max()),
        "jacobian_max_abs": float(j_loop.abs().max()),
    }


def coupling_agreement(images: torch.Tensor, device: torch.device, seed: int) -> dict:
    """Round 0 of the NB201 search scored with both BN couplings (one repeat, the same inits and batches)."""
    from scipy.stats import kendalltau

    out: dict = {}
    for coupling in ("batch", "frozen"):
        cfg = TenasConfig(space="nb201", device=str(device), repeats=1, seed=seed, bn_coupling=coupling).resolved()
        meas = Measurer(cfg, images)
        mask = np.ones((1, meas.ntk_net.num_edges, len(meas.ntk_net.ops)), dtype=bool)
        cands = [(0, e, o) for e in range(mask.shape[1]) for o in range(mask.shape[2])]
        children = []
        for t, e, o in cands:
            child = mask.copy()
            child[t, e, o] = False
            children.append(child)
        t0 = time.perf_counter()
        d_k, d_r, kp, _ = meas.deltas(0, mask, children)
        pruned = select_prunes([(t, e) for t, e, _ in cands], d_k, d_r, lambda g, size: min(1, size - 1),
                               cfg.precision)
        out[coupling] = {"kappa_parent": kp, "d_kappa": d_k.tolist(), "time_s": time.perf_counter() - t0,
                         "pruned": sorted(int(i) for i in pruned)}
    out["kendall_tau_d_kappa"] = float(kendalltau(out["batch"]["d_kappa"], out["frozen"]["d_kappa"])[0])
    out["same_pruned_ops"] = out["batch"]["pruned"] == out["frozen"]["pruned"]
    out["candidates"] = len(out["batch"]["d_kappa"])
    return out


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def search_seeds(coupling: str, args: argparse.Namespace, images: torch.Tensor, device: torch.device,
                 table_path: str | None) -> dict:
    """``args.seeds`` NB201 searches with ``coupling``; found cells looked up in the table after each search."""
    settings = dict(TENAS_PRESETS[args.preset]["tenas"])
    if args.repeats is not None:
        settings["repeats"] = args.repeats
    runs = []
    for seed in range(args.seeds):
        cfg = TenasConfig(**{**settings, "space": "nb201", "dataset": "cifar10", "device": str(device),
                             "seed": seed, "bn_coupling": coupling})
        out = tenas_search(cfg, images)
        run = {"seed": seed, "arch": out["arch"], "wall_time_s": out["wall_time_s"],
               "setup_time_s": out["setup_time_s"], "rounds": out["rounds"], "config": out["config"]}
        if table_path is not None:  # opened only now, after the search
            found = open_nb201_table(table_path).lookup(out["arch"])
            run.update({d: found[d] for d in TABLE_DATASETS}, percentile=found["percentile"])
        runs.append(run)
        print(f"[search nb201 {coupling} {args.preset} seed {seed}] {out['wall_time_s']:.1f}s on {device}: "
              f"{out['arch']}  cifar10 {run.get('cifar10')}", flush=True)
    rec = {"space": "nb201", "bn_coupling": coupling, "preset": args.preset, "runs": runs,
           "wall_time_s": _mean_std([r["wall_time_s"] for r in runs])}
    if table_path is not None:
        rec["summary"] = {d: _mean_std([r[d] for r in runs]) for d in TABLE_DATASETS}
        print(f"[search nb201 {coupling}] cifar10 {rec['summary']['cifar10']['mean']:.2f} +/- "
              f"{rec['summary']['cifar10']['std']:.2f} over {len(runs)} seeds", flush=True)
    return rec


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--device", default="cpu")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--data-dir", default=shared_data_dir() or os.path.join(here, "..", "shared", "data"),
                    help="the shared data folder (default: $ISTANAS_SHARED_DATA, else ../shared/data)")
    ap.add_argument("--images-npy", default=None, help="uint8 [N, 32, 32, 3] array (numpy.save), instead of the zip")
    ap.add_argument("--save-images-npy", default=None, help="write the loaded uint8 images there and continue")
    ap.add_argument("--num-images", type=int, default=2000)
    ap.add_argument("--table", default=None, help="nasbench201_full.csv or zc_nasbench201.json "
                                                  "(default: <data-dir>/nasbench201_full.csv)")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per NTK variant (median)")
    ap.add_argument("--jac-chunk", type=int, default=None, help="vmap chunk size (default: auto per device)")
    ap.add_argument("--ntk-batch", type=int, default=None,
                    help="NTK batch of the timing section (default: the space's, 72 for NB201 and 14 for DARTS)")
    ap.add_argument("--couplings", default="batch,frozen", help="BN couplings to measure, comma-separated")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--darts-search", action="store_true", help="also time a DARTS-space search")
    ap.add_argument("--correlation-archs", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=None, help="search repeats (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0, help="image sample / agreement / correlation seed")
    ap.add_argument("--seeds", type=int, default=3, help="searches per coupling: seeds 0..N-1")
    ap.add_argument("--preset", choices=("paper", "small"), default="paper", help="the searches' TE-NAS settings")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    zip_path = os.path.join(args.data_dir, "cifar10-jpg.zip")
    if args.images_npy:
        u8 = np.load(args.images_npy, allow_pickle=False)
        images, source = to_tensor(u8), f"CIFAR-10 train ({len(u8)} from {os.path.basename(args.images_npy)})"
    elif os.path.isfile(zip_path):
        u8 = load_cifar_uint8(zip_path, args.num_images, args.seed)
        images, source = to_tensor(u8), f"CIFAR-10 train JPEGs ({len(u8)} random)"
    else:
        u8 = None
        images, source = image_batch(DataConfig(image_size=32), 512), "scikit-learn digits (fallback)"
    if args.save_images_npy and u8 is not None:
        np.save(args.save_images_npy, u8, allow_pickle=False)
    table = args.table or os.path.join(args.data_dir, "nasbench201_full.csv")
    table = table if os.path.isfile(table) else None
    if args.seeds < 1:
        print("bench_tenas: --seeds must be >= 1", file=sys.stderr)
        raise SystemExit(2)

    res: dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "images": source}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    couplings = [c for c in args.couplings.split(",") if c]
    default = TenasConfig().bn_coupling
    res["ntk"] = {sp: {c: bench_ntk(sp, images, device, args.reps, args.jac_chunk, c, args.ntk_batch)
                       for c in couplings}
                  for sp in ("nb201", "darts")}
    if default in couplings:
        res["ntk_speedup_vs_loop"] = res["ntk"]["nb201"][default]["speedup"]
    if "frozen" in couplings:
        res["ntk_speedup_vs_loop_frozen"] = res["ntk"]["nb201"]["frozen"]["speedup"]
    for sp, by in res["ntk"].items():
        for c, r in by.items():
            print(f"[ntk {sp} {c}] B={r['batch']} P={r['num_params']} vectorised {r['vectorised_s']:.3f}s  "
                  f"loop {r['loop_s']:.3f}s  speedup {r['speedup']:.2f}x  kappa {r['kappa_vectorised']:.4g} "
                  f"(rel diff vs loop {r['kappa_rel_diff']:.1e})", flush=True)

    if not args.skip_agreement:
        agree = coupling_agreement(images, device, args.seed)
        res["coupling_agreement"] = agree
        print(f"[agreement] round 0, {agree['candidates']} candidates: Kendall tau of d_kappa batch vs frozen "
              f"{agree['kendall_tau_d_kappa']:+.3f}, same pruned ops: {agree['same_pruned_ops']}", flush=True)

    if not args.skip_search:
        res["search"] = {c: search_seeds(c, args, images, device, table) for c in couplings}
        if default in res["search"]:
            res["nb201_search_wall_time_s"] = res["search"][default]["wall_time_s"]["mean"]
        if "frozen" in res["search"]:
            res["nb201_search_wall_time_s_frozen"] = res["search"]["frozen"]["wall_time_s"]["mean"]
        if args.darts_search:
            cfg_d = TenasConfig(space="darts", dataset="cifar10", device=str(device), repeats=args.repeats or 3,
                                seed=args.seed, bn_coupling=couplings[-1])
            out_d = tenas_search(cfg_d, images)
            res["search_darts"] = {"wall_time_s": out_d["wall_time_s"], "genotype": out_d["arch"],
                                   "bn_coupling": couplings[-1], "rounds": out_d["rounds"]}
            print(f"[search darts {couplings[-1]}] {out_d['wall_time_s']:.1f}s: {out_d['arch']}", flush=True)

    if args.correlation_archs > 0 and table is not None:
        res["correlations"] = {}
        for c in couplings:
            cfg = TenasConfig(space="nb201", dataset="cifar10", device=str(device), repeats=args.repeats or 3,
                              seed=args.seed, bn_coupling=c)
            corr = correlation_study(table, images, cfg, num_archs=args.correlation_archs, seed=args.seed)
            res["correlations"][c] = corr
            print(f"[correlations {c}] {corr['num_archs']} archs ({corr['time_per_cell_s']:.2f} s/cell) Kendall tau: "
                  + ", ".join(f"{k} {v:+.3f}" for k, v in corr["kendall_tau"].items())
                  + " | Spearman rho: " + ", ".join(f"{k} {v:+.3f}" for k, v in corr["spearman_rho"].items()),
                  flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1, default=str)
    print("ntk_speedup_vs_loop = " + ", ".join(f"{k}: {res[k]:.2f}" for k in ("ntk_speedup_vs_loop",
          "ntk_speedup_vs_loop_frozen") if k in res) + f"  -> {args.json}")
    return res


if __name__ == "__main__":
    main()
