"""The sweep's results table (pure pandas, no Ray): trial records, genotype de-duplication, top-k, the table.

A trial record (:func:`make_record`) is what one Tune trial left: its sampled config, its last report and its
error.  :func:`dedupe` / :func:`select_top_k` rank distinct genotypes (finished searches first, then those ASHA
stopped early); :func:`build_table` joins records and retraining runs into one row per trial, written by
:func:`write_table` as ``sweep_results.csv`` / ``.parquet``; :func:`best_row` is the sweep's best trial.
:func:`benchmark_metrics` turns a found NAS-Bench-201 cell's table entry (:meth:`spaces.nb201.NB201Table.lookup`)
into the flat ``bench_*`` metrics / columns (:data:`BENCH_COLUMNS`).
"""
from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

from istanas.checkpoint import atomic_write_bytes, atomic_write_text
from spaces.genotype import NB201Genotype
from spaces.nb201 import TABLE_DATASETS, NB201Table
from spaces.registry import load_genotype

from .sweep_config import SweepConfig

TABLE_NAME = "sweep_results"
SEARCH_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "support_churn")
#: NAS-Bench-201 data set -> the suffix of its ``bench_acc_*`` / ``bench_pct_*`` columns.
BENCH_SUFFIX = {"cifar10": "cifar10", "cifar100": "cifar100", "ImageNet16-120": "imagenet16_120"}


def bench_acc_column(dataset: str) -> str:
    """Column of the table accuracy (percent) on ``dataset`` (``"cifar10"`` -> ``bench_acc_cifar10``)."""
    return f"bench_acc_{BENCH_SUFFIX[dataset]}"


def bench_pct_column(dataset: str) -> str:
    """Column of the percentile (0..100: percent of the table's cells with a lower accuracy) on ``dataset``."""
    return f"bench_pct_{BENCH_SUFFIX[dataset]}"


#: The ``bench_*`` metrics of a trial whose found cell was looked up in the NAS-Bench-201 table.
BENCH_COLUMNS = ("bench_arch", "bench_in_table", "bench_table_cells",
                 *[bench_acc_column(d) for d in TABLE_DATASETS], *[bench_pct_column(d) for d in TABLE_DATASETS])


# ----------------------------------------------------------------------------------------------------- records
def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers (floats, ints, bools as 0/1, 0-d tensors) and strings of a metrics dict, what Ray stores; anything
    else is dropped."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, (int, float, str)):
            out[k] = v
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            out[k] = v.item()
    return out


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


def benchmark_metrics(table: NB201Table, genotype: Any) -> dict[str, Any]:
    """A found NAS-Bench-201 cell's table entry as flat metrics (call it after the search ended): ``bench_arch``
    (arch string), ``bench_in_table`` (0/1), ``bench_table_cells``, ``bench_acc_<data set>`` (percent) and
    ``bench_pct_<data set>`` (0..100) for the three data sets; NaN where the table lacks the cell (NASLib's JSON
    holds 725 of the 15,625).  ``genotype``: an :class:`spaces.genotype.NB201Genotype`, its JSON or arch string;
    a DARTS genotype raises ``ValueError``."""
    g = load_genotype(genotype)
    if not isinstance(g, NB201Genotype):
        raise ValueError(f"genotype: the NAS-Bench-201 table scores nb201 cells, got a {g.space} genotype")
    arch = g.to_arch_str()
    out: dict[str, Any] = {"bench_arch": arch, "bench_in_table": int(arch in table), "bench_table_cells": len(table)}
    rec = table.lookup(arch) if arch in table else {}
    for d in TABLE_DATASETS:
        acc, pct = rec.get(d), (rec.get("percentile") or {}).get(d)
        out[bench_acc_column(d)] = float(acc) if acc is not None else float("nan")
        out[bench_pct_column(d)] = float(pct) if pct is not None else float("nan")
    return out


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
    """Finished searches before stopped-early ones, then the objective (best first); ties by the genotype digest
    and then the trial's config (canonical JSON), so the ranking does not depend on the order trials finished in
    (which differs between an uninterrupted and a resumed sweep)."""
    return (not r["search_done"], -sign * _objective(r), str(r["metrics"].get("genotype_digest")),
            json.dumps(r.get("config", {}), sort_keys=True, default=str))


def dedupe(records: Iterable[Mapping[str, Any]], mode: str = "max") -> tuple[list[dict], dict[str, str]]:
    """Group candidates by genotype digest: (representatives best-first, {trial_id: representative trial_id}).

    Ranking: searches that ran to their end come first, by objective; searches stopped early by ASHA follow, by
    the objective they had when stopped (their genotypes only fill top-k slots that finished searches leave).
    A group's representative is its best-ranked trial (ties: by config, see :func:`_rank_key`)."""
    sign = 1.0 if mode == "max" else -1.0
    groups: dict[str, list[dict]] = {}
    for r in candidates(records):
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
    ``search_session_s`` (time inside the search function, last session); with a NAS-Bench-201 ``table`` (or
    when a record has them) the :data:`BENCH_COLUMNS` (the found cell's table accuracies and percentiles);
    ``retrained, retrain_acc_mean,
    retrain_acc_std, retrain_seeds, retrain_accs, retrain_errors, params_m, flops_m``; ``search_cpu_hours,
    search_gpu_hours, retrain_cpu_hours, retrain_gpu_hours, cpu_hours, gpu_hours`` (resources x wall time;
    a genotype's retraining is counted once, on its representative's row)."""
    records = list(records)
    reps, rep_of = dedupe(records, sweep.mode)
    rank = {r["trial_id"]: i + 1 for i, r in enumerate(reps)}
    res_t, res_r = sweep.resources_per_trial, sweep.retrain.resources
    params = sweep.tune_param_names()
    bench = sweep.table is not None or any("bench_arch" in r["metrics"] for r in records)
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
        if bench:
            for k in BENCH_COLUMNS:
                v = m.get(k)
                row[k] = (v or None) if k == "bench_arch" else (float(v) if isinstance(v, (int, float))
                                                                else float("nan"))
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
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, f"{name}.csv")
    pq_path = os.path.join(out_dir, f"{name}.parquet")
    atomic_write_text(csv_path, df.to_csv(index=False))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(pq_path, buf.getvalue())
    return csv_path, pq_path


def best_row(df, by_retrain: bool = True) -> Optional[dict]:
    """The best trial: highest retrain accuracy among retrained genotypes (``by_retrain``), else the best search
    objective (``by_retrain=False``: the objective only, e.g. the benchmark table's 200-epoch accuracy)."""
    if df is None or not len(df):
        return None
    ok = df[(df["status"] != "ERROR") & df["genotype_digest"].notna()]
    if not len(ok):
        return None
    retrained = ok[ok["retrained"] & ok["duplicate_of"].isna()]
    if by_retrain and len(retrained):
        row = retrained.sort_values(["retrain_acc_mean", "objective"], ascending=False).iloc[0]
    else:
        row = ok.sort_values("objective", ascending=False).iloc[0]
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.to_dict().items()}


__all__ = ["scalar_metrics", "make_record", "error_reason", "candidates", "dedupe", "select_top_k", "summarize_retrains",
           "build_table", "write_table", "best_row", "benchmark_metrics", "bench_acc_column", "bench_pct_column",
           "TABLE_NAME", "SEARCH_METRICS", "BENCH_COLUMNS", "BENCH_SUFFIX"]
