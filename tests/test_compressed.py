"""CompressedSpace: matrices, batched recovery, support rules, Eq. 11 coefficients, state, config validation."""
from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from istanas.ista import recovery as R
from istanas.ista.compressed import CompressedSpace, RecoveryConfig, support_to_host
from istanas.config import ConfigError

K = 7


def _node(space: CompressedSpace, t: int, i: int):
    """Unpadded (A [m_i, n_i], b [m_i], z [n_i]) of node i of cell type t, as float64 numpy-free tensors."""
    mi, ni = space.m_per_node[i], space.n_per_node[i]
    return (space.A[t, i, :mi, :ni], space.b.detach()[t, i, :mi].double(), space.z[t, i, :ni])


def test_matrices_shapes_padding_and_seed():
    sp = CompressedSpace(K)
    assert sp.n_per_node == [14, 21, 28, 35] and sp.m_per_node == [7, 7, 7, 7]
    assert sp.A.shape == (2, 4, 7, 35) and sp.E.shape == (2, 4, 35, 35) and sp.b.shape == (2, 4, 7)
    assert sp.A.dtype == torch.float64
    for t, i in itertools.product(range(2), range(4)):
        A, _, _ = _node(sp, t, i)
        ni = sp.n_per_node[i]
        assert torch.all((A >= 0) & (A < 1))                              # reference: U[0, 1), unnormalised
        assert torch.all(sp.A[t, i, :, ni:] == 0) and torch.all(sp.E[t, i, ni:] == 0)
        An = A.numpy()
        np.testing.assert_allclose(sp.E[t, i, :ni, :ni].numpy(), An.T @ An - np.eye(ni), atol=1e-12)
    # 8 distinct matrices, reproducible from the seed
    flat = sp.A.reshape(8, -1)
    assert len({tuple(r[:5].tolist()) for r in flat}) == 8
    assert torch.equal(CompressedSpace(K).A, sp.A)
    assert not torch.equal(CompressedSpace(K, cfg=RecoveryConfig(seed=1)).A, sp.A)
    # Gaussian: unit-norm columns; per-node m
    sg = CompressedSpace(K, cfg=RecoveryConfig(matrix="gaussian", m=[4, 6, 8, 10]))
    assert sg.A.shape == (2, 4, 10, 35)
    for t, i in itertools.product(range(2), range(4)):
        A, _, _ = _node(sg, t, i)
        assert A.shape == (sg.m_per_node[i], sg.n_per_node[i])
        assert torch.allclose(A.norm(dim=0), torch.ones(A.shape[1], dtype=torch.float64))
        assert torch.all(sg.b.detach()[t, i, sg.m_per_node[i]:] == 0)


def test_recover_matches_exact_solver_per_node():
    sp = CompressedSpace(K, cfg=RecoveryConfig(m=[5, 6, 7, 7]))
    z = sp.recover()
    assert z.shape == (2, 4, 35) and torch.equal(z, sp.z)
    for t, i in itertools.product(range(2), range(4)):
        A, b, zi = _node(sp, t, i)
        assert torch.all(z[t, i, sp.n_per_node[i]:] == 0)
        ze = R.solve_cvxpy(A, b, sp.cfg.lam)
        f, fe = R.lasso_objective(A, b, zi, sp.cfg.lam), R.lasso_objective(A, b, ze, sp.cfg.lam)
        assert (f - fe) / fe <= 1e-6
        assert set(np.argsort(np.abs(zi.numpy()))[-2:]) == set(np.argsort(np.abs(ze.numpy()))[-2:])


def test_warm_start_recovery_equals_cold():
    sp = CompressedSpace(K)
    sp.recover()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):                                    # a few "optimiser steps" on b
        with torch.no_grad():
            sp.b.add_(3e-4 * torch.randn(sp.b.shape, generator=g) * sp.row_mask)
        z_warm = sp.recover(warm_start=True).clone()
        z_cold = sp.recover(warm_start=False)
        assert torch.allclose(z_warm, z_cold, rtol=1e-9, atol=1e-15)


def test_padding_never_matters():
    sp = CompressedSpace(K, cfg=RecoveryConfig(m=[4, 5, 6, 7]))
    z = sp.recover().clone()
    S = sp.select_support()
    c = sp.coefficients(S).detach().clone()
    with torch.no_grad():
        sp.b.masked_fill_(~sp.row_mask, 123.0)          # garbage in the padded entries of b
    assert torch.allclose(sp.recover(warm_start=False), z, rtol=1e-12, atol=0)
    assert torch.equal(sp.select_support(), S)
    assert torch.allclose(sp.coefficients(S).detach(), c, rtol=1e-6, atol=0)


def test_topk_support_follows_the_reference_rule():
    sp = CompressedSpace(K, cfg=RecoveryConfig(s=3))
    z = sp.recover()
    S = sp.select_support()
    assert S.shape == (2, 4, 3) and S.dtype == torch.long
    for t, i in itertools.product(range(2), range(4)):
        zi = z[t, i, :sp.n_per_node[i]].numpy()
        ref = np.argsort(np.abs(zi))[-3:][::-1]                # reference: np.abs(x).argsort()[-s:]
        assert S[t, i].tolist() == ref.tolist()               # decreasing |z|


