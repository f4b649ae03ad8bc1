"""Benchmark: orchestration overhead of the Ray sweep, and trial throughput on a simulated multi-node cluster.

1. Overhead.  A sweep of ``--trials`` real two-stage searches (the ``small`` preset on digits, ``--epochs``
   epochs, ASHA off so every search runs all its epochs, no retraining), ``--concurrent`` at a time, one CPU
   each, on a local Ray with ``--cpus`` CPUs (started before timing).  Then the same searches (the configs the
   sweep's Optuna suggested, same seeds) run directly in this process, one after another, each on one torch
   thread as in a trial.  ``direct_s = sum of those times / concurrent``: the time of the same work perfectly
   parallel, with no orchestration; ``overhead_ratio = sweep time / direct_s`` (sweep time: ``run_sweep`` without
   ``ray.init``, i.e. ``Tuner.fit`` plus the post-processing actor; target <= 1.10 with 2 concurrent trials on 2
   cores).  This charges the sweep with any imperfect scaling of two processes on two cores as well.
   ``orchestration_ratio = sweep time / (sum of the searches' own time inside the trials / concurrent)`` separates
   what Ray and Tune add from CPU contention (on a loaded machine two trials do not get two cores).
   ``--direct-threads N`` also times the searches one after another with N torch threads (on an oversubscribed
   machine multi-threaded torch can be far slower; see the load averages recorded).
2. Throughput.  ``ray.cluster_utils.Cluster``: a head with no CPUs and ``--nodes`` worker nodes of 2 CPUs each
   (all on this machine), ``--short-trials`` short stand-in trials (``--short-epochs`` epochs of
   ``--short-epoch-s`` s each, through the same trial adapter, Optuna, ASHA off), ``2 * nodes`` at a time.
   The sweep joins the cluster through its ``address`` (as ``--address`` does: the code travels as runtime_env
   py_modules).  Reported: trials per second over ``Tuner.fit``, the ideal rate (slots / trial duration), the
   efficiency, the mean trial time inside its worker, and how the trials spread over the nodes.

Usage: ``python benchmarks/bench_sweep.py --json bench-results/bench_sweep.json [--trials 4] [--epochs 2]``.
"""
from __future__ import annotations

import argparse
import collections
import math
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from istanas.checkpoint import atomic_write_json  # noqa: E402
from istanas.search import run_search  # noqa: E402
from orchestrator.sweep import run_sweep  # noqa: E402
from orchestrator.sweep_config import build_search_config, load_sweep_config  # noqa: E402


def short_search(cfg, *, data=None, on_epoch_end=None, resume=None, progress=False):
    """A stand-in for the two-stage search (``orchestrator.tune_trial.SearchFn``): ``cfg.epochs`` epochs of
    ``ISTANAS_BENCH_EPOCH_S`` seconds."""
    epoch_s = float(os.environ.get("ISTANAS_BENCH_EPOCH_S", "0.2"))
    hist = []
    for e in range(cfg.epochs):
        time.sleep(epoch_s)
        acc = 0.5 + 0.1 * e - 0.01 * abs(math.log10(cfg.recovery.lam) + 3)
        m = {"epoch": e + 1, "val_acc": acc, "val_loss": 1 - acc, "support_churn": 0.0}
        hist.append(m)
        if on_epoch_end:
            on_epoch_end(dict(m), {"epoch": e + 1, "task": {}, "history": hist, "done": e + 1 == cfg.epochs})
    g = {"space": "darts", "normal": [["skip_connect", i % 2] for i in range(8)], "normal_concat": [2, 3, 4, 5],
         "reduce": [["max_pool_3x3", i % 2] for i in range(8)], "reduce_concat": [2, 3, 4, 5]}
    return {"genotype": g, "history": hist, "final": {}}


def bench_overhead(args, root: str) -> dict:
    import ray

    overrides = [f"storage_path={root}", "name=overhead", f"num_samples={args.trials}",
                 f"max_concurrent={args.concurrent}", "asha.enabled=false", "retrain.top_k=0", "dashboard=false",
                 "verbose=0", f"search.epochs={args.epochs}", "search.device=cpu", *args.set]
    cfg = load_sweep_config(overrides=overrides)
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = run_sweep(cfg, echo=False)
    sweep_s = time.perf_counter() - t0
    ray.shutdown()
    import pandas as pd

    df = pd.read_parquet(out.table_parquet)
    params = cfg.tune_param_names()
    configs = [{p: row[f"config/{p}"] for p in params} for _, row in df.iterrows()]
    def direct(threads: int) -> list[float]:
        torch.set_num_threads(threads)
        times = []
        for c in configs:
            c = {k: (int(v) if k in ("s", "m") or k.startswith("m_") else float(v)) for k, v in c.items()}
            s0 = time.perf_counter()
            run_search(cfg.method, build_search_config(cfg, c), progress=False)
            times.append(time.perf_counter() - s0)
        return times

    in_trial = float(df["search_session_s"].sum())  # the searches' own time inside the trials
    per = direct(1)  # what each trial runs: one search on one CPU
    seq = sum(per)
    ideal = seq / args.concurrent
    out_d = {"trials": args.trials, "concurrent": args.concurrent, "cpus": args.cpus, "epochs": args.epochs,
             "ray_init_s": init_s, "sweep_s": sweep_s, "tune_fit_s": out.tune_time_s,
             "direct_per_search_s": per, "direct_sequential_s": seq, "direct_s": ideal,
             "overhead_ratio": sweep_s / ideal, "overhead_ratio_tune_fit": out.tune_time_s / ideal,
             "in_trial_search_s": in_trial,
             "orchestration_ratio": sweep_s / (in_trial / args.concurrent),
             "target_overhead_ratio": 1.10}
    if args.direct_threads:
        per_t = direct(args.direct_threads)
        out_d.update({"direct_threads": args.direct_threads, "direct_multithread_s": sum(per_t),
                      "overhead_ratio_vs_multithread": sweep_s / sum(per_t)})
    return out_d


