"""bench_sweep's pairing of the sweep's searches with the plain processes (pure logic, no Ray, no timing)."""
from __future__ import annotations

import importlib
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def bs():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module("bench_sweep")


A = {"lam": 0.004, "m": 7, "s": 2, "epsilon": 0.001}
B = {"lam": 0.002, "m": 6, "s": 3, "epsilon": 0.0}
C = {"lam": 0.003, "m": 5, "s": 2, "epsilon": 0.0}


def test_per_search_ratio_pairs_searches_by_config_not_by_position(bs):
    # the sweep started B, A, C; the processes ran A, C, B
    run = {"configs": [B, A, C], "in_trial_per_search_s": [30.0, 12.0, 20.0],
           "processes_per_search_s": [10.0, 25.0, 20.0]}
    got = bs._per_search_ratio(run, [A, C, B])
    assert got == pytest.approx(sorted([30.0 / 20.0, 12.0 / 10.0, 20.0 / 25.0])[1])   # median of 1.5, 1.2, 0.8
    assert not bs._same_configs([B, A, C], [A, C, B]) and bs._same_configs([A, B], [dict(A), dict(B)])
    assert bs._per_search_ratio(run, [A, C, dict(B, m=9)]) is None   # a config the processes did not run


def test_trial_start_order_reads_progress_csv(bs, tmp_path):
    # trial t1 started at 100 - 5 = 95, t2 at 90 - 8 = 82, t3 never reported
    for tid, ts, total in (("t1", 100.0, 5.0), ("t2", 90.0, 8.0)):
        d = tmp_path / f"trial_{tid}"
        d.mkdir()
        (d / "progress.csv").write_text(f"trial_id,timestamp,time_total_s\n{tid},{ts},{total}\n")
    assert bs.trial_start_order(str(tmp_path), ["t1", "t3", "t2"]) == [2, 0, 1]
