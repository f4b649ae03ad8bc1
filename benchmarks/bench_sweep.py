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
   ``--short-epoch-s`` s each, through the same trial adapter, Optuna, ASHA off), ``2 * nodes`` slots and
   ``max_concurrent: auto`` = 2 x slots (a suggested trial waits for each slot that frees; ``--set max_concurrent=N``).
   The sweep joins the cluster through its ``address`` (as ``--address`` does: the code travels as runtime_env
   py_modules).  Reported: trials per second over ``Tuner.fit``, the ideal rate (slots / trial duration), the
   efficiency, the mean trial time inside its worker, and how the trials spread over the nodes.

   Both the overhead and the throughput runs also record, per epoch, the time of the trial's
   ``on_epoch_end`` hook (``tune.report`` + the trial checkpoint when one is due) against the search's own epoch
   time (``hook_s_per_epoch``, ``hook_share``), measured inside the trials.
3. Processes.  The same searches (same configs, same seeds) run as ``--concurrent`` plain worker processes
   without Ray (a ``multiprocessing`` spawn pool, one torch thread each, the searches handed out one at a time as
   slots free up, like the sweep's trials): ``overhead_ratio_vs_processes = sweep time / processes time``.  The
   processes share the cores exactly as the trials do, so this ratio is what Ray and Tune add, without the
   contention that ``overhead_ratio`` (against the ideal split) also charges.  ``--repeats R`` runs R such pairs
   with one Optuna seed (the same configs each time), the order alternated (sweep then processes, processes then
   sweep, ...) so a drift of the machine's speed favours neither; the ratio is the median, and
   ``per_search_ratio_median`` compares each search inside its trial with the same config as a process.  Each
   search thread's CPU time and ``getrusage`` (context switches, page faults, niceness) is recorded on both
   sides, and :func:`decompose` splits each pair into fixed costs, preemption and per-epoch hooks:
   ``same_speed_ratio`` is the ratio had the searches needed the same CPU in both parts (the machine's speed
   drifts by more than 5 % between minutes).
4. Scale (``--scale``).  ``--scale-trials`` (1,000) stand-in trials of ``--scale-epochs`` x ``--scale-epoch-s``
   seconds on a simulated cluster (``ray.cluster_utils.Cluster``) of ``--scale-nodes`` (8) worker nodes of 2 CPUs:
   trials per second over ``Tuner.fit`` against the ideal (slots / trial duration), the same over the middle
   80 % of the trial ends (steady state, without start-up and tail), the driver's peak RSS during the sweep, the
   experiment folder's size on disk (and of Tune's experiment state files), the time of ``--resume`` of the
   finished experiment, and Optuna's ``suggest`` time at trial 1 / 100 / 1,000 (timed in the driver).
   ``--tune-env KEY=VALUE`` sets Tune environment variables for that run (e.g. ``TUNE_GLOBAL_CHECKPOINT_S=60``).

Usage: ``python benchmarks/bench_sweep.py --json bench-results/bench_sweep.json [--trials 4] [--epochs 2]``;
``python benchmarks/bench_sweep.py --json out.json --scale`` (the scale run alone).
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from typing import Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from istanas.checkpoint import atomic_write_json  # noqa: E402
from istanas.search import run_search  # noqa: E402
from orchestrator.sweep import run_sweep  # noqa: E402
from orchestrator.sweep_config import SweepConfig, build_search_config, load_sweep_config  # noqa: E402

PROFILE_DIR_ENV = "ISTANAS_BENCH_PROFILE_DIR"   # where the trials write their per-epoch hook timings


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


def _timed_hook(on_epoch_end, hook_s: list, hook_cpu: Optional[list] = None):
    """``on_epoch_end`` that appends the seconds each call takes (``tune.report`` + checkpoint) to ``hook_s``, and
    the calling thread's CPU seconds of it to ``hook_cpu``."""
    if on_epoch_end is None:
        return None

    def hook(metrics, state=None):
        t, c = time.perf_counter(), time.thread_time()
        on_epoch_end(metrics, state)
        hook_s.append(time.perf_counter() - t)
        if hook_cpu is not None:
            hook_cpu.append(time.thread_time() - c)

    return hook


