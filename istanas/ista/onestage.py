"""One-stage ISTA-NAS (paper Algorithm 2): search and train the target-size network in one run.

Algorithm 2 (paper, "One-stage ISTA-NAS, for both search and evaluation")::

    input: N(W, B) in the target-net setting (depth, width, batch); gamma / beta of the BNs of every candidate op
           frozen at 1 / 0; search_flag := True
    while not converged:
        2-3: if searching: recover z from b (Eq. 9), keep the top-s |z| per node -> support S; the super-net
             runs only the ops in S (istanas.supernet), each scaled by its coefficient c = b^T A_S - z_S^T E_SS
             (Eq. 11)
        5-6: if searching and ||z_new - z_old|| <= epsilon: release gamma / beta; stop searching
        8:   update W_S on the TRAINING loss
        9-10: if searching: update b on the same TRAINING loss (single level, no validation half)
    13: fold the coefficients into the BNs (Eq. 12; :mod:`istanas.ista.absorb`)

How this implementation reads it (each choice is a setting; the default is named):

* One backward per batch gives the gradients of W and b together (line 8 and line 10 on one training loss, as
  the reference does); b takes its Adam step, then W's gradient norm is clipped and W takes its SGD step.
* ``recover_every="step"`` (default, the paper: lines 2-3 run in every iteration) or ``"epoch"`` (the reference:
  once per epoch).  A recovery is a few milliseconds on the host, small next to a target-net step, so the paper's
  schedule costs little.  Either way one recovery runs at the end of every search epoch.
* The stop rule is applied per node (``stop_scope="node"``, default, the issue and the reference: a node whose
  code moved by at most epsilon stops while the others go on; the paper's single ``search_flag`` is
  ``stop_scope="network"``: every node stops together once the change of the whole code is <= epsilon) and
  once per epoch: ``||z_end - z_start||_2 <= epsilon`` over the epoch (reference: epsilon = 1e-3, checked at every
  epoch end; a per-step test would compare two codes one Adam step apart and fire at once).
  ``min_search_epochs`` is the first epoch at whose end a node may stop (reference: 2, it skips epoch 1; default 1).
  A stopped node keeps its b (``CompressedSpace.freeze``), z and support for the rest of the run; the BNs of its
  candidate ops become trainable (``unfreeze="all"``: every BN inside the ops, the paper and the reference;
  ``"final"``: only the BN that Eq. 12 rescales).  The epoch each node stopped is recorded (``stop_epochs``).
* When every node has stopped the search phase ends (``switch_epoch``): no more recoveries, the coefficients are
  constants, b gets no updates, and the fixed architecture trains on.  ``search_epochs`` caps the search phase
  (nodes still searching then are stopped and marked ``forced``); ``train_epochs`` = the training epochs after
  the switch (the reference: 600 after a search of variable length) with ``epochs`` the hard cap of the run; with
  ``train_epochs=None`` training goes on until ``epochs``.
* Learning rate: ``lr_schedule="constant_then_cosine"`` (default, the reference; the paper gives none): constant
  while searching, then cosine from ``lr`` to ``lr_min`` over the training phase.  ``"cosine"``: one cosine over
  all ``epochs``.  Drop-path is 0 while searching and then ramps linearly to ``drop_path`` over the training phase
  (the reference); the auxiliary head's loss (weight ``auxiliary_weight``) counts in both phases.
* Parameter budget (the reference only; off by default): with ``param_budget`` set, after every recovery the
  parameter count of the stand-alone network of the new support (auxiliary head excluded; computed exactly from a
  per-candidate table of the super-net's own ops, which have the stand-alone layout) is compared with the budget;
  a support above it is rejected as a whole and the previous z and support are kept (the reference: "rejected",
  x_last kept).  Unlike the reference, the stop rule then sees the kept z, not the rejected candidate's.

NAS-Bench-201 (``space="nb201"``, :mod:`istanas.cell_space`): the same algorithm on the NAS-Bench-201 super-net
(one cell type, 3 nodes, node j keeps min(s, j) ops, at most one per edge; no auxiliary head, no export: Eq. 12's
fold targets the DARTS-space stand-alone network); the result is the NAS-Bench-201 cell of the final support.

Data: the whole training set trains W and b (``get_loaders(..., "train")``); ``valid`` is the test set, evaluated
every ``eval_every`` epochs for monitoring only (as the reference, which logs the test accuracy; nothing is chosen
on it).

Distributed training (the Ray Train job): the model is one module, :class:`OneStageNet` (super-net + compressed
space), whose forward computes the Eq. 11 coefficients from b, so that wrapping that one module (DDP) all-reduces
the gradients of b with those of W.  :class:`DistHooks` carries the hooks: ``wrap`` (called at the start and again
after every node stop, because DDP reduces only the parameters that required gradients when it was built, and a
stop releases BN parameters), ``broadcast_support`` (after every recovery), ``all_agree`` (at every stop decision)
and ``is_main``.  Synchronisation: the forward chooses its ops from the host support (copied once per recovery);
a step has no host read; the per-epoch stop test reads ``||dz||`` once.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from spaces.networks import is_imagenet
from .compressed import CompressedSpace, HostRecovery, RecoveryConfig, support_churn
from ..cell_space import NB201_RECOVERY, cell_space
from ..config import ConfigError, SearchOptimConfig, check, preset
from ..data import DataConfig, Loaders
from ..engine import Update, place
from ..supernet import SparseSuperNet, SupportPlan
from ..training import cosine_lr, evaluate, task_data
from .twostage import RECOVER_EVERY

STOP_SCOPES = ("node", "network")
LR_SCHEDULES = ("constant_then_cosine", "cosine")
UNFREEZE_SCOPES = ("all", "final")


# ----------------------------------------------------------------------------------------------------- config
@dataclass
class OneStageConfig(SearchOptimConfig):
    """Settings of a one-stage ISTA-NAS run (Algorithm 2); see the module doc for what each choice means.

    The bare defaults are the reference's CIFAR-10 target-net settings (tools/train_search_single.py run by
    main_search_onestage.sh: 36 channels, 20 cells, batch 96, SGD lr 0.025 (constant while searching, then cosine
    to 0.001), momentum 0.9, weight decay 3e-4, clip 5, Adam arch lr 3e-4 betas (0.5, 0.999) weight decay 1e-3,
    auxiliary head 0.4, drop-path 0.2 after the switch, cutout 16, epsilon 1e-3, at most 600 search epochs then 600
    training epochs) on the data of ``data``; :meth:`preset` gives whole setups: ``"small"`` (digits, a tiny net,
    CPU minutes), ``"cifar10"``, ``"imagenet"`` (14 cells, 48 channels, an ImageFolder; ``data.root`` required).

    ``space="nb201"``: presets ``cpu`` and ``paper`` (NAS-Bench-201's network C = 16, N = 5, 50 epochs, batch 64;
    Algorithm 2 is single-level, so the whole training set trains W and b); ``auxiliary`` must be false there.

    ``param_budget``: None = off (the paper); the reference rejects supports whose stand-alone CIFAR network has
    more than 3.7e6 parameters (set ``param_budget=3.7e6``).  ``epsilon = 0`` switches the epsilon rule off (the
    search then ends at ``search_epochs``).  ``record_supports``: keep the host support of every step in
    ``task.support_log`` (a debugging aid, e.g. to compare ranks).  ``bf16``: bf16 autocast on CUDA.
    """

    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=96, cutout=16))
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    C: int = 36
    layers: int = 20
    epochs: int = 1200
    search_epochs: Optional[int] = 600
    train_epochs: Optional[int] = 600
    lr: float = 0.025
    lr_schedule: str = "constant_then_cosine"
    arch_lr: float = 3e-4
    init_b_std: float = 1e-3
    recover_every: str = "step"
    epsilon: float = 1e-3
    stop_scope: str = "node"
    min_search_epochs: int = 1
    unfreeze: str = "all"
    param_budget: Optional[float] = None
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2
    label_smoothing: float = 0.0
    eval_every: int = 1
    bf16: bool = True                    # bf16 autocast (CUDA only)
    channels_last: bool = True           # channels-last memory format (CUDA only)
    record_supports: bool = False
    out: str = "runs/search-onestage"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def validate(self) -> None:
        """Raise :class:`ConfigError` (a ``ValueError``) naming the first bad field; reads no data."""
        if not isinstance(self.data, DataConfig):
            raise ConfigError("data: expected a DataConfig mapping")
        if not isinstance(self.recovery, RecoveryConfig):
            raise ConfigError("recovery: expected a RecoveryConfig mapping")
        self.validate_common()

        def opt_int(name: str, lo: int) -> None:
            v = getattr(self, name)
            check(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= lo),
                  f"{name}: must be an integer >= {lo} or null, got {v!r}")

        def num(name: str, lo: float, hi: float = math.inf, hi_open: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= lo \
                and (v < hi if hi_open else v <= hi)
            check(ok, f"{name}: must be a finite number in [{lo}, {hi}{')' if hi_open else ']'}, got {v!r}")

        nb201 = self.space == "nb201"
        check(nb201 or (self.C >= 2 and self.C % 2 == 0),
              f"C: must be an even integer >= 2 (FactorizedReduce halves the channels), got {self.C!r}")
        check(not (nb201 and self.auxiliary), "auxiliary: the nb201 super-net has no auxiliary head; set "
                                               "auxiliary=false")
        opt_int("search_epochs", 1)
        opt_int("train_epochs", 1)
        if self.search_epochs is not None:
            check(self.search_epochs <= self.epochs,
                  f"search_epochs: must be <= epochs = {self.epochs}, got {self.search_epochs}")
        check(self.lr_schedule in LR_SCHEDULES,
              f"lr_schedule: must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        check(self.recover_every in RECOVER_EVERY,
              f"recover_every: must be one of {list(RECOVER_EVERY)}, got {self.recover_every!r}")
        num("epsilon", 0.0)
        check(self.stop_scope in STOP_SCOPES,
              f"stop_scope: must be one of {list(STOP_SCOPES)}, got {self.stop_scope!r}")
        check(isinstance(self.min_search_epochs, int) and not isinstance(self.min_search_epochs, bool)
              and self.min_search_epochs >= 1, f"min_search_epochs: must be an integer >= 1, got "
                                               f"{self.min_search_epochs!r}")
        check(self.unfreeze in UNFREEZE_SCOPES,
              f"unfreeze: must be one of {list(UNFREEZE_SCOPES)}, got {self.unfreeze!r}")
        if self.param_budget is not None:
            num("param_budget", 1.0)
        num("init_b_std", 0.0)
        check(self.init_b_std > 0, "init_b_std: must be > 0 (b = 0 gives zero coefficients and a zero gradient "
                                   "of b forever)")
        num("auxiliary_weight", 0.0)
        num("drop_path", 0.0, 1.0, hi_open=True)
        num("label_smoothing", 0.0, 1.0, hi_open=True)
        check(isinstance(self.eval_every, int) and not isinstance(self.eval_every, bool) and self.eval_every >= 1,
              f"eval_every: must be an integer >= 1, got {self.eval_every!r}")
        check(self.data.cutout <= self.data.resolved_image_size,
              f"data.cutout: {self.data.cutout} is larger than the image ({self.data.resolved_image_size} px)")
        check(nb201 or self.recovery.s == 2,
              f"recovery.s: one-stage search needs s = 2 (the stand-alone DARTS network that Eq. 12 produces has "
              f"exactly two inputs per node), got {self.recovery.s!r}")
        cell_space(self).validate_recovery(self.recovery)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "OneStageConfig":
        """``"small"`` (digits, C = 8, 5 cells, 12 epochs: CPU minutes), ``"cifar10"`` (the reference's target
        net) or ``"imagenet"``.  ``overrides``: top-level fields; ``data`` / ``recovery`` may be partial mappings."""
        return preset(cls, name, **overrides)


OneStageConfig.PRESETS = {
    "small": {
        "data": {"dataset": "digits", "batch_size": 64, "eval_batch_size": 256, "cutout": 0},
        "recovery": {"lam": 1e-5, "s": 2, "m": 7, "matrix": "uniform", "support": "topk"},
        "C": 8, "layers": 5, "steps": 4, "epochs": 12, "search_epochs": 8, "train_epochs": None,
        "lr": 0.05, "lr_min": 0.001, "lr_schedule": "constant_then_cosine", "momentum": 0.9, "weight_decay": 3e-4,
        "grad_clip": 5.0, "arch_lr": 3e-3, "arch_betas": [0.5, 0.999], "arch_weight_decay": 1e-3,
        "init_b_std": 1e-3, "recover_every": "step", "epsilon": 1e-3, "auxiliary": True, "auxiliary_weight": 0.4,
        "drop_path": 0.1, "label_smoothing": 0.0,
    },
    "cifar10": {
        "data": {"dataset": "cifar10", "batch_size": 96, "eval_batch_size": 256, "cutout": 16},
        "recovery": {"lam": 1e-5, "s": 2, "m": 7, "matrix": "uniform", "support": "topk"},
        "C": 36, "layers": 20, "steps": 4, "epochs": 1200, "search_epochs": 600, "train_epochs": 600,
        "lr": 0.025, "lr_min": 0.001, "lr_schedule": "constant_then_cosine", "momentum": 0.9, "weight_decay": 3e-4,
        "grad_clip": 5.0, "arch_lr": 3e-4, "arch_betas": [0.5, 0.999], "arch_weight_decay": 1e-3,
        "init_b_std": 1e-3, "recover_every": "step", "epsilon": 1e-3, "auxiliary": True, "auxiliary_weight": 0.4,
        "drop_path": 0.2, "label_smoothing": 0.0,
    },
    # ImageNet target net (14 cells, 48 channels) with the project's ImageNet training settings (istanas.retrain
    # "imagenet": batch 128 per process at lr 0.1, weight decay 3e-5, label smoothing 0.1, no drop-path); the
    # reference has no ImageNet search code.  Scale lr with the global batch (the reference's evaluation: 0.5 at
    # 1024).
    "imagenet": {
        "data": {"dataset": "imagenet", "batch_size": 128, "eval_batch_size": 256, "cutout": 0, "num_workers": 8,
                 "image_size": 224},
        "recovery": {"lam": 1e-5, "s": 2, "m": 7, "matrix": "uniform", "support": "topk"},
        "C": 48, "layers": 14, "steps": 4, "epochs": 500, "search_epochs": 250, "train_epochs": 250,
        "lr": 0.1, "lr_min": 0.0, "lr_schedule": "constant_then_cosine", "momentum": 0.9, "weight_decay": 3e-5,
        "grad_clip": 5.0, "arch_lr": 3e-4, "arch_betas": [0.5, 0.999], "arch_weight_decay": 1e-3,
        "init_b_std": 1e-3, "recover_every": "step", "epsilon": 1e-3, "auxiliary": True, "auxiliary_weight": 0.4,
        "drop_path": 0.0, "label_smoothing": 0.1,
    },
    # NAS-Bench-201, a 2-core CPU fidelity (the two-stage "cpu" preset's data and network; benchmarks/README.md)
    "cpu": {
        "space": "nb201",
        "data": {"dataset": "cifar10", "batch_size": 64, "eval_batch_size": 256, "cutout": 0, "image_size": 16,
                 "limit_train": 1000, "limit_test": 500},
        "recovery": {"lam": 1e-5, **NB201_RECOVERY, "matrix": "uniform"},
        "C": 8, "layers": 1, "epochs": 8, "search_epochs": 8, "train_epochs": None,
        "lr": 0.05, "lr_min": 0.001, "lr_schedule": "constant_then_cosine", "momentum": 0.9, "weight_decay": 3e-4,
        "grad_clip": 5.0, "arch_lr": 1e-2, "arch_betas": [0.5, 0.999], "arch_weight_decay": 1e-3,
        "init_b_std": 1e-3, "recover_every": "step", "epsilon": 1e-3, "auxiliary": False, "drop_path": 0.0,
        "label_smoothing": 0.0, "bf16": False, "channels_last": False,
    },
    # NAS-Bench-201's search network and budget (C = 16, N = 5, 50 epochs, batch 64, SGD 0.025, Adam 3e-4)
    "paper": {
        "space": "nb201",
        "data": {"dataset": "cifar10", "batch_size": 64, "eval_batch_size": 256, "cutout": 0},
        "recovery": {"lam": 1e-5, **NB201_RECOVERY, "matrix": "uniform"},
        "C": 16, "layers": 5, "epochs": 50, "search_epochs": 50, "train_epochs": None,
        "lr": 0.025, "lr_min": 0.001, "lr_schedule": "constant_then_cosine", "momentum": 0.9, "weight_decay": 3e-4,
        "grad_clip": 5.0, "arch_lr": 3e-4, "arch_betas": [0.5, 0.999], "arch_weight_decay": 1e-3,
        "init_b_std": 1e-3, "recover_every": "step", "epsilon": 1e-3, "auxiliary": False, "drop_path": 0.0,
        "label_smoothing": 0.0,
    },
}
OneStageConfig.NB201_OVERLAY = {"recovery": dict(NB201_RECOVERY), "auxiliary": False}


# ------------------------------------------------------------------------------------------------ distributed
def _identity(x: Any) -> Any:
    return x


@dataclass
class DistHooks:
    """What a data-parallel job plugs into :class:`OneStageTask` (all defaults: single process).

    wrap(module) -> module: e.g. ``DistributedDataParallel(m, find_unused_parameters=True)`` or
        ``ray.train.torch.prepare_model``.  Called on the :class:`OneStageNet` at the start and again after every
        stop decision that stopped a node (the set of trainable BN parameters changed; DDP reduces only those that
        required gradients when it was built).  The sparse forward leaves most candidate ops unused in a step, so
        DDP needs ``find_unused_parameters=True``.
    broadcast_support(support_host: CPU LongTensor [T, steps, s]) -> CPU LongTensor: rank 0's support to every
        rank; called after every recovery.
    all_agree(flags: CPU BoolTensor [T, steps]) -> CPU BoolTensor: the nodes that stop, decided once for all ranks
        (e.g. rank 0's flags broadcast); called at every stop decision, also when no flag is set.
    is_main: only the main rank writes files.
    """

    wrap: Callable[[nn.Module], nn.Module] = _identity
    broadcast_support: Callable[[torch.Tensor], torch.Tensor] = _identity
    all_agree: Callable[[torch.Tensor], torch.Tensor] = _identity
    is_main: bool = True


# ---------------------------------------------------------------------------------------------------- model
class OneStageNet(nn.Module):
    """The one-stage model as ONE module: the :class:`SparseSuperNet` (``supernet``) and the
    :class:`CompressedSpace` (``space``, owning b).

    ``forward(x [N, C_in, H, W], plan: SupportPlan | None = None) -> logits [N, classes]`` (``(logits, aux)`` in
    training mode with an auxiliary head): the coefficients c = b^T A_S - z_S^T E_SS (Eq. 11, ``[T, steps, s]``)
    are computed inside from b and the current support, so gradients reach b through this module (DDP reduces
    them).  ``plan`` defaults to the plan of the support set by :meth:`set_support`.  After the switch
    :meth:`fix_coefficients` turns the coefficients into constants.
    """

    def __init__(self, supernet: SparseSuperNet, space: CompressedSpace, dataset: str = "cifar10",
                 image_size: int = 32):
        super().__init__()
        if not supernet.onestage:
            raise ValueError("supernet: build it with onestage=True (a BN after every candidate op)")
        if space.num_ops != supernet.num_ops or space.steps != supernet.steps:
            raise ValueError("space: its ops / steps do not match the super-net's")
        self.supernet = supernet
        self.space = space
        self.dataset = dataset
        self.image_size = int(image_size)
        T, S, s = len(space.cell_types), space.steps, space.cfg.s
        self.register_buffer("support", torch.zeros(T, S, s, dtype=torch.int64), persistent=False)
        self.support_host = torch.zeros(T, S, s, dtype=torch.int64)
        self.plan: Optional[SupportPlan] = None
        self.fixed_coef: Optional[torch.Tensor] = None

    def set_support(self, support_host: torch.Tensor) -> None:
        """Use ``support_host`` (CPU LongTensor ``[T, steps, s]``): its plan, and one host -> device copy."""
        host = support_host.to(torch.int64).cpu()
        self.plan = self.supernet.plan(host)
        self.support_host = host
        self.support = host.to(self.support.device, non_blocking=True)
        self.fixed_coef = None

    def coefficients(self) -> torch.Tensor:
        """Eq. 11 on the current support, ``[T, steps, s]`` in b's dtype (a constant after
        :meth:`fix_coefficients`); never under autocast (bf16 would round A and z)."""
        if self.fixed_coef is not None:
            return self.fixed_coef
        with torch.autocast(self.support.device.type, enabled=False):
            return self.space.coefficients(self.support)

    @torch.no_grad()
    def fix_coefficients(self) -> None:
        """Freeze the coefficients as constants (all nodes stopped: b no longer changes)."""
        self.fixed_coef = None
        self.fixed_coef = self.coefficients().detach()

    def forward(self, x: torch.Tensor, plan: Optional[SupportPlan] = None):
        plan = self.plan if plan is None else plan
        if plan is None:
            raise RuntimeError("OneStageNet: no support set; call set_support first")
        return self.supernet(x, plan, self.coefficients())

    def network_kwargs(self) -> dict[str, Any]:
        """Keywords of ``spaces.networks.build_network`` for the stand-alone network of this super-net."""
        sn = self.supernet
        return {"dataset": self.dataset, "C": sn.C, "layers": sn.layers, "num_classes": sn.num_classes,
                "auxiliary": sn.aux_head is not None, "bn_after_param_free": True, "in_channels": sn.in_channels}


def candidate_param_table(supernet: SparseSuperNet) -> tuple[int, torch.Tensor]:
    """``(fixed, cost)``: the stand-alone network of support S has ``fixed + sum_S cost[t, i, k]`` parameters.

    ``fixed``: parameters outside the candidate ops (stem, pre-processing, classifier; the auxiliary head is
    excluded, as the reference counts).  ``cost [T, steps, n_max]`` (int64, host): for cell type t, node i and flat
    candidate id k (input edge k // K, op k % K), the parameters of that op summed over every cell of type t.  The
    one-stage super-net's ops have the stand-alone layout (``bn_after_param_free``), so this is exact.
    """
    K, S, T = supernet.num_ops, supernet.steps, len(supernet.cell_type_names)
    n_max = max(supernet.edges_per_node) * K
    cost = torch.zeros(T, S, n_max, dtype=torch.int64)
    for c in supernet.candidate_ops():
        cost[c.cell_type, c.node, c.edge * K + c.op] += sum(p.numel() for p in c.module.parameters())
    fixed = 0
    for name, p in supernet.named_parameters():
        if ".edges." in name or name.startswith("aux_head."):
            continue
        fixed += p.numel()
    return fixed, cost


def stop_decision(dz: torch.Tensor, stopped: torch.Tensor, epsilon: float, scope: str = "node") -> torch.Tensor:
    """The nodes that stop now: ``dz [T, steps]`` = ||z_end - z_start||_2 per node over the epoch, ``stopped``
    ``[T, steps]`` bool (already stopped).  ``scope="node"``: each searching node with dz <= epsilon;
    ``"network"`` (the paper's one flag): every searching node, once the change of the whole code of the searching
    nodes, ``sqrt(sum dz^2)``, is <= epsilon.  ``epsilon <= 0``: none."""
    active = ~stopped
    if epsilon <= 0 or not bool(active.any()):
        return torch.zeros_like(stopped)
    if scope == "node":
        return active & (dz <= epsilon)
    total = float(torch.sqrt((dz.double() ** 2 * active).sum()))
    return active.clone() if total <= epsilon else torch.zeros_like(stopped)


# ----------------------------------------------------------------------------------------------------- task
class OneStageTask:
    """Algorithm 2 as an :class:`istanas.engine.Task` (see the module doc).

    ``OneStageTask(cfg, loaders=None, device=None, dist=None)``: ``loaders`` default
    ``get_loaders(cfg.data, "train", cfg.seed)`` (pass rank shards in a distributed job); ``dist`` a
    :class:`DistHooks`.  Attributes: ``net`` (the :class:`OneStageNet`), ``model`` (``dist.wrap(net)``, what the
    training step calls), ``stop_epochs`` (host ``[T, steps]`` int64, 1-based epoch at whose end the node stopped,
    0 = searching), ``forced`` (stopped by ``search_epochs``), ``switch_epoch`` (epochs run when the search ended,
    0 = searching), ``support_host``, ``rejections`` (supports refused by the parameter budget).
    """

    def __init__(self, cfg: OneStageConfig, loaders: Optional[Loaders] = None,
                 device: Optional[torch.device] = None, dist: Optional[DistHooks] = None):
        self.cfg = cfg
        self.dist = dist if dist is not None else DistHooks()
        self.device, self.loaders = task_data(cfg, "train", loaders, device)
        dataset = cfg.data.dataset
        self.cell_space = cell_space(cfg)
        kw = {} if self.cell_space.nb201 else {"auxiliary": cfg.auxiliary,
                                               "stem": "imagenet" if is_imagenet(dataset) else "cifar"}
        supernet = self.cell_space.sparse_supernet(cfg, self.loaders.num_classes, self.loaders.in_channels,
                                                   onestage=True, **kw)
        space = self.cell_space.compressed(cfg)
        self.net = OneStageNet(place(supernet, self.device, cfg.channels_last), space, dataset,
                               self.loaders.image_size).to(self.device)
        self.space = self.net.space
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.optimizer = torch.optim.SGD(supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam([self.space.b], lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                      weight_decay=cfg.arch_weight_decay)
        self._fixed_params, self._param_cost = candidate_param_table(supernet)
        T, S = len(space.cell_types), space.steps
        self.stop_epochs = torch.zeros(T, S, dtype=torch.int64)
        self.forced = torch.zeros(T, S, dtype=torch.bool)
        self.z_frozen = torch.zeros_like(self.space.z)
        self.switch_epoch = 0
        self.recoveries = 0
        self.recovery_time = 0.0
        self.churn_total = 0
        self.rejections = 0
        self.support_log: list[torch.Tensor] = []
        self._recoverer = HostRecovery(self.space)
        self.support_host: Optional[torch.Tensor] = None
        # initial recovery on the random b (the reference does the same before epoch 1), cold start
        self._recover(warm_start=False)
        self.churn_total = 0
        self.model = self.dist.wrap(self.net)

    # ------------------------------------------------------------------------------------------- properties
    @property
    def searching(self) -> bool:
        """Algorithm 2's ``search_flag``: some node still searches."""
        return self.switch_epoch == 0

    @property
    def converged_epoch(self) -> int:
        return int(self.switch_epoch)

    def support_params(self, support_host: torch.Tensor) -> int:
        """Parameters of the stand-alone network of ``support_host`` (auxiliary head excluded; -1 = empty slot)."""
        sup = support_host.to(torch.int64)
        cost = self._param_cost.gather(-1, sup.clamp_min(0)) * (sup >= 0)
        return int(self._fixed_params + cost.sum())

    # ---------------------------------------------------------------------------------------------- recovery
    def _recover(self, warm_start: bool = True) -> None:
        """Lines 2-3: z and S from the current b; stopped nodes keep theirs; the budget may reject; broadcast."""
        t0 = time.perf_counter()
        prev = self.support_host
        budget = self.cfg.param_budget
        z_prev = self.space.z.detach().clone() if budget is not None and prev is not None else None
        _, host = self._recoverer(warm_start)
        stopped = self.stop_epochs > 0
        if bool(stopped.any()):
            host = torch.where(stopped.unsqueeze(-1), prev, host)
            self.space.z.copy_(torch.where(self.space.frozen.unsqueeze(-1), self.z_frozen, self.space.z))
        if z_prev is not None and self.support_params(host) > budget:
            host = prev                                        # rejected: keep the previous z and support
            self.space.z.copy_(z_prev)
            self.rejections += 1
        host = self.dist.broadcast_support(host).to(torch.int64).cpu()
        self.net.set_support(host)
        self.support_host = host
        if prev is not None:
            self.churn_total += support_churn(host, prev)
        self.recoveries += 1
        self.recovery_time += time.perf_counter() - t0
        self._stale = False

    # ------------------------------------------------------------------------------------------ schedules
    def _phase(self, epoch: int) -> tuple[int, int]:
        """(0-based epoch within the training phase, length of that phase); (-1, 0) while searching."""
        if self.searching:
            return -1, 0
        length = self.cfg.train_epochs if self.cfg.train_epochs is not None else self.cfg.epochs - self.switch_epoch
        return epoch - self.switch_epoch, max(1, length)

    def lr_at(self, epoch: int) -> float:
        """The weight learning rate of 0-based ``epoch`` (see ``lr_schedule``)."""
        cfg = self.cfg
        if cfg.lr_schedule == "cosine":
            return cosine_lr(cfg.lr, cfg.lr_min, epoch, cfg.epochs)
        e, n = self._phase(epoch)
        return cfg.lr if e < 0 else cosine_lr(cfg.lr, cfg.lr_min, e, n)

    def drop_path_at(self, epoch: int) -> float:
        """0 while searching, then ``drop_path * e / n`` over the training phase (the reference)."""
        e, n = self._phase(epoch)
        return 0.0 if e < 0 else self.cfg.drop_path * e / n

    # ------------------------------------------------------------------------------------------- engine protocol
    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "w_opt": self.optimizer.state_dict(), "a_opt": self.a_opt.state_dict(),
                "support_host": self.support_host.clone(), "stop_epochs": self.stop_epochs.clone(),
                "forced": self.forced.clone(), "z_frozen": self.z_frozen.detach().cpu().clone(),
                "switch_epoch": int(self.switch_epoch), "searching": bool(self.searching),
                "recoveries": int(self.recoveries), "recovery_time": float(self.recovery_time),
                "churn_total": int(self.churn_total), "rejections": int(self.rejections)}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.stop_epochs = state["stop_epochs"].to(torch.int64).cpu().clone()
        self.forced = state["forced"].to(torch.bool).cpu().clone()
        self.z_frozen = state["z_frozen"].to(device=self.space.z.device, dtype=self.space.z.dtype)
        self.switch_epoch = int(state["switch_epoch"])
        # the released BNs are trainable again (requires_grad is not part of a state dict)
        for t, i in (self.stop_epochs > 0).nonzero().tolist():
            self.net.supernet.unfreeze_node(t, i, scope=self.cfg.unfreeze)
        self.optimizer.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self._recoverer = HostRecovery(self.space)
        self.support_host = state["support_host"].to(torch.int64).cpu().clone()
        self.net.set_support(self.support_host)
        if not self.searching:
            self.space.b.requires_grad_(False)
            self.net.fix_coefficients()
        self.recoveries = int(state.get("recoveries", 0))
        self.recovery_time = float(state.get("recovery_time", 0.0))
        self.churn_total = int(state.get("churn_total", 0))
        self.rejections = int(state.get("rejections", 0))
        self._stale = False
        self.model = self.dist.wrap(self.net)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Line 8 / 10's one training loss: CE(logits) (+ ``auxiliary_weight`` CE(aux))."""
        out = self.model(x, self.net.plan)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        loss = self.criterion(logits.float(), y)
        if aux is not None and self.cfg.auxiliary and self.cfg.auxiliary_weight > 0:
            loss = loss + self.cfg.auxiliary_weight * self.criterion(aux.float(), y)
        return loss, logits

    def begin_epoch(self, epoch: int) -> dict[str, Any]:
        self.net.supernet.drop_path_prob = self.drop_path_at(epoch)
        self._searching = self.searching
        self._z_start = self.space.z.detach().clone()
        self._s_start = self.support_host.clone()
        self._counts0 = (self.recoveries, self.recovery_time, self.churn_total, self.rejections)
        self._weights = [p for p in self.net.supernet.parameters() if p.requires_grad]
        # one backward for W and b: b takes its Adam step (line 10), W its clipped SGD step (line 8)
        self._optimizers = [self.a_opt, self.optimizer] if self._searching else [self.optimizer]
        return {"drop_path": float(self.net.supernet.drop_path_prob), "searching": float(self._searching)}

    def step(self, batch: Any) -> list[Update]:
        if self._searching and self.cfg.recover_every == "step" and self._stale:
            self._recover()                                       # lines 2-3
        if self.cfg.record_supports:
            self.support_log.append(self.support_host)
        if self._searching:
            self._stale = True                                    # b changes in this step
        return [Update(self._loss, self._optimizers, clip=self._weights, max_norm=self.cfg.grad_clip)]

    def finish_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {}
        if self._searching:
            if self._stale:
                self._recover()                                   # z of the epoch's final b
            rec0, rtime0, churn0, rej0 = self._counts0
            dz = (self.space.z - self._z_start).norm(dim=-1).cpu()  # [T, steps], one host read per epoch
            out.update(self._stop(epoch, dz))
            out.update({"support_churn": float(support_churn(self.support_host, self._s_start)),
                        "support_changes": float(self.churn_total - churn0),
                        "recoveries": float(self.recoveries - rec0), "recovery_time_s": self.recovery_time - rtime0,
                        "rejections": float(self.rejections - rej0)})
            for t, name in enumerate(self.space.cell_types):
                for i in range(self.space.steps):
                    out[f"dz_{name}_{i}"] = float(dz[t, i])
            out["dz_max"] = float(dz.max())
        for t, name in enumerate(self.space.cell_types):
            for i in range(self.space.steps):
                out[f"stop_epoch_{name}_{i}"] = float(self.stop_epochs[t, i])
        out["nodes_stopped"] = float((self.stop_epochs > 0).sum())
        out["switch_epoch"] = float(self.switch_epoch)
        out["params_m"] = self.support_params(self.support_host) / 1e6
        return out

    def _stop(self, epoch: int, dz: torch.Tensor) -> dict[str, float]:
        """Lines 5-6 at the end of epoch ``epoch`` (0-based): which nodes stop; release their BNs; the switch."""
        cfg = self.cfg
        stopped = self.stop_epochs > 0
        flags = torch.zeros_like(stopped)
        if epoch + 1 >= cfg.min_search_epochs:
            flags = stop_decision(dz, stopped, cfg.epsilon, cfg.stop_scope)
        forced = torch.zeros_like(stopped)
        if cfg.search_epochs is not None and epoch + 1 >= cfg.search_epochs:
            forced = ~stopped & ~flags
            flags = ~stopped
        flags = self.dist.all_agree(flags.clone()).to(torch.bool).cpu() & ~stopped
        new = int(flags.sum())
        if new:
            self.space.freeze(flags.to(self.space.frozen.device))
            self.z_frozen = torch.where(self.space.frozen.unsqueeze(-1), self.space.z, self.z_frozen)
            for t, i in flags.nonzero().tolist():
                self.stop_epochs[t, i] = epoch + 1
                self.forced[t, i] = bool(forced[t, i])
                self.net.supernet.unfreeze_node(t, i, scope=cfg.unfreeze)
        ended = bool((self.stop_epochs > 0).all())
        if ended:
            self.switch_epoch = epoch + 1                        # search_flag := False
            self.space.b.requires_grad_(False)
            self.net.fix_coefficients()
        if new:
            self.model = self.dist.wrap(self.net)
        return {"nodes_stopped_now": float(new), "search_ended": float(ended)}

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        """Test-set loss and accuracy of the current network (eval mode), every ``eval_every`` epochs and at the
        end of the run; plus the genotype."""
        out: dict[str, Any] = {"genotype": self.genotype().to_json()}
        last = epoch + 1 >= self.cfg.epochs or (self.cfg.train_epochs is not None and not self.searching
                                                  and epoch + 1 >= self.switch_epoch + self.cfg.train_epochs)
        if (epoch + 1) % self.cfg.eval_every == 0 or last:
            m = evaluate(self.net, self.loaders.valid, self.device, self.criterion, bf16=self.cfg.bf16,
                         channels_last=self.cfg.channels_last)
            out.update({"test_loss": m["loss"], "test_acc": m["acc"]})
        return out

    def end_epoch(self, epoch: int, metrics: dict) -> bool:
        if self.cfg.train_epochs is not None and not self.searching:
            return epoch + 1 >= self.switch_epoch + self.cfg.train_epochs
        return False

    # ---------------------------------------------------------------------------------------------- results
    def genotype(self):
        """The genotype of the current support (:meth:`istanas.cell_space.CellSpace.genotype`)."""
        return self.cell_space.genotype(self.support_host, self.space.z)

    def stop_report(self) -> dict[str, Any]:
        """``{"stop_epochs": {cell: [epoch per node]}, "forced": {cell: [bool]}, "switch_epoch",
        "search_finished", "rejections"}``."""
        names = self.space.cell_types
        return {"stop_epochs": {n: [int(v) for v in self.stop_epochs[t].tolist()] for t, n in enumerate(names)},
                "forced": {n: [bool(v) for v in self.forced[t].tolist()] for t, n in enumerate(names)},
                "switch_epoch": int(self.switch_epoch), "search_finished": not self.searching,
                "rejections": int(self.rejections)}


__all__ = ["OneStageConfig", "OneStageNet", "OneStageTask", "DistHooks", "stop_decision", "candidate_param_table",
           "STOP_SCOPES", "LR_SCHEDULES", "UNFREEZE_SCOPES"]
