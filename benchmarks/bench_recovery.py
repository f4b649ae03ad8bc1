"""Benchmark: batched recovery of all 8 nodes vs the reference's per-node CVXPY loop (paper Eq. 9).

For each trial a fresh CompressedSpace with the reference's settings (K = 7, 4 nodes x {normal, reduce}, uniform
A with m = 7, lambda = 1e-5, b ~ 1e-3 N(0, 1)) is built; on the same inputs we time

* ``batched``: ``CompressedSpace.recover(warm_start=False)`` (default method, cold start, one padded batch);
* ``cvxpy loop`` (the reference's way): one fresh ``cvx.Problem`` per node, ``0.5 * sum_squares(A x - b) +
  gamma * norm1(x)`` with ``gamma = cvx.Parameter(value=1e-5)``, solved by MOSEK when usable, else CLARABEL,
  default options, in a Python loop, including the tensor -> numpy conversion;
* a cached, parametrised CVXPY loop (``istanas.ista.recovery.solve_cvxpy``), warm-started batched recovery after
  an optimiser-sized change of b, and FISTA (300 iterations, and converged).

Support agreement: per node, the top-2 |z| of the batched result vs the CVXPY loop's, and vs a tight exact
solution (CLARABEL on the rescaled problem with 1e-12 tolerances).

Usage: ``python benchmarks/bench_recovery.py --json out.json [--trials 30] [--device cpu|cuda]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from istanas.ista import recovery as R  # noqa: E402
from istanas.ista.compressed import CompressedSpace, RecoveryConfig  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, reps: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in ms over ``reps`` calls (after one untimed call)."""
    fn()
    _sync(device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def _reference_loop(space: CompressedSpace, b: torch.Tensor, solver: str) -> list[np.ndarray]:
    """The reference's recovery: one fresh CVXPY problem per node, in a loop (ista_nas/recovery/mosek.py)."""
    import cvxpy as cp

    out = []
    A_all = space.A.detach().cpu().numpy()
    b_all = b.detach().cpu().numpy()
    for t in range(len(space.cell_types)):
        for i, (mi, ni) in enumerate(zip(space.m_per_node, space.n_per_node)):
            A = A_all[t, i, :mi, :ni]
            bi = b_all[t, i, :mi]
            x = cp.Variable(ni)
            gamma = cp.Parameter(nonneg=True, value=space.cfg.lam)
            prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(A @ x - bi) + gamma * cp.norm1(x)))
            prob.solve(solver=solver)
            out.append(np.asarray(x.value))
    return out


