"""The sweep driver, :func:`run_sweep` (``launch/sweep.py`` wraps it).

Validate the config and the experiment folder (fresh: must not exist; ``resume``: must be restorable) before
``ray.init``, under a lock on the sweep's local storage; start or join Ray (:mod:`orchestrator.cluster`); on a
cluster, claim the sweep's name (:mod:`orchestrator.claim`);
run a ``Tuner`` (the trainable of :mod:`orchestrator.tune_trial`, ``OptunaSearch`` behind a ``ConcurrencyLimiter``,
ASHA over search epochs, trial checkpoints kept by Tune) or ``Tuner.restore`` it with ``resume``; :class:`SweepCallback`
keeps the custom metrics, prints a line per finished trial, and creates the post-processing actor when the sweep's
tail begins (every trial started, one ended: a slot is free); at the end the records of the whole ``ResultGrid``
go to that actor once, which retrains the top-k and writes the table and report.

An interrupted sweep (SIGINT / Ctrl+C: Tune saves the experiment and stops its trials, marking them TERMINATED)
is told apart from a finished one by the trials Tune really completed (:class:`SweepCallback` counts
``on_trial_complete`` / ``on_trial_error``, which the interruption does not call): nothing is retrained, only
``results/sweep_results.partial.csv`` is written (trials cut short have status ``INTERRUPTED``) and the outcome
says ``interrupted``; ``--resume`` finishes it.  On ``--resume`` a restored trial whose latest checkpoint is gone
(Tune deletes checkpoints beyond ``keep_checkpoints`` a moment before it snapshots the experiment; a driver killed
in between leaves a snapshot naming a deleted one) or fails its SHA-256 record is pointed at its newest good
checkpoint on disk, or restarted when it has none (:func:`repair_trial_checkpoint`).  A trial that no node of the
running cluster can hold for ``unplaceable_timeout_s`` ends the sweep (:mod:`orchestrator.unplaceable`): the partial
table is written and :class:`UnplaceableTrialError` names the trial and its request.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from istanas import checkpoint as ckpt
from istanas.config import ConfigError
from ray.tune import Callback

from .claim import claim_sweep, lock_sweep
from .cluster import cluster_address, exists, init_ray, preflight, read_text, warn_unplaceable, write_text
from .metrics import SweepMetrics
from .postprocess import create_postprocessor, record_from_result
from .results import build_table
from .sweep_config import INT_PARAMS, LOG_DEFAULT, SweepConfig, build_search_config
from .tune_trial import STATE_FILE, make_trainable
from .unplaceable import UnplaceableStopper, UnplaceableTrialError, UnplaceableWatch, reset, unplaceable_message
from .warm_start import close_gate, open_gate

CONFIG_NAME = "sweep_config.json"
PARTIAL_TABLE = "sweep_results.partial.csv"
#: Per sweep name, in this driver: ids of the trials Tune really ended (complete / error) in this session, and
#: those already ended when a restored experiment's first step ran.  Filled by :class:`SweepCallback` (which
#: ``Tuner.restore`` re-creates from its pickle, so the driver reads it here).
_ENDED: dict[str, set[str]] = {}
_ENDED_BEFORE: dict[str, Optional[set[str]]] = {}


class _Postprocessing:
    """The post-processing actor of one sweep in this driver, created on first :meth:`actor` call."""

    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        self.handle: Any = None

    def actor(self) -> Any:
        if self.handle is None:
            self.handle = create_postprocessor(self.cfg)
        return self.handle


#: Per sweep name, in this driver: its post-processing (see :func:`start_postprocessing`).
_POST: dict[str, _Postprocessing] = {}


def start_postprocessing(name: str) -> None:
    """Create the post-processing actor of the sweep ``name`` now and let it import what it will need, if this
    driver runs that sweep and has not yet (:class:`SweepCallback` calls it when the sweep's tail begins, so that
    this start-up runs on a slot no trial needs any more, not after the last trial)."""
    post = _POST.get(name)
    if post is not None and post.handle is None:
        post.actor().warm_up.remote()


# ---------------------------------------------------------------------------------------------- search space
def param_space(cfg: SweepConfig) -> dict[str, Any]:
    """The Tune search space: log-uniform / uniform floats, inclusive integer ranges, choices; fixed values are
    constants (recorded in every trial's config).  With ``m_per_node`` node j samples m_j in
    [low, min(high, n_j)]."""
    from ray import tune

    def domain(name: str, r, high_cap: Optional[int] = None) -> Any:
        if r.kind == "value":
            return r.value
        if r.kind == "choices":
            return tune.choice(list(r.choices))
        log = LOG_DEFAULT[name] if r.log is None else bool(r.log)
        if name in INT_PARAMS:
            lo, hi = int(r.low), int(r.high)
            if high_cap is not None:
                hi = min(hi, high_cap)
            return tune.lograndint(lo, hi + 1) if log else tune.randint(lo, hi + 1)
        return tune.loguniform(float(r.low), float(r.high)) if log else tune.uniform(float(r.low), float(r.high))

    space: dict[str, Any] = {}
    for name, r in cfg.space_params().items():
        if name == "m" and cfg.space.m_per_node:
            for j, nj in enumerate(cfg.node_sizes()):
                if r.kind == "choices":
                    space[f"m_{j}"] = tune.choice([c for c in r.choices if c <= nj])
                elif r.kind == "value":
                    space[f"m_{j}"] = min(int(r.value), nj)
                else:
                    space[f"m_{j}"] = domain("m", r, high_cap=nj)
        else:
            space[name] = domain(name, r)
    return space


def search_epochs(cfg: SweepConfig) -> int:
    """Epochs of one search (not searched): the base two-stage config's."""
    return int(build_search_config(cfg, {}, validate=False).epochs)


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def trial_name(trial: Any) -> str:
    return f"istanas_{trial.trial_id}"


# ------------------------------------------------------------------------------------------------ Tune callback
class SweepCallback(Callback):
    """Tune callback: custom metrics and one terminal line per finished trial.  It holds only names, so Tune can
    pickle it with the experiment and ``Tuner.restore`` brings it back."""

    def __init__(self, name: str, total: int, echo: bool = True):
        self.name = name
        self.total = total
        self.echo = echo
        self.metrics = SweepMetrics(name)
        self._finished: set[str] = set()

    def __getstate__(self) -> dict:
        return {"name": self.name, "total": self.total, "echo": self.echo}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], state["total"], state["echo"])

    def _running(self, trials: list) -> None:
        self.metrics.trials_running(sum(1 for t in trials if t.status == "RUNNING"))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if _ENDED_BEFORE.get(self.name) is not None:
            return
        # the first step: what a restored experiment had already ended; its other trials' checkpoints checked
        _ENDED_BEFORE[self.name] = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        for t in trials:
            if t.status not in ("TERMINATED", "ERROR"):
                note = repair_trial_checkpoint(t)
                if note and self.echo:
                    print(f"[sweep {self.name}] trial {t.trial_id}: {note}", file=sys.stderr, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running(trials)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        churn = result.get("support_churn")
        if isinstance(churn, (int, float)):
            self.metrics.support_churn(trial.trial_id, churn)

    def _finish(self, trials: list, trial: Any, status: str) -> None:
        self._running(trials)
        _ENDED.setdefault(self.name, set()).add(trial.trial_id)
        if len(trials) >= self.total:  # the tail: no trial is left to start, a slot has just freed up
            start_postprocessing(self.name)
        if trial.trial_id in self._finished:
            return
        self._finished.add(trial.trial_id)
        self.metrics.trial_finished(status)
        if self.echo:
            r = trial.last_result or {}
            done = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR") and t is not trial) + 1
            if status == "ERROR":
                what = "failed"
            elif r.get("search_done"):
                what = (f"finished: objective {r.get('objective', float('nan')):.4f}, "
                        f"genotype {r.get('genotype_digest', '?')}")
            else:
                what = (f"stopped early by ASHA at epoch {r.get('epoch', '?')} "
                        f"(val_acc {r.get('val_acc', float('nan')):.4f})")
            print(f"[sweep {self.name}] trial {trial.trial_id} {what} ({min(done, self.total)}/{self.total} done)",
                  flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trials, trial, "ERROR")


def _checkpoint_ok(folder: str) -> bool:
    path = os.path.join(folder, STATE_FILE)
    try:
        ckpt.load(path)
        return True
    except ckpt.CheckpointError:
        return False


def repair_trial_checkpoint(trial: Any) -> Optional[str]:
    """Before a restored ``trial`` starts: when the checkpoint Tune will restore it from is missing or fails
    :func:`istanas.checkpoint.load`, point the trial at its newest good ``checkpoint_*`` folder (or at none: it
    starts again).  Returns a note of what was done, None when nothing was wrong.  Local storage only."""
    found = trial.checkpoint
    if found is None or getattr(found.filesystem, "type_name", "local") != "local":
        return None
    if os.path.isdir(found.path) and _checkpoint_ok(found.path):
        return None
    from ray.train._internal.checkpoint_manager import _TrainingResult
    from ray.tune import Checkpoint

    trial_dir = trial.storage.trial_fs_path
    folders = sorted(glob.glob(os.path.join(trial_dir, "checkpoint_*")), reverse=True)
    good = next((f for f in folders if os.path.normpath(f) != os.path.normpath(found.path) and _checkpoint_ok(f)),
                None)
    manager = trial.run_metadata.checkpoint_manager
    kept = [r for r in manager._checkpoint_results if os.path.isdir(r.checkpoint.path)
            and os.path.normpath(r.checkpoint.path) != os.path.normpath(found.path)]
    why = "is missing" if not os.path.isdir(found.path) else "is damaged"
    if good is None:
        manager._latest_checkpoint_result = None
        manager._checkpoint_results = []
        note = f"checkpoint {found.path} {why} and no good one is left; the trial starts again"
    else:
        same = [r for r in kept if os.path.normpath(r.checkpoint.path) == os.path.normpath(good)]
        latest = same[0] if same else _TrainingResult(checkpoint=Checkpoint(good, found.filesystem), metrics={})
        manager._checkpoint_results = kept if same else kept + [latest]
        manager._latest_checkpoint_result = latest
        index = max(int(os.path.basename(f).split("_")[-1]) for f in folders)
        trial.storage.current_checkpoint_index = max(trial.storage.current_checkpoint_index, index)
        note = f"checkpoint {found.path} {why}; resuming from {good}"
    trial.run_metadata.invalidate_cache()
    trial.invalidate_json_state()
    return note


# ---------------------------------------------------------------------------------------------------- tuner
def result_loggers(cfg: SweepConfig) -> list:
    """Tune's per-trial result loggers, passed explicitly (JSON, CSV; TensorBoard only with ``cfg.tensorboard``);
    :func:`build_tuner` switches Tune's automatic ones off (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback(), *([TBXLoggerCallback()] if cfg.tensorboard else [])]


def build_tuner(cfg: SweepConfig, *, search_fn: Optional[Callable] = None, echo: bool = True,
                resume: bool = False, max_concurrent: Optional[int] = None):
    """The ``Tuner`` of ``cfg`` (or ``Tuner.restore`` of its experiment with ``resume``); ``max_concurrent``: the
    trials suggested at a time (default ``cfg.concurrency`` of the running Ray's resources)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    # the loggers travel in the run config (restored with it); Tune would otherwise add a TensorBoard writer
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    res = cfg.resources_per_trial
    trainable = tune.with_resources(make_trainable(cfg, search_fn), {"cpu": res.cpu, "gpu": res.gpu})
    if resume:
        return tune.Tuner.restore(cfg.experiment_path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    searcher = OptunaSearch(metric=cfg.metric, mode=cfg.mode, seed=cfg.seed,
                            points_to_evaluate=[dict(p) for p in cfg.points_to_evaluate] or None)
    if max_concurrent is None:
        import ray

        max_concurrent = cfg.concurrency(ray.cluster_resources() if cfg.max_concurrent == "auto" else {})
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    if cfg.asha.enabled:
        max_t = cfg.asha.max_t or search_epochs(cfg)
        scheduler = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=max_t,
                                  grace_period=min(cfg.asha.grace_period, max_t),
                                  reduction_factor=cfg.asha.reduction_factor, brackets=1, stop_last_trials=False)
    else:
        scheduler = FIFOScheduler()
    tune_config = tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=cfg.num_samples,
                                  reuse_actors=cfg.reuse_actors, trial_name_creator=trial_name,
                                  trial_dirname_creator=trial_dirname)
    run_config = tune.RunConfig(
        name=cfg.name, storage_path=cfg.storage,
        callbacks=[SweepCallback(cfg.name, cfg.num_samples, echo),
                   UnplaceableWatch(cfg.name, cfg.unplaceable_timeout_s), *result_loggers(cfg)],
        stop=UnplaceableStopper(cfg.name),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        verbose=cfg.verbose if echo else 0)
    return tune.Tuner(trainable, param_space=param_space(cfg), tune_config=tune_config, run_config=run_config)


# ----------------------------------------------------------------------------------------- experiment folder
def experiment_exists(cfg: SweepConfig) -> bool:
    if not cfg.is_uri:
        p = cfg.experiment_path
        return os.path.isdir(p) and any(n != "results" for n in os.listdir(p))
    return exists(cfg.experiment_path)


def can_restore(cfg: SweepConfig) -> bool:
    from ray.tune import Tuner

    return Tuner.can_restore(cfg.experiment_path)


def check_experiment(cfg: SweepConfig, resume: bool) -> None:
    """Fresh sweep: the experiment folder must not exist; ``resume``: it must hold a restorable experiment."""
    if resume:
        if not can_restore(cfg):
            raise ConfigError(f"--resume: no restorable sweep at {cfg.experiment_path}; start it without --resume")
        return
    if experiment_exists(cfg):
        raise ConfigError(f"{cfg.experiment_path} exists; pass --resume to continue that sweep, or choose another "
                          f"--name / --storage-path")


def save_sweep_config(cfg: SweepConfig) -> None:
    write_text(f"{cfg.experiment_path}/{CONFIG_NAME}", json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def load_saved_config(storage_path: str, name: str) -> Optional[dict]:
    """The config a sweep was started with (``<storage>/<name>/sweep_config.json``), or None."""
    cfg = SweepConfig(name=name, storage_path=storage_path)
    try:
        text = read_text(f"{cfg.experiment_path}/{CONFIG_NAME}")
        return json.loads(text) if text is not None else None
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------------------------ driver
@dataclass
class SweepOutcome:
    """What a sweep produced: paths of the table and report, the best trial, counts and times."""

    experiment_path: str
    table_csv: str
    table_parquet: str
    report_md: Optional[str]
    report_html: Optional[str]
    best_genotype_path: Optional[str]
    best: Optional[dict]
    num_trials: int
    num_errors: int
    tune_time_s: float
    wall_time_s: float
    summary: dict = field(default_factory=dict)
    #: the sweep was stopped (SIGINT) before every trial ended: only ``partial_table`` was written
    interrupted: bool = False
    partial_table: Optional[str] = None
    num_unfinished: int = 0
    num_not_started: int = 0
    #: (trial id, one-line reason) of every trial that ended in an error
    errors: list = field(default_factory=list)
    #: the trials suggested at a time (``max_concurrent`` resolved; None on ``--resume``: the restored searcher's)
    max_concurrent: Optional[int] = None

    @property
    def all_failed(self) -> bool:
        """Every trial of a sweep that ran to its end failed."""
        return not self.interrupted and self.num_trials > 0 and self.num_errors == self.num_trials


def _write_partial(cfg: SweepConfig, records: list[dict]) -> str:
    """``results/sweep_results.partial.csv``: one row per trial, true statuses (nothing retrained)."""
    df = build_table(records, {}, cfg)
    df.loc[df["status"] == "INTERRUPTED", "stopped_early"] = False  # cut short by the interruption, not by ASHA
    path = os.path.join(cfg.local_results_dir, PARTIAL_TABLE)
    ckpt.atomic_write_text(path, df.to_csv(index=False))
    return path


def sweep_demands(cfg: SweepConfig) -> dict[str, tuple[float, float]]:
    """``field -> (CPUs, GPUs)`` one trial and one retraining task ask for (for :func:`preflight`)."""
    res, rr = cfg.resources_per_trial, cfg.retrain.resources
    out = {"resources_per_trial": (float(res.cpu), float(res.gpu))}
    if cfg.retrain.top_k > 0:
        out["retrain.resources"] = (float(rr.cpu), float(rr.gpu))
    return out


def run_sweep(cfg: SweepConfig, *, resume: bool = False, search_fn: Optional[Callable] = None,
              echo: bool = True, validate: bool = True) -> SweepOutcome:
    """Run (or resume) the sweep ``cfg`` end to end; see the module docstring.  Uses an already initialised Ray
    as is (and leaves it running), otherwise starts one and shuts it down at the end."""
    t0 = time.perf_counter()
    if validate:
        cfg.validate()
    demands = sweep_demands(cfg)
    preflight(cfg, demands, storage_path=cfg.storage_path, seed=cfg.seed)
    lock = None if cfg.is_uri else lock_sweep(cfg.storage, cfg.name)
    try:
        check_experiment(cfg, resume)
        return _run_locked(cfg, demands, t0, resume=resume, search_fn=search_fn, echo=echo)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(cfg: SweepConfig, demands: dict, t0: float, *, resume: bool, search_fn: Optional[Callable],
                echo: bool) -> SweepOutcome:
    """:func:`run_sweep` once its checks passed and this driver holds the sweep's storage lock."""
    # Tune forces an experiment snapshot whenever a trial has written keep_checkpoints checkpoints since the
    # last one (what makes --resume exact); its warning about that is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started = init_ray(cfg, echo=echo, tag="sweep",
                       dashboard_note="; custom metrics ray_istanas_sweep_* on each node's Prometheus metrics port")
    import ray

    joined = bool(cluster_address(cfg))
    if joined:
        warn_unplaceable(demands)
    claim = gate = None
    post = _POST[cfg.name] = _Postprocessing(cfg)
    _ENDED[cfg.name], _ENDED_BEFORE[cfg.name] = set(), None
    reset(cfg.name)
    partial = None
    try:
        if joined:   # other drivers share this cluster; an embedded Ray is this driver's alone (the lock guards it)
            claim = claim_sweep(cfg.name)
        if not resume:
            save_sweep_config(cfg)
        resources = ray.cluster_resources()
        limit = cfg.concurrency(resources)
        if echo and cfg.max_concurrent == "auto" and not resume:
            print(f"[sweep {cfg.name}] max_concurrent auto: {limit} trials at a time (2 x the "
                  f"{limit // 2} that the cluster's resources hold at once)", flush=True)
        if cfg.reuse_actors and not resume:
            gate = open_gate(cfg.name, min(cfg.num_samples, limit, cfg.trial_slots(resources)),
                             cfg.warm_start_timeout_s)
        tuner = build_tuner(cfg, search_fn=search_fn, echo=echo, resume=resume, max_concurrent=limit)
        t1 = time.perf_counter()
        grid = tuner.fit()
        tune_s = time.perf_counter() - t1
        records = [record_from_result(r) for r in grid]
        ended = _ENDED.get(cfg.name, set()) | (_ENDED_BEFORE.get(cfg.name) or set())
        unfinished = [r for r in records if r["trial_id"] not in ended]
        not_started = max(0, cfg.num_samples - len(records))
        for r in unfinished:
            r["status"] = "INTERRUPTED"
        errors = [(r["trial_id"], r.get("error") or "?") for r in records if r["status"] == "ERROR"]
        stale = os.path.join(cfg.local_results_dir, PARTIAL_TABLE)
        if unfinished or not_started:
            partial = _write_partial(cfg, records)
            summary = {"table_csv": partial, "table_parquet": None, "report_md": None, "report_html": None,
                       "best_genotype_path": None, "best": None, "num_trials": len(records),
                       "num_errors": len(errors)}
        else:
            if echo:
                print(f"[sweep {cfg.name}] {len(records)} trials in {tune_s:.1f} s; post-processing "
                      f"(retrain top-{cfg.retrain.top_k} x {len(cfg.retrain.seeds)} seeds)", flush=True)
            summary = ray.get(post.actor().finalize.remote(records))
            if os.path.isfile(stale):
                os.unlink(stale)
    finally:
        close_gate(gate)
        _POST.pop(cfg.name, None)
        for actor in (post.handle, claim):
            if actor is not None:
                try:
                    ray.kill(actor)
                except Exception:
                    pass
        if started:
            ray.shutdown()
    wall = time.perf_counter() - t0
    stuck = unplaceable_message(cfg.name)
    if stuck:
        raise UnplaceableTrialError(f"{stuck}; the sweep stopped, results so far (true statuses): {partial}")
    return SweepOutcome(experiment_path=cfg.experiment_path, table_csv=summary["table_csv"],
                       table_parquet=summary["table_parquet"], report_md=summary["report_md"],
                       report_html=summary["report_html"], best_genotype_path=summary["best_genotype_path"],
                       best=summary["best"], num_trials=summary["num_trials"], num_errors=summary["num_errors"],
                       tune_time_s=tune_s, wall_time_s=wall, summary=summary, interrupted=partial is not None,
                       partial_table=partial, num_unfinished=len(unfinished), num_not_started=not_started,
                       errors=errors, max_concurrent=None if resume else limit)


__all__ = ["run_sweep", "build_tuner", "param_space", "search_epochs", "check_experiment",
           "load_saved_config", "save_sweep_config", "SweepCallback", "SweepOutcome", "CONFIG_NAME",
           "PARTIAL_TABLE", "repair_trial_checkpoint"]
