"""The sparse super-net runs exactly the support ops, equals a dense evaluation with zeros outside S, and the
one-stage variant exposes frozen, releasable BNs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from istanas.supernet import ISTA_PRIMITIVES, DenseSuperNet, SparseSuperNet, support_to_edge_weights

K = len(ISTA_PRIMITIVES)
STEPS = 4


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _global_edge(node: int, src: int) -> int:
    """Edge index written out independently: nodes 0..3 have 2, 3, 4, 5 input edges, numbered in order."""
    return {0: 0, 1: 2, 2: 5, 3: 9}[node] + src


def _random_support(gen: torch.Generator, s: int = 2, same_edge: bool = True) -> torch.Tensor:
    """[2, 4, s] distinct flat ids per node; with ``same_edge`` node 3 of the normal cell gets two ops of one edge."""
    sup = torch.zeros(2, STEPS, s, dtype=torch.int64)
    for t in range(2):
        for i in range(STEPS):
            sup[t, i] = torch.randperm((2 + i) * K, generator=gen)[:s]
    if same_edge and s >= 2:
        sup[0, 3, 0], sup[0, 3, 1] = 4 * K + 1, 4 * K + 5          # edge 4 (node 2's output), two ops
    return sup


def _tiny(cls, **kw):
    torch.manual_seed(0)
    return cls(C=4, num_classes=5, layers=3, **kw)


def test_forward_runs_only_the_support_ops():
    net = _tiny(SparseSuperNet)
    gen = torch.Generator().manual_seed(1)
    sup = _random_support(gen)
    coef = torch.randn(2, STEPS, 2)
    calls: dict[tuple[int, int, int], int] = {}
    handles = []
    for ci, cell in enumerate(net.cells):
        for e, ops in enumerate(cell.edges):
            for k, op in enumerate(ops):
                def hook(mod, inp, out, key=(ci, e, k)):
                    calls[key] = calls.get(key, 0) + 1
                handles.append(op.register_forward_hook(hook))
    try:
        out = net(torch.randn(3, 3, 8, 8), sup, coef)
    finally:
        for h in handles:
            h.remove()
    assert out.shape == (3, 5)
    expected = set()
    for ci, cell in enumerate(net.cells):
        t = 1 if cell.reduction else 0
        for i in range(STEPS):
            for k in sup[t, i].tolist():
                expected.add((ci, _global_edge(i, k // K), k % K))
    assert set(calls) == expected                     # nothing outside S ran
    assert all(v == 1 for v in calls.values())        # each support op exactly once
    assert len(calls) == 3 * STEPS * 2                # 3 cells x 4 nodes x s = 2 (out of 3 x 14 x 7 = 294)
    assert [c.reduction for c in net.cells] == [False, True, True]   # layers // 3 = 1, 2 * layers // 3 = 2


@pytest.mark.parametrize("train", [False, True])
def test_sparse_forward_equals_dense_with_zeros_outside_support(train):
    sparse = _tiny(SparseSuperNet)
    dense = _tiny(DenseSuperNet)
    missing, unexpected = dense.load_state_dict(sparse.state_dict(), strict=False)
    assert missing == ["alphas"] and unexpected == []
    gen = torch.Generator().manual_seed(2)
    for s in (1, 2, 3):
        sup = _random_support(gen, s=s)
        coef = torch.randn(2, STEPS, s, generator=gen, dtype=torch.float64).float().requires_grad_(True)
        # dense weights written out by hand: zero everywhere, the coefficient at (edge(k), op(k)) for k in S
        w = torch.zeros(2, 14, K)
        for t in range(2):
            for i in range(STEPS):
                for j, k in enumerate(sup[t, i].tolist()):
                    w[t, _global_edge(i, k // K), k % K] = coef[t, i, j].detach()
        w.requires_grad_(True)
        x = torch.randn(4, 3, 8, 8, generator=gen)
        sparse.train(train)
        dense.train(train)
        y_sparse = sparse(x, sup, coef)
        y_dense = dense.dense_forward_with_coefficients(x, w)
        torch.testing.assert_close(y_sparse, y_dense, rtol=1e-5, atol=1e-6)
        # gradients of the coefficients equal the dense gradients at the support entries
        g_out = torch.randn_like(y_sparse)
        (gc,) = torch.autograd.grad(y_sparse, coef, g_out)
        (gw,) = torch.autograd.grad(y_dense, w, g_out)
        for t in range(2):
            for i in range(STEPS):
                for j, k in enumerate(sup[t, i].tolist()):
                    torch.testing.assert_close(gc[t, i, j], gw[t, _global_edge(i, k // K), k % K],
                                               rtol=1e-4, atol=1e-6)
        # the scatter helper agrees with the hand-written dense weights
        torch.testing.assert_close(support_to_edge_weights(sup, coef.detach(), STEPS, K), w.detach())


def test_weights_of_every_op_persist_across_supports():
    net = _tiny(SparseSuperNet)
    n_ops = sum(1 for c in net.cells for e in c.edges for _ in e)
    assert n_ops == 3 * 14 * K
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):  # a change of support does not rebuild or re-initialise anything
        net(torch.randn(2, 3, 8, 8), _random_support(gen), torch.randn(2, STEPS, 2))
    after = net.state_dict()
    for k, v in before.items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, after[k]), k


def test_plan_is_cached_and_validated():
    net = _tiny(SparseSuperNet)
    sup = _random_support(torch.Generator().manual_seed(4))
    p1 = net.plan(sup)
    assert net.plan(sup.clone()) is p1            # same support -> the cached plan
    assert net.plan(sup.tolist()) is p1
    bad = sup.clone()
    bad[0, 0, 0] = 2 * K                          # node 0 has only 2 edges: ids 0..13
    with pytest.raises(ValueError, match="support_host"):
        net.plan(bad)
    rep = sup.clone()
    rep[1, 2, 1] = rep[1, 2, 0]
    with pytest.raises(ValueError, match="repeated"):
        net.plan(rep)
    with pytest.raises(ValueError, match="support_host"):
        net.plan(sup[:, :3])
    with pytest.raises(ValueError, match="coef"):
        net(torch.randn(2, 3, 8, 8), sup, torch.randn(2, STEPS, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_support_is_rejected_on_cuda():
    net = _tiny(SparseSuperNet).cuda()
    sup = _random_support(torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="CPU"):
        net(torch.randn(2, 3, 8, 8, device="cuda"), sup.cuda(), torch.randn(2, STEPS, 2, device="cuda"))


def test_onestage_bns_frozen_and_released_per_node():
    net = _tiny(SparseSuperNet, onestage=True, auxiliary=True)
    cands = list(net.candidate_ops())
    assert len(cands) == 3 * 14 * K
    for c in cands:
        assert isinstance(c.bn, nn.BatchNorm2d) and c.bn.affine, c.name   # every op ends in an affine BN
        for m in c.module.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
                assert not m.weight.requires_grad and not m.bias.requires_grad
    # the final BN is the op's output layer: with gamma = 2 the op output doubles (eval mode, beta = 0), for every
    # op of a stride-1 edge (normal cell) and of a stride-2 edge (reduce cell)
    net.eval()
    for c in cands:
        if not ((c.cell == 0 and c.node == 0 and c.edge == 0) or (c.cell == 1 and c.node == 0 and c.edge == 1)):
            continue
        x = torch.randn(2, 4 * (1 + c.cell), 8, 8)
        y1 = c.module(x)
        with torch.no_grad():
            c.bn.weight.fill_(2.0)
        torch.testing.assert_close(c.module(x), 2 * y1, msg=c.name)
        with torch.no_grad():
            c.bn.weight.fill_(1.0)
    released = net.unfreeze_node("reduce", 2)
    for c in net.candidate_ops():
        trainable = c.bn.weight.requires_grad
        assert trainable == (c.cell_type == 1 and c.node == 2), c
    assert released >= 2 * 4 * K      # 2 reduce cells x 4 edges x 7 ops, at least the final BN each
    net.train()
    out = net(torch.randn(2, 3, 8, 8), _random_support(torch.Generator().manual_seed(6)), torch.randn(2, STEPS, 2))
    assert isinstance(out, tuple) and out[0].shape == out[1].shape == (2, 5)


def test_dense_darts_net_uses_softmax_alpha():
    net = _tiny(DenseSuperNet)
    assert net.alphas.shape == (2, 14, K)
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    w = torch.softmax(net.alphas.detach(), dim=-1)
    torch.testing.assert_close(net(x), net.dense_forward_with_coefficients(x, w))
    assert all(not n.startswith("alphas") for n, _ in
               [(n, p) for n, p in net.named_parameters() if any(p is q for q in net.weight_parameters())])
