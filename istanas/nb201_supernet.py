"""Super-nets of the NAS-Bench-201 cell space: the ISTA-NAS sparse super-net and the dense DARTS super-net.

Macro skeleton (NAS-Bench-201's, from :mod:`spaces.networks`): stem conv3x3 (-> C) + BN; 3 stages of N search
cells (C, 2C, 4C) joined by stride-2 ResNetBasicBlocks (:func:`spaces.networks.nb201_stages`); BN, ReLU, global
average pool, Linear.  ``cells`` holds the stage blocks in forward order (search cells and residual blocks, the
same ``cells.{i}`` indices as :class:`spaces.networks.NB201Network`); every search cell shares ONE architecture
(NAS-Bench-201 has a single cell type, ``"cell"``: ``T = 1``).

A search cell has 4 nodes; node j = 1..3 (0-based node index i = j - 1) sums ops on its ``j`` input edges i' -> j
(i' < j).  Global edges in arch-string order 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2: node i's first edge is
``NB201_OFFSETS[i] = (0, 1, 3)[i]``.  Candidate ops per edge: :data:`NB201_SEARCH_OPS`, NAS-Bench-201's ops
without ``none`` (K = 4, as the DARTS-space super-nets drop ``none``); an edge left out of the support is
``none``.  Flat candidate id of node i: ``input * K + op`` (as the DARTS space), so node i has ``(i + 1) K``
candidates (4, 8, 12).

:class:`NB201SparseSuperNet` (two-stage / one-stage ISTA-NAS): ``forward(x, support_host [1, 3, s], coef
[1, 3, s])`` runs only the support ops, ``x_j = sum_{k in S_j} c_k o_k(x_{input(k)})`` (Eq. 11); a slot -1 is empty
(node j keeps ``min(s, j)`` ops, :class:`istanas.ista.compressed.CompressedSpace` ``ragged_s``).
:class:`NB201DenseSuperNet` (first-order DARTS): ``alphas [1, 6, K]``, every edge ``sum_k softmax(alpha_e)_k o_k``.
:meth:`NB201SuperNetBase.forward_cell` evaluates a given :class:`spaces.genotype.NB201Genotype` with the
super-net's inherited weights (each non-``none`` edge's op with weight 1, ``none`` edges left out) -- the
stand-alone cell on shared weights, e.g. for a consistency benchmark; :func:`support_of_genotype` gives the
support (and unit coefficients) of such a cell for the sparse forward.

Shapes: input ``[N, in_channels, H, W]`` (H, W divisible by 4), logits ``[N, num_classes]``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spaces.genotype import NB201Genotype
from spaces.networks import conv_stem, drop_path, nb201_stages
from spaces.ops import NB201_PRIMITIVES, Identity

from .supernet import SearchNetParts, SupportLike, SupportPlan, build_candidate

__all__ = ["NB201_SEARCH_OPS", "NB201_CELL_TYPES", "NB201_STEPS", "NB201_EDGES_PER_NODE", "NB201_OFFSETS",
           "NB201SearchCell", "NB201SuperNetBase", "NB201SparseSuperNet", "NB201DenseSuperNet",
           "nb201_genotype_from_support", "nb201_darts_genotype", "support_of_genotype"]

#: Candidate ops of the NAS-Bench-201 search: its ops without ``none``, in NAS-Bench-201's order (K = 4).
NB201_SEARCH_OPS: tuple[str, ...] = tuple(p for p in NB201_PRIMITIVES if p != "none")
#: NAS-Bench-201 has one cell type.
NB201_CELL_TYPES: tuple[str, ...] = ("cell",)
#: Intermediate nodes 1..3 and their input edges.
NB201_STEPS = 3
NB201_EDGES_PER_NODE: tuple[int, ...] = (1, 2, 3)
#: Global index of every node's first input edge (arch-string edge order).
NB201_OFFSETS: tuple[int, ...] = (0, 1, 3)
NB201_NUM_EDGES = 6


class NB201SearchCell(nn.Module):
    """A NAS-Bench-201 search cell ``[N, C, H, W] -> [N, C, H, W]``: ``edges[e][k]`` is op k of global edge e."""

    def __init__(self, C: int, primitives: Sequence[str] = NB201_SEARCH_OPS, onestage: bool = False):
        super().__init__()
        self.edges = nn.ModuleList(
            nn.ModuleList(build_candidate(p, C, 1, onestage, space="nb201") for p in primitives)
            for _ in range(NB201_NUM_EDGES))

    def forward_sparse(self, x: torch.Tensor, plan: tuple, coefs: Sequence[torch.Tensor], s: int,
                       drop_prob: float = 0.0) -> torch.Tensor:
        """Support-only forward; ``coefs[i * s + j]`` is the 0-dim coefficient of slot j of node i."""
        nodes = [x]
        for i, node in enumerate(plan):
            acc: Optional[torch.Tensor] = None
            for (j, e, src, k) in node:
                op = self.edges[e][k]
                y = op(nodes[src])
                if drop_prob > 0.0 and self.training and not isinstance(op, Identity):
                    y = drop_path(y, drop_prob)
                y = coefs[i * s + j] * y
                acc = y if acc is None else acc + y
            nodes.append(acc if acc is not None else torch.zeros_like(x))
        return nodes[-1]

    def forward_dense(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every op of every edge, ``weights [6, K]``."""
        w = weights.unbind(0)
        nodes = [x]
        for i in range(NB201_STEPS):
            acc: Optional[torch.Tensor] = None
            for src in range(NB201_EDGES_PER_NODE[i]):
                e = NB201_OFFSETS[i] + src
                we = w[e].unbind(0)
                for k, op in enumerate(self.edges[e]):
                    y = we[k] * op(nodes[src])
                    acc = y if acc is None else acc + y
            nodes.append(acc)
        return nodes[-1]


