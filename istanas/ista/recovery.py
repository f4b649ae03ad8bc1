"""Batched LASSO recovery of the sparse architecture code (ISTA-NAS, paper Eq. 9).

Every architecture update of ISTA-NAS recovers, for every intermediate node j, the sparse code

    z_j = argmin_z  1/2 ||A_j z - b_j||_2^2 + lambda ||z||_1                       (Eq. 9)

from the trainable compressed variable ``b_j``.  The reference implementation solves the eight problems (4 nodes x
{normal, reduce}) one by one with CVXPY + MOSEK on the CPU.  Here the whole batch is one tensor operation on the
training device.

Methods (``lasso(..., method=...)``):

``"homotopy"`` (default)
    An exact, batched LARS-lasso homotopy (Osborne, Presnell & Turlach 2000; Efron et al. 2004).  The solution path
    z(lambda') is piecewise linear in lambda'; starting from z = 0 at lambda' = ||A^T b||_inf it follows the path
    down to the requested lambda, adding a coordinate when its correlation |a_k^T (b - A z)| reaches lambda' and
    removing one when its coefficient crosses zero.  All problems advance one breakpoint per iteration (finished
    ones idle at their target); each breakpoint is one batched p x p solve on the active set, held in
    p = min(m, n) slots (7 x 7 for ISTA-NAS, whatever n), and about 70 small tensor ops.  The result is the exact
    KKT solution on the final support (machine precision: no iteration count or tolerance to tune), and it is
    certified by a KKT check; an uncertified problem (max_iter too small, degenerate A) is finished by FISTA with
    a warning.  Problems of different size share one zero-padded batch (zero rows/columns of ``A`` are inert).
    Warm start (``z0``): the support and signs of ``z0`` are tried first (one solve + KKT check, no path step);
    problems whose certificate fails run the cold path.  The reference's uniform, all-positive A has very
    coherent columns, which makes first-order methods slow (see ``"fista"``: 300 iterations miss the exact top-2
    support of ~40 % of nodes) but does not affect the homotopy: the 8 reference nodes take ~15 breakpoints,
    ~3 ms cold and ~0.7 ms warm on one CPU thread, >10x faster than the reference's per-node CVXPY loop
    (benchmarks/bench_recovery.py).  Being launch-bound, it is slower on a GPU (~14 ms cold on an H100), see
    ``RecoveryConfig.device`` in :mod:`istanas.ista.compressed`.
``"fista"``
    FISTA (Beck & Teboulle 2009) with gradient-based adaptive restart (O'Donoghue & Candes 2015), step 1/||A||_2^2,
    early stop on the relative change ||z_k+1 - z_k|| / ||z_k+1|| <= tol.  At the end the optimality of every
    problem is checked once (:func:`kkt_violation`, the subgradient residual relative to lambda; one host sync for
    the whole batch, none per iteration): problems above :data:`KKT_WARN_TOL` are reported in one
    ``RuntimeWarning`` (max_iter reached or the relative-change rule stopped too early; the code is returned as is).
``"ista"``
    Plain ISTA (proximal gradient), same step, stopping rule and final optimality check.
``"cvxpy"``
    One CVXPY problem per LASSO on the CPU (the reference's way), MOSEK when installed and licensed, CLARABEL
    otherwise, or the solver the caller names.  The problem is rescaled by ||b|| before solving (z and lambda scale
    with b), so that the interior-point tolerances act on an O(1) objective; the reference objective is ~1e-8.

All torch methods solve in float64 (inputs may be float32; the output has the inputs' floating dtype), run under
``torch.inference_mode`` and return an ordinary tensor without autograd history.  Host syncs: one for input
validation (finite A, b, lam > 0), one boolean ``all done?`` per ``check_every`` iterations, one for the final
certificate (homotopy) or optimality check (fista / ista).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Optional, Union

import numpy as np
import torch

__all__ = [
    "METHODS",
    "DEFAULT_METHOD",
    "MosekUnavailableError",
    "lasso",
    "lasso_objective",
    "kkt_violation",
    "KKT_WARN_TOL",
    "mosek_status",
    "default_cvxpy_solver",
    "solve_cvxpy",
]

METHODS = ("homotopy", "fista", "ista", "cvxpy")
DEFAULT_METHOD = "homotopy"

# Per-method defaults: (max_iter, tol).  homotopy: max path breakpoints / KKT tolerance relative to lambda;
# fista/ista: max iterations / relative change; cvxpy: unused.
_DEFAULTS = {
    "homotopy": (400, 1e-7),
    "fista": (20000, 1e-10),
    "ista": (50000, 1e-10),
    "cvxpy": (0, 0.0),
}

#: fista / ista: a problem whose final KKT residual (:func:`kkt_violation`, relative to lambda) exceeds this is
#: reported as unconverged.  Converged FISTA on the reference's shapes reaches ~1e-6; plain ISTA stopped by its
#: relative-change rule on the coherent uniform A is left at 1e-2 .. 1e-1, FISTA after 300 iterations at ~0.4.
KKT_WARN_TOL = 1e-4

LamLike = Union[float, int, torch.Tensor]


class MosekUnavailableError(RuntimeError):
    """MOSEK was requested but cannot be used (package missing or no valid licence); the message says what to do."""


# ----------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------

def _prepare(A: torch.Tensor, b: torch.Tensor, lam: LamLike, z0: Optional[torch.Tensor]):
    """Validate and broadcast inputs; return float64 flattened ``A [B,m,n]``, ``b [B,m]``, ``lam [B]``, ``z0 [B,n]``.

    Also returns the batch shape and the output dtype.
    """
    if not isinstance(A, torch.Tensor) or A.dim() < 2:
        raise ValueError(f"A must be a tensor of shape [..., m, n], got {type(A).__name__} "
                         f"{tuple(A.shape) if isinstance(A, torch.Tensor) else ''}")
    if not isinstance(b, torch.Tensor) or b.dim() < 1:
        raise ValueError("b must be a tensor of shape [..., m]")
    m, n = A.shape[-2], A.shape[-1]
    if m < 1 or n < 1:
        raise ValueError(f"A must have m >= 1 rows and n >= 1 columns, got shape {tuple(A.shape)}")
    if b.shape[-1] != m:
        raise ValueError(f"b has last dimension {b.shape[-1]} but A has m = {m} rows")
    if not A.is_floating_point() or not b.is_floating_point():
        raise ValueError("A and b must be floating-point tensors")
    if b.device != A.device:
        raise ValueError(f"b is on {b.device} but A is on {A.device}")
    out_dtype = torch.promote_types(A.dtype, b.dtype)
    dev = A.device
    f64 = torch.float64
    if isinstance(lam, torch.Tensor):
        lam_t = lam.to(device=dev, dtype=f64)
    elif isinstance(lam, (int, float)) and not isinstance(lam, bool):
        if not math.isfinite(float(lam)) or float(lam) <= 0:
            raise ValueError(f"lam must be a finite number > 0, got {lam!r}")
        lam_t = torch.tensor(float(lam), device=dev, dtype=f64)
    else:
        raise ValueError(f"lam must be a float or a tensor, got {type(lam).__name__}")
    try:
        batch = torch.broadcast_shapes(A.shape[:-2], b.shape[:-1], lam_t.shape)
    except RuntimeError as e:
        raise ValueError(f"batch shapes of A {tuple(A.shape[:-2])}, b {tuple(b.shape[:-1])} and lam "
                         f"{tuple(lam_t.shape)} do not broadcast") from e
    if z0 is not None:
        if not isinstance(z0, torch.Tensor) or z0.shape[-1] != n:
            raise ValueError(f"z0 must be a tensor of shape [..., n] with n = {n}")
        try:
            batch = torch.broadcast_shapes(batch, z0.shape[:-1])
        except RuntimeError as e:
            raise ValueError(f"z0 batch shape {tuple(z0.shape[:-1])} does not broadcast with {tuple(batch)}") from e
    B = int(math.prod(batch))
    A64 = A.to(f64).expand(*batch, m, n).reshape(B, m, n)
    b64 = b.to(f64).expand(*batch, m).reshape(B, m)
    lam64 = lam_t.expand(batch).reshape(B)
    z064 = None if z0 is None else z0.to(device=dev, dtype=f64).expand(*batch, n).reshape(B, n)
    # one host check for all validity conditions (one sync on an accelerator)
    flags = torch.stack([
        torch.isfinite(A64).all(),
        torch.isfinite(b64).all(),
        (torch.isfinite(lam64) & (lam64 > 0)).all() if B > 0 else torch.ones((), dtype=torch.bool, device=dev),
        torch.isfinite(z064).all() if z064 is not None else torch.ones((), dtype=torch.bool, device=dev),
    ]).tolist()
    if not flags[0]:
        raise ValueError("A contains non-finite values (NaN or Inf)")
    if not flags[1]:
        raise ValueError("b contains non-finite values (NaN or Inf); the architecture variables diverged")
    if not flags[2]:
        raise ValueError("lam must be finite and > 0 for every problem")
    if not flags[3]:
        raise ValueError("z0 contains non-finite values")
    return A64, b64, lam64, z064, tuple(batch), out_dtype


def lasso_objective(A: torch.Tensor, b: torch.Tensor, z: torch.Tensor, lam: LamLike) -> torch.Tensor:
    """The LASSO objective of Eq. 9, ``1/2 ||A z - b||^2 + lam ||z||_1``.

    Args:
        A: ``[..., m, n]``; b: ``[..., m]``; z: ``[..., n]``; lam: float or ``[...]``.
    Returns:
        ``[...]`` (broadcast batch shape), in the promoted dtype of the inputs.
    """
    r = (A @ z.unsqueeze(-1)).squeeze(-1) - b
    return 0.5 * (r * r).sum(-1) + lam * z.abs().sum(-1)


def kkt_violation(A: torch.Tensor, b: torch.Tensor, z: torch.Tensor, lam: LamLike) -> torch.Tensor:
    """Scaled violation of the LASSO optimality conditions, ``[...]`` (0 at the exact solution).

    With c = A^T (b - A z): |c_k - lam sign(z_k)| for z_k != 0 and max(|c_k| - lam, 0) for z_k = 0, maximum over k,
    divided by lam.  Computed in float64.
    """
    A = A.double()
    b = b.double()
    z = z.double()
    lam_t = lam.double() if isinstance(lam, torch.Tensor) else torch.tensor(float(lam), dtype=torch.float64,
                                                                           device=A.device)
    c = (A.mT @ (b - (A @ z.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)
    lam_e = lam_t.unsqueeze(-1)
    act = z != 0
    v = torch.where(act, (c - lam_e * torch.sign(z)).abs(), (c.abs() - lam_e).clamp_min(0))
    return v.amax(-1) / lam_t


# ----------------------------------------------------------------------------------------------------------------
# exact batched homotopy (LARS-lasso)
# ----------------------------------------------------------------------------------------------------------------

class _Problem:
    """What a batch of LASSOs shares across homotopy steps: A ``[B,m,n]``, A^T b ``[B,n]``, rank caps ``[B]``.

    The active set S (|S| <= rank(A) <= min(m, n)) is held compactly in ``p = min(m, n)`` slots: ``idx [B,p]``
    (column ids), ``on [B,p]`` (1.0 where the slot is used, else 0.0), ``sgn [B,p]`` (sign of the slot's
    coefficient, 0 on unused slots), so every solve is a ``p x p`` system whatever n is (7 x 7 for ISTA-NAS).
    """

    def __init__(self, A: torch.Tensor, b: torch.Tensor):
        self.A = A
        self.At = A.mT
        self.Atb = (self.At @ b.unsqueeze(-1)).squeeze(-1)
        B, self.m, self.n = A.shape
        self.p = min(self.m, self.n)
        # number of non-zero rows / columns: the rank bound of a (possibly zero-padded) problem
        rows = (A.abs().amax(-1) > 0).sum(-1)
        cols = (A.abs().amax(-2) > 0).sum(-1)
        self.cap = torch.minimum(rows, cols).to(A.dtype)

    def solve_slots(self, idx: torch.Tensor, on: torch.Tensor, sgn: torch.Tensor, lam: torch.Tensor):
        """Solve the KKT system of Eq. 9 restricted to S at penalty ``lam [B]``:
        G_SS d_S = s_S and G_SS z_S = A_S^T b - lam s_S (G = A^T A).

        Returns ``X [B,p,2]`` (d, z on the slots, 0 on unused ones), ``W = A^T A_S X [B,n,2]`` and ``ok [B]``
        (False where G_SS is singular).  With it, ``c = A^T b - W[..., 1]`` are the correlations A^T (b - A z).
        """
        AS = self.A.gather(-1, idx.unsqueeze(-2).expand(-1, self.m, -1)) * on.unsqueeze(-2)      # [B,m,p]
        GS = torch.bmm(AS.mT, AS)
        GS.diagonal(dim1=-2, dim2=-1).add_(1.0 - on)                                            # I on unused
        rhs = torch.stack([sgn, self.Atb.gather(-1, idx) * on - lam.unsqueeze(-1) * sgn], dim=-1)
        X, info = torch.linalg.solve_ex(GS, rhs)
        return X, torch.bmm(self.At, torch.bmm(AS, X)), info == 0

    def dense(self, idx: torch.Tensor, on: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """Scatter slot values ``[B,p]`` into a dense ``[B,n]`` vector."""
        return torch.zeros_like(self.Atb).scatter_add(-1, idx, vals * on)

    def kkt_ok(self, z: torch.Tensor, lam: torch.Tensor, tol: float) -> torch.Tensor:
        """True where dense ``z [B,n]`` satisfies the LASSO KKT conditions within ``tol * lam`` (plus round-off):
        A^T (b - A z) = lam sign(z) on supp(z), |A^T (b - A z)| <= lam off it, |supp(z)| <= rank cap."""
        c = self.Atb - (self.At @ (self.A @ z.unsqueeze(-1))).squeeze(-1)
        thr = (tol * lam + 1e-11 * self.Atb.abs().amax(-1)).unsqueeze(-1)
        nz = z != 0
        viol = torch.where(nz, (c - lam.unsqueeze(-1) * torch.sign(z)).abs(), c.abs() - lam.unsqueeze(-1))
        return (viol <= thr).all(-1) & (nz.sum(-1) <= self.cap) & torch.isfinite(z).all(-1)


def _homotopy(A: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, z0: Optional[torch.Tensor], max_iter: int,
              tol: float, check_every: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Batched LARS-lasso path from lambda_max = ||A^T b||_inf down to ``lam``.

    Shapes: A ``[B,m,n]``, b ``[B,m]``, lam ``[B]``, z0 ``[B,n]`` or None.  Along a segment with active set S and
    signs s, z_S(lam') = G_SS^{-1} (A_S^T b - lam' s) is linear in lam'; with gamma = lam_cur - lam' the segment
    ends at the first of: an inactive correlation c_k - gamma a_k reaching +-(lam_cur - gamma) (join), an active
    coefficient z_k + gamma d_k reaching 0 (drop), or lam' = lam (target).  Every problem takes one breakpoint
    per iteration; finished ones sit at their target (gamma = 0).  Events closer than 1e-11 lambda_max are
    round-off echoes of the previous breakpoint (a column that just joined or dropped) and are ignored; the final
    KKT check certifies the result.
    Returns ``z [B,n]``, ``certified [B]`` (KKT verified), the number of iterations run.
    """
    B, m, n = A.shape
    dev, dt = A.device, A.dtype
    P = _Problem(A, b)
    p = P.p
    n2 = 2 * n
    E = n2 + p + 1                      # candidate events: join at +lam (n), join at -lam (n), drop (p), target
    arp = torch.arange(p, device=dev)
    pm = torch.tensor([1.0, -1.0], dtype=dt, device=dev).view(1, 2, 1)
    one = torch.ones((), dtype=dt, device=dev)
    zero = torch.zeros((), dtype=dt, device=dev)
    inf = torch.tensor(math.inf, dtype=dt, device=dev)
    lam0, j0 = P.Atb.abs().max(-1)                              # lambda_max = ||A^T b||_inf
    zero_ok = lam0 <= lam                                       # z = 0 is optimal
    g_min = 1e-11 * lam0.unsqueeze(-1)                          # [B,1]
    g_min3 = g_min.unsqueeze(-1)
    # cold start: S = {argmax |A^T b|} in slot 0, lam_cur = lambda_max
    idx = torch.zeros(B, p, dtype=torch.long, device=dev)
    idx[:, 0] = j0
    sgn = torch.where((arp == 0) & ~zero_ok.unsqueeze(-1), torch.sign(P.Atb.gather(-1, idx)), zero)
    lam_cur = torch.where(zero_ok, lam, lam0)
    if z0 is not None:
        # warm start: guess (support, signs) of z0, solve once at lam, keep it where the KKT certificate holds
        mag, idx_w = z0.abs().topk(p, dim=-1)
        sgn_w = torch.sign(z0.gather(-1, idx_w))
        on_w = sgn_w.abs()
        X, _, ok_w = P.solve_slots(idx_w, on_w, sgn_w, lam)
        ok_w = ok_w & ((z0 != 0).sum(-1) <= p) & ~zero_ok & P.kkt_ok(P.dense(idx_w, on_w, X[..., 1]), lam, tol)
        okc = ok_w.unsqueeze(-1)
        idx = torch.where(okc, idx_w, idx)
        sgn = torch.where(okc, sgn_w, sgn)
        lam_cur = torch.where(ok_w, lam, lam_cur)
    it = 0
    for it in range(max_iter):
        if it % check_every == 0 and bool((lam_cur == lam).all()):
            break
        on = sgn.abs()
        X, W, ok = P.solve_slots(idx, on, sgn, lam_cur)
        d, z_s = X.unbind(-1)
        a, w1 = W.unbind(-1)
        c = P.Atb - w1                                          # correlations A^T (b - A z) at lam_cur
        # join events [B,2,n]: c_k - gamma a_k = +-(lam_cur - gamma)  ->  gamma = (lam_cur -+ c_k) / (1 -+ a_k)
        # Active columns sit on the boundary (numerator 0 up to round-off) and are excluded by the numerator test;
        # so is a column that just dropped, on the side it left.  With |S| = rank(A) the correlations scale with
        # lam', so no join can come before the target (no explicit rank test needed).
        num = lam_cur.view(B, 1, 1) - pm * c.unsqueeze(1)
        g_join = num / (1.0 - pm * a.unsqueeze(1))
        g_join = torch.where((num > g_min3) & (g_join > 0), g_join, inf)
        # drop events [B,p]: z_k + gamma d_k = 0  (unused slots: 0/0 = nan -> no event)
        g_drop = -z_s / d
        g_drop = torch.where(g_drop > g_min, g_drop, inf)
        cand = torch.cat([g_join.flatten(1), g_drop, (lam_cur - lam).unsqueeze(-1)], dim=-1)       # [B,E]
        gamma, e = cand.min(-1)
        is_join = e < n2
        plus = e < n
        # slot that changes: first free slot for a join, the dropped slot for a drop, none (= p) for the target
        slot = torch.where(is_join, on.argmin(-1), e - n2)
        oh = arp == slot.unsqueeze(-1)
        new_sgn = torch.where(is_join, torch.where(plus, one, -one), zero)
        sgn = torch.where(oh, new_sgn.unsqueeze(-1), sgn)
        idx = torch.where(oh, torch.remainder(e, n).unsqueeze(-1), idx)
        # target reached, or a singular active system (non-generic A; the problem then stays uncertified)
        lam_cur = torch.where((e == E - 1) | ~ok, lam, lam_cur - gamma)
    on = sgn.abs()
    X, _, _ = P.solve_slots(idx, on, sgn, lam_cur)
    z = torch.nan_to_num(P.dense(idx, on, X[..., 1]), nan=0.0, posinf=0.0, neginf=0.0)
    return z, P.kkt_ok(z, lam, tol), it


