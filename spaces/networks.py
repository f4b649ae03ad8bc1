"""Evaluation networks of a genotype: NetworkCIFAR / NetworkImageNet (DARTS space) and NB201Network.

Entry point: :func:`build_network`.  All networks map ``x [N, in_channels, H, W]`` to ``(logits [N, K], aux)``
where ``aux`` is the auxiliary head's logits ``[N, K]`` in training mode when the network was built with
``auxiliary=True``, else ``None`` (always ``None`` for NAS-Bench-201 networks).

DARTS-space state_dict layout (a loader filling these networks from a super-net can rely on it)::

    stem.{0: Conv2d, 1: BatchNorm2d}                                   NetworkCIFAR
    stem0.{0: Conv2d, 1: BN, 2: ReLU, 3: Conv2d, 4: BN}, stem1.{0: ReLU, 1: Conv2d, 2: BN}     NetworkImageNet
    cells.{c}.preprocess0   FactorizedReduce (after a reduction cell) or ReLUConvBN 1x1 (``.op.{1: conv, 2: BN}``)
    cells.{c}.preprocess1   ReLUConvBN 1x1
    cells.{c}.ops.{j}       the op of genotype pair j (cell's own genotype order: node 2 + j // s with
                            s = ``genotype.ops_per_node``, its input ``cells.{c}.indices[j]``); ops from spaces.ops:
                              sep_conv_*: ``op.{0,1}.op.{1: depthwise, 2: pointwise, 3: BN}``
                              dil_conv_*: ``op.{1: depthwise, 2: pointwise, 3: BN}``
                              skip_connect in a reduction cell (stride 2): FactorizedReduce ``conv_1, conv_2, bn``
                              pools / stride-1 skip: no parameters, or with ``bn_after_param_free=True`` an
                              ``nn.Sequential(op, BatchNorm2d(C))``: ``.1`` is the BN
    auxiliary_head.*        only with ``auxiliary=True`` (excluded from parameter counts)
    classifier.{weight,bias}

``output_bn(cell.ops[j])`` returns the BatchNorm2d that ends op j (None for a bare pool / identity); with
``bn_after_param_free=True`` every op of a DARTS cell has one (the BN absorption of ISTA-NAS Eq. 12 folds a node's
coefficients into exactly these BNs).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from spaces.genotype import Genotype, NB201Genotype
from spaces.ops import (DARTS_OPS, NB201_OPS, PARAM_FREE_OPS, FactorizedReduce, Identity, ReLUConvBN,
                        ResNetBasicBlock)
from spaces.registry import load_genotype

#: Default number of classes per dataset name (any other name needs ``num_classes``).
DATASET_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "digits": 10, "mnist": 10,
                                   "imagenette": 10, "imagenet16-120": 120, "imagenet16": 1000}


def is_imagenet(dataset: str) -> bool:
    """ImageNet-sized images (the 3-conv stride-8 stem): names starting with 'imagenet', except the 16x16
    ImageNet16(-120) of NAS-Bench-201, which uses the small-image stem."""
    d = dataset.lower()
    return d.startswith("imagenet") and not d.startswith("imagenet16")


# --------------------------------------------------------------------------------------------------- helpers
def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Drop whole samples of a branch with probability ``drop_prob``, scaling the kept ones by 1/keep.

    x: [N, C, H, W] -> [N, C, H, W].  The mask is drawn on ``x``'s device (no host transfer).
    """
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0], 1, 1, 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


def output_bn(module: nn.Module) -> Optional[nn.BatchNorm2d]:
    """The BatchNorm2d that ends ``module`` (following the last registered child down), or None."""
    m = module
    while not isinstance(m, nn.BatchNorm2d):
        children = list(m.children())
        if not children:
            return None
        m = children[-1]
    return m


