"""THE registry of search methods: name -> :class:`Method` (config class, presets, spaces, how it runs, help,
launcher flags, sweep parameters).

``launch/search.py``, the sweep config (``orchestrator/sweep_config.py``) and the Tune trial read this table; the
runner is :func:`istanas.search.run_search`.  An engine method gives ``task(cfg, data, **kw) -> Task`` (run by
:func:`istanas.engine.run`) and optionally ``finish(task, result, **kw)``, a post-run hook that adds what only it
knows to the :class:`istanas.result.SearchResult`; any other method gives ``run(cfg, *, data, on_epoch_end,
resume, progress) -> SearchResult``.  Adding a method = one module + one entry of :data:`METHODS`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from . import params_search, random_search
from .config import ConfigError, did_you_mean, to_dict
from .darts import DartsConfig, DartsTask
from .engine import OnEpochEnd
from .ista.absorb import export
from .ista.onestage import OneStageConfig, OneStageTask
from .ista.twostage import TwoStageConfig, TwoStageTask
from .result import SearchResult
from .tenas.job import TENAS_PRESETS, TenasJobConfig, run_job

#: The launcher's flags that set config keys (flag -> dotted key), unless a method maps them otherwise.
DATA_FLAGS: dict[str, str] = {"dataset": "data.dataset", "data_root": "data.root", "epochs": "epochs",
                              "batch_size": "data.batch_size"}


@dataclass(frozen=True)
class Method:
    """One search method.

    ``config_cls``: its config dataclass (validates itself); ``presets``: whole setups by name (default: the
    class's ``PRESETS``); ``spaces``: the cell spaces it searches (:mod:`spaces`); ``task`` / ``finish`` or
    ``run``: how it runs (see the module doc); ``flags``: the ``launch/search.py`` flags it takes and the dotted
    config key each sets (``None`` values = not given); ``launch_kwargs(cfg)``: extra keywords the launcher passes
    to ``run_search``; ``sweep_params``: the sweep's parameter names -> dotted config keys (empty: not sweepable);
    ``checkpoints``: whether a run writes a per-epoch checkpoint (and so can be resumed); ``describe(cfg)`` /
    ``summary(cfg, result)``: the launcher's line before a run and lines after it (default: an engine search's);
    ``title``: the name messages use (default ``name``).
    """

    name: str
    help: str
    config_cls: type
    spaces: tuple[str, ...]
    task: Optional[Callable[..., Any]] = None
    finish: Optional[Callable[..., None]] = None
    run: Optional[Callable[..., SearchResult]] = None
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default_preset: str = "small"
    flags: Mapping[str, str] = field(default_factory=lambda: dict(DATA_FLAGS))
    launch_kwargs: Optional[Callable[[Any], dict]] = None
    sweep_params: Mapping[str, str] = field(default_factory=dict)
    checkpoints: bool = True
    describe: Optional[Callable[[Any], str]] = None
    summary: Optional[Callable[[Any, SearchResult], list[str]]] = None
    title: str = ""

    @property
    def display_name(self) -> str:
        """How messages name the method (``title``, default the name)."""
        return self.title or self.name

    def __post_init__(self) -> None:
        if (self.task is None) == (self.run is None):
            raise TypeError(f"method {self.name}: give exactly one of task (engine) or run (a function)")
        if not self.presets:
            object.__setattr__(self, "presets", getattr(self.config_cls, "PRESETS", {}))


# ---------------------------------------------------------------------------------------------- method hooks
def _twostage_task(cfg: TwoStageConfig, data: Any) -> TwoStageTask:
    return TwoStageTask(cfg, loaders=data)


def _darts_task(cfg: DartsConfig, data: Any) -> DartsTask:
    return DartsTask(cfg, loaders=data)


def _onestage_task(cfg: OneStageConfig, data: Any, dist: Any = None, export_dir: Optional[str] = None) -> OneStageTask:
    return OneStageTask(cfg, loaders=data, dist=dist)


def _onestage_finish(task: OneStageTask, result: SearchResult, dist: Any = None,
                     export_dir: Optional[str] = None) -> None:
    """The stop report (per-node stop epochs, forced, switch epoch, rejections), the stand-alone network's
    parameters (auxiliary head excluded) and, with ``export_dir``, the absorbed model (Eq. 12; main rank only)."""
    result.extra.update(task.stop_report())
    result.extra["params"] = task.support_params(task.support_host)
    if export_dir is not None and task.dist.is_main and not task.cell_space.nb201:   # Eq. 12: DARTS space
        result.extra["export"] = export(task, export_dir)


def _run_tenas(cfg: TenasJobConfig, *, data: Any = None, on_epoch_end: Optional[OnEpochEnd] = None,
               resume: Optional[dict] = None, progress: bool = True) -> SearchResult:
    """TE-NAS (:func:`istanas.tenas.job.run_job`): no training, one ``on_epoch_end`` call per pruning round;
    the record is TE-NAS's own (arch, rounds, setup time, table look-ups)."""
    if resume is not None:
        raise ConfigError("resume: a TE-NAS search has no checkpoint; rerun it (same seed, same result)")
    if data is not None:
        raise ConfigError("data: TE-NAS draws its images from cfg.data")
    t0 = time.perf_counter()
    rec = run_job(cfg, report=None if on_epoch_end is None else (lambda m: on_epoch_end(m, {})))
    extra = {k: v for k, v in rec.items() if k not in ("genotype", "wall_time_s", "config")}
    return SearchResult(method="tenas", genotype=rec["genotype"], history=list(rec.get("rounds") or []), final={},
                        config=rec.get("config", to_dict(cfg)), device=str(cfg.device),
                        wall_time_s=float(rec["wall_time_s"]), session_time_s=time.perf_counter() - t0, extra=extra,
                        record_keys=("wall_time_s", "config"), pictures=False)


