"""TE-NAS training-free indicators: NTK condition number and number of linear regions.

Chen, Gong & Wang, "Neural Architecture Search on ImageNet in Four GPU Hours: A Theoretically Inspired
Perspective", ICLR 2021 (TE-NAS).  Both indicators are label-free and are computed at initialisation.

* **NTK condition number** (paper Sec. 3.1, Eq. 2-4).  For a batch ``x_1..x_B`` let
  ``g_i = d f~(x_i) / d theta`` with ``f~(x) = sum_c f_c(x)`` (the released code back-propagates a vector of
  ones through each sample's logits, so the kernel is ``B x B`` over summed logits, not the ``BK x BK`` NTK).
  The empirical NTK is ``Theta = G G^T`` (``G`` is ``B x P``) and ``kappa_N = lambda_max / lambda_min``
  (paper Eq. 4).  Lower is more trainable.

  The Jacobian ``G`` is computed in one vectorised call, in one of two ways:

  - ``bn_coupling="batch"`` (default; the paper's and the released code's kernel): ``torch.func.jacrev`` of the
    *batched* map ``theta -> (sum_c logits)[batch]`` (``functional_call``), i.e. reverse-mode over ``B``
    cotangents at once (``vmap`` over the vector-Jacobian product).  The whole batch goes through the network
    together, so BatchNorm in train mode couples the samples (``g_i`` carries the paths through the batch
    mean/variance), exactly as the released code's one forward + ``B`` backward passes do.  This costs the
    flops of ``B`` full-batch backward passes whatever the vectorisation: with the coupling, row ``i`` of ``G``
    needs its own pull-back through every sample (the Jacobian of ``B`` coupled outputs needs ``B`` reverse
    passes; the ``2C``-per-layer BN statistics are more numerous than ``B`` in these proxies, so going through
    them does not help).  Vectorising saves only dispatch, which pays on a GPU, not on a compute-bound CPU.
  - ``bn_coupling="frozen"``: the same forward (BN normalises with the batch's own mean and biased variance),
    but those statistics are held constant in the backward.  The samples are then independent and
    ``G = vmap(grad(f~))`` over single samples: one batched backward with per-sample weight gradients instead
    of ``B`` (``benchmarks/bench_tenas.py``: ~20x faster than the loop on CPU).  It is a different kernel: it
    drops the cross-sample terms, which mainly move ``lambda_max`` (the batch-mean direction BN removes), so
    kappa values differ from the paper's; the bench reports how the two rank candidates.  Offered as a setting,
    not the default, because the paper's indicator is the coupled one.

  Without a batch coupling (no BatchNorm, or ``train_mode=False`` so BN uses running statistics) both ways
  compute the same exact per-sample Jacobian and the fast per-sample path is used automatically.
  ``ntk_jacobian_loop`` is the released per-sample backward loop (either coupling), kept as the baseline of
  ``benchmarks/bench_tenas.py``.

  Parameters: every parameter whose name contains ``"weight"`` (conv kernels, BN gamma, linear weight; biases
  and BN beta excluded), as released.  Ops that do not run get zero Jacobian columns, which leave the Gram
  matrix unchanged (the released code drops them because their ``.grad`` is None: same matrix).

  Numerics (deviation, documented): the Gram matrix and its eigenvalues are computed in float64 (the released
  code used float32 ``symeig``; ``lambda_min`` near 0 made kappa unstable, issue #23).  NaN -> ``nan_value``
  (1e5) as released; in addition a non-positive ``lambda_min`` (a numerically singular kernel) also maps to
  ``nan_value`` instead of giving a negative or infinite kappa.

* **Number of linear regions** (paper Sec. 3.2, Eq. 5; Xiong et al. 2020).  A ReLU network is piecewise
  linear; two inputs share a region iff their binary ReLU activation patterns agree.  ``R_N`` = number of
  distinct patterns over the sampled inputs.  Forward hooks on every ``nn.ReLU`` module record
  ``output > 0``; codes of all hooked modules are concatenated per sample and the distinct rows are counted
  (``torch.unique(dim=0)``, the same number as the released Hamming-distance formula).  Higher is more
  expressive.  Only ``nn.ReLU`` *modules* are seen (functional ``F.relu`` calls are not).

Initialisation (tenas.md Sec. 1.7): the released launch script passes an init name that ``init_model`` does
not recognise, so *as released* every measurement uses PyTorch's default init, built once (no re-init per
repeat).  *As intended*, each repeat re-initialises with Kaiming-normal (fan_out for the NTK, "for backward";
fan_in for linear regions), conv/linear biases 0, BN gamma=1, beta=0.  The functions here re-initialise per
repeat (``init="kaiming_fanout"`` / ``"kaiming_fanin"`` by default, i.e. *as intended*: the issue asks for
averages over fresh initialisations, and the NTK is an expectation over the init distribution);
``init="default"`` draws PyTorch's default distribution afresh, and ``init="none"`` keeps the model's current
weights (the *as released* behaviour).  All draws use a seeded CPU generator and are copied to the model's
device, so results do not depend on the device's RNG.
"""
from __future__ import annotations

import contextlib
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
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    batches = _as_batches(inputs, "inputs")
    vals = []
    for r in range(repeats):
        init_weights(model, init, seed + r)
        vals.append(ntk_kappa(model, batches[r % len(batches)], param_filter=param_filter, train_mode=train_mode,
                              bn_coupling=bn_coupling, chunk_size=chunk_size, eig_dtype=eig_dtype, nan_value=nan_value))
    return float(torch.stack(vals).mean())


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
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    batches = _as_batches(inputs, "inputs")
    vals = []
    for r in range(repeats):
        init_weights(model, init, seed + r)
        vals.append(linear_regions_once(model, batches[r % len(batches)], chunk=chunk, train_mode=train_mode))
    return float(torch.stack(vals).double().mean())
