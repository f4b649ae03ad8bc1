"""What every training job shares besides the loop itself: learning-rate schedules, the evaluation pass, the
model profile, a task's device and loaders.

Schedules give the learning rate of a 0-based epoch e of E, set at the start of the epoch:
cosine ``lr_min + (lr - lr_min) (1 + cos(pi e / E)) / 2`` (DARTS's CosineAnnealingLR stepped per epoch), the
PC-DARTS ImageNet "linear" decay, constant, and an optional linear warm-up.  :func:`evaluate` is the one
evaluation pass: mean loss and top-1 accuracy of ``logits [N, C]`` against ``y [N]`` over a loader, in eval mode,
with one host read at the end.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from spaces.profile import count_flops, count_parameters
from .data import Loaders, get_loaders
from .engine import Meter, autocast, resolve_device, to_device

LR_SCHEDULES = ("cosine", "linear", "constant")


def cosine_lr(lr: float, lr_min: float, epoch: int, epochs: int) -> float:
    """``lr_min + (lr - lr_min) (1 + cos(pi epoch / epochs)) / 2``: the learning rate of 0-based ``epoch``."""
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * epoch / epochs))


def scheduled_lr(schedule: str, lr: float, lr_min: float, epoch: int, epochs: int, warmup_epochs: int = 0) -> float:
    """The learning rate of 0-based ``epoch`` of ``epochs`` under ``schedule`` (one of :data:`LR_SCHEDULES`).

    Warm-up first: ``lr (e + 1) / W`` for ``e < W``.  cosine: :func:`cosine_lr`.  linear (PC-DARTS ImageNet):
    ``lr (E - 5 - e) / (E - 5)`` until the last 5 epochs, then ``lr (E - e) / (5 (E - 5))``; plain ``lr (E - e) / E``
    when E <= 5; floored at ``lr_min``.  constant: ``lr``.
    """
    E, e = epochs, epoch
    if warmup_epochs and e < warmup_epochs:
        return lr * (e + 1) / warmup_epochs
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return cosine_lr(lr, lr_min, e, E)
    if schedule != "linear":
        raise ValueError(f"schedule: must be one of {list(LR_SCHEDULES)}, got {schedule!r}")
    if E > 5:
        f = (E - 5 - e) / (E - 5) if E - e > 5 else (E - e) / (5 * (E - 5))
    else:
        f = (E - e) / E
    return max(lr_min, lr * f)


def task_data(cfg: Any, split: str, loaders: Optional[Loaders] = None, device: Optional[torch.device] = None,
              **kw: Any) -> tuple[torch.device, Loaders]:
    """A task's device (``cfg.device`` unless given) and loaders (``get_loaders(cfg.data, split, seed=cfg.seed,
    **kw)`` unless given; in-memory data is put on the device)."""
    dev = device if device is not None else resolve_device(cfg.device)
    if loaders is None:
        loaders = get_loaders(cfg.data, split, seed=cfg.seed, device=dev if cfg.data.on_device else None,
                              **kw)
    return dev, loaders


@torch.no_grad()
def evaluate(forward: Union[nn.Module, Callable[[torch.Tensor], torch.Tensor]], loader, device: torch.device,
             criterion: Optional[nn.Module] = None, *, model: Optional[nn.Module] = None, bf16: bool = False,
             channels_last: bool = False) -> dict[str, float]:
    """``{"loss", "acc", "n"}`` of ``forward`` (a model or a function ``x -> logits`` / ``(logits, aux)``) over
    ``loader``.

    ``model`` (default: ``forward`` itself when it is a module) is put in eval mode for the pass and restored after.
    ``criterion`` defaults to cross-entropy and sees float32 logits; ``bf16`` / ``channels_last`` as in training
    (CUDA only).
    """
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    model = model if model is not None else (forward if isinstance(forward, nn.Module) else None)
    was = model.training if model is not None else False
    if model is not None:
        model.eval()
    meter = Meter(device)
    try:
        for batch in loader:
            x, y = to_device(batch, device, channels_last)
            with autocast(device, bf16):
                out = forward(x)
                logits = out[0] if isinstance(out, (tuple, list)) else out
            meter.update(criterion(logits.float(), y), logits, y)
    finally:
        if model is not None:
            model.train(was)
    return meter.compute()


def model_profile(model: nn.Module, image_size: int, in_channels: int = 3) -> dict[str, float]:
    """``params_m`` (auxiliary head excluded) and ``flops_m`` (multiply-adds, millions) of ``model``."""
    out = {"params_m": float(count_parameters(model, exclude_aux=True))}
    try:
        out["flops_m"] = float(count_flops(model, (1, in_channels, image_size, image_size)))
    except Exception:  # pragma: no cover - FLOP counting is informative only
        out["flops_m"] = float("nan")
    return out


__all__ = ["LR_SCHEDULES", "cosine_lr", "scheduled_lr", "task_data", "evaluate", "model_profile"]
