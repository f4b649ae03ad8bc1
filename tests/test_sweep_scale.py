"""Sweep checkpointing and resume at scale (slow, local Ray with 2 CPUs, stand-in searches through the real
orchestrator path: ``run_sweep`` -> ``orchestrator.tune_trial``).

* ``checkpoint_every = 2`` over 4 epochs: exactly the epoch-2 and epoch-4 (last) trial checkpoints exist, and a
  sweep interrupted (SIGINT, as Ctrl+C) in epoch 3 resumes from the epoch-2 checkpoint with ``resume=True``.
* A 200-trial sweep interrupted after about 100 trials and resumed: every trial's final result exactly once.

Each stand-in interrupts the driver itself (``os.kill(driver, SIGINT)``, Tune's own Ctrl+C path), so where the
interruption falls is a condition, not a timing.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time

import pytest
import torch

from istanas.checkpoint import load
from orchestrator.sweep import run_sweep
from orchestrator.sweep_config import load_sweep_config
from orchestrator.tune_trial import STATE_FILE

pytestmark = pytest.mark.slow

GENOTYPE = {"space": "darts", "normal": [["skip_connect", i % 2] for i in range(8)], "normal_concat": [2, 3, 4, 5],
            "reduce": [["max_pool_3x3", i % 2] for i in range(8)], "reduce_concat": [2, 3, 4, 5]}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="istanas", log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stand-ins below ship by value
    yield ray
    ray.shutdown()


def _cfg(tmp_path, marks, *overrides):
    (marks / "driver.pid").write_text(str(os.getpid()))
    return load_sweep_config(overrides=[f"storage_path={tmp_path}", "dashboard=false", "verbose=0",
                                        "asha.enabled=false", "retrain.top_k=0", "search.device=cpu",
                                        f"search.out={marks}", *overrides])


def _interrupt_driver(marks: str) -> None:
    """SIGINT to the driver (Tune saves the experiment and stops the trials), then wait to be stopped."""
    with open(os.path.join(marks, "driver.pid"), encoding="ascii") as f:
        os.kill(int(f.read()), signal.SIGINT)
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.05)
    raise RuntimeError("the trial was not stopped after the driver's SIGINT")


def _once(path: str) -> bool:
    """Create ``path`` if it does not exist; True for the one caller that created it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


# ------------------------------------------------------------------------------------ checkpoint_every
def epochs_search(cfg, *, data=None, on_epoch_end=None, resume=None, progress=False):
    """``cfg.epochs`` instant epochs, resumable from the state it reports; the first attempt interrupts the
    driver in epoch 3.  Writes ``start-<first epoch>`` per run."""
    start = int(resume["epoch"]) if resume else 0
    hist = list(resume["history"]) if resume else []
    open(os.path.join(cfg.out, f"start-{start}-{time.time_ns()}"), "w").close()
    for e in range(start, cfg.epochs):
        if e + 1 == 3 and _once(os.path.join(cfg.out, "interrupted")):
            _interrupt_driver(cfg.out)
        m = {"epoch": e + 1, "val_acc": 0.1 * (e + 1), "val_loss": 1.0, "support_churn": 0.0}
        hist.append(m)
        on_epoch_end(dict(m), {"epoch": e + 1, "task": {"w": torch.full((2,), float(e + 1))}, "history": hist,
                               "done": e + 1 == cfg.epochs})
    return {"genotype": GENOTYPE, "history": hist, "final": {}}


def _checkpoint_epochs(trial_dir: str) -> list[int]:
    return sorted(int(load(p)["epoch"]) for p in glob.glob(os.path.join(trial_dir, "checkpoint_*", STATE_FILE)))


def test_checkpoint_every_2_of_4_epochs_keeps_epochs_2_and_4_and_resume_continues(ray_local, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    cfg = _cfg(tmp_path, marks, "name=ck", "num_samples=1", "max_concurrent=1", "search.epochs=4",
               "checkpoint_every=2", "keep_checkpoints=10")
    first = run_sweep(cfg, search_fn=epochs_search, echo=False)
    assert first.interrupted and first.num_unfinished == 1
    (trial_dir,) = glob.glob(os.path.join(cfg.experiment_path, "trial_*"))
    assert _checkpoint_epochs(trial_dir) == [2]                     # epoch 1 reported without a checkpoint
    again = run_sweep(cfg, resume=True, search_fn=epochs_search, echo=False)
    assert not again.interrupted and again.num_trials == 1 and again.num_errors == 0
    starts = sorted(int(os.path.basename(p).split("-")[1]) for p in glob.glob(str(marks / "start-*")))
    assert starts == [0, 2]                                          # the resumed run began after epoch 2
    assert _checkpoint_epochs(trial_dir) == [2, 4]                   # every 2nd epoch; the last always
    lines = [json.loads(ln) for ln in open(os.path.join(trial_dir, "result.json")) if ln.strip()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]               # each epoch reported once
    assert [r["search_done"] for r in lines] == [0, 0, 0, 1]
    assert [r["checkpoint_dir_name"] is not None for r in lines] == [False, True, False, True]


# ---------------------------------------------------------------------------------------- 200 trials
def tiny_search(cfg, *, data=None, on_epoch_end=None, resume=None, progress=False):
    """One instant epoch; writes ``run-<trial id>-<ns>``; the trial that finds 100 runs started interrupts the
    driver (once)."""
    from ray import tune

    tid = tune.get_context().get_trial_id()
    open(os.path.join(cfg.out, f"run-{tid}-{time.time_ns()}"), "w").close()
    if len(glob.glob(os.path.join(cfg.out, "run-*"))) >= 100 and _once(os.path.join(cfg.out, "interrupted")):
        _interrupt_driver(cfg.out)
    m = {"epoch": 1, "val_acc": 0.5, "val_loss": 0.5, "support_churn": 0.0}
    on_epoch_end(dict(m), {"epoch": 1, "task": {}, "history": [m], "done": True})
    return {"genotype": GENOTYPE, "history": [m], "final": {}}


def test_resume_of_a_200_trial_sweep_gives_every_result_exactly_once(ray_local, tmp_path):
    import pandas as pd

    marks = tmp_path / "marks"
    marks.mkdir()
    cfg = _cfg(tmp_path, marks, "name=many", "num_samples=200", "max_concurrent=4",
               "search.epochs=1")
    first = run_sweep(cfg, search_fn=tiny_search, echo=False)
    assert first.interrupted
    part = pd.read_csv(first.partial_table)
    done_before = set(part.loc[part["status"] == "TERMINATED", "trial_id"])
    assert 90 <= len(done_before) < 200
    again = run_sweep(cfg, resume=True, search_fn=tiny_search, echo=False)
    assert not again.interrupted and again.num_trials == 200 and again.num_errors == 0
    df = pd.read_csv(again.table_csv)
    assert len(df) == 200 and df["trial_id"].is_unique and (df["status"] == "TERMINATED").all()
    assert df["search_done"].all()
    assert done_before <= set(df["trial_id"])
    # every trial's final result once on disk as well, and no finished trial ran again after the restore
    for tid in df["trial_id"]:
        lines = [json.loads(ln) for ln in open(os.path.join(cfg.experiment_path, f"trial_{tid}", "result.json"))
                 if ln.strip()]
        assert sum(r["search_done"] == 1 for r in lines) == 1, tid
    runs: dict[str, int] = {}
    for p in glob.glob(str(marks / "run-*")):
        tid = os.path.basename(p).split("-")[1]
        runs[tid] = runs.get(tid, 0) + 1
    assert set(runs) == set(df["trial_id"])
    assert all(runs[t] == 1 for t in done_before)