def _top2(z: np.ndarray) -> frozenset:
    return frozenset(np.argsort(np.abs(z))[-2:].tolist())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--trials", type=int, default=30, help="random spaces (8 nodes each)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions of the batched call per trial")
    ap.add_argument("--cvxpy-reps", type=int, default=2, help="timed repetitions of the CVXPY loop per trial")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the problems are tiny, intra-op threads only add latency; "
                         "0 leaves torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        import cvxpy  # noqa: F401
        solver = R.default_cvxpy_solver()
    except ImportError:                     # e.g. an accelerator image without cvxpy: batched timings only
        solver = None

    t_batched, t_warm_small, t_warm_adam, t_loop, t_cached, t_fista300, t_fista = [], [], [], [], [], [], []
    t_host: list[float] = []
    agree_loop = agree_exact = agree_f300 = agree_fista = nodes = 0
    worst_rel = 0.0
    warm_kept = 0
    for trial in range(args.trials):
        space = CompressedSpace(7, cfg=RecoveryConfig(seed=trial)).to(device)
        b = space.effective_b().detach()
        # batched, cold start (the default method)
        t_batched.append(_time(lambda: space.recover(warm_start=False), args.reps, device))
        if device.type != "cpu":                 # same space, LASSO solved on the host (cfg.device = "cpu")
            host = CompressedSpace(7, cfg=RecoveryConfig(seed=trial, device="cpu")).to(device)
            t_host.append(_time(lambda: host.recover(warm_start=False), args.reps, device))
        z = space.recover(warm_start=False).cpu()
        A_cpu, b_cpu = space.A.cpu(), b.cpu().double()

        def cached():
            return [R.solve_cvxpy(A_cpu[t, i, :7, :n], b_cpu[t, i, :7], space.cfg.lam)
                    for t in range(2) for i, n in enumerate(space.n_per_node)]
        if solver is not None:
            # the reference's way, on the same inputs
            t_loop.append(_time(lambda: _reference_loop(space, b, solver), args.cvxpy_reps, torch.device("cpu")))
            z_loop = _reference_loop(space, b, solver)
            # cached parametrised CVXPY (one problem per node, canonicalised once per shape), tight tolerances
            t_cached.append(_time(cached, args.cvxpy_reps, torch.device("cpu")))
            z_exact = cached()
        else:
            z_loop = [None] * 8
            z_exact = [None] * 8
        # FISTA: 300 iterations (the observation) and to convergence
        A_d, lam = space.A, space.cfg.lam
        t_fista300.append(_time(lambda: R.lasso(A_d, b, lam, method="fista", max_iter=300, tol=1e-30), 3, device))
        z_f300 = R.lasso(A_d, b, lam, method="fista", max_iter=300, tol=1e-30).cpu()
        t_fista.append(_time(lambda: R.lasso(A_d, b, lam, method="fista"), 1, device))
        z_f = R.lasso(A_d, b, lam, method="fista").cpu()
        k = 0
        for t in range(2):
            for i, n in enumerate(space.n_per_node):
                zi = z[t, i, :n].numpy()
                if solver is not None:
                    ze = z_exact[k].numpy()
                    agree_loop += _top2(zi) == _top2(z_loop[k])
                    agree_exact += _top2(zi) == _top2(ze)
                    agree_f300 += _top2(z_f300[t, i, :n].numpy()) == _top2(ze)
                    agree_fista += _top2(z_f[t, i, :n].numpy()) == _top2(ze)
                    Ai, bi = A_cpu[t, i, :7, :n], b_cpu[t, i, :7]
                    f = R.lasso_objective(Ai, bi, torch.from_numpy(zi), lam).item()
                    fe = R.lasso_objective(Ai, bi, z_exact[k], lam).item()
                    worst_rel = max(worst_rel, (f - fe) / abs(fe))
                nodes += 1
                k += 1
        # warm start after a change of b: tiny (support kept) and one Adam step at the reference's arch lr (6e-4)
        g = torch.Generator().manual_seed(1000 + trial)
        for delta, bucket in ((1e-6, t_warm_small), (6e-4, t_warm_adam)):
            space.recover(warm_start=False)
            z_prev = space.z.clone()
            step = (delta * torch.sign(torch.randn(space.b.shape, generator=g))).to(device)
            with torch.no_grad():
                space.b.add_(step)

            def warm():
                space.z.copy_(z_prev)
                return space.recover(warm_start=True)
            bucket.append(_time(warm, args.reps, device))
            if delta == 1e-6:
                warm_kept += int(torch.equal(space.z != 0, z_prev != 0))
            with torch.no_grad():
                space.b.sub_(step)

    med = statistics.median
    have = solver is not None

    def opt(x):
        return x if have else None
    res = {
        "speedup_vs_cvxpy": opt(med(t_loop) / med(t_batched)) if have else None,
        "support_agreement": opt(agree_loop / nodes),
        "support_agreement_vs_exact": opt(agree_exact / nodes),
        "max_rel_objective_gap_vs_exact": opt(worst_rel),
        "batched_cold_ms": med(t_batched),
        "batched_cold_host_solve_ms": med(t_host) if t_host else None,
        "batched_warm_small_change_ms": med(t_warm_small),
        "batched_warm_adam_step_ms": med(t_warm_adam),
        "cvxpy_loop_ms": med(t_loop) if have else None,
        "cvxpy_cached_loop_ms": med(t_cached) if have else None,
        "speedup_vs_cvxpy_cached": med(t_cached) / med(t_batched) if have else None,
        "fista300_ms": med(t_fista300),
        "fista300_support_agreement_vs_exact": opt(agree_f300 / nodes),
        "fista_converged_ms": med(t_fista),
        "fista_converged_support_agreement_vs_exact": opt(agree_fista / nodes),
        "warm_small_change_support_kept_fraction": warm_kept / args.trials,
        "nodes": nodes,
        "trials": args.trials,
        "method": RecoveryConfig().method,
        "cvxpy_solver": solver,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"recovery of {nodes // args.trials} nodes x {args.trials} trials on {device} "
          f"(method={res['method']}, baseline CVXPY+{solver}, {torch.get_num_threads()} CPU threads):")
    print(f"  batched cold {res['batched_cold_ms']:.2f} ms | warm (support kept) "
          f"{res['batched_warm_small_change_ms']:.2f} ms | warm after an Adam step "
          f"{res['batched_warm_adam_step_ms']:.2f} ms")
    if t_host:
        print(f"  same space, LASSO solved on the host CPU (cfg.device='cpu'): cold "
              f"{res['batched_cold_host_solve_ms']:.2f} ms")
    if have:
        print(f"  CVXPY per-node loop {res['cvxpy_loop_ms']:.1f} ms (cached problems {res['cvxpy_cached_loop_ms']:.1f} "
              f"ms) -> speedup {res['speedup_vs_cvxpy']:.1f}x ({res['speedup_vs_cvxpy_cached']:.1f}x vs cached)")
        print(f"  top-2 support agreement: {res['support_agreement']:.3f} vs CVXPY loop, "
              f"{res['support_agreement_vs_exact']:.3f} vs tight exact; max objective gap {worst_rel:.1e}")
        print(f"  FISTA 300 it: {res['fista300_ms']:.1f} ms, agreement "
              f"{res['fista300_support_agreement_vs_exact']:.3f}; converged: {res['fista_converged_ms']:.1f} ms, "
              f"agreement {res['fista_converged_support_agreement_vs_exact']:.3f}")
    else:
        print("  cvxpy not installed: no baseline, no agreement figures")
        print(f"  FISTA 300 it: {res['fista300_ms']:.1f} ms; converged: {res['fista_converged_ms']:.1f} ms")
    return res


if __name__ == "__main__":
    main()