USAGE_FIELDS = ("ru_utime", "ru_stime", "ru_minflt", "ru_majflt", "ru_nvcsw", "ru_nivcsw")


def thread_usage() -> dict[str, float]:
    """The calling thread's resource usage (``getrusage(RUSAGE_THREAD)``: user / system seconds, page faults,
    voluntary / involuntary context switches) and its niceness."""
    ru = resource.getrusage(resource.RUSAGE_THREAD)
    out = {f: float(getattr(ru, f)) for f in USAGE_FIELDS}
    out["nice"] = float(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    return out


def usage_delta(before: dict[str, float]) -> dict[str, float]:
    """:func:`thread_usage` now minus ``before`` (the niceness as it is now)."""
    now = thread_usage()
    return {k: (now[k] if k == "nice" else now[k] - before[k]) for k in now}


def _write_profile(kind: str, hook_s: list, total_s: float, cpu_s: float = 0.0,
                   usage: Optional[dict] = None, hook_cpu_s: Optional[list] = None) -> None:
    d = os.environ.get(PROFILE_DIR_ENV)
    if d:
        atomic_write_json(os.path.join(d, f"{kind}-{os.getpid()}-{time.time_ns()}.json"),
                          {"hook_s": hook_s, "hook_cpu_s": hook_cpu_s or [], "total_s": total_s, "cpu_s": cpu_s,
                           "usage": usage or {}, "t_end": time.time()})


def profiled_search(cfg, *, data=None, on_epoch_end=None, resume=None, progress=False):
    """The two-stage search (``run_search``) with its ``on_epoch_end`` hook timed (``$ISTANAS_BENCH_PROFILE_DIR``)."""
    hook_s: list = []
    hook_cpu: list = []
    t0, c0, u0 = time.perf_counter(), time.thread_time(), thread_usage()
    out = run_search("twostage", cfg, data=data, on_epoch_end=_timed_hook(on_epoch_end, hook_s, hook_cpu),
                     resume=resume, progress=progress)
    _write_profile("search", hook_s, time.perf_counter() - t0, time.thread_time() - c0, usage_delta(u0), hook_cpu)
    return out


def profiled_short_search(cfg, *, data=None, on_epoch_end=None, resume=None, progress=False):
    """:func:`short_search` with its hook timed."""
    hook_s: list = []
    t0 = time.perf_counter()
    out = short_search(cfg, on_epoch_end=_timed_hook(on_epoch_end, hook_s), resume=resume)
    _write_profile("short", hook_s, time.perf_counter() - t0)
    return out


def read_profiles(d: str) -> dict:
    """Per-epoch hook time against the searches' own epoch time, over every profile file in ``d``."""
    hooks, hook_cpu, totals, epochs, cpu, usage = [], [], 0.0, 0, 0.0, []
    for name in sorted(os.listdir(d)):
        if name.endswith(".json"):
            with open(os.path.join(d, name), encoding="utf-8") as f:
                p = json.load(f)
            hooks += p["hook_s"]
            hook_cpu += p.get("hook_cpu_s", [])
            totals += p["total_s"]
            cpu += p.get("cpu_s", 0.0)
            epochs += len(p["hook_s"])
            if p.get("usage"):
                usage.append(p["usage"])
    if not epochs:
        return {}
    own = (totals - sum(hooks)) / epochs
    return {"epochs_profiled": epochs, "hook_s_per_epoch": sum(hooks) / epochs,
            "hook_s_max": max(hooks), "search_epoch_s": own, "hook_share": sum(hooks) / max(totals, 1e-9),
            "search_thread_cpu_s": cpu, "search_wall_s": totals, "search_thread_usage": sum_usage(usage),
            "hook_wall_s": sum(hooks), "hook_cpu_s": sum(hook_cpu) if len(hook_cpu) == len(hooks) else None}


def sum_usage(usages: list[dict]) -> dict[str, float]:
    """The fields of several :func:`usage_delta` records summed (the niceness: the largest seen)."""
    keys = sorted({k for u in usages for k in u})
    return {k: (max if k == "nice" else sum)(u.get(k, 0.0) for u in usages) for k in keys}


def _conv(c: dict) -> dict:
    return {k: (int(v) if k in ("s", "m") or k.startswith("m_") else float(v)) for k, v in c.items()}


def _process_search(job: tuple[dict, dict]) -> tuple[float, float, dict]:
    """One search in a plain worker process (no Ray): one torch thread, as in a trial; returns its (wall, CPU
    seconds of the thread that ran it, :func:`usage_delta` of that thread)."""
    sweep_dict, config = job
    torch.set_num_threads(1)
    cfg = SweepConfig.from_dict(sweep_dict)
    t0, c0, u0 = time.perf_counter(), time.thread_time(), thread_usage()
    run_search(cfg.method, build_search_config(cfg, config), progress=False)
    return time.perf_counter() - t0, time.thread_time() - c0, usage_delta(u0)


def run_as_processes(cfg: SweepConfig, configs: list[dict], n: int) -> tuple[float, list[float], list[float], dict]:
    """(wall seconds, per-search wall seconds, per-search thread CPU seconds, summed thread usage) of ``configs``
    run by ``n`` spawned worker processes, one search at a time each, handed out as processes free up (start-up
    and imports of the workers included)."""
    ctx = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(n) as pool:
        per = list(pool.imap(_process_search, [(cfg.to_dict(), _conv(c)) for c in configs], chunksize=1))
    return time.perf_counter() - t0, [p[0] for p in per], [p[1] for p in per], sum_usage([p[2] for p in per])


def trial_start_order(experiment_path: str, trial_ids: list[str]) -> list[int]:
    """Indices of ``trial_ids`` in the order Tune started the trials (first report's timestamp minus its
    ``time_total_s``, from each trial's progress.csv)."""
    import pandas as pd

    start = {}
    for path in glob.glob(os.path.join(experiment_path, "trial_*", "progress.csv")):
        df = pd.read_csv(path)
        if len(df) and "trial_id" in df.columns:
            start[str(df["trial_id"].iloc[0])] = float(df["timestamp"].iloc[0] - df["time_total_s"].iloc[0])
    return sorted(range(len(trial_ids)), key=lambda i: (start.get(trial_ids[i], float("inf")), i))


def _sweep_part(cfg: SweepConfig, args, prof: str) -> dict:
    """One timed sweep on a fresh local Ray (``ray.init`` timed apart): its configs in the order the trials
    started, the searches' own time inside the trials, and the per-epoch hook profile."""
    import pandas as pd
    import ray

    os.makedirs(prof, exist_ok=True)
    os.environ[PROFILE_DIR_ENV] = prof   # the local Ray's workers inherit it
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = run_sweep(cfg, search_fn=profiled_search, echo=False)
    sweep_s = time.perf_counter() - t0
    ray.shutdown()
    os.environ.pop(PROFILE_DIR_ENV, None)
    df = pd.read_parquet(out.table_parquet)
    params = cfg.tune_param_names()
    order = trial_start_order(out.experiment_path, [str(t) for t in df["trial_id"]])
    in_trial = float(df["search_session_s"].sum())  # the searches' own time inside the trials
    return {"configs": [_conv({p: df.iloc[i][f"config/{p}"] for p in params}) for i in order],
            "ray_init_s": init_s, "sweep_s": sweep_s, "tune_fit_s": out.tune_time_s, "in_trial_search_s": in_trial,
            "in_trial_per_search_s": [float(df.iloc[i]["search_session_s"]) for i in order],
            "orchestration_ratio": sweep_s / (in_trial / args.concurrent), "per_epoch": read_profiles(prof),
            "loadavg_after_sweep": os.getloadavg()}


def _processes_part(cfg: SweepConfig, configs: list[dict], n: int) -> dict:
    proc_s, proc_per, proc_cpu, usage = run_as_processes(cfg, configs, n)
    return {"processes_s": proc_s, "processes_per_search_s": proc_per, "processes_per_search_cpu_s": proc_cpu,
            "processes_search_thread_usage": usage, "loadavg_after_processes": os.getloadavg()}


def _config_key(c: dict) -> tuple:
    return tuple(sorted((k, round(float(v), 12)) for k, v in c.items()))


def _same_configs(a: list[dict], b: list[dict]) -> bool:
    """Whether two config lists hold the same searches in the same order (floats to 12 digits)."""
    return [_config_key(c) for c in a] == [_config_key(c) for c in b]


def _per_search_ratio(run: dict, proc_configs: list[dict]) -> Optional[float]:
    """Median over the searches of (time inside its trial / time as a plain process), each search paired with
    the process that ran the same config; None if the sweep ran configs the processes did not."""
    proc = {_config_key(c): t for c, t in zip(proc_configs, run["processes_per_search_s"])}
    pairs = [(t, proc.get(_config_key(c))) for c, t in zip(run["configs"], run["in_trial_per_search_s"])]
    if any(p is None for _, p in pairs):
        return None
    return statistics.median(t / p for t, p in pairs)


def makespan(times: list[float], slots: int) -> float:
    """When the last of ``times`` ends if each starts, in list order, on the first of ``slots`` to free up."""
    free = [0.0] * slots
    for t in times:
        i = min(range(slots), key=free.__getitem__)
        free[i] += t
    return max(free)


def decompose(run: dict, slots: int) -> dict:
    """What a (sweep, processes) pair's ratio is made of, with the machine's speed drift taken out.

    ``fixed``: each side's wall time beyond its searches' own makespan (:func:`makespan` of the per-search times
    in start order: worker start, imports, Tune's set-up, post-processing; the processes' spawn and imports).
    ``preemption``: the processes' search thread CPU per wall second over the trials' (outside the hooks: the time
    a trial's search thread waits while Ray's daemons and the driver run).  ``hooks_per_search_s``: the trials'
    per-epoch report + checkpoint per second of their search.  ``same_speed_ratio``: the sweep's time had its
    searches needed the CPU they needed as processes, i.e.
    ``(processes' makespan x preemption x (1 + hooks) + sweep fixed) / processes' time``: the ratio without
    the drift of the searches' own speed between the two parts (the raw ratio ran 0.88-1.32 over 8 pairs of the
    same configs).  ``{}`` when the pair has no search profile."""
    pe = run.get("per_epoch") or {}
    if not pe.get("search_wall_s") or not sum(run["processes_per_search_s"]):
        return {}
    ms_t, ms_p = makespan(run["in_trial_per_search_s"], slots), makespan(run["processes_per_search_s"], slots)
    wall, cpu = pe["search_wall_s"], pe["search_thread_cpu_s"]
    hook_wall, hook_cpu = pe.get("hook_wall_s", 0.0), pe.get("hook_cpu_s")
    if hook_cpu is not None:  # the search's own part, the hooks taken out (their CPU and their waits)
        wall, cpu = wall - hook_wall, cpu - hook_cpu
    else:                     # older profiles: the hooks' time counted as CPU
        hook_wall = pe.get("hook_share", 0.0) * wall / (1 - pe.get("hook_share", 0.0))
    cpw_t = cpu / wall
    cpw_p = sum(run["processes_per_search_cpu_s"]) / sum(run["processes_per_search_s"])
    fixed_t, fixed_p = run["sweep_s"] - ms_t, run["processes_s"] - ms_p
    preempt = cpw_p / cpw_t
    hooks = hook_wall / wall
    same = (ms_p * preempt * (1 + hooks) + fixed_t) / run["processes_s"]
    return {"trials_makespan_s": ms_t, "processes_makespan_s": ms_p, "sweep_fixed_s": fixed_t,
            "processes_fixed_s": fixed_p, "preemption": preempt, "hooks_per_search_s": hooks,
            "same_speed_ratio": same}


def _median_or_none(xs) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def bench_overhead(args, root: str, save=lambda part: None) -> dict:
    """``--repeats`` pairs of (the sweep, the same searches as plain processes in the order the sweep started
    them), the order alternated (sweep first, then processes first, ...) so that a drift in the machine's speed
    favours neither; then the searches one after another (the ideal split).  ``save(part)`` is called with what
    is measured so far after each part."""
    prof_root = os.path.join(root, "profile-overhead")
    runs: list[dict] = []
    out_d: dict = {"trials": args.trials, "concurrent": args.concurrent, "cpus": args.cpus, "epochs": args.epochs,
                   "repeats": args.repeats, "target_overhead_ratio_vs_processes": 1.05,
                   "target_overhead_ratio": 1.10, "runs": runs}
    configs: list[dict] = []
    for rep in range(args.repeats):
        # One Optuna seed for every repeat: each sweep suggests the same configs.  Odd repeats run the processes
        # first (with the configs, in the start order, of the previous sweep), so a drift of the machine's speed
        # over the run favours neither side (A B B A ...).
        processes_first = rep % 2 == 1
        overrides = [f"storage_path={root}", f"name=overhead-{rep}", f"num_samples={args.trials}",
                     f"max_concurrent={args.concurrent}", "asha.enabled=false", "retrain.top_k=0", "dashboard=false",
                     "verbose=0", f"search.epochs={args.epochs}", "search.device=cpu", "seed=0", *args.set]
        cfg = load_sweep_config(overrides=overrides)
        run: dict = {"repeat": rep, "order": "processes, sweep" if processes_first else "sweep, processes"}
        runs.append(run)
        if processes_first:
            run.update(_processes_part(cfg, configs, args.concurrent))
            save(out_d)
        run.update(_sweep_part(cfg, args, os.path.join(prof_root, str(rep))))
        proc_configs = configs if processes_first else run["configs"]
        run["configs_match_processes"] = _same_configs(run["configs"], proc_configs)
        configs = run["configs"]
        save(out_d)
        if not processes_first:
            run.update(_processes_part(cfg, configs, args.concurrent))
        sweep_s, proc_s = run["sweep_s"], run["processes_s"]
        run.update({"overhead_ratio_vs_processes": sweep_s / proc_s,
                    "overhead_ratio_vs_processes_tune_fit": run["tune_fit_s"] / proc_s,
                    "per_search_ratio_median": _per_search_ratio(run, proc_configs)})
        cpu_trials, wall_trials = run["per_epoch"].get("search_thread_cpu_s"), run["per_epoch"].get("search_wall_s")
        if cpu_trials:  # the same searches' CPU time: inside the trials against as processes (more work, or waits?)
            cpu_proc = sum(run["processes_per_search_cpu_s"])
            run.update({"search_cpu_ratio": cpu_trials / cpu_proc,
                        "trial_search_cpu_per_wall": cpu_trials / wall_trials,
                        "process_search_cpu_per_wall": cpu_proc / sum(run["processes_per_search_s"])})
            run.update(decompose(run, args.concurrent))
        save(out_d)
        print(f"overhead repeat {rep} ({run['order']}): sweep {sweep_s:.1f} s (tune fit {run['tune_fit_s']:.1f} s, "
              f"in-trial searches {[round(x) for x in run['in_trial_per_search_s']]} s) vs {args.concurrent} plain "
              f"processes {proc_s:.1f} s ({[round(x) for x in run['processes_per_search_s']]} s) -> "
              f"{sweep_s / proc_s:.3f} (same speed: {run.get('same_speed_ratio', float('nan')):.3f})", flush=True)
    ratios = [r["overhead_ratio_vs_processes"] for r in runs]
    last = runs[-1]
    out_d.update({"ray_init_s": last["ray_init_s"], "sweep_s": last["sweep_s"], "tune_fit_s": last["tune_fit_s"],
                  "in_trial_search_s": last["in_trial_search_s"], "orchestration_ratio": last["orchestration_ratio"],
                  "processes_s": last["processes_s"], "per_epoch": last["per_epoch"],
                  "overhead_ratio_vs_processes": statistics.median(ratios),
                  "overhead_ratio_vs_processes_runs": ratios,
                  "per_search_ratio_median": _median_or_none(r["per_search_ratio_median"] for r in runs),
                  "same_speed_ratio": _median_or_none(r.get("same_speed_ratio") for r in runs),
                  "same_speed_ratio_runs": [r.get("same_speed_ratio") for r in runs],
                  "overhead_ratio_vs_processes_tune_fit": statistics.median(
                      r["overhead_ratio_vs_processes_tune_fit"] for r in runs)})
    save(out_d)
    if args.skip_direct:
        return out_d

    def direct(threads: int) -> list[float]:
        torch.set_num_threads(threads)
        times = []
        for c in configs:
            s0 = time.perf_counter()
            run_search(cfg.method, build_search_config(cfg, c), progress=False)
            times.append(time.perf_counter() - s0)
        return times

    per = direct(1)  # what each trial runs: one search on one CPU
    seq = sum(per)
    ideal = seq / args.concurrent
    out_d.update({"direct_per_search_s": per, "direct_sequential_s": seq, "direct_s": ideal,
                  "overhead_ratio": last["sweep_s"] / ideal, "overhead_ratio_tune_fit": last["tune_fit_s"] / ideal})
    if args.direct_threads:
        per_t = direct(args.direct_threads)
        out_d.update({"direct_threads": args.direct_threads, "direct_multithread_s": sum(per_t),
                      "overhead_ratio_vs_multithread": last["sweep_s"] / sum(per_t)})
    return out_d


class _PeakRSS:
    """The peak resident memory of this process while the block runs (sampled from /proc every 0.2 s)."""

    def __enter__(self) -> "_PeakRSS":
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _SuggestTimer:
    """Times every ``OptunaSearch.suggest`` call in this driver (the searcher runs here) while the block runs."""

    def __enter__(self) -> "_SuggestTimer":
        from ray.tune.search.optuna import OptunaSearch

        self.times: list[float] = []
        self._cls, self._orig = OptunaSearch, OptunaSearch.suggest
        orig, times = self._orig, self.times

        def suggest(searcher, trial_id):
            t = time.perf_counter()
            out = orig(searcher, trial_id)
            if out is not None:
                times.append(time.perf_counter() - t)
            return out

        OptunaSearch.suggest = suggest
        return self

    def __exit__(self, *exc) -> None:
        self._cls.suggest = self._orig

    def at(self, k: int) -> Optional[float]:
        """Median time of suggestions k-2 .. k+2 (1-based), None when fewer were made."""
        if len(self.times) < k:
            return None
        lo, hi = max(0, k - 3), min(len(self.times), k + 2)
        return statistics.median(self.times[lo:hi])


def _du(path: str, pattern: str = "") -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            if pattern in f:
                try:
                    total += os.path.getsize(os.path.join(d, f))
                except OSError:
                    pass
    return total


def worker_ends(profile_dir: str) -> dict[str, list[float]]:
    """Each trial worker's (pid's) sorted search end times, from the profile files' names and contents."""
    out: dict[str, list[float]] = collections.defaultdict(list)
    for path in glob.glob(os.path.join(profile_dir, "*.json")):
        with open(path, encoding="utf-8") as f:
            t = json.load(f).get("t_end")
        if isinstance(t, (int, float)):
            out[os.path.basename(path).split("-")[1]].append(float(t))
    return {k: sorted(v) for k, v in out.items()}


def trial_end_times(profile_dir: str) -> list[float]:
    """Sorted wall-clock end times of every trial's search, from the profile file each trial wrote when its search
    returned (independent of Tune's result loggers and of the sweep's table columns)."""
    ends = []
    for path in glob.glob(os.path.join(profile_dir, "*.json")):
        with open(path, encoding="utf-8") as f:
            t = json.load(f).get("t_end")
        if isinstance(t, (int, float)):
            ends.append(float(t))
    return sorted(ends)


def cluster_sweep(root: str, name: str, *, nodes: int, trials: int, epochs: int, epoch_s: float,
                  overrides: list[str] = (), tune_env: list[str] = (), resume: bool = False) -> dict:
    """``trials`` stand-in trials (``epochs`` x ``epoch_s`` s, hooks timed) on a simulated cluster of ``nodes``
    worker nodes of 2 CPUs (a head without CPUs), ``2 * nodes`` at a time, joined by address as ``--address``
    does; with ``resume`` also the time of ``--resume`` of the finished experiment."""
    import pandas as pd
    import ray
    from ray.cluster_utils import Cluster

    prof = os.path.join(root, f"profile-{name}")
    os.makedirs(prof, exist_ok=True)
    env = {"ISTANAS_BENCH_EPOCH_S": str(epoch_s), PROFILE_DIR_ENV: prof}
    for kv in tune_env:
        k, _, v = kv.partition("=")
        env[k] = v
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)          # the driver's Tune reads TUNE_*; the nodes' workers inherit the rest
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    slots = 2 * nodes
    # twice the slots: a suggested trial waits (its placement group requested) for every slot that frees up
    base = [f"storage_path={root}", f"name={name}", f"num_samples={trials}", "max_concurrent=auto",
            "asha.enabled=false", "retrain.top_k=0", "dashboard=false", "verbose=0", f"search.epochs={epochs}",
            "search.device=cpu", "checkpoint_every=1000", *overrides]
    cfg = load_sweep_config(overrides=base + [f"address={cluster.address}"])
    res: dict = {}
    try:
        with _PeakRSS() as mem, _SuggestTimer() as sug:
            t0, wall0 = time.perf_counter(), time.time()
            out = run_sweep(cfg, search_fn=profiled_short_search, echo=False)
            total_s = time.perf_counter() - t0
        df = pd.read_parquet(out.table_parquet)
        if resume:
            t0 = time.perf_counter()
            again = run_sweep(cfg, resume=True, search_fn=profiled_short_search, echo=False)
            res["resume_s"] = time.perf_counter() - t0
            res["resume_trials"] = again.num_trials
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    trial_s = epochs * epoch_s
    rate = len(df) / out.tune_time_s
    ideal = slots / trial_s
    res.update({"nodes": nodes, "cpus_per_node": 2, "slots": slots, "trials": int(len(df)),
                "max_concurrent": out.max_concurrent, "loadavg_end": os.getloadavg(),
                "trial_duration_s": trial_s, "tune_fit_s": out.tune_time_s, "sweep_s": total_s,
                "trial_time_total_s_mean": float(df["search_time_s"].mean()),
                "trials_per_s": rate, "ideal_trials_per_s": ideal, "efficiency": rate / ideal,
                "trials_per_node": dict(collections.Counter(df["node_id"].astype(str).str[:8])),
                "driver_rss_start_mb": mem.start / 2**20, "driver_rss_peak_mb": mem.peak / 2**20,
                "experiment_mb": _du(cfg.experiment_path) / 2**20,
                "experiment_state_mb": _du(cfg.experiment_path, "experiment_state") / 2**20,
                "tune_env": list(tune_env), "overrides": list(overrides),
                "suggest_s": {str(k): sug.at(k) for k in (1, 100, 1000)}, "suggestions": len(sug.times),
                "per_epoch": read_profiles(prof)})
    ends = trial_end_times(prof)
    res["trial_ends_found"] = len(ends)
    if ends:  # the first wave's start-up (workers importing Tune + torch) and the last trial's end, from run_sweep's start
        res["first_trial_end_s"] = ends[0] - wall0
        res["last_trial_end_s"] = ends[-1] - wall0
        res["workers"] = sorted(([len(v), round(v[0] - wall0, 2), round(v[-1] - wall0, 2)]
                                 for v in worker_ends(prof).values()), key=lambda w: w[1])  # [trials, first, last end]
    if len(ends) >= 10:
        a, b = ends[len(ends) // 10], ends[(9 * len(ends)) // 10]
        n = (9 * len(ends)) // 10 - len(ends) // 10
        res["steady_trials_per_s"] = n / max(b - a, 1e-9)
        res["steady_efficiency"] = res["steady_trials_per_s"] / ideal
    return res


def bench_throughput(args, root: str) -> dict:
    return cluster_sweep(root, "throughput", nodes=args.nodes, trials=args.short_trials, epochs=args.short_epochs,
                         epoch_s=args.short_epoch_s, overrides=args.set, tune_env=args.tune_env)


def bench_scale(args, root: str) -> dict:
    return cluster_sweep(root, "scale", nodes=args.scale_nodes, trials=args.scale_trials, epochs=args.scale_epochs,
                         epoch_s=args.scale_epoch_s, overrides=args.set, tune_env=args.tune_env, resume=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--trials", type=int, default=4, help="searches in the overhead sweep")
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray, and torch threads of the baseline")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each search")
    ap.add_argument("--set", action="append", default=[], help="extra sweep overrides (key=value)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="overhead: this many (sweep, plain processes) pairs of the same configs (one Optuna seed), "
                         "the order alternated (sweep first, then processes first, ...); the ratio is their median")
    ap.add_argument("--skip-direct", action="store_true",
                    help="overhead: skip the one-after-another run (overhead_ratio, the ideal split)")
    ap.add_argument("--direct-threads", type=int, default=0,
                    help="also time the searches one after another with this many torch threads (0 = skip)")
    ap.add_argument("--nodes", type=int, default=3, help="simulated worker nodes (2 CPUs each)")
    ap.add_argument("--short-trials", type=int, default=24)
    ap.add_argument("--short-epochs", type=int, default=3)
    ap.add_argument("--short-epoch-s", type=float, default=0.5)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--scale", action="store_true", help="run the scale benchmark alone (see the module doc)")
    ap.add_argument("--scale-trials", type=int, default=1000)
    ap.add_argument("--scale-nodes", type=int, default=8)
    ap.add_argument("--scale-epochs", type=int, default=2)
    ap.add_argument("--scale-epoch-s", type=float, default=1.0)
    ap.add_argument("--tune-env", action="append", default=[], metavar="KEY=VALUE",
                    help="Tune environment variables for the cluster runs (repeatable)")
    args = ap.parse_args(argv)
    for kv in args.tune_env:
        if "=" not in kv or not kv.split("=", 1)[0].startswith("TUNE_"):
            ap.error(f"--tune-env: expected TUNE_NAME=VALUE, got {kv!r}")
    if args.repeats < 1:
        ap.error(f"--repeats: must be >= 1, got {args.repeats}")
    if args.scale:
        args.skip_overhead = args.skip_throughput = True
    res: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                             "platform": platform.platform(), "loadavg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as root:
        def save(part: dict) -> None:  # a partial result on disk after each measured part
            res["overhead"] = dict(part, partial=True)
            atomic_write_json(args.json, res)

        if not args.skip_overhead:
            res["overhead"] = bench_overhead(args, root, save)
            o = res["overhead"]
            ideal = (f"vs the same searches run directly {o['direct_sequential_s']:.1f} s / {o['concurrent']} = "
                     f"{o['direct_s']:.1f} s -> overhead_ratio {o['overhead_ratio']:.3f} (target <= 1.10); "
                     if "direct_s" in o else "")
            print(f"overhead: sweep {o['sweep_s']:.1f} s (tune fit {o['tune_fit_s']:.1f} s) {ideal}ray.init "
                  f"{o['ray_init_s']:.1f} s; sweep / (time inside the trials' searches / {o['concurrent']}) = "
                  f"{o['orchestration_ratio']:.3f}; overhead_ratio_vs_processes (median of "
                  f"{len(o['overhead_ratio_vs_processes_runs'])}) {o['overhead_ratio_vs_processes']:.3f} "
                  f"{[round(r, 3) for r in o['overhead_ratio_vs_processes_runs']]} (target <= 1.05), with the "
                  f"searches' speed drift taken out {o.get('same_speed_ratio') or float('nan'):.3f}; per epoch: "
                  f"{o['per_epoch']}", flush=True)
        if not args.skip_throughput:
            res["throughput"] = bench_throughput(args, root)
            t = res["throughput"]
            print(f"throughput: {t['trials']} trials of {t['trial_duration_s']:.1f} s on {t['nodes']} simulated "
                  f"nodes ({t['slots']} slots): {t['trials_per_s']:.2f} trials/s vs ideal "
                  f"{t['ideal_trials_per_s']:.2f} (efficiency {t['efficiency']:.2f}; a trial took "
                  f"{t['trial_time_total_s_mean']:.2f} s in its worker); per node "
                  f"{t['trials_per_node']}", flush=True)
        if args.scale:
            res["scale"] = bench_scale(args, root)
            c = res["scale"]
            print(f"scale: {c['trials']} trials of {c['trial_duration_s']:.1f} s on {c['nodes']} simulated nodes "
                  f"({c['slots']} slots): {c['trials_per_s']:.2f} trials/s vs ideal {c['ideal_trials_per_s']:.2f} "
                  f"(efficiency {c['efficiency']:.2f}, steady {c.get('steady_efficiency', float('nan')):.2f}); "
                  f"driver peak RSS {c['driver_rss_peak_mb']:.0f} MB; experiment {c['experiment_mb']:.1f} MB "
                  f"(state {c['experiment_state_mb']:.1f} MB); resume {c['resume_s']:.1f} s; Optuna suggest "
                  f"{c['suggest_s']}", flush=True)
    res["machine"]["loadavg_end"] = os.getloadavg()  # other work on the machine distorts the timings
    atomic_write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
