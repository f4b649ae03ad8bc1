"""Random search: the baseline that weight-sharing searches must beat (no training, no super-net).

``samples`` cells are drawn uniformly from a cell space with Python's ``random.Random(seed)`` (independent of the
torch RNG, so the same seed gives the same cells on any machine):

* ``darts``: per node j of both cells, 2 distinct inputs out of the 2 + j earlier states, each with an op out of
  the 7 DARTS ops without ``none`` (the ops the ISTA-NAS and DARTS super-nets search);
* ``nb201``: an op out of the 5 NAS-Bench-201 ops (``none`` included, as in the benchmark) on each of 6 edges.

One is picked: ``pick="random"`` the sample at a seeded random index (no proxy); ``"fewest_params"`` /
``"most_params"`` the stand-alone network (:func:`spaces.networks.build_network` with ``C``, ``layers``,
``num_classes``; auxiliary head excluded) with the fewest / most parameters, ties to the earliest sample.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

from spaces.genotype import Genotype, NB201Genotype
from spaces.networks import build_network
from spaces.ops import DARTS_PRIMITIVES, NB201_PRIMITIVES
from spaces.profile import count_parameters

from .config import ConfigError, check, to_dict
from .result import SearchResult

SPACES = ("darts", "nb201")
PICKS = ("random", "fewest_params", "most_params")


@dataclass
class RandomSearchConfig:
    """Settings of a random search (see the module doc).  ``C`` / ``layers`` size the networks whose parameters
    the ``*_params`` picks count (NB201: ``layers`` = cells per stage N)."""

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

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "small": {"samples": 20, "C": 8, "layers": 5},
        "reference": {"samples": 100, "C": 36, "layers": 20},
        # NAS-Bench-201 (the bench's fidelities): one uniformly random cell, no training (the space's prior)
        "cpu": {"space": "nb201", "samples": 1, "C": 16, "layers": 5},
        "paper": {"space": "nb201", "samples": 1, "C": 16, "layers": 5},
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
        check(self.device in ("auto", "cpu"), f"device: random search runs on the CPU (auto or cpu), got "
                                              f"{self.device!r}")


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


def describe(cfg: RandomSearchConfig) -> str:
    """The launcher's line before a run."""
    return f"random search, space {cfg.space}: {cfg.samples} samples, pick {cfg.pick}, seed {cfg.seed}"


def summary(cfg: RandomSearchConfig, result: SearchResult) -> list[str]:
    """The launcher's lines after a run."""
    f = result.final
    return [f"done: {f['samples']} samples, picked #{f['picked']} ({cfg.pick}), {f['params_m']:.3f} M parameters",
            str(result.genotype)]


__all__ = ["RandomSearchConfig", "random_search", "sample_darts", "sample_nb201", "describe", "summary", "SPACES",
           "PICKS"]
