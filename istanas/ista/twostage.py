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

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..checkpoint import atomic_write_json, atomic_write_text, seed_everything
from .compressed import CompressedSpace, RecoveryConfig, support_to_host
from ..config import ConfigError, check, from_dict, to_dict
from ..data import DataConfig, Loaders, get_loaders
from ..engine import Meter, Progress, cycle, peak_memory_mb, resolve_device, run, to_device
from ..supernet import CELL_TYPES, ISTA_PRIMITIVES, SparseSuperNet

RECOVER_EVERY = ("step", "epoch")


# ----------------------------------------------------------------------------------------------------- config
@dataclass
class TwoStageConfig:
    """Settings of a two-stage ISTA-NAS search (Algorithm 1).

    The bare defaults are the reference's CIFAR-10 search settings (tools/train_search.py run by main_search.sh:
    50 epochs, batch 256, SGD lr 0.1 cosine to 0.001, momentum 0.9, weight decay 3e-4, gradient clip 5, Adam arch
    lr 6e-4 with betas (0.5, 0.999) and weight decay 1e-3, 16 channels, 8 cells, lambda 1e-5, s = 2, m = 7) on the
    data of ``data`` (scikit-learn's digits unless set); :meth:`preset` gives whole setups ("reference": CIFAR-10,
    "small": digits, a few CPU minutes).

    ``recover_every``: ``"step"`` = the paper's Algorithm 1 (recover before every step); ``"epoch"`` = the
    reference implementation, which recovers once per epoch (its solver is too slow for more).
    ``epsilon``: 0 = off; > 0 stops the search once every node's ``||z_end - z_start||_2`` over an epoch is
    <= epsilon (Algorithm 1's "while not converged").
    ``seed`` seeds the weights, data order and augmentation; the measurement matrices A and the initial b are drawn
    from ``seed + recovery.seed`` (one seed drives a whole run, as in the reference; ``recovery.seed`` offsets A).
    ``deterministic``: on CUDA, deterministic cuDNN / torch algorithms during the search, so that the same seed and
    device give the same genotype (false: somewhat faster, run-to-run noise in the weights and so in S).
    """

    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=256))
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    C: int = 16
    layers: int = 8
    steps: int = 4
    epochs: int = 50
    lr: float = 0.1
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 6e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    init_b_std: float = 1e-3
    recover_every: str = "step"
    epsilon: float = 0.0
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    bf16: bool = False                   # bf16 autocast of the forward (CUDA only; the paper searched in fp32)
    channels_last: bool = False          # channels-last memory format (CUDA only)
    out: str = "runs/search-twostage"

    def validate(self) -> None:
        """Raise :class:`ConfigError` (a ``ValueError``) naming the first bad field; reads no data."""
        if not isinstance(self.data, DataConfig):
            raise ConfigError("data: expected a DataConfig mapping")
        if not isinstance(self.recovery, RecoveryConfig):
            raise ConfigError("recovery: expected a RecoveryConfig mapping")
        validate_common(self)
        check(self.recover_every in RECOVER_EVERY,
              f"recover_every: must be one of {list(RECOVER_EVERY)}, got {self.recover_every!r}")
        check(isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon >= 0,
              f"epsilon: must be a finite number >= 0 (0 = off), got {self.epsilon!r}")
        check(isinstance(self.init_b_std, (int, float)) and math.isfinite(self.init_b_std) and self.init_b_std >= 0,
              f"init_b_std: must be a finite number >= 0, got {self.init_b_std!r}")
        validate_recovery(self.recovery, self.steps)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TwoStageConfig":
        """``"reference"`` (the reference's CIFAR-10 search) or ``"small"`` (digits, C = 8, 5 cells, a few epochs:
        minutes on a CPU).  ``overrides``: top-level fields; ``data`` / ``recovery`` may be partial mappings."""
        return from_dict(cls, _preset_data(cls, TWOSTAGE_PRESETS, name, overrides))


