"""Random search with ``pick="trained"``: the wall-time-matched baseline (istanas.random_search).

The pick is the argmax of the recorded validation accuracies (checked with scripted accuracies), the budget is
respected by counting trained samples (budget 0: exactly one; a budget never reached: ``samples``), the samples are
the seeded draw of the untrained random search, and one real short training on digits gives an accuracy that is a
count over the validation half.
"""
from __future__ import annotations

import importlib
import json
import os
import random
import sys
from types import SimpleNamespace

import pytest

import istanas.random_search as rs
from istanas.config import ConfigError, deep_merge, from_dict, preset_data
from istanas.data import DataConfig
from istanas.random_search import RandomSearchConfig, random_search, sample_nb201
from istanas.search import run_search

ACCS = [0.20, 0.55, 0.70, 0.40, 0.70, 0.10]


def _cfg(**kw) -> RandomSearchConfig:
    base = dict(space="nb201", pick="trained", samples=6, C=4, layers=1, train_epochs=1, time_budget_s=1e9,
                data=DataConfig(dataset="digits", batch_size=32, image_size=8, limit_train=96))
    base.update(kw)
    return RandomSearchConfig(**base)


@pytest.fixture
def scripted(monkeypatch):
    calls = []

    def fake(cfg, g, loaders, device, seed):
        calls.append(g.to_arch_str())
        return ACCS[len(calls) - 1]

    monkeypatch.setattr(rs, "short_train", fake)
    return calls


def test_pick_is_the_argmax_of_recorded_val_acc_ties_to_earliest(scripted):
    r = random_search(_cfg(seed=4))
    accs = [row["val_acc"] for row in r.history]
    assert accs == ACCS and len(scripted) == 6
    assert r.final["picked"] == 2 == accs.index(max(accs))
    rng = random.Random(4)
    drawn = [sample_nb201(rng).to_arch_str() for _ in range(6)]     # the untrained random search's draw
    assert scripted == drawn and r.genotype.to_arch_str() == drawn[2]


def test_budget_zero_trains_exactly_one_sample(scripted):
    r = random_search(_cfg(time_budget_s=0.0))
    assert len(scripted) == 1 and r.final["samples"] == 1 and r.final["picked"] == 0


def test_samples_cap_the_count_when_the_budget_is_not_reached(scripted):
    r = random_search(_cfg(samples=3))
    assert len(scripted) == 3 and len(r.history) == 3 and r.final["picked"] == 2


def test_one_real_short_training_on_digits():
    r = run_search("random", _cfg(time_budget_s=0.0), progress=False)
    (row,) = r.history
    n_valid = 96 - int(96 * 0.5)                                     # the search split's validation half
    assert 0.0 <= row["val_acc"] <= 1.0 and abs(row["val_acc"] * n_valid - round(row["val_acc"] * n_valid)) < 1e-9
    assert r.final["val_acc"] == row["val_acc"]


def test_trained_pick_config_errors_name_the_field():
    for kw, field in ((dict(space="darts", layers=5), "pick"), (dict(train_epochs=0), "train_epochs"),
                      (dict(time_budget_s=-1.0), "time_budget_s"), (dict(lr=0.0), "lr")):
        with pytest.raises(ConfigError, match=field):
            _cfg(**kw).validate()
    cfg = from_dict(RandomSearchConfig, deep_merge(preset_data(RandomSearchConfig, "cpu_trained"),
                                                   {"data": {"dataset": "digits"}}))   # no CIFAR-10 needed here
    cfg.validate()
    assert cfg.pick == "trained" and (cfg.C, cfg.layers, cfg.data.image_size, cfg.data.limit_train) == (8, 1, 16, 2000)


def _bench(name: str):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)


def test_bench_random_trained_config_and_bad_inputs(tmp_path, capsys):
    bsq = _bench("bench_search_quality")
    cfg, name = bsq._config("random_trained", "cpu", 3, "cpu", 7.5)
    assert name == "cpu_trained" and cfg.pick == "trained" and cfg.time_budget_s == 7.5 and cfg.seed == 3
    table = tmp_path / "t.csv"
    table.write_text("x\n")
    out = str(tmp_path / "o.json")
    assert bsq.main(["--json", out, "--table", str(table), "--methods", "random_trained"]) == 2
    assert "--random-budget-s" in capsys.readouterr().err
    bc = _bench("bench_consistency")
    for argv, msg in ((["--cells", "10"], "--cells"), (["--methods", "params"], "--methods"),
                      (["--table", str(tmp_path / "missing.csv")], "--table")):
        assert bc.main(["--json", out, "--table", str(table), *argv]) == 2
        assert msg in capsys.readouterr().err
    assert not os.path.exists(out)


def test_bench_runs_random_trained_as_the_registry_random_method(tmp_path, monkeypatch):
    bsq = _bench("bench_search_quality")
    seen = []

    def fake_run_search(method, cfg, table=None, progress=True):
        seen.append((method, getattr(cfg, "pick", None), getattr(cfg, "time_budget_s", None)))
        rec = {"arch": "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "percentile": {"cifar10": 1.0},
               "cifar10": 10.0, "cifar100": 1.0, "ImageNet16-120": 1.0}
        return SimpleNamespace(extra={"benchmark": rec}, wall_time_s=4.0 if method == "twostage" else 3.0,
                               final={"samples": 2, "val_acc": 0.5})

    monkeypatch.setattr(bsq, "run_search", fake_run_search)
    table = tmp_path / "t.csv"
    table.write_text("x\n")
    out = tmp_path / "o.json"
    assert bsq.main(["--json", str(out), "--table", str(table), "--seeds", "0", "--methods", "random_trained",
                     "twostage"]) == 0
    assert seen == [("twostage", None, None), ("random", "trained", 4.0)]   # twostage first; its mean wall time
    assert json.loads(out.read_text())["methods"]["random_trained"]["runs"][0]["cells_trained"] == 2
