"""Evaluating NAS-Bench-201 cells on a trained super-net's inherited weights (the ISTA-NAS paper's Table 2 set-up).

:func:`sample_nb201_cells` draws ``k`` distinct cells uniformly (``random.Random(seed)``, so the same seed gives the
same cells on any machine and for every super-net) from a pool of :data:`CELL_POOLS`:

* ``"no_none"`` (default): the 4^6 = 4,096 cells with an op of :data:`istanas.nb201_supernet.NB201_SEARCH_OPS` on
  every edge -- exactly the supports an nb201 search with ``s = 3`` can pick (node j keeps ``min(3, j)`` ops,
  :data:`istanas.cell_space.NB201_RECOVERY`), so every sampled cell is one the super-net trained;
* ``"all"``: the 5^6 = 15,625 NAS-Bench-201 cells, ``none`` edges left out of the forward (a node with only
  ``none`` inputs is zero, :meth:`istanas.nb201_supernet.NB201SuperNetBase.forward_cell`).

:func:`recalibrate_bn` recomputes the BatchNorm statistics of the sub-network a forward uses: every
``BatchNorm2d`` of the model gets ``reset_running_stats()`` and ``momentum = None`` (PyTorch's cumulative moving
average), then the forward runs in train mode under ``no_grad`` over the given training batches; momentum and the
train/eval flag are restored.  After it, each BN used by the forward holds ``running_mean = (1/R) sum_r mean_r``
and ``running_var = (1/R) sum_r var_r`` (per-batch mean and unbiased variance of its input over ``[N, H, W]``, R
batches).  :func:`evaluate_cells` does that per cell and then measures top-1 accuracy / mean cross-entropy on fixed
held-out batches in eval mode (:func:`istanas.training.evaluate`); the super-net's own BN buffers are restored at
the end, so the result of a cell does not depend on the cells evaluated before it.  The cell's ops are weighted 1
(``forward_cell``, the discretised cell a retraining would train) or, with :func:`arch_weighted_forward`, by the
search's trained architecture weights (ISTA-NAS: Eq. 11 coefficients of the cell's support; DARTS: softmax(alpha)
of each edge's op): the sub-network of the super-net as the search itself would run it.

Shapes: batches ``(x [N, C_in, H, W], y [N])``; the super-net maps ``x`` to logits ``[N, classes]`` through
``forward_cell(x, arch)``.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from spaces.genotype import NB201Genotype
from spaces.ops import NB201_PRIMITIVES

from .engine import to_device
from .nb201_supernet import NB201_EDGES_PER_NODE, NB201_NUM_EDGES, NB201_SEARCH_OPS, support_of_genotype
from .training import evaluate

CELL_POOLS = ("no_none", "all")


def pool_ops(pool: str) -> tuple[str, ...]:
    """The ops each edge may take in ``pool`` (:data:`CELL_POOLS`)."""
    if pool == "no_none":
        return NB201_SEARCH_OPS
    if pool == "all":
        return NB201_PRIMITIVES
    raise ValueError(f"pool: must be one of {list(CELL_POOLS)}, got {pool!r}")


def nb201_cell(index: int, ops: Sequence[str]) -> NB201Genotype:
    """Cell number ``index`` of the ``len(ops)^6`` cells over ``ops``: edge e (arch-string order 1<-0, 2<-0, 2<-1,
    3<-0, 3<-1, 3<-2) gets ``ops[digit e of index in base len(ops)]`` (edge 0 the most significant digit)."""
    K = len(ops)
    if not 0 <= index < K ** NB201_NUM_EDGES:
        raise ValueError(f"index: must be in [0, {K ** NB201_NUM_EDGES}), got {index}")
    digits = [(index // K ** (NB201_NUM_EDGES - 1 - e)) % K for e in range(NB201_NUM_EDGES)]
    nodes, e = [], 0
    for n_in in NB201_EDGES_PER_NODE:
        nodes.append([(ops[digits[e + src]], src) for src in range(n_in)])
        e += n_in
    return NB201Genotype(nodes=nodes)


def sample_nb201_cells(k: int, seed: int = 0, pool: str = "no_none") -> list[NB201Genotype]:
    """``k`` distinct cells drawn uniformly without replacement from ``pool`` (module doc), seeded."""
    ops = pool_ops(pool)
    size = len(ops) ** NB201_NUM_EDGES
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= size:
        raise ValueError(f"k: must be an integer in [1, {size}] (cells of pool {pool!r}), got {k!r}")
    return [nb201_cell(i, ops) for i in random.Random(seed).sample(range(size), k)]


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` that tracks running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, forward: Callable[[torch.Tensor], Any], batches: Iterable,
                   device: torch.device | str) -> int:
    """Reset every BN of ``model`` and recompute its statistics as the cumulative average over ``batches`` of
    ``forward(x)`` in train mode (module doc).  Returns the number of batches run; raises ``ValueError`` on none."""
    bns = batch_norms(model)
    momenta = [m.momentum for m in bns]
    was = model.training
    n = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for batch in batches:
            x, _ = to_device(batch, torch.device(device))
            forward(x)
            n += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was)
    if n == 0:
        raise ValueError("batches: BN recalibration needs at least one training batch")
    return n


def fixed_batches(loader: Iterable, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches of one pass over ``loader`` (fewer if it has fewer), kept: the same batches for
    every cell and every super-net."""
    out = []
    for batch in loader:
        if len(out) >= n:
            break
        out.append((batch[0], batch[1]))
    return out