TWOSTAGE_PRESETS: dict[str, dict[str, Any]] = {
    "reference": {
        "data": {"dataset": "cifar10", "batch_size": 256, "eval_batch_size": 256, "cutout": 0,
                 "train_portion": 0.5},
        "recovery": {"lam": 1e-5, "s": 2, "m": 7, "matrix": "uniform", "support": "topk"},
        "C": 16, "layers": 8, "steps": 4, "epochs": 50, "lr": 0.1, "lr_min": 0.001, "momentum": 0.9,
        "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 6e-4, "arch_betas": [0.5, 0.999],
        "arch_weight_decay": 1e-3, "init_b_std": 1e-3, "recover_every": "step", "epsilon": 0.0,
    },
    "small": {
        "data": {"dataset": "digits", "batch_size": 64, "eval_batch_size": 256, "cutout": 0, "train_portion": 0.5},
        "recovery": {"lam": 1e-5, "s": 2, "m": 7, "matrix": "uniform", "support": "topk"},
        "C": 8, "layers": 5, "steps": 4, "epochs": 10, "lr": 0.05, "lr_min": 0.001, "momentum": 0.9,
        "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 1e-2, "arch_betas": [0.5, 0.999],
        "arch_weight_decay": 1e-3, "init_b_std": 1e-3, "recover_every": "step", "epsilon": 0.0,
    },
}


def _preset_data(cls: type, presets: dict[str, dict[str, Any]], name: str, overrides: dict[str, Any]) -> dict:
    if name not in presets:
        raise ConfigError(f"preset: must be one of {sorted(presets)}, got {name!r}")
    data = to_dict(cls())
    for src in (presets[name], overrides):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k] = {**data[k], **v}
            else:
                data[k] = v
    return data


def preset_dict(name: str, method_cls: type = TwoStageConfig) -> dict[str, Any]:
    """The full field mapping of a preset (for the CLI's precedence chain)."""
    presets = TWOSTAGE_PRESETS if method_cls is TwoStageConfig else getattr(method_cls, "PRESETS")
    return _preset_data(method_cls, presets, name, {})


def validate_common(cfg: Any) -> None:
    """Checks shared by the two-stage and DARTS configs (network, weight and architecture optimisers)."""
    cfg.data.validate()
    for name in ("C", "steps", "epochs"):
        v = getattr(cfg, name)
        check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name}: must be an integer >= 1, got {v!r}")
    check(isinstance(cfg.layers, int) and cfg.layers >= 3,
          f"layers: must be an integer >= 3 (two reduction cells at layers/3 and 2*layers/3), got {cfg.layers!r}")
    check(math.isfinite(cfg.lr) and cfg.lr > 0, f"lr: must be a number > 0, got {cfg.lr!r}")
    check(0 <= cfg.lr_min <= cfg.lr, f"lr_min: must be in [0, lr={cfg.lr}], got {cfg.lr_min!r}")
    check(0 <= cfg.momentum < 1, f"momentum: must be in [0, 1), got {cfg.momentum!r}")
    check(cfg.weight_decay >= 0, f"weight_decay: must be >= 0, got {cfg.weight_decay!r}")
    check(cfg.grad_clip >= 0, f"grad_clip: must be >= 0 (0 = off), got {cfg.grad_clip!r}")
    check(math.isfinite(cfg.arch_lr) and cfg.arch_lr > 0, f"arch_lr: must be a number > 0, got {cfg.arch_lr!r}")
    betas = tuple(cfg.arch_betas)
    check(len(betas) == 2 and all(0 <= b < 1 for b in betas),
          f"arch_betas: must be two numbers in [0, 1), got {cfg.arch_betas!r}")
    check(cfg.arch_weight_decay >= 0, f"arch_weight_decay: must be >= 0, got {cfg.arch_weight_decay!r}")
    check(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool), f"seed: must be an integer, got {cfg.seed!r}")
    check(isinstance(cfg.device, str) and (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")),
          f"device: must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    try:
        resolve_device(cfg.device)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"device: {e}") from None


def validate_recovery(recovery: RecoveryConfig, steps: int) -> None:
    """Check a search's recovery settings against its cell (n_i = (2 + i) K candidates, 2 + i input edges per node);
    errors name the field as ``recovery.<field>``."""
    K = len(ISTA_PRIMITIVES)
    try:
        recovery.validate([(2 + i) * K for i in range(steps)], [2 + i for i in range(steps)])
    except ConfigError as e:
        raise ConfigError(f"recovery.{e}") from None
    if recovery.device is not None:
        try:
            resolve_device(recovery.device)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"recovery.device: {e}") from None


