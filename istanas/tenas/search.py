"""TE-NAS pruning search ("prune-by-importance") on the NAS-Bench-201 and DARTS cell spaces.

Chen, Gong & Wang, ICLR 2021, Sec. 3.3 / Algorithm 1.  Start from the super-net with every candidate op on every
edge ('none' is never a candidate, as in the released code); each round, for every live op of every edge with
more than one live op, measure the NTK condition number kappa_N (Eq. 4) and the number of linear regions R_N
(Eq. 5) of the super-net *with that op removed*; rank all candidates by the change in kappa and in R, sum the two
ranks and prune, on every edge, the ``prune_number`` ops with the lowest sum.  Stop at one op per edge
(NAS-Bench-201); for DARTS then keep two input edges per intermediate node by the same rank test.

Super-nets (built here from the op registries of ``spaces.ops``; tenas.md Sec. 0):
  * every edge is the **uniform average of its live ops** (the released code's softmax over alpha = 0 for live
    ops and -1000 for pruned ones); an edge without live ops contributes nothing;
  * two proxy networks per space, one for each indicator:

    ========  ===========================================================  ======================================
    space     NTK network (``ntk_width`` C)                                 linear-region network (``lr_width``)
    ========  ===========================================================  ======================================
    nb201     stem conv3x3(3->C)+BN, cell(C), ResBlock(C->2C, /2),          one cell with 1 channel, BN-ReLU, GAP,
              cell(2C), ResBlock(2C->4C, /2), cell(4C), BN-ReLU, GAP, FC    FC (no stem) on 1x3x3 patches
    darts     stem conv3x3(3->C)+BN, normal cell(C), reduction cell(2C),   the same two cells without stem, on
              BN-ReLU, GAP, FC (C = 1, 8 output channels)                  1x3x3 patches
    ========  ===========================================================  ======================================

Measurement protocol per candidate (tenas.md Sec. 1-3): ``repeats`` (3) repeats; in each the relative drops
``dK = round((K_parent - K_child)/K_parent, 3)`` and ``dR = round((R_parent - R_child)/R_parent, 3)`` are
taken, then averaged.  Dense ranks: ``dK`` descending (removing the op lowers kappa the most -> rank 0),
``dR`` ascending (removing it costs the fewest regions -> rank 0); values are compared after rounding to
``precision`` significant digits.  Score = sum of ranks (ranks global over all cells/edges/ops); on each edge
the lowest scores are pruned, ties broken by the (stable) order of the kappa-sorted list.

Initialisation and data per repeat (``TenasConfig.init``; tenas.md Sec. 1.7 / 2.2):
  * ``"intended"`` (default): in repeat r every candidate of the round and the parent share one fresh
    Kaiming-normal init (fan_out for the NTK net, fan_in for the LR net) and one data batch.  This is the
    authors' intent (fresh init per repeat, the NTK being an expectation over initialisations) and, by using
    common random numbers for parent and children, lowers the variance of the rank comparisons (issue #8 of the
    released code reports large run-to-run variance).  The parent is then measured once per repeat, not once
    per candidate: 3 x (1 + #candidates) NTK evaluations per round instead of 6 x #candidates.
  * ``"released"``: what the released launch script executes: PyTorch default init (the re-init is a no-op),
    the NTK net built once per round, a fresh batch for every (candidate, repeat) with the parent re-measured on
    it; the LR net freshly built per candidate, new patches per repeat.
Everything is seeded from ``TenasConfig.seed`` (``numpy.random.SeedSequence`` on the measurement's key), so a
search is repeatable on a given device.

Data: ``images`` is a float batch [N, 3, H, W] of real training images, normalised as for training (mean/std).
NTK batches: ``ntk_batch`` images drawn without replacement, random horizontal flip and random crop with
``input_size // 8`` zero padding.  LR samples: ``lr_samples`` random 3x3 crops of one random channel
(``RandomCrop(3)`` + ``RandChannel(1)``), pushed through in BN batches of ``lr_batch``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from istanas.config import ConfigError
from istanas.data import DataConfig
from istanas.tenas.indicators import BN_COUPLINGS, init_weights, linear_regions_once, ntk_kappa
from spaces.ops import (DARTS_PRIMITIVES, NB201_PRIMITIVES, FactorizedReduce, ReLUConvBN, ResNetBasicBlock,
                        build_op)

# ----------------------------------------------------------------------------------------------------------
# spaces
# ----------------------------------------------------------------------------------------------------------
#: Candidate ops of the pruning ('none' is never a candidate), in the registries' order.
NB201_SEARCH_OPS: tuple[str, ...] = tuple(o for o in NB201_PRIMITIVES if o != "none")
DARTS_SEARCH_OPS: tuple[str, ...] = tuple(o for o in DARTS_PRIMITIVES if o != "none")

#: NAS-Bench-201 edges (from, to) in the arch string's order |1<-0|+|2<-0|2<-1|+|3<-0|3<-1|3<-2|.
NB201_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))

#: DARTS edges (input state j, intermediate node i) in the usual order: node i takes states 0..i+1.
DARTS_STEPS = 4
DARTS_EDGES: tuple[tuple[int, int], ...] = tuple((j, i) for i in range(DARTS_STEPS) for j in range(i + 2))
#: Edge index ranges of the intermediate nodes 2..5: (0, 2), (2, 5), (5, 9), (9, 14).
DARTS_GROUPS: tuple[tuple[int, int], ...] = tuple(
    (i * (i + 3) // 2, (i + 1) * (i + 4) // 2) for i in range(DARTS_STEPS))

#: Op order and edge order of the keys of ``zc_nasbench201.json`` (NASLib): a key "(a, b, c, d, e, f)" gives
#: the op index of edges 0->1, 0->2, 0->3, 1->2, 1->3, 2->3 in this op order (see shared/data/README.md).
TABLE_OP_ORDER: tuple[str, ...] = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
TABLE_EDGE_ORDER: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
TABLE_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "ImageNet16-120")

DATASET_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "ImageNet16-120": 120, "imagenet": 1000}


def parse_arch_str(arch: str) -> list[tuple[str, int, int]]:
    """``"|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"`` -> [(op, from, to)] in :data:`NB201_EDGES` order."""
    if not isinstance(arch, str):
        raise ValueError(f"arch: expected a string, got {type(arch).__name__}")
    nodes = arch.split("+")
    if len(nodes) != 3:
        raise ValueError(f"arch: {arch!r} does not have 3 nodes separated by '+'")
    out = []
    for to, node in enumerate(nodes, start=1):
        parts = [p for p in node.strip().strip("|").split("|")]
        if len(parts) != to:
            raise ValueError(f"arch: node {to} of {arch!r} must have {to} inputs")
        for frm, part in enumerate(parts):
            op, sep, idx = part.partition("~")
            if sep != "~" or idx != str(frm) or op not in NB201_PRIMITIVES:
                raise ValueError(f"arch: bad edge {part!r} in {arch!r} (expected op~{frm}, op in {NB201_PRIMITIVES})")
            out.append((op, frm, to))
    return out


def make_arch_str(ops: Sequence[str]) -> str:
    """Six op names in :data:`NB201_EDGES` order -> the NAS-Bench-201 arch string."""
    if len(ops) != len(NB201_EDGES):
        raise ValueError(f"ops: expected {len(NB201_EDGES)} op names, got {len(ops)}")
    nodes: list[list[str]] = [[], [], []]
    for op, (frm, to) in zip(ops, NB201_EDGES):
        nodes[to - 1].append(f"{op}~{frm}")
    return "+".join("|" + "|".join(n) + "|" for n in nodes)


def _parse_table_key(key: str) -> list[int]:
    text = key.strip()
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError(f"key: {key!r} is not a tuple '(a, b, c, d, e, f)'")
    try:
        idx = [int(t) for t in text[1:-1].split(",")]
    except ValueError:
        raise ValueError(f"key: {key!r} is not a tuple of integers") from None
    if len(idx) != 6 or any(not 0 <= i < len(TABLE_OP_ORDER) for i in idx):
        raise ValueError(f"key: {key!r} must hold 6 op indices in 0..{len(TABLE_OP_ORDER) - 1}")
    return idx


def table_key_to_arch_str(key: str) -> str:
    """Map a ``zc_nasbench201.json`` key to the NAS-Bench-201 arch string.

    The key lists op indices in :data:`TABLE_OP_ORDER` (skip_connect, none, nor_conv_3x3, nor_conv_1x1,
    avg_pool_3x3) for the edges in :data:`TABLE_EDGE_ORDER` (0->1, 0->2, 0->3, 1->2, 1->3, 2->3), which differs
    from the arch string's edge order (0->1, 0->2, 1->2, 0->3, 1->3, 2->3).  E.g. ``"(0, 2, 3, 2, 3, 1)"`` ->
    ``"|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|"``.
    """
    idx = _parse_table_key(key)
    by_edge = {edge: TABLE_OP_ORDER[i] for edge, i in zip(TABLE_EDGE_ORDER, idx)}
    return make_arch_str([by_edge[e] for e in NB201_EDGES])


def arch_str_to_table_key(arch: str) -> str:
    """Inverse of :func:`table_key_to_arch_str` (the key formatted as in the JSON file, ``"(a, b, ...)"``)."""
    by_edge = {(frm, to): op for op, frm, to in parse_arch_str(arch)}
    return "(" + ", ".join(str(TABLE_OP_ORDER.index(by_edge[e])) for e in TABLE_EDGE_ORDER) + ")"


def load_nb201_table(path: str, dataset: str = "cifar10") -> dict[str, dict[str, float]]:
    """Read ``zc_nasbench201.json`` -> {arch string: {"val_accuracy", "params", "flops"}} for ``dataset``."""
    if not os.path.isfile(path):
        raise ValueError(f"table_path: file not found: {path}")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if dataset not in data:
        raise ValueError(f"dataset: {dataset!r} not in the table (has {sorted(data)})")
    out = {}
    for key, rec in data[dataset].items():
        out[table_key_to_arch_str(key)] = {
            "val_accuracy": float(rec["val_accuracy"]),
            "params": float(rec["params"]["score"]) if isinstance(rec.get("params"), dict) else float("nan"),
            "flops": float(rec["flops"]["score"]) if isinstance(rec.get("flops"), dict) else float("nan"),
        }
    return out


# ----------------------------------------------------------------------------------------------------------
# super-nets
# ----------------------------------------------------------------------------------------------------------
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


class _MaskedNet(nn.Module):
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


class NB201Cell(nn.Module):
    """NAS-Bench-201 cell: node j = sum_i edge(i->j)(node i), output node 3; ``[N, C, H, W]`` preserved."""

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


class NB201SuperNet(_MaskedNet):
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
        self.stem = (nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
                     if stem else nn.Identity())
        layers: list[nn.Module] = []
        c = C
        for s in range(stages):
            if s > 0:
                layers.append(ResNetBasicBlock(c, 2 * c, stride=2))
                c *= 2
            layers.append(NB201Cell(c, self.ops))
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(c, num_classes)
        self._init_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for layer in self.layers:
            h = layer(h, self._live[0]) if isinstance(layer, NB201Cell) else layer(h)
        h = self.lastact(h)
        return self.classifier(h.mean(dim=(2, 3)))


class DartsCell(nn.Module):
    """DARTS search cell with mixed edges: (s0, s1) -> concat of the 4 intermediate nodes, [N, 4C, H/s, W/s]."""

    def __init__(self, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool, ops: Sequence[str]):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0)
        self.pre1 = ReLUConvBN(C_p, C, 1, 1, 0)
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


class DartsSuperNet(_MaskedNet):
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
            self.stem: nn.Module = nn.Sequential(nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False),
                                                 nn.BatchNorm2d(c_stem))
        else:
            c_stem = in_channels
            self.stem = nn.Identity()
        # N = 1: channels [C, 2C, 2C, 4C, 4C], reductions at layers 1 and 3 (TE-NAS NASNetworkDARTS)
        chans = [C, 2 * C, 2 * C, 4 * C, 4 * C][:layers]
        reds = [False, True, False, True, False][:layers]
        c_pp, c_p, red_prev = c_stem, c_stem, False
        cells = []
        for c, red in zip(chans, reds):
            cells.append(DartsCell(c_pp, c_p, c, red, red_prev, self.ops))
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


# ----------------------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TenasConfig:
    """TE-NAS search / scoring settings.  ``None`` = the released code's value for ``space`` and ``dataset``."""

    space: str = "nb201"                 # "nb201" | "darts"
    ops: list[str] | None = None         # candidate ops (a subset of the space's, no 'none'); None = all
    dataset: str = "cifar10"             # cifar10 | cifar100 | ImageNet16-120 | imagenet (classes, defaults)
    num_classes: int | None = None       # 10 / 100 / 120 / 1000 from dataset
    input_size: int = 32                 # NTK image side (images are resized to it; ImageNet: 32 as released)
    ntk_batch: int | None = None         # 72 (nb201), 14 (darts, cifar), 24 (darts, imagenet)
    ntk_width: int | None = None         # C of the NTK proxy: 3 (nb201), 1 (darts)
    augment: bool = True                 # flip + padded random crop of the NTK batch
    lr_samples: int = 3000               # patches per linear-region measurement (3 x 1000)
    lr_batch: int = 1000                 # BN batch of the linear-region forward
    lr_input_size: int = 3               # side of the one-channel patches
    lr_width: int = 1                    # C of the linear-region proxy
    repeats: int = 3
    seed: int = 0
    prune_number: int | None = None      # ops pruned per edge per round: 1 (nb201), 3 (darts cifar), 2 (imagenet)
    init: str = "intended"               # "intended" (fresh Kaiming per repeat) | "released" (default init)
    param_filter: str = "weight"         # NTK parameters: "weight" (names containing 'weight') | "all"
    precision: int = 3                   # significant digits compared when ranking
    nan_value: float = 1e5               # kappa of a NaN / singular NTK
    bn_coupling: str = "batch"           # NTK: "batch" (paper: gradients through BN batch stats) | "frozen" (fast)
    jac_chunk: int | None = None         # vmap chunk_size: None = auto (8 on CPU if coupled, else whole), 0 = whole
    table_path: str | None = None        # zc_nasbench201.json: accuracy lookup (+ correlations)
    correlation_archs: int = 0           # > 0: also run correlation_study on that many table archs
    device: str = "cpu"

    def validate(self) -> "TenasConfig":
        """Raise ``ConfigError`` (a ``ValueError``) naming the bad field; returns ``self``."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.space in ("nb201", "darts"), f"space: {self.space!r} is not 'nb201' or 'darts'")
        if self.ops is not None:
            allowed = NB201_SEARCH_OPS if self.space == "nb201" else DARTS_SEARCH_OPS
            need(len(self.ops) >= 1 and len(set(self.ops)) == len(self.ops) and set(self.ops) <= set(allowed),
                 f"ops: {self.ops!r} must be distinct candidate ops of space {self.space!r}: {list(allowed)}")
        need(self.dataset in DATASET_CLASSES, f"dataset: {self.dataset!r} is not one of {list(DATASET_CLASSES)}")
        need(self.num_classes is None or self.num_classes >= 1, f"num_classes: must be >= 1, got {self.num_classes}")
        need(self.input_size >= 4, f"input_size: must be >= 4, got {self.input_size}")
        need(self.ntk_batch is None or self.ntk_batch >= 2, f"ntk_batch: must be >= 2, got {self.ntk_batch}")
        need(self.ntk_width is None or self.ntk_width >= 1, f"ntk_width: must be >= 1, got {self.ntk_width}")
        need(self.lr_samples >= 2, f"lr_samples: must be >= 2, got {self.lr_samples}")
        need(self.lr_batch >= 2, f"lr_batch: must be >= 2, got {self.lr_batch}")
        need(1 <= self.lr_input_size <= self.input_size,
             f"lr_input_size: must be in 1..input_size ({self.input_size}), got {self.lr_input_size}")
        need(self.lr_width == 1, f"lr_width: the linear-region proxy takes one-channel patches, must be 1, "
                                 f"got {self.lr_width}")
        need(self.repeats >= 1, f"repeats: must be >= 1, got {self.repeats}")
        need(self.prune_number is None or self.prune_number >= 1,
             f"prune_number: must be >= 1, got {self.prune_number}")
        need(self.init in ("intended", "released"), f"init: {self.init!r} is not 'intended' or 'released'")
        need(self.param_filter in ("weight", "all"), f"param_filter: {self.param_filter!r} is not 'weight' or 'all'")
        need(1 <= self.precision <= 12, f"precision: must be in 1..12, got {self.precision}")
        need(math.isfinite(self.nan_value) and self.nan_value > 0, f"nan_value: must be > 0, got {self.nan_value}")
        need(self.bn_coupling in BN_COUPLINGS,
             f"bn_coupling: {self.bn_coupling!r} is not one of {list(BN_COUPLINGS)}")
        need(self.jac_chunk is None or self.jac_chunk >= 0, f"jac_chunk: must be >= 0, got {self.jac_chunk}")
        need(self.correlation_archs >= 0, f"correlation_archs: must be >= 0, got {self.correlation_archs}")
        if self.table_path is not None:
            need(self.space == "nb201", "table_path: the NAS-Bench-201 table applies to space 'nb201' only")
            need(self.dataset in TABLE_DATASETS, f"dataset: {self.dataset!r} has no column in the NAS-Bench-201 "
                                                 f"table (one of {list(TABLE_DATASETS)})")
            need(os.path.isfile(self.table_path), f"table_path: file not found: {self.table_path}")
        need(self.correlation_archs == 0 or self.table_path is not None,
             "correlation_archs: needs table_path (the accuracy table)")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"device: {self.device!r} is not a torch device") from None
        need(dev.type != "cuda" or torch.cuda.is_available(), f"device: {self.device!r} but CUDA is not available")
        return self

    def resolved(self) -> "TenasConfig":
        """A validated copy with every ``None`` default filled in from ``space`` and ``dataset``."""
        self.validate()
        imagenet = self.dataset == "imagenet"
        nb = self.space == "nb201"
        return dataclasses.replace(
            self,
            num_classes=self.num_classes or DATASET_CLASSES[self.dataset],
            ntk_batch=self.ntk_batch or (72 if nb else (24 if imagenet else 14)),
            ntk_width=self.ntk_width or (3 if nb else 1),
            prune_number=self.prune_number or (1 if nb else (2 if imagenet else 3)),
            # on CPU the vmapped VJP over all B coupled cotangents is memory-bound; chunks of 8 run fastest there
            jac_chunk=(self.jac_chunk if self.jac_chunk is not None
                       else (8 if torch.device(self.device).type == "cpu" and self.bn_coupling == "batch" else 0)),
        )


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------
def digits_images(size: int = 32, n: int | None = None) -> torch.Tensor:
    """Fallback real images: scikit-learn's 1,797 8x8 digits, upscaled to ``size``, 3 channels, standardised.

    Returns [N, 3, size, size] float32 (mean 0, std 1 over the set).
    """
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[:n].unsqueeze(1)  # [N, 1, 8, 8]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std().clamp_min(1e-6)
    return x.expand(-1, 3, -1, -1).contiguous()


def prepare_images(images: torch.Tensor | None, size: int, device: torch.device | str) -> torch.Tensor:
    """Check and resize a real image batch [N, 3 (or 1), H, W] -> float32 [N, 3, size, size] on ``device``."""
    if images is None:
        images = digits_images(size)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor [N, 3, H, W], got {shape}")
    if images.shape[0] < 2:
        raise ValueError(f"images: need at least 2 images, got {images.shape[0]}")
    x = images.to(device=device, dtype=torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=bool(x.shape[-1] > size))
    if not torch.isfinite(x).all():
        raise ValueError("images: contain non-finite values")
    return x.contiguous()


_SCORE_ROUND = 1_000_000  # round id of the (init, data) units of per-architecture scoring


def _key_seed(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


def sample_ntk_batch(images: torch.Tensor, batch: int, seed: int, augment: bool = True) -> torch.Tensor:
    """``batch`` images without replacement [B, 3, S, S]: random flip and random crop with ``S // 8`` padding."""
    n, c, h, w = images.shape
    if batch > n:
        raise ValueError(f"ntk_batch: {batch} is larger than the number of images ({n})")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:batch]
    x = images[idx.to(images.device)]
    if not augment:
        return x
    flip = (torch.rand(batch, generator=gen) < 0.5).to(images.device)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = max(h // 8, 0)
    if pad == 0:
        return x
    oy = torch.randint(0, 2 * pad + 1, (batch,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (batch,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)).to(images.device)  # [B, H]
    cols = (ox[:, None] + torch.arange(w)).to(images.device)  # [B, W]
    xp = F.pad(x, (pad, pad, pad, pad))
    b = torch.arange(batch, device=images.device)[:, None, None, None]
    ch = torch.arange(c, device=images.device)[None, :, None, None]
    return xp[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


def sample_patches(images: torch.Tensor, num: int, size: int, seed: int) -> torch.Tensor:
    """``num`` random one-channel ``size x size`` crops [num, 1, size, size] (RandomCrop + RandChannel(1))."""
    n, c, h, w = images.shape
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (num,), generator=gen)
    ch = torch.randint(0, c, (num,), generator=gen)
    oy = torch.randint(0, h - size + 1, (num,), generator=gen)
    ox = torch.randint(0, w - size + 1, (num,), generator=gen)
    ar = torch.arange(size)
    dev = images.device
    rows = (oy[:, None, None] + ar[None, :, None]).to(dev)
    cols = (ox[:, None, None] + ar[None, None, :]).to(dev)
    return images[idx.to(dev)[:, None, None], ch.to(dev)[:, None, None], rows, cols].unsqueeze(1)


# ----------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------
def build_proxies(cfg: TenasConfig) -> tuple[_MaskedNet, _MaskedNet]:
    """(NTK proxy, linear-region proxy) super-nets for ``cfg.space`` (``cfg`` resolved), on CPU."""
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


class _Measurer:
    """Owns the two proxies, the data and the seeded (init, batch) units; returns 0-dim device tensors."""

    def __init__(self, cfg: TenasConfig, images: torch.Tensor | None):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.images = prepare_images(images, cfg.input_size, self.device)
        if cfg.ntk_batch > self.images.shape[0]:
            raise ValueError(f"ntk_batch: {cfg.ntk_batch} is larger than the number of images "
                             f"({self.images.shape[0]})")
        ntk, lr = build_proxies(cfg)
        self.ntk_net, self.lr_net = ntk.to(self.device), lr.to(self.device)
        self.ntk_init, self.lr_init = (("kaiming_fanout", "kaiming_fanin") if cfg.init == "intended"
                                       else ("default", "default"))
        self._ntk_key: tuple | None = None
        self._lr_key: tuple | None = None
        self._batches: dict[tuple, torch.Tensor] = {}

    def _data(self, kind: int, key: tuple) -> torch.Tensor:
        full = (kind,) + key
        if full not in self._batches:
            if len(self._batches) > 64:
                self._batches.clear()
            seed = _key_seed(self.cfg.seed, 1, *full)
            if kind == 0:
                self._batches[full] = sample_ntk_batch(self.images, self.cfg.ntk_batch, seed, self.cfg.augment)
            else:
                self._batches[full] = sample_patches(self.images, self.cfg.lr_samples, self.cfg.lr_input_size, seed)
        return self._batches[full]

    def kappa(self, mask: np.ndarray, init_key: tuple, batch_key: tuple) -> torch.Tensor:
        if init_key != self._ntk_key:
            init_weights(self.ntk_net, self.ntk_init, _key_seed(self.cfg.seed, 2, *init_key))
            self._ntk_key = init_key
        self.ntk_net.set_mask(mask)
        return ntk_kappa(self.ntk_net, self._data(0, batch_key), param_filter=self.cfg.param_filter,
                         bn_coupling=self.cfg.bn_coupling, chunk_size=self.cfg.jac_chunk or None,
                         nan_value=self.cfg.nan_value)

    def regions(self, mask: np.ndarray, init_key: tuple, batch_key: tuple) -> torch.Tensor:
        if init_key != self._lr_key:
            init_weights(self.lr_net, self.lr_init, _key_seed(self.cfg.seed, 3, *init_key))
            self._lr_key = init_key
        self.lr_net.set_mask(mask)
        return linear_regions_once(self.lr_net, self._data(1, batch_key), chunk=self.cfg.lr_batch)

    def units(self, rnd: int, r: int, c: int) -> tuple[tuple, tuple, tuple, tuple]:
        """(NTK init key, NTK batch key, LR init key, LR batch key) of candidate ``c`` in repeat ``r``."""
        if self.cfg.init == "intended":
            return (rnd, r), (rnd, r), (rnd, r), (rnd, r)
        return (rnd,), (rnd, r, c), (rnd, c), (rnd, r, c)

    def deltas(self, rnd: int, parent: np.ndarray, children: Sequence[np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Mean over repeats of round((P - C)/P, 3) for kappa and regions; plus the parents' mean values."""
        n, reps = len(children), self.cfg.repeats
        pk: dict[tuple, torch.Tensor] = {}
        pr: dict[tuple, torch.Tensor] = {}
        kp_list, kc_list, rp_list, rc_list = [], [], [], []
        for r in range(reps):
            for c, child in enumerate(children):
                ki, kb, li, lb = self.units(rnd, r, c)
                if (ki, kb) not in pk:
                    pk[(ki, kb)] = self.kappa(parent, ki, kb)
                kp_list.append(pk[(ki, kb)])
                kc_list.append(self.kappa(child, ki, kb))
                if (li, lb) not in pr:
                    pr[(li, lb)] = self.regions(parent, li, lb)
                rp_list.append(pr[(li, lb)])
                rc_list.append(self.regions(child, li, lb))
        # one host transfer per round
        vals = torch.stack([torch.stack(v).double() for v in (kp_list, kc_list, rp_list, rc_list)]).cpu().numpy()
        kp, kc, rp, rc = (v.reshape(reps, n) for v in vals)
        d_k = np.round((kp - kc) / kp, 3).mean(axis=0)
        d_r = np.round((rp - rc) / rp, 3).mean(axis=0)
        return d_k, d_r, float(kp.mean()), float(rp.mean())

    def score(self, mask: np.ndarray, key: int = 0) -> tuple[float, float]:
        """Mean (kappa, regions) of one fixed architecture over the repeats (units shared across archs)."""
        ks, rs = [], []
        for r in range(self.cfg.repeats):
            rnd = _SCORE_ROUND + key
            ki, kb, li, lb = self.units(rnd, r, 0)
            if self.cfg.init == "released":  # one default init for all repeats, fresh data per repeat
                ki, li = (rnd,), (rnd,)
            ks.append(self.kappa(mask, ki, kb))
            rs.append(self.regions(mask, li, lb))
        k = torch.stack(ks).double().mean()
        rr = torch.stack(rs).double().mean()
        return float(k), float(rr)


# ----------------------------------------------------------------------------------------------------------
# ranking
# ----------------------------------------------------------------------------------------------------------
def round_sig(x: np.ndarray, digits: int = 3) -> np.ndarray:
    """Round each value to ``digits`` significant digits (the released ``round_to``); 0 stays 0."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    nz = (x != 0) & np.isfinite(x)
    mag = np.floor(np.log10(np.abs(x[nz])))
    scale = 10.0 ** (digits - 1 - mag)
    out[nz] = np.round(x[nz] * scale) / scale
    out[~np.isfinite(x)] = x[~np.isfinite(x)]
    return out


def dense_rank(values: np.ndarray, descending: bool) -> np.ndarray:
    """Dense ranks from 0: equal values share a rank, the next distinct value gets rank + 1."""
    values = np.asarray(values, dtype=np.float64)
    uniq = np.unique(values)
    if descending:
        uniq = uniq[::-1]
    pos = {float(v): i for i, v in enumerate(uniq)}
    return np.array([pos[float(v)] for v in values], dtype=np.int64)


def select_prunes(groups: Sequence[Any], d_kappa: np.ndarray, d_regions: np.ndarray,
                  num_prune: Callable[[Any, int], int], precision: int = 3) -> list[int]:
    """Indices of the candidates to prune.

    Candidate i belongs to group ``groups[i]`` (an edge, or a node in the DARTS edge phase).  Rank ``d_kappa``
    descending and ``d_regions`` ascending (dense, after ``round_sig``), add the ranks; in each group prune the
    ``num_prune(group, size)`` candidates with the lowest sum, ties in the stable order of the kappa-sorted list.
    """
    dk = round_sig(d_kappa, precision)
    dr = round_sig(d_regions, precision)
    score = dense_rank(dk, descending=True) + dense_rank(dr, descending=False)
    korder = np.argsort(-dk, kind="stable")
    pos = np.empty(len(dk), dtype=np.int64)
    pos[korder] = np.arange(len(dk))
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out: list[int] = []
    for g, idx in members.items():
        idx = sorted(idx, key=lambda i: (score[i], pos[i]))
        out.extend(idx[:num_prune(g, len(idx))])
    return sorted(out)


# ----------------------------------------------------------------------------------------------------------
# genotypes
# ----------------------------------------------------------------------------------------------------------
def _edge_name(space: str, e: int) -> str:
    frm, to = (NB201_EDGES[e] if space == "nb201" else (DARTS_EDGES[e][0], DARTS_EDGES[e][1] + 2))
    return f"{to}<-{frm}"


def mask_to_genotype(space: str, mask: np.ndarray, ops: Sequence[str]) -> Any:
    """Single-path mask -> ``NB201Genotype`` (an edge without op is 'none') or DARTS ``Genotype``."""
    from spaces.genotype import Genotype, NB201Genotype

    def op_of(t: int, e: int) -> str | None:
        live = np.flatnonzero(mask[t, e])
        if len(live) > 1:
            raise ValueError(f"mask: edge {_edge_name(space, e)} still has {len(live)} live ops")
        return ops[int(live[0])] if len(live) else None

    if space == "nb201":
        return NB201Genotype.from_arch_str(make_arch_str([op_of(0, e) or "none" for e in range(len(NB201_EDGES))]))
    cells = []
    for t in range(2):
        pairs = []
        for start, end in DARTS_GROUPS:
            node = [(op_of(t, e), DARTS_EDGES[e][0]) for e in range(start, end) if op_of(t, e) is not None]
            if len(node) != 2:
                raise ValueError(f"mask: node {DARTS_EDGES[start][1] + 2} has {len(node)} inputs, expected 2")
            pairs.extend(node)
        cells.append(tuple(pairs))
    concat = tuple(range(2, 2 + DARTS_STEPS))
    return Genotype(normal=cells[0], normal_concat=concat, reduce=cells[1], reduce_concat=concat)


def genotype_to_mask(genotype: Any) -> tuple[str, np.ndarray]:
    """``NB201Genotype`` / DARTS ``Genotype`` (or an NB201 arch string) -> (space, single-path mask)."""
    if isinstance(genotype, str):
        arch = genotype
        space = "nb201"
    else:
        space = getattr(genotype, "space", None)
        arch = genotype.to_arch_str() if space == "nb201" else None
    if space == "nb201":
        mask = np.zeros((1, len(NB201_EDGES), len(NB201_SEARCH_OPS)), dtype=bool)
        for e, (op, _frm, _to) in enumerate(parse_arch_str(arch)):
            if op != "none":
                mask[0, e, NB201_SEARCH_OPS.index(op)] = True
        return space, mask
    if space != "darts":
        raise ValueError(f"genotype: unknown space {space!r}")
    mask = np.zeros((2, len(DARTS_EDGES), len(DARTS_SEARCH_OPS)), dtype=bool)
    for t, (cell, concat) in enumerate(((genotype.normal, genotype.normal_concat),
                                        (genotype.reduce, genotype.reduce_concat))):
        if tuple(concat) != tuple(range(2, 2 + DARTS_STEPS)):
            raise ValueError(f"genotype: concat {tuple(concat)} is not (2, 3, 4, 5)")
        if len(cell) != 2 * DARTS_STEPS:
            raise ValueError(f"genotype: a cell needs {2 * DARTS_STEPS} (op, input) pairs, got {len(cell)}")
        for k, (op, j) in enumerate(cell):
            node = k // 2
            if not 0 <= j < node + 2:
                raise ValueError(f"genotype: node {node + 2} cannot take input {j}")
            if op == "none":
                continue
            if op not in DARTS_SEARCH_OPS:
                raise ValueError(f"genotype: unknown op {op!r}")
            mask[t, DARTS_GROUPS[node][0] + j, DARTS_SEARCH_OPS.index(op)] = True
    return space, mask


# ----------------------------------------------------------------------------------------------------------
# search
# ----------------------------------------------------------------------------------------------------------
def _is_single_path(mask: np.ndarray) -> bool:
    return bool((mask.sum(axis=2) <= 1).all())


def tenas_search(cfg: TenasConfig, images: torch.Tensor | None = None,
                 report: Callable[[dict], None] | None = None) -> dict:
    """Run the TE-NAS pruning search; seeded and repeatable.

    ``images``: real training images [N, 3, H, W] (normalised); None -> scikit-learn digits (offline fallback).
    ``report(metrics)`` is called after every round with scalars (round, phase, candidates, kappa_parent,
    regions_parent, round_time_s, wall_time_s).

    Returns ``{"genotype": NB201Genotype | Genotype, "arch": str (arch string / genotype JSON),
    "rounds": [per-round dicts], "wall_time_s": search time (first round to end, setup excluded),
    "setup_time_s", "config": dict}`` plus, with ``cfg.table_path`` (NB201), ``"accuracy"`` (the table's
    validation accuracy of the found cell, or None when the 725-arch table does not hold it) and ``"in_table"``;
    with ``cfg.correlation_archs > 0`` also ``"correlations"`` (see :func:`correlation_study`).
    """
    cfg = cfg.resolved()
    t_setup = time.perf_counter()
    meas = _Measurer(cfg, images)
    ops = meas.ntk_net.ops
    mask = np.ones((meas.ntk_net.num_cell_types, meas.ntk_net.num_edges, len(ops)), dtype=bool)
    cell_names = ("cell",) if cfg.space == "nb201" else ("normal", "reduce")
    rounds: list[dict] = []
    t0 = time.perf_counter()
    setup_s = t0 - t_setup
    rnd = 0

    def finish_round(phase: str, cands: list[tuple[int, int, int]], d_k: np.ndarray, d_r: np.ndarray,
                     pruned: list[int], kp: float, rp: float, t_start: float) -> None:
        now = time.perf_counter()
        entry = {
            "round": rnd, "phase": phase, "candidates": len(cands), "kappa_parent": kp, "regions_parent": rp,
            "live_ops_after": int(mask.sum()), "round_time_s": now - t_start, "wall_time_s": now - t0,
            "pruned": [{"cell": cell_names[cands[i][0]], "edge": _edge_name(cfg.space, cands[i][1]),
                        "op": ops[cands[i][2]], "d_kappa": float(d_k[i]), "d_regions": float(d_r[i])}
                       for i in pruned],
        }
        rounds.append(entry)
        if report is not None:
            report({k: v for k, v in entry.items() if k != "pruned"})

    # phase 1: prune ops until one per edge
    while not _is_single_path(mask):
        t_start = time.perf_counter()
        live_counts = mask.sum(axis=2)
        cands = [(t, e, int(o)) for t in range(mask.shape[0]) for e in range(mask.shape[1])
                 if live_counts[t, e] > 1 for o in np.flatnonzero(mask[t, e])]
        children = []
        for t, e, o in cands:
            child = mask.copy()
            child[t, e, o] = False
            children.append(child)
        d_k, d_r, kp, rp = meas.deltas(rnd, mask, children)
        pruned = select_prunes([(t, e) for t, e, _ in cands], d_k, d_r,
                               lambda g, size: min(cfg.prune_number, size - 1), cfg.precision)
        for i in pruned:
            t, e, o = cands[i]
            mask[t, e, o] = False
        finish_round("ops", cands, d_k, d_r, pruned, kp, rp, t_start)
        rnd += 1

    # phase 2 (DARTS): keep two input edges per intermediate node, node by node, normal cell first
    if cfg.space == "darts":
        for t in range(2):
            for start, end in DARTS_GROUPS:
                edges = [e for e in range(start, end) if mask[t, e].any()]
                if len(edges) <= 2:
                    continue
                t_start = time.perf_counter()
                cands = [(t, e, int(np.flatnonzero(mask[t, e])[0])) for e in edges]
                children = []
                for _, e, _ in cands:
                    child = mask.copy()
                    child[t, e, :] = False
                    children.append(child)
                d_k, d_r, kp, rp = meas.deltas(rnd, mask, children)
                pruned = select_prunes([0] * len(cands), d_k, d_r, lambda g, size: size - 2, cfg.precision)
                for i in pruned:
                    mask[t, cands[i][1], :] = False
                finish_round("edges", cands, d_k, d_r, pruned, kp, rp, t_start)
                rnd += 1

    wall = time.perf_counter() - t0
    genotype = mask_to_genotype(cfg.space, mask, ops)
    result: dict[str, Any] = {
        "genotype": genotype,
        "arch": genotype.to_arch_str() if cfg.space == "nb201" else genotype.to_json(),
        "rounds": rounds, "wall_time_s": wall, "setup_time_s": setup_s,
        "config": dataclasses.asdict(cfg),
    }
    if cfg.table_path is not None:
        table = load_nb201_table(cfg.table_path, cfg.dataset)
        rec = table.get(result["arch"])
        result["in_table"] = rec is not None
        result["accuracy"] = rec["val_accuracy"] if rec is not None else None
        if cfg.correlation_archs > 0:
            result["correlations"] = correlation_study(cfg.table_path, images, cfg,
                                                       num_archs=cfg.correlation_archs, seed=cfg.seed)
    return result


def score_genotype(genotype: Any, images: torch.Tensor | None, cfg: TenasConfig) -> dict[str, float]:
    """Both indicators of one architecture: ``{"ntk_cond": mean kappa_N, "linear_regions": mean R_N}``.

    ``genotype``: an ``NB201Genotype``, a DARTS ``Genotype`` or an NB201 arch string; it is scored on the
    space's proxy networks with only its ops live ('none' edges dropped).  Averages over ``cfg.repeats``; the
    init / data units depend only on ``cfg.seed`` and the repeat, so scores of different genotypes are
    comparable (common random numbers).
    """
    space, mask = genotype_to_mask(genotype)
    cfg = dataclasses.replace(cfg, space=space, ops=None, table_path=None, correlation_archs=0).resolved()
    meas = _Measurer(cfg, images)
    k, r = meas.score(mask)
    return {"ntk_cond": k, "linear_regions": r}


def correlation_study(table_path: str, images: torch.Tensor | None, cfg: TenasConfig, num_archs: int = 50,
                      seed: int = 0) -> dict:
    """Kendall tau / Spearman rho of each indicator against the table's validation accuracy (NB201).

    Samples ``num_archs`` architectures of ``table_path`` (``zc_nasbench201.json``) for ``cfg.dataset`` with
    ``seed``, scores each with :func:`score_genotype` settings (``cfg.repeats``, ``cfg.seed``), and correlates
    ``ntk_cond`` (expected negative), ``linear_regions`` (expected positive), the TE-NAS rank combination
    (``-(rank of kappa ascending + rank of R descending)``) and, as a baseline, the table's ``params``.
    """
    from scipy.stats import kendalltau, rankdata, spearmanr

    cfg = dataclasses.replace(cfg, space="nb201", ops=None, table_path=None, correlation_archs=0).resolved()
    dataset = cfg.dataset
    if dataset not in TABLE_DATASETS:
        raise ValueError(f"dataset: {dataset!r} has no column in the table (one of {list(TABLE_DATASETS)})")
    table = load_nb201_table(table_path, dataset)
    archs = sorted(table)
    if not 2 <= num_archs <= len(archs):
        raise ValueError(f"num_archs: must be in 2..{len(archs)}, got {num_archs}")
    pick = np.random.default_rng(seed).choice(len(archs), size=num_archs, replace=False)
    meas = _Measurer(cfg, images)
    t0 = time.perf_counter()
    rows = []
    for i in sorted(pick):
        arch = archs[i]
        _, mask = genotype_to_mask(arch)
        k, r = meas.score(mask)
        rows.append({"arch": arch, "val_accuracy": table[arch]["val_accuracy"], "ntk_cond": k,
                     "linear_regions": r, "params": table[arch]["params"]})
    acc = np.array([row["val_accuracy"] for row in rows])
    kap = np.array([row["ntk_cond"] for row in rows])
    reg = np.array([row["linear_regions"] for row in rows])
    combined = -(rankdata(kap) + rankdata(-reg))
    indicators = {"ntk_cond": kap, "linear_regions": reg, "tenas_rank": combined,
                  "params": np.array([row["params"] for row in rows])}
    tau = {k: float(kendalltau(v, acc)[0]) for k, v in indicators.items()}
    rho = {k: float(spearmanr(v, acc)[0]) for k, v in indicators.items()}
    return {"dataset": dataset, "num_archs": num_archs, "kendall_tau": tau, "spearman_rho": rho,
            "time_s": time.perf_counter() - t0, "archs": rows}


# ----------------------------------------------------------------------------------------------------------
# job (what `launch/search.py --method tenas` runs)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TenasJobConfig:
    """A TE-NAS search job: the search settings, where its (label-free) images come from, and where it writes.

    ``data``: images for the indicators (default: scikit-learn's digits, offline); ``num_images`` of its training
    split are drawn (seeded by ``data.split_seed``).  ``tenas.dataset`` only fixes the class count and the
    released code's per-dataset defaults; it is set from ``data.dataset`` when left at its default.
    """

    tenas: TenasConfig = dataclasses.field(default_factory=TenasConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    num_images: int = 256
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/search-tenas"

    def validate(self) -> None:
        if self.num_images < 2:
            raise ConfigError(f"num_images: must be >= 2, got {self.num_images}")
        self.data.validate()
        self.tenas = dataclasses.replace(self.tenas, seed=self.seed, device=self.device)
        try:
            need = self.tenas.resolved().ntk_batch
        except ConfigError as e:
            raise ConfigError(f"tenas.{e}") from None
        if self.num_images < need:
            raise ConfigError(f"num_images: {self.num_images} is fewer than the NTK batch tenas.ntk_batch = {need}")


def job_images(cfg: TenasJobConfig) -> torch.Tensor:
    """``cfg.num_images`` normalised training images ``[N, C, H, W]`` (float32, CPU) of ``cfg.data``."""
    from istanas.data import get_loaders

    data = dataclasses.replace(cfg.data, limit_train=cfg.data.limit_train or max(cfg.num_images, 2),
                               batch_size=max(cfg.num_images, 2), augment=False)
    loaders = get_loaders(data, "train", seed=cfg.seed)
    xs, n = [], 0
    for x, _ in loaders.train:
        xs.append(x.float().cpu())
        n += x.shape[0]
        if n >= cfg.num_images:
            break
    return torch.cat(xs)[:cfg.num_images]


def run_job(cfg: TenasJobConfig, report: Callable[[dict], None] | None = None) -> dict:
    """Validate, load the images, run :func:`tenas_search`; returns its result dict."""
    cfg.validate()
    return tenas_search(cfg.tenas, job_images(cfg), report=report)


#: Whole setups for :class:`TenasJobConfig` (the CLI's ``--preset``): ``small`` (default: CPU minutes, fewer
#: samples and one repeat, smaller proxies' inputs) and ``reference`` (the paper / released code's settings).
TENAS_PRESETS: dict[str, dict[str, Any]] = {
    "small": {"num_images": 64, "tenas": {"input_size": 16, "ntk_batch": 16, "lr_samples": 500, "lr_batch": 250,
                                          "repeats": 1}},
    "reference": {"num_images": 256, "tenas": {}},
}
