"""The compressed search space of ISTA-NAS: A, E, b, batched warm-started recovery, support, Eq. 11 coefficients.

For every cell type t (``"normal"``, ``"reduce"``) and intermediate node i (0..steps-1) the architecture code of the
node is a sparse vector z_{t,i} in R^{n_i}, n_i = (2 + i) K over (input edge, op) pairs (flat id = edge * K + op,
edge = input index 0..1+i, K = number of ops; the reference drops ``none``, K = 7).  It is searched through a dense
low-dimensional variable b_{t,i} = A_{t,i} z_{t,i} in R^{m_i} (paper Sec. 3):

* A_{t,i} in R^{m_i x n_i}: measurement matrix drawn once from a seeded generator and fixed for the whole search
  (``"uniform"``: i.i.d. U[0, 1), unnormalised, as the reference; ``"gaussian"``: i.i.d. N(0, 1) with unit-norm
  columns, the usual compressed-sensing choice).
* E_{t,i} = A^T A - I (the residual of A^T A to the identity, paper Eq. before 9).
* z = argmin 1/2 ||A z - b||^2 + lambda ||z||_1 (Eq. 9), recovered for all nodes of all cell types in one padded
  batch by :func:`istanas.ista.recovery.lasso`, warm-started from the previous z.
* Support S: top-s |z| per node (default), or s distinct input edges with their best op (DARTS's genotype rule;
  the NAS-Bench-201 space's only rule, there with s_i = min(s, input edges of node i), ``ragged_s``).  A node whose
  z has fewer non-zeros than it needs is filled by the largest |A^T b| among its zero entries, with a warning.
* Coefficients on S (Eq. 11): c = b^T A_S - z_S^T E_SS, z treated as a constant, so that gradients reach b only.

Layout: one parameter ``b [T, steps, m_max]`` and zero-padded buffers ``A [T, steps, m_max, n_max]``,
``E [T, steps, n_max, n_max]``, ``z [T, steps, n_max]`` with masks; padded entries never affect anything
(they are multiplied by the masks, and zero rows/columns are inert in the LASSO).  A, E and z are float64
buffers (the solve runs in float64; coefficients are computed in b's dtype); avoid ``module.half()``/``.float()``
on a model that owns this space, or A is rounded (``.to(device)`` is fine).  ``state_dict()`` holds b, A, E, z,
the masks and the frozen-node state, so a resumed search recovers exactly the same z.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from spaces.genotype import Genotype
from istanas.config import ConfigError
from istanas.ista.recovery import METHODS, lasso
from istanas.supernet import CELL_TYPES, ISTA_PRIMITIVES

__all__ = ["RecoveryConfig", "CompressedSpace", "HostRecovery", "support_to_host", "support_churn",
           "genotype_from_support", "MATRICES", "SUPPORTS"]

MATRICES = ("uniform", "gaussian")
SUPPORTS = ("topk", "distinct_edges")


@dataclass
class RecoveryConfig:
    """Settings of the sparse-coding step.

    Attributes:
        lam: lambda of Eq. 9 (reference: 1e-5), > 0.
        s: support size per node (reference and DARTS: 2), 1 <= s <= n_i.
        m: rows of A per node: one value for all nodes or a list with one value per node, 1 <= m_i <= n_i
            (reference: 7).
        method: LASSO method of :func:`istanas.ista.recovery.lasso` ("homotopy" exact batched default, "fista",
            "ista", "cvxpy").
        max_iter, tol: passed to the method (None: the method's default).
        matrix: "uniform" (reference: U[0,1), unnormalised) or "gaussian" (N(0,1), unit-norm columns).
        support: "topk" (default: the s largest |z| of a node, as the paper's Algorithm 1 and the reference; two
            ops on one input edge are possible) or "distinct_edges" (s distinct input edges, each with its
            largest-|z| op: DARTS's genotype rule; needs s <= 2, the edge count of the first node).
        solver: CVXPY solver for method "cvxpy" (None: MOSEK if usable, else CLARABEL).
        seed: seed of the generator that draws A (and the initial b).
        device: where the LASSO is solved: None (default) = where the space lives (the training device), or a
            device name such as "cpu".  The problems are tiny (8 x 7 x 35), so each homotopy step is a few dozen
            launch-bound ops and a GPU is slower than a CPU here (benchmarks/bench_recovery.py, H100: 13.7 ms per
            cold recovery of the 8 reference nodes on the GPU, 4.5 ms solving on its host CPU, transfers
            included).  z is returned on the space's device either way.
    """

    lam: float = 1e-5
    s: int = 2
    m: Union[int, list[int]] = 7
    method: str = "homotopy"
    max_iter: Optional[int] = None
    tol: Optional[float] = None
    matrix: str = "uniform"
    support: str = "topk"
    solver: Optional[str] = None
    seed: int = 0
    device: Optional[str] = None

    def m_per_node(self, steps: int) -> list[int]:
        """m_i for each of ``steps`` nodes."""
        if isinstance(self.m, (list, tuple)):
            return [int(v) for v in self.m]
        return [int(self.m)] * steps

    def validate(self, n_per_node: Optional[Sequence[int]] = None,
                 edges_per_node: Optional[Sequence[int]] = None) -> None:
        """Raise :class:`istanas.config.ConfigError` (a ``ValueError``) naming the first bad field.

        Args:
            n_per_node: candidates per node (n_i); enables the checks of m and s against n_i.
            edges_per_node: input edges per node; enables the check of s for ``support="distinct_edges"``.
        """
        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not math.isfinite(self.lam) \
                or self.lam <= 0:
            raise ConfigError(f"lam: must be a finite number > 0, got {self.lam!r}")
        if not is_int(self.s) or self.s < 1:
            raise ConfigError(f"s: must be an integer >= 1, got {self.s!r}")
        if isinstance(self.m, (list, tuple)):
            if len(self.m) == 0 or not all(is_int(v) for v in self.m):
                raise ConfigError(f"m: must be an integer or a non-empty list of integers, got {self.m!r}")
        elif not is_int(self.m):
            raise ConfigError(f"m: must be an integer or a list of integers, got {self.m!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method: must be one of {list(METHODS)}, got {self.method!r}")
        if self.max_iter is not None and (not is_int(self.max_iter) or self.max_iter < 1):
            raise ConfigError(f"max_iter: must be an integer >= 1 or null, got {self.max_iter!r}")
        if self.tol is not None and (isinstance(self.tol, bool) or not isinstance(self.tol, (int, float))
                                     or not math.isfinite(self.tol) or self.tol <= 0):
            raise ConfigError(f"tol: must be a finite number > 0 or null, got {self.tol!r}")
        if self.matrix not in MATRICES:
            raise ConfigError(f"matrix: must be one of {list(MATRICES)}, got {self.matrix!r}")
        if self.support not in SUPPORTS:
            raise ConfigError(f"support: must be one of {list(SUPPORTS)}, got {self.support!r}")
        if self.solver is not None and (not isinstance(self.solver, str) or not self.solver):
            raise ConfigError(f"solver: must be a CVXPY solver name or null, got {self.solver!r}")
        if not is_int(self.seed):
            raise ConfigError(f"seed: must be an integer, got {self.seed!r}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise ConfigError(f"device: not a torch device name: {self.device!r}") from e
        if n_per_node is None:
            if isinstance(self.m, (list, tuple)):
                bad = [v for v in self.m if v < 1]
                if bad:
                    raise ConfigError(f"m: every m_i must be >= 1, got {self.m!r}")
            elif self.m < 1:
                raise ConfigError(f"m: must be >= 1, got {self.m!r}")
            return
        n_per_node = [int(v) for v in n_per_node]
        if isinstance(self.m, (list, tuple)) and len(self.m) != len(n_per_node):
            raise ConfigError(f"m: has {len(self.m)} entries but there are {len(n_per_node)} nodes")
        for i, (mi, ni) in enumerate(zip(self.m_per_node(len(n_per_node)), n_per_node)):
            if mi < 1 or mi > ni:
                raise ConfigError(f"m: node {i} has m_i = {mi}, must satisfy 1 <= m_i <= n_i = {ni}")
            if self.s > ni:
                raise ConfigError(f"s: {self.s} exceeds the {ni} candidates of node {i}")
        if self.support == "distinct_edges" and edges_per_node is not None:
            e_min = min(int(v) for v in edges_per_node)
            if self.s > e_min:
                raise ConfigError(f"s: support='distinct_edges' needs s <= {e_min} (input edges of the first node), "
                                  f"got {self.s}")


def support_to_host(support: torch.Tensor) -> torch.Tensor:
    """Copy a support tensor to the CPU with a single transfer (the one host sync per recovery)."""
    return support.detach().cpu()


class CompressedSpace(nn.Module):
    """All nodes of all cell types in one padded batch: A, E, b, z; recovery, support and Eq. 11 coefficients.

    Args:
        num_ops: K, ops per edge (7 in the reference, which drops ``none``).
        steps: intermediate nodes per cell (4); node i has 2 + i input edges and n_i = (2 + i) K candidates.
        cfg: :class:`RecoveryConfig` (validated here).
        cell_types: names of the cell types, T = len(cell_types).
        init_b_std: b is initialised to ``init_b_std * N(0, 1)`` (reference: 1e-3); must be > 0 (b = 0 gives
            z = 0, all coefficients 0, every cell output 0, and so a zero gradient of b forever).
        edges_per_node: input edges of every node (default ``2 + i``, the DARTS cell; NAS-Bench-201: 1, 2, 3).
        ragged_s: node i keeps ``s_i = min(s, edges_per_node[i])`` entries (``support="distinct_edges"`` only: at
            most one op per edge, so a node cannot keep more ops than it has edges); the support tensor stays
            ``[T, steps, s]`` with slots ``j >= s_i`` set to -1 (no op; zero coefficient).

    Parameters / buffers (index order t, i):
        b: parameter ``[T, steps, m_max]`` (entries i >= m_i are padding, masked out everywhere).
        A: ``[T, steps, m_max, n_max]`` float64, zero padded.  E: ``[T, steps, n_max, n_max]`` float64.
        z: ``[T, steps, n_max]`` float64, last recovery (warm start).  row_mask ``[T, steps, m_max]``,
        col_mask ``[T, steps, n_max]`` (bool).  frozen ``[T, steps]`` (bool) and b_frozen (the value a frozen
        node keeps; see :meth:`freeze`).
    """

    def __init__(self, num_ops: int, steps: int = 4, cfg: Optional[RecoveryConfig] = None,
                 cell_types: Sequence[str] = ("normal", "reduce"), init_b_std: float = 1e-3,
                 edges_per_node: Optional[Sequence[int]] = None, ragged_s: bool = False):
        super().__init__()
        if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 1:
            raise ValueError(f"num_ops: must be an integer >= 1, got {num_ops!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
        cell_types = tuple(cell_types)
        if len(cell_types) == 0 or len(set(cell_types)) != len(cell_types) \
                or not all(isinstance(c, str) for c in cell_types):
            raise ValueError(f"cell_types: must be distinct names, got {cell_types!r}")
        if isinstance(init_b_std, bool) or not isinstance(init_b_std, (int, float)) \
                or not math.isfinite(init_b_std) or init_b_std <= 0:
            raise ValueError(f"init_b_std: must be a finite number > 0 (b = 0 never gets a gradient), "
                             f"got {init_b_std!r}")
        self.cfg = cfg if cfg is not None else RecoveryConfig()
        self.num_ops = num_ops
        self.steps = steps
        self.cell_types = cell_types
        if edges_per_node is None:
            edges_per_node = [2 + i for i in range(steps)]
        self.edges_per_node = [int(e) for e in edges_per_node]
        if len(self.edges_per_node) != steps or min(self.edges_per_node) < 1:
            raise ValueError(f"edges_per_node: expected {steps} integers >= 1, got {list(edges_per_node)!r}")
        self.n_per_node = [e * num_ops for e in self.edges_per_node]
        self.ragged_s = bool(ragged_s)
        if self.ragged_s and self.cfg.support != "distinct_edges":
            raise ValueError("ragged_s: needs support='distinct_edges' (at most one op per input edge)")
        self.cfg.validate(self.n_per_node, None if self.ragged_s else self.edges_per_node)
        self.s_per_node = [min(self.cfg.s, e) if self.ragged_s else self.cfg.s for e in self.edges_per_node]
        self.m_per_node = self.cfg.m_per_node(steps)
        T, m_max, n_max = len(cell_types), max(self.m_per_node), max(self.n_per_node)
        f64 = torch.float64
        gen = torch.Generator().manual_seed(int(self.cfg.seed))
        A = torch.zeros(T, steps, m_max, n_max, dtype=f64)
        E = torch.zeros(T, steps, n_max, n_max, dtype=f64)
        row_mask = torch.zeros(T, steps, m_max, dtype=torch.bool)
        col_mask = torch.zeros(T, steps, n_max, dtype=torch.bool)
        for t in range(T):
            for i, (mi, ni) in enumerate(zip(self.m_per_node, self.n_per_node)):
                Ai = self._draw(mi, ni, gen)
                A[t, i, :mi, :ni] = Ai
                E[t, i, :ni, :ni] = Ai.T @ Ai - torch.eye(ni, dtype=f64)         # E = A^T A - I
                row_mask[t, i, :mi] = True
                col_mask[t, i, :ni] = True
        b0 = init_b_std * torch.randn(T, steps, m_max, generator=gen, dtype=f64) * row_mask
        self.b = nn.Parameter(b0.to(torch.get_default_dtype()))
        self.register_buffer("A", A)
        self.register_buffer("E", E)
        self.register_buffer("z", torch.zeros(T, steps, n_max, dtype=f64))
        self.register_buffer("row_mask", row_mask)
        self.register_buffer("col_mask", col_mask)
        self.register_buffer("frozen", torch.zeros(T, steps, dtype=torch.bool))
        self.register_buffer("b_frozen", torch.zeros(T, steps, m_max, dtype=self.b.dtype))
        slots = torch.arange(self.cfg.s).view(1, 1, -1) < torch.tensor(self.s_per_node).view(1, -1, 1)
        self.register_buffer("slot_mask", slots.expand(T, steps, self.cfg.s).contiguous(), persistent=False)
        self.underfilled = 0          # support selections that had to fill a node beyond its non-zeros of z

    def _draw(self, m: int, n: int, gen: torch.Generator) -> torch.Tensor:
        """One measurement matrix ``[m, n]`` (float64) from the seeded generator."""
        if self.cfg.matrix == "uniform":
            return torch.rand(m, n, generator=gen, dtype=torch.float64)           # reference: U[0, 1)
        A = torch.randn(m, n, generator=gen, dtype=torch.float64)
        return A / A.norm(dim=0, keepdim=True).clamp_min(1e-300)                # unit-norm columns

    # ------------------------------------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return (f"num_ops={self.num_ops}, steps={self.steps}, cell_types={self.cell_types}, n={self.n_per_node}, "
                f"m={self.m_per_node}, lam={self.cfg.lam}, s={self.cfg.s}, method={self.cfg.method!r}, "
                f"matrix={self.cfg.matrix!r}, support={self.cfg.support!r}")

    def effective_b(self) -> torch.Tensor:
        """b as used everywhere, ``[T, steps, m_max]``: padding zeroed, frozen nodes at their frozen value."""
        b = self.b * self.row_mask.to(self.b.dtype)
        return torch.where(self.frozen.unsqueeze(-1), self.b_frozen.to(b.dtype), b)

    @torch.no_grad()
    def freeze(self, nodes: torch.Tensor) -> None:
        """Freeze nodes (``[T, steps]`` bool, True = freeze; already frozen stay frozen).

        A frozen node keeps its current b exactly (whatever an optimiser later does to the parameter, e.g. weight
        decay), gets no gradient, and so keeps its z and support (one-stage ISTA-NAS, Algorithm 2).
        """
        nodes = nodes.to(device=self.frozen.device, dtype=torch.bool)
        if nodes.shape != self.frozen.shape:
            raise ValueError(f"nodes: expected shape {tuple(self.frozen.shape)}, got {tuple(nodes.shape)}")
        new = nodes & ~self.frozen
        cur = (self.b.detach() * self.row_mask.to(self.b.dtype)).to(self.b_frozen.dtype)
        self.b_frozen.copy_(torch.where(new.unsqueeze(-1), cur, self.b_frozen))
        self.frozen.copy_(self.frozen | new)

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def recover(self, warm_start: bool = True) -> torch.Tensor:
        """Recover z for every node of every cell type in one batched LASSO (Eq. 9); stores and returns it.

        Args:
            warm_start: start from the stored z (the previous recovery); False = cold start.
        Returns:
            z ``[T, steps, n_max]`` float64, zero on padding, no autograd graph.
        Raises:
            ValueError: if b is not finite (the search diverged).
        """
        b = self.effective_b().detach()
        A, z0 = self.A, (self.z if warm_start else None)
        if self.cfg.device is not None and torch.device(self.cfg.device) != A.device:
            dev = torch.device(self.cfg.device)
            A, b, z0 = A.to(dev), b.to(dev), (None if z0 is None else z0.to(dev))
        z = lasso(A, b, self.cfg.lam, method=self.cfg.method, max_iter=self.cfg.max_iter, tol=self.cfg.tol,
                  z0=z0, solver=self.cfg.solver)
        z = z.to(device=self.z.device, dtype=self.z.dtype) * self.col_mask.to(self.z.dtype)
        self.z.copy_(z)
        return z

    def select_support(self, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Support S of every node, ``LongTensor [T, steps, s]`` of flat candidate ids (edge * K + op), on device.

        Ordered by decreasing |z| (ties: lower id first).  ``cfg.support == "topk"``: the s largest |z_k| of the
        node (Algorithm 1, the reference); ``"distinct_edges"``: the s input edges whose best op has the largest
        |z|, each with that op (DARTS's genotype rule).  Padding is never selected; with ``ragged_s`` the slots
        beyond a node's ``s_i`` are -1.

        Fill rule: a node whose z has fewer non-zeros than its s_i ranks its zero entries by ``|A^T b|`` (the
        correlation of each candidate's column with the measurement, i.e. the entry the LASSO would activate
        first as lambda falls; ties: lower id), never silently by id; a ``RuntimeWarning`` names the nodes and
        ``self.underfilled`` counts such selections.
        """
        z = (self.z if z is None else z).detach().to(torch.float64)
        atb = (self.effective_b().detach().to(torch.float64).unsqueeze(-2) @ self.A).squeeze(-2).abs()
        # non-zeros rank by |z| (> 0), zeros by |A^T b| mapped into (-1, 0), padding last (-2)
        mag = torch.where(z != 0, z.abs(), -1.0 / (1.0 + atb))
        mag = torch.where(self.col_mask, mag, -2.0)
        self._warn_underfilled(z)
        s = self.cfg.s
        if self.cfg.support == "topk":
            order = torch.sort(mag, dim=-1, descending=True, stable=True).indices
            return order[..., :s].contiguous()
        K = self.num_ops
        per_edge = mag.view(*mag.shape[:-1], -1, K)                     # [T, steps, edges_max, K]
        best, op = per_edge.max(-1)                                     # first max on ties
        edges = torch.sort(best, dim=-1, descending=True, stable=True).indices[..., :s]
        ids = edges * K + op.gather(-1, edges)
        if self.ragged_s:
            ids = torch.where(self.slot_mask, ids, -1)
        return ids.contiguous()

    def _warn_underfilled(self, z: torch.Tensor) -> None:
        """Warn (and count) when some node's z has fewer non-zeros than its s_i (one host read)."""
        nnz = ((z != 0) & self.col_mask).sum(-1)                                    # [T, steps]
        need = torch.tensor(self.s_per_node, device=nnz.device).view(1, -1)
        short = (nnz < need).nonzero().tolist()
        if short:
            self.underfilled += 1
            names = ", ".join(f"{self.cell_types[t]} node {i}" for t, i in short)
            warnings.warn(f"support: z has fewer non-zeros than s at {names}; filled by the largest |A^T b| "
                          f"(a larger m or a smaller lambda gives z more non-zeros)", RuntimeWarning, stacklevel=3)

    def coefficients(self, support: torch.Tensor, z: Optional[torch.Tensor] = None,
                     dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Coefficients of the support ops, paper Eq. 11: c = b^T A_S - z_S^T E_SS, ``[T, steps, s]``.

        Differentiable w.r.t. b only (A, E are buffers; z, default the stored recovery, is a constant).
        Computed in ``dtype`` (default b's dtype; e.g. float64 for the BN fold of Eq. 12).  Equivalently
        c = z_S + A_S^T (b - A_S z_S).
        """
        T, S, m_max, n_max = self.A.shape
        s = support.shape[-1]
        dt = self.b.dtype if dtype is None else dtype
        z = (self.z if z is None else z).detach()
        b = self.effective_b().to(dt)
        if self.ragged_s:                                   # -1 slots: any column gathered, zeroed below
            valid = support >= 0
            support = support.clamp_min(0)
        A_S = self.A.to(dt).gather(-1, support.unsqueeze(-2).expand(T, S, m_max, s))          # [T, S, m, s]
        E_S = self.E.to(dt).gather(-1, support.unsqueeze(-2).expand(T, S, n_max, s))
        E_SS = E_S.gather(-2, support.unsqueeze(-1).expand(T, S, s, s))                       # [T, S, s, s]
        z_S = z.to(dt).gather(-1, support)                                                    # [T, S, s]
        if self.ragged_s:
            z_S = z_S * valid.to(dt)
        bA = (b.unsqueeze(-2) @ A_S).squeeze(-2)
        zE = (z_S.unsqueeze(-2) @ E_SS).squeeze(-2)
        if self.ragged_s:
            return (bA - zE) * valid.to(dt)
        return bA - zE

    def genotype_pairs(self, support_cpu: torch.Tensor) -> dict[str, list[tuple[int, int]]]:
        """Per cell type, the (op_index, input) pairs of the support, node-major, s per node.

        Within a node the pairs go by increasing |z| (the reference's ``argsort()[-2:]`` order: 2nd largest, then
        largest), i.e. the reverse of :meth:`select_support`'s order.  ``support_cpu`` may be on any device
        (it is copied once).
        """
        ids = support_to_host(support_cpu).tolist()
        K = self.num_ops
        out: dict[str, list[tuple[int, int]]] = {}
        for t, name in enumerate(self.cell_types):
            pairs: list[tuple[int, int]] = []
            for i in range(self.steps):
                for k in reversed(ids[t][i]):
                    if k >= 0:                                  # -1: an empty slot of a ragged support
                        pairs.append((int(k) % K, int(k) // K))
            out[name] = pairs
        return out


def support_churn(new: torch.Tensor, old: torch.Tensor) -> int:
    """Entries of S that changed: per node, the ids of ``new [T, steps, s]`` not in ``old``, summed (host tensors)."""
    return int((new.unsqueeze(-1) != old.unsqueeze(-2)).all(-1).sum())


def genotype_from_support(support_host: torch.Tensor, z: Optional[torch.Tensor] = None,
                          primitives: Sequence[str] = ISTA_PRIMITIVES, steps: int = 4) -> Genotype:
    """The :class:`spaces.genotype.Genotype` of a support: exactly the s searched (op, input) pairs per node.

    ``support_host [T, steps, s]`` flat ids (``input * K + op``) ordered by decreasing |z| (as
    :meth:`CompressedSpace.select_support` returns them); ``z [T, steps, n_max]`` is not needed (the support
    alone fixes the genotype; the argument stays for the callers).  The genotype has ``ops_per_node = s``: the
    architecture the search trained is the one that is written, built and retrained (s = 2 gives the same
    genotype, JSON and digest as before).  Within a node the pairs are listed as the reference does for s = 2: by
    increasing |z| (the second strongest, then the strongest), i.e. the reverse of the support order.
    """
    sup = support_host.to(torch.int64).cpu()
    if sup.dim() != 3 or sup.shape[0] != len(CELL_TYPES) or sup.shape[1] != steps or sup.shape[2] < 1:
        raise ValueError(f"support_host: expected shape [{len(CELL_TYPES)}, {steps}, s >= 1], got {tuple(sup.shape)}")
    K = len(primitives)
    ids = sup.tolist()
    cells = {}
    for t, name in enumerate(CELL_TYPES):
        cells[name] = tuple((primitives[int(k) % K], int(k) // K) for i in range(steps) for k in reversed(ids[t][i]))
    concat = tuple(range(2, 2 + steps))
    return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat,
                    ops_per_node=int(sup.shape[2]))


class HostRecovery:
    """Recovery with one device -> host transfer, returning the support on the device and on the host.

    ``__call__() -> (support [T, steps, s] on the space's device, support_host on the CPU)``; the space's ``z``
    is updated.  On a CPU space this is ``recover -> select_support``.  On a CUDA space (unless
    ``cfg.device`` names a CUDA device) b and z are packed and copied to a CPU mirror of the space in one transfer,
    the batched LASSO and the support selection run there, and z / S go back to the device without a wait.
    """

    def __init__(self, space: CompressedSpace):
        self.space = space
        dev = space.b.device
        want = space.cfg.device
        self.mirror: Optional[CompressedSpace] = None
        if dev.type != "cpu" and (want is None or torch.device(want).type == "cpu"):
            cfg = dataclasses.replace(space.cfg, device=None)
            mirror = CompressedSpace(space.num_ops, space.steps, cfg, cell_types=space.cell_types,
                                     edges_per_node=space.edges_per_node, ragged_s=space.ragged_s)
            mirror.load_state_dict({k: v.detach().cpu() for k, v in space.state_dict().items()})
            mirror.frozen.zero_()      # b arrives already "effective" (frozen nodes at their frozen value)
            self.mirror = mirror

    @torch.no_grad()
    def __call__(self, warm_start: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        space = self.space
        if self.mirror is None:
            z = space.recover(warm_start=warm_start)
            support = space.select_support(z)
            return support, support_to_host(support)
        m = self.mirror
        b = space.effective_b().detach().to(space.z.dtype)
        packed = torch.cat([b.reshape(-1), space.z.reshape(-1)]).cpu()    # the one device -> host transfer
        nb = b.numel()
        m.b.copy_(packed[:nb].view_as(m.b).to(m.b.dtype))
        m.z.copy_(packed[nb:].view_as(m.z))
        z = m.recover(warm_start=warm_start)
        host = m.select_support(z)
        space.z.copy_(z.to(space.z.device, non_blocking=True))
        return host.to(space.b.device, non_blocking=True), host