# ----------------------------------------------------------------------------------------------------------------
# proximal gradient: ISTA / FISTA
# ----------------------------------------------------------------------------------------------------------------

def _proximal_gradient(A: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, z0: Optional[torch.Tensor],
                       max_iter: int, tol: float, accelerated: bool, check_every: int,
                       active_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ISTA / FISTA with adaptive restart on ``A [B,m,n]``, ``b [B,m]``, ``lam [B]``; returns ``z [B,n]``.

    Step size 1/L with L = ||A||_2^2 (the Lipschitz constant of the smooth part's gradient).  Each problem stops
    (is frozen) once ||z_k+1 - z_k||_2 <= tol * ||z_k+1||_2.  ``active_mask [B]``: problems to iterate (others are
    returned as ``z0``).
    """
    B, m, n = A.shape
    dev, dt = A.device, A.dtype
    G = A.mT @ A
    Atb = (A.mT @ b.unsqueeze(-1)).squeeze(-1)
    L = torch.linalg.matrix_norm(A, ord=2) ** 2
    step = (1.0 / L.clamp_min(torch.finfo(dt).tiny)).unsqueeze(-1)           # [B,1]
    thr = lam.unsqueeze(-1) * step
    z = torch.zeros(B, n, dtype=dt, device=dev) if z0 is None else z0.clone()
    y = z.clone()
    t = torch.ones(B, dtype=dt, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev) if active_mask is None else ~active_mask
    for k in range(max_iter):
        grad = (G @ y.unsqueeze(-1)).squeeze(-1) - Atb
        u = y - step * grad
        z_new = torch.sign(u) * (u.abs() - thr).clamp_min(0.0)                # soft threshold, prox of lam||.||_1
        if accelerated:
            restart = ((y - z_new) * (z_new - z)).sum(-1) > 0                 # gradient restart
            t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
            beta = torch.where(restart, torch.zeros_like(t), (t - 1.0) / t_new)
            t_new = torch.where(restart, torch.ones_like(t), t_new)
            y_new = z_new + beta.unsqueeze(-1) * (z_new - z)
        else:
            t_new = t
            y_new = z_new
        change = (z_new - z).norm(dim=-1)
        conv = change <= tol * z_new.norm(dim=-1)
        keep = done.unsqueeze(-1)
        z = torch.where(keep, z, z_new)
        y = torch.where(keep, y, y_new)
        t = torch.where(done, t, t_new)
        done = done | conv
        if (k + 1) % check_every == 0 and bool(done.all()):
            break
    return z


# ----------------------------------------------------------------------------------------------------------------
# CVXPY backend
# ----------------------------------------------------------------------------------------------------------------

_MOSEK_HELP = ("Either install MOSEK and a licence (pip install mosek; put the licence file at ~/mosek/mosek.lic "
               "or point MOSEKLM_LICENSE_FILE to it; academic licences are free at https://www.mosek.com), "
               "or use another exact solver: solver='CLARABEL' (installed with cvxpy), or method='homotopy'.")


def _import_cvxpy():
    try:
        import cvxpy as cp  # noqa: PLC0415  (optional, heavy import)
    except ImportError as e:  # pragma: no cover - cvxpy is a dependency of the project
        raise ImportError("method='cvxpy' needs the cvxpy package (pip install cvxpy)") from e
    return cp


def _probe_mosek() -> Optional[str]:
    """None when MOSEK can solve a problem through CVXPY, otherwise the reason it cannot."""
    try:
        import mosek  # noqa: F401, PLC0415
    except ImportError:
        return "the Python package 'mosek' is not installed"
    cp = _import_cvxpy()
    if "MOSEK" not in cp.installed_solvers():
        return "the package 'mosek' is importable but CVXPY does not list MOSEK among its installed solvers"
    try:
        x = cp.Variable(2)
        prob = cp.Problem(cp.Minimize(cp.sum_squares(x - 1.0) + cp.norm1(x)))
        prob.solve(solver="MOSEK")
    except Exception as e:  # noqa: BLE001 - any failure here means "unusable"; the text says why
        return f"MOSEK is installed but could not solve a test problem (usually a missing or expired licence): {e}"
    if prob.status not in ("optimal", "optimal_inaccurate"):
        return f"MOSEK is installed but returned status {prob.status!r} on a test problem (licence?)"
    return None


@functools.lru_cache(maxsize=1)
def _mosek_reason_cached() -> Optional[str]:
    return _probe_mosek()


def mosek_status(refresh: bool = False) -> tuple[bool, str]:
    """``(usable, reason)`` for MOSEK through CVXPY.  Probed once (a tiny solve) and cached; ``refresh`` re-probes."""
    if refresh:
        _mosek_reason_cached.cache_clear()
    reason = _mosek_reason_cached()
    return (reason is None), ("MOSEK is usable" if reason is None else reason)


def default_cvxpy_solver() -> str:
    """``"MOSEK"`` when installed and licensed (the reference's solver), else ``"CLARABEL"``."""
    return "MOSEK" if mosek_status()[0] else "CLARABEL"


def _resolve_solver(solver: Optional[str]) -> str:
    cp = _import_cvxpy()
    if solver is None:
        return default_cvxpy_solver()
    name = str(solver).upper()
    if name == "MOSEK":
        ok, reason = mosek_status()
        if not ok:
            raise MosekUnavailableError(f"solver='MOSEK' was requested but MOSEK is unusable: {reason}. {_MOSEK_HELP}")
        return name
    if name not in cp.installed_solvers():
        raise ValueError(f"solver={solver!r} is not installed for CVXPY; installed: {cp.installed_solvers()}")
    return name


# tight tolerances for the open-source default; MOSEK and others run at their defaults (as the reference does)
_SOLVER_OPTS = {
    "CLARABEL": dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10, max_iter=200),
}


@functools.lru_cache(maxsize=64)
def _cached_problem(m: int, n: int):
    """A DPP-parametrised LASSO of shape (m, n), canonicalised once and re-solved with new (A, b, lam)."""
    cp = _import_cvxpy()
    A_p = cp.Parameter((m, n))
    b_p = cp.Parameter(m)
    lam_p = cp.Parameter(nonneg=True)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(A_p @ x - b_p) + lam_p * cp.norm1(x)))
    return prob, x, A_p, b_p, lam_p


