"""Candidate operations of the DARTS and NAS-Bench-201 cell spaces, as registries.

Every builder has the signature ``builder(C: int, stride: int, affine: bool) -> nn.Module`` and maps a tensor
``[N, C, H, W]`` to ``[N, C, H / stride, W / stride]``.  ``spaces`` knows nothing of ISTA or NTK: the
search code decides which ops run and how they are weighted.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

OpBuilder = Callable[[int, int, bool], nn.Module]


class ReLUConvBN(nn.Module):
    """ReLU -> Conv(k) -> BN (the DARTS preprocessing block and NAS-Bench-201's ``nor_conv``)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True,
                 dilation: int = 1):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> depthwise dilated conv -> 1x1 conv -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked DilConv blocks with dilation 1 (stride on the first), as in DARTS."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` op: zeros of the output shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """ReLU -> two 1x1 stride-2 convs on offset grids, concatenated -> BN: halves H and W."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2 != 0:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        y = x[:, :, 1:, 1:]
        if y.shape[-1] != x.shape[-1] or y.shape[-2] != x.shape[-2]:
            y = nn.functional.pad(y, (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(y)], dim=1))


class ResNetBasicBlock(nn.Module):
    """NAS-Bench-201's stride-2 residual block between stages: [N, C_in, H, W] -> [N, C_out, H/2, W/2]."""

    def __init__(self, C_in: int, C_out: int, stride: int = 2, affine: bool = True):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1, affine)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1, affine)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(C_in, C_out, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def _pool(kind: str) -> OpBuilder:
    def build(C: int, stride: int, affine: bool) -> nn.Module:
        if kind == "max":
            return nn.MaxPool2d(3, stride=stride, padding=1)
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    return build


def _skip(C: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)


#: DARTS primitives, in DARTS's order (index 0 is ``none``).
DARTS_PRIMITIVES: tuple[str, ...] = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)

DARTS_OPS: Dict[str, OpBuilder] = {
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": _pool("max"),
    "avg_pool_3x3": _pool("avg"),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
}

#: Ops that own no weights; the one-stage networks append a BN to these (``bn_after_param_free``).
PARAM_FREE_OPS: frozenset[str] = frozenset({"max_pool_3x3", "avg_pool_3x3", "skip_connect"})

#: NAS-Bench-201 primitives, in NAS-Bench-201's order.
NB201_PRIMITIVES: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

NB201_OPS: Dict[str, OpBuilder] = {
    "none": lambda C, stride, affine: Zero(stride),
    "skip_connect": _skip,
    "nor_conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine),
    "nor_conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine),
    "avg_pool_3x3": _pool("avg"),
}

OP_REGISTRIES: Dict[str, Dict[str, OpBuilder]] = {"darts": DARTS_OPS, "nb201": NB201_OPS}


def build_op(name: str, C: int, stride: int, affine: bool = True, space: str = "darts") -> nn.Module:
    """Build candidate op ``name`` of ``space`` ("darts" or "nb201"); unknown names raise ``KeyError``."""
    try:
        registry = OP_REGISTRIES[space]
    except KeyError:
        raise KeyError(f"unknown space {space!r}; known: {sorted(OP_REGISTRIES)}") from None
    try:
        return registry[name](C, stride, affine)
    except KeyError:
        raise KeyError(f"unknown op {name!r} in space {space!r}; known: {list(registry)}") from None
