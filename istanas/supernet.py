"""Super-nets of the DARTS cell space: the ISTA-NAS sparse super-net and the dense DARTS super-net.

Both share one module layout (stem, ``layers`` cells with ``14`` input edges x ``K`` candidate ops each, classifier),
so a state dict of one loads into the other and the two forward paths can be compared on the same weights.

:class:`SparseSuperNet` (ISTA-NAS, paper Sec. 3 and Algorithm 1, line 3) evaluates, for every intermediate node, only
the ops in the node's current support S (s ops per node, default 2), each multiplied by its coefficient of Eq. 11,

    x_i = sum_{k in S_i} c_k o_k(states[edge(k)]),      c = b^T A_S - z_S^T E_SS                  (Eq. 11)

so a forward costs about as much as the discrete child network: no dense mixed op is computed and no op outside S
is evaluated.  The weights of every candidate op are kept, so when a recovery changes S the newly selected ops find
their trained weights.  Which op modules run is decided only from the *host* support ``support_host`` (a CPU
``LongTensor [T, steps, s]``, copied once per recovery); the coefficients stay on the device and are only multiplied
in, so a forward has no host-device synchronisation (the reference reads ``if w != 0`` on the GPU for every op, up
to ~1,100 syncs per step).  The host-side plan of a support (which (edge, op) modules feed which node, in what
order) is built once and cached, so a forward is a straight loop over ``layers x steps x s`` ops.

:class:`DenseSuperNet` is first-order DARTS: every edge is a mixed op ``sum_k softmax(alpha_e)_k o_k(x)`` over all
K ops.  ``none`` is excluded (``ISTA_PRIMITIVES``, the reference's 7 ops) so that DARTS and ISTA-NAS search the
same cells and benchmarks compare like with like (DARTS proper has 8 ops with ``none``; pass
``primitives=DARTS_PRIMITIVES`` for that).  :meth:`SuperNetBase.forward_dense` evaluates the dense path with any
per-edge weights ``[T, 14, K]``; the tests use it as the independent reference of the sparse forward.

Shapes: input ``[N, in_channels, H, W]``, logits ``[N, num_classes]``.  Cell types ``T = 2`` (0 normal, 1 reduce);
node i (0-based) of a cell has ``2 + i`` input edges, the flat candidate id of (input edge e, op k) is ``e * K + k``
and the global edge index is ``EDGE_OFFSETS[i] + e`` (0..13 for 4 steps).

``onestage=True`` builds the one-stage (Algorithm 2) variant: every candidate op ends in an affine BatchNorm2d
(pooling and identity ops get one appended; the conv ops' own BNs become affine) whose gamma / beta start at 1 / 0
and are frozen (``requires_grad=False``) until :meth:`SuperNetBase.unfreeze_node` releases a node, as in the
reference; :meth:`SuperNetBase.candidate_ops` enumerates every (cell, node, edge, op) with its op module and final
BN (what Eq. 12 folds the coefficient into).  An auxiliary head and drop-path are available for that setting.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from spaces.networks import AuxiliaryHead, cell_preprocess, conv_stem, imagenet_stems
from spaces.ops import DARTS_PRIMITIVES, PARAM_FREE_OPS, Identity, build_op

__all__ = ["ISTA_PRIMITIVES", "CELL_TYPES", "STEMS", "AuxiliaryHead", "SupportPlan", "CandidateOp", "SearchNetParts",
           "SuperNetBase", "build_candidate",
           "SparseSuperNet", "DenseSuperNet", "edge_offsets", "support_to_edge_weights"]

#: The reference's candidate ops: DARTS's primitives without ``none`` (K = 7), in DARTS's order.
ISTA_PRIMITIVES: tuple[str, ...] = tuple(p for p in DARTS_PRIMITIVES if p != "none")
#: Cell type names, index order of every ``[T, ...]`` tensor.
CELL_TYPES: tuple[str, ...] = ("normal", "reduce")
#: Stems of the super-nets: NetworkCIFAR's (full resolution) and NetworkImageNet's (stride 8).
STEMS: tuple[str, ...] = ("cifar", "imagenet")

SupportLike = Union[torch.Tensor, Sequence]


def edge_offsets(steps: int) -> list[int]:
    """Global index of the first input edge of every node: ``[0, 2, 5, 9]`` for 4 steps (node i has 2 + i)."""
    out, acc = [], 0
    for i in range(steps):
        out.append(acc)
        acc += 2 + i
    return out


# ---------------------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class SupportPlan:
    """Host-side execution plan of one support: for cell type t and node i, ``nodes[t][i]`` is a tuple of
    ``(slot j, global edge e, input state src, op k)``, one per support entry, in support order.  Coefficient
    ``coef[t, i, j]`` multiplies op ``k`` of edge ``e`` applied to ``states[src]``."""

    key: bytes
    shape: tuple[int, int, int]
    nodes: tuple[tuple[tuple[tuple[int, int, int, int], ...], ...], ...]

    def pairs(self) -> set[tuple[int, int, int]]:
        """``{(t, e, k)}``: every (cell type, global edge, op) the plan runs."""
        return {(t, e, k) for t, nodes in enumerate(self.nodes) for node in nodes for (_, e, _, k) in node}


class CandidateOp(NamedTuple):
    """One candidate op of one cell (see :meth:`SuperNetBase.candidate_ops`)."""

    cell: int            # index of the cell in the network
    cell_type: int       # 0 normal, 1 reduce
    node: int            # intermediate node 0..steps-1
    edge: int            # input index of the node (0..1+node): the state the op reads
    op: int              # index into ``primitives``
    name: str            # op name
    module: nn.Module    # the op (with its appended BN where there is one)
    bn: Optional[nn.BatchNorm2d]   # the op's final BatchNorm2d (None only for a BN-less identity)


# ------------------------------------------------------------------------------------------------------ modules
def _final_bn(module: nn.Module) -> Optional[nn.BatchNorm2d]:
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    return bns[-1] if bns else None


def build_candidate(name: str, C: int, stride: int, onestage: bool, space: str = "darts") -> nn.Module:
    """One candidate op ``[N, C, H, W] -> [N, C, H/stride, W/stride]`` as the search networks build it.

    Two-stage / DARTS (``onestage=False``): ``affine=False`` BNs, and a non-affine BN after pooling (DARTS and the
    reference; not in ``space="nb201"``, whose search cells pool without a BN, as NAS-Bench-201's).  One-stage:
    affine BNs everywhere, one appended after pooling and after a stride-1 identity, every BN of the op initialised
    to gamma = 1, beta = 0 and frozen (``requires_grad=False``).  ``space``: the op registry of :mod:`spaces.ops`.
    """
    op = build_op(name, C, stride, affine=onestage, space=space)
    if "pool" in name and (onestage or space == "darts"):
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=onestage))
    elif onestage and name in PARAM_FREE_OPS and isinstance(op, Identity):
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=True))
    if onestage:
        for m in op.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                with torch.no_grad():
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
    return op


class SearchCell(nn.Module):
    """A DARTS search cell: (s0 ``[N, C_pp, H', W']``, s1 ``[N, C_p, H, W]``) -> ``[N, multiplier * C, H/r, W/r]``.

    ``edges[e][k]`` is op k of global edge e; stride 2 on the edges from the two cell inputs in a reduction cell.
    """

    def __init__(self, steps: int, multiplier: int, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, primitives: Sequence[str], onestage: bool):
        super().__init__()
        self.reduction = reduction
        self.steps, self.multiplier = steps, multiplier
        # one-stage: trainable pre-processing BNs (the reference); search: affine=False
        self.preprocess0, self.preprocess1 = cell_preprocess(C_pp, C_p, C, reduction_prev, affine=onestage)
        edges = []
        for i in range(steps):
            for src in range(2 + i):
                stride = 2 if reduction and src < 2 else 1
                edges.append(nn.ModuleList([build_candidate(p, C, stride, onestage) for p in primitives]))
        self.edges = nn.ModuleList(edges)
        self.offsets = edge_offsets(steps)

    def forward_sparse(self, s0: torch.Tensor, s1: torch.Tensor,
                       plan: tuple[tuple[tuple[int, int, int, int], ...], ...], coefs: Sequence[torch.Tensor],
                       base: int, s: int, drop_prob: float = 0.0) -> torch.Tensor:
        """Support-only forward.  ``coefs[base + i * s + j]`` is the 0-dim device coefficient of slot j of node i."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i, node in enumerate(plan):
            acc: Optional[torch.Tensor] = None
            for (j, e, src, k) in node:
                op = self.edges[e][k]
                y = op(states[src])
                if drop_prob > 0.0 and self.training and not isinstance(op, Identity):
                    y = _drop_path(y, drop_prob)
                y = coefs[base + i * s + j] * y
                acc = y if acc is None else acc + y
            states.append(acc)
        return torch.cat(states[-self.multiplier:], dim=1)

    def forward_dense(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                      drop_prob: float = 0.0) -> torch.Tensor:
        """Dense (DARTS) forward: every op of every edge, ``weights [14, K]`` per edge and op."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        w = weights.unbind(0)
        for i in range(self.steps):
            acc: Optional[torch.Tensor] = None
            for src in range(2 + i):
                e = self.offsets[i] + src
                we = w[e].unbind(0)
                for k, op in enumerate(self.edges[e]):
                    y = op(states[src])
                    if drop_prob > 0.0 and self.training and not isinstance(op, Identity):
                        y = _drop_path(y, drop_prob)
                    y = we[k] * y
                    acc = y if acc is None else acc + y
            states.append(acc)
        return torch.cat(states[-self.multiplier:], dim=1)


def _drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest; the mask is drawn on x's device."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


# ------------------------------------------------------------------------------------------------ shared parts
class SearchNetParts:
    """What the super-nets of both cell spaces share (this module's and :mod:`istanas.nb201_supernet`'s).

    A subclass sets ``cells`` (an ``nn.ModuleList``), ``cell_types`` (per entry of ``cells``: its cell-type index,
    or -1 for a block that is no search cell, e.g. NAS-Bench-201's residual reductions), ``cell_type_names``,
    ``edges_per_node``, ``offsets`` (global index of every node's first input edge), ``steps``, ``num_ops``,
    ``primitives``; every search cell has ``edges[e][k]`` (op k of global edge e).  ``empty_slots``: a support
    may hold -1 (no op in that slot; a node with fewer input edges than s in the NAS-Bench-201 space).
    """

    cell_type_names: tuple[str, ...] = CELL_TYPES
    empty_slots: bool = False

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """The network weights W (everything but architecture variables)."""
        for name, p in self.named_parameters():
            if not name.startswith("alphas"):
                yield p

    def cell_type_index(self, cell_type: Union[int, str]) -> int:
        """The index of a cell type given by name or index (``ValueError`` otherwise)."""
        names = self.cell_type_names
        if isinstance(cell_type, str):
            if cell_type not in names:
                raise ValueError(f"cell_type: must be one of {list(names)} or 0..{len(names) - 1}, got "
                                 f"{cell_type!r}")
            return names.index(cell_type)
        if cell_type not in range(len(names)):
            raise ValueError(f"cell_type: must be one of {list(names)} or 0..{len(names) - 1}, got {cell_type!r}")
        return int(cell_type)

    def candidate_ops(self, cell_type: Optional[Union[int, str]] = None,
                      node: Optional[int] = None) -> Iterator[CandidateOp]:
        """Every candidate op of every cell (optionally of one cell type / node), with its final BatchNorm2d."""
        ct = self.cell_type_index(cell_type) if cell_type is not None else None
        for ci, cell in enumerate(self.cells):
            t = self.cell_types[ci]
            if t < 0 or (ct is not None and t != ct):
                continue
            for i in range(self.steps):
                if node is not None and i != node:
                    continue
                for src in range(self.edges_per_node[i]):
                    e = self.offsets[i] + src
                    for k, op in enumerate(cell.edges[e]):
                        yield CandidateOp(ci, t, i, src, k, self.primitives[k], op, _final_bn(op))

    def unfreeze_node(self, cell_type: Union[int, str], node: int, scope: str = "all") -> int:
        """Make the BN gamma / beta of every candidate op of ``node`` in every cell of ``cell_type`` trainable.

        ``scope="all"``: every BN inside those ops (the reference's ``freeze_alpha``); ``"final"``: only each op's
        final BN (the ones Eq. 12 rescales).  Returns the number of BN layers released.
        """
        if scope not in ("all", "final"):
            raise ValueError(f"scope: must be 'all' or 'final', got {scope!r}")
        if not 0 <= node < self.steps:
            raise ValueError(f"node: must be in 0..{self.steps - 1}, got {node}")
        n = 0
        for c in self.candidate_ops(cell_type, node):
            bns = [m for m in c.module.modules() if isinstance(m, nn.BatchNorm2d)] if scope == "all" \
                else ([c.bn] if c.bn is not None else [])
            for bn in bns:
                if bn.affine:
                    bn.weight.requires_grad_(True)
                    bn.bias.requires_grad_(True)
                    n += 1
        return n

    def plan(self, support_host: SupportLike) -> SupportPlan:
        """The cached :class:`SupportPlan` of a host support (built and validated on first use)."""
        if isinstance(support_host, SupportPlan):
            return support_host
        if isinstance(support_host, torch.Tensor):
            if support_host.device.type != "cpu":
                raise ValueError("support_host: must be a CPU tensor (copy it once per recovery with "
                                 "istanas.ista.compressed.support_to_host); a device tensor would sync on every op")
            sup = support_host.to(torch.int64).contiguous()
        else:
            sup = torch.as_tensor(support_host, dtype=torch.int64)
        T = len(self.cell_type_names)
        if sup.dim() != 3 or sup.shape[0] != T or sup.shape[1] != self.steps or sup.shape[2] < 1:
            raise ValueError(f"support_host: expected shape [{T}, {self.steps}, s >= 1], got {tuple(sup.shape)}")
        plans = self.__dict__.setdefault("_plans", OrderedDict())
        key = bytes(sup.shape) + sup.numpy().tobytes()
        hit = plans.get(key)
        if hit is not None:
            plans.move_to_end(key)
            return hit
        K = self.num_ops
        ids = sup.tolist()
        nodes = []
        for t in range(T):
            per_t = []
            for i in range(self.steps):
                edges = self.edges_per_node[i]
                n_i = edges * K
                row = [k for k in ids[t][i] if not (self.empty_slots and k == -1)]
                if len(set(row)) != len(row):
                    raise ValueError(f"support_host: repeated candidate id in cell type {t}, node {i}: {row}")
                if not row and not self.empty_slots:
                    raise ValueError(f"support_host: cell type {t}, node {i} has no op")
                entries = []
                for j, k in enumerate(ids[t][i]):
                    if self.empty_slots and k == -1:
                        continue
                    if not 0 <= k < n_i:
                        raise ValueError(f"support_host: id {k} of cell type {t}, node {i} is outside 0..{n_i - 1} "
                                         f"(node {i} has {edges} input edges x {K} ops)")
                    src, op = divmod(int(k), K)
                    entries.append((j, self.offsets[i] + src, src, op))
                per_t.append(tuple(entries))
            nodes.append(tuple(per_t))
        plan = SupportPlan(key, tuple(sup.shape), tuple(nodes))
        plans[key] = plan
        if len(plans) > getattr(self, "_plan_cache", 8):
            plans.popitem(last=False)
        return plan


# ----------------------------------------------------------------------------------------------------- networks
class SuperNetBase(SearchNetParts, nn.Module):
    """Stem, ``layers`` :class:`SearchCell` s and a classifier; reductions at ``layers // 3`` and ``2 * layers // 3``.

    Args:
        C: initial channels (reference search: 16).  num_classes: outputs.  layers: cells (reference: 8).
        steps: intermediate nodes per cell (4).  multiplier: nodes concatenated as the cell output (4).
        stem_multiplier: stem width ``stem_multiplier * C`` (3).  primitives: candidate op names.
        in_channels: image channels.  onestage: the one-stage op variant (see module doc).
        auxiliary: an auxiliary head on cell ``2 * layers // 3`` (training mode returns ``(logits, aux)``): the
            :class:`spaces.networks.AuxiliaryHead` of the evaluation networks (CIFAR form, or the ImageNet form with
            ``stem="imagenet"``), so that a one-stage super-net's head maps 1:1 onto the exported network's.
        stem: ``"cifar"`` (conv3x3 to ``stem_multiplier * C`` + BN, full resolution: NetworkCIFAR's stem) or
            ``"imagenet"`` (NetworkImageNet's stride-8 ``stem0`` / ``stem1`` with the same module layout; the first
            cell then sees a reduced s0, and ``stem_multiplier`` is unused), for the one-stage ImageNet target net.
    """

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, primitives: Sequence[str] = ISTA_PRIMITIVES, in_channels: int = 3,
                 onestage: bool = False, auxiliary: bool = False, stem: str = "cifar"):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem: must be one of {list(STEMS)}, got {stem!r}")
        for name, v, lo in (("C", C, 1), ("num_classes", num_classes, 1), ("layers", layers, 1),
                            ("steps", steps, 1), ("multiplier", multiplier, 1), ("stem_multiplier", stem_multiplier, 1),
                            ("in_channels", in_channels, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")
        if multiplier > steps + 2:
            raise ValueError(f"multiplier: at most steps + 2 = {steps + 2} states can be concatenated, got {multiplier}")
        primitives = tuple(primitives)
        if not primitives:
            raise ValueError("primitives: need at least one candidate op")
        for p in primitives:
            if p not in DARTS_PRIMITIVES:
                raise ValueError(f"primitives: unknown op {p!r}; known: {list(DARTS_PRIMITIVES)}")
        if len(set(primitives)) != len(primitives):
            raise ValueError(f"primitives: duplicate names in {primitives}")
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.steps, self.multiplier = steps, multiplier
        self.primitives = primitives
        self.num_ops = len(primitives)
        self.num_edges = sum(2 + i for i in range(steps))
        self.offsets = edge_offsets(steps)
        self.edges_per_node = [2 + i for i in range(steps)]
        self.onestage, self.auxiliary = onestage, auxiliary
        self.drop_path_prob = 0.0
        self.in_channels, self.stem_multiplier, self.stem_type = in_channels, stem_multiplier, stem
        if stem == "imagenet":
            if C < 2 or C % 2:
                raise ValueError(f"C: the ImageNet stem needs an even C >= 2, got {C}")
            # NetworkImageNet's layout: stem0 (s2, s2) -> s0 at input / 4, stem1 (s2) -> s1 at input / 8
            self.stem0, self.stem1 = imagenet_stems(in_channels, C)
            C_pp, C_p, C_curr, reduction_prev = C, C, C, True
        else:
            C_curr = stem_multiplier * C
            self.stem = conv_stem(in_channels, C_curr)
            C_pp, C_p, C_curr, reduction_prev = C_curr, C_curr, C, False
        self.reduction_layers = (layers // 3, 2 * layers // 3)
        self.aux_layer = 2 * layers // 3
        cells, C_aux = [], None
        for i in range(layers):
            reduction = i in self.reduction_layers
            if reduction:
                C_curr *= 2
            cells.append(SearchCell(steps, multiplier, C_pp, C_p, C_curr, reduction, reduction_prev, primitives,
                                    onestage))
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
            if i == self.aux_layer:
                C_aux = C_p
        self.cells = nn.ModuleList(cells)
        self.cell_types = [1 if c.reduction else 0 for c in self.cells]
        if auxiliary:
            imagenet = stem == "imagenet"
            self.aux_head = AuxiliaryHead(C_aux, num_classes, pool=(5, 2) if imagenet else (5, 3),
                                          second_bn=not imagenet)
        else:
            self.aux_head = None
        self.classifier = nn.Linear(C_p, num_classes)

    # ---------------------------------------------------------------------------------------------- common
    def _stems(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s0, s1)``, the two inputs of the first cell."""
        if self.stem_type == "imagenet":
            s0 = self.stem0(x)
            return s0, self.stem1(s0)
        s = self.stem(x)
        return s, s

    def _head(self, s1: torch.Tensor) -> torch.Tensor:
        return self.classifier(s1.mean(dim=(2, 3)))   # global average pool (deterministic backward on CUDA)

    def forward_dense(self, x: torch.Tensor, weights: torch.Tensor):
        """Dense evaluation: every op of every edge, weighted by ``weights [T, num_edges, K]`` (any values).

        Returns logits ``[N, num_classes]`` (and ``aux`` in training mode with an auxiliary head).
        """
        T, E, K = len(CELL_TYPES), self.num_edges, self.num_ops
        if tuple(weights.shape) != (T, E, K):
            raise ValueError(f"weights: expected shape {(T, E, K)}, got {tuple(weights.shape)}")
        w = weights.unbind(0)
        s0, s1 = self._stems(x)
        aux = None
        for li, cell in enumerate(self.cells):
            s0, s1 = s1, cell.forward_dense(s0, s1, w[self.cell_types[li]], self.drop_path_prob)
            if li == self.aux_layer and self.aux_head is not None and self.training:
                aux = self.aux_head(s1)
        logits = self._head(s1)
        return (logits, aux) if aux is not None else logits


class SparseSuperNet(SuperNetBase):
    """The ISTA-NAS super-net: a forward runs only the support ops of every node (see the module doc).

    ``forward(x [N, C_in, H, W], support_host [T, steps, s] CPU LongTensor (or nested lists) of flat candidate
    ids, coef [T, steps, s] device tensor of Eq. 11) -> logits [N, num_classes]`` (``(logits, aux)`` in training
    mode with an auxiliary head).  ``support_host`` may also be a :class:`SupportPlan` from :meth:`plan`.
    """

    def __init__(self, *args, plan_cache: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self._plans: "OrderedDict[bytes, SupportPlan]" = OrderedDict()
        self._plan_cache = max(1, int(plan_cache))     # SearchNetParts.plan caches this many plans

    def forward(self, x: torch.Tensor, support_host: SupportLike, coef: torch.Tensor):
        plan = self.plan(support_host)
        if tuple(coef.shape) != plan.shape:
            raise ValueError(f"coef: expected shape {plan.shape} (as the support), got {tuple(coef.shape)}")
        T, S, s = plan.shape
        coefs = coef.to(x.dtype).reshape(-1).unbind(0)        # 0-dim views, no copy, no host read
        s0, s1 = self._stems(x)
        aux = None
        for li, cell in enumerate(self.cells):
            t = self.cell_types[li]
            s0, s1 = s1, cell.forward_sparse(s0, s1, plan.nodes[t], coefs, t * S * s, s, self.drop_path_prob)
            if li == self.aux_layer and self.aux_head is not None and self.training:
                aux = self.aux_head(s1)
        logits = self._head(s1)
        return (logits, aux) if aux is not None else logits


class DenseSuperNet(SuperNetBase):
    """First-order DARTS super-net: ``alphas [T, num_edges, K]`` (init ``1e-3 * N(0, 1)``), every edge a mixed op
    ``sum_k softmax(alphas[t, e])_k o_k(x)``.  ``forward(x) -> logits`` (``(logits, aux)`` with an auxiliary head
    in training mode)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(CELL_TYPES), self.num_edges, self.num_ops))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def edge_weights(self) -> torch.Tensor:
        """``softmax(alphas, -1)``, ``[T, num_edges, K]``."""
        return F.softmax(self.alphas, dim=-1)

    def forward(self, x: torch.Tensor):
        return self.forward_dense(x, self.edge_weights())

    def dense_forward_with_coefficients(self, x: torch.Tensor, coef_full: torch.Tensor):
        """The dense path with explicit weights ``coef_full [T, num_edges, K]`` instead of ``softmax(alphas)``."""
        return self.forward_dense(x, coef_full)


# --------------------------------------------------------------------------------------------------- helpers
def support_to_edge_weights(support_host: SupportLike, coef: torch.Tensor, steps: int, num_ops: int) -> torch.Tensor:
    """Scatter support coefficients into dense per-edge weights ``[T, num_edges, K]`` (zeros outside S).

    Flat id ``k`` of node i is (input edge ``k // K``, op ``k % K``); its global edge is ``edge_offsets[i] + k // K``.
    Differentiable w.r.t. ``coef``.
    """
    sup = torch.as_tensor(support_host, dtype=torch.int64).cpu()
    T, S, s = sup.shape
    E = sum(2 + i for i in range(steps))
    offs = torch.tensor(edge_offsets(steps), dtype=torch.int64).view(1, S, 1)
    flat = (offs + sup // num_ops) * num_ops + sup % num_ops                     # [T, S, s] ids into E * K
    out = coef.new_zeros(T, E * num_ops)
    out = out.scatter_add(1, flat.reshape(T, S * s).to(coef.device), coef.reshape(T, S * s))
    return out.view(T, E, num_ops)
