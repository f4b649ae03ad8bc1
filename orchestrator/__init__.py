"""Ray orchestration of ISTA-NAS: a Tune + Optuna sweep over two-stage searches, a post-processing actor that
retrains the top-k genotypes, and the aggregated results table and report.

* :mod:`orchestrator.sweep_config`  the typed, validated sweep config (no Ray needed)
* :mod:`orchestrator.tune_trial`    one trial = the plain two-stage search reporting through Tune
* :mod:`orchestrator.sweep`         the driver: ``run_sweep`` (Tuner, OptunaSearch, ASHA, restore, callback)
* :mod:`orchestrator.postprocess`   the named post-processing actor, retraining tasks, the results table
* :mod:`orchestrator.report`        Markdown/HTML report, plots, Optuna parameter importances
* :mod:`orchestrator.metrics`       custom ``ray.util.metrics`` for the dashboard

Only the config module is imported here, so that ``import orchestrator`` stays light (no Ray, no torch).
"""
from .sweep_config import SweepConfig, load_sweep_config

__all__ = ["SweepConfig", "load_sweep_config"]
