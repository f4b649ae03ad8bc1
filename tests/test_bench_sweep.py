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


def test_makespan_is_list_scheduling_in_start_order(bs):
    # 2 slots: 5 -> A (0-5), 3 -> B (0-3), 4 -> B (3-7), 2 -> A (5-7); 6 alone on 1 slot
    assert bs.makespan([5.0, 3.0, 4.0, 2.0], 2) == 7.0
    assert bs.makespan([5.0, 3.0, 4.0, 6.0], 2) == 11.0   # the 6 starts on A, free first (at 5)
    assert bs.makespan([6.0], 1) == 6.0


def _pair(bs, scale: float, sweep_fixed: float, cpu_per_wall: float, hook_wall: float, hook_cpu: float) -> dict:
    """A (sweep, processes) pair: processes' searches [5, 3, 4, 2] s at 1 CPU-s per s and 2 s of fixed cost; the
    trials' searches ``scale`` times as long (the machine's drift), plus their hooks."""
    proc = [5.0, 3.0, 4.0, 2.0]
    trial = [t * scale / cpu_per_wall + hook_wall / 4 for t in proc]
    cpu = sum(t * scale for t in proc) + hook_cpu
    return {"in_trial_per_search_s": trial, "processes_per_search_s": proc, "processes_per_search_cpu_s": proc,
            "processes_s": 7.0 + 2.0, "sweep_s": bs.makespan(trial, 2) + sweep_fixed,
            "per_epoch": {"search_wall_s": sum(trial), "search_thread_cpu_s": cpu, "hook_wall_s": hook_wall,
                          "hook_cpu_s": hook_cpu}}


def test_same_speed_ratio_takes_the_searches_drift_out_and_keeps_what_ray_adds(bs):
    # no drift, nothing added: 1
    assert bs.decompose(_pair(bs, 1.0, 2.0, 1.0, 0.0, 0.0), 2)["same_speed_ratio"] == pytest.approx(1.0)
    # the trials' searches 30 % slower from drift alone (same CPU per wall): the raw ratio moves, this one not
    slow = _pair(bs, 1.3, 2.0, 1.0, 0.0, 0.0)
    assert slow["sweep_s"] / slow["processes_s"] > 1.2
    assert bs.decompose(slow, 2)["same_speed_ratio"] == pytest.approx(1.0)
    # what the sweep adds is kept: 1 s more fixed cost, 5 % preemption, hooks of 0.7 s (0.4 s of it CPU)
    d = bs.decompose(_pair(bs, 1.3, 3.0, 1 / 1.05, 0.7, 0.4), 2)
    assert d["sweep_fixed_s"] == pytest.approx(3.0) and d["processes_fixed_s"] == pytest.approx(2.0)
    assert d["preemption"] == pytest.approx(1.05)
    assert d["hooks_per_search_s"] == pytest.approx(0.7 / (14.0 * 1.3 * 1.05))
    assert d["same_speed_ratio"] == pytest.approx((7.0 * 1.05 * (1 + 0.7 / (14.0 * 1.3 * 1.05)) + 3.0) / 9.0)