def evaluate_cells(net: nn.Module, cells: Sequence[Any], recal_batches: Sequence, eval_batches: Sequence,
                   device: torch.device | str,
                   cell_forward: Optional[Callable[[torch.Tensor, Any], torch.Tensor]] = None) -> list[dict[str, float]]:
    """Per cell of ``cells`` (NB201 genotypes or arch strings): :func:`recalibrate_bn` on ``recal_batches``, then
    ``{"acc", "loss", "n"}`` of ``cell_forward(x, cell)`` (default ``net.forward_cell``: unit weights) on
    ``eval_batches`` in eval mode.  ``net``'s BN buffers (and train flag) are restored afterwards."""
    dev = torch.device(device)
    cell_forward = net.forward_cell if cell_forward is None else cell_forward
    saved = {k: v.clone() for k, v in net.state_dict().items()
             if any(k.endswith(s) for s in ("running_mean", "running_var", "num_batches_tracked"))}
    was = net.training
    out = []
    try:
        for cell in cells:
            fwd = lambda x, c=cell: cell_forward(x, c)  # noqa: E731
            recalibrate_bn(net, fwd, recal_batches, dev)
            out.append(evaluate(fwd, eval_batches, dev, model=net))
    finally:
        net.load_state_dict(saved, strict=False)
        net.train(was)
    return out


def arch_weighted_forward(task: Any) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """``(x, cell) -> logits`` of the super-net restricted to ``cell`` with the search's trained architecture
    weights: ISTA-NAS (a task with a compressed ``space``) the Eq. 11 coefficients ``c = b^T A_S - z_S^T E_SS`` of
    the cell's support S under the final b and z; DARTS each edge's ``softmax(alpha_e)`` weight of the cell's op
    (``none`` edges 0).  Weights are computed once per cell."""
    net = supernet_of(task)
    space = getattr(getattr(task, "net", None), "space", None)
    space = getattr(task, "space", None) if space is None else space
    cache: dict[str, tuple] = {}

    def key(cell: Any) -> str:
        return cell if isinstance(cell, str) else cell.to_arch_str()

    if space is not None and hasattr(space, "coefficients"):
        def fwd(x: torch.Tensor, cell: Any) -> torch.Tensor:
            k = key(cell)
            if k not in cache:
                sup = support_of_genotype(k, net.primitives, s=space.cfg.s)
                with torch.no_grad():
                    cache[k] = (sup, space.coefficients(sup.to(space.b.device)).detach())
            sup, coef = cache[k]
            return net(x, sup, coef)
        return fwd
    if hasattr(net, "edge_weights"):
        def fwd_dense(x: torch.Tensor, cell: Any) -> torch.Tensor:
            k = key(cell)
            if k not in cache:
                with torch.no_grad():
                    w = net.edge_weights().detach()
                    mask = torch.zeros_like(w)
                    g = NB201Genotype.from_arch_str(k)
                    for e, op in enumerate(op for node in g.nodes for op, _ in node):
                        if op != "none":
                            mask[0, e, net.primitives.index(op)] = 1.0
                cache[k] = (w * mask,)
            return net.forward_dense(x, cache[k][0])
        return fwd_dense
    raise ValueError(f"task: {type(task).__name__} has no architecture weights (a compressed space or alphas)")


def supernet_of(task: Any) -> nn.Module:
    """The super-net module of a search task: ``task.net.supernet`` (one-stage) or ``task.model`` (two-stage,
    DARTS); it must have ``forward_cell``."""
    net = getattr(getattr(task, "net", None), "supernet", None)
    net = getattr(task, "model", None) if net is None else net
    if not hasattr(net, "forward_cell"):
        raise ValueError(f"task: {type(task).__name__} has no NAS-Bench-201 super-net with forward_cell")
    return net


__all__ = ["CELL_POOLS", "pool_ops", "nb201_cell", "sample_nb201_cells", "batch_norms", "recalibrate_bn",
           "fixed_batches", "evaluate_cells", "arch_weighted_forward", "supernet_of"]
