"""One Tune trial = one search of the sweep's method (:func:`istanas.search.run_search`), reporting through Tune.

:func:`make_trainable` returns the function trainable the Tuner runs.  A trial builds its search config (preset <
``sweep.search`` < the values Optuna sampled), restores the search state from Tune's checkpoint when the trial is
resumed, and runs the search with one ``on_epoch_end(metrics, state)`` hook (:class:`TrialReporter`), which makes
one ``tune.report(metrics, checkpoint=...)`` per epoch (the engine state saved with :func:`istanas.checkpoint.save`
every ``checkpoint_every`` epochs).

The last epoch's report is held back and merged with the search's result, so the trial's final report carries the
final genotype (``genotype`` JSON, ``genotype_digest``), ``search_done = 1`` and the ``objective`` (the searcher's
metric: ``val_acc``, or for ``objective: tenas`` the TE-NAS score of the final genotype, NaN before; for
``objective: benchmark`` the NAS-Bench-201 table accuracy of the found cell, NaN before): ASHA cannot stop a trial
between its last epoch and its genotype.  With a ``table`` the table is opened only in :meth:`TrialReporter.finish`,
after the search returned (:func:`benchmark_score`); the search never sees it.  A non-finite loss raises ``NonFiniteLossError``, which
ends the trial as an error with that reason; the sweep goes on.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from typing import Any, Callable, Mapping, Optional

import torch

from istanas.checkpoint import load, save
from istanas.data import get_loaders, image_batch
from istanas.engine import check_finite
from istanas.search import run_search
from istanas.tenas.score import reference_objective
from spaces.nb201 import open_nb201_table
from spaces.registry import load_genotype

from .resources import check_trial_fits
from .results import bench_acc_column, benchmark_metrics, scalar_metrics
from .sweep_config import SweepConfig, build_search_config, build_tenas_config
from .warm_start import pass_gate

STATE_FILE = "search_state.pt"
#: ``search_fn(cfg, *, data=None, on_epoch_end=None, resume=None, progress=False)`` -> a SearchResult (or a
#: mapping with ``genotype``, ``history``, ``final``); default: ``run_search(sweep.method, ...)``.
SearchFn = Callable[..., Any]


# --------------------------------------------------------------------------------------------------- genotypes
def genotype_record(genotype: Any) -> tuple[Optional[str], Optional[str]]:
    """(canonical JSON text, 12-hex digest) of a genotype object, a JSON-able dict, or JSON text."""
    if genotype is None:
        return None, None
    if hasattr(genotype, "to_json") and hasattr(genotype, "digest"):
        return genotype.to_json(), genotype.digest()
    if isinstance(genotype, str):
        try:
            genotype = json.loads(genotype)
        except json.JSONDecodeError:
            text = genotype
            return text, hashlib.sha256(text.encode()).hexdigest()[:12]
    if hasattr(genotype, "to_dict"):
        genotype = genotype.to_dict()
    text = json.dumps(genotype, sort_keys=True, separators=(",", ":"))
    try:  # the project's own digest when the spaces package can parse it (same hash as Genotype.digest)
        g = load_genotype(text)
        return g.to_json(), g.digest()
    except Exception:
        return text, hashlib.sha256(text.encode()).hexdigest()[:12]


def tenas_score(genotype: Any, sweep: SweepConfig, search_cfg: Any) -> dict[str, float]:
    """TE-NAS indicators of the found genotype and the objective: the paper's rank combination against a fixed
    reference sample of random cells (:func:`istanas.tenas.score.reference_objective`, 1 = best of the sample),
    on un-augmented training images of the search's own data (:func:`istanas.data.image_batch`)."""
    if isinstance(genotype, (str, dict)):
        genotype = load_genotype(genotype if isinstance(genotype, str) else json.dumps(genotype))
    seed = int(getattr(search_cfg, "seed", 0))
    loaders = get_loaders(search_cfg.data, "search", seed=seed)
    tcfg = build_tenas_config(sweep, image_size=loaders.image_size, num_classes=loaders.num_classes)
    images = image_batch(search_cfg.data, max(int(tcfg.ntk_batch or 14), 64), seed=seed)
    s = reference_objective(genotype, images, tcfg)
    return {"tenas_ntk_cond": s["ntk_cond"], "tenas_linear_regions": s["linear_regions"],
            "tenas_rank_kappa": s["rank_kappa"], "tenas_rank_regions": s["rank_regions"],
            "tenas_score": s["objective"]}


def benchmark_score(genotype: Any, sweep: SweepConfig) -> dict[str, Any]:
    """The found NB201 cell's ``bench_*`` metrics (:func:`orchestrator.results.benchmark_metrics`) from the
    sweep's ``table``, opened here, after the search (a fresh read per trial: no table lives in a trial process
    while it searches)."""
    return benchmark_metrics(open_nb201_table(sweep.table), genotype)


# ------------------------------------------------------------------------------------------------ reporting
def _get(result: Any, key: str) -> Any:
    """A field of a :class:`istanas.result.SearchResult` or of a result mapping."""
    return result.get(key) if isinstance(result, Mapping) else getattr(result, key, None)


