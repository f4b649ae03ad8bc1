"""Batched LASSO recovery (paper Eq. 9) against an independent exact solver (CVXPY + CLARABEL/MOSEK)."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from istanas.ista import recovery as R
from istanas.ista.recovery import MosekUnavailableError, lasso, lasso_objective

LAM = 1e-5          # the reference's lambda
M = 7               # the reference's m
K = 7               # ops per edge (reference, no `none`)
REAL_N = [(2 + i) * K for i in range(4)]     # 14, 21, 28, 35


def _problems(n_each: int, seed: int, matrix: str = "uniform", m: int = M, ns=REAL_N, b_std: float = 1e-3):
    """Random problems of the given shapes as a list of (A [m,n], b [m]) float64 tensors."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in ns:
        for _ in range(n_each):
            if matrix == "uniform":
                A = torch.rand(m, n, generator=g, dtype=torch.float64)
            else:
                A = torch.randn(m, n, generator=g, dtype=torch.float64)
                A = A / A.norm(dim=0, keepdim=True)
            out.append((A, b_std * torch.randn(m, generator=g, dtype=torch.float64)))
    return out


def _pad(problems):
    """Zero-pad a list of (A, b) into one batch ``A [B, m_max, n_max]``, ``b [B, m_max]``."""
    m_max = max(A.shape[0] for A, _ in problems)
    n_max = max(A.shape[1] for A, _ in problems)
    Ab = torch.zeros(len(problems), m_max, n_max, dtype=torch.float64)
    bb = torch.zeros(len(problems), m_max, dtype=torch.float64)
    for k, (A, b) in enumerate(problems):
        Ab[k, :A.shape[0], :A.shape[1]] = A
        bb[k, :A.shape[0]] = b
    return Ab, bb


def _cvxpy_each(problems, lam=LAM):
    return [R.solve_cvxpy(A, b, lam) for A, b in problems]


def _topk_set(z: torch.Tensor, s: int = 2) -> frozenset:
    """Top-s |z| as the reference does it (numpy argsort of |x|, last s)."""
    return frozenset(np.argsort(np.abs(z.numpy()))[-s:].tolist())


def _compare(problems, z_batch, z_exact, lam=LAM, rel=1e-6, min_agree=0.99):
    """Objective of every batched solution within ``rel`` of the exact one; top-2 supports agree often enough."""
    agree = 0
    worst = 0.0
    for k, ((A, b), ze) in enumerate(zip(problems, z_exact)):
        n = A.shape[1]
        zb = z_batch[k, :n]
        assert torch.all(z_batch[k, n:] == 0), "padding columns must stay zero"
        fb = lasso_objective(A, b, zb, lam).item()
        fe = lasso_objective(A, b, ze, lam).item()
        worst = max(worst, (fb - fe) / abs(fe))
        agree += _topk_set(zb) == _topk_set(ze)
    assert worst <= rel, f"objective {worst:.2e} relative above the exact solver's"
    assert agree / len(problems) >= min_agree, f"top-2 support agreement {agree}/{len(problems)}"
    return agree / len(problems)


@pytest.fixture(scope="module")
def real_problems():
    """220 problems of the reference's shapes: 200 uniform (m=7, 50 per n_i), 20 column-normalised Gaussian."""
    probs = _problems(50, seed=0) + _problems(5, seed=1, matrix="gaussian")
    return probs, _cvxpy_each(probs)


def test_default_method_matches_exact_solver_on_real_shapes(real_problems):
    probs, z_exact = real_problems
    A, b = _pad(probs)                                   # mixed n_i in one padded batch
    z = lasso(A, b, LAM)
    assert R.DEFAULT_METHOD == "homotopy"
    assert z.shape == (len(probs), 35) and z.dtype == torch.float64
    _compare(probs, z, z_exact)
    # exactness: the KKT conditions hold to round-off, far tighter than the interior-point solution
    assert R.kkt_violation(A, b, z, LAM).max() < 1e-6


def test_fista_matches_exact_solver(real_problems):
    probs, z_exact = real_problems
    sub = list(range(0, 200, 5)) + list(range(200, 220, 2))       # 50 problems, every shape
    ps = [probs[k] for k in sub]
    A, b = _pad(ps)
    z = lasso(A, b, LAM, method="fista")
    _compare(ps, z, [z_exact[k] for k in sub])


