"""Custom metrics of the sweep and the Ray Train job for the Ray dashboard / Prometheus (``ray.util.metrics``).

Exported by every Ray node's metrics agent (the dashboard's Metrics view, or Prometheus scraping the node's
``MetricsExportPort``).  The sweep's (:class:`SweepMetrics`), tagged with the sweep name:

* ``istanas_sweep_trials_running``   (gauge)    trials running now (the driver's Tune callback)
* ``istanas_sweep_trials_finished``  (counter)  finished trials, tagged ``status`` = TERMINATED | ERROR
* ``istanas_sweep_support_churn``    (gauge)    the last epoch's support churn of each trial (tag ``trial``)
* ``istanas_sweep_retrain_progress`` (gauge)    finished / total retraining runs, in [0, 1] (the actor)
* ``istanas_sweep_retrains_finished`` (counter) finished retraining runs

The Ray Train job's (:class:`TrainGauges`), per rank: ``istanas_train_{images_per_s, peak_mem_mb, epoch, loss,
nodes_stopped}``.

Creating a metric outside a Ray worker (or with Ray's metrics unavailable) falls back to no-ops, so the callers
never need to care.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

log = logging.getLogger(__name__)

PREFIX = "istanas_sweep_"
TRAIN_PREFIX = "istanas_train_"


class _NoOp:
    def set(self, *a: Any, **k: Any) -> None:
        pass

    def inc(self, *a: Any, **k: Any) -> None:
        pass


def _make(kind: str, name: str, description: str, tag_keys: tuple[str, ...], prefix: str = PREFIX) -> Any:
    try:
        from ray.util import metrics

        cls = {"gauge": metrics.Gauge, "counter": metrics.Counter}[kind]
        return cls(prefix + name, description=description, tag_keys=tag_keys)
    except Exception as e:  # pragma: no cover - metrics are informative only
        log.debug("metric %s unavailable: %s", name, e)
        return _NoOp()


class SweepMetrics:
    """The sweep's metrics, created on first use in the current process (picklable: it holds only the name)."""

    def __init__(self, sweep: str):
        self.sweep = sweep
        self._m: Optional[dict[str, Any]] = None

    def __getstate__(self) -> dict:
        return {"sweep": self.sweep}

    def __setstate__(self, state: dict) -> None:
        self.sweep = state["sweep"]
        self._m = None

    @property
    def m(self) -> dict[str, Any]:
        if self._m is None:
            self._m = {
                "running": _make("gauge", "trials_running", "Trials of the sweep running now", ("sweep",)),
                "finished": _make("counter", "trials_finished", "Finished trials of the sweep",
                                  ("sweep", "status")),
                "churn": _make("gauge", "support_churn", "Support churn of the last search epoch",
                               ("sweep", "trial")),
                "retrain_progress": _make("gauge", "retrain_progress",
                                          "Finished / total retraining runs of the sweep", ("sweep",)),
                "retrains_finished": _make("counter", "retrains_finished", "Finished retraining runs",
                                           ("sweep",)),
            }
        return self._m

    def trials_running(self, n: int) -> None:
        self.m["running"].set(float(n), tags={"sweep": self.sweep})

    def trial_finished(self, status: str) -> None:
        self.m["finished"].inc(1.0, tags={"sweep": self.sweep, "status": str(status)})

    def support_churn(self, trial_id: str, value: float) -> None:
        self.m["churn"].set(float(value), tags={"sweep": self.sweep, "trial": str(trial_id)})

    def retrain_progress(self, done: int, total: int) -> None:
        self.m["retrain_progress"].set(float(done) / total if total else 1.0, tags={"sweep": self.sweep})

    def retrain_finished(self) -> None:
        self.m["retrains_finished"].inc(1.0, tags={"sweep": self.sweep})


class TrainGauges:
    """Per-rank gauges of the Ray Train job, tagged ``run`` and ``rank``: ``istanas_train_images_per_s`` (global),
    ``istanas_train_peak_mem_mb`` (GPU: max allocated; CPU: max RSS), ``istanas_train_epoch``,
    ``istanas_train_loss``, ``istanas_train_nodes_stopped``."""

    NAMES = {"images_per_s": "Global training images per second of the last epoch",
             "peak_mem_mb": "Peak memory of the last epoch (MiB; GPU: max allocated, CPU: max RSS)",
             "epoch": "Epochs finished", "train_loss": "Training loss of the last epoch",
             "nodes_stopped": "Nodes whose architecture search has stopped"}

    def __init__(self, run: str, rank: int):
        self.tags = {"run": str(run), "rank": str(rank)}
        self.g = {key: _make("gauge", "loss" if key == "train_loss" else key, desc, ("run", "rank"),
                             prefix=TRAIN_PREFIX) for key, desc in self.NAMES.items()}

    def update(self, m: dict) -> None:
        for key, gauge in self.g.items():
            v = m.get("gpu_mem_peak_mb", m.get(key)) if key == "peak_mem_mb" else m.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                try:
                    gauge.set(float(v), tags=self.tags)
                except Exception:  # pragma: no cover - metrics are informative only
                    pass


__all__ = ["SweepMetrics", "TrainGauges", "PREFIX", "TRAIN_PREFIX"]
