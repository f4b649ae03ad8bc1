"""Post-processing: one named Ray actor per sweep collects finished trials, retrains the top-k, writes the table.

:class:`SweepPostprocessor` (created by :func:`create_postprocessor` as the named actor
``istanas-sweep-<name>``, pinned to the driver's node so that local result paths mean the same thing to both)
receives trial records (:func:`record_from_trial`, :func:`record_from_result`) from the driver's Tune callback
while the sweep runs and, once more, from the final ``ResultGrid`` (records are keyed by trial id, so every trial
counts exactly once, also after ``--resume``).  :meth:`SweepPostprocessor.finalize` then

1. de-duplicates identical genotypes (same ``genotype_digest``; the best trial of a group represents it),
2. picks the top-k distinct genotypes by the sweep's objective, searches that ran to their end first, then those
   ASHA stopped early (:func:`select_top_k`),
3. retrains each over ``retrain.seeds``, one Ray task per (genotype, seed) with ``retrain.resources``
   (:func:`retrain_one`; finished runs are cached in ``results/retrain/<digest>_seed<k>.json``, so a resumed
   sweep does not redo them),
4. aggregates everything into one table (:func:`build_table`: trial config, genotype JSON and hash, search
   metrics, retrain accuracy mean and std over seeds, parameters, FLOPs, CPU/GPU hours) written atomically as
   ``sweep_results.csv`` and ``sweep_results.parquet``, plus ``best_genotype.json`` and the Markdown/HTML report
   (:mod:`orchestrator.report`).
"""
from __future__ import annotations

import io
import json
import math
import os
import time
from typing import Any, Iterable, Mapping, Optional

from .metrics import SweepMetrics
from .sweep_config import SweepConfig, build_retrain_config, build_search_config

ACTOR_PREFIX = "istanas-sweep-"
NAMESPACE = "istanas"
TABLE_NAME = "sweep_results"
SEARCH_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "support_churn")


def actor_name(sweep_name: str) -> str:
    return ACTOR_PREFIX + sweep_name


# ----------------------------------------------------------------------------------------------------- records
def error_reason(err: Any) -> Optional[str]:
    """A one-line reason of a trial's error: the innermost exception's ``Type: message``."""
    if err is None:
        return None
    seen = 0
    e = err
    while seen < 8:
        cause = getattr(e, "cause", None) or getattr(e, "__cause__", None)
        if cause is None or cause is e:
            break
        e, seen = cause, seen + 1
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if e is not err or not lines:
        msg = lines[-1] if lines else ""
        return f"{type(e).__name__}: {msg}" if msg and not msg.startswith(type(e).__name__) else (msg or
                                                                                                 type(e).__name__)
    for ln in reversed(lines):  # a traceback's last line is "Type: message"
        if ":" in ln and not ln.startswith("File "):
            return ln
    return lines[-1]


def _clean_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in (config or {}).items() if isinstance(v, (int, float, str, bool))}


def make_record(trial_id: str, status: str, config: Mapping[str, Any], metrics: Mapping[str, Any],
                error: Any = None) -> dict[str, Any]:
    """A trial record: ``trial_id``, ``status`` (TERMINATED / ERROR), ``config`` (sampled values), ``metrics``
    (the last report), ``error`` (reason or None), ``search_done`` (the search ran to its end; otherwise it was
    stopped early by ASHA or failed)."""
    m = {k: v for k, v in (metrics or {}).items()
         if isinstance(v, (int, float, str, bool)) and not k.startswith("config/")}
    done = bool(m.get("search_done", 0))
    return {"trial_id": str(trial_id), "status": str(status), "config": _clean_config(config), "metrics": m,
            "error": error_reason(error) if error is not None and not isinstance(error, str) else error,
            "search_done": done}


def record_from_trial(trial: Any) -> dict[str, Any]:
    """Record of a ``ray.tune.experiment.Trial`` (in a Tune callback)."""
    err = None
    if trial.status == "ERROR":
        try:
            err = trial.get_pickled_error() or trial.get_error()
        except Exception:  # pragma: no cover - the error file may not be there yet
            err = "error (see the trial's error.txt)"
    return make_record(trial.trial_id, trial.status, trial.config, trial.last_result or {}, err)


def record_from_result(result: Any) -> dict[str, Any]:
    """Record of a ``ray.tune.Result`` of the final ``ResultGrid`` (trial dirs are named ``trial_<id>``)."""
    metrics = dict(result.metrics or {})
    tid = metrics.get("trial_id") or os.path.basename(str(result.path).rstrip("/")).replace("trial_", "", 1)
    status = "ERROR" if result.error is not None else "TERMINATED"
    return make_record(tid, status, result.config or {}, metrics, result.error)


