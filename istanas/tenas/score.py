"""Training-free scores of cells: TE-NAS's indicators plus cheap ones, combined by rank.

Components (direction: higher is better unless noted), each from its paper:

* ``ntk_cond``: kappa_N of TE-NAS (Chen et al., ICLR 2021, Eq. 4) on the NTK proxy; *lower* is better.
* ``linear_regions``: R_N of TE-NAS (Eq. 5) on the one-cell linear-region proxy.
* ``naswot``: ``log |K_H|`` of the activation-pattern kernel (Mellor et al., ICML 2021) on the space's
  evaluation network (NB201: C=16, N=5 as in NAS-Bench-201) at init, one batch of ``naswot_batch`` images.
* ``params`` / ``flops``: #parameters and multiply-adds (millions, :mod:`spaces.profile`) of that network.
* ``synflow``: SynFlow (Tanaka et al., NeurIPS 2020; Abdelfattah et al., ICLR 2021) of that network at the
  same init, BN removed, an all-ones input of the image size (:func:`istanas.tenas.indicators.synflow_score`).
* ``expressivity`` / ``progressivity`` / ``trainability``: AZ-NAS's components (Lee & Ham, CVPR 2024, Eq. 3-7,
  :mod:`istanas.tenas.aznas`) of that network at the same init, on the NASWOT batch.

Scores (``TenasConfig.score``): ``"tenas"`` = the paper's rank combination of ``ntk_cond`` and
``linear_regions`` (``-(rank kappa asc + rank R desc)``); ``"combined"`` = AZ-NAS's log-rank sum
(Lee & Ham, CVPR 2024, Eq. 9) of ``TenasConfig.components`` (default ``pruning.COMBINED_DEFAULT``: kappa, R,
NASWOT, FLOPs and the three AZ-NAS components).  Both rank a *set* of cells:
:func:`score_cells` returns the component columns, :func:`combine` the score, :func:`prefilter` the top-k.

One cell alone (the sweep's ``tenas`` objective, :func:`reference_objective`): the paper's rank combination
against a fixed reference sample of ``TenasConfig.reference_cells`` uniformly random cells of the same space
(:func:`reference_cells`, seeded by ``TenasConfig.seed``), scored once per process with the same images and
(init, data) units as the cell and cached (:func:`reference_columns`).  The cell's kappa rank (ascending) and R
rank (descending) among the reference plus itself, 1 = best, ties averaged, give
``objective = 1 - (rank_kappa + rank_R - 2) / (2 n)`` in [0, 1] (1: best of the sample on both; n = reference
size); an order-preserving rescaling of ``-(rank_kappa + rank_R)``.
For the pruning search the same components are measured on the proxy super-net's children
(:func:`live_param_count`, FLOPs of the ops that run) in :mod:`istanas.tenas.pruning`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from istanas.random_search import sample_darts, sample_nb201
from istanas.tenas.aznas import AZ_COMPONENTS, aznas_scores
from istanas.tenas.indicators import (init_weights, log_rank_combination, naswot_score, rank_combination,
                                      synflow_score)
from istanas.tenas.pruning import COMBINED_DEFAULT, Measurer, _key_seed, genotype_to_mask, sample_ntk_batch
from spaces.networks import build_network
from spaces.profile import count_flops, count_parameters
from spaces.registry import load_genotype

#: Component -> higher is better.
COMPONENTS: dict[str, bool] = {"ntk_cond": False, "linear_regions": True, "naswot": True, "params": True,
                               "flops": True, "synflow": True, **{c: True for c in AZ_COMPONENTS}}
#: The training-free scores a search or a sweep can use.
SCORES: tuple[str, ...] = ("tenas", "combined")
TENAS_COMPONENTS: tuple[str, ...] = ("ntk_cond", "linear_regions")


def score_components(cfg: Any) -> tuple[str, ...]:
    """The components ``cfg.score`` combines (``cfg``: a ``TenasConfig``)."""
    if cfg.score == "tenas":
        return TENAS_COMPONENTS
    return tuple(cfg.components) if cfg.components else COMBINED_DEFAULT


def combine(columns: Mapping[str, Sequence[float]], score: str,
            components: Sequence[str] | None = None) -> np.ndarray:
    """Score ``[n]`` (higher is better) of ``n`` cells from their component ``columns`` (name -> ``[n]``)."""
    if score not in SCORES:
        raise ValueError(f"score: {score!r} is not one of {list(SCORES)}")
    if score == "tenas":
        return rank_combination(columns["ntk_cond"], columns["linear_regions"])
    names = tuple(components) if components else COMBINED_DEFAULT
    return log_rank_combination([columns[n] for n in names], [COMPONENTS[n] for n in names])


class CellScorer:
    """Scores single cells (arch strings / genotypes) with shared, seeded units so that cells compare.

    ``cfg``: a resolved ``TenasConfig``; ``images``: real training images ``[N, 3, H, W]`` (or None: the
    default set).  ``components``: which to compute (default: all of :data:`COMPONENTS`).
    """

    def __init__(self, cfg: Any, images: torch.Tensor | None, components: Sequence[str] | None = None):
        self.cfg = cfg
        self.components = tuple(components) if components else tuple(COMPONENTS)
        bad = [c for c in self.components if c not in COMPONENTS]
        if bad:
            raise ValueError(f"components: unknown {bad}; known: {list(COMPONENTS)}")
        self.meas = Measurer(cfg, images)
        self.device = self.meas.device
        self._naswot_x: torch.Tensor | None = None
        #: wall seconds spent per component group (``tenas``: kappa and R together), summed over score calls
        self.seconds: dict[str, float] = {}

    def _timed(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - t0
        return now

    def eval_network(self, genotype: Any, width: int | None = None) -> nn.Module:
        g = load_genotype(genotype)
        nb = getattr(g, "space", None) == "nb201"
        cells = self.cfg.naswot_cells or (5 if nb else 8)
        kw = {"N": cells} if nb else {"layers": cells}
        return build_network(g, C=width or self.cfg.naswot_width, num_classes=self.cfg.num_classes, **kw)

    def naswot_batch(self) -> torch.Tensor:
        if self._naswot_x is None:
            n = min(self.cfg.naswot_batch, self.meas.images.shape[0])
            self._naswot_x = sample_ntk_batch(self.meas.images, n, _key_seed(self.cfg.seed, 4), augment=False)
        return self._naswot_x

    def score(self, genotype: Any, key: int = 0) -> dict[str, float]:
        """Component values of one cell (``key`` selects the (init, data) units; 0 = the shared ones)."""
        out: dict[str, float] = {}
        t = time.perf_counter()
        if "ntk_cond" in self.components or "linear_regions" in self.components:
            _, mask = genotype_to_mask(load_genotype(genotype) if not isinstance(genotype, str) else genotype)
            k, r = self.meas.score(mask, key)
            out["ntk_cond"], out["linear_regions"] = k, r
            t = self._timed("tenas", t)
        if {"naswot", "params", "flops", "synflow", *AZ_COMPONENTS} & set(self.components):
            net = self.eval_network(genotype).to(self.device)
            s = self.meas.images.shape[-1]
            init_weights(net, "default", _key_seed(self.cfg.seed, 5, key))
            if "naswot" in self.components:
                out["naswot"] = float(naswot_score(net, self.naswot_batch()))
                t = self._timed("naswot", t)
            if "synflow" in self.components:
                out["synflow"] = float(synflow_score(net, (3, s, s)))
                t = self._timed("synflow", t)
            if set(AZ_COMPONENTS) & set(self.components):
                az = aznas_scores(net, self.naswot_batch(), seed=_key_seed(self.cfg.seed, 6, key))
                out.update({k: float(v) for k, v in az.items()})
                t = self._timed("aznas", t)
            if "params" in self.components:
                out["params"] = count_parameters(net)
                t = self._timed("params", t)
            if "flops" in self.components:
                out["flops"] = count_flops(net, (1, 3, s, s))
                t = self._timed("flops", t)
        return {c: out[c] for c in self.components}


def score_cells(archs: Sequence[Any], images: torch.Tensor | None, cfg: Any,
                components: Sequence[str] | None = None) -> dict[str, Any]:
    """Component columns of ``archs``: ``{name: np.ndarray [n], ..., "time_per_cell_s": float,
    "time_per_cell_s_by_component": {group: float}}`` (groups: ``tenas`` = kappa and R, then each other one)."""
    scorer = CellScorer(cfg, images, components)
    t0 = time.perf_counter()
    rows = [scorer.score(a) for a in archs]
    dt = (time.perf_counter() - t0) / max(len(archs), 1)
    out: dict[str, Any] = {c: np.array([r[c] for r in rows]) for c in scorer.components}
    out["time_per_cell_s"] = dt
    out["time_per_cell_s_by_component"] = {k: v / max(len(archs), 1) for k, v in scorer.seconds.items()}
    return out


def oriented_scores(columns: Mapping[str, np.ndarray],
                    combinations: Mapping[str, Sequence[str]] | None = None) -> dict[str, np.ndarray]:
    """Every component (``ntk_cond`` negated: higher = predicted better) plus, where its inputs are present,
    ``tenas_rank`` (the paper's rank sum), ``tenas_log_ratio`` (``log R - log kappa``, the sweep's scalar) and
    each log-rank ``combinations`` entry (name -> components; default ``{"combined": COMBINED_DEFAULT}``)."""
    ind = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items() if k in COMPONENTS}
    out = {k: (-v if k == "ntk_cond" else v) for k, v in ind.items()}
    if {"ntk_cond", "linear_regions"} <= set(ind):
        out["tenas_rank"] = combine(ind, "tenas")
        out["tenas_log_ratio"] = (np.log(np.maximum(ind["linear_regions"], 1e-12))
                                  - np.log(np.maximum(ind["ntk_cond"], 1e-12)))
    for name, comps in (combinations if combinations is not None else {"combined": COMBINED_DEFAULT}).items():
        if set(comps) <= set(ind):
            out[name] = combine(ind, "combined", comps)
    return out


def rank_correlations(scores: Mapping[str, np.ndarray], accuracy: Sequence[float]) -> dict[str, dict[str, float]]:
    """``{name: {"kendall_tau", "spearman_rho"}}`` of each score against ``accuracy`` (scipy, tau-b; -inf -> worst)."""
    from scipy.stats import kendalltau, spearmanr

    acc = np.asarray(accuracy, dtype=np.float64)
    out = {}
    for k, v in scores.items():
        v = np.where(np.isneginf(v), np.nanmin(v[np.isfinite(v)]) - 1 if np.isfinite(v).any() else 0.0, v)
        out[k] = {"kendall_tau": float(kendalltau(v, acc)[0]), "spearman_rho": float(spearmanr(v, acc)[0])}
    return out


def prefilter(archs: Sequence[Any], images: torch.Tensor | None, cfg: Any, k: int) -> list[Any]:
    """The ``k`` cells of ``archs`` with the best ``cfg.score`` (score ``n`` candidates, keep the top-k), best
    first; ties keep the input order."""
    if not 1 <= k <= len(archs):
        raise ValueError(f"k: must be in 1..{len(archs)}, got {k}")
    names = score_components(cfg)
    cols = score_cells(archs, images, cfg, names)
    s = combine(cols, cfg.score, names)
    order = np.argsort(-s, kind="stable")[:k]
    return [archs[i] for i in order]


# ----------------------------------------------------------------------------------------------------------
# one cell against a reference sample (the sweep's objective)
# ----------------------------------------------------------------------------------------------------------
def reference_cells(space: str, n: int, seed: int) -> list[Any]:
    """``n`` uniformly random cells of ``space`` (``"nb201"``: arch strings; ``"darts"``: ``Genotype``),
    seeded by ``seed`` alone (``istanas.random_search``'s samplers)."""
    if n < 1:
        raise ValueError(f"reference_cells: must be >= 1, got {n}")
    if space not in ("nb201", "darts"):
        raise ValueError(f"space: {space!r} is not 'nb201' or 'darts'")
    rng = random.Random(int(seed))
    if space == "nb201":
        return [sample_nb201(rng).to_arch_str() for _ in range(n)]
    return [sample_darts(rng) for _ in range(n)]


_REFERENCE_CACHE: dict[str, dict[str, np.ndarray]] = {}


def reference_columns(space: str, images: torch.Tensor | None, cfg: Any) -> dict[str, np.ndarray]:
    """``{"ntk_cond": [n], "linear_regions": [n]}`` of :func:`reference_cells` (``cfg.reference_cells``,
    ``cfg.seed``) scored with ``cfg``'s units on ``images``; cached per process on (space, cfg, images)."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode())
    digest.update(space.encode())
    if images is not None:
        x = images.detach().to("cpu", torch.float32).contiguous()
        digest.update(str(tuple(x.shape)).encode())
        digest.update(x.numpy().tobytes())
    key = digest.hexdigest()
    if key not in _REFERENCE_CACHE:
        cells = reference_cells(space, int(cfg.reference_cells), int(cfg.seed))
        cols = score_cells(cells, images, cfg, TENAS_COMPONENTS)
        if len(_REFERENCE_CACHE) >= 8:
            _REFERENCE_CACHE.clear()
        _REFERENCE_CACHE[key] = {c: cols[c] for c in TENAS_COMPONENTS}
    return _REFERENCE_CACHE[key]


def rank_against(value: float, reference: Sequence[float], higher_better: bool) -> float:
    """Rank (1 = best, ties averaged) of ``value`` in ``reference`` plus itself."""
    ref = np.asarray(reference, dtype=np.float64)
    better = np.sum(ref > value) if higher_better else np.sum(ref < value)
    return float(1 + better + 0.5 * np.sum(ref == value))


def reference_rank_objective(ntk_cond: float, linear_regions: float, ref_ntk_cond: Sequence[float],
                             ref_linear_regions: Sequence[float]) -> dict[str, float]:
    """TE-NAS's rank combination (Sec. 3.3) of one cell against a reference sample: ``{"rank_kappa",
    "rank_regions", "objective"}`` with ``objective = 1 - (rank_kappa + rank_regions - 2) / (2 n)`` (module doc)."""
    n = len(ref_ntk_cond)
    if n < 1 or len(ref_linear_regions) != n:
        raise ValueError("reference: need as many kappa as region values, at least one")
    rk = rank_against(ntk_cond, ref_ntk_cond, higher_better=False)
    rr = rank_against(linear_regions, ref_linear_regions, higher_better=True)
    return {"rank_kappa": rk, "rank_regions": rr, "objective": 1.0 - (rk + rr - 2.0) / (2.0 * n)}


def reference_objective(genotype: Any, images: torch.Tensor | None, cfg: Any) -> dict[str, float]:
    """The sweep's ``tenas`` objective of one cell (module doc): ``{"ntk_cond", "linear_regions",
    "rank_kappa", "rank_regions", "objective"}``.  ``cfg``: a resolved ``TenasConfig`` of the cell's space."""
    space, _ = genotype_to_mask(genotype)
    cfg = dataclasses.replace(cfg, space=space, ops=None, table_path=None, correlation_archs=0).resolved()
    ref = reference_columns(space, images, cfg)
    own = CellScorer(cfg, images, TENAS_COMPONENTS).score(genotype)
    out = {"ntk_cond": own["ntk_cond"], "linear_regions": own["linear_regions"]}
    out.update(reference_rank_objective(out["ntk_cond"], out["linear_regions"], ref["ntk_cond"],
                                        ref["linear_regions"]))
    return out


__all__ = ["COMPONENTS", "SCORES", "COMBINED_DEFAULT", "TENAS_COMPONENTS", "score_components", "combine",
           "CellScorer", "score_cells", "oriented_scores", "rank_correlations", "prefilter",
           "reference_cells", "reference_columns", "rank_against", "reference_rank_objective", "reference_objective"]
