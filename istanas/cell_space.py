"""The cell space of a weight-sharing search (``cfg.space``): what differs between the DARTS and NAS-Bench-201 spaces.

:func:`cell_space` maps a search config (two-stage, one-stage, DARTS) to a :class:`CellSpace`: candidate ops,
cell types, input edges per node, whether a node keeps ``min(s, edges)`` ops, and the builders of the super-nets
(:mod:`istanas.supernet`, :mod:`istanas.nb201_supernet`), the compressed space
(:class:`istanas.ista.compressed.CompressedSpace`) and the genotype of a support.

* ``darts``: 7 ops (DARTS's without ``none``), cell types normal / reduce, node i has 2 + i input edges
  (``cfg.steps`` nodes), support rule ``recovery.support`` (default top-s over (edge, op), the paper's).
* ``nb201``: 4 ops (NAS-Bench-201's without ``none``), one cell type, nodes 1..3 with 1, 2, 3 input edges; the
  support is top-s per node with at most one op per edge (``support="distinct_edges"``, the only rule whose
  supports are all NAS-Bench-201 cells), node j keeping ``min(s, j)`` ops; edges left out are ``none``.
  ``cfg.layers`` is N (cells per stage), ``cfg.steps`` is unused.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from spaces.genotype import Genotype, NB201Genotype
from .config import ConfigError
from .ista.compressed import CompressedSpace, RecoveryConfig, genotype_from_support
from .nb201_supernet import (NB201_CELL_TYPES, NB201_EDGES_PER_NODE, NB201_SEARCH_OPS, NB201DenseSuperNet,
                             NB201SparseSuperNet, nb201_genotype_from_support)
from .supernet import CELL_TYPES, ISTA_PRIMITIVES, DenseSuperNet, SparseSuperNet

SPACES = ("darts", "nb201")

#: What ``--space nb201`` lays over a DARTS-space preset (``launch/search.py``; the nb201 presets set it all):
#: m_j = n_j / 2 (n_j = 4, 8, 12 candidates), s = 3 (node j keeps min(3, j) ops: every edge gets an op),
#: the per-edge support rule.
NB201_RECOVERY = {"m": [2, 4, 6], "s": 3, "support": "distinct_edges"}


@dataclass(frozen=True)
class CellSpace:
    """One cell space of the weight-sharing searches (see the module doc)."""

    name: str
    primitives: tuple[str, ...]
    cell_types: tuple[str, ...]
    edges_per_node: tuple[int, ...]

    @property
    def steps(self) -> int:
        return len(self.edges_per_node)

    @property
    def nb201(self) -> bool:
        return self.name == "nb201"

    def node_sizes(self) -> list[int]:
        """n_i = (input edges of node i) x K candidates per node."""
        return [e * len(self.primitives) for e in self.edges_per_node]

    def validate_recovery(self, recovery: RecoveryConfig) -> None:
        """Check the recovery settings against this space; errors name the field as ``recovery.<field>``."""
        try:
            recovery.validate(self.node_sizes(), None if self.nb201 else list(self.edges_per_node))
        except ConfigError as e:
            raise ConfigError(f"recovery.{e}") from None
        if self.nb201:
            if recovery.support != "distinct_edges":
                raise ConfigError(f"recovery.support: the nb201 space needs 'distinct_edges' (at most one op per "
                                  f"edge, so that every support is a NAS-Bench-201 cell), got {recovery.support!r}")
            if recovery.s > max(self.edges_per_node):
                raise ConfigError(f"recovery.s: a NAS-Bench-201 node has at most {max(self.edges_per_node)} input "
                                  f"edges (s = 3: every edge gets an op), got {recovery.s}")

    def compressed(self, cfg: Any) -> CompressedSpace:
        """The compressed space of a search config (A drawn from ``seed + recovery.seed``)."""
        rcfg = dataclasses.replace(cfg.recovery, seed=int(cfg.seed) + int(cfg.recovery.seed))
        return CompressedSpace(len(self.primitives), self.steps, rcfg, cell_types=self.cell_types,
                               init_b_std=cfg.init_b_std, edges_per_node=self.edges_per_node, ragged_s=self.nb201)

    def sparse_supernet(self, cfg: Any, num_classes: int, in_channels: int, **kw: Any):
        """The ISTA-NAS super-net (``kw``: ``onestage``, and for the DARTS space ``auxiliary`` / ``stem``)."""
        if self.nb201:
            return NB201SparseSuperNet(C=cfg.C, num_classes=num_classes, N=cfg.layers, in_channels=in_channels,
                                       primitives=self.primitives, onestage=bool(kw.get("onestage", False)))
        return SparseSuperNet(C=cfg.C, num_classes=num_classes, layers=cfg.layers, steps=cfg.steps,
                              multiplier=cfg.steps, in_channels=in_channels, primitives=self.primitives, **kw)

    def dense_supernet(self, cfg: Any, num_classes: int, in_channels: int):
        """The first-order DARTS super-net."""
        if self.nb201:
            return NB201DenseSuperNet(C=cfg.C, num_classes=num_classes, N=cfg.layers, in_channels=in_channels,
                                      primitives=self.primitives)
        return DenseSuperNet(C=cfg.C, num_classes=num_classes, layers=cfg.layers, steps=cfg.steps,
                             multiplier=cfg.steps, in_channels=in_channels, primitives=self.primitives)

    def genotype(self, support_host: torch.Tensor, z: torch.Tensor) -> Genotype | NB201Genotype:
        """The genotype of a support: the NAS-Bench-201 cell of its (edge, op) entries, or the DARTS genotype
        (:func:`istanas.ista.compressed.genotype_from_support`)."""
        if self.nb201:
            return nb201_genotype_from_support(support_host, self.primitives)
        return genotype_from_support(support_host, z, self.primitives, self.steps)


def cell_space(cfg_or_name: Any, steps: int = 4) -> CellSpace:
    """The :class:`CellSpace` of a config (``cfg.space``, ``cfg.steps``) or of a space name."""
    if isinstance(cfg_or_name, str):
        name = cfg_or_name
    else:
        name, steps = getattr(cfg_or_name, "space", "darts"), int(cfg_or_name.steps)
    if name == "nb201":
        return CellSpace("nb201", NB201_SEARCH_OPS, NB201_CELL_TYPES, NB201_EDGES_PER_NODE)
    if name == "darts":
        return CellSpace("darts", ISTA_PRIMITIVES, CELL_TYPES, tuple(2 + i for i in range(steps)))
    raise ConfigError(f"space: must be one of {list(SPACES)}, got {name!r}")


__all__ = ["CellSpace", "cell_space", "SPACES", "NB201_RECOVERY"]
