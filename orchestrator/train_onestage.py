"""Distributed one-stage ISTA-NAS (Algorithm 2) on Ray Train V2: a ``TorchTrainer`` running the one-stage search
(``run_search("onestage", ...)``) under DDP, one rank per worker.

Driver (:func:`run_distributed_search`): validate the job (:class:`DistSearchConfig`) and its run folder before
``ray.init``, start or join Ray (:mod:`orchestrator.cluster`), fit the ``TorchTrainer`` (gloo on CPU, NCCL on GPU);
rerunning the same ``name`` / ``storage_path`` resumes from the run's latest checkpoint.

Worker (:func:`train_loop_per_worker`): the training set sharded by rank (``get_loaders(rank, world_size)``), the
test set too (``shard_eval``; loss / accuracy all-reduced); :class:`orchestrator.dist_hooks.TorchDistHooks` wrap
the net with ``ray.train.torch.prepare_model`` (DDP; re-wrapped whenever nodes stop) and broadcast rank 0's support
and stop decisions.  After every epoch one ``ray.train.report(metrics, checkpoint=...)`` on every rank; rank 0
attaches the engine state (``state.pt``) and the per-epoch metrics so far (``reports.json``: Ray Train keeps only
the metrics of its last checkpoints); per-rank gauges :class:`orchestrator.metrics.TrainGauges`.  At the end rank 0
exports the stand-alone network (Eq. 12) into ``<storage>/<name>/export``.  Once its task is built every rank
reseeds its global RNGs with ``seed + rank`` (:func:`rank_seed`: distinct drop-path masks and augmentation per rank;
A, b and the initial weights stay identical), and rank 0 checkpoints every rank's RNG state (``rng_ranks``) so a
resumed rank continues its own stream.  ``record_dir`` (debugging) makes every
rank write the support of every training step, its b and its genotype there.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from istanas import checkpoint as ckpt
from istanas.cli import check_run_config
from istanas.config import ConfigError, check, deep_merge, from_dict, to_dict
from istanas.data import ImageSource, _folder_items, get_loaders
from istanas.engine import NonFiniteLossError
from istanas.ista.onestage import OneStageConfig
from istanas.search import run_search

from .cluster import cluster_address, copy_dir, exists, filesystem, init_ray
from .dist_hooks import TorchDistHooks, shard_eval_loader
from .metrics import TrainGauges
from .results import scalar_metrics
from .sweep_config import _NAME_RE, RayClusterConfig, StoragePathMixin, is_storage_uri

STATE_FILE = "state.pt"
REPORTS_FILE = "reports.json"
RESULT_FILE = "result.json"
EXPORT_DIR = "export"
RECORD_PREFIX = "supports"
#: ``before_report(rank, epoch, metrics)``: a worker-side hook called before every epoch's report (tests use it
#: to kill a worker at a chosen epoch).
BeforeReport = Callable[[int, int, dict], None]


# ------------------------------------------------------------------------------------------------------ config
@dataclass
class DistSearchConfig(RayClusterConfig, StoragePathMixin):
    """A distributed one-stage ISTA-NAS search on Ray Train.

    ``search_preset`` + ``search`` (nested / dotted :class:`istanas.ista.onestage.OneStageConfig` keys) give the search
    config; ``global_batch_size`` (if set) is split evenly over the workers (``data.batch_size`` per worker =
    global / num_workers), otherwise ``search.data.batch_size`` is per worker.  ``num_workers`` ranks, each with
    ``cpus_per_worker`` CPUs (also its torch threads) and, with ``use_gpu``, ``gpus_per_worker`` GPUs, plus any
    custom ``resources_per_worker``.  The run lives in ``storage_path/name`` (a local folder, made absolute, or a
    URI such as ``s3://bucket/runs``; on a multi-node cluster it must be storage every node reaches).
    ``max_failures``: worker failures survived, each resumed from the latest checkpoint (-1 = unlimited).
    ``address``: a running cluster (``auto``) or null for an embedded local Ray with ``num_cpus`` / ``num_gpus``
    (null = all), its dashboard on ``dashboard_host``.  ``timeout_s``: the process-group timeout.
    ``shard_eval``: every rank evaluates 1/num_workers of the test set and the loss / accuracy are all-reduced
    (weighted by images; a remainder of fewer than num_workers images is left out), instead of every rank
    evaluating all of it.  ``record_dir``: see the module doc.
    """

    name: str = "istanas-imagenet"
    storage_path: str = "runs/train"
    search_preset: str = "imagenet"
    search: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    global_batch_size: Optional[int] = None
    max_failures: int = 3
    keep_checkpoints: int = 2
    timeout_s: int = 1800
    shard_eval: bool = True
    verbose: bool = True
    record_dir: Optional[str] = None    # debugging: see the module doc

    # ------------------------------------------------------------------------------------------- derived
    @property
    def run_path(self) -> str:
        """``<storage>/<name>``: Ray Train's run folder (checkpoints), ``export/`` at the end."""
        return f"{self.storage}/{self.name}"

    @property
    def export_path(self) -> str:
        return f"{self.run_path}/{EXPORT_DIR}"

    @property
    def backend(self) -> str:
        return "nccl" if self.use_gpu else "gloo"

    def worker_resources(self) -> dict[str, float]:
        res = {"CPU": float(self.cpus_per_worker)}
        if self.use_gpu:
            res["GPU"] = float(self.gpus_per_worker)
        res.update({k: float(v) for k, v in self.resources_per_worker.items()})
        return res

    # ----------------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every field and build + validate the one-stage config.  Reads no data (only checks that a local
        ``data.root`` exists, when it can be seen from here) and starts nothing.  Raises :class:`ConfigError`."""
        def pos_int(name: str, lo: int = 1) -> None:
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= lo,
                  f"{name}: must be an integer >= {lo}, got {v!r}")

        check(isinstance(self.name, str) and bool(_NAME_RE.match(self.name)),
              f"name: {self.name!r} must be letters, digits, '_', '.' or '-' (it names the run folder)")
        check(isinstance(self.storage_path, str) and self.storage_path.strip() != "",
              "storage_path: give a local folder or a URI such as s3://bucket/runs")
        pos_int("num_workers")
        pos_int("keep_checkpoints")
        pos_int("timeout_s")
        check(isinstance(self.max_failures, int) and self.max_failures >= -1,
              f"max_failures: must be an integer >= -1 (-1 = unlimited), got {self.max_failures!r}")
        for name in ("cpus_per_worker", "gpus_per_worker"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                  f"{name}: must be a number > 0, got {v!r}")
        for k, v in self.resources_per_worker.items():
            check(k not in ("CPU", "GPU"), f"resources_per_worker: set {k} through cpus_per_worker / "
                                           "gpus_per_worker / use_gpu")
            check(isinstance(v, (int, float)) and v >= 0, f"resources_per_worker.{k}: must be a number >= 0")
        if self.global_batch_size is not None:
            pos_int("global_batch_size")
            check(self.global_batch_size % self.num_workers == 0,
                  f"global_batch_size: {self.global_batch_size} is not divisible by num_workers="
                  f"{self.num_workers}; every rank takes an equal share")
        self.validate_cluster()
        if self.use_gpu and self.address is None and not os.environ.get("RAY_ADDRESS"):
            n = torch.cuda.device_count()
            need = self.num_workers * self.gpus_per_worker
            check(n >= need, f"use_gpu: {self.num_workers} workers x {self.gpus_per_worker} GPUs need {need:g} "
                             f"GPUs, but this machine has {n}; use fewer workers, drop --use-gpu, or join a "
                             f"cluster with --address")
        scfg = build_search_config(self, device="cpu")
        check_run_config(scfg)
        check_data_listing(self, scfg)

    def on_cluster(self) -> bool:
        return cluster_address(self) is not None


def build_search_config(cfg: DistSearchConfig, device: Optional[str] = None):
    """The :class:`istanas.ista.onestage.OneStageConfig` of a job: preset < ``cfg.search`` < the per-worker batch, and
    ``device`` (the driver validates with ``"cpu"``; a worker passes its own device).  Validated.

    When the job joins a cluster and ``data.root`` is not visible from the driver (the data lives on the worker
    nodes), the root is checked by the workers instead.
    """
    overrides = deep_merge({}, cfg.search, skip_none=False)
    data = dict(overrides.get("data") or {})
    if cfg.global_batch_size is not None:
        data["batch_size"] = cfg.global_batch_size // cfg.num_workers
    if data:
        overrides["data"] = data
    if device is not None:
        overrides["device"] = device
    try:
        scfg = OneStageConfig.preset(cfg.search_preset, **overrides)
    except TypeError as e:  # an unknown top-level key
        raise ConfigError(f"search: {e}") from None
    root = scfg.data.root
    if root is not None and os.path.exists(os.path.expanduser(root)):
        root = scfg.data.root = os.path.abspath(os.path.expanduser(root))   # workers run in another folder
    remote_root = (root is not None and cfg.on_cluster() and device == "cpu"
                   and not os.path.exists(os.path.expanduser(root)))
    try:
        if remote_root:   # validate everything else against a stand-in folder; the workers check the root
            scfg.data.root = tempfile.gettempdir()
        scfg.validate()
    except ConfigError as e:
        raise ConfigError(f"search.{e}") from None
    finally:
        scfg.data.root = root
    return scfg


def check_data_listing(cfg: DistSearchConfig, scfg: Any) -> None:
    """What the file list of a local ImageFolder root (or zip) decides, before Ray starts: the layout, the train /
    test split (a single split needs ``data.holdout_fraction``) and a full batch on every rank.  Lists names only
    (no image is read); a root the driver cannot see (a cluster's) is left to the workers.  ``ConfigError``."""
    data = scfg.data
    if data.dataset != "imagenet" or data.root is None or not os.path.exists(data.root):
        return
    try:
        train, _ = _folder_items(data, ImageSource(data.root))
    except ConfigError as e:
        raise ConfigError(f"search.{e}") from None
    except (ValueError, OSError) as e:   # the data module names data.root in its ValueErrors
        raise ConfigError(f"search.{e}" if str(e).startswith("data.") else f"search.data.root: {e}") from None
    per_rank = len(train) // cfg.num_workers
    if per_rank < 1 or (data.drop_last and per_rank < data.batch_size):
        raise ConfigError(f"search.data.batch_size: {data.batch_size} per worker, but each of the {cfg.num_workers} "
                          f"workers gets {per_rank} of the {len(train)} training images; no full batch could be "
                          f"drawn (lower the batch or --num-workers)")


# --------------------------------------------------------------------------------------------------- run folder
def run_exists(cfg: DistSearchConfig) -> bool:
    """Whether ``<storage>/<name>`` already holds a run: anything besides hidden files (Ray Train's
    ``.validate_storage_marker``, all that a run stopped by a config error before its first report leaves, so the
    corrected command reuses the folder as a fresh run)."""
    if not cfg.is_uri:
        p = cfg.run_path
        return os.path.isdir(p) and any(not n.startswith(".") for n in os.listdir(p))
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        if not exists(cfg.run_path):
            return False
        fs, p = filesystem(cfg.run_path)
        return any(not i.base_name.startswith(".") for i in fs.get_file_info(pafs.FileSelector(p)))
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ConfigError(f"storage_path: cannot reach {cfg.run_path}: {e} (check the URI and the credentials)") \
            from None


def check_run(cfg: DistSearchConfig, resume: bool) -> None:
    """Fresh run: the run folder must not exist; ``resume``: it must."""
    exists = run_exists(cfg)
    if resume and not exists:
        raise ConfigError(f"--resume: no run at {cfg.run_path}; start it without --resume")
    if not resume and exists:
        raise ConfigError(f"{cfg.run_path} exists; pass --resume to continue that run (same --name and "
                          f"--storage-path), or choose another --name")


# ------------------------------------------------------------------------------------------------ rank seeding
def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s global RNGs (Python, NumPy, torch: drop-path masks, unsharded augmentation) once its
    task is built: ``seed + rank``.  Rank 0 keeps ``seed``.  What must agree across ranks does not use them: A and
    the initial b come from the compressed space's own generator (``seed + recovery.seed``), the weights are
    initialised before the reseed (and DDP broadcasts them), the sharded shuffle derives from ``(seed, epoch)``."""
    return int(seed) + int(rank)


def seeded_wrap(wrap: Callable[[torch.nn.Module], torch.nn.Module], seed: int, rank: int,
                world_size: int) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """``wrap`` that, after its first call (the end of the task's construction), reseeds the global RNGs with
    :func:`rank_seed` when ``world_size > 1`` (before this, every rank drew the same drop-path masks)."""
    done = [world_size <= 1]

    def wrapped(module: torch.nn.Module) -> torch.nn.Module:
        out = wrap(module)
        if not done[0]:
            done[0] = True
            ckpt.seed_everything(rank_seed(seed, rank))
        return out

    return wrapped


def gather_rng_states(hooks: TorchDistHooks, rng: dict) -> Optional[list]:
    """Every rank's RNG state on rank 0 (one ``gather_object`` over the gloo group; a collective: every rank calls
    it once per epoch), None on the other ranks and with one rank.  Rank 0 checkpoints them as ``rng_ranks``."""
    if hooks.world_size == 1:
        return None
    out = [None] * hooks.world_size if hooks.rank == 0 else None
    dist.gather_object(rng, out, dst=0, group=hooks.group)
    return out


def resume_for_rank(resume: Optional[dict], rank: int, world_size: int, seed: int) -> Optional[dict]:
    """The engine state this rank resumes from: rank 0's checkpoint with this rank's own RNG state
    (``rng_ranks[rank]``), so that a resumed run draws what the uninterrupted one would have.  A checkpoint from
    another world size (or one written before ``rng_ranks`` existed) gives ranks > 0 the state of
    ``seed_everything(rank_seed(seed, rank) + 7919 * epoch)`` instead: distinct per rank, still reproducible."""
    if resume is None or world_size <= 1:
        return resume
    ranks = resume.get("rng_ranks")
    if isinstance(ranks, list) and len(ranks) == world_size and ranks[rank] is not None:
        return {**resume, "rng": ranks[rank]}
    if rank == 0:
        return resume
    saved = ckpt.rng_state()
    try:
        ckpt.seed_everything(rank_seed(seed, rank) + 7919 * int(resume.get("epoch", 0)))
        rng = ckpt.rng_state()
    finally:
        ckpt.set_rng_state(saved)
    return {**resume, "rng": rng}


# ------------------------------------------------------------------------------------------------- worker loop
def _local_images(loader) -> int:
    """Images one epoch of this rank's training loader serves."""
    n = int(getattr(loader, "num_samples", 0) or 0)
    bs = getattr(loader, "batch_size", None) or getattr(getattr(loader, "loader", None), "batch_size", None)
    if bs and len(loader) * int(bs) < n:          # dropped trailing batch
        n = len(loader) * int(bs)
    return n


def _record_supports(cfg: DistSearchConfig, hooks: TorchDistHooks, start: int, genotype: Any = None) -> None:
    """Debug (``record_dir``): write this rank's per-step supports, its b (and genotype)."""
    if not cfg.record_dir or hooks.net is None:
        return
    steps = hooks.support_log
    rec: dict[str, Any] = {"rank": hooks.rank, "start_epoch": start,
                           "supports": torch.stack([s.to(torch.int64).cpu() for s in steps]) if steps
                           else torch.zeros(0, dtype=torch.int64),
                           "b": hooks.net.space.b.detach().cpu().clone()}
    if genotype is not None:
        rec["genotype"] = genotype.to_json() if hasattr(genotype, "to_json") else json.dumps(genotype)
    ckpt.save(rec, os.path.join(cfg.record_dir, f"{RECORD_PREFIX}_start{start:04d}_rank{hooks.rank}.pt"))


def _epoch_line(cfg: DistSearchConfig, m: dict) -> str:
    keys = ("train_loss", "train_acc", "test_acc", "images_per_s", "peak_mem_mb", "gpu_mem_peak_mb", "searching",
            "nodes_stopped")
    parts = [f"{k} {m[k]:.4g}" if isinstance(m[k], float) else f"{k} {m[k]}" for k in keys if k in m]
    return f"[istanas {cfg.name}] epoch {m.get('epoch')}: " + " | ".join(parts)


# --------------------------------------------------------------------------------------- deterministic failures
class JobConfigError(ConfigError):
    """A worker's error that a retry from the last checkpoint would only repeat (a bad config or data root, a
    corrupt checkpoint with no good one before it, a non-finite loss): :class:`FailFastOnConfigError` ends the
    run on it at once instead of spending ``max_failures`` retries."""


#: errors of a worker that are deterministic: the same config, data and checkpoint give them again
DETERMINISTIC_ERRORS = (ConfigError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        PermissionError, NonFiniteLossError)


def _fail_fast_callback():
    """A Ray Train ``UserCallback`` (runs in the controller): on a :class:`JobConfigError` of any worker it raises
    it, which Ray Train V2 turns into a ``ControllerError`` that its default failure policy does not retry (callback
    errors are not retryable, ``RETRYABLE_CONTROLLER_ERRORS``); every other worker error still goes to
    ``FailureConfig(max_failures)``."""
    from ray.train.v2.api.callback import UserCallback

    class FailFastOnConfigError(UserCallback):
        def after_exception(self, run_context: Any, worker_exceptions: dict) -> None:
            for rank in sorted(worker_exceptions):
                err = worker_exceptions[rank]
                if isinstance(err, JobConfigError):
                    raise JobConfigError(str(err))

    return FailFastOnConfigError()


def config_error_of(err: BaseException) -> Optional[JobConfigError]:
    """The :class:`JobConfigError` with which :class:`FailFastOnConfigError` stopped a run (the controller failure
    of the ``TrainingFailedError`` that ``fit()`` raised), else None."""
    cause = getattr(err, "controller_failure", None)
    return cause if isinstance(cause, JobConfigError) else None


# ------------------------------------------------------------------------------------------------ checkpoints
_CKPT_RE = re.compile(r"^epoch_(\d+)")


def _load_dir(d: str) -> dict:
    """The engine state of one checkpoint folder, ``state.pt`` verified against its size / SHA-256 record; the
    per-epoch reports ride inside it (``reports``; older checkpoints: ``reports.json``)."""
    state = ckpt.load(os.path.join(d, STATE_FILE))
    if "reports" not in state and os.path.isfile(os.path.join(d, REPORTS_FILE)):
        with open(os.path.join(d, REPORTS_FILE), encoding="utf-8") as f:
            state["reports"] = json.load(f)
    return state


def _epoch_checkpoints(run_path: str) -> list[tuple[int, str]]:
    """``(epoch, path)`` of the run's ``epoch_*`` checkpoint folders (local or a storage URI), newest first."""
    if is_storage_uri(run_path):
        import pyarrow.fs as pafs

        fs, p = filesystem(run_path)
        names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
                 if i.type == pafs.FileType.Directory]
    else:
        local = run_path[len("file://"):] if run_path.startswith("file://") else run_path
        names = [n for n in os.listdir(local) if os.path.isdir(os.path.join(local, n))] if os.path.isdir(local) \
            else []
    found = [(int(m.group(1)), f"{run_path}/{n}") for n in names if (m := _CKPT_RE.match(n))]
    return sorted(found, key=lambda t: (t[0], t[1]), reverse=True)


