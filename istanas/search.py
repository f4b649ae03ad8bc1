"""The one search runner: ``run_search(method, cfg) -> SearchResult`` for every method of :mod:`istanas.methods`.

An engine method (two-stage Algorithm 1, DARTS, one-stage Algorithm 2) gives a Task factory: the runner validates
the config, probes the machine (:func:`check_runtime`), seeds, builds the task, runs :func:`istanas.engine.run`
for ``cfg.epochs`` with one ``on_epoch_end(metrics, state)`` hook and assembles the :class:`SearchResult`; the
method's post-run hook then adds what only it knows (one-stage: stop report, parameter count, export).  Other
methods (TE-NAS, random search) give a function that returns the result itself.

The result and its files (:class:`SearchResult`, :func:`write_outputs`) live in :mod:`istanas.result`.

``table=PATH`` (a NAS-Bench-201 search, any method): the benchmark table (``nasbench201_full.csv`` or NASLib's
``zc_nasbench201.json``) is checked before the search (:func:`spaces.nb201.check_nb201_table`: file and header,
no accuracy read) and opened only after it finished (:func:`spaces.nb201.open_nb201_table`); the found cell's
accuracies and percentiles go into ``result.extra["benchmark"]`` (``result.json`` key ``benchmark``).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator, Optional

import torch

from spaces.genotype import NB201Genotype
from spaces.nb201 import TABLE_DATASETS, check_nb201_table, open_nb201_table

from . import engine
from .checkpoint import seed_everything
from .config import ConfigError, to_dict
from .methods import Method, get_method
from .engine import OnEpochEnd
from .result import SearchResult, plot_cells, write_outputs


# ------------------------------------------------------------------------------------------------- machine probes
def check_runtime(cfg: Any) -> None:
    """The machine probes of a config (kept out of ``validate()``, which checks the schema only): ``device`` and
    ``recovery.device`` name a device this machine has.  Raises :class:`ConfigError` naming the field."""
    for name, dev in (("device", getattr(cfg, "device", None)),
                      ("recovery.device", getattr(getattr(cfg, "recovery", None), "device", None))):
        if dev is None:
            continue
        try:
            engine.resolve_device(dev)
        except (ValueError, RuntimeError) as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith("device:") and name == "device" else f"{name}: {msg}") from None


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Deterministic cuDNN and torch algorithms inside the block (restored after it); a no-op when disabled.

    cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first use in the process; it is set here if absent.
    Ops without a deterministic CUDA kernel warn instead of failing (``warn_only``).
    """
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
            torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[0], prev[1]
        torch.use_deterministic_algorithms(prev[2], warn_only=prev[3])


# ------------------------------------------------------------------------------------------------------- runner
def search_space(cfg: Any) -> str:
    """The cell space a config searches: ``cfg.space`` (or TE-NAS's ``cfg.tenas.space``), default ``"darts"``."""
    space = getattr(cfg, "space", None) or getattr(getattr(cfg, "tenas", None), "space", None)
    return str(space or "darts")


def check_table(cfg: Any, table: Optional[str]) -> None:
    """Before a search: ``table`` (when given) is a benchmark table and the search is on the nb201 space
    (:class:`ConfigError` naming ``table`` otherwise).  Reads the header only."""
    if table is None:
        return
    if search_space(cfg) != "nb201":
        raise ConfigError(f"table: the NAS-Bench-201 table scores nb201 cells; this search is on the "
                          f"{search_space(cfg)!r} space (use --space nb201)")
    try:
        check_nb201_table(table)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def benchmark_record(genotype: Any, table: str) -> dict[str, Any]:
    """Open ``table`` (call this only after the search) and look the found cell up: its accuracies on the three
    data sets and percentiles (:meth:`spaces.nb201.NB201Table.lookup`); a cell the table lacks (NASLib's JSON
    holds 725 of the 15,625) gets ``None`` values and ``in_table: False``."""
    if not isinstance(genotype, NB201Genotype):
        raise ConfigError(f"table: the found genotype is not a NAS-Bench-201 cell ({type(genotype).__name__})")
    arch = genotype.to_arch_str()
    tab = open_nb201_table(table)
    try:
        rec = tab.lookup(arch)
        rec["in_table"] = True
    except KeyError:
        rec = {"table": table, "table_cells": len(tab), "arch": arch, **{d: None for d in TABLE_DATASETS},
               "percentile": {d: None for d in TABLE_DATASETS}, "in_table": False}
    return rec