def solve_cvxpy(A: torch.Tensor, b: torch.Tensor, lam: LamLike, solver: Optional[str] = None,
                reuse: bool = True) -> torch.Tensor:
    """Solve every LASSO of the batch with CVXPY, one problem at a time, on the CPU.

    Args:
        A: ``[..., m, n]``; b: ``[..., m]``; lam: float or ``[...]``.
        solver: a CVXPY solver name; ``None`` -> MOSEK if usable, else CLARABEL.  ``"MOSEK"`` when unusable raises
            :class:`MosekUnavailableError`.
        reuse: re-solve one cached, parametrised problem per shape (fast).  ``False`` builds a fresh
            ``cvx.Problem`` for every LASSO, exactly like the reference (benchmark baseline).
    Returns:
        z ``[..., n]`` on the device and in the dtype of the inputs.
    """
    A64, b64, lam64, _, batch, out_dtype = _prepare(A, b, lam, None)
    name = _resolve_solver(solver)
    cp = _import_cvxpy()
    opts = _SOLVER_OPTS.get(name, {})
    An = A64.detach().cpu().numpy()
    bn = b64.detach().cpu().numpy()
    ln = lam64.detach().cpu().numpy()
    B, m, n = An.shape
    out = torch.zeros(B, n, dtype=torch.float64)
    for i in range(B):
        scale = float(np.linalg.norm(bn[i]))
        if scale == 0.0:
            continue                                            # z = 0 solves the problem exactly
        if reuse:
            prob, x, A_p, b_p, lam_p = _cached_problem(m, n)
            A_p.value = An[i]
            b_p.value = bn[i] / scale
            lam_p.value = float(ln[i]) / scale
        else:
            x = cp.Variable(n)
            prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(An[i] @ x - bn[i] / scale)
                                          + (float(ln[i]) / scale) * cp.norm1(x)))
        prob.solve(solver=name, **opts)
        if x.value is None or prob.status not in ("optimal", "optimal_inaccurate"):
            raise RuntimeError(f"CVXPY solver {name} failed on problem {i} with status {prob.status!r}")
        out[i] = torch.from_numpy(np.asarray(x.value, dtype=np.float64)) * scale
    return out.reshape(*batch, n).to(device=A.device, dtype=out_dtype)