class NB201SuperNetBase(SearchNetParts, nn.Module):
    """Stem, 3 stages of ``N`` :class:`NB201SearchCell` s with residual reductions, classifier (module doc).

    Args: ``C`` initial channels (NAS-Bench-201: 16), ``num_classes``, ``N`` cells per stage (5),
    ``primitives`` (default :data:`NB201_SEARCH_OPS`), ``in_channels``, ``onestage`` (affine, frozen BNs after every
    candidate op, one appended after pooling and the identity: the one-stage variant of Algorithm 2).
    """

    cell_type_names = NB201_CELL_TYPES
    empty_slots = True

    def __init__(self, C: int = 16, num_classes: int = 10, N: int = 5,
                 primitives: Sequence[str] = NB201_SEARCH_OPS, in_channels: int = 3, onestage: bool = False):
        super().__init__()
        for name, v in (("C", C), ("num_classes", num_classes), ("N", N), ("in_channels", in_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        primitives = tuple(primitives)
        bad = [p for p in primitives if p not in NB201_SEARCH_OPS]
        if not primitives or bad or len(set(primitives)) != len(primitives):
            raise ValueError(f"primitives: distinct ops of {list(NB201_SEARCH_OPS)} ('none' = an edge left out), "
                             f"got {list(primitives)}")
        self.C, self.num_classes, self.layers, self.in_channels = C, num_classes, N, in_channels
        self.primitives, self.num_ops = primitives, len(primitives)
        self.steps, self.num_edges = NB201_STEPS, NB201_NUM_EDGES
        self.edges_per_node, self.offsets = list(NB201_EDGES_PER_NODE), list(NB201_OFFSETS)
        self.onestage, self.auxiliary, self.aux_head = onestage, False, None
        self.drop_path_prob = 0.0
        self.stem = conv_stem(in_channels, C)
        blocks, C_last = nb201_stages(C, N, lambda c: NB201SearchCell(c, primitives, onestage))
        self.cells = nn.ModuleList(blocks)
        self.cell_types = [0 if isinstance(b, NB201SearchCell) else -1 for b in blocks]
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_last), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(C_last, num_classes)

    def _run(self, x: torch.Tensor, cell_forward) -> torch.Tensor:
        s = self.stem(x)
        for block, t in zip(self.cells, self.cell_types):
            s = cell_forward(block, s) if t >= 0 else block(s)
        return self.classifier(self.lastact(s).mean(dim=(2, 3)))

    def forward_dense(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every op of every edge weighted by ``weights [1, 6, K]`` (any values) -> logits."""
        if tuple(weights.shape) != (1, self.num_edges, self.num_ops):
            raise ValueError(f"weights: expected shape {(1, self.num_edges, self.num_ops)}, "
                             f"got {tuple(weights.shape)}")
        w = weights[0]
        return self._run(x, lambda cell, s: cell.forward_dense(s, w))

    def forward_cell(self, x: torch.Tensor, arch) -> torch.Tensor:
        """Logits of the cell ``arch`` (an :class:`NB201Genotype` or arch string) on the inherited weights: each
        edge's op with weight 1, ``none`` edges left out (a node with only ``none`` inputs is zero)."""
        support = support_of_genotype(arch, self.primitives)
        plan = self.plan(support)
        coef = (support >= 0).to(x.dtype)
        coefs = coef.reshape(-1).unbind(0)
        s = support.shape[-1]
        return self._run(x, lambda cell, h: cell.forward_sparse(h, plan.nodes[0], coefs, s, 0.0))


class NB201SparseSuperNet(NB201SuperNetBase):
    """The ISTA-NAS super-net of the NAS-Bench-201 space: ``forward(x, support_host [1, 3, s] (CPU, -1 = empty
    slot) or a SupportPlan, coef [1, 3, s]) -> logits``; only the support ops run."""

    def __init__(self, *args, plan_cache: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self._plans: "OrderedDict[bytes, SupportPlan]" = OrderedDict()
        self._plan_cache = max(1, int(plan_cache))

    def forward(self, x: torch.Tensor, support_host: SupportLike, coef: torch.Tensor) -> torch.Tensor:
        plan = self.plan(support_host)
        if tuple(coef.shape) != plan.shape:
            raise ValueError(f"coef: expected shape {plan.shape} (as the support), got {tuple(coef.shape)}")
        s = plan.shape[-1]
        coefs = coef.to(x.dtype).reshape(-1).unbind(0)        # 0-dim views, no host read
        p = self.drop_path_prob
        return self._run(x, lambda cell, h: cell.forward_sparse(h, plan.nodes[0], coefs, s, p))


class NB201DenseSuperNet(NB201SuperNetBase):
    """First-order DARTS on NAS-Bench-201: ``alphas [1, 6, K]`` (init ``1e-3 N(0, 1)``), every edge the mixed op
    ``sum_k softmax(alphas[0, e])_k o_k``.  ``forward(x) -> logits``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alphas = nn.Parameter(1e-3 * torch.randn(1, self.num_edges, self.num_ops))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def edge_weights(self) -> torch.Tensor:
        """``softmax(alphas, -1)``, ``[1, 6, K]``."""
        return F.softmax(self.alphas, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_dense(x, self.edge_weights())


# --------------------------------------------------------------------------------------------------- genotypes
def nb201_genotype_from_support(support_host: torch.Tensor,
                                primitives: Sequence[str] = NB201_SEARCH_OPS) -> NB201Genotype:
    """The NAS-Bench-201 cell of a support ``[1, 3, s]`` (flat ids ``input * K + op``, -1 = empty slot): each
    support entry sets its edge's op, every other edge is ``none``.  Raises ``ValueError`` if two entries share an
    edge (not a NAS-Bench-201 cell)."""
    K = len(primitives)
    sup = torch.as_tensor(support_host)
    if sup.dim() != 3 or tuple(sup.shape[:2]) != (1, NB201_STEPS):
        raise ValueError(f"support_host: expected shape [1, {NB201_STEPS}, s], got {tuple(sup.shape)}")
    ids = sup.tolist()
    nodes = []
    for i, row in enumerate(ids[0]):
        ops = ["none"] * NB201_EDGES_PER_NODE[i]
        for k in row:
            if k < 0:
                continue
            src, op = divmod(int(k), K)
            if not 0 <= src < len(ops):
                raise ValueError(f"support_host: id {k} of node {i + 1} is outside its {len(ops)} input edges")
            if ops[src] != "none":
                raise ValueError(f"support_host: node {i + 1} has two ops on edge {src} -> {i + 1}; a NAS-Bench-201 "
                                 f"cell has one op per edge (use support='distinct_edges')")
            ops[src] = primitives[op]
        nodes.append([(op, src) for src, op in enumerate(ops)])
    return NB201Genotype(nodes=nodes)


def nb201_darts_genotype(weights: torch.Tensor, primitives: Sequence[str] = NB201_SEARCH_OPS) -> NB201Genotype:
    """DARTS's rule on NAS-Bench-201 (every edge its strongest op; ``none`` is not a candidate): edge weights
    ``[1, 6, K]`` -> the cell."""
    best = weights.detach()[0].argmax(-1).cpu().tolist()            # first max on ties
    ops = [primitives[k] for k in best]
    nodes, e = [], 0
    for i in range(NB201_STEPS):
        nodes.append([(ops[e + src], src) for src in range(NB201_EDGES_PER_NODE[i])])
        e += NB201_EDGES_PER_NODE[i]
    return NB201Genotype(nodes=nodes)


def support_of_genotype(arch, primitives: Sequence[str] = NB201_SEARCH_OPS, s: int = 3) -> torch.Tensor:
    """The support ``[1, 3, s]`` (CPU, -1 = empty slot) of an :class:`NB201Genotype` or arch string: its
    non-``none`` edges, by input index.  ``s`` >= the most non-``none`` inputs of a node (3 always fits)."""
    g = arch if isinstance(arch, NB201Genotype) else NB201Genotype.from_arch_str(arch)
    K = len(primitives)
    out = torch.full((1, NB201_STEPS, s), -1, dtype=torch.int64)
    for i, node in enumerate(g.nodes):
        ids = [src * K + primitives.index(op) for op, src in node if op != "none"]
        if len(ids) > s:
            raise ValueError(f"s: node {i + 1} of {g.to_arch_str()} has {len(ids)} ops, more than s = {s}")
        out[0, i, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out