def load_resume_state(checkpoint: Any, run_path: str, verbose: bool = True) -> tuple[dict, str]:
    """(state, the checkpoint it came from) for Ray Train's latest ``checkpoint``.  A latest checkpoint that is
    corrupt, truncated or unreadable is named on stderr and the newest good ``epoch_*`` checkpoint before it is used
    (``keep_checkpoints`` >= 2 keeps one); none good: :class:`JobConfigError` naming the files.  Every rank makes
    the same choice (the same folders, read in the same order)."""
    from ray.train import Checkpoint

    try:
        with checkpoint.as_directory() as d:
            return _load_dir(d), checkpoint.path
    except (ckpt.CheckpointError, ValueError, OSError) as first:
        bad = str(first)
    tried = [checkpoint.path]
    latest = os.path.basename(str(checkpoint.path).rstrip("/"))
    m = _CKPT_RE.match(latest)
    limit = int(m.group(1)) if m else None
    for epoch, path in _epoch_checkpoints(run_path):
        if path.rstrip("/") == str(checkpoint.path).rstrip("/") or (limit is not None and epoch > limit):
            continue
        tried.append(path)
        try:
            with Checkpoint(path).as_directory() as d:
                state = _load_dir(d)
        except (ckpt.CheckpointError, ValueError, OSError):
            continue
        if verbose:
            print(f"warning: {bad}; resuming from the previous good checkpoint {path} (epoch {state.get('epoch')})",
                  file=sys.stderr, flush=True)
        return state, path
    raise JobConfigError(f"{bad}; no good checkpoint to fall back on (tried {', '.join(map(str, tried))}); start the "
                         f"run afresh under another --name")


