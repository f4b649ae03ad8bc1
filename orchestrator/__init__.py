"""Ray orchestration of ISTA-NAS: a Tune + Optuna sweep of searches, a post-processing actor that retrains the
top-k genotypes, the results table and report, and the one-stage search on Ray Train.

* :mod:`orchestrator.sweep_config`   the typed, validated sweep config (no Ray needed)
* :mod:`orchestrator.cluster`        Ray start / join, py_modules, storage URIs (sweep and Ray Train)
* :mod:`orchestrator.claim`          one driver per sweep name (a named, empty actor)
* :mod:`orchestrator.tune_trial`     one trial = one search reporting through Tune
* :mod:`orchestrator.sweep`          the driver: ``run_sweep`` (Tuner, OptunaSearch, ASHA, restore, callback)
* :mod:`orchestrator.postprocess`    the post-processing actor and its retraining tasks
* :mod:`orchestrator.results`        the results table (pure pandas)
* :mod:`orchestrator.report`         Markdown/HTML report, plots, Optuna parameter importances
* :mod:`orchestrator.metrics`        custom ``ray.util.metrics`` for the dashboard (sweep and Ray Train)
* :mod:`orchestrator.train_onestage` the distributed one-stage search on Ray Train
* :mod:`orchestrator.dist_hooks`     its torch.distributed hooks (DDP via prepare_model, support broadcast)

The package itself imports none of them, so that a process that needs one module (the claim actor: only
:mod:`orchestrator.claim`) loads no torch; import the config as ``from orchestrator.sweep_config import ...``.
"""
