"""Sweeps scored by the NAS-Bench-201 table (``objective: benchmark``): config checks before Ray, the trial's
look-up after its search, and the results table / report columns, against an independent read of the CSV."""
from __future__ import annotations

import csv
import math
import os

import pytest

from istanas.config import ConfigError
from orchestrator.sweep_config import load_sweep_config
from spaces.genotype import NB201Genotype

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = {"cifar10": "CIFAR10TestAccuracy200Epochs", "cifar100": "CIFAR100TestAccuracy200Epochs",
            "ImageNet16-120": "ImageNetTestAccuracy200Epochs"}
ARCHS = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
         "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
         "|nor_conv_1x1~0|+|avg_pool_3x3~0|none~1|+|nor_conv_3x3~0|skip_connect~1|nor_conv_1x1~2|"]


@pytest.fixture(scope="module")
def csv_table():
    """(path, {arch: {data set: accuracy}}) of nasbench201_full.csv read with the csv module alone."""
    from istanas.data import shared_data_dir

    d = shared_data_dir()
    path = os.path.join(d, "nasbench201_full.csv") if d else ""
    if not os.path.isfile(path):
        pytest.skip("nasbench201_full.csv not in the shared data folder")
    with open(path, newline="", encoding="utf-8") as f:
        rows = {r["ArchitectureString"]: {k: float(r[c]) for k, c in DATASETS.items()} for r in csv.DictReader(f)}
    return path, rows


def _pct(rows: dict, arch: str, dataset: str) -> float:
    """Percent of the table's cells with a strictly lower accuracy (written out, not bisect)."""
    mine = rows[arch][dataset]
    return 100.0 * sum(1 for r in rows.values() if r[dataset] < mine) / len(rows)


def _nb201_cfg(table: str, *more: str, validate: bool = False):
    return load_sweep_config(overrides=["search_space=nb201", "objective=benchmark", f"table={table}", *more],
                             validate=validate)


