"""TE-NAS proxy super-nets (NB201, DARTS): every edge is the uniform average of its live ops, driven by a mask.

Chen, Gong & Wang, ICLR 2021 (TE-NAS) Sec. 3.3: the released code's softmax over alpha = 0 for live ops and
-1000 for pruned ones, i.e. ``edge(x) = (1 / |L|) sum_{k in L} o_k(x)`` over the live set ``L``; an edge without
live ops contributes nothing.  ``mask``: bool ``[cell types, edges, ops]`` (1 cell type for NB201, 2 for DARTS:
normal, reduce).  Ops come from ``spaces.ops``, stems / cell pre-processing / the NB201 stage layout from
``spaces.networks``.  Two proxies per space (:func:`build_proxies`): the NTK one (``ntk_width`` C, stem, input
``[N, 3, S, S]``) and the linear-region one (``lr_width`` = 1, no stem, input ``[N, 1, 3, 3]`` patches);
output logits ``[N, num_classes]``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from spaces.nb201 import NB201_EDGES
from spaces.networks import cell_preprocess, conv_stem, nb201_stages
from spaces.ops import DARTS_PRIMITIVES, NB201_PRIMITIVES, build_op

#: Candidate ops of the pruning ('none' is never a candidate), in the registries' order.
NB201_SEARCH_OPS: tuple[str, ...] = tuple(o for o in NB201_PRIMITIVES if o != "none")
DARTS_SEARCH_OPS: tuple[str, ...] = tuple(o for o in DARTS_PRIMITIVES if o != "none")

#: DARTS edges (input state j, intermediate node i) in the usual order: node i takes states 0..i+1.
DARTS_STEPS = 4
DARTS_EDGES: tuple[tuple[int, int], ...] = tuple((j, i) for i in range(DARTS_STEPS) for j in range(i + 2))
#: Edge index ranges of the intermediate nodes 2..5: (0, 2), (2, 5), (5, 9), (9, 14).
DARTS_GROUPS: tuple[tuple[int, int], ...] = tuple(
    (i * (i + 3) // 2, (i + 1) * (i + 4) // 2) for i in range(DARTS_STEPS))

Live = tuple[tuple[tuple[int, ...], ...], ...]  # [cell type][edge] -> live op indices


class MixedEdge(nn.Module):
    """One edge: the uniform average of its live ops, ``[N, C, H, W] -> [N, C, H/s, W/s]``."""

    def __init__(self, C: int, stride: int, ops: Sequence[str], space: str):
        super().__init__()
        self.ops = nn.ModuleList([build_op(o, C, stride, affine=True, space=space) for o in ops])
        self.zero = build_op("none", C, stride, affine=True, space=space)

    def forward(self, x: torch.Tensor, live: tuple[int, ...]) -> torch.Tensor:
        if not live:
            return self.zero(x)
        out = self.ops[live[0]](x)
        for i in live[1:]:
            out = out + self.ops[i](x)
        return out if len(live) == 1 else out / len(live)


class MaskedSuperNet(nn.Module):
    """Shared mask handling: ``mask`` is a bool array [cell types, edges, ops] of live ops."""

    ops: tuple[str, ...]
    num_edges: int
    num_cell_types: int

    def _init_mask(self) -> None:
        self.set_mask(np.ones((self.num_cell_types, self.num_edges, len(self.ops)), dtype=bool))

    def set_mask(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        shape = (self.num_cell_types, self.num_edges, len(self.ops))
        if mask.shape != shape:
            raise ValueError(f"mask: expected shape {shape}, got {mask.shape}")
        self.mask = mask.copy()
        self._live: Live = tuple(tuple(tuple(int(i) for i in np.flatnonzero(mask[t, e]))
                                       for e in range(self.num_edges)) for t in range(self.num_cell_types))


class NB201MixedCell(nn.Module):
    """NAS-Bench-201 cell of mixed edges: node j = sum_i edge(i->j)(node i), output node 3; ``[N, C, H, W]``."""

    def __init__(self, C: int, ops: Sequence[str]):
        super().__init__()
        self.edges = nn.ModuleList([MixedEdge(C, 1, ops, "nb201") for _ in NB201_EDGES])

    def forward(self, x: torch.Tensor, live: tuple[tuple[int, ...], ...]) -> torch.Tensor:
        nodes = [x]
        for to in (1, 2, 3):
            outs = [self.edges[e](nodes[frm], live[e]) for e, (frm, t) in enumerate(NB201_EDGES)
                    if t == to and live[e]]
            node = outs[0] if outs else torch.zeros_like(x)
            for o in outs[1:]:
                node = node + o
            nodes.append(node)
        return nodes[3]


class NB201SuperNet(MaskedSuperNet):
    """TinyNetwork-like NB201 super-net: [stem] cell(C) {ResBlock(/2) cell(2C) ResBlock(/2) cell(4C)}, head.

    ``stages`` = 3 gives the NTK proxy (TE-NAS ``C=3, N=1``), ``stages`` = 1 without stem the one-cell linear
    region proxy (``C=1``).  Input [N, in_channels, H, W] -> logits [N, num_classes].
    """

    num_cell_types = 1
    num_edges = len(NB201_EDGES)

    def __init__(self, C: int = 3, num_classes: int = 10, stages: int = 3, stem: bool = True,
                 in_channels: int = 3, ops: Sequence[str] = NB201_SEARCH_OPS):
        super().__init__()
        if stages not in (1, 2, 3):
            raise ValueError(f"stages: must be 1, 2 or 3, got {stages}")
        if not stem and in_channels != C:
            raise ValueError(f"in_channels: without a stem the input must have C={C} channels, got {in_channels}")
        self.ops = tuple(ops)
        self.stem = conv_stem(in_channels, C) if stem else nn.Identity()
        layers, c = nb201_stages(C, 1, lambda width: NB201MixedCell(width, self.ops), stages)
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(c, num_classes)
        self._init_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for layer in self.layers:
            h = layer(h, self._live[0]) if isinstance(layer, NB201MixedCell) else layer(h)
        h = self.lastact(h)
        return self.classifier(h.mean(dim=(2, 3)))


class DartsMixedCell(nn.Module):
    """DARTS search cell with mixed edges: (s0, s1) -> concat of the 4 intermediate nodes, [N, 4C, H/s, W/s]."""

    def __init__(self, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool, ops: Sequence[str]):
        super().__init__()
        self.reduction = reduction
        self.pre0, self.pre1 = cell_preprocess(C_pp, C_p, C, reduction_prev)
        self.edges = nn.ModuleList([MixedEdge(C, 2 if reduction and j < 2 else 1, ops, "darts")
                                    for j, _ in DARTS_EDGES])

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, live: tuple[tuple[int, ...], ...]) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for i, (start, end) in enumerate(DARTS_GROUPS):
            outs = [self.edges[start + j](states[j], live[start + j]) for j in range(end - start)
                    if live[start + j]]
            if outs:
                node = outs[0]
                for o in outs[1:]:
                    node = node + o
            else:
                node = self.edges[start].zero(states[0])
            states.append(node)
        return torch.cat(states[-DARTS_STEPS:], dim=1)


class DartsSuperNet(MaskedSuperNet):
    """NASNetwork-DARTS-like super-net (TE-NAS ``C=1, N=1, depth=2``): [stem] normal cell(C), reduction
    cell(2C), ... BN-ReLU, GAP, FC.  ``mask[0]`` drives the normal cells and ``mask[1]`` the reduction cells.
    Input [N, in_channels, H, W] -> logits [N, num_classes].
    """

    num_cell_types = 2
    num_edges = len(DARTS_EDGES)

    def __init__(self, C: int = 1, num_classes: int = 10, layers: int = 2, stem: bool = True,
                 in_channels: int = 3, stem_multiplier: int = 1, ops: Sequence[str] = DARTS_SEARCH_OPS):
        super().__init__()
        if not 1 <= layers <= 5:
            raise ValueError(f"layers: must be in 1..5, got {layers}")
        self.ops = tuple(ops)
        if stem:
            c_stem = C * stem_multiplier
            self.stem: nn.Module = conv_stem(in_channels, c_stem)
        else:
            c_stem = in_channels
            self.stem = nn.Identity()
        # N = 1: channels [C, 2C, 2C, 4C, 4C], reductions at layers 1 and 3 (TE-NAS NASNetworkDARTS)
        chans = [C, 2 * C, 2 * C, 4 * C, 4 * C][:layers]
        reds = [False, True, False, True, False][:layers]
        c_pp, c_p, red_prev = c_stem, c_stem, False
        cells = []
        for c, red in zip(chans, reds):
            cells.append(DartsMixedCell(c_pp, c_p, c, red, red_prev, self.ops))
            c_pp, c_p, red_prev = c_p, DARTS_STEPS * c, red
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_p), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(c_p, num_classes)
        self._init_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self._live[1 if cell.reduction else 0])
        return self.classifier(self.lastact(s1).mean(dim=(2, 3)))


def build_proxies(cfg: Any) -> tuple[MaskedSuperNet, MaskedSuperNet]:
    """(NTK proxy, linear-region proxy) super-nets for ``cfg.space`` on CPU; ``cfg`` is a resolved
    ``istanas.tenas.job.TenasConfig`` (reads space, ops, ntk_width, lr_width, num_classes)."""
    if cfg.space == "nb201":
        ops = tuple(cfg.ops) if cfg.ops else NB201_SEARCH_OPS
        ntk = NB201SuperNet(C=cfg.ntk_width, num_classes=cfg.num_classes, stages=3, stem=True, in_channels=3,
                            ops=ops)
        lr = NB201SuperNet(C=cfg.lr_width, num_classes=cfg.num_classes, stages=1, stem=False, in_channels=1,
                           ops=ops)
    else:
        ops = tuple(cfg.ops) if cfg.ops else DARTS_SEARCH_OPS
        ntk = DartsSuperNet(C=cfg.ntk_width, num_classes=cfg.num_classes, layers=2, stem=True, in_channels=3,
                            ops=ops)
        lr = DartsSuperNet(C=cfg.lr_width, num_classes=cfg.num_classes, layers=2, stem=False, in_channels=1,
                           ops=ops)
    return ntk, lr


__all__ = ["NB201_SEARCH_OPS", "DARTS_SEARCH_OPS", "DARTS_STEPS", "DARTS_EDGES", "DARTS_GROUPS", "MixedEdge",
           "MaskedSuperNet", "NB201MixedCell", "NB201SuperNet", "DartsMixedCell", "DartsSuperNet", "build_proxies"]