def train_loop_per_worker(config: dict, before_report: Optional[BeforeReport] = None) -> None:
    """The Ray Train worker: one rank of the one-stage search (see the module doc).  ``before_report(rank, epoch,
    metrics)`` runs before every epoch's report (a test hook).  A deterministic error (:data:`DETERMINISTIC_ERRORS`)
    is raised as a :class:`JobConfigError`, which ends the run without retries."""
    try:
        _train_loop(config, before_report)
    except JobConfigError:
        raise
    except DETERMINISTIC_ERRORS as e:
        msg = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        raise JobConfigError(msg) from None


def _train_loop(config: dict, before_report: Optional[BeforeReport]) -> None:
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = from_dict(DistSearchConfig, config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    if isinstance(device, list):
        device = device[0]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    scfg = from_dict(OneStageConfig, config["search"])
    scfg.device = str(device)
    scfg.validate()

    hooks = TorchDistHooks(device, rank, world, record=bool(cfg.record_dir))
    in_mem = scfg.data.on_device  # in-memory data, or decode: gpu, is made on the device
    # the one-stage search trains W and b on the whole training set (sharded); "valid" is the test set
    data = get_loaders(scfg.data, "train", seed=scfg.seed, rank=rank, world_size=world,
                       device=device if in_mem else None)
    n_local = _local_images(data.train)
    if cfg.shard_eval:
        data.valid = shard_eval_loader(data.valid, rank, world)
    n_eval = int(getattr(data.valid, "num_samples", 0) or 0)
    sharded_eval = cfg.shard_eval and world > 1 and getattr(data.valid, "world_size", 1) == world

    resume, start, reports, redo, used = None, 0, [], "", ""
    found = ray.train.get_checkpoint()
    if found is not None:
        resume, used = load_resume_state(found, cfg.run_path, verbose=cfg.verbose and rank == 0)
        start = int(resume["epoch"])
        reports = [r for r in resume.pop("reports", None) or [] if int(r.get("epoch", 0)) <= start]
        if used != found.path:      # epochs after the fallback are redone: fresh folder names, no clash
            redo = f"-from{start:05d}"
    resume = resume_for_rank(resume, rank, world, scfg.seed)
    if rank == 0 and cfg.verbose:
        what = f"resuming after epoch {start}" if resume is not None else "fresh start"
        print(f"[istanas {cfg.name}] {world} workers ({cfg.backend}, {device.type}), {data.train_size} training "
              f"images, batch {scfg.data.batch_size} per worker; {what}", flush=True)

    last: dict[str, Any] = {"state": resume}
    gauges = TrainGauges(cfg.name, rank)

    def on_epoch_end(metrics: dict, state: dict) -> None:
        last["state"] = state
        epoch = int(metrics.get("epoch", 0))
        m = scalar_metrics(metrics)
        t = float(metrics.get("train_time_s") or metrics.get("epoch_time_s") or float("nan"))
        m["train_images"] = world * n_local
        m["images_per_s"] = world * n_local / t if t > 0 else float("nan")
        m["images_per_s_per_worker"] = n_local / t if t > 0 else float("nan")
        m["world_size"] = world
        m["resumed_from_epoch"] = start
        m["support_mismatches"] = hooks.support_mismatches
        m["z_mismatches"] = hooks.z_mismatches
        if sharded_eval and "test_acc" in m:           # every rank evaluated its share: the whole test set's
            m.update(hooks.all_reduce_mean({"test_loss": m["test_loss"], "test_acc": m["test_acc"]}, n_eval))
        if "test_acc" in m:
            last["test"] = {"test_loss": m["test_loss"], "test_acc": m["test_acc"]}
        if device.type == "cuda":
            m["gpu_mem_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            m["gpu_mem_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        gauges.update(m)
        _record_supports(cfg, hooks, start)
        if before_report is not None:
            before_report(rank, epoch, m)
        rngs = gather_rng_states(hooks, state["rng"])    # every rank's RNG, so a resume restores each rank's own
        if rngs is not None:
            state = last["state"] = {**state, "rng_ranks": rngs}
        reports.append({k: v for k, v in m.items() if k != "genotype"})
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                ckpt.save({**state, "reports": reports}, os.path.join(d, STATE_FILE), packed=True)  # + size / SHA-256
                ckpt.atomic_write_json(os.path.join(d, REPORTS_FILE), reports)           # for people
                ray.train.report(m, checkpoint=Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"epoch_{epoch:05d}{redo}")
        else:
            ray.train.report(m)
        if rank == 0 and cfg.verbose:
            print(_epoch_line(cfg, m), flush=True)

    # distinct drop-path masks / augmentation per rank once the task is built (its A, b, weights stay identical)
    engine_hooks = hooks.as_engine_hooks()
    engine_hooks = replace(engine_hooks, wrap=seeded_wrap(engine_hooks.wrap, scfg.seed, rank, world))
    with tempfile.TemporaryDirectory(prefix="istanas-export-") as tmp:
        export_dir = os.path.join(tmp, EXPORT_DIR) if rank == 0 else None
        result = run_search("onestage", scfg, data=data, on_epoch_end=on_epoch_end, resume=resume, progress=False,
                            dist=engine_hooks, export_dir=export_dir)
        _record_supports(cfg, hooks, start, result.genotype)
        final = scalar_metrics(result.final)
        if last.get("test"):                           # the last evaluation, over the whole test set
            final.update(last["test"])
        elif reports and "test_acc" in reports[-1]:     # resumed after the last epoch: as reported then
            final.update({k: reports[-1][k] for k in ("test_acc", "test_loss") if k in reports[-1]})
        elif result.history:
            final.update({k: result.history[-1][k] for k in ("test_acc", "test_loss")
                          if isinstance(result.history[-1].get(k), float)})
        final.update({"search_done": 1, "genotype_digest": result.genotype_digest, "genotype": result.genotype_json,
                      "export_dir": cfg.export_path, "resumed_from_epoch": start,
                      "resume_checkpoint": os.path.basename(str(used).rstrip("/")),
                      "support_mismatches": hooks.support_mismatches,
                      "switch_epoch": int(result.extra.get("switch_epoch", 0)),
                      "params": int(result.extra.get("params", 0)),
                      "epoch": int(final.get("epochs", len(result.history)))})
        if rank != 0:
            ray.train.report(final)
            return
        # rank 0: the stand-alone model (Eq. 12) into the run's storage, then a final checkpoint with the result
        copy_dir(export_dir, cfg.export_path)
        export = result.extra.get("export", {})
        final["export_files"] = ",".join(sorted(os.path.basename(p) for p in export.values()))
        keep = os.path.join(tmp, "final")
        os.makedirs(keep)
        if last.get("state") is not None:
            ckpt.save({**last["state"], "reports": reports}, os.path.join(keep, STATE_FILE), packed=True)
        rec = result.to_record()
        rec.pop("genotype", None)
        rec["history"] = [scalar_metrics(h) for h in result.history]
        rec["reports"] = reports            # per epoch as reported: + images_per_s, GPU memory, resumed_from_epoch
        rec["export"] = {kind: f"{cfg.export_path}/{os.path.basename(p)}" for kind, p in export.items()}
        ckpt.atomic_write_json(os.path.join(keep, RESULT_FILE), rec)
        ckpt.atomic_write_json(os.path.join(keep, REPORTS_FILE), reports)
        shutil.copy2(os.path.join(export_dir, "genotype.json"), os.path.join(keep, "genotype.json"))
        ray.train.report(final, checkpoint=Checkpoint.from_directory(keep))
    if cfg.verbose:
        print(f"[istanas {cfg.name}] done: genotype {final['genotype_digest']}; the stand-alone model (Eq. 12), "
              f"genotype and ONNX are in {cfg.export_path}", flush=True)


# ---------------------------------------------------------------------------------------------------- driver
@dataclass
class DistOutcome:
    """What a distributed search produced."""

    run_path: str
    export_path: str
    genotype: Optional[str]
    genotype_digest: Optional[str]
    metrics: dict
    checkpoint_path: Optional[str]
    wall_time_s: float


def worker_config(cfg: DistSearchConfig, scfg: Any = None) -> dict[str, dict]:
    """``train_loop_config`` of the workers: ``{"job": ..., "search": ...}`` with every local path absolute (Ray
    Train workers run in another folder)."""
    scfg = scfg if scfg is not None else build_search_config(cfg, device="cpu")
    job = to_dict(cfg)
    job["storage_path"] = cfg.storage
    if job.get("record_dir"):
        job["record_dir"] = os.path.abspath(os.path.expanduser(job["record_dir"]))
    return {"job": job, "search": to_dict(scfg)}


def build_trainer(cfg: DistSearchConfig, scfg: Any = None, before_report: Optional[BeforeReport] = None):
    """The ``TorchTrainer`` of a job (call inside a Ray session); ``before_report`` goes to every worker."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    train_fn = train_loop_per_worker if before_report is None else \
        functools.partial(train_loop_per_worker, before_report=before_report)
    return TorchTrainer(
        train_fn,
        train_loop_config=worker_config(cfg, scfg),
        torch_config=TorchConfig(backend=cfg.backend, timeout_s=cfg.timeout_s),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=cfg.worker_resources()),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.storage,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             callbacks=[_fail_fast_callback()]),
    )


def run_distributed_search(cfg: DistSearchConfig, *, resume: bool = False, validate: bool = True,
                           before_report: Optional[BeforeReport] = None) -> DistOutcome:
    """Validate, start (or join) Ray, fit the ``TorchTrainer``, and return the outcome.  An already initialised
    Ray is used as is and left running; otherwise Ray is started here and shut down at the end.
    ``before_report``: see :func:`train_loop_per_worker`."""
    t0 = time.perf_counter()
    if validate:
        cfg.validate()
    check_run(cfg, resume)
    scfg = build_search_config(cfg, device="cpu")
    started = init_ray(cfg, echo=cfg.verbose,
                       dashboard_note=" - the Train view lists the run, its workers and per-epoch metrics")
    import ray

    from ray.train import TrainingFailedError

    try:
        result = build_trainer(cfg, scfg, before_report).fit()
    except TrainingFailedError as e:
        bad = config_error_of(e)
        if bad is None:
            raise
        raise JobConfigError(f"{bad} (the run stopped at once: retrying cannot fix it; correct it and rerun the "
                             f"same command)") from None
    finally:
        if started:
            ray.shutdown()
    metrics = dict(result.metrics or {})
    ck = result.checkpoint
    return DistOutcome(run_path=cfg.run_path, export_path=cfg.export_path, genotype=metrics.get("genotype"),
                       genotype_digest=metrics.get("genotype_digest"), metrics=metrics,
                       checkpoint_path=ck.path if ck is not None else None, wall_time_s=time.perf_counter() - t0)


__all__ = ["DistSearchConfig", "DistOutcome", "build_search_config", "build_trainer", "worker_config", "check_run",
           "run_exists", "run_distributed_search", "train_loop_per_worker", "BeforeReport", "rank_seed", "seeded_wrap",
           "gather_rng_states", "resume_for_rank", "STATE_FILE", "REPORTS_FILE", "JobConfigError",
           "DETERMINISTIC_ERRORS", "config_error_of", "load_resume_state", "check_data_listing", "RESULT_FILE",
           "EXPORT_DIR", "RECORD_PREFIX"]