# --------------------------------------------------------------------------------------------------- selection
def _objective(rec: Mapping[str, Any]) -> float:
    v = rec["metrics"].get("objective")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else float("nan")


def candidates(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Trials that did not fail and have a genotype and a finite objective (searches stopped early by ASHA
    included, with the genotype and objective they had when stopped)."""
    out = []
    for r in records:
        if r["status"] != "ERROR" and r["metrics"].get("genotype_digest") and math.isfinite(_objective(r)):
            out.append(dict(r))
    return out


def _rank_key(r: Mapping[str, Any], sign: float) -> tuple:
    """Finished searches before stopped-early ones, then the objective (best first), then record order."""
    return (not r["search_done"], -sign * _objective(r), r["_order"])


def dedupe(records: Iterable[Mapping[str, Any]], mode: str = "max") -> tuple[list[dict], dict[str, str]]:
    """Group candidates by genotype digest: (representatives best-first, {trial_id: representative trial_id}).

    Ranking: searches that ran to their end come first, by objective; searches stopped early by ASHA follow, by
    the objective they had when stopped (their genotypes only fill top-k slots that finished searches leave).
    A group's representative is its best-ranked trial (ties: the earlier record)."""
    sign = 1.0 if mode == "max" else -1.0
    groups: dict[str, list[dict]] = {}
    for i, r in enumerate(candidates(records)):
        r["_order"] = i
        groups.setdefault(r["metrics"]["genotype_digest"], []).append(r)
    reps, rep_of = [], {}
    for members in groups.values():
        best = min(members, key=lambda r: _rank_key(r, sign))
        reps.append(best)
        for r in members:
            rep_of[r["trial_id"]] = best["trial_id"]
    reps.sort(key=lambda r: _rank_key(r, sign))
    return reps, rep_of


def select_top_k(records: Iterable[Mapping[str, Any]], k: int, mode: str = "max") -> list[dict]:
    """The ``k`` best distinct genotypes (their representative trials), best first."""
    reps, _ = dedupe(records, mode)
    return reps[:max(0, k)]


# ---------------------------------------------------------------------------------------------------- retrain
def retrain_one(sweep_dict: dict, genotype_json: str, seed: int, search_data: Optional[dict]) -> dict:
    """One retraining run (a Ray task with ``retrain.resources``): the retrain config of the sweep for this
    genotype and seed, :func:`istanas.retrain.retrain`, and the numbers the table needs."""
    import torch

    from istanas.retrain import retrain

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


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))


def summarize_retrains(runs: list[dict]) -> dict[str, Any]:
    """Mean and sample std (ddof 1; NaN for one seed) of the test accuracy over the successful seeds."""
    ok = [r for r in runs if r.get("error") is None and math.isfinite(r.get("test_acc", float("nan")))]
    accs = [float(r["test_acc"]) for r in ok]
    first = ok[0] if ok else {}
    return {
        "retrain_acc_mean": sum(accs) / len(accs) if accs else float("nan"),
        "retrain_acc_std": _std(accs),
        "retrain_seeds": len(accs),
        "retrain_accs": json.dumps([round(a, 6) for a in accs]),
        "retrain_errors": "; ".join(f"seed {r.get('seed')}: {r['error']}" for r in runs if r.get("error")) or None,
        "params_m": float(first.get("params_m", float("nan"))),
        "flops_m": float(first.get("flops_m", float("nan"))),
        "retrain_wall_s": float(sum(r.get("wall_time_s", 0.0) for r in runs)),
    }