def test_ista_converges_on_well_conditioned_problems():
    """Plain ISTA is slow on the coherent uniform A; on normalised Gaussian A it reaches the exact optimum."""
    probs = _problems(4, seed=2, matrix="gaussian", m=7, ns=[14]) \
        + _problems(2, seed=2, matrix="gaussian", m=30, ns=[20])
    A, b = _pad(probs)
    z = lasso(A, b, LAM, method="ista")
    _compare(probs, z, _cvxpy_each(probs), min_agree=1.0)


def test_larger_problems_match_exact_solver():
    probs = _problems(3, seed=3, matrix="uniform", m=20, ns=[60, 100]) \
        + _problems(3, seed=4, matrix="gaussian", m=30, ns=[80])
    A, b = _pad(probs)
    for lam in (LAM, 1e-4):
        z = lasso(A, b, lam)
        _compare(probs, z, _cvxpy_each(probs, lam), lam=lam, min_agree=1.0)


def test_planted_sparse_solution_is_recovered():
    g = torch.Generator().manual_seed(5)
    B, m, n, s = 30, 24, 35, 2
    A = torch.randn(B, m, n, generator=g, dtype=torch.float64)
    A = A / A.norm(dim=-2, keepdim=True)
    z_star = torch.zeros(B, n, dtype=torch.float64)
    for k in range(B):
        idx = torch.randperm(n, generator=g)[:s]
        z_star[k, idx] = (1.0 + torch.rand(s, generator=g, dtype=torch.float64)) \
            * torch.where(torch.rand(s, generator=g) < 0.5, -1.0, 1.0).double()
    b = (A @ z_star.unsqueeze(-1)).squeeze(-1)
    z = lasso(A, b, 1e-9)
    # z = z* up to the O(lambda) shrinkage (an off-support entry of size O(lambda) is allowed: the LASSO
    # support at lambda > 0 may exceed supp(z*) when the irrepresentable condition fails for a column)
    assert torch.allclose(z, z_star, atol=1e-7)
    top = z.abs().topk(s, dim=-1).indices.sort(-1).values
    assert torch.equal(top, z_star.abs().topk(s, dim=-1).indices.sort(-1).values)
    # the reference's regime (m = 7): a 1-sparse code is always recovered exactly by l1 (coherence < 1)
    A7 = torch.randn(B, 7, 21, generator=g, dtype=torch.float64)
    A7 = A7 / A7.norm(dim=-2, keepdim=True)
    z1 = torch.zeros(B, 21, dtype=torch.float64)
    z1[torch.arange(B), torch.randint(0, 21, (B,), generator=g)] = 1e-3
    z = lasso(A7, (A7 @ z1.unsqueeze(-1)).squeeze(-1), 1e-12)
    assert torch.equal(z != 0, z1 != 0)
    assert torch.allclose(z, z1, atol=1e-11)


def test_padded_batch_equals_each_problem_alone():
    probs = _problems(2, seed=6, m=5, ns=[9, 14]) + _problems(2, seed=7, m=7, ns=[21, 35]) \
        + _problems(2, seed=8, matrix="gaussian", m=3, ns=[6])
    A, b = _pad(probs)
    z = lasso(A, b, LAM)
    exact = _cvxpy_each(probs)
    for k, (Ak, bk) in enumerate(probs):
        alone = lasso(Ak, bk, LAM)
        assert torch.allclose(z[k, :Ak.shape[1]], alone, rtol=1e-9, atol=1e-14)
        assert torch.all(z[k, Ak.shape[1]:] == 0)
        assert _topk_set(alone) == _topk_set(exact[k])


def test_warm_start_gives_the_exact_solution():
    probs = _problems(10, seed=9)
    A, b = _pad(probs)
    z_prev = lasso(A, b, LAM)
    g = torch.Generator().manual_seed(10)
    b_new = b + 1e-5 * torch.randn(b.shape, generator=g, dtype=torch.float64) * (A.abs().sum(-1) > 0)
    z_cold = lasso(A, b_new, LAM)
    z_warm = lasso(A, b_new, LAM, z0=z_prev)
    assert torch.allclose(z_warm, z_cold, rtol=1e-9, atol=1e-14)
    # a useless warm start (wrong support and signs) still ends at the solution
    z_bad = lasso(A, b_new, LAM, z0=torch.randn(z_prev.shape, generator=g, dtype=torch.float64))
    assert torch.allclose(z_bad, z_cold, rtol=1e-9, atol=1e-14)
    new_probs = [(Ak, b_new[k, :Ak.shape[0]]) for k, (Ak, _) in enumerate(probs)]
    _compare(new_probs, z_warm, _cvxpy_each(new_probs), min_agree=1.0)
    # FISTA warm start from the solution stays there
    z_f = lasso(A, b_new, LAM, method="fista", z0=z_cold)
    assert torch.allclose(z_f, z_cold, rtol=1e-6, atol=1e-12)


