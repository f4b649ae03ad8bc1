"""First-order DARTS on the same cells as ISTA-NAS: the baseline that searches and benchmarks compare against.

The super-net is :class:`istanas.supernet.DenseSuperNet`: every edge is the mixed op
``sum_k softmax(alpha_e)_k o_k(x)`` over the same K = 7 ops as the ISTA-NAS super-net (``none`` excluded, as the
reference's PRIMITIVES, so both methods search one space), with the same stem, cells, data split and optimiser
types.  A step (DARTS, first order, xi = 0): update alpha on a validation batch (Adam, betas (0.5, 0.999), weight
decay 1e-3), then W on a training batch (SGD, momentum, weight decay, cosine lr, gradient-norm clip).

Genotype (DARTS's rule): per node, each input edge scores ``max_k softmax(alpha_e)_k`` (``none`` would be skipped);
the two highest-scoring edges are kept, each with its best op, strongest first.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from .config import ConfigError, from_dict
from .data import DataConfig, Loaders, get_loaders
from .engine import Meter, Progress, cycle, peak_memory_mb, resolve_device, to_device
from .supernet import CELL_TYPES, ISTA_PRIMITIVES, DenseSuperNet, edge_offsets
from .ista.twostage import _preset_data, _run_search, cosine_lr, evaluate_loader, validate_common


@dataclass
class DartsConfig:
    """Settings of a first-order DARTS search.  Bare defaults: DARTS's CIFAR-10 search (50 epochs, batch 64, SGD
    lr 0.025 cosine to 0.001, momentum 0.9, weight decay 3e-4, clip 5, Adam arch lr 3e-4, betas (0.5, 0.999),
    weight decay 1e-3, 16 channels, 8 cells) on the data of ``data``; :meth:`preset` gives "reference" (CIFAR-10)
    and "small" (the two-stage "small" preset's data, network and budget, for a like-with-like comparison)."""

    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=64))
    C: int = 16
    layers: int = 8
    steps: int = 4
    epochs: int = 50
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True           # CUDA: deterministic algorithms (same seed and device -> same genotype)
    bf16: bool = False                   # bf16 autocast of the forward (CUDA only; DARTS searched in fp32)
    channels_last: bool = False          # channels-last memory format (CUDA only)
    out: str = "runs/search-darts"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "reference": {
            "data": {"dataset": "cifar10", "batch_size": 64, "eval_batch_size": 256, "cutout": 0,
                     "train_portion": 0.5},
            "C": 16, "layers": 8, "steps": 4, "epochs": 50, "lr": 0.025, "lr_min": 0.001, "momentum": 0.9,
            "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 3e-4, "arch_betas": [0.5, 0.999],
            "arch_weight_decay": 1e-3,
        },
        "small": {
            "data": {"dataset": "digits", "batch_size": 64, "eval_batch_size": 256, "cutout": 0,
                     "train_portion": 0.5},
            "C": 8, "layers": 5, "steps": 4, "epochs": 10, "lr": 0.05, "lr_min": 0.001, "momentum": 0.9,
            "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 1e-2, "arch_betas": [0.5, 0.999],
            "arch_weight_decay": 1e-3,
        },
    }

    def validate(self) -> None:
        if not isinstance(self.data, DataConfig):
            raise ConfigError("data: expected a DataConfig mapping")
        validate_common(self)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DartsConfig":
        return from_dict(cls, _preset_data(cls, cls.PRESETS, name, overrides))


def darts_genotype(weights: torch.Tensor, primitives=ISTA_PRIMITIVES, steps: int = 4):
    """DARTS's genotype rule on edge weights ``[T, num_edges, K]`` (softmax of alpha)."""
    from spaces.genotype import Genotype

    W = weights.detach().cpu().tolist()
    none = primitives.index("none") if "none" in primitives else -1
    offs = edge_offsets(steps)
    cells = {}
    for t, name in enumerate(CELL_TYPES):
        pairs = []
        for i in range(steps):
            rows = [W[t][offs[i] + src] for src in range(2 + i)]

            def best(src: int) -> int:
                return max((k for k in range(len(primitives)) if k != none), key=lambda k: rows[src][k])

            edges = sorted(range(2 + i), key=lambda src: -rows[src][best(src)])[:2]
            pairs.extend((primitives[best(src)], src) for src in edges)
        cells[name] = tuple(pairs)
    concat = tuple(range(2, 2 + steps))
    return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat)