def _describe_tenas(cfg: TenasJobConfig) -> str:
    t = cfg.tenas
    n = "all training images" if cfg.num_images is None else f"{cfg.num_images} training images"
    return (f"tenas search, space {t.space}, score {t.score}, images: {n} of {cfg.data.dataset}, "
            f"NTK batch {t.resolved().ntk_batch}, repeats {t.repeats}, init {t.init}, device {cfg.device}")


def _summary_tenas(cfg: TenasJobConfig, result: SearchResult) -> list[str]:
    extra = result.extra
    lines = [f"done: {len(extra['rounds'])} pruning rounds, {result.wall_time_s:.1f} s"]
    bench = extra.get("benchmark")
    if bench:
        lines.append("NAS-Bench-201 table: " + ", ".join(
            f"{d} {bench[d]:.2f} (percentile {bench['percentile'][d]:.1f})" for d in ("cifar10", "cifar100",
                                                                                     "ImageNet16-120")
            if bench.get(d) is not None))
    elif extra.get("in_table") is not None:
        lines.append(f"NAS-Bench-201 table ({cfg.tenas.dataset}): this cell is not among its archs")
    return lines + [extra["arch"]]


#: The two-stage search's parameters as the sweep names them -> its dotted config keys.
TWOSTAGE_SWEEP = {"lam": "recovery.lam", "s": "recovery.s", "m": "recovery.m", "epsilon": "epsilon", "lr": "lr",
                  "arch_lr": "arch_lr"}

# --------------------------------------------------------------------------------------------------- registry
METHODS: dict[str, Method] = {
    "twostage": Method(
        "twostage", "two-stage ISTA-NAS, paper Algorithm 1 (sparse super-net, recovery of z from b), --space darts "
        "or nb201", TwoStageConfig, ("darts", "nb201"), task=_twostage_task,
        flags={**DATA_FLAGS, "recover_every": "recover_every", "epsilon": "epsilon", "space": "space"},
        sweep_params=TWOSTAGE_SWEEP),
    "darts": Method(
        "darts", "first-order DARTS baseline on the same cells (dense mixed op, softmax alpha), --space darts or "
        "nb201", DartsConfig, ("darts", "nb201"), task=_darts_task, flags={**DATA_FLAGS, "space": "space"}),
    "onestage": Method(
        "onestage", "one-stage ISTA-NAS, paper Algorithm 2 (search and train the target net in one run, per-node "
        "epsilon stop, BN absorption Eq. 12, exported model in --out; --space nb201: no export)",
        OneStageConfig, ("darts", "nb201"), task=_onestage_task, finish=_onestage_finish,
        flags={**DATA_FLAGS, "recover_every": "recover_every", "epsilon": "epsilon", "space": "space"},
        launch_kwargs=lambda cfg: {"export_dir": cfg.out}),
    "tenas": Method(
        "tenas", "TE-NAS training-free pruning search (NTK condition number + linear regions), --space nb201 or "
        "darts", TenasJobConfig, ("nb201", "darts"), run=_run_tenas, presets=TENAS_PRESETS,
        flags={"dataset": "data.dataset", "data_root": "data.root", "space": "tenas.space",
               "table": "tenas.table_path"}, checkpoints=False, describe=_describe_tenas, summary=_summary_tenas,
        default_preset="paper", title="TE-NAS"),
    "random": Method(
        "random", "random search baseline: cells sampled from --space darts or nb201, one picked without training",
        random_search.RandomSearchConfig, random_search.SPACES, run=random_search.random_search,
        flags={"space": "space"}, checkpoints=False, describe=random_search.describe, summary=random_search.summary),
    "params": Method(
        "params", "parameter-count heuristic baseline: the NAS-Bench-201 cell whose network has the most parameters "
        "(counted from the network; --space nb201)", params_search.ParamsSearchConfig, params_search.SPACES,
        run=params_search.params_search, flags={"space": "space"}, checkpoints=False,
        describe=params_search.describe, summary=params_search.summary, title="#params"),
}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``; an unknown name raises :class:`ConfigError` with a "did you mean"."""
    if name not in METHODS:
        raise did_you_mean("method", name, list(METHODS), "method")
    return METHODS[name]


def sweepable() -> list[str]:
    """The methods a sweep can run (those with ``sweep_params``)."""
    return [k for k, m in METHODS.items() if m.sweep_params]


__all__ = ["Method", "METHODS", "get_method", "sweepable", "DATA_FLAGS", "TWOSTAGE_SWEEP"]