# ----------------------------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------------------------

def lasso(A: torch.Tensor, b: torch.Tensor, lam: LamLike, *, method: str = DEFAULT_METHOD,
          max_iter: Optional[int] = None, tol: Optional[float] = None, z0: Optional[torch.Tensor] = None,
          solver: Optional[str] = None, check_every: Optional[int] = None) -> torch.Tensor:
    """Solve a batch of LASSO problems, Eq. 9: ``z = argmin 1/2 ||A z - b||^2 + lam ||z||_1``.

    Args:
        A: ``[..., m, n]`` measurement matrices (zero-padded rows/columns are inert, so problems of different
            sizes can share a batch).
        b: ``[..., m]``.
        lam: float > 0 or a ``[...]`` tensor of them.
        method: ``"homotopy"`` (default, exact), ``"fista"``, ``"ista"`` or ``"cvxpy"``; see the module docstring.
        max_iter: homotopy: max path breakpoints (default 400); fista/ista: max iterations (20000 / 50000).
        tol: homotopy: KKT tolerance relative to lam (default 1e-7); fista/ista: relative change (default 1e-10).
        z0: ``[..., n]`` warm start (homotopy: its support and signs are tried first; fista/ista: initial iterate).
        solver: CVXPY solver for ``method="cvxpy"`` (default MOSEK if usable, else CLARABEL).
        check_every: iterations between host checks of "all problems finished" (default 1 on CPU, 4 on CUDA for
            homotopy; 50 for fista/ista).
    Returns:
        z ``[..., n]`` (the broadcast batch shape of A, b, lam, z0), on A's device, in the promoted dtype of A and b.
        No autograd graph: the recovery is treated as a constant (paper Eq. 11 differentiates through b only).
    Raises:
        ValueError: bad shapes, non-finite A/b/z0, lam <= 0, unknown method.
        MosekUnavailableError: ``method="cvxpy", solver="MOSEK"`` without a usable MOSEK.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if tol is not None and (not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    if check_every is not None and (not isinstance(check_every, int) or check_every < 1):
        raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
    if method == "cvxpy":
        with torch.no_grad():
            return solve_cvxpy(A.detach(), b.detach(), lam.detach() if isinstance(lam, torch.Tensor) else lam,
                               solver=solver)
    # inference mode: no autograd bookkeeping in the ~70 small ops per homotopy step (about 20 % faster on CPU);
    # the result is cloned outside so that callers get an ordinary tensor
    with torch.inference_mode():
        z = _lasso_torch(A, b, lam, method, max_iter, tol, z0, check_every)
    return z.clone()


def _lasso_torch(A: torch.Tensor, b: torch.Tensor, lam: LamLike, method: str, max_iter: Optional[int],
                 tol: Optional[float], z0: Optional[torch.Tensor], check_every: Optional[int]) -> torch.Tensor:
    """The torch methods of :func:`lasso` (inputs validated there, called under inference mode)."""
    A64, b64, lam64, z064, batch, out_dtype = _prepare(A.detach(), b.detach(), lam, z0)
    n = A64.shape[-1]
    d_iter, d_tol = _DEFAULTS[method]
    max_iter = d_iter if max_iter is None else max_iter
    tol = d_tol if tol is None else float(tol)
    if A64.shape[0] == 0:
        return torch.zeros(*batch, n, dtype=out_dtype, device=A.device)
    if method == "homotopy":
        ce = check_every or (1 if A64.device.type == "cpu" else 4)
        z, certified, _ = _homotopy(A64, b64, lam64, z064, max_iter, tol, ce)
        if not bool(certified.all()):
            # Not seen on generic problems; happens when max_iter is too small or A is degenerate.  Finish the
            # uncertified problems with FISTA from the homotopy's point (a close warm start).
            bad = ~certified
            zf = _proximal_gradient(A64, b64, lam64, z, _DEFAULTS["fista"][0], _DEFAULTS["fista"][1],
                                    True, 50, active_mask=bad)
            z = torch.where(bad.unsqueeze(-1), zf, z)
            warnings.warn(f"lasso(method='homotopy'): {int(bad.sum())} of {bad.numel()} problems were not "
                          "certified optimal by the homotopy (max_iter too small or degenerate A); "
                          "finished them with FISTA", RuntimeWarning, stacklevel=3)
    else:
        z = _proximal_gradient(A64, b64, lam64, z064, max_iter, tol, method == "fista", check_every or 50)
        _warn_unconverged(method, A64, b64, z, lam64, max_iter)
    return z.reshape(*batch, n).to(out_dtype)


def _warn_unconverged(method: str, A: torch.Tensor, b: torch.Tensor, z: torch.Tensor, lam: torch.Tensor,
                      max_iter: int) -> None:
    """One ``RuntimeWarning`` when some problem's KKT residual is above :data:`KKT_WARN_TOL` (one host sync)."""
    viol = kkt_violation(A, b, z, lam)                                   # [B], relative to lambda
    worst, bad = torch.stack([viol.max(), (viol > KKT_WARN_TOL).sum().to(viol.dtype)]).tolist()
    if bad > 0:
        warnings.warn(f"lasso(method={method!r}): {int(bad)} of {viol.numel()} problems did not converge (KKT "
                      f"residual up to {worst:.3g} x lambda, tolerance {KKT_WARN_TOL:g}) within max_iter={max_iter} "
                      f"and tol; raise max_iter, lower tol, or use method='homotopy' (exact)", RuntimeWarning,
                      stacklevel=4)
