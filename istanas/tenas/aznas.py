"""AZ-NAS's training-free components at initialisation: expressivity, progressivity, trainability.

Lee & Ham, "AZ-NAS: Assembling Zero-Cost Proxies for Network Architecture Search", CVPR 2024, Sec. 3 (the
fourth component, complexity, is FLOPs: :func:`spaces.profile.count_flops`).  One forward of a batch
``x [B, 3, H, W]`` in train mode (BN on the batch's statistics) records the feature maps ``F_0`` (stem output)
and ``F_l`` (output of primary block ``l``: a cell or a reduction block), ``[B, C_l, H_l, W_l]``:

* expressivity ``s^E = sum_l s^E_l`` (Eq. 3-4): ``s^E_l = -sum_i p_i log p_i`` with ``p_i = lambda_i / sum_j
  lambda_j`` the normalised eigenvalues of the ``[C_l, C_l]`` covariance of the ``B H_l W_l`` channel vectors of
  ``F_l`` (float64): high when the features use every direction (isotropic).  A zero feature map counts 0.
* progressivity ``s^P = min_l (s^E_l - s^E_{l-1})`` (Eq. 5): expressivity should grow block after block.
* trainability ``s^T = (1 / L) sum_l -(sigma_l + 1 / sigma_l - 2)`` (Eq. 6-7): ``sigma_l`` the scale of the
  block Jacobian ``J_l = dF_l / dF_{l-1}`` (the whole batch, so train-mode BN's coupling is included), 0 (the best)
  at ``sigma_l = 1``, from one Rademacher probe ``v`` shaped like ``F_l`` and ``g = J_l^T v``.  Default
  (``estimator="released"``, what the paper's numbers come from): the spectral norm of the channel matrix
  ``M = (1 / B H W) sum_positions g v^T`` ``[C_{l-1}, C_l]`` (``g`` pixel-unshuffled to ``F_l``'s resolution at a
  reduction), an estimate of the position-averaged channel Jacobian; a block whose ``g`` equals ``v`` (identity)
  scores ``-inf``.  ``estimator="frobenius"``: ``sigma_l^2 = ||g||^2 / ||v||^2 * d_out / min(d_in, d_out)``, the
  mean squared singular value of ``J_l`` (:func:`jacobian_scale`; tau -0.10 vs +0.31 for the released one on 300
  NB201 cells, benchmarks/README.md).  A block whose output does not depend on its input: ``-inf``.

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
    """``sigma`` of ``J = d out / d inp`` by the ``"frobenius"`` estimator from one probe ``v`` shaped like ``out``
    (module doc); 0-dim float64."""
    (g,) = torch.autograd.grad(out, inp, grad_outputs=probe, retain_graph=True, allow_unused=True)
    if g is None:
        return torch.zeros((), dtype=torch.float64, device=out.device)
    d_in, d_out = inp.numel(), out.numel()
    ratio = g.double().pow(2).sum() / probe.double().pow(2).sum()
    return (ratio * d_out / min(d_in, d_out)).sqrt()


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` (or ``[B, C]``) -> ``[B H W, C]``."""
    return t.movedim(1, -1).reshape(-1, t.shape[1]) if t.dim() > 2 else t


def channel_jacobian_norm(g: torch.Tensor, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma, identity)`` of the ``"released"`` estimator (module doc): ``g = J^T v [B, C_in, H_in, W_in]``,
    ``probe = v [B, C_out, H_out, W_out]``; ``g`` is pixel-unshuffled by ``ceil(H_in / H_out)`` (zero-padded to a
    multiple) when the resolutions differ.  ``sigma``: largest singular value of ``M [C_in', C_out]`` (float64);
    ``identity``: a bool tensor, ``g == v`` exactly.  0-dim tensors on ``g``'s device, no host sync."""
    if g.dim() > 2 and g.shape[-2:] != probe.shape[-2:]:
        r = -(-g.shape[-1] // probe.shape[-1])  # ceil; square maps
        ph, pw = probe.shape[-2] * r - g.shape[-2], probe.shape[-1] * r - g.shape[-1]
        g = torch.nn.functional.pixel_unshuffle(torch.nn.functional.pad(g, (0, pw, 0, ph)), r)
    identity = torch.zeros((), dtype=torch.bool, device=g.device)
    if g.shape == probe.shape:
        identity = (g == probe).all()
    a, b = _channels_last(g).double(), _channels_last(probe).double()
    m = a.T @ b / a.shape[0]  # [C_in', C_out]
    return torch.linalg.matrix_norm(m, ord=2), identity


ESTIMATORS: tuple[str, ...] = ("released", "frobenius")


def block_trainability(out: torch.Tensor, inp: torch.Tensor, probe: torch.Tensor,
                       estimator: str = "released") -> torch.Tensor:
    """``s^T_l = -(sigma_l + 1 / sigma_l - 2)`` of one block ``inp -> out`` (module doc); 0-dim float64, ``-inf``
    for a block whose output ignores its input (or, ``"released"``, is its input)."""
    minf = torch.full((), -math.inf, dtype=torch.float64, device=out.device)
    if not out.requires_grad:  # the block output is a constant (e.g. every path 'none')
        return minf
    if estimator == "frobenius":
        sigma, ident = jacobian_scale(out, inp, probe), torch.zeros((), dtype=torch.bool, device=out.device)
    elif estimator == "released":
        (g,) = torch.autograd.grad(out, inp, grad_outputs=probe, retain_graph=True, allow_unused=True)
        if g is None:
            return minf
        sigma, ident = channel_jacobian_norm(g, probe)
    else:
        raise ValueError(f"estimator: {estimator!r} is not one of {list(ESTIMATORS)}")
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    return torch.where((sigma > 0) & ~ident, -(sigma + 1.0 / safe - 2.0), minf)


def aznas_scores(model: nn.Module, x: torch.Tensor, *, seed: int = 0, blocks: Sequence[nn.Module] | None = None,
                 estimator: str = "released") -> dict[str, torch.Tensor]:
    """``{"expressivity", "progressivity", "trainability"}`` (0-dim float64 tensors, no host sync) of ``model``
    at its current weights on one batch ``x [B, ...]``; ``blocks`` default :func:`feature_blocks`; the probes
    come from a CPU generator seeded by ``seed``; ``estimator``: trainability's (module doc).  The model's
    parameters get no gradient."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: {estimator!r} is not one of {list(ESTIMATORS)}")
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
        train.append(block_trainability(cur, prev, v, estimator))
    steps = [b - a for a, b in zip(ent[:-1], ent[1:])]
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    return {"expressivity": torch.stack(ent).sum(),
            "progressivity": torch.stack(steps).min() if steps else zero,
            "trainability": torch.stack(train).mean() if train else zero}


__all__ = ["AZ_COMPONENTS", "ESTIMATORS", "feature_blocks", "isotropy_entropy", "jacobian_scale",
           "channel_jacobian_norm", "block_trainability", "aznas_scores"]