def test_warm_start_with_unchanged_support_needs_no_path_step():
    """The warm guess (support and signs of z0) is certified by the KKT check: zero homotopy breakpoints."""
    probs = _problems(5, seed=15)
    A, b = _pad(probs)
    lam = torch.full((len(probs),), LAM, dtype=torch.float64)
    z, cert, iters = R._homotopy(A, b, lam, None, 400, 1e-7, 1)
    assert bool(cert.all()) and iters > 5
    z2, cert2, iters2 = R._homotopy(A, b * (1 + 1e-9), lam, z, 400, 1e-7, 1)
    assert bool(cert2.all()) and iters2 == 0
    assert torch.allclose(z2, lasso(A, b * (1 + 1e-9), LAM), rtol=1e-9, atol=1e-15)


def test_per_problem_lambda_broadcasting_and_dtype():
    probs = _problems(2, seed=11, ns=[14, 28])
    A, b = _pad(probs)
    lam = torch.tensor([1e-5, 1e-4, 3e-5, 1e-6], dtype=torch.float64)
    z = lasso(A, b, lam)
    for k, (Ak, bk) in enumerate(probs):
        ze = R.solve_cvxpy(Ak, bk, float(lam[k]))
        fz = lasso_objective(Ak, bk, z[k, :Ak.shape[1]], float(lam[k]))
        fe = lasso_objective(Ak, bk, ze, float(lam[k]))
        assert (fz - fe) / fe <= 1e-6
    # one A shared by a batch of b (broadcasting); float32 in -> float32 out, solved in float64 inside
    A1 = probs[0][0]
    bs = torch.stack([p[1] for p in probs])[:, :M]
    z_b = lasso(A1.float(), bs.float(), LAM)
    assert z_b.dtype == torch.float32 and z_b.shape == (4, 14)
    z_64 = torch.stack([lasso(A1.float().double(), bs[k].float().double(), LAM) for k in range(4)])
    assert torch.allclose(z_b.double(), z_64, rtol=1e-5, atol=1e-9)
    # autograd inputs: the result is a constant, an ordinary (non-inference) tensor
    bg = b.clone().requires_grad_(True)
    zg = lasso(A, bg, LAM)
    assert not zg.requires_grad and not zg.is_inference()


def test_zero_b_and_large_lambda_give_zero():
    A, b = _pad(_problems(1, seed=12, ns=[14, 35]))
    assert torch.all(lasso(A, torch.zeros_like(b), LAM) == 0)
    lam_max = (A.mT @ b.unsqueeze(-1)).abs().amax((-2, -1))
    assert torch.all(lasso(A, b, lam_max * 1.01) == 0)
    for method in ("fista", "ista"):
        assert torch.all(lasso(A, torch.zeros_like(b), LAM, method=method) == 0)


