"""Random search: the baseline that weight-sharing searches must beat (no training, no super-net).

``samples`` cells are drawn uniformly from a cell space with Python's ``random.Random(seed)`` (independent of the
torch RNG, so the same seed gives the same cells on any machine):

* ``darts``: per node j of both cells, 2 distinct inputs out of the 2 + j earlier states, each with an op out of
  the 7 DARTS ops without ``none`` (the ops the ISTA-NAS and DARTS super-nets search);
* ``nb201``: an op out of the 5 NAS-Bench-201 ops (``none`` included, as in the benchmark) on each of 6 edges.

One is picked: ``pick="random"`` the sample at a seeded random index (no proxy); ``"fewest_params"`` /
``"most_params"`` the stand-alone network (:func:`spaces.networks.build_network` with ``C``, ``layers``,
``num_classes``; auxiliary head excluded) with the fewest / most parameters, ties to the earliest sample.

``pick="trained"`` (the wall-time-matched baseline of a weight-sharing search): the samples are short-trained one
after another, each its stand-alone network (``C``, ``layers``) for ``train_epochs`` epochs with the project's
retraining task (:class:`istanas.retrain.RetrainTask` run by :func:`istanas.engine.run`: SGD ``lr`` cosine to
``lr_min``, ``momentum``, ``weight_decay``, clip ``grad_clip``, no auxiliary head, no drop-path) on the training
half of ``data``'s search split, and scored by top-1 accuracy on the validation half (no augmentation).  A new
sample starts only while less than ``time_budget_s`` of training time has passed (counted from when the data are
loaded, as a search's ``wall_time_s`` counts its epochs only; budget 0 trains exactly one), at most ``samples`` in
all; the pick is the highest validation accuracy, ties to the earliest.  The
benchmark table is never read.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch

from spaces.genotype import Genotype, NB201Genotype
from spaces.networks import build_network
from spaces.ops import DARTS_PRIMITIVES, NB201_PRIMITIVES
from spaces.profile import count_parameters

from . import engine
from .checkpoint import seed_everything
from .config import ConfigError, check, to_dict
from .data import DataConfig, Loaders
from .result import SearchResult
from .retrain import RetrainConfig, RetrainTask
from .training import task_data

SPACES = ("darts", "nb201")
PICKS = ("random", "fewest_params", "most_params", "trained")


@dataclass
class RandomSearchConfig:
    """Settings of a random search (see the module doc).  ``C`` / ``layers`` size the networks whose parameters
    the ``*_params`` picks count and that ``pick="trained"`` trains (NB201: ``layers`` = cells per stage N);
    ``data``, ``train_epochs``, ``time_budget_s``, ``lr`` ... ``grad_clip`` are ``pick="trained"``'s."""

    space: str = "darts"
    samples: int = 100
    pick: str = "random"
    steps: int = 4
    C: int = 16
    layers: int = 8
    num_classes: int = 10
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/search-random"
    data: DataConfig = field(default_factory=DataConfig)
    train_epochs: int = 2
    time_budget_s: float = 0.0
    lr: float = 0.05
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "small": {"samples": 20, "C": 8, "layers": 5},
        "reference": {"samples": 100, "C": 36, "layers": 20},
        # NAS-Bench-201 (the bench's fidelities): one uniformly random cell, no training (the space's prior)
        "cpu": {"space": "nb201", "samples": 1, "C": 16, "layers": 5},
        "paper": {"space": "nb201", "samples": 1, "C": 16, "layers": 5},
        # trained: the two-stage "cpu" preset's data and network, each sample short-trained
        # (benchmarks/bench_search_quality.py sets time_budget_s to the two-stage search's wall time)
        "cpu_trained": {"space": "nb201", "pick": "trained", "samples": 1000, "C": 8, "layers": 1,
                        "train_epochs": 2, "time_budget_s": 60.0, "lr": 0.05, "lr_min": 0.001,
                        "data": {"dataset": "cifar10", "batch_size": 64, "eval_batch_size": 256, "cutout": 0,
                                 "train_portion": 0.5, "image_size": 16, "limit_train": 2000, "limit_test": 500}},
        "paper_trained": {"space": "nb201", "pick": "trained", "samples": 1000, "C": 16, "layers": 5,
                          "train_epochs": 12, "time_budget_s": 3600.0, "lr": 0.1, "lr_min": 0.0,
                          "data": {"dataset": "cifar10", "batch_size": 256, "eval_batch_size": 256, "cutout": 0,
                                   "train_portion": 0.5}},
    }

    def validate(self) -> None:
        check(self.space in SPACES, f"space: must be one of {list(SPACES)}, got {self.space!r}")
        check(self.pick in PICKS, f"pick: must be one of {list(PICKS)}, got {self.pick!r}")
        for name in ("samples", "steps", "C", "num_classes"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                  f"{name}: must be an integer >= 1, got {v!r}")
        check(isinstance(self.layers, int) and self.layers >= (1 if self.space == "nb201" else 3),
              f"layers: must be an integer >= 3 (darts) or >= 1 (nb201 cells per stage), got {self.layers!r}")
        check(self.space == "darts" or self.steps == 4, "steps: NAS-Bench-201 cells have 3 nodes; leave steps at 4")
        check(isinstance(self.seed, int) and not isinstance(self.seed, bool), f"seed: must be an integer, got "
                                                                               f"{self.seed!r}")
        if self.pick != "trained":
            check(self.device in ("auto", "cpu"), f"device: random search runs on the CPU (auto or cpu), got "
                                                  f"{self.device!r}")
            return
        check(self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:"),
              f"device: must be auto, cpu or cuda, got {self.device!r}")
        check(self.space == "nb201", f"pick: 'trained' short-trains NAS-Bench-201 networks; use --space nb201, got "
                                     f"{self.space!r}")
        if not isinstance(self.data, DataConfig):
            raise ConfigError("data: expected a DataConfig mapping")
        self.data.validate()
        check(isinstance(self.train_epochs, int) and not isinstance(self.train_epochs, bool)
              and self.train_epochs >= 1, f"train_epochs: must be an integer >= 1, got {self.train_epochs!r}")
        for name in ("time_budget_s", "lr", "lr_min", "momentum", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                  f"{name}: must be a finite number >= 0, got {v!r}")
        check(self.lr > 0 and self.lr_min <= self.lr, f"lr: must be > 0 and >= lr_min, got {self.lr!r}")
        check(self.momentum < 1, f"momentum: must be in [0, 1), got {self.momentum!r}")


