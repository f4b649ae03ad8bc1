"""End-to-end sweeps on a local Ray with 2 CPUs (slow): Optuna suggestions, ASHA, errors, retraining, resume.

The searches are tiny (1-3 epochs of a 4-channel, 3-cell super-net on a slice of scikit-learn's digits).  Two
tests use rigged stand-ins for the search (``orchestrator.tune_trial.SearchFn``) through the same orchestrator code
path, so that ASHA's decision and a failing trial are deterministic.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

import torch

from istanas.engine import NonFiniteLossError
import orchestrator.sweep as sweep_mod
from orchestrator.claim import NAMESPACE, actor_name, claim_sweep
from orchestrator.sweep import run_sweep
from orchestrator.sweep_config import SweepConfig, load_sweep_config
from spaces.registry import load_genotype

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["search.epochs=2", "search.C=4", "search.layers=3", "search.data.limit_train=256",
        "search.data.limit_test=64", "search.data.batch_size=32", "search.device=cpu",
        "retrain.epochs=1", "retrain.seeds=[0, 1]", "retrain.overrides={C: 4, layers: 3, device: cpu}"]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="istanas", log_to_driver=False,
             _system_config={"metrics_report_interval_ms": 1000})
    # the rigged search functions below live in this test module: ship them to the workers by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def _cfg(tmp_path, *overrides, name="t"):
    return load_sweep_config(overrides=[f"storage_path={tmp_path}", f"name={name}", "dashboard=false",
                                        "verbose=0", *TINY, *overrides])


# ------------------------------------------------------------------------------------------- rigged searches
def _genotype(k: int) -> dict:
    ops = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
           "dil_conv_5x5"]
    cell = [[ops[(k + i) % 7], i % 2] for i in range(8)]
    return {"space": "darts", "normal": cell, "normal_concat": [2, 3, 4, 5], "reduce": cell,
            "reduce_concat": [2, 3, 4, 5]}


def rigged_search(cfg, *, data=None, on_epoch_end=None, resume=None, progress=False):
    """val_acc depends only on lambda (0.9 below 1e-2, 0.2 above); lambda = 0.08 is a NaN loss."""
    lam = cfg.recovery.lam
    start = int(resume["epoch"]) if resume else 0
    hist = list(resume["history"]) if resume else []
    for e in range(start, cfg.epochs):
        time.sleep(0.2)
        if abs(lam - 0.08) < 1e-12:
            raise NonFiniteLossError(f"train_loss became nan in epoch {e + 1}; lower the learning rate")
        acc = (0.9 if lam < 1e-2 else 0.2) + 0.01 * e
        m = {"epoch": e + 1, "val_acc": acc, "val_loss": 1 - acc, "train_acc": acc, "support_churn": 0.0}
        hist.append(m)
        if on_epoch_end:
            on_epoch_end(dict(m), {"epoch": e + 1, "task": {"x": torch.zeros(1)}, "history": hist,
                                   "done": e + 1 == cfg.epochs})
    return {"genotype": _genotype(int(-math.log10(lam))), "history": hist, "final": {}}


# --------------------------------------------------------------------------------------------------- tests
def test_sweep_of_real_searches_retrains_top_k(ray_local, tmp_path):
    import pandas as pd


    cfg = _cfg(tmp_path, "num_samples=4", "max_concurrent=2", "asha.enabled=false", "retrain.top_k=2")
    # the node's Prometheus export is scraped from the start: a trial's support-churn gauge lives only while it is
    # re-exported, so on a busy machine it can expire before the sweep (retraining included) returns
    scraper = _Scraper(ray_local, 'sweep="t"')
    try:
        out = run_sweep(cfg, echo=False)
    finally:
        scraper.stop()
    df = pd.read_parquet(out.table_parquet)
    assert len(df) == 4 and df["trial_id"].is_unique and (df["status"] == "TERMINATED").all()
    # Optuna's suggestions: recorded per trial, inside the space, different across trials
    configs = df[["config/lam", "config/s", "config/m", "config/epsilon"]]
    assert len(configs.drop_duplicates()) == 4 and configs["config/lam"].nunique() == 4
    assert configs["config/lam"].between(1e-4, 1e-1).all() and configs["config/m"].between(4, 10).all()
    assert set(configs["config/s"]) <= {2, 3} and set(configs["config/epsilon"]) <= {0.0, 1e-3}
    # each trial's search really ran with its suggested lambda (Tune's own per-trial record)
    for _, row in df.iterrows():
        params = json.load(open(os.path.join(cfg.experiment_path, f"trial_{row['trial_id']}", "params.json")))
        assert params["lam"] == pytest.approx(row["config/lam"])
    assert df["search_done"].all() and df["val_acc"].between(0, 1).all()
    assert (df["genotype_digest"].str.len() == 12).all()
    # the top-k distinct genotypes were retrained over both seeds; their rows carry accuracies and sizes
    retrained = df[df["retrained"] & df["duplicate_of"].isna()]
    n_unique = df["genotype_digest"].nunique()
    assert len(retrained) == min(2, n_unique)
    assert set(retrained["unique_rank"]) == set(range(1, len(retrained) + 1))
    assert (retrained["retrain_seeds"] == 2).all() and retrained["retrain_acc_mean"].between(0, 1).all()
    assert (retrained["params_m"] > 0).all() and (retrained["retrain_cpu_hours"] > 0).all()
    for _, row in retrained.iterrows():
        runs = [json.load(open(os.path.join(out.summary["results_dir"], "retrain",
                                            f"{row['genotype_digest']}_seed{s}.json"))) for s in (0, 1)]
        accs = [r["test_acc"] for r in runs]
        assert row["retrain_acc_mean"] == pytest.approx(sum(accs) / 2)
        assert row["retrain_acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    # best genotype, CSV twin, report
    g = load_genotype(open(out.best_genotype_path).read())
    assert g.digest() == out.best["genotype_digest"]
    assert len(pd.read_csv(out.table_csv)) == 4
    assert os.path.isfile(out.report_md) and os.path.isfile(out.report_html)
    assert "search_vs_params.png" in open(out.report_md).read()
    with pytest.raises(ValueError):  # the named actor is gone with its sweep
        ray_local.get_actor(actor_name(cfg.name), namespace=NAMESPACE)
    # the custom metrics reached the node's Prometheus endpoint (exported every second: wait until all are there)
    def finished(lines: list[str]) -> list[str]:
        return [ln for ln in lines if ln.startswith("ray_istanas_sweep_trials_finished_total")]

    def churn(lines: list[str]) -> list[str]:
        return [ln for ln in lines if ln.startswith("ray_istanas_sweep_support_churn")]

    def total(lines: list[str]) -> float:
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)

    # Ray keeps a gauge's series only while it is re-exported (a TTL of two export intervals), so on a busy
    # machine one scrape can miss a series: every series is looked for across the scrapes, until all are seen.
    metrics = _scrape(ray_local, 'sweep="t"', lambda ls: total(finished(ls)) >= 4 and len(churn(ls)) >= 4,
                      seen=scraper.seen)
    assert finished(metrics) and total(finished(metrics)) == 4, metrics
    assert len(churn(metrics)) == 4, metrics


def _series(line: str) -> str:
    return line.rsplit(" ", 1)[0]


def _metrics_url(ray) -> str:
    node = next(n for n in ray.nodes() if n["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def _scrape_once(url: str, tag: str, seen: dict[str, str]) -> None:
    """One scrape of ``url``: each series carrying ``tag`` -> its latest line, into ``seen``."""
    import urllib.request

    try:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    except OSError:
        text = ""
    for ln in text.splitlines():
        if tag in ln and not ln.startswith("#"):
            seen[_series(ln)] = ln


class _Scraper:
    """Scrapes the node's Prometheus export every 0.5 s in a thread until :meth:`stop` (series into ``seen``)."""

    def __init__(self, ray, tag: str):
        import threading

        self.url, self.tag, self.seen = _metrics_url(ray), tag, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            _scrape_once(self.url, self.tag, self.seen)
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _scrape(ray, tag: str, ready, timeout: float = 180.0, seen: dict[str, str] | None = None) -> list[str]:
    """The series of this node's Prometheus export that carry ``tag``, each one's latest line over the scrapes so
    far (``seen``: those of earlier scrapes), as soon as ``ready(lines)`` holds (or what was seen when ``timeout``
    seconds have passed)."""
    url = _metrics_url(ray)
    seen = {} if seen is None else seen
    deadline = time.time() + timeout
    while time.time() < deadline:
        _scrape_once(url, tag, seen)
        if ready(list(seen.values())):
            break
        time.sleep(0.5)
    return list(seen.values())


