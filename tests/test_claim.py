"""One driver per sweep on local storage (:func:`orchestrator.claim.lock_sweep`): a second lock of the same sweep is
refused with the holder's pid, the kernel frees a killed holder's lock, and :func:`run_sweep` takes the lock before
Ray starts and gives it back however it ends.  No Ray is started here."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import orchestrator.sweep as sweep_mod
from orchestrator.claim import lock_path, lock_sweep
from orchestrator.sweep_config import load_sweep_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fcntl = pytest.importorskip("fcntl", reason="flock is POSIX")


def test_a_second_lock_of_the_same_sweep_is_refused_and_a_released_one_taken_again(tmp_path):
    first = lock_sweep(str(tmp_path / "store"), "s")
    assert os.path.isfile(lock_path(str(tmp_path / "store"), "s"))   # the storage folder was created
    with pytest.raises(RuntimeError, match=rf"'s' with storage .* is already running \(process {os.getpid()} holds"):
        lock_sweep(str(tmp_path / "store"), "s")
    other = lock_sweep(str(tmp_path / "store"), "s2")   # another name is free
    other.release()
    first.release()
    first.release()   # idempotent
    again = lock_sweep(str(tmp_path / "store"), "s")
    again.release()


def test_a_killed_drivers_lock_goes_with_it(tmp_path):
    code = ("import sys, time; from orchestrator.claim import lock_sweep; lock_sweep(sys.argv[1], 'k'); "
            "print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"   # blocks until the child holds the lock
        with pytest.raises(RuntimeError, match=f"process {proc.pid} holds"):
            lock_sweep(str(tmp_path), "k")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    lock_sweep(str(tmp_path), "k").release()   # no stale lock after the holder's death


def test_run_sweep_is_refused_before_ray_starts_and_releases_its_lock(tmp_path, monkeypatch):
    cfg = load_sweep_config(overrides=[f"storage_path={tmp_path}", "name=busy", "dashboard=false", "verbose=0",
                                       "search.device=cpu"])
    started = []
    monkeypatch.setattr(sweep_mod, "init_ray", lambda *a, **k: started.append(1) or (_ for _ in ()).throw(
        OSError("ray.init failed")))
    held = lock_sweep(cfg.storage, cfg.name)
    with pytest.raises(RuntimeError, match="'busy' with storage .* is already running"):
        sweep_mod.run_sweep(cfg, echo=False)
    assert started == []                       # refused before any Ray
    held.release()
    with pytest.raises(OSError, match="ray.init failed"):   # now it gets as far as Ray ...
        sweep_mod.run_sweep(cfg, echo=False)
    assert started == [1]
    lock_sweep(cfg.storage, cfg.name).release()   # ... and gave the lock back when that failed
