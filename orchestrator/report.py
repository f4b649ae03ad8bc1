"""The sweep report: Markdown and HTML with cell pictures, plots and Optuna parameter importances.

Written next to the results table by the post-processing actor (:func:`write_report`):

* ``report.md`` / ``report.html``: the best genotype (JSON, digest, cell pictures), the top-k table (config,
  search metrics, retrain accuracy mean +/- std over seeds, parameters, FLOPs), all trials, errors;
* ``figures/search_vs_params.png``: the search objective against lambda, s, m_j (and epsilon, learning rates);
* with a NAS-Bench-201 ``table``: ``figures/benchmark_vs_params.png`` (the found cell's table accuracy on
  ``benchmark_dataset`` against each hyper-parameter, stopped-early searches included) and a section with every
  found cell's table accuracies and percentiles on the three data sets;
* ``figures/acc_vs_params.png``: retrain accuracy (mean +/- std) against model parameters;
* ``figures/importances.png``: Optuna's fANOVA parameter importances of the objective (:func:`param_importances`,
  a study rebuilt from the table, so it works for resumed sweeps as well);
* ``figures/cells/<digest>_{normal,reduce}.png``: cell pictures of the retrained genotypes
  (``spaces.plot``).
"""
from __future__ import annotations

import datetime as _dt
import html
import math
import os
from typing import Any, Optional

import spaces.plot as sp
from istanas.checkpoint import atomic_write_text
from spaces.registry import load_genotype

from spaces.nb201 import TABLE_DATASETS

from .results import bench_acc_column, bench_pct_column, best_row
from .sweep_config import INT_PARAMS, SweepConfig

FIG_DIR = "figures"


# ------------------------------------------------------------------------------------------------- importances
def _distributions(cfg: SweepConfig) -> dict[str, Any]:
    import optuna.distributions as od

    dists: dict[str, Any] = {}
    sizes = cfg.node_sizes()
    for name, r in cfg.space_params().items():
        if r.kind == "value":
            continue
        names = [f"m_{j}" for j in range(len(sizes))] if name == "m" and cfg.space.m_per_node else [name]
        for j, key in enumerate(names):
            if r.kind == "choices":
                dists[key] = od.CategoricalDistribution(list(r.choices))
                continue
            log = bool(r.log) if r.log is not None else name in ("lam", "lr", "arch_lr")
            if name in INT_PARAMS:
                high = int(r.high) if key == name else min(int(r.high), sizes[j])
                dists[key] = od.IntDistribution(int(r.low), high, log=log)
            else:
                dists[key] = od.FloatDistribution(float(r.low), float(r.high), log=log)
    return dists


def param_importances(df, cfg: SweepConfig, seed: int = 0) -> Optional[dict[str, float]]:
    """fANOVA importances (Optuna) of the searched parameters for the objective as the searcher saw it (a search
    stopped early by ASHA counts with its value when stopped, as in Tune's Optuna study), or ``None`` when fewer
    than 2 trials (or no varying parameter) make it meaningless."""
    import optuna

    dists = _distributions(cfg)
    if not dists or df is None or not len(df):
        return None
    done = df[(df["status"] != "ERROR") & df["objective"].notna()]
    trials = []
    for _, row in done.iterrows():
        params = {}
        for key, dist in dists.items():
            v = row.get(f"config/{key}")
            if v is None or (isinstance(v, float) and math.isnan(v)):
                break
            if isinstance(dist, optuna.distributions.IntDistribution):
                v = int(v)
            elif isinstance(dist, optuna.distributions.FloatDistribution):
                v = float(v)
            elif isinstance(v, float) and float(v).is_integer() and int(v) in dist.choices:
                v = int(v)
            params[key] = v
        else:
            try:
                trials.append(optuna.trial.create_trial(params=params, distributions=dists,
                                                        value=float(row["objective"])))
            except Exception:
                continue
    if len(trials) < 2:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if cfg.mode == "max" else "minimize")
    study.add_trials(trials)
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    except Exception:
        return None
    return {k: float(v) for k, v in imp.items()}


