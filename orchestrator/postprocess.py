"""Post-processing of a sweep: a Ray actor retrains the top-k genotypes as Ray tasks, then writes the results.

:func:`create_postprocessor` makes the actor (pinned to the driver's node, so that local result paths mean the same
to both, and holding no CPU).  The driver creates it when the sweep's tail begins (every trial has started and one
has ended, so a slot is free: its start-up and :meth:`SweepPostprocessor.warm_up`, the imports of the tables,
plots and importances, run on that slot while the last trials finish), or after ``Tuner.fit`` if it has not yet.
The driver then hands it the trial records of the whole ``ResultGrid`` once (:func:`record_from_result`);
:meth:`SweepPostprocessor.finalize` picks the top-k distinct genotypes (:func:`orchestrator.results.select_top_k`),
retrains each over ``retrain.seeds`` (:func:`retrain_one`, one task per (genotype, seed), cached in
``results/retrain/<digest>_seed<k>.json`` so a resumed sweep does not redo them), and writes the table
(:mod:`orchestrator.results`), ``best_genotype.json`` and the report (:mod:`orchestrator.report`).  With a
NAS-Bench-201 ``table``, the cells of searches that ASHA stopped early (whose trial never reached its own look-up)
are looked up here, after every search ended (:func:`add_benchmark`).  The one-driver-per-sweep claim is
:mod:`orchestrator.claim`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import torch

from istanas.checkpoint import atomic_write_json, atomic_write_text
from istanas.config import to_dict
from istanas.retrain import retrain
from spaces.nb201 import open_nb201_table

from .cluster import copy_dir
from .metrics import SweepMetrics
from .report import preload, write_report
from .results import best_row, benchmark_metrics, build_table, error_reason, make_record, select_top_k, write_table
from .sweep_config import SweepConfig, build_retrain_config, build_search_config

# ----------------------------------------------------------------------------------------------------- records
def record_from_result(result: Any) -> dict[str, Any]:
    """Record of a ``ray.tune.Result`` of the final ``ResultGrid`` (trial dirs are named ``trial_<id>``)."""
    metrics = dict(result.metrics or {})
    tid = metrics.get("trial_id") or os.path.basename(str(result.path).rstrip("/")).replace("trial_", "", 1)
    status = "ERROR" if result.error is not None else "TERMINATED"
    return make_record(tid, status, result.config or {}, metrics, result.error)


def add_benchmark(records: list[dict], sweep: SweepConfig) -> list[dict]:
    """``records`` with the ``bench_*`` metrics of every cell not yet looked up (searches stopped early by ASHA:
    the cell they had when stopped); the table is opened once, after the Tune run.  Their ``objective`` stays what
    the searcher saw.  A cell that cannot be scored (not an NB201 genotype) keeps no ``bench_*`` metrics."""
    todo = [r for r in records
            if r["status"] != "ERROR" and r["metrics"].get("genotype") and "bench_arch" not in r["metrics"]]
    if sweep.table is None or not todo:
        return records
    table = open_nb201_table(sweep.table)
    for r in todo:
        try:
            r["metrics"].update(benchmark_metrics(table, r["metrics"]["genotype"]))
        except ValueError:
            continue
    return records


# ---------------------------------------------------------------------------------------------------- retrain
def retrain_one(sweep_dict: dict, genotype_json: str, seed: int, search_data: Optional[dict]) -> dict:
    """One retraining run (a Ray task with ``retrain.resources``): the retrain config of the sweep for this
    genotype and seed, :func:`istanas.retrain.retrain`, and the numbers the table needs."""
    sweep = SweepConfig.from_dict(sweep_dict)
    torch.set_num_threads(max(1, int(sweep.retrain.resources.cpu)))
    cfg = build_retrain_config(sweep, genotype_json, seed, search_data, validate=True)
    t0 = time.perf_counter()
    res = retrain(cfg, progress=False)
    return {"seed": int(seed), "test_acc": float(res["test_acc"]), "best_test_acc": float(res["best_test_acc"]),
            "params_m": float(res["params_m"]), "flops_m": float(res["flops_m"]),
            "wall_time_s": float(res.get("session_time_s", time.perf_counter() - t0)),
            "epochs": int(res.get("epochs", cfg.epochs)), "device": str(res.get("device", "cpu")),
            "error": None}


# -------------------------------------------------------------------------------------------------------- actor
class SweepPostprocessor:
    """The sweep's post-processing actor (see the module docstring).  Methods are called through Ray."""

    def __init__(self, sweep_dict: dict):
        self.sweep_dict = dict(sweep_dict)
        self.cfg = SweepConfig.from_dict(sweep_dict)
        self.metrics = SweepMetrics(self.cfg.name)
        self.out_dir = self.cfg.local_results_dir
        try:
            self.search_data = to_dict(build_search_config(self.cfg, {}, validate=False).data)
        except Exception:
            self.search_data = None

    def warm_up(self) -> None:
        """Import what :meth:`finalize` needs and has not yet imported (plotting, Optuna's importances)."""
        preload()

    # ----- retraining
    def _cache_path(self, digest: str, seed: int) -> str:
        return os.path.join(self.out_dir, "retrain", f"{digest}_seed{seed}.json")

    def retrain_top_k(self, records: list[dict]) -> dict[str, list[dict]]:
        """Retrain the top-k distinct genotypes of ``records`` over the seeds (Ray tasks); cached runs are reused."""
        import ray

        top = select_top_k(records, self.cfg.retrain.top_k, self.cfg.mode)
        seeds = list(self.cfg.retrain.seeds)
        results: dict[str, list[dict]] = {}
        pending: dict[Any, tuple[str, int]] = {}
        res = self.cfg.retrain.resources
        task = ray.remote(retrain_one)
        for rec in top:
            digest, gjson = rec["metrics"]["genotype_digest"], rec["metrics"]["genotype"]
            results[digest] = []
            for seed in seeds:
                path = self._cache_path(digest, seed)
                if os.path.isfile(path):
                    with open(path, encoding="utf-8") as f:
                        results[digest].append(json.load(f))
                    continue
                ref = task.options(num_cpus=res.cpu, num_gpus=res.gpu, name=f"retrain-{digest}-seed{seed}") \
                    .remote(self.sweep_dict, gjson, seed, self.search_data)
                pending[ref] = (digest, seed)
        total = len(top) * len(seeds)
        done = total - len(pending)
        self.metrics.retrain_progress(done, total)
        if total:
            print(f"[sweep {self.cfg.name}] retraining {len(top)} genotype(s) x {len(seeds)} seed(s): "
                  f"{len(pending)} run(s) to go ({done} cached)", flush=True)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                digest, seed = pending.pop(ref)
                try:
                    out = ray.get(ref)
                    atomic_write_json(self._cache_path(digest, seed), out)
                except Exception as e:  # a failed retraining is reported in the table, the others go on
                    out = {"seed": seed, "error": error_reason(e), "test_acc": float("nan")}
                results[digest].append(out)
                done += 1
                self.metrics.retrain_progress(done, total)
                self.metrics.retrain_finished()
                acc = out.get("test_acc", float("nan"))
                print(f"[sweep {self.cfg.name}] retrain {done}/{total}: genotype {digest} seed {seed} -> "
                      + (f"test_acc {acc:.4f}" if out.get("error") is None else f"failed: {out['error']}"),
                      flush=True)
        for digest in results:
            results[digest].sort(key=lambda r: r.get("seed", 0))
        return results

    # ----- the end
    def finalize(self, records: list[dict]) -> dict:
        """Retrain, aggregate, write the table, best genotype and report of the sweep's trial ``records`` (one per
        trial, from the final ``ResultGrid``); returns paths and the best trial."""
        records = add_benchmark(records, self.cfg)
        retrains = self.retrain_top_k(records)
        df = build_table(records, retrains, self.cfg)
        os.makedirs(self.out_dir, exist_ok=True)
        csv_path, pq_path = write_table(df, self.out_dir)
        best = best_row(df, by_retrain=self.cfg.objective != "benchmark")
        best_path = None
        if best is not None and best.get("genotype"):
            best_path = os.path.join(self.out_dir, "best_genotype.json")
            atomic_write_text(best_path, best["genotype"] + "\n")
        atomic_write_json(os.path.join(self.out_dir, "retrain_runs.json"), retrains)
        try:
            md, html = write_report(df, self.out_dir, self.cfg)
        except Exception as e:  # the table is the product; a plotting problem must not lose it
            print(f"[sweep {self.cfg.name}] report failed: {error_reason(e)}", flush=True)
            md = html = None
        uploaded = None
        if self.cfg.is_uri:
            uploaded = copy_dir(self.out_dir, f"{self.cfg.experiment_path}/results")
        return {"table_csv": csv_path, "table_parquet": pq_path, "report_md": md, "report_html": html,
                "best_genotype_path": best_path, "best": best, "results_dir": self.out_dir,
                "uploaded_to": uploaded, "num_trials": int(len(df)),
                "num_errors": int((df["status"] == "ERROR").sum()) if len(df) else 0,
                "retrained": {d: len(v) for d, v in retrains.items()}}


def create_postprocessor(sweep: SweepConfig):
    """The sweep's post-processing actor, pinned to this node (so the local results folder is the driver's), with
    no CPU of its own (its retraining tasks ask for ``retrain.resources``)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    cls = ray.remote(SweepPostprocessor)
    return cls.options(num_cpus=0, max_concurrency=4, max_restarts=0,
                       scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)) \
        .remote(sweep.to_dict())


__all__ = ["SweepPostprocessor", "create_postprocessor", "record_from_result", "retrain_one", "add_benchmark"]