# ----------------------------------------------------------------------------------------- stems (shared)
def conv_stem(in_channels: int, C: int) -> nn.Sequential:
    """conv3x3 (in_channels -> C, stride 1) + BN: ``[N, in, H, W] -> [N, C, H, W]`` (NetworkCIFAR with C = 3 x
    width, NB201Network, the search super-nets and the TE-NAS proxies)."""
    return nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))


def imagenet_stems(in_channels: int, C: int) -> tuple[nn.Sequential, nn.Sequential]:
    """NetworkImageNet's ``(stem0, stem1)``: stem0 = conv3x3 s2 (-> C/2), BN, ReLU, conv3x3 s2 (-> C), BN
    (input / 4); stem1 = ReLU, conv3x3 s2, BN (input / 8).  Built in this order (stem0's weights first)."""
    stem0 = nn.Sequential(
        nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
    stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                          nn.BatchNorm2d(C))
    return stem0, stem1


def cell_preprocess(C_pp: int, C_p: int, C: int, reduction_prev: bool,
                    affine: bool = True) -> tuple[nn.Module, nn.Module]:
    """A DARTS cell's input blocks ``(preprocess0, preprocess1)``: s0 ``[N, C_pp, ...]`` -> C channels through a
    FactorizedReduce (after a reduction cell, halving H, W) or a 1x1 ReLUConvBN; s1 ``[N, C_p, ...]`` -> C through a
    1x1 ReLUConvBN.  Built in this order."""
    pre0 = FactorizedReduce(C_pp, C, affine=affine) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, affine)
    return pre0, ReLUConvBN(C_p, C, 1, 1, 0, affine)


def nb201_stages(C: int, N: int, make_cell: Callable[[int], nn.Module], stages: int = 3) -> tuple[list[nn.Module], int]:
    """NAS-Bench-201's body: ``stages`` stages of ``N`` cells ``make_cell(C_stage)`` (channels C, 2C, 4C) joined
    by stride-2 ResNetBasicBlocks, built in forward order.  Returns (blocks, channels of the last stage)."""
    blocks: list[nn.Module] = []
    C_curr = C
    for stage in range(stages):
        if stage > 0:
            blocks.append(ResNetBasicBlock(C_curr, 2 * C_curr, stride=2))
            C_curr *= 2
        blocks.extend(make_cell(C_curr) for _ in range(N))
    return blocks, C_curr


def _darts_op(name: str, C: int, stride: int, bn_after_param_free: bool) -> nn.Module:
    op = DARTS_OPS[name](C, stride, True)
    if bn_after_param_free and name in PARAM_FREE_OPS and not isinstance(op, FactorizedReduce):
        # ISTA-NAS one-stage: pools and the stride-1 skip (Identity) get an affine BN (ISTA-NAS Sec. 3.3);
        # the stride-2 skip is a FactorizedReduce, which already ends with BN.
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=True))
    return op