def test_asha_stops_a_rigged_trial_and_a_failing_trial_is_reported(ray_local, tmp_path):
    import pandas as pd

    points = "points_to_evaluate=[{lam: 0.001, s: 2, m: 6, epsilon: 0.0}, {lam: 0.03, s: 2, m: 6, epsilon: 0.0}, " \
             "{lam: 0.08, s: 2, m: 6, epsilon: 0.0}]"
    cfg = _cfg(tmp_path, "num_samples=5", "max_concurrent=1", "search.epochs=4", "asha.grace_period=1",
               "asha.reduction_factor=2", "retrain.top_k=0", points, name="rigged")
    out = run_sweep(cfg, search_fn=rigged_search, echo=False)
    df = pd.read_parquet(out.table_parquet).set_index("config/lam")
    assert len(df) == 5 and df["trial_id"].is_unique
    good, bad, nan = df.loc[0.001], df.loc[0.03], df.loc[0.08]
    assert good["search_done"] and good["search_epochs"] == 4 and good["objective"] == pytest.approx(0.93)
    # ASHA: the second trial is below the first one's value at the first rung and is stopped there
    assert bad["status"] == "TERMINATED" and bad["stopped_early"] and bad["search_epochs"] == 1
    # the NaN-loss trial ends as an error with its reason; the sweep finished the others
    assert nan["status"] == "ERROR" and "NonFiniteLossError" in nan["error"] and "nan" in nan["error"]
    assert (df["status"] == "ERROR").sum() == 1 and out.num_errors == 1
    others = df.drop(index=[0.03, 0.08])
    assert (others["status"] == "TERMINATED").all()


