"""The sweep's typed config: ranges, objective, ASHA, resources, retraining; validated before Ray starts.

A sweep searches the hyper-parameters of the two-stage ISTA-NAS search (paper Algorithm 1):

* ``lam``      lambda of the LASSO recovery (Eq. 9), log-uniform by default;
* ``s``        support size per node (ops kept per node), 1 <= s <= n_j;
* ``m``        rows m_j of the measurement matrix A_j (b_j = A_j z_j in R^{m_j}), one value for all nodes or one per
               node (``m_per_node: true`` searches ``m_0 .. m_3``), 1 <= m_j <= n_j;
* ``epsilon``  the convergence threshold (0 = off);
* ``lr`` / ``arch_lr`` (optional) the weight and architecture learning rates.

Node j of a DARTS cell has n_j = (2 + j) K candidates (K = 7 ops, the reference drops ``none``): 14, 21, 28, 35
(``TwoStageConfig.node_sizes``).  Where each parameter lands in the search config is the method's own business:
``Method.sweep_params`` of :mod:`istanas.methods` (dotted keys such as ``recovery.lam``).  A range is
``{low, high, log}``, ``{choices: [...]}`` or ``{value: x}`` (fixed: recorded in every trial's config, not
searched).  :func:`load_sweep_config` merges defaults < YAML < flags < ``key=value`` overrides and calls
:meth:`SweepConfig.validate`, which checks every field and lets the search config validate itself with each
parameter at each end of its range, so that bad input is rejected (``ConfigError``, a ``ValueError``) before
``ray.init``.

``search_space: nb201`` searches NAS-Bench-201 cells (the method's config gets ``space: nb201``; its node sizes are
the method's own).  ``objective: benchmark`` scores a trial by the NAS-Bench-201 table (``table: PATH``,
:func:`spaces.nb201.open_nb201_table`) accuracy on ``benchmark_dataset`` of the cell its search found, looked up
after the search ended (the search never reads the table); ASHA still schedules on the search's ``val_acc``.  The
table is format-checked (:func:`spaces.nb201.check_nb201_table`, no accuracy read) before Ray starts.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import torch

from istanas.config import (ConfigError, check, deep_merge, did_you_mean, flatten, from_dict, parse_override,
                            preset_data, read_yaml, set_path, to_dict)
from istanas.methods import METHODS, Method, get_method, sweepable
from istanas.retrain import RetrainConfig
from istanas.search import check_runtime
from istanas.tenas.job import TenasConfig
from spaces.nb201 import TABLE_DATASETS, check_nb201_table

from .resources import check_fits_share, device_memory

OBJECTIVES = ("val_acc", "tenas", "benchmark")
SPACE_PARAMS = ("lam", "s", "m", "epsilon", "lr", "arch_lr")
INT_PARAMS = ("s", "m")
LOG_DEFAULT = {"lam": True, "lr": True, "arch_lr": True, "s": False, "m": False, "epsilon": False}
REPORT_METRIC = "objective"   # the key every trial report carries for the searcher
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_URI_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_storage_uri(path: str) -> bool:
    """A remote storage URI (``s3://``, ``gs://``, ...) rather than a local folder (``file://`` counts as local)."""
    return bool(_URI_RE.match(path)) and not path.startswith("file://")


def resolve_storage(path: str) -> str:
    """A storage path as Ray wants it: an absolute local path, or the URI unchanged (without a trailing '/')."""
    if is_storage_uri(path):
        return path.rstrip("/")
    p = path[len("file://"):] if path.startswith("file://") else path
    return os.path.abspath(os.path.expanduser(p))


class StoragePathMixin:
    """``is_uri`` and ``storage`` of a config dataclass with a ``storage_path`` field (sweep, Ray Train job)."""

    @property
    def is_uri(self) -> bool:
        return is_storage_uri(self.storage_path)

    @property
    def storage(self) -> str:
        """``storage_path`` as Ray wants it: an absolute local path, or the URI unchanged."""
        return resolve_storage(self.storage_path)


@dataclass
class RayClusterConfig:
    """Where a job's Ray runs (shared by the sweep and the Ray Train job): ``address`` a running cluster (``auto``,
    host:port, ray://host:port) or null for an embedded local Ray sized by ``num_cpus`` / ``num_gpus`` (null = all);
    its dashboard (``dashboard``) binds ``dashboard_host:dashboard_port`` (127.0.0.1 unless asked)."""

    address: Optional[str] = None
    num_cpus: Optional[int] = None
    num_gpus: Optional[int] = None
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265

    def validate_cluster(self) -> None:
        """Schema checks of the fields above (``ConfigError`` naming the field)."""
        check(isinstance(self.dashboard_port, int) and 1 <= self.dashboard_port <= 65535, f"dashboard_port must be in 1..65535, got {self.dashboard_port}")
        check(isinstance(self.dashboard_host, str) and self.dashboard_host.strip() != "",
              "dashboard_host: give an interface address such as 127.0.0.1 (0.0.0.0 exposes the dashboard)")
        check(self.num_cpus is None or self.num_cpus >= 1, f"num_cpus must be >= 1 or null, got {self.num_cpus}")
        check(self.num_gpus is None or self.num_gpus >= 0, f"num_gpus must be >= 0 or null, got {self.num_gpus}")
        if self.address is not None:
            check(isinstance(self.address, str) and self.address.strip() != "",
                  "address: 'auto', host:port or ray://host:port, or null for a local Ray")
            check(self.num_cpus is None and self.num_gpus is None,
                  "num_cpus / num_gpus size an embedded local Ray; a running cluster (address) has its own")


# ----------------------------------------------------------------------------------------------------- sections
@dataclass
class ParamRange:
    """One searched parameter: a numeric range (``low``, ``high``, ``log``), a list of ``choices``, or a fixed
    ``value``.  ``log: null`` = the parameter's default (log-uniform for lam, lr, arch_lr).  Integer parameters
    (s, m) sample integers in [low, high] (both inclusive)."""

    low: Optional[float] = None
    high: Optional[float] = None
    log: Optional[bool] = None
    choices: Optional[list[Any]] = None
    value: Optional[Any] = None

    @property
    def kind(self) -> str:
        if self.value is not None:
            return "value"
        if self.choices is not None:
            return "choices"
        return "range"

    def candidates(self) -> list[Any]:
        """The extreme values a trial can take (for validation): the bounds, the choices or the fixed value."""
        if self.kind == "value":
            return [self.value]
        if self.kind == "choices":
            return list(self.choices or [])
        return [self.low, self.high]


@dataclass
class SpaceConfig:
    """The search space over the two-stage search's hyper-parameters (see the module docstring)."""

    lam: ParamRange = field(default_factory=lambda: ParamRange(low=1e-4, high=1e-1, log=True))
    s: ParamRange = field(default_factory=lambda: ParamRange(choices=[2, 3]))
    m: ParamRange = field(default_factory=lambda: ParamRange(low=4, high=10))
    m_per_node: bool = False
    epsilon: ParamRange = field(default_factory=lambda: ParamRange(choices=[0.0, 1e-3]))
    lr: Optional[ParamRange] = None
    arch_lr: Optional[ParamRange] = None


@dataclass
class AshaConfig:
    """Asynchronous successive halving over search epochs.  ``max_t`` (default: the search's epochs) sets the
    rung ladder grace_period * reduction_factor^k <= max_t; a trial that survives the rungs runs to its own end."""

    enabled: bool = True
    grace_period: int = 2
    reduction_factor: float = 2.0
    max_t: Optional[int] = None


@dataclass
class Resources:
    """Ray resources of one trial or one retraining task; fractions are allowed (``gpu: 0.5``: two per GPU)."""

    cpu: float = 1.0
    gpu: float = 0.0
    #: memory of one GPU (GiB) for the check before Ray starts that a search fits ``gpu`` of it (null: this
    #: machine's first GPU when it has one; each trial checks its own device anyway)
    gpu_memory_gb: Optional[float] = None


@dataclass
class RetrainSpec:
    """Retraining of the top-k distinct genotypes, each over every seed in ``seeds`` (one Ray task each).

    ``preset``: a :class:`istanas.retrain.RetrainConfig` preset; ``epochs`` (``null`` = the preset's);
    ``overrides``: dotted ``RetrainConfig`` keys (e.g. ``{"C": 16, "data.batch_size": 64}``).  The data config is
    the search's unless overridden."""

    top_k: int = 2
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    epochs: Optional[int] = 3
    preset: str = "quick"
    overrides: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)