def sample_darts(rng: random.Random, steps: int = 4) -> Genotype:
    """A uniformly random DARTS-space genotype (both cells; 2 distinct inputs per node, ops without none)."""
    ops = [o for o in DARTS_PRIMITIVES if o != "none"]
    cells = {}
    for cell in ("normal", "reduce"):
        pairs = []
        for j in range(steps):
            for src in sorted(rng.sample(range(2 + j), 2)):
                pairs.append((rng.choice(ops), src))
        cells[cell] = pairs
    concat = list(range(2, 2 + steps))
    return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat)


def sample_nb201(rng: random.Random) -> NB201Genotype:
    """A uniformly random NAS-Bench-201 cell (an op of the 5 on each of the 6 edges)."""
    return NB201Genotype(nodes=[[(rng.choice(NB201_PRIMITIVES), i) for i in range(j)] for j in (1, 2, 3)])


def _params_m(g: Any, cfg: RandomSearchConfig) -> float:
    net = build_network(g, "cifar10", C=cfg.C, layers=cfg.layers, num_classes=cfg.num_classes)
    return float(count_parameters(net))


def random_search(cfg: RandomSearchConfig, *, data: Any = None,
                  on_epoch_end: Optional[Callable[[dict, dict], None]] = None, resume: Optional[dict] = None,
                  progress: bool = True) -> SearchResult:
    """Draw ``cfg.samples`` cells, pick one (see the module doc); ``on_epoch_end`` once per sample."""
    if resume is not None:
        raise ConfigError("resume: a random search has no checkpoint; rerun it (same seed, same result)")
    t0 = time.perf_counter()
    rng = random.Random(cfg.seed)
    cells = [sample_darts(rng, cfg.steps) if cfg.space == "darts" else sample_nb201(rng) for _ in range(cfg.samples)]
    if cfg.pick == "trained":
        return _trained_search(cfg, cells, data, on_epoch_end, t0)
    count = cfg.pick != "random"
    history = []
    for i, g in enumerate(cells):
        row: dict[str, Any] = {"sample": i, "genotype": g.to_json()}
        if count:
            row["params_m"] = _params_m(g, cfg)
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(dict(row), {})
    if cfg.pick == "random":
        picked = rng.randrange(len(cells))
    else:
        sign = 1.0 if cfg.pick == "fewest_params" else -1.0
        picked = min(range(len(cells)), key=lambda i: (sign * history[i]["params_m"], i))
    g = cells[picked]
    params = history[picked]["params_m"] if count else _params_m(g, cfg)
    wall = time.perf_counter() - t0
    return SearchResult(method="random", genotype=g, history=history,
                        final={"samples": len(cells), "picked": picked, "params_m": params}, config=to_dict(cfg),
                        device="cpu", wall_time_s=wall, session_time_s=wall)