class TrialReporter:
    """The search's ``on_epoch_end(metrics, state)`` hook as ``tune.report`` calls (see the module doc)."""

    def __init__(self, sweep: SweepConfig, report_fn: Optional[Callable] = None,
                 checkpoint_cls: Optional[Any] = None):
        if report_fn is None or checkpoint_cls is None:
            from ray import tune

            report_fn = report_fn or tune.report
            checkpoint_cls = checkpoint_cls or tune.Checkpoint
        self.sweep = sweep
        self._report = report_fn
        self._ckpt_cls = checkpoint_cls
        self._held: Optional[tuple[dict, Optional[dict]]] = None
        self.last: dict[str, Any] = {}
        self.reports = 0

    def on_epoch_end(self, metrics: dict, state: Optional[dict] = None) -> None:
        m = scalar_metrics(metrics)
        # a NaN validation loss ends the trial as well (the engine checks the training loss)
        check_finite(m, f"search epoch {m.get('epoch', '?')}")
        if m.get("genotype"):
            m["genotype"], m["genotype_digest"] = genotype_record(m["genotype"])
        self.last = m
        if state and state.get("done"):
            self._held = (m, state)  # the final report adds the genotype (see finish)
            return
        epoch = int(m.get("epoch", 0) or 0)
        keep = state if state and epoch % self.sweep.checkpoint_every == 0 else None
        self._emit({**m, "search_done": 0, "objective": self._objective(m)}, keep)

    def _objective(self, m: Mapping[str, Any]) -> float:
        if self.sweep.objective == "val_acc":
            v = m.get("val_acc")
            return float(v) if isinstance(v, (int, float)) else float("nan")
        return float("nan")

    def _emit(self, metrics: dict, state: Optional[dict]) -> None:
        self.reports += 1
        if state is None:
            self._report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="istanas-ckpt-") as d:
            save(state, os.path.join(d, STATE_FILE), packed=True)
            self._report(metrics, checkpoint=self._ckpt_cls.from_directory(d))

    def finish(self, result: Any, search_cfg: Any, wall_s: float, node_id: Optional[str] = None) -> dict:
        """The final report: the last epoch's metrics + the search's ``final`` + genotype + objective."""
        held_m, held_state = self._held if self._held is not None else (None, None)
        history = list(_get(result, "history") or [])
        m = dict(held_m or (scalar_metrics(history[-1]) if history else self.last))
        m.update({f"final_{k}" if k in m else k: v for k, v in scalar_metrics(_get(result, "final") or {}).items()})
        text, digest = genotype_record(_get(result, "genotype"))
        m["genotype"] = text or ""
        m["genotype_digest"] = digest or ""
        m["search_done"] = 1
        m["search_epochs"] = len(history)
        m["search_session_s"] = float(wall_s)
        if node_id:
            m["node_id"] = node_id
        if self.sweep.table is not None and text:
            m.update(benchmark_score(text, self.sweep))
        if self.sweep.objective == "tenas" and text:
            m.update(tenas_score(text, self.sweep, search_cfg))
            m["objective"] = m["tenas_score"]
        elif self.sweep.objective == "benchmark":
            m["objective"] = float(m.get(bench_acc_column(self.sweep.benchmark_dataset), float("nan")))
        else:
            m["objective"] = self._objective(m)
        self._emit(m, held_state)
        return m


def _node_id() -> Optional[str]:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


def _load_resume() -> Optional[dict]:
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        path = os.path.join(d, STATE_FILE)
        return load(path) if os.path.isfile(path) else None


def run_trial(config: dict, sweep_dict: dict, search_fn: Optional[SearchFn] = None) -> dict:
    """Body of one trial (runs in a Tune worker): build the config, resume, search, report."""
    sweep = SweepConfig.from_dict(sweep_dict)
    threads = max(1, int(sweep.resources_per_trial.cpu))
    torch.set_num_threads(threads)
    search_cfg = build_search_config(sweep, config, validate=True)
    check_trial_fits(search_cfg, sweep.resources_per_trial.gpu)  # on CUDA: its GPU share, before any data is read
    reporter = TrialReporter(sweep)
    resume = _load_resume()
    pass_gate(sweep.name)  # a worker's first trial waits for every slot's worker to start (orchestrator.warm_start)
    t0 = time.perf_counter()
    if search_fn is None:
        result = run_search(sweep.method, search_cfg, on_epoch_end=reporter.on_epoch_end, resume=resume,
                            progress=False)
    else:
        result = search_fn(search_cfg, on_epoch_end=reporter.on_epoch_end, resume=resume, progress=False)
    return reporter.finish(result, search_cfg, time.perf_counter() - t0, node_id=_node_id())


def make_trainable(sweep: SweepConfig, search_fn: Optional[SearchFn] = None) -> Callable[[dict], None]:
    """The function trainable of ``sweep``: ``istanas_trial(config)``.  ``search_fn`` (see :data:`SearchFn`)
    replaces the method's search (e.g. a short stand-in for orchestration benchmarks); it must be importable or
    picklable by value on the workers."""
    sweep_dict = sweep.to_dict()

    def istanas_trial(config: dict) -> None:
        run_trial(config, sweep_dict, search_fn)

    return istanas_trial


__all__ = ["make_trainable", "run_trial", "TrialReporter", "genotype_record", "tenas_score", "benchmark_score",
           "STATE_FILE"]
