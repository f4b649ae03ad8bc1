"""Two-stage ISTA-NAS search (paper Algorithm 1) on the sparse super-net, as an engine task and a plain function.

Algorithm 1 (paper, "Two-stage ISTA-NAS, for search only"), one iteration per training step::

    while not converged:
        2: recover z from b by Eq. 9 (batched: all nodes of both cell types in one call); keep the top-s |z|
           per node -> support S (copied to the host once)
        3: take the sub-graph N(W_S, B): the super-net runs only the ops in S (istanas.supernet)
        4: update W_S on a training batch: SGD (momentum, weight decay, cosine lr, gradient-norm clip)
        5: update b on a validation batch: Adam (betas (0.5, 0.999), weight decay), first order, through the
           coefficients c = b^T A_S - z_S^T E_SS of Eq. 11 (z a constant)

``recover_every`` chooses when line 2 runs: ``"step"`` (default, the paper: before every step whose b changed) or
``"epoch"`` (the reference implementation, whose per-node CVXPY/MOSEK solver is too slow for more: once before the
first epoch and once after every epoch, the support fixed within an epoch).  Either way a recovery also runs at
the end of every epoch, so each epoch's metrics, the validation pass and the checkpoint see the support of the
final b of that epoch, and the genotype is that of the last recovery (Algorithm 1's output "according to the final
S(z)").  ``epsilon > 0`` implements "while not converged": the search stops after an epoch in which every node's
code moved by at most epsilon, ``||z_end - z_start||_2 <= epsilon``.

Synchronisation: the model forward chooses its ops from the host copy of S only (no ``.item()``, no ``if w != 0``).
On CUDA the recovery packs b and the previous z into one tensor, copies it to the host once (the one
device -> host transfer of a recovery), solves the batched LASSO and selects S on a CPU mirror of the compressed
space (the recovery problems are tiny and launch-bound: the CPU is faster, see ``RecoveryConfig.device``), and
sends z and S back without waiting.  ``recovery.device`` naming a CUDA device solves on the GPU instead (the
homotopy then reads a convergence flag every few iterations).

Outputs (:func:`write_outputs`): ``genotype.json`` (the :class:`spaces.genotype.Genotype` JSON), pictures of both
cells (PNG and SVG via :mod:`spaces.plot`) and ``result.json`` (final metrics, per-epoch history, config).  The
per-epoch metrics: train / architecture-step / validation loss and accuracy, support churn, per-node
``||z_new - z_old||``, step time, recovery time, peak memory, learning rate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from .compressed import HostRecovery, RecoveryConfig, support_churn
from ..cell_space import NB201_RECOVERY, cell_space
from ..config import ConfigError, SearchOptimConfig, check, preset
from ..data import DataConfig, Loaders
from ..engine import Update, cycle, place
from ..training import cosine_lr, evaluate, task_data

RECOVER_EVERY = ("step", "epoch")


# ----------------------------------------------------------------------------------------------------- config
@dataclass
class TwoStageConfig(SearchOptimConfig):
    """Settings of a two-stage ISTA-NAS search (Algorithm 1).

    The bare defaults are the reference's CIFAR-10 search settings (tools/train_search.py run by main_search.sh:
    50 epochs, batch 256, SGD lr 0.1 cosine to 0.001, momentum 0.9, weight decay 3e-4, gradient clip 5, Adam arch
    lr 6e-4 with betas (0.5, 0.999) and weight decay 1e-3, 16 channels, 8 cells, lambda 1e-5, s = 2, m = 7) on the
    data of ``data`` (scikit-learn's digits unless set); :data:`PRESETS` gives whole setups ("reference": CIFAR-10,
    "small": digits, a few CPU minutes).  The network / optimiser fields are :class:`SearchOptimConfig`'s.

    ``recover_every``: ``"step"`` = the paper's Algorithm 1 (recover before every step); ``"epoch"`` = the
    reference implementation, which recovers once per epoch (its solver is too slow for more).
    ``epsilon``: 0 = off; > 0 stops the search once every node's ``||z_end - z_start||_2`` over an epoch is
    <= epsilon (Algorithm 1's "while not converged").
    ``seed`` seeds the weights, data order and augmentation; the measurement matrices A and the initial b are drawn
    from ``seed + recovery.seed`` (one seed drives a whole run, as in the reference; ``recovery.seed`` offsets A).
    ``deterministic``: on CUDA, deterministic cuDNN / torch algorithms during the search, so that the same seed and
    device give the same genotype (false: somewhat faster, run-to-run noise in the weights and so in S).
    ``space``: ``"darts"`` or ``"nb201"`` (:mod:`istanas.cell_space`; presets ``cpu`` and ``paper`` are NAS-Bench-201
    searches: a 2-core CPU fidelity and NAS-Bench-201's own search settings); :data:`NB201_OVERLAY` is what
    ``--space nb201`` lays over a DARTS-space preset.
    """

    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=256))
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    init_b_std: float = 1e-3
    recover_every: str = "step"
    epsilon: float = 0.0
    out: str = "runs/search-twostage"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "reference": {
            "data": {"dataset": "cifar10", "batch_size": 256, "eval_batch_size": 256, "cutout": 0,
                     "train_portion": 0.5},
            "recovery": {"lam": 1e-5, "s": 2, "m": 7, "matrix": "uniform", "support": "topk"},
            "C": 16, "layers": 8, "steps": 4, "epochs": 50, "lr": 0.1, "lr_min": 0.001, "momentum": 0.9,
            "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 6e-4, "arch_betas": [0.5, 0.999],
            "arch_weight_decay": 1e-3, "init_b_std": 1e-3, "recover_every": "step", "epsilon": 0.0,
        },
        "small": {
            "data": {"dataset": "digits", "batch_size": 64, "eval_batch_size": 256, "cutout": 0,
                     "train_portion": 0.5},
            "recovery": {"lam": 1e-5, "s": 2, "m": 7, "matrix": "uniform", "support": "topk"},
            "C": 8, "layers": 5, "steps": 4, "epochs": 10, "lr": 0.05, "lr_min": 0.001, "momentum": 0.9,
            "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 1e-2, "arch_betas": [0.5, 0.999],
            "arch_weight_decay": 1e-3, "init_b_std": 1e-3, "recover_every": "step", "epsilon": 0.0,
        },
        # NAS-Bench-201, a 2-core CPU fidelity (benchmarks/README.md: time and table accuracy measured)
        "cpu": {
            "space": "nb201",
            "data": {"dataset": "cifar10", "batch_size": 64, "eval_batch_size": 256, "cutout": 0,
                     "train_portion": 0.5, "image_size": 16, "limit_train": 2000, "limit_test": 500},
            "recovery": {"lam": 1e-5, **NB201_RECOVERY, "matrix": "uniform"},
            "C": 8, "layers": 1, "epochs": 8, "lr": 0.05, "lr_min": 0.001, "momentum": 0.9,
            "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 1e-2, "arch_betas": [0.5, 0.999],
            "arch_weight_decay": 1e-3, "init_b_std": 1e-3, "recover_every": "step", "epsilon": 0.0,
        },
        # NAS-Bench-201's own search settings (C = 16, N = 5, 50 epochs, batch 64, CIFAR-10 train set in halves,
        # SGD lr 0.025 cosine to 0.001, momentum 0.9, weight decay 3e-4, clip 5, Adam 3e-4 (0.5, 0.999) 1e-3)
        "paper": {
            "space": "nb201",
            "data": {"dataset": "cifar10", "batch_size": 64, "eval_batch_size": 256, "cutout": 0,
                     "train_portion": 0.5},
            "recovery": {"lam": 1e-5, **NB201_RECOVERY, "matrix": "uniform"},
            "C": 16, "layers": 5, "epochs": 50, "lr": 0.025, "lr_min": 0.001, "momentum": 0.9,
            "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 3e-4, "arch_betas": [0.5, 0.999],
            "arch_weight_decay": 1e-3, "init_b_std": 1e-3, "recover_every": "step", "epsilon": 0.0,
        },
    }
    NB201_OVERLAY: ClassVar[dict[str, Any]] = {"recovery": dict(NB201_RECOVERY)}

    def validate(self) -> None:
        """Raise :class:`ConfigError` (a ``ValueError``) naming the first bad field; reads no data, probes nothing
        (``istanas.search.check_runtime`` checks the devices)."""
        if not isinstance(self.data, DataConfig):
            raise ConfigError("data: expected a DataConfig mapping")
        if not isinstance(self.recovery, RecoveryConfig):
            raise ConfigError("recovery: expected a RecoveryConfig mapping")
        self.validate_common()
        check(self.recover_every in RECOVER_EVERY,
              f"recover_every: must be one of {list(RECOVER_EVERY)}, got {self.recover_every!r}")
        check(isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon >= 0,
              f"epsilon: must be a finite number >= 0 (0 = off), got {self.epsilon!r}")
        check(isinstance(self.init_b_std, (int, float)) and not isinstance(self.init_b_std, bool)
              and math.isfinite(self.init_b_std) and self.init_b_std > 0,
              f"init_b_std: must be a finite number > 0 (b = 0 gives zero coefficients and a zero gradient of b "
              f"forever), got {self.init_b_std!r}")
        cell_space(self).validate_recovery(self.recovery)

    def node_sizes(self) -> list[int]:
        """n_i = (input edges of node i) K candidates (DARTS: 14, 21, 28, 35; NAS-Bench-201: 4, 8, 12)."""
        return cell_space(self).node_sizes()

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TwoStageConfig":
        """``"reference"`` (the reference's CIFAR-10 search) or ``"small"`` (digits, C = 8, 5 cells, a few epochs:
        minutes on a CPU).  ``overrides``: top-level fields; ``data`` / ``recovery`` may be partial mappings."""
        return preset(cls, name, **overrides)


def validate_recovery(recovery: RecoveryConfig, steps: int, space: str = "darts") -> None:
    """Check a search's recovery settings against its cell (:meth:`istanas.cell_space.CellSpace.validate_recovery`);
    errors name the field as ``recovery.<field>``."""
    cell_space(space, steps).validate_recovery(recovery)


# ---------------------------------------------------------------------------------------------------------- task
class TwoStageTask:
    """Algorithm 1 as an :class:`istanas.engine.Task` (see the module doc).

    A step: line 2 (recover, when b changed and ``recover_every="step"``), then two engine updates: line 4, W_S on
    the training batch (SGD, clip, the Eq. 11 coefficients as constants), and line 5, b on the next validation
    batch (Adam, first order, gradients reach b only through Eq. 11).
    """

    def __init__(self, cfg: TwoStageConfig, loaders: Optional[Loaders] = None,
                 device: Optional[torch.device] = None):
        self.cfg = cfg
        self.device, self.loaders = task_data(cfg, "search", loaders, device)
        self.cell_space = cell_space(cfg)
        self.model = place(self.cell_space.sparse_supernet(cfg, self.loaders.num_classes, self.loaders.in_channels),
                           self.device, cfg.channels_last)
        self.space = self.cell_space.compressed(cfg).to(self.device)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam([self.space.b], lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                      weight_decay=cfg.arch_weight_decay)
        self._recoverer = HostRecovery(self.space)
        self.recoveries = 0
        self.recovery_time = 0.0
        self.churn_total = 0
        self.converged_epoch = 0
        # initial recovery on the random b (the reference does the same before epoch 1), cold start
        self._recover(warm_start=False)
        self.churn_total = 0

    # ---------------------------------------------------------------------------------------------- recovery
    def _recover(self, warm_start: bool = True) -> None:
        t0 = time.perf_counter()
        support, host = self._recoverer(warm_start)
        prev = getattr(self, "support_host", None)
        self.support, self.support_host = support, host
        self.plan = self.model.plan(host)
        if prev is not None:
            self.churn_total += support_churn(host, prev)
        self.recoveries += 1
        self.recovery_time += time.perf_counter() - t0
        self._stale = False

    # ------------------------------------------------------------------------------------------- engine protocol
    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "space": self.space.state_dict(),
                "w_opt": self.optimizer.state_dict(), "a_opt": self.a_opt.state_dict(),
                "support_host": self.support_host.clone(), "recoveries": int(self.recoveries),
                "recovery_time": float(self.recovery_time), "churn_total": int(self.churn_total),
                "converged_epoch": int(self.converged_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.space.load_state_dict(state["space"])
        self.optimizer.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self._recoverer = HostRecovery(self.space)
        host = state["support_host"].to(torch.int64).cpu()
        self.support_host = host
        self.support = host.to(self.device)
        self.plan = self.model.plan(host)
        self.recoveries = int(state.get("recoveries", 0))
        self.recovery_time = float(state.get("recovery_time", 0.0))
        self.churn_total = int(state.get("churn_total", 0))
        self.converged_epoch = int(state.get("converged_epoch", 0))
        self._stale = False

    def _coefficients(self) -> torch.Tensor:
        """Eq. 11 on the current support, ``[T, steps, s]``, never under autocast (bf16 would round A and z)."""
        with torch.autocast(self.device.type, enabled=False):
            return self.space.coefficients(self.support)

    def _forward(self, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        out = self.model(x, self.plan, coef)
        return out[0] if isinstance(out, tuple) else out

    def lr_at(self, epoch: int) -> float:
        return cosine_lr(self.cfg.lr, self.cfg.lr_min, epoch, self.cfg.epochs)

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        self._z_start = self.space.z.detach().clone()
        self._s_start = self.support_host.clone()
        self._counts0 = (self.recoveries, self.recovery_time, self.churn_total)
        self._weights = list(self.model.parameters())
        self._valid = cycle(self.loaders.valid)
        return {}

    def _w_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            coef = self._coefficients()
        logits = self._forward(x, coef)
        return self.criterion(logits, y), logits

    def _b_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._forward(x, self._coefficients())
        return self.criterion(logits, y), logits

    def step(self, batch: Any) -> list[Update]:
        if self.cfg.recover_every == "step" and self._stale:
            self._recover()                                       # line 2: z, S from the current b
        self._stale = True                                        # line 5 below changes b
        return [Update(self._w_loss, [self.optimizer], clip=self._weights, max_norm=self.cfg.grad_clip),  # line 4
                Update(self._b_loss, [self.a_opt], batch=lambda: next(self._valid), inputs=[self.space.b],
                       meter="arch")]                             # line 5

    def finish_epoch(self, epoch: int) -> dict[str, float]:
        if self._stale:
            self._recover()                                       # the support of the epoch's final b
        rec0, rtime0, churn0 = self._counts0
        dz = (self.space.z - self._z_start).norm(dim=-1).tolist()  # [T][steps], one host read per epoch
        out: dict[str, float] = {
            "support_churn": float(support_churn(self.support_host, self._s_start)),
            "support_changes": float(self.churn_total - churn0), "recoveries": float(self.recoveries - rec0),
            "recovery_time_s": self.recovery_time - rtime0,
        }
        for t, name in enumerate(self.space.cell_types):
            for i in range(self.space.steps):
                out[f"dz_{name}_{i}"] = float(dz[t][i])
        out["dz_max"] = float(max(max(r) for r in dz))
        return out

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        """Loss and accuracy of the current sub-graph on the whole validation half (eval mode)."""
        m = evaluate(lambda x: self._forward(x, self._coefficients()), self.loaders.valid, self.device,
                     self.criterion, model=self.model, bf16=self.cfg.bf16, channels_last=self.cfg.channels_last)
        g = self.genotype()
        return {"val_loss": m["loss"], "val_acc": m["acc"], "genotype": g.to_json()}

    def end_epoch(self, epoch: int, metrics: dict) -> bool:
        eps = self.cfg.epsilon
        if eps > 0 and metrics.get("dz_max", math.inf) <= eps:
            self.converged_epoch = epoch + 1
            metrics["converged"] = 1.0
            return True
        return False

    # ---------------------------------------------------------------------------------------------- results
    def genotype(self):
        """The genotype of the current support (:meth:`istanas.cell_space.CellSpace.genotype`: DARTS
        :func:`istanas.ista.compressed.genotype_from_support`, or the NAS-Bench-201 cell of the support)."""
        return self.cell_space.genotype(self.support_host, self.space.z)


__all__ = ["TwoStageConfig", "RECOVER_EVERY", "TwoStageTask", "validate_recovery"]