def preload() -> None:
    """Import the libraries :func:`write_report` uses (matplotlib's Agg backend; Optuna's importance evaluators,
    which load scikit-learn: ~4 s of CPU in a fresh process), so that a caller can pay them ahead of time."""
    import optuna.importance  # noqa: F401

    _plt()


# ------------------------------------------------------------------------------------------------------ figures
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_search_vs_params(df, cfg: SweepConfig, path: str) -> Optional[str]:
    """Objective of every trial against each searched parameter (finished: filled, stopped early: hollow,
    retrained: red)."""
    return _plot_vs_params(df, cfg, path, "objective", f"search {cfg.objective}",
                           f"sweep {cfg.name}: search objective against the hyper-parameters")


def plot_benchmark_vs_params(df, cfg: SweepConfig, path: str) -> Optional[str]:
    """NAS-Bench-201 table accuracy (``benchmark_dataset``) of every trial's found cell against each searched
    parameter (as :func:`plot_search_vs_params`; stopped-early searches with the cell they had when stopped)."""
    col = bench_acc_column(cfg.benchmark_dataset)
    if col not in df.columns:
        return None
    return _plot_vs_params(df, cfg, path, col, f"NAS-Bench-201 {cfg.benchmark_dataset} acc (%)",
                           f"sweep {cfg.name}: found cell's table accuracy against the hyper-parameters")