class DartsTask:
    """First-order DARTS as an :class:`istanas.engine.Task`."""

    def __init__(self, cfg: DartsConfig, loaders: Optional[Loaders] = None, device: Optional[torch.device] = None):
        self.cfg = cfg
        self.device = device if device is not None else resolve_device(cfg.device)
        self.loaders = loaders if loaders is not None else get_loaders(
            cfg.data, "search", seed=cfg.seed, device=self.device if cfg.data.resolved_in_memory else None)
        self.model = DenseSuperNet(C=cfg.C, num_classes=self.loaders.num_classes, layers=cfg.layers,
                                   steps=cfg.steps, multiplier=cfg.steps, in_channels=self.loaders.in_channels,
                                   primitives=ISTA_PRIMITIVES).to(self.device)
        self.criterion = nn.CrossEntropyLoss()
        self.weights = list(self.model.weight_parameters())
        self.w_opt = torch.optim.SGD(self.weights, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                      weight_decay=cfg.arch_weight_decay)
        self._last_genotype: Optional[str] = None

    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
                "last_genotype": self._last_genotype or ""}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self._last_genotype = state.get("last_genotype") or None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out

    def train_epoch(self, epoch: int, progress: Progress) -> dict[str, float]:
        cfg = self.cfg
        lr = cosine_lr(cfg.lr, cfg.lr_min, epoch, cfg.epochs)
        for g in self.w_opt.param_groups:
            g["lr"] = lr
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model.train()
        train_m, arch_m = Meter(self.device), Meter(self.device)
        valid = cycle(self.loaders.valid)
        alphas = self.model.arch_parameters()
        steps = 0
        t0 = time.perf_counter()
        for batch in self.loaders.train:
            # architecture step on a validation batch (first order: the current W, no unrolled step)
            xv, yv = to_device(next(valid), self.device)
            logits_v = self._forward(xv)
            loss_v = self.criterion(logits_v, yv)
            self.a_opt.zero_grad(set_to_none=True)
            loss_v.backward(inputs=alphas)
            self.a_opt.step()
            arch_m.update(loss_v, logits_v, yv)
            # weight step on a training batch
            x, y = to_device(batch, self.device)
            logits = self._forward(x)
            loss = self.criterion(logits, y)
            self.w_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=self.weights)
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.weights, cfg.grad_clip)
            self.w_opt.step()
            train_m.update(loss, logits, y)
            steps += 1
            progress.update(train_m)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_time = time.perf_counter() - t0
        tr, ar = train_m.compute(), arch_m.compute()
        return {"train_loss": tr["loss"], "train_acc": tr["acc"], "arch_loss": ar["loss"], "arch_acc": ar["acc"],
                "lr": lr, "train_time_s": train_time, "step_time_s": train_time / max(1, steps),
                "peak_mem_mb": peak_memory_mb(self.device)}

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        m = evaluate_loader(self._forward, self.model, self.loaders.valid, self.device, self.criterion)
        g = self.genotype()
        text = g.to_json()
        changed = _genotype_changes(self._last_genotype, g)
        self._last_genotype = text
        return {"val_loss": m["loss"], "val_acc": m["acc"], "genotype": text, "genotype_churn": float(changed)}

    def end_epoch(self, epoch: int, metrics: dict) -> bool:
        return False

    def genotype(self):
        return darts_genotype(self.model.edge_weights(), self.model.primitives, self.cfg.steps)


def _genotype_changes(prev_json: Optional[str], g) -> int:
    """Pairs of ``g`` that differ from the genotype JSON ``prev_json`` (all of them when there is none)."""
    pairs = list(g.normal) + list(g.reduce)
    if not prev_json:
        return len(pairs)
    from spaces.genotype import Genotype

    p = Genotype.from_json(prev_json)
    return sum(a != b for a, b in zip(pairs, list(p.normal) + list(p.reduce)))


def search(cfg: DartsConfig, data: Optional[Loaders] = None, report: Optional[Callable[[dict], None]] = None,
           checkpoint: Optional[Callable[[dict], None]] = None, resume: Optional[dict] = None,
           progress: bool = True, task_out: Optional[list] = None) -> dict:
    """Run a first-order DARTS search; same signature and result record as :func:`istanas.ista.twostage.search`."""
    cfg.validate()
    return _run_search("darts", cfg, lambda: DartsTask(cfg, loaders=data), report, checkpoint, resume, progress,
                       task_out)


__all__ = ["DartsConfig", "DartsTask", "darts_genotype", "search"]