def bench_throughput(args, root: str) -> dict:
    import pandas as pd
    import ray
    from ray.cluster_utils import Cluster

    os.environ["ISTANAS_BENCH_EPOCH_S"] = str(args.short_epoch_s)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    slots = 2 * args.nodes
    overrides = [f"storage_path={root}", "name=throughput", f"num_samples={args.short_trials}",
                 f"max_concurrent={slots}", "asha.enabled=false", "retrain.top_k=0", "dashboard=false",
                 "verbose=0", f"search.epochs={args.short_epochs}", "search.device=cpu", "checkpoint_every=1000"]
    # run_sweep joins the cluster itself (the --address path: code shipped as runtime_env py_modules)
    cfg = load_sweep_config(overrides=overrides + [f"address={cluster.address}"])
    try:
        t0 = time.perf_counter()
        out = run_sweep(cfg, search_fn=short_search, echo=False)
        total_s = time.perf_counter() - t0
        df = pd.read_parquet(out.table_parquet)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    trial_s = args.short_epochs * args.short_epoch_s
    rate = len(df) / out.tune_time_s
    ideal = slots / trial_s
    return {"nodes": args.nodes, "cpus_per_node": 2, "slots": slots, "trials": int(len(df)),
            "trial_duration_s": trial_s, "tune_fit_s": out.tune_time_s, "sweep_s": total_s,
            "trial_time_total_s_mean": float(df["search_time_s"].mean()),
            "trials_per_s": rate, "ideal_trials_per_s": ideal, "efficiency": rate / ideal,
            "trials_per_node": dict(collections.Counter(df["node_id"].astype(str).str[:8]))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--trials", type=int, default=4, help="searches in the overhead sweep")
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray, and torch threads of the baseline")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each search")
    ap.add_argument("--set", action="append", default=[], help="extra sweep overrides (key=value)")
    ap.add_argument("--direct-threads", type=int, default=0,
                    help="also time the searches one after another with this many torch threads (0 = skip)")
    ap.add_argument("--nodes", type=int, default=3, help="simulated worker nodes (2 CPUs each)")
    ap.add_argument("--short-trials", type=int, default=24)
    ap.add_argument("--short-epochs", type=int, default=3)
    ap.add_argument("--short-epoch-s", type=float, default=0.5)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args(argv)
    res: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                             "platform": platform.platform(), "loadavg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as root:
        if not args.skip_overhead:
            res["overhead"] = bench_overhead(args, root)
            o = res["overhead"]
            print(f"overhead: sweep {o['sweep_s']:.1f} s (tune fit {o['tune_fit_s']:.1f} s) vs the same searches run "
                  f"directly {o['direct_sequential_s']:.1f} s / {o['concurrent']} = {o['direct_s']:.1f} s -> "
                  f"overhead_ratio {o['overhead_ratio']:.3f} (target <= 1.10); ray.init {o['ray_init_s']:.1f} s; "
                  f"sweep / (time inside the trials' searches / {o['concurrent']}) = "
                  f"{o['orchestration_ratio']:.3f}",
                  flush=True)
        if not args.skip_throughput:
            res["throughput"] = bench_throughput(args, root)
            t = res["throughput"]
            print(f"throughput: {t['trials']} trials of {t['trial_duration_s']:.1f} s on {t['nodes']} simulated "
                  f"nodes ({t['slots']} slots): {t['trials_per_s']:.2f} trials/s vs ideal "
                  f"{t['ideal_trials_per_s']:.2f} (efficiency {t['efficiency']:.2f}; a trial took "
                  f"{t['trial_time_total_s_mean']:.2f} s in its worker); per node "
                  f"{t['trials_per_node']}", flush=True)
    res["machine"]["loadavg_end"] = os.getloadavg()  # other work on the machine distorts the timings
    atomic_write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