def _plot_vs_params(df, cfg: SweepConfig, path: str, column: str, ylabel: str, title: str) -> Optional[str]:
    """``column`` of every trial that did not fail against each searched parameter, one panel each."""
    params = [p for p in cfg.tune_param_names() if f"config/{p}" in df.columns and df[f"config/{p}"].notna().any()]
    ok = df[(df["status"] != "ERROR") & df[column].notna()]
    if not params or not len(ok):
        return None
    plt = _plt()
    n = len(params)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, p in zip(axes.flat, params):
        x = ok[f"config/{p}"].astype(float)
        y = ok[column].astype(float)
        done = ok["search_done"].astype(bool)
        retr = ok["retrained"].astype(bool)
        ax.scatter(x[done & ~retr], y[done & ~retr], c="tab:blue", s=28, label="finished")
        ax.scatter(x[~done], y[~done], facecolors="none", edgecolors="tab:blue", s=28, label="stopped early")
        ax.scatter(x[retr], y[retr], c="tab:red", s=40, marker="D", label="retrained")
        if p in ("lam", "lr", "arch_lr"):
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel({"lam": "lambda", "s": "s (support per node)", "m": "m_j (all nodes)"}.get(p, p))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_acc_vs_params(df, path: str) -> Optional[str]:
    """Retrain accuracy (mean +/- std over seeds) against parameters (millions) of the retrained genotypes."""
    r = df[df["retrained"].astype(bool) & df["duplicate_of"].isna()]
    if not len(r):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    yerr = r["retrain_acc_std"].astype(float).fillna(0.0)
    ax.errorbar(r["params_m"].astype(float), r["retrain_acc_mean"].astype(float), yerr=yerr, fmt="o",
                capsize=3, color="tab:red")
    for _, row in r.iterrows():
        ax.annotate(str(row["genotype_digest"])[:6], (row["params_m"], row["retrain_acc_mean"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.set_xlabel("parameters (M, no auxiliary head)")
    ax.set_ylabel("retrain test accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_importances(imp: Optional[dict[str, float]], path: str) -> Optional[str]:
    if not imp:
        return None
    plt = _plt()
    keys = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(5, 0.45 * len(keys) + 1.2))
    ax.barh(keys, [imp[k] for k in keys], color="tab:green")
    ax.set_xlabel("fANOVA importance (Optuna)")
    ax.set_title("parameter importances for the objective")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cells(genotype_json: str, folder: str, digest: str) -> list[str]:
    """Pictures of the normal and reduction cell (``spaces.plot``); ``[]`` when they cannot be drawn."""
    try:
        g = load_genotype(genotype_json)
    except Exception:
        return []
    os.makedirs(folder, exist_ok=True)
    out = []
    for cell in ("normal", "reduce"):
        path = os.path.join(folder, f"{digest}_{cell}.png")
        try:
            sp.plot_cell(g, cell=cell, path=path)
        except Exception:
            continue
        if os.path.isfile(path):
            out.append(path)
    return out


# ------------------------------------------------------------------------------------------------------- report
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.{digits}f}"
    return str(v)


def _acc(row) -> str:
    m, s = row.get("retrain_acc_mean"), row.get("retrain_acc_std")
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return f"{m:.4f}" + (f" +/- {s:.4f}" if isinstance(s, float) and not math.isnan(s) else "") + \
        f" ({int(row.get('retrain_seeds', 0))} seeds)"


def _md_cell(text: str) -> str:
    """A user-given string as literal text in a Markdown table cell: HTML escaped (as in report.html), Markdown
    punctuation backslash-escaped, one line."""
    text = html.escape(str(text)).replace("\r", " ").replace("\n", " ")
    return "".join("\\" + ch if ch in "\\`*[]|" else ch for ch in text)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    mu = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return f"{mu:.2f}" + (f" +/- {sd:.2f}" if not math.isnan(sd) else "") + f" (n = {len(xs)})"


def benchmark_section(df, cfg: SweepConfig) -> tuple[list[str], list[str], list[list[str]]]:
    """(summary lines, headers, rows) of the found cells on NAS-Bench-201: one row per distinct cell (best
    table accuracy on ``benchmark_dataset`` first) with its trials, the three table accuracies and percentiles and
    the best search ``val_acc`` of its trials; ``([], [], [])`` without ``bench_*`` columns."""
    if "bench_arch" not in df.columns:
        return [], [], []
    acc_col = bench_acc_column(cfg.benchmark_dataset)
    found = df[(df["status"] != "ERROR") & df["bench_arch"].notna()]
    done = found[found["search_done"].astype(bool)]
    scored = [float(v) for v in done[acc_col] if isinstance(v, float) and not math.isnan(v)]
    cells = found["bench_table_cells"].dropna() if "bench_table_cells" in found.columns else []
    lines = [f"table `{cfg.table}`" + (f" ({int(cells.iloc[0])} cells)" if len(cells) else "") +
             f"; ranking data set `{cfg.benchmark_dataset}`",
             f"{cfg.benchmark_dataset} table accuracy of the cells of the {len(done)} finished searches: "
             f"{_mean_std(scored)}" + (f", best {max(scored):.2f}" if scored else ""),
             f"{int(found['bench_arch'].nunique())} distinct cells found; "
             f"{int((found['bench_in_table'] == 0).sum())} trial(s) with a cell the table lacks"]
    headers = ["cell (arch)", "trials", "finished"]
    for d in TABLE_DATASETS:
        headers += [f"{d} acc", f"{d} pct"]
    headers.append("best search val_acc")
    rows = []
    groups = sorted(found.groupby("bench_arch", sort=False),
                    key=lambda kv: -(kv[1][acc_col].max() if kv[1][acc_col].notna().any() else -math.inf))
    for arch, g in groups:
        first = g.iloc[0]
        row = [str(arch), ", ".join(str(t) for t in g["trial_id"]), str(int(g["search_done"].astype(bool).sum()))]
        for d in TABLE_DATASETS:
            row += [_fmt(first[bench_acc_column(d)], 2), _fmt(first[bench_pct_column(d)], 1)]
        row.append(_fmt(g["val_acc"].max() if g["val_acc"].notna().any() else None))
        rows.append(row)
    return lines, headers, rows


def write_report(df, out_dir: str, cfg: SweepConfig) -> tuple[str, str]:
    """Write ``report.md``, ``report.html`` and the figures under ``out_dir``; returns the two report paths."""
    figs = os.path.join(out_dir, FIG_DIR)
    os.makedirs(figs, exist_ok=True)
    params = cfg.tune_param_names()
    imp = param_importances(df, cfg, seed=cfg.seed)
    images: list[tuple[str, str]] = []
    for title, fn in (("Search objective against the hyper-parameters",
                       lambda: plot_search_vs_params(df, cfg, os.path.join(figs, "search_vs_params.png"))),
                      ("NAS-Bench-201 table accuracy of the found cell against the hyper-parameters",
                       lambda: plot_benchmark_vs_params(df, cfg, os.path.join(figs, "benchmark_vs_params.png"))),
                      ("Retrain accuracy against parameters",
                       lambda: plot_acc_vs_params(df, os.path.join(figs, "acc_vs_params.png"))),
                      ("Optuna parameter importances",
                       lambda: plot_importances(imp, os.path.join(figs, "importances.png")))):
        try:
            p = fn()
        except Exception:
            p = None
        if p:
            images.append((title, os.path.relpath(p, out_dir)))

    best = best_row(df, by_retrain=cfg.objective != "benchmark")
    bench_lines, bench_headers, bench_rows = benchmark_section(df, cfg)
    acc_col = bench_acc_column(cfg.benchmark_dataset)
    bench = bool(bench_headers)
    n = len(df)
    n_err = int((df["status"] == "ERROR").sum()) if n else 0
    n_stop = int(df["stopped_early"].sum()) if n else 0
    header = [f"Sweep `{cfg.name}`: {n} trials ({n - n_err - n_stop} finished, {n_stop} stopped early by ASHA, "
              f"{n_err} errors); objective `{cfg.objective}` ({cfg.mode}); "
              f"{_dt.datetime.now().isoformat(timespec='seconds')}",
              f"Experiment: `{cfg.experiment_path}`",
              f"CPU hours {df['cpu_hours'].sum() if n else 0:.3f}, GPU hours {df['gpu_hours'].sum() if n else 0:.3f}"]

    cells: list[tuple[str, list[str]]] = []
    retrained = df[df["retrained"].astype(bool) & df["duplicate_of"].isna()] if n else df
    for _, row in retrained.iterrows():
        pics = plot_cells(row["genotype"], os.path.join(figs, "cells"), row["genotype_digest"])
        cells.append((row["genotype_digest"], [os.path.relpath(p, out_dir) for p in pics]))

    bench_h = [f"table {cfg.benchmark_dataset} acc", "pct"] if bench else []

    def bench_cells(row) -> list[str]:
        return [_fmt(row[acc_col], 2), _fmt(row[bench_pct_column(cfg.benchmark_dataset)], 1)] if bench else []

    top_headers = ["rank", "trial", *params, "objective", "val_acc", *bench_h, "retrain acc", "params (M)",
                   "FLOPs (M)", "genotype"]
    top_rows = []
    for _, row in df[df["unique_rank"].notna()].sort_values("unique_rank").iterrows():
        top_rows.append([_fmt(int(row["unique_rank"])), row["trial_id"],
                         *[_fmt(row.get(f"config/{p}")) for p in params], _fmt(row["objective"]),
                         _fmt(row["val_acc"]), *bench_cells(row), _acc(row), _fmt(row["params_m"], 3),
                         _fmt(row["flops_m"], 1), str(row["genotype_digest"])])
    all_headers = ["trial", "status", *params, "objective", *bench_h, "epochs", "genotype", "duplicate of",
                   "error"]
    all_rows = [[row["trial_id"], row["status"] + (" (stopped early)" if row["stopped_early"] else ""),
                 *[_fmt(row.get(f"config/{p}")) for p in params], _fmt(row["objective"]), *bench_cells(row),
                 _fmt(row["search_epochs"]), _fmt(row["genotype_digest"]), _fmt(row["duplicate_of"]),
                 _fmt(row["error"])] for _, row in df.iterrows()]

    md = [f"# ISTA-NAS sweep report: {cfg.name}", "", *[f"- {h}" for h in header], ""]
    hb = [f"<h1>ISTA-NAS sweep report: {html.escape(cfg.name)}</h1>", "<ul>"] + \
         [f"<li>{html.escape(h)}</li>" for h in header] + ["</ul>"]
    if best is not None:
        accs = ", ".join(f"{d} {_fmt(best.get(bench_acc_column(d)), 2)} % (percentile "
                         f"{_fmt(best.get(bench_pct_column(d)), 1)})" for d in TABLE_DATASETS)
        cell = best.get("bench_arch") if bench else None
        md += ["## Best genotype", "", f"- trial `{best['trial_id']}`, digest `{best['genotype_digest']}`",
               f"- search objective {_fmt(best['objective'])}, retrain accuracy {_acc(best)}",
               *([f"- NAS-Bench-201 cell `{cell}`: {accs}"] if cell else []),
               f"- parameters {_fmt(best['params_m'], 3)} M, FLOPs {_fmt(best['flops_m'], 1)} M", "",
               "```json", str(best["genotype"]), "```", ""]
        hb += ["<h2>Best genotype</h2>",
               f"<p>trial <code>{html.escape(str(best['trial_id']))}</code>, digest "
               f"<code>{html.escape(str(best['genotype_digest']))}</code>; search objective "
               f"{_fmt(best['objective'])}; retrain accuracy {html.escape(_acc(best))}; "
               f"{_fmt(best['params_m'], 3)} M parameters, {_fmt(best['flops_m'], 1)} M FLOPs</p>",
               *([f"<p>NAS-Bench-201 cell <code>{html.escape(str(cell))}</code>: {html.escape(accs)}</p>"]
                 if cell else []),
               f"<pre>{html.escape(str(best['genotype']))}</pre>"]
    if bench:
        md += ["## Found cells on NAS-Bench-201 (table accuracy %, percentile in the table)", "",
               *[f"- {ln}" for ln in bench_lines], "", _md_table(bench_headers, bench_rows), ""]
        hb += ["<h2>Found cells on NAS-Bench-201 (table accuracy %, percentile in the table)</h2>", "<ul>"] + \
              [f"<li>{html.escape(ln)}</li>" for ln in bench_lines] + ["</ul>", _html_table(bench_headers, bench_rows)]
    md += ["## Top genotypes (distinct, by search objective)", "", _md_table(top_headers, top_rows), ""]
    hb += ["<h2>Top genotypes (distinct, by search objective)</h2>", _html_table(top_headers, top_rows)]
    if cells:
        md += ["## Cells of the retrained genotypes", ""]
        hb += ["<h2>Cells of the retrained genotypes</h2>"]
        for digest, pics in cells:
            md += [f"**{digest}**", ""] + [f"![{os.path.basename(p)}]({p})" for p in pics] + \
                  ([""] if pics else ["(no cell picture: spaces.plot unavailable)", ""])
            hb += [f"<h3>{html.escape(digest)}</h3>"] + \
                  [f'<img src="{html.escape(p)}" alt="{html.escape(os.path.basename(p))}" style="max-width:45%">'
                   for p in pics]
    if images:
        md += ["## Plots", ""]
        hb += ["<h2>Plots</h2>"]
        for title, p in images:
            md += [f"### {title}", "", f"![{title}]({p})", ""]
            hb += [f"<h3>{html.escape(title)}</h3>", f'<img src="{html.escape(p)}" alt="{html.escape(title)}">']
    if imp:
        rows = [[k, f"{v:.3f}"] for k, v in imp.items()]
        md += ["## Parameter importances (Optuna fANOVA)", "", _md_table(["parameter", "importance"], rows), ""]
        hb += ["<h2>Parameter importances (Optuna fANOVA)</h2>", _html_table(["parameter", "importance"], rows)]
    md += ["## All trials", "", _md_table(all_headers, all_rows), ""]
    hb += ["<h2>All trials</h2>", _html_table(all_headers, all_rows)]
    md_path = os.path.join(out_dir, "report.md")
    html_path = os.path.join(out_dir, "report.html")
    atomic_write_text(md_path, "\n".join(md) + "\n")
    style = ("<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}pre{white-space:pre-wrap;"
             "background:#f6f6f6;padding:8px}</style>")
    atomic_write_text(html_path, "<!doctype html><html><head><meta charset='utf-8'><title>"
                      f"{html.escape(cfg.name)}</title>{style}</head><body>" + "\n".join(hb) + "</body></html>\n")
    return md_path, html_path


__all__ = ["write_report", "preload", "param_importances", "plot_search_vs_params", "plot_acc_vs_params",
           "plot_importances", "plot_cells"]
