"""TE-NAS training-free indicators at initialisation: NTK condition number, linear regions, combined score.

Chen, Gong & Wang, ICLR 2021 (TE-NAS).  Both indicators are label-free.

* kappa_N (Sec. 3.1, Eq. 2-4): ``G [B, P]`` = Jacobian of the summed logits ``f~(x_i) = sum_c f_c(x_i)`` w.r.t.
  the parameters named ``*weight*`` (as released); ``Theta = G G^T [B, B]`` (Eq. 2), ``kappa = lambda_max /
  lambda_min`` (Eq. 4), eigenvalues in float64; NaN or ``lambda_min <= 0`` -> ``nan_value``.  Lower is better.
  ``bn_coupling="batch"`` (the paper's kernel): ``jacrev`` of the batched map, train-mode BN couples the samples;
  ``"frozen"``: BN normalises with the batch's statistics held constant, ``G = vmap(grad(f~))`` (a different,
  faster kernel).  Without a batch coupling both give the exact per-sample Jacobian.  ``ntk_jacobian_loop`` is
  the released per-sample backward loop (the baseline of ``benchmarks/bench_tenas.py``).
* R_N (Sec. 3.2, Eq. 5): the number of distinct binary activation patterns of every ``nn.ReLU`` module over the
  sampled inputs ``[N, ...]`` (``torch.unique`` of the codes, equal to the released Hamming formula).  Higher is
  better.
* :func:`synflow_score`: SynFlow (Tanaka et al., 2020), data-free, on a BN-free float64 copy.
* :func:`tenas_objective` (``log R - log kappa``, the sweep's former score, kept as a setting-free scalar) and
  :func:`rank_combination` (Sec. 3.3; the sweep ranks against a reference sample, ``istanas.tenas.score``).

Initialisation per repeat: ``"kaiming_fanout"`` (NTK) / ``"kaiming_fanin"`` (regions) as
intended, ``"default"`` (PyTorch's distribution drawn afresh) or ``"none"`` (current weights, as released); draws
come from a seeded CPU generator and are copied to the model's device.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

INIT_MODES: tuple[str, ...] = ("kaiming_fanout", "kaiming_fanin", "default", "none")
BN_COUPLINGS: tuple[str, ...] = ("batch", "frozen")

ParamFilter = Callable[[str], bool]


# ----------------------------------------------------------------------------------------------------------
# initialisation
# ----------------------------------------------------------------------------------------------------------
def _fans(shape: torch.Size) -> tuple[int, int]:
    """(fan_in, fan_out) of a conv/linear weight ``[out, in, *k]`` (same convention as ``torch.nn.init``)."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def init_weights(model: nn.Module, mode: str = "kaiming_fanout", seed: int = 0) -> None:
    """Re-initialise ``model`` in place, reproducibly.

    ``mode``:
      - ``"kaiming_fanout"`` / ``"kaiming_fanin"``: conv and linear weights ~ N(0, 2 / fan), biases 0
        (TE-NAS's intended ``init_model``; fan_out for the NTK, fan_in for linear regions);
      - ``"default"``: PyTorch's default distribution (``kaiming_uniform_(a=sqrt(5))`` for weights,
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases) drawn afresh;
      - ``"none"``: leave the weights as they are.
    BatchNorm affine parameters are reset to gamma=1, beta=0 (except for ``"none"``).  Values are drawn on the
    CPU from ``torch.Generator().manual_seed(seed)`` and copied to each parameter's device.
    """
    if mode not in INIT_MODES:
        raise ValueError(f"init: {mode!r} is not one of {list(INIT_MODES)}")
    if mode == "none":
        return
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                w = m.weight
                fan_in, fan_out = _fans(w.shape)
                if mode == "default":
                    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)): gain*sqrt(3/fan_in)
                    new = torch.empty(w.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
                else:
                    fan = fan_out if mode == "kaiming_fanout" else fan_in
                    new = torch.empty(w.shape, dtype=torch.float32).normal_(0.0, math.sqrt(2.0 / fan),
                                                                            generator=gen)
                w.copy_(new.to(device=w.device, dtype=w.dtype))
                if m.bias is not None:
                    if mode == "default":
                        bound = 1.0 / math.sqrt(fan_in)
                        b = torch.empty(m.bias.shape).uniform_(-bound, bound, generator=gen)
                        m.bias.copy_(b.to(device=m.bias.device, dtype=m.bias.dtype))
                    else:
                        m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.affine:
                    m.weight.fill_(1.0)
                    m.bias.zero_()


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def batch_stats_mode(model: nn.Module, train: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` with BN on batch statistics (``train=True``) without touching its running buffers.

    In train mode BN normalises with the current batch's mean/variance (as TE-NAS measures).  Setting
    ``track_running_stats=False`` for the duration keeps the running stats (never used in train mode) from being
    updated, which also keeps ``torch.func`` transforms free of in-place buffer writes.  Restores the modes.
    """
    was_training = [m.training for m in model.modules()]
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.train(train)
    if train:
        for m in bns:
            m.track_running_stats = False
    try:
        yield model
    finally:
        for m in bns:
            m.track_running_stats = True
        for m, t in zip(model.modules(), was_training):
            m.training = t


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_batch_stats(model: nn.Module, x: torch.Tensor) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with every BN's running statistics replaced by ``x``'s batch statistics.

    ``x``: [B, ...] the batch.  One no-grad train-mode forward records each BN input's per-channel mean and
    *biased* variance (what train-mode BN normalises with); they are swapped in as the running buffers and the
    model is put in eval mode, so ``model(x)`` gives the train-mode output while each sample's output depends
    on that sample alone (the statistics are constants).  Restores the buffers and modes on exit.
    """
    bns = _batchnorms(model)
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(m: nn.Module, inp: tuple, _out: torch.Tensor) -> None:
        a = inp[0].detach()
        dims = [0] + list(range(2, a.dim()))
        stats[m] = (a.mean(dim=dims), a.var(dim=dims, unbiased=False))

    handles = [m.register_forward_hook(record) for m in bns]
    try:
        with torch.no_grad(), batch_stats_mode(model, True):
            model(x)
    finally:
        for h in handles:
            h.remove()
    saved = [(m, m.running_mean, m.running_var) for m in stats]  # BNs that did not run are left alone
    was_training = [m.training for m in model.modules()]
    try:
        for m, (mean, var) in stats.items():
            m.running_mean, m.running_var = mean, var
        model.eval()
        yield model
    finally:
        for m, mean, var in saved:
            m.running_mean, m.running_var = mean, var
        for m, t in zip(model.modules(), was_training):
            m.training = t


def _coupling_mode(model: nn.Module, x: torch.Tensor, train_mode: bool,
                   bn_coupling: str) -> tuple[bool, contextlib.AbstractContextManager]:
    """(samples coupled?, context to evaluate the model in) for ``ntk_jacobian`` and its loop baseline."""
    if bn_coupling not in BN_COUPLINGS:
        raise ValueError(f"bn_coupling: {bn_coupling!r} is not one of {list(BN_COUPLINGS)}")
    has_bn = bool(_batchnorms(model))
    if train_mode and has_bn and bn_coupling == "frozen":
        return False, frozen_batch_stats(model, x)
    # dropout draws per call: keep the batched evaluation so the per-sample path never changes its semantics
    has_dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    return (train_mode and (has_bn or has_dropout)), batch_stats_mode(model, train_mode)


def _param_filter(which: str | ParamFilter) -> ParamFilter:
    if callable(which):
        return which
    if which == "weight":
        return lambda name: "weight" in name
    if which == "all":
        return lambda name: True
    raise ValueError(f"param_filter: {which!r} is not 'weight', 'all' or a callable")


def _as_batches(inputs: torch.Tensor | Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        batches = [inputs]
    elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        batches = list(inputs)
    else:
        raise ValueError(f"{name}: expected a tensor or a non-empty list of tensors")
    for t in batches:
        if t.dim() < 2 or t.shape[0] < 2:
            raise ValueError(f"{name}: each batch needs shape [B >= 2, ...], got {tuple(t.shape)}")
    return batches


def _over_inits(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor], repeats: int, init: str, seed: int,
                measure: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``[repeats]`` values of ``measure(batch)``; repeat ``r`` re-initialises with ``init_weights(model, init,
    seed + r)`` and uses batch ``r % len(inputs)`` (a tensor is one batch)."""
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    batches = _as_batches(inputs, "inputs")
    vals = []
    for r in range(repeats):
        init_weights(model, init, seed + r)
        vals.append(measure(batches[r % len(batches)]))
    return torch.stack(vals)


# ----------------------------------------------------------------------------------------------------------
# NTK
# ----------------------------------------------------------------------------------------------------------
def ntk_jacobian(model: nn.Module, x: torch.Tensor, *, param_filter: str | ParamFilter = "weight",
                 train_mode: bool = True, bn_coupling: str = "batch",
                 chunk_size: int | None = None) -> torch.Tensor:
    """Jacobian ``G`` [B, P] of the summed logits of each sample w.r.t. the selected parameters (vectorised).

    ``x``: [B, ...] one batch.  ``bn_coupling="batch"``: the model is evaluated once on the whole batch (BN
    couples the samples in train mode, as in the released code) and ``jacrev`` pulls back all ``B`` unit
    cotangents in one vmapped VJP.  ``"frozen"``, or a model with no batch coupling: ``vmap(grad)`` over single
    samples (see the module docstring).  ``chunk_size`` bounds the cotangents / samples per vmapped call
    (memory); None = all at once.
    """
    select = _param_filter(param_filter)
    named = dict(model.named_parameters())
    names = [n for n in named if select(n)]
    if not names:
        raise ValueError("param_filter: no parameter of the model is selected")
    params = {n: named[n].detach() for n in names}
    rest = {n: p.detach() for n, p in named.items() if n not in params}
    B = x.shape[0]
    coupled, mode = _coupling_mode(model, x, train_mode, bn_coupling)
    with mode:
        buffers = dict(model.named_buffers())  # inside the context: the frozen statistics
        if coupled:
            def summed_logits(p: dict[str, torch.Tensor]) -> torch.Tensor:
                out = functional_call(model, (p, rest, buffers), (x,))
                return out.reshape(B, -1).sum(dim=1)  # f~(x_i) = sum_c f_c(x_i), [B]

            jac = jacrev(summed_logits, chunk_size=chunk_size)(params)
        else:
            def summed_logit(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
                return functional_call(model, (p, rest, buffers), (xi.unsqueeze(0),)).sum()  # f~(x_i)

            jac = vmap(grad(summed_logit), in_dims=(None, 0), chunk_size=chunk_size)(params, x)
    return torch.cat([jac[n].reshape(B, -1) for n in names], dim=1)


def ntk_jacobian_loop(model: nn.Module, x: torch.Tensor, *, param_filter: str | ParamFilter = "weight",
                      train_mode: bool = True, bn_coupling: str = "batch") -> torch.Tensor:
    """Baseline: the released per-sample loop (one forward, ``B`` backward passes).  Returns ``G`` [B, P].

    ``bn_coupling`` as in ``ntk_jacobian`` (``"frozen"`` runs the same loop on the frozen-statistics network).
    """
    select = _param_filter(param_filter)
    named = [(n, p) for n, p in model.named_parameters() if select(n)]
    params = [p for _, p in named]
    rows = []
    _, mode = _coupling_mode(model, x, train_mode, bn_coupling)
    with mode:
        out = model(x).reshape(x.shape[0], -1).sum(dim=1)
        for i in range(x.shape[0]):
            grads = torch.autograd.grad(out[i], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, p in zip(grads, params)]))
    return torch.stack(rows)


def gram_condition(jac: torch.Tensor, *, dtype: torch.dtype = torch.float64,
                   nan_value: float = 1e5) -> torch.Tensor:
    """kappa = lambda_max / lambda_min of ``Theta = G G^T`` (paper Eq. 4), a 0-dim tensor on ``jac``'s device.

    ``jac``: [B, P].  NaN or a non-positive ``lambda_min`` -> ``nan_value`` (no host sync).
    """
    g = jac.to(dtype)
    gram = g @ g.T  # [B, B] empirical NTK (Eq. 2)
    eig = torch.linalg.eigvalsh(gram)  # ascending
    lo, hi = eig[0], eig[-1]
    kappa = hi / lo
    bad = torch.isnan(kappa) | ~(lo > 0)
    return torch.where(bad, torch.full_like(kappa, nan_value), kappa)


def ntk_kappa(model: nn.Module, x: torch.Tensor, *, param_filter: str | ParamFilter = "weight",
              train_mode: bool = True, bn_coupling: str = "batch", chunk_size: int | None = None,
              eig_dtype: torch.dtype = torch.float64, nan_value: float = 1e5) -> torch.Tensor:
    """kappa_N of ``model`` on one batch ``x`` [B, ...] with its current weights; a 0-dim tensor (no sync)."""
    jac = ntk_jacobian(model, x, param_filter=param_filter, train_mode=train_mode, bn_coupling=bn_coupling,
                       chunk_size=chunk_size)
    return gram_condition(jac, dtype=eig_dtype, nan_value=nan_value)


def ntk_condition_number(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor], *, repeats: int = 3,
                         init: str = "kaiming_fanout", seed: int = 0,
                         param_filter: str | ParamFilter = "weight", train_mode: bool = True,
                         bn_coupling: str = "batch", chunk_size: int | None = None,
                         eig_dtype: torch.dtype = torch.float64, nan_value: float = 1e5) -> float:
    """Mean NTK condition number over ``repeats`` fresh initialisations (paper Eq. 4; TE-NAS: 3 repeats).

    ``inputs``: one batch [B, ...] (B = 72 for NB201, 14 for DARTS/CIFAR-10 in TE-NAS) or a list of batches,
    used cyclically, repeat ``r`` on batch ``r % len``.  Repeat ``r`` re-initialises with ``init_weights(model,
    init, seed + r)`` (``init="none"`` keeps the current weights: repeats then differ only by batch).
    Leaves the model's weights at the last repeat's values.
    """
    vals = _over_inits(model, inputs, repeats, init, seed, lambda x: ntk_kappa(
        model, x, param_filter=param_filter, train_mode=train_mode, bn_coupling=bn_coupling, chunk_size=chunk_size,
        eig_dtype=eig_dtype, nan_value=nan_value))
    return float(vals.mean())


# ----------------------------------------------------------------------------------------------------------
# linear regions
# ----------------------------------------------------------------------------------------------------------
def relu_codes(model: nn.Module, x: torch.Tensor, *, chunk: int | None = 1000,
               train_mode: bool = True) -> torch.Tensor:
    """Binary activation pattern [N, D] (bool) of every ``nn.ReLU`` module for each sample of ``x`` [N, ...].

    The samples are pushed through in chunks of ``chunk`` (each chunk is one BN batch in train mode; TE-NAS
    uses 1000); ``D`` = total number of ReLU units that fired a hook.
    """
    records: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        records.append((out > 0).reshape(out.shape[0], -1))

    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("model: has no nn.ReLU module to count linear regions of")
    handles = [m.register_forward_hook(hook) for m in relus]
    n = x.shape[0]
    step = n if not chunk else int(chunk)
    rows = []
    try:
        with torch.no_grad(), batch_stats_mode(model, train_mode):
            for s in range(0, n, step):
                records.clear()
                model(x[s:s + step])
                rows.append(torch.cat(records, dim=1))
    finally:
        for h in handles:
            h.remove()
    widths = {r.shape[1] for r in rows}
    if len(widths) != 1:
        raise ValueError("inputs: chunks produced activation codes of different widths")
    return torch.cat(rows, dim=0)


def count_distinct_rows(codes: torch.Tensor) -> torch.Tensor:
    """Number of distinct rows of a binary matrix [N, D] (= sum_i 1/#{j: code_j = code_i}); 0-dim tensor."""
    if codes.shape[1] == 0:
        return torch.ones((), dtype=torch.long, device=codes.device)
    return torch.tensor(torch.unique(codes.to(torch.uint8), dim=0).shape[0], device=codes.device)


def linear_regions_once(model: nn.Module, x: torch.Tensor, *, chunk: int | None = 1000,
                        train_mode: bool = True) -> torch.Tensor:
    """R_N of ``model`` with its current weights over the samples ``x`` [N, ...] (0-dim long tensor)."""
    return count_distinct_rows(relu_codes(model, x, chunk=chunk, train_mode=train_mode))


def linear_regions(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor], *, repeats: int = 3,
                   init: str = "kaiming_fanin", seed: int = 0, chunk: int | None = 1000,
                   train_mode: bool = True) -> float:
    """Mean number of linear regions over ``repeats`` fresh initialisations (paper Eq. 5; TE-NAS: 3 repeats).

    ``inputs``: samples [N, ...] (TE-NAS: 3000 one-channel 3x3 image patches, BN batches of 1000) or a list of
    sample sets used cyclically.  Repeat ``r`` re-initialises with ``init_weights(model, init, seed + r)``.
    """
    vals = _over_inits(model, inputs, repeats, init, seed,
                       lambda x: linear_regions_once(model, x, chunk=chunk, train_mode=train_mode))
    return float(vals.double().mean())


# ----------------------------------------------------------------------------------------------------------
# combined score
# ----------------------------------------------------------------------------------------------------------
def tenas_objective(ntk_cond: float, linear_regions: float) -> float:
    """A scalar TE-NAS score of one cell, ``log R_N - log kappa_N`` (both floored at 1e-12; the sweep's objective
    before it became the rank combination of ``istanas.tenas.score.reference_objective``); higher is better:
    expressive (many regions, Eq. 5) and trainable (well-conditioned NTK, Eq. 4) architectures score high."""
    return math.log(max(linear_regions, 1e-12)) - math.log(max(ntk_cond, 1e-12))


def rank_combination(ntk_cond: Sequence[float], linear_regions: Sequence[float]) -> np.ndarray:
    """TE-NAS's rank combination over a set of architectures (paper Sec. 3.3):
    ``-(rank of kappa ascending + rank of R descending)``, average ranks from 1; higher is better.  ``[n]``."""
    from scipy.stats import rankdata

    return -(rankdata(np.asarray(ntk_cond)) + rankdata(-np.asarray(linear_regions)))


# ----------------------------------------------------------------------------------------------------------
# NASWOT activation-pattern kernel
# ----------------------------------------------------------------------------------------------------------
def naswot_kernel(codes: torch.Tensor) -> torch.Tensor:
    """``K_H = C C^T + (1 - C)(1 - C)^T`` [N, N] (float64) of binary codes ``C`` [N, D]: ``K_ij = D - d_H(c_i, c_j)``
    (Mellor et al., ICML 2021, "Neural Architecture Search without Training", Sec. 3)."""
    c = codes.to(torch.float64)
    return c @ c.T + (1.0 - c) @ (1.0 - c).T


def naswot_score(model: nn.Module, x: torch.Tensor, *, train_mode: bool = True) -> torch.Tensor:
    """NASWOT score ``log |K_H|`` (``slogdet``; a singular kernel gives ``-inf``) of ``model`` on one batch
    ``x`` [N, ...] with its current weights, over the codes of every ``nn.ReLU`` module in one forward (BN on
    the batch's statistics in train mode, as in the released code).  ``K_H`` is accumulated per ReLU as
    ``2 c c^T - |c_i| - |c_j| + D_l`` (= ``D_l - d_H``), so the [N, D] code matrix is never held.
    0-dim float64 tensor on ``x``'s device (no sync)."""
    n = x.shape[0]
    kern = torch.zeros(n, n, dtype=torch.float64, device=x.device)

    def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        c = (out > 0).reshape(n, -1).to(torch.float32)
        ones = c.sum(dim=1, dtype=torch.float64)
        kern.add_(2.0 * (c @ c.T).double() - ones[:, None] - ones[None, :] + c.shape[1])

    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError("model: has no nn.ReLU module to build the NASWOT kernel from")
    handles = [m.register_forward_hook(hook) for m in relus]
    try:
        with torch.no_grad(), batch_stats_mode(model, train_mode):
            model(x)
    finally:
        for h in handles:
            h.remove()
    sign, logabs = torch.linalg.slogdet(kern)
    return torch.where(sign > 0, logabs, torch.full_like(logabs, -math.inf))


# ----------------------------------------------------------------------------------------------------------
# SynFlow
# ----------------------------------------------------------------------------------------------------------
def _without_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every BatchNorm module replaced by ``nn.Identity``."""
    net = copy.deepcopy(model)
    for name, m in list(net.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(m, child_name, nn.Identity())
    return net


def synflow_score(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """SynFlow (Tanaka et al., NeurIPS 2020, Eq. 5; as a zero-cost proxy: Abdelfattah et al., ICLR 2021):
    ``S = sum_theta |theta * dR/dtheta|`` over the weights of every Conv / Linear module, with
    ``R = 1^T f(1; |theta|)`` the summed output for an all-ones input ``[1, *input_shape]`` of the network whose
    parameters are replaced by their absolute values, in float64, BatchNorm removed (as the released
    zero-cost-proxy code, ``bn=False``).  Data-free.  Works on a copy; ``model`` is untouched.  0-dim float64
    tensor on the model's device (no sync)."""
    net = _without_batchnorm(model).double()
    dev = next(net.parameters()).device
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.train()
    out = net(torch.ones((1, *input_shape), dtype=torch.float64, device=dev))
    if isinstance(out, (tuple, list)):  # the space's networks return (logits, aux logits or None)
        out = out[0]
    out.sum().backward()
    total = torch.zeros((), dtype=torch.float64, device=dev)
    for m in net.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and m.weight.grad is not None:
            total = total + (m.weight * m.weight.grad).abs().sum()
    return total.detach()


# ----------------------------------------------------------------------------------------------------------
# complexity of a super-net's live part
# ----------------------------------------------------------------------------------------------------------
def live_param_count(model: nn.Module, x: torch.Tensor) -> int:
    """Parameters (each tensor once) of the modules that run in a forward of ``x`` (a super-net with pruned
    ops counts only its live ops).  Eval mode, no grad; the training mode is restored."""
    ran: set[int] = set()
    own = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_pre_hook(lambda m, _i: ran.add(id(m))) for m in own]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    seen: set[int] = set()
    total = 0
    for m in own:
        if id(m) in ran:
            for p in m.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total


# ----------------------------------------------------------------------------------------------------------
# log-rank combination of several indicators
# ----------------------------------------------------------------------------------------------------------
def log_rank_combination(columns: Sequence[Sequence[float]], higher_better: Sequence[bool]) -> np.ndarray:
    """AZ-NAS's combination (Lee & Ham, CVPR 2024, Eq. 9): ``sum_m log(rank_m(a) / n)`` over the indicators,
    where ``rank_m`` ranks the ``n`` architectures by indicator ``m`` from 1 (worst) to ``n`` (best; ties get
    the average rank, NaN counts as worst).  ``columns``: ``[m][n]`` values; ``higher_better[m]`` their
    direction.  Returns ``[n]``; higher is better."""
    from scipy.stats import rankdata

    if len(columns) != len(higher_better) or not columns:
        raise ValueError("columns: need one direction per indicator and at least one indicator")
    total = None
    for col, up in zip(columns, higher_better):
        v = np.asarray(col, dtype=np.float64)
        v = np.where(np.isnan(v), -np.inf if up else np.inf, v)
        r = rankdata(v if up else -v)
        term = np.log(r / len(v))
        total = term if total is None else total + term
    return total
