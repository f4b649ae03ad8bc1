"""Model size as the NAS papers report it: parameters (millions, auxiliary head excluded) and FLOPs (millions
of multiply-adds of the convolutions and linear layers, one image, inference mode)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


def count_parameters(model: nn.Module, exclude_aux: bool = True) -> float:
    """Number of parameters in millions (each shared tensor once).

    With ``exclude_aux`` every parameter whose qualified name contains "auxiliary" (the auxiliary head) is left
    out, as DARTS / PC-DARTS / ISTA-NAS count.  BN affine parameters count; running statistics (buffers) do not.
    """
    total = 0
    for name, p in model.named_parameters():
        if exclude_aux and "auxiliary" in name:
            continue
        total += p.numel()
    return total / 1e6


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    # every output element: (C_in / groups) * kh * kw multiply-adds (bias adds are not counted)
    kh, kw = m.kernel_size
    return out.numel() * (m.in_channels // m.groups) * kh * kw


def _linear_macs(m: nn.Linear, out: torch.Tensor) -> int:
    return out.numel() * m.in_features


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32),
                device: Optional[torch.device] = None) -> float:
    """Multiply-adds (millions) of all Conv2d and Linear layers for one image, measured with forward hooks on a
    zero input of ``input_size`` [N, C, H, W] in eval mode (so an auxiliary head does not run); the total is
    divided by N.  Pooling, BN, ReLU and additions are not counted (the DARTS-family "FLOPs" convention).

    ``device`` defaults to the model's (first parameter's) device; the model's training mode is restored.
    """
    if len(input_size) != 4 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_size):
        raise ValueError(f"input_size: expected 4 positive ints [N, C, H, W], got {tuple(input_size)!r}")
    first = next(model.parameters(), None)
    if device is None:
        device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    counts: list[int] = []

    def hook(m: nn.Module, _inp, out) -> None:
        if isinstance(m, nn.Conv2d):
            counts.append(_conv_macs(m, out))
        elif isinstance(m, nn.Linear):
            counts.append(_linear_macs(m, out))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(tuple(input_size), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sum(counts) / input_size[0] / 1e6


__all__ = ["count_parameters", "count_flops"]