@dataclass
class SweepConfig(RayClusterConfig, StoragePathMixin):
    """A Ray Tune sweep of two-stage ISTA-NAS searches (the defaults are the small no-argument sweep).

    name / storage_path: the experiment lives in ``storage_path/name`` (a local folder, made absolute, or any URI
    Ray accepts, e.g. ``s3://bucket/sweeps``).  num_samples trials, at most max_concurrent at a time (``auto``: twice
    the trials the cluster holds at once when the sweep starts, :meth:`concurrency`), suggested by
    Optuna's TPE seeded with ``seed``.  ``method``: the search each trial runs (``twostage``: paper Algorithm 1) over
    the cell space ``search_space`` (``darts``); ``search_preset`` + ``search``
    (dotted ``TwoStageConfig`` keys) give the base search config that the sampled values override.
    ``objective``: ``val_acc`` (validation accuracy at the end of search) or ``tenas`` (TE-NAS score of the found
    genotype: the paper's rank combination of kappa and regions against ``tenas.reference_cells`` random cells,
    in [0, 1], higher is better, :func:`istanas.tenas.score.reference_objective`; ``tenas`` holds
    ``TenasConfig`` overrides) or ``benchmark`` (with ``search_space: nb201``: the NAS-Bench-201 ``table``'s
    accuracy, percent, on ``benchmark_dataset`` of the found cell, looked up when the search ended; ASHA still
    stops trials on the search's ``val_acc``).  ``table``: the NAS-Bench-201 table (``nasbench201_full.csv`` or
    NASLib's ``zc_nasbench201.json``; made absolute), also given with another objective on nb201: every found
    cell's table accuracies and percentiles are then columns of the results.  ``points_to_evaluate``: configs Optuna tries first.  ``results_dir``: where the
    table and report go (default ``storage_path/name/results`` for a local storage_path, else
    ``runs/sweeps/<name>/results``, uploaded to the storage URI too).  ``reuse_actors``: a finished trial's Ray
    actor (its process, with torch imported) runs the next trial; ``warm_start_timeout_s``: with it, the first
    trial of each worker waits until every slot's worker has started (at most this long; 0: no wait), since Tune
    would otherwise hand finished actors to the trials whose own actors are still starting, and those slots would
    stay empty (:mod:`orchestrator.warm_start`).  ``tensorboard``: Tune's TensorBoard event
    files per trial as well (off: the driver writes only each trial's ``result.json`` / ``progress.csv``; the event
    writer slows the driver's handling of every report, see docs/scaling.md).  ``address``: a running cluster (``auto``) or
    null for an embedded local Ray (``num_cpus``/``num_gpus`` null = all).  The dashboard binds ``dashboard_host``
    (127.0.0.1 unless asked).
    """

    name: str = "istanas-sweep"
    storage_path: str = "runs/sweeps"
    results_dir: Optional[str] = None
    method: str = "twostage"
    search_space: str = "darts"
    num_samples: int = 6
    max_concurrent: Union[int, Literal["auto"]] = 2
    seed: int = 0
    objective: str = "val_acc"
    table: Optional[str] = None
    benchmark_dataset: str = "cifar10"
    space: SpaceConfig = field(default_factory=SpaceConfig)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    asha: AshaConfig = field(default_factory=AshaConfig)
    resources_per_trial: Resources = field(default_factory=Resources)
    search_preset: str = "small"
    search: dict[str, Any] = field(default_factory=dict)
    tenas: dict[str, Any] = field(default_factory=dict)
    retrain: RetrainSpec = field(default_factory=RetrainSpec)
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    max_failures: int = 0
    unplaceable_timeout_s: float = 600.0   # orchestrator.unplaceable: then a trial no node holds ends the sweep
    reuse_actors: bool = True
    warm_start_timeout_s: float = 120.0    # orchestrator.warm_start: the first wave waits for every slot's worker
    tensorboard: bool = False
    verbose: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.table, str) and self.table.strip():  # trials run in their own folders: an absolute path
            self.table = os.path.abspath(os.path.expanduser(self.table))

    # ------------------------------------------------------------------------------------------- derived
    @property
    def metric(self) -> str:
        """The key the searcher optimises (every trial report carries it)."""
        return REPORT_METRIC

    @property
    def mode(self) -> str:
        return "max"

    @property
    def experiment_path(self) -> str:
        return f"{self.storage}/{self.name}"

    @property
    def local_results_dir(self) -> str:
        if self.results_dir:
            return os.path.abspath(os.path.expanduser(self.results_dir))
        if self.is_uri:
            return os.path.abspath(os.path.join("runs", "sweeps", self.name, "results"))
        return os.path.join(self.experiment_path, "results")

    def space_params(self) -> dict[str, ParamRange]:
        """The enabled parameters (lr / arch_lr only when given)."""
        out = {}
        for name in SPACE_PARAMS:
            r = getattr(self.space, name)
            if r is not None:
                out[name] = r
        return out

    def tune_param_names(self) -> list[str]:
        """Keys of a trial's config: ``m`` becomes ``m_0..m_{steps-1}`` with ``m_per_node``."""
        names = []
        for name in self.space_params():
            if name == "m" and self.space.m_per_node:
                names += [f"m_{j}" for j in range(len(self.node_sizes()))]
            else:
                names.append(name)
        return names

    @property
    def method_spec(self) -> Method:
        """The :class:`istanas.methods.Method` each trial runs."""
        return get_method(self.method)

    def node_sizes(self) -> list[int]:
        """n_j = (2 + j) K for the nodes of a cell (14, 21, 28, 35 for K = 7, 4 nodes): the base search config's
        ``node_sizes()`` (preset < ``search``)."""
        return build_search_config(self, {}, validate=False).node_sizes()

    def trial_slots(self, resources: Mapping[str, float]) -> int:
        """Trials that ``resources`` (``ray.cluster_resources()``: ``{"CPU": n, "GPU": g, ...}``) hold at once at
        ``resources_per_trial`` (at least 1; 1 when a trial asks for nothing)."""
        res, caps = self.resources_per_trial, []
        for key, need in (("CPU", res.cpu), ("GPU", res.gpu)):
            if need > 0:
                caps.append(math.floor(float(resources.get(key, 0.0)) / need + 1e-9))
        return max(1, min(caps)) if caps else 1

    def concurrency(self, resources: Mapping[str, float]) -> int:
        """The trials suggested at a time: ``max_concurrent``, or with ``auto`` twice :meth:`trial_slots` of the
        cluster when the sweep starts (a suggested trial then waits, its placement group requested, for each slot
        that frees: what keeps seconds-long trials' slots busy, benchmarks/README.md)."""
        if self.max_concurrent == "auto":
            return 2 * self.trial_slots(resources)
        return int(self.max_concurrent)

    # ----------------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every field, then build and validate the two-stage (and retrain) configs at the corners of the
        space.  Raises :class:`ConfigError` naming the field.  Reads no data and starts nothing."""
        check(isinstance(self.name, str) and bool(_NAME_RE.match(self.name)),
              f"name: {self.name!r} must be letters, digits, '_', '.' or '-' (it names a folder and a Ray actor)")
        check(isinstance(self.storage_path, str) and self.storage_path.strip() != "",
              "storage_path: give a local folder or a URI such as s3://bucket/sweeps")
        if self.method in METHODS and self.method not in sweepable():
            raise ConfigError(f"method: {self.method!r} has no sweep parameters (Method.sweep_params in "
                              f"istanas.methods); sweepable: {sweepable()}")
        if self.method not in sweepable():
            raise did_you_mean("method", self.method, sweepable(), "method")
        self._validate_benchmark()
        spaces = self.method_spec.spaces
        check(self.search_space in spaces,
              f"search_space: unknown space {self.search_space!r} for method {self.method!r}; choose one of "
              f"{list(spaces)}" + (" (NAS-Bench-201 is searched by TE-NAS, launch/tenas.py)"
                                   if self.search_space == "nb201" else ""))
        check(self.num_samples >= 1, f"num_samples must be >= 1, got {self.num_samples}")
        mc = self.max_concurrent
        check(mc == "auto" or (isinstance(mc, int) and not isinstance(mc, bool) and mc >= 1),
              f"max_concurrent must be an integer >= 1 or 'auto', got {mc!r}")
        check(self.objective in OBJECTIVES,
              f"objective: unknown objective {self.objective!r}; choose one of {list(OBJECTIVES)}")
        check(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        check(self.max_failures >= 0, f"max_failures must be >= 0, got {self.max_failures}")
        w = self.warm_start_timeout_s
        check(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0,
              f"warm_start_timeout_s must be a finite number of seconds >= 0 (0: no gate), got {w!r}")
        t = self.unplaceable_timeout_s
        check(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0,
              f"unplaceable_timeout_s must be a finite number of seconds > 0, got {t!r}")
        check(self.verbose in (0, 1, 2, 3), f"verbose must be 0, 1, 2 or 3, got {self.verbose}")
        self.validate_cluster()
        _check_resources(self.resources_per_trial, "resources_per_trial")
        _check_resources(self.retrain.resources, "retrain.resources")
        self._validate_space()
        self._validate_asha()
        self._validate_points()
        self._validate_search()
        _check_gpu_share(self)
        self._validate_retrain()
        self._validate_tenas()

    def _validate_benchmark(self) -> None:
        """``objective: benchmark`` needs an nb201 search and a ``table``; a given table is format-checked (no
        accuracy is read: that happens after each search)."""
        check(self.benchmark_dataset in TABLE_DATASETS,
              f"benchmark_dataset: {self.benchmark_dataset!r} is not one of {list(TABLE_DATASETS)}")
        if self.objective == "benchmark":
            check(self.search_space == "nb201",
                  f"objective: 'benchmark' scores the found cell by the NAS-Bench-201 table, so it needs "
                  f"search_space: nb201 (got {self.search_space!r})")
            check(self.table is not None, "table: objective 'benchmark' needs the NAS-Bench-201 table: table: PATH "
                                          "(nasbench201_full.csv or NASLib's zc_nasbench201.json)")
        if self.table is None:
            return
        check(self.search_space == "nb201",
              f"table: the NAS-Bench-201 table scores nb201 cells; search_space is {self.search_space!r}")
        try:
            check_nb201_table(self.table)
        except ValueError as e:
            raise ConfigError(str(e) if str(e).startswith("table:") else f"table: {e}") from None

    def _validate_space(self) -> None:
        n = self.node_sizes()
        for name, r in self.space_params().items():
            _check_range(name, r)
        s = self.space.s
        for v in s.candidates():
            check(v <= n[0], f"space.s: s = {v} exceeds n_0 = {n[0]} candidates of the smallest node "
                             f"(n_j = (2 + j) K = {n})")
        m = self.space.m
        limit = n[-1] if self.space.m_per_node else n[0]
        for v in m.candidates():
            where = (f"the largest node's n_{len(n) - 1} = {limit}" if self.space.m_per_node
                     else f"n_0 = {limit} (every node gets m; set m_per_node: true to search m_j <= n_j)")
            check(1 <= v <= limit, f"space.m: m_j = {v} is out of range [1, {limit}]: must not exceed {where}")
        if self.space.m_per_node:
            check(m.kind != "choices" or min(m.choices) <= n[0],
                  f"space.m: with m_per_node every node needs a choice <= n_0 = {n[0]}")
            check(m.kind != "range" or m.low <= n[0],
                  f"space.m.low = {m.low} exceeds n_0 = {n[0]}: node 0 would have an empty range")
        for v in self.space.epsilon.candidates():
            check(v >= 0, f"space.epsilon: must be >= 0 (0 = off), got {v}")
        for name in ("lam", "lr", "arch_lr"):
            r = getattr(self.space, name)
            if r is not None:
                for v in r.candidates():
                    check(v > 0, f"space.{name}: values must be > 0, got {v}")

    def _validate_asha(self) -> None:
        a = self.asha
        check(a.grace_period >= 1, f"asha.grace_period must be >= 1 epoch, got {a.grace_period}")
        check(a.reduction_factor > 1, f"asha.reduction_factor must be > 1, got {a.reduction_factor}")
        if a.max_t is not None:
            check(a.max_t >= a.grace_period,
                  f"asha.max_t = {a.max_t} is smaller than asha.grace_period = {a.grace_period}")

    def _validate_retrain(self) -> None:
        r = self.retrain
        check(r.top_k >= 0, f"retrain.top_k must be >= 0 (0 = no retraining), got {r.top_k}")
        check(r.top_k <= self.num_samples,
              f"retrain.top_k = {r.top_k} exceeds num_samples = {self.num_samples}")
        check(r.top_k == 0 or len(r.seeds) >= 1, "retrain.seeds: give at least one seed")
        check(len(set(r.seeds)) == len(r.seeds), f"retrain.seeds: repeated seeds in {r.seeds}")
        check(r.epochs is None or r.epochs >= 1, f"retrain.epochs must be >= 1 or null, got {r.epochs}")
        if r.top_k > 0:
            if r.preset not in RetrainConfig.PRESETS:
                raise did_you_mean("retrain.preset", r.preset, list(RetrainConfig.PRESETS), "preset")
            cfg = build_retrain_config(self, genotype=None, seed=r.seeds[0], search_data=None, validate=False)
            try:  # the genotype is only known after the search: everything else is checked now
                cfg.validate(genotype=False)
            except ConfigError as e:
                raise ConfigError(f"retrain: {e}") from None

    def _validate_points(self) -> None:
        names = set(self.tune_param_names())
        sizes = self.node_sizes()
        for i, p in enumerate(self.points_to_evaluate):
            unknown = sorted(set(p) - names)
            check(not unknown, f"points_to_evaluate[{i}]: unknown parameter(s) {unknown}; searched: {sorted(names)}")
            missing = sorted(names - set(p))
            check(not missing, f"points_to_evaluate[{i}]: missing parameter(s) {missing}")
            for key, v in p.items():
                base = "m" if key.startswith("m_") else key
                r = getattr(self.space, base)
                check(_in_range(r, v, base),
                      f"points_to_evaluate[{i}].{key} = {v!r} is outside space.{base} ({_describe(r)})")
                if key.startswith("m_"):
                    j = int(key[2:])
                    check(v <= sizes[j], f"points_to_evaluate[{i}].{key} = {v} exceeds n_{j} = {sizes[j]}")

    def _validate_search(self) -> None:
        """The search config validates itself: once with the base settings (and, on an embedded local Ray, its
        devices are probed), then with each searched parameter at each end of its range (the config's constraints
        are per field, so the ends cover every trial)."""
        base = build_search_config(self, {}, validate=True)  # settings that are wrong whatever is sampled
        if self.address is None:         # an embedded local Ray: the trials run on this machine
            try:
                check_runtime(base)
            except ConfigError as e:
                raise ConfigError(f"search.{e}") from None
        sizes = base.node_sizes()
        for name, r in self.space_params().items():
            for v in sorted(set(int(x) if name in INT_PARAMS else x for x in r.candidates())):
                if name == "m" and self.space.m_per_node:
                    trial = {f"m_{j}": min(int(v), nj) for j, nj in enumerate(sizes)}
                else:
                    trial = {name: v}
                try:
                    build_search_config(self, trial, validate=True)
                except ConfigError as e:
                    raise ConfigError(f"search config at {trial}: {e}") from None
        if self.asha.enabled:
            max_t = self.asha.max_t or base.epochs
            check(self.asha.grace_period <= max_t,
                  f"asha.grace_period = {self.asha.grace_period} exceeds the rung horizon max_t = {max_t} "
                  f"(asha.max_t, default the search's {base.epochs} epochs)")

    def _validate_tenas(self) -> None:
        if self.objective != "tenas":
            if self.tenas:
                raise ConfigError("tenas: TE-NAS settings given but objective is not 'tenas'")
            return
        cfg = build_tenas_config(self, image_size=32, num_classes=10)
        cfg.validate()
        check(cfg.space == "darts", f"tenas.space: the two-stage search finds DARTS cells; got {cfg.space!r}")

    # ----------------------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SweepConfig":
        return from_dict(cls, data)


# ------------------------------------------------------------------------------------------------- helpers
def _check_resources(r: Resources, name: str) -> None:
    check(math.isfinite(r.cpu) and r.cpu > 0, f"{name}.cpu must be > 0 (fractions allowed), got {r.cpu}")
    check(math.isfinite(r.gpu) and r.gpu >= 0, f"{name}.gpu must be >= 0 (fractions allowed), got {r.gpu}")
    check(r.gpu <= 1 or float(r.gpu).is_integer(),
          f"{name}.gpu: fractions must be <= 1 (share one GPU), whole numbers above; got {r.gpu}")


def _check_gpu_share(cfg: "SweepConfig") -> None:
    """A trial's search (at the largest ``s`` of the space) must fit its ``resources_per_trial.gpu`` share of a
    GPU of ``resources_per_trial.gpu_memory_gb`` GiB (else of this machine's GPU, on an embedded local Ray):
    :func:`orchestrator.resources.check_fits_share`."""
    res = cfg.resources_per_trial
    check(res.gpu_memory_gb is None or (math.isfinite(res.gpu_memory_gb) and res.gpu_memory_gb > 0),
          f"resources_per_trial.gpu_memory_gb must be > 0 or null, got {res.gpu_memory_gb}")
    if res.gpu <= 0:
        return
    if res.gpu_memory_gb is not None:
        mem, name = int(res.gpu_memory_gb * 2**30), f"a {res.gpu_memory_gb:g} GiB GPU (gpu_memory_gb)"
    else:
        probe = device_memory(torch.device("cuda", 0)) if cfg.address is None else None
        if probe is None:
            return
        mem, name = probe
    worst = {"s": max(int(v) for v in cfg.space.s.candidates())} if cfg.space.s is not None else {}
    check_fits_share(build_search_config(cfg, worst, validate=False), res.gpu, mem, device_name=name)


def _describe(r: ParamRange) -> str:
    if r.kind == "value":
        return f"value {r.value!r}"
    if r.kind == "choices":
        return f"choices {r.choices!r}"
    return f"[{r.low}, {r.high}]" + (" log" if r.log else "")


def _in_range(r: ParamRange, v: Any, name: str) -> bool:
    if r.kind == "value":
        return v == r.value
    if r.kind == "choices":
        return v in r.choices
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if name in INT_PARAMS and not float(v).is_integer():
        return False
    return r.low <= v <= r.high


def _check_range(name: str, r: ParamRange) -> None:
    where = f"space.{name}"
    kinds = [k for k, present in (("value", r.value is not None), ("choices", r.choices is not None),
                                  ("low/high", r.low is not None or r.high is not None)) if present]
    check(len(kinds) <= 1, f"{where}: give one of value, choices or low/high, not {' and '.join(kinds)}")
    check(len(kinds) == 1, f"{where}: empty range; give value, choices or low/high")
    is_int = name in INT_PARAMS

    def check_number(v: Any, label: str) -> None:
        check(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v),
              f"{where}.{label}: expected a finite number, got {v!r}")
        if is_int:
            check(float(v).is_integer(), f"{where}.{label}: {name} is an integer, got {v!r}")

    if r.kind == "value":
        check_number(r.value, "value")
        check(r.log is None, f"{where}.log applies to low/high ranges only")
    elif r.kind == "choices":
        check(isinstance(r.choices, list) and len(r.choices) >= 1, f"{where}.choices: empty list")
        for i, v in enumerate(r.choices):
            check_number(v, f"choices[{i}]")
        check(len(set(r.choices)) == len(r.choices), f"{where}.choices: repeated values in {r.choices}")
        check(r.log is None, f"{where}.log applies to low/high ranges only")
    else:
        check(r.low is not None and r.high is not None, f"{where}: give both low and high")
        check_number(r.low, "low")
        check_number(r.high, "high")
        check(r.low <= r.high, f"{where}: inverted range, low = {r.low} > high = {r.high}")
        check(r.low < r.high, f"{where}: empty range, low = high = {r.low}; use value: {r.low} to fix it")
        log = LOG_DEFAULT[name] if r.log is None else r.log
        if log:
            check(r.low > 0, f"{where}: a log range needs low > 0, got {r.low}")


def _base_search_dict(cfg: SweepConfig) -> dict[str, Any]:
    """The method's preset ``search_preset`` as a full field mapping, with ``space: search_space`` when the
    method's config has a ``space`` field (the sweep's ``search_space`` decides the cell space; a DARTS-space preset
    on nb201 gets the config class's ``NB201_OVERLAY``, as ``launch/search.py --space nb201`` does)."""
    m = cfg.method_spec
    try:
        data = preset_data(m.config_cls, cfg.search_preset, presets=m.presets)
    except ConfigError as e:
        raise ConfigError(f"search_preset: {e}") from None
    if "space" in data and data["space"] != cfg.search_space:
        if cfg.search_space == "nb201":  # a DARTS-space preset: what --space nb201 lays over it (launch/search.py)
            data = deep_merge(data, getattr(m.config_cls, "NB201_OVERLAY", {}), skip_none=False)
        data["space"] = cfg.search_space
    return data


def trial_overrides(cfg: SweepConfig, trial: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's sampled values as the method's dotted config keys (``Method.sweep_params``; ``m_0..m_3`` ->
    ``recovery.m = [..]``)."""
    targets = cfg.method_spec.sweep_params
    out: dict[str, Any] = {}
    m_nodes = sorted((k for k in trial if re.fullmatch(r"m_\d+", k)), key=lambda k: int(k[2:]))
    for key, v in trial.items():
        if key in m_nodes:
            continue
        if key not in targets:
            raise did_you_mean("trial config", key, list(targets), "parameter")
        out[targets[key]] = int(v) if key in INT_PARAMS else float(v)
    if m_nodes:
        out[targets["m"]] = [int(trial[k]) for k in m_nodes]
    return out


def build_search_config(cfg: SweepConfig, trial: Mapping[str, Any], validate: bool = True):
    """The method's config (:class:`istanas.ista.twostage.TwoStageConfig`) of one trial: preset < ``cfg.search``
    < sampled values (dotted keys, merged by :func:`istanas.config.deep_merge`)."""
    if "space" in cfg.search and cfg.search["space"] != cfg.search_space:
        raise ConfigError(f"search.space: the cell space is the sweep's search_space ({cfg.search_space!r}); "
                          f"got {cfg.search['space']!r}")
    data = deep_merge(_base_search_dict(cfg), cfg.search, skip_none=False)
    data = deep_merge(data, trial_overrides(cfg, trial), skip_none=False)
    try:
        scfg = from_dict(cfg.method_spec.config_cls, data)
        if validate:
            scfg.validate()
    except ConfigError as e:
        raise ConfigError(f"search: {e}") from None
    return scfg


# DataConfig fields that say which images a run sees (retraining takes them from the search's data config).
DATA_IDENTITY = ("dataset", "root", "download", "image_size", "in_memory", "limit_train", "limit_test",
                 "holdout_fraction", "split_seed", "num_workers")


def build_retrain_config(cfg: SweepConfig, genotype: Optional[str], seed: int,
                         search_data: Optional[Mapping[str, Any]] = None, validate: bool = True):
    """The :class:`istanas.retrain.RetrainConfig` of one retraining: preset < the search's data source
    (:data:`DATA_IDENTITY` fields) < ``retrain.epochs`` < ``retrain.overrides``; ``genotype`` is JSON text
    (``None``: a published stand-in, for validation)."""
    data = preset_data(RetrainConfig, cfg.retrain.preset)
    if search_data is None:
        try:
            search_data = deep_merge(_base_search_dict(cfg), cfg.search, skip_none=False).get("data")
        except ConfigError:
            search_data = None
    if isinstance(search_data, Mapping):  # the same images; batching and augmentation stay the preset's
        data["data"].update({k: v for k, v in search_data.items() if k in DATA_IDENTITY})
    if cfg.retrain.epochs is not None:
        data["epochs"] = int(cfg.retrain.epochs)
    data["seed"] = int(seed)
    data["genotype"] = genotype if genotype is not None else "DARTS_V2"
    data = deep_merge(data, cfg.retrain.overrides, skip_none=False)
    try:
        rcfg = from_dict(RetrainConfig, data)
    except ConfigError as e:
        raise ConfigError(f"retrain.overrides: {e}") from None
    if validate:
        rcfg.validate()
    return rcfg


def build_tenas_config(cfg: SweepConfig, image_size: int, num_classes: int):
    """The :class:`istanas.tenas.job.TenasConfig` of the ``tenas`` objective (DARTS space, the search data's
    image size and classes, NTK batches not augmented) with ``cfg.tenas`` overrides."""
    base = {"space": "darts", "dataset": "cifar10", "num_classes": int(num_classes), "input_size": int(image_size),
            "device": "cpu", "augment": False}
    base = deep_merge(base, cfg.tenas, skip_none=False)
    try:
        return from_dict(TenasConfig, base)
    except ConfigError as e:
        raise ConfigError(f"tenas.{e}") from None


# ------------------------------------------------------------------------------------------------- loading
def _merge_range(default: Mapping[str, Any], given: Any) -> Any:
    """A user's range replaces the default's kind: ``{choices: [..]}`` drops the default's low/high, a full
    ``{low, high}`` replaces the default range (keeping its ``log`` unless given), a partial one (only ``high``,
    say) keeps the default's other bound."""
    if not isinstance(given, Mapping):
        return given
    keys = set(given)
    if keys & {"value", "choices"}:
        return dict(given)
    default_is_range = default.get("value") is None and default.get("choices") is None
    if not default_is_range:
        return dict(given)
    out = {k: default.get(k) for k in ("low", "high", "log")}
    out.update(given)
    return out


def merge_sweep_data(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge config layers (later wins) with :func:`istanas.config.deep_merge`; a space entry switches kind
    cleanly (``choices`` replaces ``low``/``high``, :func:`_merge_range`); ``search``, ``tenas`` and
    ``retrain.overrides`` are kept as flat dotted keys (the search configs' own keys)."""
    out: dict[str, Any] = to_dict(SweepConfig())
    for layer in layers:
        layer = {str(k).replace("-", "_"): v for k, v in layer.items()}
        has_space, space = "space" in layer, layer.pop("space", None)
        out = deep_merge(out, layer, skip_none=False)
        if isinstance(space, Mapping):
            merged = dict(out.get("space") or {})
            for pname, pval in space.items():
                cur = merged.get(pname)
                merged[pname] = _merge_range(cur, pval) if isinstance(cur, Mapping) else pval
            out["space"] = merged
        elif has_space:
            out["space"] = space
    for key in ("search", "tenas"):
        if isinstance(out.get(key), Mapping):
            out[key] = flatten(out[key])
    retrain = out.get("retrain")
    if isinstance(retrain, Mapping) and isinstance(retrain.get("overrides"), Mapping):
        out["retrain"] = {**retrain, "overrides": flatten(retrain["overrides"])}
    return out


def overrides_to_layer(overrides: Sequence[str]) -> dict[str, Any]:
    """``["space.lam.high=0.01", "num_samples=8"]`` -> a nested mapping layer (values parsed as YAML)."""
    layer: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        if path[0] in ("search", "tenas") and len(path) > 1:
            layer.setdefault(path[0], {})[".".join(path[1:])] = value
            continue
        if path[:2] == ["retrain", "overrides"] and len(path) > 2:
            layer.setdefault("retrain", {}).setdefault("overrides", {})[".".join(path[2:])] = value
            continue
        set_path(layer, path, value)
    return layer


def load_sweep_config(path: Optional[str] = None, overrides: Sequence[str] = (),
                      extra: Optional[Mapping[str, Any]] = None, base: Optional[Mapping[str, Any]] = None,
                      validate: bool = True) -> SweepConfig:
    """Defaults < ``base`` (e.g. a resumed sweep's saved config) < YAML ``path`` < ``extra`` (the CLI's explicit
    flags, nested or dotted keys, ``None`` = not given) < ``overrides`` (``key=value``), then validate."""
    layers: list[Mapping[str, Any]] = []
    if base:
        layers.append(base)
    if path:
        layers.append(read_yaml(path))
    if extra:
        layers.append(deep_merge({}, extra))
    if overrides:
        layers.append(overrides_to_layer(overrides))
    data = merge_sweep_data(*layers)
    cfg = from_dict(SweepConfig, data)
    if validate:
        cfg.validate()
    return cfg


__all__ = ["SweepConfig", "SpaceConfig", "ParamRange", "AshaConfig", "Resources", "RetrainSpec",
           "OBJECTIVES", "load_sweep_config", "merge_sweep_data", "build_search_config",
           "build_retrain_config", "build_tenas_config", "trial_overrides", "flatten"]
