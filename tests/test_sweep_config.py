"""Sweep config, validation before Ray starts, and the post-processing pieces that need no cluster."""
from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest

from istanas.config import ConfigError
from orchestrator.sweep_config import build_retrain_config, build_search_config, load_sweep_config, trial_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch_module():
    spec = importlib.util.spec_from_file_location("launch_sweep", os.path.join(REPO, "launch", "sweep.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------------ loading
def test_defaults_validate_and_yaml_matches_defaults():
    cfg = load_sweep_config()
    assert cfg.node_sizes() == [14, 21, 28, 35]
    assert cfg.tune_param_names() == ["lam", "s", "m", "epsilon"]
    assert load_sweep_config(os.path.join(REPO, "configs", "sweep.yaml")) == cfg
    assert cfg.dashboard_host == "127.0.0.1"
    assert os.path.isabs(cfg.storage) and cfg.experiment_path.endswith("/istanas-sweep")


def test_precedence_and_range_kinds(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("num_samples: 6\nspace:\n  lam: {high: 0.5}\n  s: {low: 1, high: 4}\n  m: {choices: [5, 7]}\n"
                 "search: {epochs: 2, data: {limit_train: 100}}\n")
    cfg = load_sweep_config(str(y), ["num_samples=8", "space.epsilon.value=0.01", "search.data.limit_test=50"],
                            extra={"seed": 3, "max_concurrent": None})
    assert cfg.num_samples == 8 and cfg.seed == 3 and cfg.max_concurrent == 2
    # a partial range keeps the default's other bound and log flag
    assert (cfg.space.lam.low, cfg.space.lam.high, cfg.space.lam.log) == (1e-4, 0.5, True)
    # a new kind replaces the default's: s was choices, m was low/high
    assert cfg.space.s.choices is None and (cfg.space.s.low, cfg.space.s.high) == (1, 4)
    assert cfg.space.m.low is None and cfg.space.m.choices == [5, 7]
    assert cfg.space.epsilon.value == 0.01 and cfg.space.epsilon.choices is None
    assert cfg.search == {"epochs": 2, "data.limit_train": 100, "data.limit_test": 50}


def test_trial_overrides_reach_the_search_config():
    cfg = load_sweep_config(overrides=["space.m_per_node=true"])
    assert cfg.tune_param_names() == ["lam", "s", "m_0", "m_1", "m_2", "m_3", "epsilon"]
    trial = {"lam": 3e-3, "s": 3, "m_2": 20, "m_0": 5, "m_1": 9, "m_3": 30, "epsilon": 1e-3}
    assert trial_overrides(cfg, trial) == {"recovery.lam": 3e-3, "recovery.s": 3, "recovery.m": [5, 9, 20, 30],
                                           "epsilon": 1e-3}
    cfg2 = load_sweep_config(overrides=["space.lr={low: 0.01, high: 0.2}", "search.epochs=2"])
    scfg = build_search_config(cfg2, {"lam": 0.02, "s": 2, "m": 6, "epsilon": 0.0, "lr": 0.05})
    assert scfg.recovery.lam == 0.02 and scfg.recovery.s == 2 and scfg.recovery.m == 6
    assert scfg.epsilon == 0.0 and scfg.lr == 0.05 and scfg.epochs == 2


def test_param_space_samples_stay_in_range():
    from orchestrator.sweep import param_space

    cfg = load_sweep_config(overrides=["space.m_per_node=true", "space.m={low: 10, high: 30}",
                                       "space.epsilon={low: 0, high: 0.01}", "space.s.value=2"])
    space = param_space(cfg)
    assert space["s"] == 2  # fixed: a constant in every trial's config
    draws = {k: np.array([space[k].sample() for _ in range(400)], dtype=float) for k in space if k != "s"}
    assert draws["lam"].min() >= 1e-4 and draws["lam"].max() <= 1e-1
    # log-uniform: about half the mass below the geometric midpoint 10^-2.5
    assert 0.35 < np.mean(draws["lam"] < 10 ** -2.5) < 0.65
    for j, nj in enumerate([14, 21, 28, 35]):
        d = draws[f"m_{j}"]
        assert np.all(d == np.round(d)) and d.min() >= 10 and d.max() <= min(30, nj)
    assert draws["m_0"].max() == 14 and draws["m_3"].max() == 30  # inclusive upper ends
    assert 0 <= draws["epsilon"].min() and draws["epsilon"].max() <= 0.01


def test_sweep_targets_are_the_methods_own_keys():
    from istanas.methods import get_method

    cfg = load_sweep_config()
    targets = get_method(cfg.method).sweep_params
    trial = {"lam": 3e-3, "s": 3, "m": 9, "epsilon": 1e-3, "lr": 0.05, "arch_lr": 1e-3}
    scfg = build_search_config(cfg, trial)
    for name, key in targets.items():                      # every sampled value lands on its dotted key
        node = scfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == trial[name], name
    assert cfg.node_sizes() == scfg.node_sizes() == [(2 + j) * 7 for j in range(4)]
    # a search config with other steps changes the node sizes the sweep validates against
    assert load_sweep_config(overrides=["search.steps=3"]).node_sizes() == [14, 21, 28]


def test_retrain_config_uses_search_data_and_overrides():
    cfg = load_sweep_config(overrides=["search.data.limit_train=123", "retrain.overrides={C: 6, layers: 4}",
                                       "retrain.epochs=3"])
    g = json.dumps({"space": "darts", "normal": [["skip_connect", 0]] * 8, "normal_concat": [2, 3, 4, 5],
                    "reduce": [["max_pool_3x3", 1]] * 8, "reduce_concat": [2, 3, 4, 5]})
    rcfg = build_retrain_config(cfg, g, seed=7, validate=False)
    assert rcfg.data.limit_train == 123 and rcfg.C == 6 and rcfg.layers == 4 and rcfg.epochs == 3
    assert rcfg.seed == 7 and rcfg.genotype == g
    # the search's images, the retraining preset's batching ("quick": batch 32; the search's small preset: 64)
    assert build_search_config(cfg, {"lam": 1e-3, "s": 2, "m": 6, "epsilon": 0.0}).data.batch_size == 64
    assert rcfg.data.batch_size == 32 and rcfg.data.dataset == "digits"


# ------------------------------------------------------------------------------------------------ bad input
BAD = [
    (["lamda=1"], "unknown key 'lamda'"),
    (["space.lamda={low: 1, high: 2}"], "lamda"),
    (["space.lam.typo=1"], "typo"),
    (["space.s.choices=[]"], "empty"),
    (["space.lam={low: 0.1, high: 0.001}"], "inverted"),
    (["space.m={low: 6, high: 6}"], "empty range"),
    (["space.lam={low: 0.0, high: 0.1}"], "log range needs low > 0"),
    (["space.s={choices: [2, 15]}"], "n_0 = 14"),
    (["space.m={low: 4, high: 15}"], "out of range"),
    (["space.m={low: 0, high: 5}"], "out of range"),
    (["space.m_per_node=true", "space.m={low: 4, high: 36}"], "out of range"),
    (["space.s={low: 1.5, high: 3}"], "integer"),
    (["space.epsilon={choices: [-0.1, 0.0]}"], "epsilon"),
    (["search.data.root=/nonexistent/cifar"], "does not exist"),
    (["search.data.dataset=cifar11"], "unknown dataset"),
    (["search.no_such_field=1"], "no_such_field"),
    (["method=onestage_typo"], "unknown method"),
    (["search_space=nb201", "objective=benchmark"], "needs the NAS-Bench-201 table"),
    (["search_space=dartz"], "unknown space"),
    (["objective=accuracy"], "unknown objective"),
    (["search_preset=huge"], "search_preset"),
    (["num_samples=0"], "num_samples"),
    (["max_concurrent=0"], "max_concurrent"),
    (["max_concurrent=sometimes"], "max_concurrent"),
    (["max_concurrent=true"], "max_concurrent"),
    (["warm_start_timeout_s=-1"], "warm_start_timeout_s"),
    (["warm_start_timeout_s=.inf"], "warm_start_timeout_s"),
    (["resources_per_trial.cpu=0"], "resources_per_trial.cpu"),
    (["resources_per_trial.gpu=1.5"], "resources_per_trial.gpu"),
    (["asha.reduction_factor=1"], "reduction_factor"),
    (["asha.grace_period=50"], "grace_period"),
    (["retrain.top_k=9"], "top_k"),
    (["retrain.preset=fast"], "retrain.preset"),
    (["retrain.seeds=[1, 1]"], "repeated"),
    (["points_to_evaluate=[{lam: 0.5, s: 2, m: 6, epsilon: 0.0}]"], "outside space.lam"),
    (["points_to_evaluate=[{lam: 0.01, s: 2}]"], "missing"),
    (["name=a/b"], "name"),
    (["address=auto", "num_cpus=2"], "num_cpus"),
    (["tenas.repeats=2"], "objective is not 'tenas'"),
    (["method=twostag"], "did you mean 'twostage'"),
    (["method=darts"], "no sweep parameters"),
    (["retrain.overrides={lr: -1.0}"], "retrain: lr"),
    (["retrain.overrides={lrr: 0.1}"], "did you mean"),
]


@pytest.mark.parametrize("overrides,needle", BAD, ids=[b[0][-1] for b in BAD])
def test_bad_input_is_rejected(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_sweep_config(overrides=overrides)
    assert needle in str(e.value)


@pytest.mark.parametrize("overrides,needle", [BAD[0], BAD[4], BAD[7], BAD[8], BAD[13], BAD[16], BAD[17]])
def test_cli_rejects_bad_input_before_ray_starts(overrides, needle, monkeypatch, capsys, tmp_path):
    import ray

    def no_init(*a, **k):
        raise AssertionError("ray.init was called for bad input")

    monkeypatch.setattr(ray, "init", no_init)
    mod = _launch_module()
    argv = ["--storage-path", str(tmp_path)] + [x for o in overrides for x in ("--set", o)]
    assert mod.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err


def test_cli_existing_experiment_needs_resume(monkeypatch, capsys, tmp_path):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ray.init called")))
    mod = _launch_module()
    (tmp_path / "istanas-sweep" / "trial_x").mkdir(parents=True)
    assert mod.main(["--storage-path", str(tmp_path)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    # --resume with nothing to restore
    assert mod.main(["--storage-path", str(tmp_path / "empty"), "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_cli_print_config(capsys, tmp_path):
    mod = _launch_module()
    assert mod.main(["--storage-path", str(tmp_path), "--num-samples", "5", "--no-dashboard", "--print-config"]) == 0
    import yaml

    out = yaml.safe_load(capsys.readouterr().out)
    assert out["num_samples"] == 5 and out["dashboard"] is False and out["space"]["lam"]["log"] is True
    assert out["max_concurrent"] == 2
    assert mod.main(["--storage-path", str(tmp_path), "--max-concurrent", "auto", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["max_concurrent"] == "auto"
    with pytest.raises(SystemExit):
        mod.main(["--storage-path", str(tmp_path), "--max-concurrent", "many", "--print-config"])
    assert "expected an integer or 'auto'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- post-processing
def _rec(tid, obj, digest, done=True, status="TERMINATED", **cfg):
    from orchestrator.results import make_record

    m = {"objective": obj, "val_acc": obj, "genotype_digest": digest, "genotype": f'{{"d": "{digest}"}}',
         "search_done": int(done), "epoch": 3 if done else 1, "time_total_s": 36.0}
    return make_record(tid, status, cfg or {"lam": 0.01, "s": 2, "m": 6, "epsilon": 0.0}, m,
                       "NonFiniteLossError: nan" if status == "ERROR" else None)


def test_dedupe_and_top_k():
    from orchestrator.results import dedupe, select_top_k

    recs = [_rec("a", 0.80, "g1"), _rec("b", 0.90, "g2"), _rec("c", 0.95, "g1"), _rec("d", 0.99, "g3", done=False),
            _rec("e", 0.97, "g4", status="ERROR"), _rec("f", float("nan"), "g5"), _rec("g", 0.85, "g6")]
    reps, rep_of = dedupe(recs)
    # errored (e) and NaN (f) trials are not candidates; g1 is represented by its best trial c; the search stopped
    # early (d) ranks after every finished one although its value at stopping is the highest
    assert [r["trial_id"] for r in reps] == ["c", "b", "g", "d"]
    assert rep_of == {"a": "c", "c": "c", "b": "b", "g": "g", "d": "d"}
    assert [r["trial_id"] for r in select_top_k(recs, 2)] == ["c", "b"]
    assert [r["trial_id"] for r in select_top_k(recs, 10)] == ["c", "b", "g", "d"]


def test_ranking_of_ties_does_not_depend_on_trial_order():
    """Equal objectives (common on small validation sets): the ranks and representatives are the same whatever
    order the trials finished in (a resumed sweep's order differs from an uninterrupted one's)."""
    import itertools

    from orchestrator.results import dedupe

    recs = [_rec("a", 0.9, "g1", lam=0.01), _rec("b", 0.9, "g2", lam=0.02), _rec("c", 0.9, "g1", lam=0.03),
            _rec("d", 0.8, "g3", lam=0.04)]
    seen = set()
    for perm in itertools.permutations(recs):
        reps, rep_of = dedupe(perm)
        seen.add((tuple(r["trial_id"] for r in reps), tuple(sorted(rep_of.items()))))
    assert len(seen) == 1
    assert [r["trial_id"] for r in dedupe(recs)[0]] == ["a", "b", "d"]  # g1 < g2 by digest; a's lam < c's


def test_table_aggregates_retrains():
    import pandas as pd

    from orchestrator.results import build_table, summarize_retrains

    cfg = load_sweep_config()
    recs = [_rec("a", 0.80, "g1"), _rec("b", 0.90, "g2"), _rec("c", 0.95, "g1"), _rec("e", 0.5, "g9",
                                                                                       status="ERROR")]
    accs = [0.91, 0.87, 0.90]
    retrains = {"g1": [{"seed": i, "test_acc": a, "params_m": 0.5, "flops_m": 40.0, "wall_time_s": 360.0,
                        "error": None} for i, a in enumerate(accs)]
                + [{"seed": 9, "test_acc": float("nan"), "error": "RuntimeError: boom"}]}
    s = summarize_retrains(retrains["g1"])
    assert s["retrain_acc_mean"] == pytest.approx(np.mean(accs))
    assert s["retrain_acc_std"] == pytest.approx(np.std(accs, ddof=1))
    assert s["retrain_seeds"] == 3 and "boom" in s["retrain_errors"]
    df = build_table(recs, retrains, cfg)
    assert list(df["trial_id"]) == ["c", "b", "a", "e"]  # best objective first, errors last
    c, b, a, e = (df[df.trial_id == t].iloc[0] for t in "cbae")
    assert c["retrained"] and a["retrained"] and not b["retrained"]
    assert a["duplicate_of"] == "c" and pd.isna(c["duplicate_of"])
    assert c["retrain_acc_mean"] == pytest.approx(np.mean(accs)) == a["retrain_acc_mean"]
    # retraining hours counted once (4 runs, 3 x 360 s + 0 s, 1 CPU each) on the representative's row
    assert c["retrain_cpu_hours"] == pytest.approx(3 * 360 / 3600) and a["retrain_cpu_hours"] == 0
    assert c["search_cpu_hours"] == pytest.approx(36 / 3600)
    assert e["status"] == "ERROR" and "NonFiniteLossError" in e["error"]
    assert (df["config/lam"] == 0.01).all() and c["unique_rank"] == 1 and b["unique_rank"] == 2


def test_write_table_roundtrip(tmp_path):
    import pandas as pd

    from orchestrator.results import build_table, write_table

    cfg = load_sweep_config()
    df = build_table([_rec("a", 0.8, "g1"), _rec("b", 0.7, "g2", done=False)], {}, cfg)
    csv_path, pq_path = write_table(df, str(tmp_path))
    back = pd.read_parquet(pq_path)
    assert list(back.columns) == list(df.columns) and len(back) == 2
    assert back["objective"].tolist() == pytest.approx(df["objective"].tolist())
    assert pd.read_csv(csv_path)["trial_id"].tolist() == ["a", "b"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_param_importances_find_the_parameter_that_matters():
    from orchestrator.results import build_table
    from orchestrator.report import param_importances

    cfg = load_sweep_config()
    rng = np.random.default_rng(0)
    recs = []
    for i in range(24):
        lam = float(10 ** rng.uniform(-4, -1))
        c = {"lam": lam, "s": int(rng.choice([2, 3])), "m": int(rng.integers(4, 11)),
             "epsilon": float(rng.choice([0.0, 1e-3]))}
        recs.append(_rec(f"t{i}", 0.9 - 0.1 * abs(math.log10(lam) + 2.5), f"g{i}", **c))
    imp = param_importances(build_table(recs, {}, cfg), cfg)
    assert set(imp) == {"lam", "s", "m", "epsilon"}
    assert max(imp, key=imp.get) == "lam" and imp["lam"] > 0.5
    assert sum(imp.values()) == pytest.approx(1.0)


def test_error_reason_finds_the_cause():
    from orchestrator.results import error_reason

    class Wrapper(Exception):
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last):\n  File x\nwrapped")
            self.cause = cause

    from istanas.engine import NonFiniteLossError

    e = Wrapper(NonFiniteLossError("train_loss became nan in epoch 1"))
    assert error_reason(e) == "NonFiniteLossError: train_loss became nan in epoch 1"
    assert error_reason(RuntimeError("Traceback:\n  File a\nValueError: bad")) == "ValueError: bad"
    assert error_reason(None) is None


# ------------------------------------------------------------------------------------------------ trial adapter
def test_trial_reporter_reports_with_checkpoints_and_holds_back_the_last_epoch(tmp_path):
    import torch

    from istanas.checkpoint import load
    from orchestrator.tune_trial import STATE_FILE, TrialReporter

    calls = []

    class Ckpt:
        @staticmethod
        def from_directory(d):
            state = load(os.path.join(d, STATE_FILE))  # the directory only lives during the report call
            return {"epoch": state["epoch"], "w": state["task"]["w"].tolist()}

    def report(metrics, checkpoint=None):
        calls.append((dict(metrics), checkpoint))

    cfg = load_sweep_config(overrides=["checkpoint_every=2"])
    rep = TrialReporter(cfg, report_fn=report, checkpoint_cls=Ckpt)
    hist = []
    for e in range(1, 4):
        m = {"epoch": e, "val_acc": 0.1 * e, "support_churn": 1.0 / e, "note": "x", "vec": [1, 2]}
        hist.append(m)
        rep.on_epoch_end(m, {"epoch": e, "task": {"w": torch.full((2,), float(e))}, "history": hist, "done": e == 3})
    assert [c[0]["epoch"] for c in calls] == [1, 2]  # epoch 3 held back for the genotype
    assert calls[0][1] is None and calls[1][1] == {"epoch": 2, "w": [2.0, 2.0]}  # every 2nd epoch
    assert calls[0][0]["objective"] == pytest.approx(0.1) and "vec" not in calls[0][0]
    g = {"space": "darts", "normal": [["skip_connect", 0]] * 8, "normal_concat": [2, 3, 4, 5],
         "reduce": [["max_pool_3x3", 1]] * 8, "reduce_concat": [2, 3, 4, 5]}
    final = rep.finish({"genotype": g, "history": hist, "final": {"val_acc": 0.3}}, None, 1.0)
    last, ck = calls[-1]
    assert last["epoch"] == 3 and last["search_done"] == 1 and last["objective"] == pytest.approx(0.3)
    assert json.loads(last["genotype"])["normal"][0] == ["skip_connect", 0] and len(last["genotype_digest"]) == 12
    assert ck == {"epoch": 3, "w": [3.0, 3.0]}  # the final state is always checkpointed
    assert final["final_val_acc"] == pytest.approx(0.3)


def test_trial_reporter_turns_a_nan_loss_into_an_error():
    from istanas.engine import NonFiniteLossError
    from orchestrator.tune_trial import TrialReporter

    rep = TrialReporter(load_sweep_config(), report_fn=lambda *a, **k: None, checkpoint_cls=object)
    rep.on_epoch_end({"epoch": 1, "val_acc": 0.5, "val_loss": 2.0, "train_loss": 2.1}, {})
    with pytest.raises(NonFiniteLossError, match="val_loss"):
        rep.on_epoch_end({"epoch": 2, "val_acc": 0.1, "val_loss": float("nan"), "train_loss": 1e9}, {})


def test_tenas_objective_is_the_score_of_the_final_genotype():
    from orchestrator.tune_trial import TrialReporter

    cfg = load_sweep_config(overrides=["objective=tenas", "tenas.repeats=1", "tenas.lr_samples=200",
                                       "tenas.ntk_batch=4", "tenas.reference_cells=3", "search.data.limit_train=128"])
    scfg = build_search_config(cfg, {"lam": 1e-3, "s": 2, "m": 7, "epsilon": 0.0})
    calls = []
    rep = TrialReporter(cfg, report_fn=lambda m, checkpoint=None: calls.append(m), checkpoint_cls=object)
    rep.on_epoch_end({"epoch": 1, "val_acc": 0.5, "val_loss": 1.0}, {})
    assert math.isnan(calls[0]["objective"])  # no TE-NAS score before the search's genotype is final
    from spaces.registry import get_genotype

    final = rep.finish({"genotype": get_genotype("DARTS_V2"), "history": [{"epoch": 1, "val_acc": 0.5}]}, scfg, 1.0)
    assert final["tenas_ntk_cond"] > 1 and final["tenas_linear_regions"] > 1
    # the paper's rank combination against 3 reference cells (istanas.tenas.score.reference_rank_objective)
    rk, rr = final["tenas_rank_kappa"], final["tenas_rank_regions"]
    assert 1 <= rk <= 4 and 1 <= rr <= 4 and final["objective"] == pytest.approx(1 - (rk + rr - 2) / 6)


def test_report_has_tables_plots_and_cells(tmp_path):
    from orchestrator.results import build_table
    from orchestrator.report import write_report
    from spaces.registry import get_genotype

    cfg = load_sweep_config()
    recs = []
    for i, (name, lam) in enumerate([("DARTS_V2", 1e-3), ("DARTS_V1", 1e-2), ("DARTS_V2", 3e-2)]):
        g = get_genotype(name)
        r = _rec(f"t{i}", 0.9 - 0.1 * i, g.digest(), lam=lam, s=2, m=6 + i, epsilon=0.0)
        r["metrics"]["genotype"] = g.to_json()
        recs.append(r)
    v2 = get_genotype("DARTS_V2").digest()
    retrains = {v2: [{"seed": s, "test_acc": a, "params_m": 3.3, "flops_m": 540.0, "wall_time_s": 10.0,
                      "error": None} for s, a in ((0, 0.97), (1, 0.96))]}
    df = build_table(recs, retrains, cfg)
    md, html = write_report(df, str(tmp_path), cfg)
    text = open(md).read()
    assert "## Best genotype" in text and f"digest `{v2}`" in text and "0.9650 +/- 0.0071 (2 seeds)" in text
    assert "## Top genotypes" in text and "## All trials" in text and "## Parameter importances" in text
    for fig in ("search_vs_params.png", "acc_vs_params.png", "importances.png", f"cells/{v2}_normal.png",
                f"cells/{v2}_reduce.png"):
        assert os.path.getsize(tmp_path / "figures" / fig) > 1000 and f"figures/{fig}" in text
    assert "<table>" in open(html).read()


def test_max_concurrent_auto_is_twice_the_trials_the_cluster_holds():
    # an independent count: how many trials of (cpu, gpu) fit a cluster's totals, by adding trials one at a time
    def fits(cpus, gpus, cpu, gpu):
        n = 0
        while (n + 1) * cpu <= cpus + 1e-9 and (n + 1) * gpu <= gpus + 1e-9:
            n += 1
        return n

    for cpus, gpus, cpu, gpu in [(6, 0, 1, 0), (6, 1, 1, 0.25), (8, 2, 1, 0.3), (64, 8, 2, 0.5), (3, 0, 2, 0),
                                 (32, 4, 1, 1.0 / 3.0)]:
        cfg = load_sweep_config(overrides=["max_concurrent=auto", f"resources_per_trial.cpu={cpu}",
                                           f"resources_per_trial.gpu={gpu}"])
        cfg.validate()
        res = {"CPU": float(cpus), "GPU": float(gpus), "memory": 1e9}
        assert cfg.trial_slots(res) == fits(cpus, gpus, cpu, gpu), (cpus, gpus, cpu, gpu)
        assert cfg.concurrency(res) == 2 * fits(cpus, gpus, cpu, gpu)
    # a cluster that holds no trial yet (an autoscaler's head alone) still suggests 2; a number is kept as given
    cfg = load_sweep_config(overrides=["max_concurrent=auto", "resources_per_trial.gpu=1"])
    assert cfg.concurrency({"CPU": 4.0}) == 2
    assert load_sweep_config(overrides=["max_concurrent=5"]).concurrency({"CPU": 100.0}) == 5