def run_search(method: str, cfg: Any, *, data: Any = None, on_epoch_end: Optional[OnEpochEnd] = None,
               resume: Optional[dict] = None, progress: bool = True, table: Optional[str] = None,
               task_out: Optional[list] = None, **method_kwargs: Any) -> SearchResult:
    """Run the search ``method`` (a name of :data:`istanas.methods.METHODS`) with config ``cfg``.

    ``data``: loaders (default: the method's own, from ``cfg.data``); ``on_epoch_end(metrics, state)`` runs after
    every epoch (:func:`istanas.engine.run`; ``state["task"]`` is the task's state dict); ``resume`` is such a
    state.  ``table``: a NAS-Bench-201 table to score the found cell with, after the search (module doc).
    ``method_kwargs`` go to the method (one-stage: ``dist``, ``export_dir``).  If ``task_out`` is a list, an engine
    method's task is appended to it (to reach the trained super-net, e.g. ``benchmarks/bench_consistency.py``).
    """
    m = get_method(method)
    if not isinstance(cfg, m.config_cls):
        raise ConfigError(f"method {m.name}: expected a {m.config_cls.__name__}, got {type(cfg).__name__}")
    cfg.validate()
    check_runtime(cfg)
    check_table(cfg, table)
    if m.task is None:
        result = m.run(cfg, data=data, on_epoch_end=on_epoch_end, resume=resume, progress=progress,
                       **method_kwargs)
    else:
        result = _run_engine(m, cfg, data, on_epoch_end, resume, progress, method_kwargs, task_out)
    if table is not None:
        result.extra["benchmark"] = benchmark_record(result.genotype, table)
    return result


def _run_engine(m: Method, cfg: Any, data: Any, on_epoch_end: Optional[OnEpochEnd], resume: Optional[dict],
                progress: bool, kwargs: dict[str, Any], task_out: Optional[list] = None) -> SearchResult:
    t0 = time.perf_counter()
    det = bool(getattr(cfg, "deterministic", True)) and engine.resolve_device(cfg.device).type == "cuda"
    with deterministic_algorithms(det):
        seed_everything(cfg.seed)
        task = m.task(cfg, data, **kwargs)
        if task_out is not None:
            task_out.append(task)
        history = engine.run(task, epochs=cfg.epochs, on_epoch_end=on_epoch_end, resume=resume, progress=progress,
                             desc=m.name)
    last = history[-1] if history else {}
    final = {k: float(last[k]) for k in ("val_acc", "val_loss", "train_acc", "train_loss", "test_acc", "test_loss")
             if k in last}
    final["epochs"] = len(history)
    if hasattr(task, "converged_epoch"):
        final["converged_epoch"] = int(task.converged_epoch)
    if hasattr(task, "recoveries"):
        final["recoveries"] = int(task.recoveries)
    result = SearchResult(method=m.name, genotype=task.genotype(), history=history, final=final,
                          config=to_dict(cfg), device=str(task.device),
                          wall_time_s=float(sum(h.get("epoch_time_s", 0.0) for h in history)),
                          session_time_s=time.perf_counter() - t0)
    if hasattr(task, "support_host"):
        result.extra["support"] = task.support_host.tolist()
    if m.finish is not None:
        m.finish(task, result, **kwargs)
    return result


__all__ = ["SearchResult", "run_search", "write_outputs", "plot_cells", "deterministic_algorithms", "check_runtime",
           "check_table", "benchmark_record", "search_space"]