class Cell(nn.Module):
    """A DARTS cell: (s0 [N, C_pp, H0, W0], s1 [N, C_p, H, W]) -> [N, len(concat) * C, H/r, W/r] (r = 2 in a
    reduction cell).  ``H0 = 2H`` when the previous cell reduced (s0 then goes through a FactorizedReduce).

    Node k = 2 + i sums the ``s = ops_per_node`` ops of its pairs (s = 2 in DARTS; an ISTA-NAS genotype of support
    size s keeps s):  ``s_k = sum_{j = s i}^{s i + s - 1} op_j(s_{indices[j]})``.
    """

    def __init__(self, pairs: Sequence[tuple[str, int]], concat: Sequence[int], C_pp: int, C_p: int, C: int,
                 reduction: bool, reduction_prev: bool, bn_after_param_free: bool = False, ops_per_node: int = 2):
        super().__init__()
        if isinstance(ops_per_node, bool) or not isinstance(ops_per_node, int) or ops_per_node < 1 \
                or len(pairs) % ops_per_node:
            raise ValueError(f"ops_per_node: expected an int >= 1 dividing the {len(pairs)} pairs, got {ops_per_node!r}")
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = cell_preprocess(C_pp, C_p, C, reduction_prev)
        self.op_names: tuple[str, ...] = tuple(op for op, _ in pairs)
        self.indices: tuple[int, ...] = tuple(int(i) for _, i in pairs)
        self.concat: tuple[int, ...] = tuple(concat)
        self.ops_per_node = ops_per_node
        self.steps = len(pairs) // ops_per_node
        self.multiplier = len(self.concat)
        self.ops = nn.ModuleList(
            _darts_op(op, C, 2 if reduction and i < 2 else 1, bn_after_param_free) for op, i in pairs)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        s = self.ops_per_node
        for k in range(self.steps):
            node = None
            for j in range(s * k, s * k + s):
                op = self.ops[j]
                h = op(states[self.indices[j]])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    # DARTS rule: every op but the bare identity (a skip wrapped with a BN is dropped too, as
                    # in the ISTA-NAS one-stage evaluation code)
                    h = drop_path(h, drop_prob)
                node = h if node is None else node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier: ReLU, AvgPool(k, stride s), conv1x1 -> 128, BN, ReLU, conv2x2 -> 768, [BN], ReLU,
    Linear(768, K).  [N, C, H, W] -> [N, K].

    CIFAR (``pool=(5, 3)``, 8x8 input) and ImageNet (``pool=(5, 2)``, 14x14 input, no second BN) as in DARTS.  For
    other input sizes: inputs smaller than the pooling window are pooled adaptively to 2x2, and a feature map
    larger than 1x1 after the 2x2 conv is averaged globally (the DARTS ImageNet head, 14x14 -> 4x4, would
    otherwise not fit its Linear).  The head's parameter count does not depend on the input size.
    """

    def __init__(self, C: int, num_classes: int, pool: tuple[int, int] = (5, 3), second_bn: bool = True):
        super().__init__()
        self.kernel, self.stride = pool
        self.relu0 = nn.ReLU(inplace=False)
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            *([nn.BatchNorm2d(768)] if second_bn else []), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu0(x)
        if x.shape[-1] >= self.kernel and x.shape[-2] >= self.kernel:
            x = nn.functional.avg_pool2d(x, self.kernel, self.stride, padding=0, count_include_pad=False)
        else:
            x = nn.functional.adaptive_avg_pool2d(x, 2)
        x = self.features(x)
        if x.shape[-1] != 1 or x.shape[-2] != 1:
            x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.classifier(x.flatten(1))


class _DartsNetwork(nn.Module):
    """Common body of the DARTS-space networks: ``layers`` cells, reductions at layers//3 and 2*layers//3."""

    def _make_cells(self, genotype: Genotype, C: int, C_pp: int, C_p: int, layers: int, reduction_prev: bool,
                    bn_after_param_free: bool) -> int:
        self.cells = nn.ModuleList()
        self.reduction_layers = sorted({layers // 3, 2 * layers // 3})
        self.aux_position = 2 * layers // 3
        self.aux_channels = 0
        C_curr = C
        for i in range(layers):
            reduction = i in self.reduction_layers
            if reduction:
                C_curr *= 2
            pairs, concat = genotype.cell("reduce" if reduction else "normal")
            cell = Cell(pairs, concat, C_pp, C_p, C_curr, reduction, reduction_prev, bn_after_param_free,
                        ops_per_node=genotype.ops_per_node)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if i == self.aux_position:
                self.aux_channels = C_p
        return C_p

    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        aux = None
        p = float(self.drop_path_prob)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, p)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return s1, aux


class NetworkCIFAR(_DartsNetwork):
    """DARTS evaluation network for small images (CIFAR, digits, MNIST).

    stem conv3x3 (in_channels -> 3C) + BN; ``layers`` cells (channels doubled at the two reduction cells);
    global average pool; Linear.  x [N, in_channels, H, W] -> (logits [N, K], aux logits [N, K] or None).
    """

    def __init__(self, genotype: Genotype, C: int = 36, num_classes: int = 10, layers: int = 20,
                 auxiliary: bool = False, bn_after_param_free: bool = False, in_channels: int = 3,
                 drop_path_prob: float = 0.0):
        super().__init__()
        self.genotype = genotype
        self.drop_path_prob = drop_path_prob
        C_stem = 3 * C
        self.stem = conv_stem(in_channels, C_stem)
        C_last = self._make_cells(genotype, C, C_stem, C_stem, layers, False, bn_after_param_free)
        self.auxiliary_head = AuxiliaryHead(self.aux_channels, num_classes, (5, 3)) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_last, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        s = self.stem(x)
        out, aux = self._run_cells(s, s)
        return self.classifier(self.global_pooling(out).flatten(1)), aux


class NetworkImageNet(_DartsNetwork):
    """DARTS evaluation network for ImageNet (mobile setting).

    stem0: conv3x3 s2 (-> C/2), BN, ReLU, conv3x3 s2 (-> C), BN; stem1: ReLU, conv3x3 s2, BN (input / 8);
    ``layers`` cells; global average pool (DARTS's AvgPool2d(7) at 224 px); Linear.
    x [N, in_channels, H, W] -> (logits [N, K], aux logits [N, K] or None).
    """

    def __init__(self, genotype: Genotype, C: int = 48, num_classes: int = 1000, layers: int = 14,
                 auxiliary: bool = False, bn_after_param_free: bool = False, in_channels: int = 3,
                 drop_path_prob: float = 0.0):
        super().__init__()
        self.genotype = genotype
        self.drop_path_prob = drop_path_prob
        self.stem0, self.stem1 = imagenet_stems(in_channels, C)
        C_last = self._make_cells(genotype, C, C, C, layers, True, bn_after_param_free)
        self.auxiliary_head = (AuxiliaryHead(self.aux_channels, num_classes, (5, 2), second_bn=False)
                               if auxiliary else None)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_last, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        out, aux = self._run_cells(s0, s1)
        return self.classifier(self.global_pooling(out).flatten(1)), aux


# ----------------------------------------------------------------------------------------------- NAS-Bench-201
class NB201Cell(nn.Module):
    """NAS-Bench-201 cell: x [N, C, H, W] -> [N, C, H, W]; node j = sum_{i<j} op_ij(node i), output node 3.

    ``ops[e]`` is the op of edge ``edges[e] = (i, j)`` in arch-string order (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2);
    ``indices[e] = i``.
    """

    def __init__(self, genotype: NB201Genotype, C: int):
        super().__init__()
        self.edges: tuple[tuple[int, int], ...] = tuple((i, j) for i, j, _ in genotype.edges)
        self.op_names: tuple[str, ...] = tuple(op for _, _, op in genotype.edges)
        self.indices: tuple[int, ...] = tuple(i for i, _ in self.edges)
        self.num_nodes = len(genotype.nodes) + 1
        self.ops = nn.ModuleList(NB201_OPS[op](C, 1, True) for op in self.op_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes: list[Optional[torch.Tensor]] = [x] + [None] * (self.num_nodes - 1)
        for (i, j), op in zip(self.edges, self.ops):
            h = op(nodes[i])
            nodes[j] = h if nodes[j] is None else nodes[j] + h
        return nodes[-1]


class NB201Network(nn.Module):
    """NAS-Bench-201 network: stem conv3x3 (-> C) + BN; 3 stages of N cells (C, 2C, 4C) joined by stride-2
    ResNetBasicBlocks; BN, ReLU, global average pool, Linear.  x [N, in_channels, H, W] -> (logits [N, K], None).
    """

    def __init__(self, genotype: NB201Genotype, C: int = 16, N: int = 5, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        self.genotype = genotype
        self.stem = conv_stem(in_channels, C)
        blocks, C_curr = nb201_stages(C, N, lambda c: NB201Cell(genotype, c))
        self.cells = nn.ModuleList(blocks)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_curr), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_curr, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        s = self.stem(x)
        for block in self.cells:
            s = block(s)
        s = self.global_pooling(self.lastact(s))
        return self.classifier(s.flatten(1)), None


# --------------------------------------------------------------------------------------------------- builder
def _check_int(field: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{field}: expected an int >= {lo}, got {v!r}")
    return v


def build_network(genotype: Any, dataset: str = "cifar10", C: Optional[int] = None, layers: Optional[int] = None,
                  num_classes: Optional[int] = None, auxiliary: bool = False, drop_path: float = 0.0,
                  bn_after_param_free: bool = False, in_channels: int = 3, N: Optional[int] = None) -> nn.Module:
    """The evaluation network of ``genotype`` (a Genotype / NB201Genotype, a registry name, JSON text, a .json
    path or an NB201 arch string).

    DARTS space: ``dataset`` starting with "imagenet" (not ImageNet16) -> :class:`NetworkImageNet` (defaults
    C=48, layers=14, 1000 classes); any other name -> :class:`NetworkCIFAR` (defaults C=36, layers=20).
    ``drop_path`` sets ``model.drop_path_prob`` (settable later, used in training mode only);
    ``bn_after_param_free`` appends an affine BN to every pool / stride-1 skip (ISTA-NAS one-stage networks).
    NAS-Bench-201: :class:`NB201Network` with ``C`` (default 16) and ``N`` cells per stage (default 5; ``layers``
    is read as ``N`` when ``N`` is not given); no auxiliary head, drop-path or extra BNs.

    ``num_classes`` defaults from ``dataset`` (:data:`DATASET_CLASSES`).  The model maps
    x [B, in_channels, H, W] -> (logits [B, K], aux [B, K] in training mode with ``auxiliary`` else None).
    """
    g = load_genotype(genotype)
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset: expected a dataset name, got {dataset!r}")
    if num_classes is None:
        if dataset.lower() not in DATASET_CLASSES:
            raise ValueError(f"num_classes: required for dataset {dataset!r} "
                             f"(defaults known for {sorted(DATASET_CLASSES)})")
        num_classes = DATASET_CLASSES[dataset.lower()]
    _check_int("num_classes", num_classes)
    _check_int("in_channels", in_channels)
    if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)) or not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path: expected a probability in [0, 1), got {drop_path!r}")

    if isinstance(g, NB201Genotype):
        for field, bad in (("auxiliary", auxiliary), ("drop_path", drop_path > 0),
                           ("bn_after_param_free", bn_after_param_free)):
            if bad:
                raise ValueError(f"{field}: not supported by NAS-Bench-201 networks")
        n = N if N is not None else (layers if layers is not None else 5)
        return NB201Network(g, C=_check_int("C", 16 if C is None else C), N=_check_int("N", n),
                            num_classes=num_classes, in_channels=in_channels)

    if N is not None:
        raise ValueError("N: only for NAS-Bench-201 genotypes; DARTS networks take `layers`")
    imagenet = is_imagenet(dataset)
    C = _check_int("C", (48 if imagenet else 36) if C is None else C, lo=2)
    if C % 2:
        raise ValueError(f"C: must be even (FactorizedReduce splits the channels in two halves), got {C}")
    layers = _check_int("layers", (14 if imagenet else 20) if layers is None else layers)
    cls = NetworkImageNet if imagenet else NetworkCIFAR
    return cls(g, C=C, num_classes=num_classes, layers=layers, auxiliary=bool(auxiliary),
               bn_after_param_free=bool(bn_after_param_free), in_channels=in_channels,
               drop_path_prob=float(drop_path))


__all__ = ["build_network", "NetworkCIFAR", "NetworkImageNet", "NB201Network", "Cell", "NB201Cell",
           "AuxiliaryHead", "conv_stem", "imagenet_stems", "cell_preprocess", "nb201_stages", "drop_path", "output_bn",
           "is_imagenet", "DATASET_CLASSES"]