# ------------------------------------------------------------------------------------------------------- table
def build_table(records: Iterable[Mapping[str, Any]], retrains: Mapping[str, list[dict]], sweep: SweepConfig):
    """One row per trial (a pandas DataFrame, best objective first; errors last).

    Columns: ``trial_id, status, search_done, stopped_early, error``; ``config/<param>``; ``genotype_digest,
    genotype, duplicate_of, unique_rank``; ``objective`` and the search metrics, ``search_epochs``, ``search_time_s`` (Tune's time of the trial),
    ``search_session_s`` (time inside the search function, last session); ``retrained, retrain_acc_mean,
    retrain_acc_std, retrain_seeds, retrain_accs, retrain_errors, params_m, flops_m``; ``search_cpu_hours,
    search_gpu_hours, retrain_cpu_hours, retrain_gpu_hours, cpu_hours, gpu_hours`` (resources x wall time;
    a genotype's retraining is counted once, on its representative's row)."""
    import pandas as pd

    records = list(records)
    reps, rep_of = dedupe(records, sweep.mode)
    rank = {r["trial_id"]: i + 1 for i, r in enumerate(reps)}
    res_t, res_r = sweep.resources_per_trial, sweep.retrain.resources
    params = sweep.tune_param_names()
    rows = []
    for rec in records:
        m = rec["metrics"]
        tid = rec["trial_id"]
        row: dict[str, Any] = {"trial_id": tid, "status": rec["status"], "search_done": bool(rec["search_done"]),
                               "stopped_early": rec["status"] != "ERROR" and not rec["search_done"],
                               "error": rec.get("error")}
        for p in params:
            row[f"config/{p}"] = rec["config"].get(p)
        digest = m.get("genotype_digest") or None
        rep = rep_of.get(tid)
        row.update({"genotype_digest": digest, "genotype": m.get("genotype") or None,
                    "duplicate_of": rep if rep is not None and rep != tid else None,
                    "unique_rank": rank.get(tid)})
        row["objective"] = _objective(rec)
        for k in SEARCH_METRICS:
            v = m.get(k)
            row[k] = float(v) if isinstance(v, (int, float)) else float("nan")
        for k in ("tenas_score", "tenas_ntk_cond", "tenas_linear_regions"):
            if k in m:
                row[k] = float(m[k])
        row["search_epochs"] = int(m.get("epoch", 0) or 0)
        search_s = float(m.get("time_total_s", 0.0) or 0.0)
        row["search_time_s"] = search_s
        v = m.get("search_session_s")
        row["search_session_s"] = float(v) if isinstance(v, (int, float)) else float("nan")
        runs = retrains.get(digest or "", []) if digest else []
        summ = summarize_retrains(runs) if runs else None
        row["retrained"] = bool(summ and summ["retrain_seeds"] > 0)
        for k in ("retrain_acc_mean", "retrain_acc_std", "retrain_seeds", "retrain_accs", "retrain_errors",
                  "params_m", "flops_m"):
            row[k] = summ[k] if summ else (0 if k == "retrain_seeds" else None if k in ("retrain_accs",
                                                                                          "retrain_errors")
                                           else float("nan"))
        own = summ is not None and rep == tid
        retrain_s = summ["retrain_wall_s"] if own else 0.0
        row["search_cpu_hours"] = search_s * res_t.cpu / 3600.0
        row["search_gpu_hours"] = search_s * res_t.gpu / 3600.0
        row["retrain_cpu_hours"] = retrain_s * res_r.cpu / 3600.0
        row["retrain_gpu_hours"] = retrain_s * res_r.gpu / 3600.0
        row["cpu_hours"] = row["search_cpu_hours"] + row["retrain_cpu_hours"]
        row["gpu_hours"] = row["search_gpu_hours"] + row["retrain_gpu_hours"]
        row["node_ip"] = m.get("node_ip")
        row["node_id"] = m.get("node_id")
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["_err"] = df["status"] == "ERROR"
        df["_obj"] = df["objective"].fillna(-math.inf)
        df = df.sort_values(["_err", "_obj", "trial_id"], ascending=[True, sweep.mode != "max", True])
        df = df.drop(columns=["_err", "_obj"]).reset_index(drop=True)
    return df


def write_table(df, out_dir: str, name: str = TABLE_NAME) -> tuple[str, str]:
    """Write ``name.csv`` and ``name.parquet`` atomically (temporary file + rename); returns both paths."""
    from istanas.checkpoint import atomic_write_bytes, atomic_write_text

    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, f"{name}.csv")
    pq_path = os.path.join(out_dir, f"{name}.parquet")
    atomic_write_text(csv_path, df.to_csv(index=False))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(pq_path, buf.getvalue())
    return csv_path, pq_path


def best_row(df) -> Optional[dict]:
    """The best trial: highest retrain accuracy among retrained genotypes, else the best search objective."""
    if df is None or not len(df):
        return None
    ok = df[(df["status"] != "ERROR") & df["genotype_digest"].notna()]
    if not len(ok):
        return None
    retrained = ok[ok["retrained"] & ok["duplicate_of"].isna()]
    if len(retrained):
        row = retrained.sort_values(["retrain_acc_mean", "objective"], ascending=False).iloc[0]
    else:
        row = ok.sort_values("objective", ascending=False).iloc[0]
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.to_dict().items()}