def cosine_lr(lr: float, lr_min: float, epoch: int, epochs: int) -> float:
    """``lr_min + (lr - lr_min) (1 + cos(pi epoch / epochs)) / 2``: the learning rate of 0-based ``epoch``."""
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * epoch / epochs))


# --------------------------------------------------------------------------------------------------- genotype
def genotype_from_support(support_host: torch.Tensor, z: torch.Tensor, primitives: Sequence[str] = ISTA_PRIMITIVES,
                          steps: int = 4):
    """The :class:`spaces.genotype.Genotype` of a support: 2 (op, input) pairs per node.

    ``support_host [T, steps, s]`` flat ids (``input * K + op``) ordered by decreasing |z| (as
    :meth:`CompressedSpace.select_support` returns them); ``z [T, steps, n_max]``.  Per node the two strongest
    support entries are kept (s >= 2); with s = 1 the second pair is the node's strongest candidate outside S by
    |z| (lowest id on ties).  Within a node the pairs are listed as the reference does: the second strongest, then
    the strongest.
    """
    from spaces.genotype import Genotype

    K = len(primitives)
    sup = support_host.tolist()
    mag = z.detach().abs().cpu().tolist()
    cells = {}
    for t, name in enumerate(CELL_TYPES):
        pairs = []
        for i in range(steps):
            chosen = [int(k) for k in sup[t][i][:2]]
            if len(chosen) < 2:
                n_i = (2 + i) * K
                rest = sorted((k for k in range(n_i) if k not in chosen), key=lambda k: (-mag[t][i][k], k))
                chosen.append(rest[0])
            for k in reversed(chosen):
                pairs.append((primitives[k % K], k // K))
        cells[name] = tuple(pairs)
    concat = tuple(range(2, 2 + steps))
    return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat)


# ------------------------------------------------------------------------------------------------------ recovery
class HostRecovery:
    """Recovery with one device -> host transfer, returning the support on the device and on the host.

    ``__call__() -> (support [T, steps, s] on the space's device, support_host on the CPU)``; the space's ``z``
    is updated.  On a CPU space this is ``recover -> select_support``.  On a CUDA space (unless
    ``cfg.device`` names a CUDA device) b and z are packed and copied to a CPU mirror of the space in one transfer,
    the batched LASSO and the support selection run there, and z / S go back to the device without a wait.
    """

    def __init__(self, space: CompressedSpace):
        self.space = space
        dev = space.b.device
        want = space.cfg.device
        self.mirror: Optional[CompressedSpace] = None
        if dev.type != "cpu" and (want is None or torch.device(want).type == "cpu"):
            cfg = dataclasses.replace(space.cfg, device=None)
            mirror = CompressedSpace(space.num_ops, space.steps, cfg, cell_types=space.cell_types)
            mirror.load_state_dict({k: v.detach().cpu() for k, v in space.state_dict().items()})
            mirror.frozen.zero_()      # b arrives already "effective" (frozen nodes at their frozen value)
            self.mirror = mirror

    @torch.no_grad()
    def __call__(self, warm_start: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        space = self.space
        if self.mirror is None:
            z = space.recover(warm_start=warm_start)
            support = space.select_support(z)
            return support, support_to_host(support)
        m = self.mirror
        b = space.effective_b().detach().to(space.z.dtype)
        packed = torch.cat([b.reshape(-1), space.z.reshape(-1)]).cpu()    # the one device -> host transfer
        nb = b.numel()
        m.b.copy_(packed[:nb].view_as(m.b).to(m.b.dtype))
        m.z.copy_(packed[nb:].view_as(m.z))
        z = m.recover(warm_start=warm_start)
        host = m.select_support(z)
        space.z.copy_(z.to(space.z.device, non_blocking=True))
        return host.to(space.b.device, non_blocking=True), host


def _churn(new: torch.Tensor, old: torch.Tensor) -> int:
    """Entries of S that changed: per node, the ids of ``new`` not in ``old``, summed (host tensors)."""
    return int((new.unsqueeze(-1) != old.unsqueeze(-2)).all(-1).sum())


# ---------------------------------------------------------------------------------------------------------- task
class TwoStageTask:
    """Algorithm 1 as an :class:`istanas.engine.Task` (see the module doc)."""

    def __init__(self, cfg: TwoStageConfig, loaders: Optional[Loaders] = None,
                 device: Optional[torch.device] = None):
        self.cfg = cfg
        self.device = device if device is not None else resolve_device(cfg.device)
        self.loaders = loaders if loaders is not None else get_loaders(
            cfg.data, "search", seed=cfg.seed, device=self.device if cfg.data.resolved_in_memory else None)
        self.model = SparseSuperNet(C=cfg.C, num_classes=self.loaders.num_classes, layers=cfg.layers,
                                    steps=cfg.steps, multiplier=cfg.steps, in_channels=self.loaders.in_channels,
                                    primitives=ISTA_PRIMITIVES).to(self.device)
        rcfg = dataclasses.replace(cfg.recovery, seed=int(cfg.seed) + int(cfg.recovery.seed))
        self.space = CompressedSpace(len(ISTA_PRIMITIVES), cfg.steps, rcfg, cell_types=CELL_TYPES,
                                     init_b_std=cfg.init_b_std).to(self.device)
        self.criterion = nn.CrossEntropyLoss()
        self.w_opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
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
            self.churn_total += _churn(host, prev)
        self.recoveries += 1
        self.recovery_time += time.perf_counter() - t0
        self._stale = False

    # ------------------------------------------------------------------------------------------- engine protocol
    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "space": self.space.state_dict(),
                "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
                "support_host": self.support_host.clone(), "recoveries": int(self.recoveries),
                "recovery_time": float(self.recovery_time), "churn_total": int(self.churn_total),
                "converged_epoch": int(self.converged_epoch)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.space.load_state_dict(state["space"])
        self.w_opt.load_state_dict(state["w_opt"])
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

    def _forward(self, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        out = self.model(x, self.plan, coef)
        return out[0] if isinstance(out, tuple) else out

    def train_epoch(self, epoch: int, progress: Progress) -> dict[str, float]:
        cfg = self.cfg
        lr = cosine_lr(cfg.lr, cfg.lr_min, epoch, cfg.epochs)
        for g in self.w_opt.param_groups:
            g["lr"] = lr
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model.train()
        z_start = self.space.z.detach().clone()
        s_start = self.support_host.clone()
        rec0, rtime0, churn0 = self.recoveries, self.recovery_time, self.churn_total
        train_m, arch_m = Meter(self.device), Meter(self.device)
        weights = list(self.model.parameters())
        valid = cycle(self.loaders.valid)
        every_step = cfg.recover_every == "step"
        steps = 0
        t0 = time.perf_counter()
        for batch in self.loaders.train:
            if every_step and self._stale:
                self._recover()                                   # line 2: z, S from the current b
            x, y = to_device(batch, self.device)
            # line 4: W_S on a training batch, the coefficients (Eq. 11) as constants
            with torch.no_grad():
                coef = self.space.coefficients(self.support)
            logits = self._forward(x, coef)
            loss = self.criterion(logits, y)
            self.w_opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
            self.w_opt.step()
            train_m.update(loss, logits, y)
            # line 5: b on a validation batch, first order (gradients reach b only, through Eq. 11)
            xv, yv = to_device(next(valid), self.device)
            coef = self.space.coefficients(self.support)
            logits_v = self._forward(xv, coef)
            loss_v = self.criterion(logits_v, yv)
            self.a_opt.zero_grad(set_to_none=True)
            loss_v.backward(inputs=[self.space.b])
            self.a_opt.step()
            arch_m.update(loss_v, logits_v, yv)
            self._stale = True
            steps += 1
            progress.update(train_m)
        if self._stale:
            self._recover()                                       # the support of the epoch's final b
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_time = time.perf_counter() - t0
        dz = (self.space.z - z_start).norm(dim=-1).tolist()      # [T][steps], one host read per epoch
        tr, ar = train_m.compute(), arch_m.compute()
        out: dict[str, float] = {
            "train_loss": tr["loss"], "train_acc": tr["acc"], "arch_loss": ar["loss"], "arch_acc": ar["acc"],
            "lr": lr, "support_churn": float(_churn(self.support_host, s_start)),
            "support_changes": float(self.churn_total - churn0), "recoveries": float(self.recoveries - rec0),
            "recovery_time_s": self.recovery_time - rtime0, "train_time_s": train_time,
            "step_time_s": train_time / max(1, steps), "peak_mem_mb": peak_memory_mb(self.device),
        }
        for t, name in enumerate(CELL_TYPES):
            for i in range(cfg.steps):
                out[f"dz_{name}_{i}"] = float(dz[t][i])
        out["dz_max"] = float(max(max(r) for r in dz))
        return out

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        """Loss and accuracy of the current sub-graph on the whole validation half (eval mode)."""
        m = evaluate_loader(lambda x: self._forward(x, self.space.coefficients(self.support)), self.model,
                            self.loaders.valid, self.device, self.criterion)
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
        """The genotype of the current support (see :func:`genotype_from_support`)."""
        return genotype_from_support(self.support_host, self.space.z, ISTA_PRIMITIVES, self.cfg.steps)


def evaluate_loader(forward: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, loader,
                    device: torch.device, criterion: nn.Module) -> dict[str, float]:
    """Mean loss and accuracy of ``forward`` over ``loader`` with ``model`` in eval mode (one host read)."""
    was = model.training
    model.eval()
    meter = Meter(device)
    try:
        with torch.no_grad():
            for batch in loader:
                x, y = to_device(batch, device)
                logits = forward(x)
                meter.update(criterion(logits, y), logits, y)
    finally:
        model.train(was)
    return meter.compute()


# ---------------------------------------------------------------------------------------------------- entry points
def search(cfg: TwoStageConfig, data: Optional[Loaders] = None, report: Optional[Callable[[dict], None]] = None,
           checkpoint: Optional[Callable[[dict], None]] = None, resume: Optional[dict] = None,
           progress: bool = True, task_out: Optional[list] = None) -> dict:
    """Run a two-stage ISTA-NAS search; a plain function of (config, data, report, checkpoint) that a Ray Tune
    trial calls as well as the CLI.

    ``data``: loaders (default: ``get_loaders(cfg.data, "search", cfg.seed)``).  ``report(metrics)`` and
    ``checkpoint(state)`` run after every epoch (:func:`istanas.engine.run`); ``resume`` is such a state.  If
    ``task_out`` is a list the task is appended to it.  Returns ``{"method", "genotype" (Genotype),
    "genotype_json", "genotype_digest", "history" (per-epoch metrics), "final" (last epoch's val_acc / val_loss /
    train_acc, epochs, converged_epoch, recoveries), "wall_time_s" (search time over all sessions),
    "session_time_s", "support" (host support, nested lists), "config", "device"}``.
    """
    cfg.validate()
    return _run_search("twostage", cfg, lambda: TwoStageTask(cfg, loaders=data), report, checkpoint, resume,
                       progress, task_out)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Deterministic cuDNN and torch algorithms inside the block (restored after it); a no-op when disabled.

    cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first use in the process; it is set here if absent.
    Ops without a deterministic CUDA kernel warn instead of failing (``warn_only``).
    """
    if not enabled:
        yield
        return
    import os

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


def _run_search(method: str, cfg: Any, make_task: Callable[[], Any], report, checkpoint, resume, progress,
                task_out, epochs: Optional[int] = None) -> dict:
    """Seed, build the task, run the engine for ``epochs`` (default ``cfg.epochs``) and assemble the result record
    shared by the search methods (two-stage, DARTS, one-stage)."""
    t0 = time.perf_counter()
    det = bool(getattr(cfg, "deterministic", True)) and resolve_device(cfg.device).type == "cuda"
    with deterministic_algorithms(det):
        seed_everything(cfg.seed)
        task = make_task()
        if task_out is not None:
            task_out.append(task)
        history = run(task, epochs=cfg.epochs if epochs is None else epochs, report=report, checkpoint=checkpoint,
                      resume=resume, progress=progress, desc=method)
    g = task.genotype()
    last = history[-1] if history else {}
    final = {k: float(last[k]) for k in ("val_acc", "val_loss", "train_acc", "train_loss", "test_acc", "test_loss")
             if k in last}
    final["epochs"] = len(history)
    if hasattr(task, "converged_epoch"):
        final["converged_epoch"] = int(task.converged_epoch)
    if hasattr(task, "recoveries"):
        final["recoveries"] = int(task.recoveries)
    out = {
        "method": method,
        "genotype": g,
        "genotype_json": g.to_json(),
        "genotype_digest": g.digest(),
        "history": history,
        "final": final,
        "wall_time_s": float(sum(h.get("epoch_time_s", 0.0) for h in history)),
        "session_time_s": time.perf_counter() - t0,
        "config": to_dict(cfg),
        "device": str(task.device),
    }
    if hasattr(task, "support_host"):
        out["support"] = task.support_host.tolist()
    return out


def write_outputs(result: dict, out_dir: str) -> dict[str, str]:
    """Write ``genotype.json`` (atomic), ``cells.png`` / ``cells.svg`` (both cells, :mod:`spaces.plot`) and
    ``result.json`` into ``out_dir``; returns ``{kind: path}`` of what was written."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    g = result["genotype"]
    paths = {"genotype": os.path.join(out_dir, "genotype.json")}
    atomic_write_text(paths["genotype"], g.to_json(indent=2) + "\n")
    try:
        paths.update(plot_cells(g, out_dir))
    except Exception as e:  # a picture is informative only; never lose a search to it
        warnings.warn(f"could not draw the cells: {e}", RuntimeWarning, stacklevel=2)
    rec = {k: v for k, v in result.items() if k != "genotype"}
    rec["genotype"] = g.to_dict()
    rec["outputs"] = dict(paths)
    paths["result"] = os.path.join(out_dir, "result.json")
    rec["outputs"]["result"] = paths["result"]
    atomic_write_json(paths["result"], rec)
    return paths


def plot_cells(genotype, out_dir: str, stem: str = "cells") -> dict[str, str]:
    """Pictures of both cells, PNG and SVG (``{stem}_normal.png``, ``{stem}_reduce.svg``, ...) via
    :func:`spaces.plot.plot_genotype`; returns ``{"plot_<cell>_<fmt>": path}``."""
    import os

    from spaces.plot import plot_genotype

    out: dict[str, str] = {}
    for fmt in ("png", "svg"):
        for path in plot_genotype(genotype, out_dir, stem, fmt=fmt):
            cell = os.path.splitext(os.path.basename(path))[0][len(stem) + 1:]
            out[f"plot_{cell}_{fmt}"] = str(path)
    return out


__all__ = ["TwoStageConfig", "TWOSTAGE_PRESETS", "deterministic_algorithms", "RECOVER_EVERY", "TwoStageTask", "HostRecovery", "search",
           "write_outputs", "plot_cells", "genotype_from_support", "cosine_lr", "validate_common", "validate_recovery",
           "preset_dict",
           "evaluate_loader"]