def _descendants(pid: int) -> list[int]:
    """Pids of the live descendants of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _run_until(args: list[str], log_path, until: int, sig: int, timeout: float = 240.0) -> tuple[int, str]:
    """Run the sweep launcher ``args`` with its output in ``log_path`` until ``until`` lines say a trial finished,
    then send ``sig`` to the driver; returns (exit status, log).  After a SIGKILL the Ray processes the driver
    started (its descendants) are killed too and waited for (a deadline, not a fixed sleep)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline and proc.poll() is None:
                if log_path.read_text().count("finished: objective") >= until:
                    break
                time.sleep(0.2)
            assert proc.poll() is None, "the sweep ended before it could be stopped:\n" + log_path.read_text()
            family = _descendants(proc.pid)
            os.kill(proc.pid, sig)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if sig == signal.SIGKILL:
        for pid in family + _descendants(proc.pid):  # Ray processes of the dead driver that outlive it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        gone = time.time() + 30
        while time.time() < gone and any(os.path.exists(f"/proc/{p}") and _alive(p) for p in family):
            time.sleep(0.2)
    return rc, log_path.read_text()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _finished_ids(text: str) -> set[str]:
    return {ln.split(" trial ")[1].split()[0] for ln in text.splitlines() if "finished: objective" in ln}


#: columns of sweep_results.csv that differ between two identical sweeps: Tune's random trial ids (and the
#: duplicate_of links made of them), wall / CPU times, the node
NONDETERMINISTIC = ("trial_id", "duplicate_of", "error", "search_time_s", "search_session_s", "search_cpu_hours",
                    "search_gpu_hours", "retrain_cpu_hours", "retrain_gpu_hours", "cpu_hours", "gpu_hours", "node_ip",
                    "node_id")


