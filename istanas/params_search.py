"""The parameter-count heuristic: pick the cell of the space whose stand-alone network has the most parameters.

No data, no training, no benchmark table: the count comes from the network itself
(:func:`spaces.networks.build_network` + :func:`spaces.profile.count_parameters`).  NAS-Bench-201 only: every edge
of every cell maps C -> C at stride 1, so a network's parameter count is ``P(all none) + sum_e d(op_e)`` with
``d(op) = (P(all op) - P(all none)) / 6`` the count one op adds on one edge (summed over the 3N cells); the
maximum over all 5^6 cells is every edge's op of largest ``d`` (``nor_conv_3x3``; ties to NAS-Bench-201's op
order).  The per-op counts are measured by building the 5 uniform networks, and the found cell's own network is
built and counted as a check of that sum.  The DARTS space (about 10^18 cells, counts depending on the cell
position) is refused with a clear error.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

from spaces.genotype import NB201Genotype
from spaces.nb201 import NB201_EDGES
from spaces.networks import build_network
from spaces.ops import NB201_PRIMITIVES
from spaces.profile import count_parameters

from .config import ConfigError, check, to_dict
from .result import SearchResult

SPACES = ("nb201",)


@dataclass
class ParamsSearchConfig:
    """``C`` / ``layers`` (cells per stage N) / ``num_classes`` size the networks whose parameters are counted
    (NAS-Bench-201's: C = 16, N = 5, 10 classes)."""

    space: str = "nb201"
    C: int = 16
    layers: int = 5
    num_classes: int = 10
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/search-params"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "small": {"C": 16, "layers": 5}, "cpu": {"C": 16, "layers": 5}, "paper": {"C": 16, "layers": 5},
    }

    def validate(self) -> None:
        check(self.space in SPACES, f"space: the #params heuristic enumerates NAS-Bench-201 cells only (the DARTS "
                                    f"space has ~1e18 cells whose counts depend on the cell position); use "
                                    f"--space nb201, got {self.space!r}")
        for name in ("C", "layers", "num_classes"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                  f"{name}: must be an integer >= 1, got {v!r}")
        check(isinstance(self.seed, int) and not isinstance(self.seed, bool), f"seed: must be an integer, got "
                                                                               f"{self.seed!r}")
        check(self.device in ("auto", "cpu"), f"device: the #params heuristic runs on the CPU (auto or cpu), got "
                                              f"{self.device!r}")


def _uniform(op: str) -> NB201Genotype:
    return NB201Genotype(nodes=[[(op, i) for i in range(j)] for j in (1, 2, 3)])


def nb201_params(g: NB201Genotype, cfg: ParamsSearchConfig) -> int:
    """Parameters of the stand-alone NAS-Bench-201 network of ``g``."""
    net = build_network(g, "cifar10", C=cfg.C, N=cfg.layers, num_classes=cfg.num_classes)
    return int(round(count_parameters(net) * 1e6))             # count_parameters gives millions


def most_params_cell(cfg: ParamsSearchConfig) -> tuple[NB201Genotype, int, dict[str, float]]:
    """``(cell, its parameter count, per-op count added by one edge)`` of the most-parameters cell."""
    base = nb201_params(_uniform("none"), cfg)
    per_edge = {op: (nb201_params(_uniform(op), cfg) - base) / len(NB201_EDGES) for op in NB201_PRIMITIVES}
    best = max(NB201_PRIMITIVES, key=lambda op: (per_edge[op], -NB201_PRIMITIVES.index(op)))
    g = _uniform(best)
    n = nb201_params(g, cfg)
    expected = base + len(NB201_EDGES) * per_edge[best]
    if n != round(expected):   # the additivity the argmax relies on
        raise RuntimeError(f"parameter counts are not additive over edges ({n} != {expected})")
    return g, n, per_edge


def params_search(cfg: ParamsSearchConfig, *, data: Any = None,
                  on_epoch_end: Optional[Callable[[dict, dict], None]] = None, resume: Optional[dict] = None,
                  progress: bool = True) -> SearchResult:
    """The most-parameters cell (module doc); ``on_epoch_end`` once, with the per-op counts."""
    if resume is not None:
        raise ConfigError("resume: the #params heuristic has no checkpoint; rerun it (same result)")
    t0 = time.perf_counter()
    g, n, per_edge = most_params_cell(cfg)
    row = {"params_per_edge": per_edge, "params": n, "genotype": g.to_json()}
    if on_epoch_end is not None:
        on_epoch_end(dict(row), {})
    wall = time.perf_counter() - t0
    return SearchResult(method="params", genotype=g, history=[row], final={"params_m": n / 1e6},
                        config=to_dict(cfg), device="cpu", wall_time_s=wall, session_time_s=wall)


def describe(cfg: ParamsSearchConfig) -> str:
    return f"#params heuristic, space {cfg.space}: C={cfg.C}, N={cfg.layers}, {cfg.num_classes} classes"


def summary(cfg: ParamsSearchConfig, result: SearchResult) -> list[str]:
    return [f"done: the most-parameters cell, {result.final['params_m']:.3f} M parameters", str(result.genotype)]


__all__ = ["ParamsSearchConfig", "params_search", "most_params_cell", "nb201_params", "describe", "summary",
           "SPACES"]