def test_bad_inputs_are_rejected():
    A = torch.rand(3, 7, 14, dtype=torch.float64)
    b = torch.rand(3, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match="lam"):
        lasso(A, b, 0.0)
    with pytest.raises(ValueError, match="lam"):
        lasso(A, b, -1e-5)
    with pytest.raises(ValueError, match="lam"):
        lasso(A, b, torch.tensor([1e-5, 0.0, 1e-5], dtype=torch.float64))
    bad = b.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="b contains non-finite"):
        lasso(A, bad, LAM)
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="b contains non-finite"):
        lasso(A, bad, LAM, method="fista")
    with pytest.raises(ValueError, match="b has last dimension"):
        lasso(A, b[:, :6], LAM)
    with pytest.raises(ValueError, match="method"):
        lasso(A, b, LAM, method="lars")
    with pytest.raises(ValueError, match="max_iter"):
        lasso(A, b, LAM, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        lasso(A, b, LAM, tol=-1.0)
    with pytest.raises(ValueError, match="z0"):
        lasso(A, b, LAM, z0=torch.zeros(3, 13, dtype=torch.float64))
    with pytest.raises(ValueError, match="solver"):
        lasso(A, b, LAM, method="cvxpy", solver="NO_SUCH_SOLVER")


def test_homotopy_too_few_steps_falls_back_and_warns():
    A, b = _pad(_problems(2, seed=13, ns=[35]))
    with pytest.warns(RuntimeWarning, match="not certified"):
        z = lasso(A, b, LAM, max_iter=2)
    assert torch.allclose(z, lasso(A, b, LAM), rtol=1e-6, atol=1e-10)


def test_mosek_request_without_mosek_explains_why():
    usable, reason = R.mosek_status()
    if usable:
        pytest.skip("MOSEK is usable here")
    with pytest.raises(MosekUnavailableError, match="MOSEK is unusable") as info:
        lasso(torch.rand(7, 14), torch.rand(7), LAM, method="cvxpy", solver="MOSEK")
    msg = str(info.value)
    assert reason in msg and "CLARABEL" in msg and "licen" in msg.lower()
    assert R.default_cvxpy_solver() == "CLARABEL"


def test_mosek_installed_without_licence_is_reported(monkeypatch):
    """A MOSEK package that cannot solve (no licence) is reported as unusable with the reason."""
    import cvxpy as cp

    monkeypatch.setitem(sys.modules, "mosek", types.ModuleType("mosek"))
    monkeypatch.setattr(cp, "installed_solvers", lambda: ["CLARABEL", "MOSEK"])

    def refuse(self, *args, **kwargs):
        raise cp.error.SolverError("MOSEK error 1008: license file not found")

    monkeypatch.setattr(cp.Problem, "solve", refuse)
    try:
        usable, reason = R.mosek_status(refresh=True)
        assert not usable and "licence" in reason and "1008" in reason
        with pytest.raises(MosekUnavailableError, match="1008"):
            R.solve_cvxpy(torch.rand(7, 14), torch.rand(7), LAM, solver="MOSEK")
    finally:
        monkeypatch.undo()
        R.mosek_status(refresh=True)


def test_cvxpy_fresh_problem_path_matches_cached():
    probs = _problems(1, seed=14, ns=[14, 35])
    for A, b in probs:
        z1 = R.solve_cvxpy(A, b, LAM, reuse=True)
        z2 = R.solve_cvxpy(A, b, LAM, reuse=False)
        assert torch.allclose(z1, z2, rtol=1e-5, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    probs = _problems(50, seed=0) + _problems(5, seed=1, matrix="gaussian")
    A, b = _pad(probs)
    z_cpu = lasso(A, b, LAM)
    z_gpu = lasso(A.cuda(), b.cuda(), LAM)
    assert z_gpu.device.type == "cuda"
    assert torch.allclose(z_gpu.cpu(), z_cpu, rtol=1e-8, atol=1e-13)
    z_f = lasso(A.cuda().float(), b.cuda().float(), LAM, method="fista")
    assert z_f.dtype == torch.float32 and z_f.device.type == "cuda"
    z_w = lasso(A.cuda(), b.cuda(), LAM, z0=z_gpu)                 # warm start on the device
    assert torch.allclose(z_w.cpu(), z_cpu, rtol=1e-8, atol=1e-13)


@pytest.mark.parametrize("method", ["fista", "ista"])
def test_unconverged_proximal_methods_warn_and_converged_ones_do_not(method):
    """A first-order solve stopped by max_iter on the reference's coherent uniform A is reported (KKT residual
    checked once at the end against an independent KKT computation); a converged one is silent."""
    import warnings

    probs = _problems(3, seed=21, ns=[35])
    A, b = _pad(probs)
    with pytest.warns(RuntimeWarning, match=rf"method='{method}'.*3 of 3 problems did not converge") as rec:
        z = lasso(A, b, LAM, method=method, max_iter=20)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1          # one warning per call
    # independent KKT residual: |A^T(b - Az)| must reach lambda with the sign of z on the support, <= lambda off it
    c = torch.einsum("bmn,bm->bn", A, b - torch.einsum("bmn,bn->bm", A, z))
    resid = torch.where(z != 0, (c - LAM * torch.sign(z)).abs(), (c.abs() - LAM).clamp_min(0)).amax(-1) / LAM
    assert (resid > R.KKT_WARN_TOL).all()
    well = _problems(3, seed=22, matrix="gaussian", m=30, ns=[20])
    A2, b2 = _pad(well)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        lasso(A2, b2, LAM, method=method)                                 # converges: no warning
