"""First-order DARTS on the same cells as ISTA-NAS: the baseline that searches and benchmarks compare against.

The super-net is :class:`istanas.supernet.DenseSuperNet`: every edge is the mixed op
``sum_k softmax(alpha_e)_k o_k(x)`` over the same K = 7 ops as the ISTA-NAS super-net (``none`` excluded, as the
reference's PRIMITIVES, so both methods search one space), with the same stem, cells, data split and optimiser
types.  A step (DARTS, first order, xi = 0): update alpha on a validation batch (Adam, betas (0.5, 0.999), weight
decay 1e-3), then W on a training batch (SGD, momentum, weight decay, cosine lr, gradient-norm clip).

Genotype (DARTS's rule): per node, each input edge scores ``max_k softmax(alpha_e)_k`` (``none`` would be skipped);
the two highest-scoring edges are kept, each with its best op, strongest first.

``space="nb201"`` (:mod:`istanas.cell_space`): the NAS-Bench-201 cells
(:class:`istanas.nb201_supernet.NB201DenseSuperNet`, its 4 ops without ``none``, as the ISTA-NAS search there); the
genotype is every edge's strongest op (:func:`istanas.nb201_supernet.nb201_darts_genotype`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from spaces.genotype import Genotype, NB201Genotype, genotype_from_json
from .cell_space import cell_space
from .config import ConfigError, SearchOptimConfig, preset
from .data import DataConfig, Loaders
from .engine import Update, cycle, place
from .nb201_supernet import nb201_darts_genotype
from .supernet import CELL_TYPES, ISTA_PRIMITIVES, edge_offsets
from .training import cosine_lr, evaluate, task_data


@dataclass
class DartsConfig(SearchOptimConfig):
    """Settings of a first-order DARTS search.  Bare defaults: DARTS's CIFAR-10 search (50 epochs, batch 64, SGD
    lr 0.025 cosine to 0.001, momentum 0.9, weight decay 3e-4, clip 5, Adam arch lr 3e-4, betas (0.5, 0.999),
    weight decay 1e-3, 16 channels, 8 cells) on the data of ``data``; :data:`PRESETS` gives "reference" (CIFAR-10)
    and "small" (the two-stage "small" preset's data, network and budget, for a like-with-like comparison).  The
    network / optimiser fields are :class:`SearchOptimConfig`'s (fp32: DARTS searched without bf16)."""

    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=64))
    lr: float = 0.025
    arch_lr: float = 3e-4
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
        # NAS-Bench-201: the two-stage "cpu" preset's data, network and budget (like with like)
        "cpu": {
            "space": "nb201",
            "data": {"dataset": "cifar10", "batch_size": 64, "eval_batch_size": 256, "cutout": 0,
                     "train_portion": 0.5, "image_size": 16, "limit_train": 2000, "limit_test": 500},
            "C": 8, "layers": 1, "epochs": 8, "lr": 0.05, "lr_min": 0.001, "momentum": 0.9,
            "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 1e-2, "arch_betas": [0.5, 0.999],
            "arch_weight_decay": 1e-3,
        },
        # NAS-Bench-201's DARTS-V1 search settings (C = 16, N = 5, 50 epochs, batch 64, CIFAR-10 train set in
        # halves, SGD 0.025 cosine to 0.001, clip 5, Adam 3e-4 (0.5, 0.999) weight decay 1e-3)
        "paper": {
            "space": "nb201",
            "data": {"dataset": "cifar10", "batch_size": 64, "eval_batch_size": 256, "cutout": 0,
                     "train_portion": 0.5},
            "C": 16, "layers": 5, "epochs": 50, "lr": 0.025, "lr_min": 0.001, "momentum": 0.9,
            "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 3e-4, "arch_betas": [0.5, 0.999],
            "arch_weight_decay": 1e-3,
        },
    }
    NB201_OVERLAY: ClassVar[dict[str, Any]] = {}

    def validate(self) -> None:
        """Schema checks only (``istanas.search.check_runtime`` checks the device)."""
        if not isinstance(self.data, DataConfig):
            raise ConfigError("data: expected a DataConfig mapping")
        self.validate_common()

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DartsConfig":
        return preset(cls, name, **overrides)


def darts_genotype(weights: torch.Tensor, primitives=ISTA_PRIMITIVES, steps: int = 4):
    """DARTS's genotype rule on edge weights ``[T, num_edges, K]`` (softmax of alpha)."""
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
    """First-order DARTS as an :class:`istanas.engine.Task`: per step, an engine update of alpha on a validation
    batch (the current W, no unrolled step), then one of W on the training batch."""

    def __init__(self, cfg: DartsConfig, loaders: Optional[Loaders] = None, device: Optional[torch.device] = None):
        self.cfg = cfg
        self.device, self.loaders = task_data(cfg, "search", loaders, device)
        self.cell_space = cell_space(cfg)
        self.model = place(self.cell_space.dense_supernet(cfg, self.loaders.num_classes, self.loaders.in_channels),
                           self.device, cfg.channels_last)
        self.criterion = nn.CrossEntropyLoss()
        self.weights = list(self.model.weight_parameters())
        self.alphas = list(self.model.arch_parameters())
        self.optimizer = torch.optim.SGD(self.weights, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam(self.alphas, lr=cfg.arch_lr, betas=tuple(cfg.arch_betas),
                                      weight_decay=cfg.arch_weight_decay)
        self._last_genotype: Optional[str] = None

    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "w_opt": self.optimizer.state_dict(),
                "a_opt": self.a_opt.state_dict(), "last_genotype": self._last_genotype or ""}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self._last_genotype = state.get("last_genotype") or None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._forward(x)
        return self.criterion(logits, y), logits

    def lr_at(self, epoch: int) -> float:
        return cosine_lr(self.cfg.lr, self.cfg.lr_min, epoch, self.cfg.epochs)

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        self._valid = cycle(self.loaders.valid)
        return {}

    def step(self, batch: Any) -> list[Update]:
        return [Update(self._loss, [self.a_opt], batch=lambda: next(self._valid), inputs=self.alphas, meter="arch"),
                Update(self._loss, [self.optimizer], inputs=self.weights, clip=self.weights,
                       max_norm=self.cfg.grad_clip)]

    def finish_epoch(self, epoch: int) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        m = evaluate(self._forward, self.loaders.valid, self.device, self.criterion, model=self.model,
                     bf16=self.cfg.bf16, channels_last=self.cfg.channels_last)
        g = self.genotype()
        text = g.to_json()
        changed = _genotype_changes(self._last_genotype, g)
        self._last_genotype = text
        return {"val_loss": m["loss"], "val_acc": m["acc"], "genotype": text, "genotype_churn": float(changed)}

    def end_epoch(self, epoch: int, metrics: dict) -> bool:
        return False

    def genotype(self):
        if self.cell_space.nb201:
            return nb201_darts_genotype(self.model.edge_weights(), self.model.primitives)
        return darts_genotype(self.model.edge_weights(), self.model.primitives, self.cfg.steps)


def _pairs(g) -> list:
    return list(g.edges) if isinstance(g, NB201Genotype) else list(g.normal) + list(g.reduce)


def _genotype_changes(prev_json: Optional[str], g) -> int:
    """(op, input) pairs (NAS-Bench-201: edges) of ``g`` that differ from the genotype JSON ``prev_json`` (all of
    them when there is none)."""
    pairs = _pairs(g)
    if not prev_json:
        return len(pairs)
    return sum(a != b for a, b in zip(pairs, _pairs(genotype_from_json(prev_json))))


__all__ = ["DartsConfig", "DartsTask", "darts_genotype"]