# --------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides,needle", [
    (["objective=benchmark"], "needs search_space: nb201"),                      # DARTS space
    (["objective=benchmark", "search_space=nb201"], "table: objective 'benchmark' needs the NAS-Bench-201 table"),
    (["table=/nonexistent/nb201.csv"], "table: the NAS-Bench-201 table scores nb201 cells"),
    (["objective=benchmark", "search_space=nb201", "table=/nonexistent/nb201.csv"], "table: file not found"),
    (["benchmark_dataset=imagenet"], "benchmark_dataset: 'imagenet' is not one of"),
])
def test_benchmark_objective_needs_an_nb201_search_and_a_table(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_sweep_config(overrides=overrides)
    assert needle in str(e.value)


def test_cli_rejects_benchmark_without_table_before_ray_starts(monkeypatch, capsys, tmp_path):
    import importlib.util

    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ray.init called")))
    spec = importlib.util.spec_from_file_location("launch_sweep", os.path.join(REPO, "launch", "sweep.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    for argv, needle in ((["--objective", "benchmark"], "search_space: nb201"),
                         (["--set", "search_space=nb201", "--set", f"table={bad}", "--objective", "benchmark"],
                          "lacks the column")):
        assert mod.main(["--storage-path", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1


def test_the_nb201_sweep_config_validates_and_reaches_the_search(csv_table):
    from orchestrator.sweep_config import build_search_config

    # the config names ../shared/data/nasbench201_full.csv; a clone elsewhere points it at the same file
    cfg = load_sweep_config(os.path.join(REPO, "configs", "sweep_nb201.yaml"), overrides=[f"table={csv_table[0]}"])
    assert cfg.objective == "benchmark" and cfg.table == csv_table[0] and cfg.retrain.top_k == 0
    assert cfg.node_sizes() == [4, 8, 12] and cfg.tune_param_names() == ["lam", "s", "m_0", "m_1", "m_2", "epsilon"]
    scfg = build_search_config(cfg, {"lam": 1e-4, "s": 2, "m_0": 3, "m_1": 5, "m_2": 11, "epsilon": 0.0})
    assert scfg.space == "nb201" and scfg.recovery.m == [3, 5, 11] and scfg.recovery.s == 2
    with pytest.raises(ConfigError, match="search.space"):
        load_sweep_config(os.path.join(REPO, "configs", "sweep_nb201.yaml"),
                          overrides=[f"table={csv_table[0]}", "search.space=darts"])


def test_table_path_is_made_absolute(csv_table, monkeypatch):
    path, _ = csv_table
    monkeypatch.chdir(os.path.dirname(path))
    cfg = _nb201_cfg(os.path.basename(path))
    assert cfg.table == path and os.path.isabs(cfg.table)


# ---------------------------------------------------------------------------------------------------- trial
def test_trial_opens_the_table_only_after_its_search(csv_table, monkeypatch):
    import orchestrator.tune_trial as tt

    path, rows = csv_table
    cfg = _nb201_cfg(path)
    events = []
    real_open = tt.open_nb201_table
    monkeypatch.setattr(tt, "open_nb201_table", lambda p: (events.append("open table"), real_open(p))[1])
    reports = []
    ckpt = type("Ckpt", (), {"from_directory": staticmethod(lambda d: None)})
    rep = tt.TrialReporter(cfg, report_fn=lambda m, checkpoint=None: reports.append(dict(m)), checkpoint_cls=ckpt)
    genotype = NB201Genotype.from_arch_str(ARCHS[2])
    hist = []
    for e in (1, 2, 3):  # what a search does: one on_epoch_end per epoch, the last with done
        events.append(f"epoch {e}")
        hist.append({"epoch": e, "val_acc": 0.2 * e, "genotype": genotype.to_json()})
        rep.on_epoch_end(hist[-1], {"epoch": e, "done": e == 3})
    assert "open table" not in events and all(math.isnan(r["objective"]) for r in reports)
    final = rep.finish({"genotype": genotype, "history": hist, "final": {"val_acc": 0.6}}, None, 1.0)
    assert events == ["epoch 1", "epoch 2", "epoch 3", "open table"]
    assert final["objective"] == pytest.approx(rows[ARCHS[2]]["cifar10"]) == reports[-1]["objective"]
    assert final["bench_arch"] == ARCHS[2] and final["bench_in_table"] == 1
    assert final["bench_pct_cifar100"] == pytest.approx(_pct(rows, ARCHS[2], "cifar100"))
    # another ranking data set, another objective; val_acc ranks as before without the benchmark objective
    rep2 = tt.TrialReporter(_nb201_cfg(path, "benchmark_dataset=ImageNet16-120"), report_fn=lambda *a, **k: None,
                            checkpoint_cls=object)
    assert rep2.finish({"genotype": genotype, "history": hist}, None, 1.0)["objective"] == \
        pytest.approx(rows[ARCHS[2]]["ImageNet16-120"])
    rep3 = tt.TrialReporter(_nb201_cfg(path, "objective=val_acc"), report_fn=lambda *a, **k: None,
                            checkpoint_cls=object)
    out = rep3.finish({"genotype": genotype, "history": hist, "final": {"val_acc": 0.6}}, None, 1.0)
    assert out["objective"] == pytest.approx(0.6) and out["bench_acc_cifar10"] == pytest.approx(
        rows[ARCHS[2]]["cifar10"])


# --------------------------------------------------------------------------------------------- table, report
def _record(tid, arch, lam, s, done=True, status="TERMINATED"):
    from orchestrator.results import make_record

    g = NB201Genotype.from_arch_str(arch)
    m = {"objective": float("nan"), "val_acc": 0.5 + lam, "genotype": g.to_json(), "genotype_digest": g.digest(),
         "search_done": int(done), "epoch": 4 if done else 2, "time_total_s": 10.0}
    return make_record(tid, status, {"lam": lam, "s": s, "m": 3, "epsilon": 0.0}, m,
                       "RuntimeError: boom" if status == "ERROR" else None)


def test_table_and_report_show_every_found_cell_from_the_table(csv_table, tmp_path):
    import pandas as pd

    from orchestrator.postprocess import add_benchmark
    from orchestrator.report import write_report
    from orchestrator.results import bench_acc_column, bench_pct_column, benchmark_metrics, build_table
    from spaces.nb201 import open_nb201_table

    path, rows = csv_table
    cfg = _nb201_cfg(path)
    table = open_nb201_table(path)
    recs = [_record("a", ARCHS[0], 1e-3, 2), _record("b", ARCHS[1], 1e-2, 3), _record("c", ARCHS[0], 3e-2, 1),
            _record("d", ARCHS[2], 1e-4, 2, done=False), _record("e", ARCHS[1], 5e-2, 2, status="ERROR")]
    for r in recs[:3]:  # the finished trials looked their cell up themselves (TrialReporter.finish)
        r["metrics"].update(benchmark_metrics(table, r["metrics"]["genotype"]))
        r["metrics"]["objective"] = r["metrics"]["bench_acc_cifar10"]
    recs = add_benchmark(recs, cfg)  # the stopped-early trial d is looked up after the Tune run
    assert recs[3]["metrics"]["bench_arch"] == ARCHS[2] and math.isnan(recs[3]["metrics"]["objective"])
    df = build_table(recs, {}, cfg)
    for _, row in df[df["status"] != "ERROR"].iterrows():
        arch = row["bench_arch"]
        assert NB201Genotype.from_json(row["genotype"]).to_arch_str() == arch
        for d in DATASETS:
            assert row[bench_acc_column(d)] == pytest.approx(rows[arch][d])
            assert row[bench_pct_column(d)] == pytest.approx(_pct(rows, arch, d))
    assert list(df["trial_id"])[:3] == ["a", "c", "b"]  # ranked by the table accuracy (ARCHS[0] is the better)
    md, html_path = write_report(df, str(tmp_path), cfg)
    text = open(md, encoding="utf-8").read()
    assert "## Found cells on NAS-Bench-201" in text
    for arch in ARCHS:  # every found cell, its three accuracies and percentiles (as the report rounds them)
        line = next(ln for ln in text.splitlines() if arch.replace("|", "\\|") in ln and ln.startswith("| "))
        for d in DATASETS:
            assert f"| {rows[arch][d]:.2f} | {_pct(rows, arch, d):.1f} |" in line
    best = rows[ARCHS[0]]["cifar10"]
    finished = [rows[ARCHS[i]]["cifar10"] for i in (0, 1, 0)]
    assert f"{pd.Series(finished).mean():.2f} +/- {pd.Series(finished).std():.2f} (n = 3), best {best:.2f}" in text
    assert f"NAS-Bench-201 cell `{ARCHS[0]}`" in text  # the best genotype's section
    assert os.path.getsize(tmp_path / "figures" / "benchmark_vs_params.png") > 1000
    assert "figures/benchmark_vs_params.png" in text and ARCHS[2] in open(html_path, encoding="utf-8").read()


def test_a_cell_the_table_lacks_is_nan_not_an_error(shared_file):
    from orchestrator.results import benchmark_metrics
    from spaces.nb201 import open_nb201_table

    table = open_nb201_table(shared_file("zc_nasbench201.json"))  # 725 of the 15,625 cells
    missing = next(a for a in (NB201Genotype.from_arch_str(ARCHS[0]).to_arch_str(),
                               "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|") if a not in table)
    m = benchmark_metrics(table, missing)
    assert m["bench_in_table"] == 0 and m["bench_table_cells"] == 725 and math.isnan(m["bench_acc_cifar10"])
    present = table.archs()[0]
    m = benchmark_metrics(table, present)
    assert m["bench_in_table"] == 1 and m["bench_acc_cifar10"] == pytest.approx(table.accuracy(present))
    with pytest.raises(ValueError, match="nb201 cells"):
        from spaces.registry import get_genotype

        benchmark_metrics(table, get_genotype("DARTS_V2"))


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_tiny_nb201_sweep_scores_each_found_cell_by_the_table(csv_table, tmp_path):
    import pandas as pd

    ray = pytest.importorskip("ray")
    from orchestrator.sweep import run_sweep

    path, rows = csv_table
    cfg = load_sweep_config(os.path.join(REPO, "configs", "sweep_nb201.yaml"), overrides=[
        f"storage_path={tmp_path}", "name=nb201", "dashboard=false", "verbose=0", "num_samples=2", "num_cpus=2",
        f"table={path}", "asha.enabled=false", "search.epochs=1", "search.data.limit_train=128",
        "search.data.limit_test=32", "search.data.batch_size=32", "search.C=4"])
    if ray.is_initialized():
        ray.shutdown()
    out = run_sweep(cfg, echo=False)
    df = pd.read_csv(out.table_csv)
    assert len(df) == 2 and (df["status"] == "TERMINATED").all() and df["search_done"].all()
    for _, row in df.iterrows():
        arch = NB201Genotype.from_json(row["genotype"]).to_arch_str()  # the searched cell is the scored one
        assert row["bench_arch"] == arch
        assert row["objective"] == pytest.approx(rows[arch]["cifar10"]) == row["bench_acc_cifar10"]
        assert row["bench_pct_imagenet16_120"] == pytest.approx(_pct(rows, arch, "ImageNet16-120"))
    best = df.loc[df["objective"].idxmax()]
    assert open(out.best_genotype_path, encoding="utf-8").read().strip() == best["genotype"]
    text = open(out.report_md, encoding="utf-8").read()
    assert "## Found cells on NAS-Bench-201" in text and "figures/benchmark_vs_params.png" in text