def short_train_config(cfg: RandomSearchConfig, g: NB201Genotype) -> RetrainConfig:
    """The retraining config of one sample of ``pick="trained"`` (evaluated once, after the last epoch)."""
    return RetrainConfig(genotype=g.to_arch_str(), data=cfg.data, epochs=cfg.train_epochs, lr=cfg.lr,
                         lr_min=cfg.lr_min, lr_schedule="cosine", momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay, auxiliary=False, drop_path=0.0, grad_clip=cfg.grad_clip,
                         C=cfg.C, layers=cfg.layers, eval_every=cfg.train_epochs, device=cfg.device, bf16=False,
                         channels_last=False, seed=cfg.seed)


def search_loaders(cfg: RandomSearchConfig, data: Optional[Loaders] = None) -> tuple[torch.device, Loaders]:
    """The device and the loaders of ``pick="trained"``: the training half of the search split (augmented) and
    the validation half without augmentation (``data``, when given, is used as is)."""
    if data is not None:
        return task_data(cfg, "search", data)
    dev, weights = task_data(cfg, "search")
    _, plain = task_data(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, augment=False)), "search",
                         device=dev)
    return dev, dataclasses.replace(weights, valid=plain.valid, valid_size=plain.valid_size)


def short_train(cfg: RandomSearchConfig, g: NB201Genotype, loaders: Loaders, device: torch.device,
                seed: int) -> float:
    """Train ``g``'s stand-alone network (:func:`short_train_config`) on ``loaders.train`` and return its top-1
    accuracy on ``loaders.valid`` after the last epoch."""
    seed_everything(seed)
    task = RetrainTask(short_train_config(cfg, g), loaders=loaders, device=device)
    engine.run(task, epochs=cfg.train_epochs, progress=False, desc="random sample")
    return float(task.last_acc)


def _trained_search(cfg: RandomSearchConfig, cells: list, data: Optional[Loaders],
                    on_epoch_end: Optional[Callable[[dict, dict], None]], t0: float) -> SearchResult:
    dev, loaders = search_loaders(cfg, data)
    t_train = time.perf_counter()                 # the budget counts training time, as a search's wall_time_s
    history: list[dict[str, Any]] = []
    for i, g in enumerate(cells):
        if i > 0 and time.perf_counter() - t_train >= cfg.time_budget_s:
            break
        t1 = time.perf_counter()
        acc = short_train(cfg, g, loaders, dev, seed=cfg.seed + i)
        row: dict[str, Any] = {"sample": i, "genotype": g.to_json(), "val_acc": acc,
                               "train_time_s": time.perf_counter() - t1}
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(dict(row), {})
    accs = [r["val_acc"] for r in history]
    picked = max(range(len(accs)), key=lambda i: (accs[i] if math.isfinite(accs[i]) else -math.inf, -i))
    g = cells[picked]
    wall = time.perf_counter() - t0
    return SearchResult(method="random", genotype=g, history=history,
                        final={"samples": len(history), "picked": picked, "val_acc": accs[picked],
                               "params_m": _params_m(g, cfg), "time_budget_s": float(cfg.time_budget_s)},
                        config=to_dict(cfg), device=str(dev), wall_time_s=time.perf_counter() - t_train,
                        session_time_s=wall)


def describe(cfg: RandomSearchConfig) -> str:
    """The launcher's line before a run."""
    if cfg.pick == "trained":
        return (f"random search, space {cfg.space}: up to {cfg.samples} samples trained {cfg.train_epochs} epochs "
                f"each within {cfg.time_budget_s:g} s on {cfg.data.dataset}, pick the best validation accuracy, "
                f"seed {cfg.seed}")
    return f"random search, space {cfg.space}: {cfg.samples} samples, pick {cfg.pick}, seed {cfg.seed}"


def summary(cfg: RandomSearchConfig, result: SearchResult) -> list[str]:
    """The launcher's lines after a run."""
    f = result.final
    return [f"done: {f['samples']} samples, picked #{f['picked']} ({cfg.pick}), {f['params_m']:.3f} M parameters",
            str(result.genotype)]


__all__ = ["RandomSearchConfig", "random_search", "sample_darts", "sample_nb201", "short_train_config",
           "short_train", "search_loaders", "describe", "summary", "SPACES", "PICKS"]
