"""AZ-NAS's training-free components at initialisation: expressivity, progressivity, trainability.

Lee & Ham, "AZ-NAS: Assembling Zero-Cost Proxies for Network Architecture Search", CVPR 2024, Sec. 3 (the
fourth component, complexity, is FLOPs: :func:`spaces.profile.count_flops`).  One forward of a batch
``x [B, 3, H, W]`` in train mode (BN on the batch's statistics) records the feature maps ``F_0`` (stem output)
and ``F_l`` (output of primary block ``l``: a cell or a reduction block), ``[B, C_l, H_l, W_l]``:

* expressivity ``s^E = sum_l s^E_l`` (Eq. 3-4): ``s^E_l = -sum_i p_i log p_i`` with ``p_i = lambda_i / sum_j
  lambda_j`` the normalised eigenvalues of the ``[C_l, C_l]`` covariance of the ``B H_l W_l`` channel vectors of
  ``F_l`` (float64): high when the features use every direction (isotropic).  A zero feature map counts 0.
* progressivity ``s^P = min_l (s^E_l - s^E_{l-1})`` (Eq. 5): expressivity should grow block after block.
* trainability ``s^T = (1 / L) sum_l -(sigma_l + 1 / sigma_l - 2)`` (Eq. 6-7): ``sigma_l`` estimates the scale
  of the block Jacobian ``J_l = dF_l / dF_{l-1}`` (the whole batch, so train-mode BN's coupling is included) by
  one Rademacher probe ``v`` (``E ||J^T v||^2 = ||J||_F^2``): ``sigma_l^2 = ||J_l^T v||^2 / ||v||^2 *
  d_out / min(d_in, d_out)``, the mean squared singular value of ``J_l``; 0 (the best) when ``sigma_l = 1``.
  A block whose output does not depend on its input has ``sigma_l = 0`` and ``s^T = -inf``.

All higher-is-better; combined with the others by log-rank (:func:`istanas.tenas.indicators.log_rank_combination`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from istanas.tenas.indicators import batch_stats_mode

#: The component names, as :mod:`istanas.tenas.score` knows them.
AZ_COMPONENTS: tuple[str, ...] = ("expressivity", "progressivity", "trainability")


def feature_blocks(model: nn.Module) -> list[nn.Module]:
    """``[stem, block_1, ..., block_L]``: the modules whose outputs are ``F_0 .. F_L`` (an evaluation network's
    ``stem`` and ``cells``, or a TE-NAS proxy's ``stem`` and ``layers``)."""
    stem = getattr(model, "stem", None)
    body = getattr(model, "cells", None)
    if body is None:
        body = getattr(model, "layers", None)
    if stem is None or body is None or len(body) == 0:
        raise ValueError(f"model: {type(model).__name__} has no `stem` and `cells` / `layers` to take features from")
    return [stem, *body]


def isotropy_entropy(feature: torch.Tensor) -> torch.Tensor:
    """``s^E_l`` of one feature map ``[B, C, H, W]`` (or ``[B, C]``): entropy of the normalised eigenvalues of
    the channel covariance (float64, 0-dim tensor on the feature's device; 0 for a constant map)."""
    f = feature.detach().to(torch.float64)
    x = f.transpose(0, 1).reshape(f.shape[1], -1)  # [C, B*H*W]
    x = x - x.mean(dim=1, keepdim=True)
    cov = x @ x.T / x.shape[1]
    lam = torch.linalg.eigvalsh(cov).clamp_min(0.0)
    total = lam.sum()
    p = lam / torch.where(total > 0, total, torch.ones_like(total))
    ent = -(torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))).sum()
    return torch.where(total > 0, ent, torch.zeros_like(ent))


def jacobian_scale(out: torch.Tensor, inp: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """``sigma`` of ``J = d out / d inp`` from one probe ``v`` shaped like ``out`` (module doc); 0-dim float64."""
    (g,) = torch.autograd.grad(out, inp, grad_outputs=probe, retain_graph=True, allow_unused=True)
    if g is None:
        return torch.zeros((), dtype=torch.float64, device=out.device)
    d_in, d_out = inp.numel(), out.numel()
    ratio = g.double().pow(2).sum() / probe.double().pow(2).sum()
    return (ratio * d_out / min(d_in, d_out)).sqrt()


def aznas_scores(model: nn.Module, x: torch.Tensor, *, seed: int = 0,
                 blocks: Sequence[nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """``{"expressivity", "progressivity", "trainability"}`` (0-dim float64 tensors, no host sync) of ``model``
    at its current weights on one batch ``x [B, ...]``; ``blocks`` default :func:`feature_blocks`; the probes
    come from a CPU generator seeded by ``seed``.  The model's parameters get no gradient."""
    blocks = list(blocks) if blocks is not None else feature_blocks(model)
    feats: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor:
        feats.append(out)
        return out.clone()  # later in-place ops (an inplace ReLU) must not change the recorded F_l

    handles = [b.register_forward_hook(hook) for b in blocks]
    req = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with batch_stats_mode(model, True), torch.enable_grad():
            model(x.detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
    if len(feats) != len(blocks):
        raise ValueError(f"model: {len(blocks)} blocks but {len(feats)} feature maps in one forward")
    ent = [isotropy_entropy(f) for f in feats]
    gen = torch.Generator().manual_seed(int(seed))
    train = []
    for prev, cur in zip(feats[:-1], feats[1:]):
        v = (torch.randint(0, 2, cur.shape, generator=gen) * 2 - 1).to(device=cur.device, dtype=cur.dtype)
        if not cur.requires_grad:  # the block output is a constant (e.g. every path 'none')
            sigma = torch.zeros((), dtype=torch.float64, device=cur.device)
        else:
            sigma = jacobian_scale(cur, prev, v)
        train.append(torch.where(sigma > 0, -(sigma + 1.0 / sigma - 2.0),
                                 torch.full_like(sigma, -math.inf)))
    steps = [b - a for a, b in zip(ent[:-1], ent[1:])]
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    return {"expressivity": torch.stack(ent).sum(),
            "progressivity": torch.stack(steps).min() if steps else zero,
            "trainability": torch.stack(train).mean() if train else zero}


__all__ = ["AZ_COMPONENTS", "feature_blocks", "isotropy_entropy", "jacobian_scale", "aznas_scores"]