def _assert_same_table(df, ref) -> None:
    """Rows matched by their trial config; every deterministic column equal (floats to 1e-9 relative)."""
    import pandas as pd

    cols = [c for c in ref.columns if c not in NONDETERMINISTIC]
    assert sorted(df.columns) == sorted(ref.columns)
    keys = sorted(c for c in cols if c.startswith("config/"))
    assert keys
    a, b = (t.sort_values(keys).reset_index(drop=True)[cols] for t in (df, ref))
    assert len(a) == len(b)
    for c in cols:
        if pd.api.types.is_float_dtype(b[c]):
            assert a[c].isna().equals(b[c].isna()), c
            assert [x == pytest.approx(y, rel=1e-9, abs=1e-12) for x, y in zip(a[c].dropna(), b[c].dropna())] \
                == [True] * int(b[c].notna().sum()), (c, list(a[c]), list(b[c]))
        else:
            assert list(a[c].astype(str)) == list(b[c].astype(str)), (c, list(a[c]), list(b[c]))


def test_interrupted_then_killed_then_resumed_sweep_gives_every_trial_once(tmp_path):
    """Ctrl+C (SIGINT) mid-sweep: exit 130, a partial table with the true statuses, nothing retrained; --resume,
    killed (SIGKILL) mid-run; --resume again: the whole sweep, every trial once, every epoch reported, and the
    same table as an uninterrupted run of the same sweep (the columns in NONDETERMINISTIC aside)."""
    import pandas as pd

    args = [sys.executable, os.path.join(REPO, "launch", "sweep.py"), "--storage-path", str(tmp_path),
            "--name", "killed", "--no-dashboard", "--num-cpus", "2", "--num-samples", "4", "--no-progress"]
    sets = [x for o in [*TINY, "asha.enabled=false", "retrain.top_k=1", "retrain.seeds=[0]", "search.epochs=3"]
            for x in ("--set", o)]
    exp = os.path.join(tmp_path, "killed")
    results = os.path.join(exp, "results")
    rc, first = _run_until(args + sets, tmp_path / "first.log", 1, signal.SIGINT)
    assert rc == 130, first[-3000:]
    assert "sweep INTERRUPTED" in first and "sweep done" not in first
    assert "post-processing" not in first and "retraining" not in first
    part = pd.read_csv(os.path.join(results, "sweep_results.partial.csv"))
    finished_before = _finished_ids(first)
    assert finished_before and finished_before <= set(part["trial_id"])
    done = part[part["trial_id"].isin(finished_before)]
    assert (done["status"] == "TERMINATED").all() and done["search_done"].all()
    cut = part[~part["trial_id"].isin(finished_before)]
    assert (cut["status"] == "INTERRUPTED").all() and not cut["stopped_early"].any()
    assert not os.path.exists(os.path.join(results, "sweep_results.csv"))
    assert not os.path.exists(os.path.join(results, "best_genotype.json"))
    assert not os.path.exists(os.path.join(results, "report.md"))
    assert not os.path.isdir(os.path.join(results, "retrain"))

    rc, second = _run_until(args + ["--resume"], tmp_path / "second.log", 1, signal.SIGKILL)
    assert "sweep done" not in second
    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "results table:" in res.stdout and "best genotype:" in res.stdout
    df = pd.read_csv(os.path.join(results, "sweep_results.csv"))
    assert len(df) == 4 and df["trial_id"].is_unique and (df["status"] == "TERMINATED").all()
    assert finished_before | _finished_ids(second) <= set(df["trial_id"])
    assert df["search_done"].all() and (df["search_epochs"] == 3).all()
    assert not os.path.exists(os.path.join(results, "sweep_results.partial.csv"))
    # every trial reported every epoch (a resumed trial continues from its last checkpoint)
    for tid in df["trial_id"]:
        lines = open(os.path.join(exp, f"trial_{tid}", "result.json")).read().splitlines()
        epochs = [json.loads(ln)["epoch"] for ln in lines if ln.strip()]
        assert sorted(set(epochs)) == [1, 2, 3]
    trial_dirs = [d for d in os.listdir(exp) if d.startswith("trial_")]
    assert set(df["trial_id"]) <= {d[len("trial_"):] for d in trial_dirs}

    # the same table as the same sweep run without interruption: same trial configs (Optuna seeded), same final
    # metrics (deterministic digits searches, resumed from epoch checkpoints with their RNG state), same retraining
    ref_args = [a if a != "killed" else "uninterrupted" for a in args]
    res = subprocess.run(ref_args + sets, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ref = pd.read_csv(os.path.join(tmp_path, "uninterrupted", "results", "sweep_results.csv"))
    _assert_same_table(df, ref)


def test_sweep_whose_trials_all_fail_says_so(ray_local, tmp_path):
    points = "points_to_evaluate=[{lam: 0.08, s: 2, m: 6, epsilon: 0.0}, {lam: 0.08, s: 3, m: 6, epsilon: 0.0}]"
    cfg = _cfg(tmp_path, "num_samples=2", "max_concurrent=1", "search.epochs=1", "asha.grace_period=1", "retrain.top_k=1",
               points, name="allfail")
    out = run_sweep(cfg, search_fn=rigged_search, echo=False)
    assert out.all_failed and not out.interrupted and out.num_errors == 2
    assert len(out.errors) == 2 and all("NonFiniteLossError" in why for _, why in out.errors)


def test_a_second_driver_of_a_running_sweep_is_refused(ray_local):
    """The claim (:mod:`orchestrator.claim`): a live claim of the same name refuses a second one with a clear
    error, a released name can be claimed again, and the claim actor's process loads no torch (it lives through
    the whole sweep next to the trials)."""
    first = claim_sweep("dup")
    try:
        with pytest.raises(RuntimeError, match="'dup' is already running"):
            claim_sweep("dup", wait_s=0.5)
        other = claim_sweep("dup-other")   # another name is free
        ray_local.kill(other)
        loaded = ray_local.get(first.__ray_call__.remote(
            lambda self: sorted(m for m in ("torch", "orchestrator.sweep_config", "pandas") if m in sys.modules)))
        assert loaded == [], loaded
    finally:
        ray_local.kill(first)
    again = claim_sweep("dup")  # waits (within its deadline) for the killed claim to go away
    assert ray_local.get(again.sweep.remote()) == "dup"
    ray_local.kill(again)


class _FakeActor:
    def __init__(self, log: list):
        self.log = log
        self.warm_up = SimpleNamespace(remote=lambda: log.append("warm_up"))


def test_the_post_processing_actor_starts_when_the_tail_begins(monkeypatch):
    """:class:`SweepCallback` creates the post-processing actor (and starts its imports) once every trial has been
    started and one has ended, not before and only once; a sweep this driver does not run is left alone."""
    log: list = []
    monkeypatch.setattr(sweep_mod, "create_postprocessor", lambda cfg: log.append(f"create {cfg.name}")
                        or _FakeActor(log))
    cfg = SweepConfig(name="tail")
    monkeypatch.setitem(sweep_mod._POST, "tail", sweep_mod._Postprocessing(cfg))
    cb = sweep_mod.SweepCallback("tail", total=3, echo=False)
    trial = lambda i, status: SimpleNamespace(trial_id=str(i), status=status, last_result={})  # noqa: E731
    running = [trial(0, "TERMINATED"), trial(1, "RUNNING")]
    cb.on_trial_complete(0, running, running[0])           # a third trial is still to start: its slot is needed
    assert log == []
    full = running + [trial(2, "RUNNING")]
    cb.on_trial_error(0, full, full[1])                    # all three started, one slot free: the tail
    assert log == ["create tail", "warm_up"]
    full[2].status = "TERMINATED"
    cb.on_trial_complete(0, full, full[2])
    assert log == ["create tail", "warm_up"]               # once
    other = sweep_mod.SweepCallback("not-here", total=1, echo=False)
    other.on_trial_complete(0, [trial(5, "TERMINATED")], trial(5, "TERMINATED"))
    assert log == ["create tail", "warm_up"]