def test_distinct_edges_support_and_two_ops_on_one_edge():
    sp = CompressedSpace(K, cfg=RecoveryConfig(support="distinct_edges"))
    z = torch.zeros(2, 4, 35, dtype=torch.float64)
    # node 0 of "normal": the two largest entries are ops 3 and 5 of edge 1, then op 0 of edge 0
    z[0, 0, 1 * K + 3], z[0, 0, 1 * K + 5], z[0, 0, 0 * K + 0] = 0.9, -0.8, 0.1
    g = torch.Generator().manual_seed(1)
    z[:, 1:] = torch.randn(2, 3, 35, generator=g, dtype=torch.float64) * sp.col_mask[:, 1:]
    z[1, 0, :14] = torch.randn(14, generator=g, dtype=torch.float64)
    S = sp.select_support(z)
    assert S[0, 0].tolist() == [1 * K + 3, 0 * K + 0]
    sp_top = CompressedSpace(K)
    assert sp_top.select_support(z)[0, 0].tolist() == [1 * K + 3, 1 * K + 5]     # top-k: same edge twice
    # brute force: the pair of distinct edges with the largest best-op magnitudes
    for t, i in itertools.product(range(2), range(4)):
        n_edges = 2 + i
        mag = z[t, i, :n_edges * K].abs().view(n_edges, K)
        best = mag.max(1).values
        pair = max(itertools.combinations(range(n_edges), 2), key=lambda p: best[p[0]] + best[p[1]])
        assert {int(k) // K for k in S[t, i]} == set(pair)
        for k in S[t, i].tolist():
            assert mag[k // K, k % K] == best[k // K]


def test_coefficients_eq11_against_the_reference_masked_form():
    sp = CompressedSpace(K)
    sp.recover()
    S = sp.select_support()
    c = sp.coefficients(S)
    assert c.shape == (2, 4, 2) and c.dtype == sp.b.dtype
    for t, i in itertools.product(range(2), range(4)):
        A, b, z = (x.numpy() for x in _node(sp, t, i))
        ni = A.shape[1]
        keep = np.zeros(ni, bool)
        keep[S[t, i].numpy()] = True
        # the reference: E from the full A, columns off S zeroed; x and A masked; alpha = b A_masked - E^T x
        E = A.T @ A - np.eye(ni)
        E[:, ~keep] = 0
        x = np.where(keep, z, 0.0)
        A_m = np.where(keep[None, :], A, 0.0)
        alpha = b.astype(np.float32).astype(np.float64) @ A_m - E.T @ x
        np.testing.assert_allclose(c[t, i].detach().double().numpy(), alpha[S[t, i].numpy()], rtol=1e-5,
                                   atol=1e-9)
        assert np.all(alpha[~keep] == 0)
        # Eq. 11 rewritten: c = z_S + A_S^T (b - A_S z_S)
        AS = A[:, S[t, i].numpy()]
        zS = z[S[t, i].numpy()]
        np.testing.assert_allclose(c[t, i].detach().double().numpy(), zS + AS.T @ (b - AS @ zS), rtol=1e-5,
                                   atol=1e-9)


def test_gradient_reaches_b_only():
    sp = CompressedSpace(K, cfg=RecoveryConfig(m=[5, 6, 7, 7]))
    sp.recover()
    S = sp.select_support()
    w = torch.randn(2, 4, 2, generator=torch.Generator().manual_seed(2))
    loss = (sp.coefficients(S) * w).sum()
    loss.backward()
    assert not sp.z.requires_grad and sp.z.grad is None
    assert not sp.A.requires_grad and not sp.E.requires_grad
    # explicit Jacobian: d c_k / d b = A[:, S_k]  ->  grad_b = A_S w
    expected = torch.zeros(2, 4, 7, dtype=torch.float64)
    for t, i in itertools.product(range(2), range(4)):
        mi = sp.m_per_node[i]
        expected[t, i, :mi] = sp.A[t, i, :mi][:, S[t, i]] @ w[t, i].double()
    assert torch.allclose(sp.b.grad.double(), expected, rtol=1e-5, atol=1e-7)
    assert torch.all(sp.b.grad[~sp.row_mask] == 0)


def test_frozen_nodes_keep_b_z_and_get_no_gradient():
    sp = CompressedSpace(K)
    sp.recover()
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    sp.freeze(mask)
    before = sp.effective_b().detach().clone()
    z_before = sp.z.clone()
    with torch.no_grad():
        sp.b.mul_(0.5).add_(1e-3)                           # e.g. weight decay and steps on the parameter
    after = sp.effective_b().detach()
    assert torch.equal(after[mask], before[mask]) and not torch.equal(after[~mask], before[~mask])
    z = sp.recover()
    assert torch.allclose(z[mask], z_before[mask], rtol=1e-12, atol=0)
    sp.b.grad = None
    sp.coefficients(sp.select_support()).sum().backward()
    assert torch.all(sp.b.grad[mask] == 0) and torch.any(sp.b.grad[~mask] != 0)


def test_genotype_pairs_order_and_index_convention():
    sp = CompressedSpace(K)
    S = torch.tensor([[[9, 2], [20, 0], [15, 27], [34, 8]],
                      [[0, 13], [14, 1], [21, 6], [28, 22]]])          # decreasing |z| per node
    pairs = sp.genotype_pairs(S)
    assert list(pairs) == ["normal", "reduce"]
    assert pairs["normal"] == [(2, 0), (2, 1), (0, 0), (6, 2), (6, 3), (1, 2), (1, 1), (6, 4)]
    assert pairs["reduce"][:2] == [(6, 1), (0, 0)]
    host = support_to_host(S)
    assert host.device.type == "cpu" and torch.equal(host, S)


def test_state_dict_resume_is_exact():
    sp = CompressedSpace(K, cfg=RecoveryConfig(seed=3))
    sp.recover()
    buf = io.BytesIO()
    torch.save(sp.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert {"b", "A", "E", "z"} <= set(state)
    other = CompressedSpace(K, cfg=RecoveryConfig(seed=99))
    other.load_state_dict(state)
    assert torch.equal(other.A, sp.A) and torch.equal(other.z, sp.z) and torch.equal(other.b, sp.b)
    assert torch.equal(other.recover(), sp.recover())


def test_bad_configs_are_rejected():
    n = [14, 21, 28, 35]
    RecoveryConfig().validate(n)
    cases = [
        (dict(m=0), "m"), (dict(m=15), "m"), (dict(m=[7, 7, 7]), "m"), (dict(m=[7, 7, 0, 7]), "m"),
        (dict(m=[7, 22, 7, 7]), "m"), (dict(m="7"), "m"),
        (dict(s=0), "s"), (dict(s=15), "s"), (dict(s=2.5), "s"),
        (dict(lam=0.0), "lam"), (dict(lam=-1e-5), "lam"), (dict(lam=float("nan")), "lam"), (dict(lam=True), "lam"),
        (dict(method="mosek"), "method"), (dict(matrix="bernoulli"), "matrix"), (dict(support="top"), "support"),
        (dict(max_iter=0), "max_iter"), (dict(tol=0.0), "tol"), (dict(tol=float("inf")), "tol"),
        (dict(solver=""), "solver"), (dict(seed=1.5), "seed"), (dict(device="gpu0"), "device"),
    ]
    for kw, field in cases:
        with pytest.raises(ConfigError, match=rf"^{field}:"):
            RecoveryConfig(**kw).validate(n)
    with pytest.raises(ValueError, match=r"^s:.*distinct_edges"):
        CompressedSpace(K, cfg=RecoveryConfig(support="distinct_edges", s=3))
    with pytest.raises(ValueError, match="^m:"):
        CompressedSpace(K, cfg=RecoveryConfig(m=15))
    with pytest.raises(ValueError, match="num_ops"):
        CompressedSpace(0)
    RecoveryConfig(m=[1, 21, 28, 35], s=14).validate(n)                       # the limits themselves are fine
    sp = CompressedSpace(K)
    with torch.no_grad():
        sp.b[0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="b contains non-finite"):
        sp.recover()


def test_other_methods_through_the_space():
    sp = CompressedSpace(K, cfg=RecoveryConfig(method="fista"))
    z_f = sp.recover(warm_start=False)
    sp_h = CompressedSpace(K)
    z_h = sp_h.recover()
    assert torch.equal(sp_h.select_support(z_h), sp.select_support(z_f))
    sp_c = CompressedSpace(K, cfg=RecoveryConfig(method="cvxpy", solver="CLARABEL"))
    z_c = sp_c.recover()
    assert torch.equal(sp_h.select_support(z_h), sp_c.select_support(z_c))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_space_matches_cpu():
    cpu = CompressedSpace(K)
    gpu = CompressedSpace(K).cuda()
    z_c, z_g = cpu.recover(), gpu.recover()
    assert z_g.device.type == "cuda" and torch.allclose(z_g.cpu(), z_c, rtol=1e-8, atol=1e-14)
    S = gpu.select_support()
    assert S.device.type == "cuda" and torch.equal(S.cpu(), cpu.select_support())
    c = gpu.coefficients(S)
    c.sum().backward()
    assert gpu.b.grad.device.type == "cuda"
    assert gpu.genotype_pairs(S) == cpu.genotype_pairs(cpu.select_support())
    host = CompressedSpace(K, cfg=RecoveryConfig(device="cpu")).cuda()           # solve on the host
    z_h = host.recover()
    assert z_h.device.type == "cuda" and host.z.device.type == "cuda"
    assert torch.allclose(z_h.cpu(), z_c, rtol=1e-8, atol=1e-14)
