"""Benchmark: data-parallel scaling of the distributed one-stage search (Ray Train, DDP) at a fixed global batch.

The same job (``orchestrator.train_onestage``: the one-stage ImageNet preset shrunk to a small net, real Imagenette
JPEGs from ``../shared/data/imagenette-val-jpg.zip`` streamed through the ImageNet data pipeline, ``--image-size``
pixels) runs with 1 and with 2 workers at the same global batch ``--global-batch`` (so 2 workers take half the batch
each), each worker on ``--cpus-per-worker`` CPUs and as many torch threads (gloo on CPU; ``--use-gpu``: one GPU per
worker, NCCL).  ``images_per_s`` is the global training throughput of an epoch as the workers report it (images of
the epoch over its training time: forward, backward, the DDP all-reduce, the recoveries and the support broadcast,
data loading included; evaluation and checkpointing excluded), the median over the epochs after the first (warm-up).
``scaling_efficiency = images_per_s(2 workers) / (2 x images_per_s(1 worker))``: 1.0 is perfect linear scaling.

On a 2-core machine expect < 1: two workers on two cores leave no core for Ray, the data decoding and the gloo
all-reduce threads, the per-worker batch halves (less work per launch), and every step pays an all-reduce of all
gradients over TCP that a single worker does not.  ``--also-threads`` adds a single worker with 2 threads for
comparison (the other way to use the second core).

Usage: ``python benchmarks/bench_train.py --json bench-results/bench_train.json [--epochs 3] [--use-gpu]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from istanas.checkpoint import atomic_write_json  # noqa: E402


def _job(args, root: str, storage: str, workers: int, threads: int, name: str):
    from orchestrator.train_onestage import DistSearchConfig

    search = {
        "data": {"root": root, "holdout_fraction": 0.2, "limit_train": args.images, "limit_test": 16,
                 "image_size": args.image_size, "num_workers": 0, "eval_batch_size": 16},
        "C": args.C, "layers": args.layers, "epochs": args.epochs, "search_epochs": args.epochs,
        "train_epochs": None, "epsilon": 0.0, "auxiliary": False, "eval_every": 1000,
    }
    return DistSearchConfig(name=name, storage_path=storage, search_preset="imagenet", search=search,
                            num_workers=workers, use_gpu=args.use_gpu, cpus_per_worker=threads,
                            global_batch_size=args.global_batch, max_failures=0, keep_checkpoints=1,
                            dashboard=False, verbose=False)


def _measure(cfg) -> dict:
    """Fit the job; per-epoch images/s from the run's reported metrics (Ray Train keeps them per checkpoint)."""
    import json

    from orchestrator.train_onestage import RESULT_FILE, run_distributed_search

    t0 = time.perf_counter()
    out = run_distributed_search(cfg)
    wall = time.perf_counter() - t0
    with open(os.path.join(out.checkpoint_path, RESULT_FILE)) as f:
        history = json.load(f)["reports"]
    ips = [float(h["images_per_s"]) for h in history]
    peak = [float(h.get("peak_mem_mb", float("nan"))) for h in history]
    steady = ips[1:] if len(ips) > 1 else ips
    return {"workers": cfg.num_workers, "threads_per_worker": int(cfg.cpus_per_worker),
            "batch_per_worker": cfg.global_batch_size // cfg.num_workers, "images_per_s": statistics.median(steady),
            "images_per_s_epochs": ips, "peak_mem_mb_rank0": max(peak), "fit_wall_s": wall,
            "epoch_train_time_s": [float(h["train_time_s"]) for h in history]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--data", default=None, help="ImageFolder / zip (default: the shared Imagenette zip)")
    ap.add_argument("--images", type=int, default=384, help="training images (a seeded subset)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--C", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--use-gpu", action="store_true", help="GPU workers (needs 2 GPUs for the 2-worker run)")
    ap.add_argument("--also-threads", action="store_true",
                    help="also time 1 worker with 2 x --cpus-per-worker threads")
    args = ap.parse_args(argv)
    from istanas.data import shared_data_dir

    root = args.data or os.path.join(shared_data_dir() or "../shared/data", "imagenette-val-jpg.zip")
    if not os.path.exists(root):   # nothing to measure here (e.g. a checkout without ../shared/data): say so
        res = {"skipped": f"no data at {root}; pass --data (an ImageFolder or a .zip of it)"}
        print(res["skipped"], flush=True)
        atomic_write_json(args.json, res)
        return res
    import ray

    ncpu = 2 * args.cpus_per_worker
    res: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                             "platform": platform.platform(), "loadavg_start": os.getloadavg()},
                 "settings": {k: v for k, v in vars(args).items() if k != "json"}}
    ray.init(address="local", num_cpus=ncpu, num_gpus=2 if args.use_gpu else 0, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as storage:
            runs = {"1": _measure(_job(args, root, storage, 1, args.cpus_per_worker, "w1")),
                    "2": _measure(_job(args, root, storage, 2, args.cpus_per_worker, "w2"))}
            if args.also_threads:
                runs["1x2threads"] = _measure(_job(args, root, storage, 1, 2 * args.cpus_per_worker, "w1t2"))
    finally:
        ray.shutdown()
    res["runs"] = runs
    res["scaling_efficiency"] = runs["2"]["images_per_s"] / (2 * runs["1"]["images_per_s"])
    res["speedup_2_workers"] = runs["2"]["images_per_s"] / runs["1"]["images_per_s"]
    res["machine"]["loadavg_end"] = os.getloadavg()
    print(f"{'cuda' if args.use_gpu else 'cpu'}: global batch {args.global_batch}, {args.image_size} px: 1 worker "
          f"{runs['1']['images_per_s']:.1f} images/s, 2 workers {runs['2']['images_per_s']:.1f} images/s -> "
          f"scaling_efficiency {res['scaling_efficiency']:.3f} (speed-up {res['speedup_2_workers']:.2f}x)"
          + (f"; 1 worker x 2 threads {runs['1x2threads']['images_per_s']:.1f} images/s" if args.also_threads
             else ""), flush=True)
    atomic_write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