# -------------------------------------------------------------------------------------------------------- actor
class SweepPostprocessor:
    """The sweep's post-processing actor (see the module docstring).  Methods are called through Ray."""

    def __init__(self, sweep_dict: dict):
        self.sweep_dict = dict(sweep_dict)
        self.cfg = SweepConfig.from_dict(sweep_dict)
        self.records: dict[str, dict] = {}
        self.metrics = SweepMetrics(self.cfg.name)
        self.progress = {"done": 0, "total": 0}
        self.out_dir = self.cfg.local_results_dir
        try:
            self.search_data = _to_plain(build_search_config(self.cfg, {}, validate=False).data)
        except Exception:
            self.search_data = None

    # ----- collection
    def add_trial(self, record: dict, final: bool = False) -> bool:
        """Add or update one trial's record; returns True when the trial id is new.  Records of the final
        ``ResultGrid`` (``final``) are not replaced by a callback's record that arrives late."""
        tid = record["trial_id"]
        old = self.records.get(tid)
        if old is not None and old.get("_final") and not final:
            return False
        self.records[tid] = {**record, "_final": final}
        return old is None

    def add_trials(self, records: list[dict], final: bool = True) -> int:
        return sum(self.add_trial(r, final) for r in records)

    def num_trials(self) -> int:
        return len(self.records)

    def status(self) -> dict:
        reps, _ = dedupe(self.records.values(), self.cfg.mode)
        return {"trials": len(self.records), "unique_genotypes": len(reps), **self.progress}

    def top_k(self) -> list[dict]:
        return select_top_k(self.records.values(), self.cfg.retrain.top_k, self.cfg.mode)

    # ----- retraining
    def _cache_path(self, digest: str, seed: int) -> str:
        return os.path.join(self.out_dir, "retrain", f"{digest}_seed{seed}.json")

    def retrain_top_k(self) -> dict[str, list[dict]]:
        """Retrain the top-k distinct genotypes over the seeds (Ray tasks); cached runs are reused."""
        import ray

        from istanas.checkpoint import atomic_write_json

        top = self.top_k()
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
        self.progress = {"done": done, "total": total}
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
                self.progress = {"done": done, "total": total}
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
    def finalize(self) -> dict:
        """Retrain, aggregate, write the table, best genotype and report; returns paths and the best trial."""
        from istanas.checkpoint import atomic_write_json, atomic_write_text

        from .report import write_report

        retrains = self.retrain_top_k()
        df = build_table(self.records.values(), retrains, self.cfg)
        os.makedirs(self.out_dir, exist_ok=True)
        csv_path, pq_path = write_table(df, self.out_dir)
        best = best_row(df)
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
            uploaded = upload_dir(self.out_dir, f"{self.cfg.experiment_path}/results")
        return {"table_csv": csv_path, "table_parquet": pq_path, "report_md": md, "report_html": html,
                "best_genotype_path": best_path, "best": best, "results_dir": self.out_dir,
                "uploaded_to": uploaded, "num_trials": int(len(df)),
                "num_errors": int((df["status"] == "ERROR").sum()) if len(df) else 0,
                "retrained": {d: len(v) for d, v in retrains.items()}}


def _to_plain(obj: Any) -> Any:
    from istanas.config import to_dict

    return to_dict(obj)


def upload_dir(local_dir: str, uri: str) -> str:
    """Copy ``local_dir`` to ``uri`` with pyarrow's filesystems (any URI Ray's storage accepts)."""
    import pyarrow.fs as pafs

    pafs.copy_files(local_dir, uri)
    return uri


def create_postprocessor(sweep: SweepConfig):
    """The sweep's named actor (``istanas-sweep-<name>`` in namespace ``istanas``), pinned to this node (so the
    local results folder is the driver's).  A live actor of the same name (another driver running this sweep) is
    an error."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = actor_name(sweep.name)
    for _ in range(10):  # the actor of a driver that just died goes away with its job
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            break
        time.sleep(1.0)
    else:
        raise RuntimeError(f"a sweep named {sweep.name!r} is already running on this cluster (actor {name!r} "
                           f"in namespace {NAMESPACE!r}); wait for it or choose another name")
    node = ray.get_runtime_context().get_node_id()
    cls = ray.remote(SweepPostprocessor)
    return cls.options(name=name, namespace=NAMESPACE, num_cpus=0, max_concurrency=4, max_restarts=0,
                       scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)) \
        .remote(sweep.to_dict())


__all__ = ["SweepPostprocessor", "create_postprocessor", "actor_name", "record_from_trial", "record_from_result",
           "make_record", "dedupe", "select_top_k", "candidates", "build_table", "write_table", "best_row",
           "retrain_one", "summarize_retrains", "error_reason", "upload_dir", "NAMESPACE"]
