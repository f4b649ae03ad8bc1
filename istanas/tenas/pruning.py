"""TE-NAS pruning ("prune-by-importance") on the NB201 and DARTS proxies: measurement, ranking, masks.

Chen, Gong & Wang, ICLR 2021, Sec. 3.3 / Algorithm 1.  Start with every candidate op live on every edge; each
round, for every live op of every edge with more than one, measure kappa_N (Eq. 4) and R_N (Eq. 5) of the
super-net *with that op removed*; per candidate ``dK = round((K_parent - K_child)/K_parent, 3)`` and
``dR = round((R_parent - R_child)/R_parent, 3)``, averaged over ``repeats``; dense ranks of ``dK`` descending and
``dR`` ascending (compared at ``precision`` significant digits) are summed, and on every edge the ``prune_number``
lowest sums are pruned (ties: stable kappa-sorted order).  Stop at one op per edge; for DARTS then keep two
input edges per node by the same test.  Masks are bool ``[cell types, edges, ops]``.

Units per repeat (``cfg.init``): ``"intended"``: parent and all candidates of repeat r share one fresh Kaiming
init (fan_out NTK, fan_in LR) and one batch (common random numbers; the parent is measured once per repeat);
``"released"``: PyTorch default init once per round, a fresh batch per (candidate, repeat).  Seeds come from
``numpy.random.SeedSequence`` on the measurement's key.  NTK batches: ``ntk_batch`` images without replacement,
flip + random crop with ``S // 8`` padding; LR samples: ``lr_samples`` one-channel ``lr_input_size`` crops.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from istanas.data import DataConfig, image_batch
from istanas.tenas.aznas import AZ_COMPONENTS, aznas_scores
from istanas.tenas.indicators import (init_weights, linear_regions_once, live_param_count, log_rank_combination,
                                      naswot_score, ntk_kappa, synflow_score)
from istanas.tenas.proxies import (DARTS_EDGES, DARTS_GROUPS, DARTS_SEARCH_OPS, DARTS_STEPS, NB201_SEARCH_OPS,
                                   build_proxies)
from spaces.genotype import Genotype, NB201Genotype
from spaces.nb201 import NB201_EDGES, make_arch_str, parse_arch_str
from spaces.profile import count_flops

#: ``score: combined`` components when ``cfg.components`` is None: TE-NAS's two, NASWOT, AZ-NAS's three and one
#: complexity term (as AZ-NAS).  Kendall tau 0.745 on 1,000 NB201 cells (TE-NAS 0.470, the former default without
#: the AZ-NAS terms 0.632); benchmarks/README.md.
COMBINED_DEFAULT: tuple[str, ...] = ("ntk_cond", "linear_regions", "naswot", "flops", "expressivity",
                                     "progressivity", "trainability")

#: Images drawn from ``istanas.data``'s default data set when no images are given.
FALLBACK_IMAGES = 256


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------
def prepare_images(images: torch.Tensor | None, size: int, device: torch.device | str) -> torch.Tensor:
    """Check and resize a real image batch [N, 3 (or 1), H, W] -> float32 [N, 3, size, size] on ``device``.

    ``None``: :data:`FALLBACK_IMAGES` training images of ``istanas.data``'s default set (scikit-learn digits).
    """
    if images is None:
        images = image_batch(DataConfig(image_size=size), FALLBACK_IMAGES)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor [N, 3, H, W], got {shape}")
    if images.shape[0] < 2:
        raise ValueError(f"images: need at least 2 images, got {images.shape[0]}")
    x = images.to(device=device, dtype=torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=bool(x.shape[-1] > size))
    if not torch.isfinite(x).all():
        raise ValueError("images: contain non-finite values")
    return x.contiguous()


_SCORE_ROUND = 1_000_000  # round id of the (init, data) units of per-architecture scoring


def _key_seed(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


def sample_ntk_batch(images: torch.Tensor, batch: int, seed: int, augment: bool = True) -> torch.Tensor:
    """``batch`` images without replacement [B, 3, S, S]: random flip and random crop with ``S // 8`` padding."""
    n, c, h, w = images.shape
    if batch > n:
        raise ValueError(f"ntk_batch: {batch} is larger than the number of images ({n})")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:batch]
    x = images[idx.to(images.device)]
    if not augment:
        return x
    flip = (torch.rand(batch, generator=gen) < 0.5).to(images.device)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = max(h // 8, 0)
    if pad == 0:
        return x
    oy = torch.randint(0, 2 * pad + 1, (batch,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (batch,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)).to(images.device)  # [B, H]
    cols = (ox[:, None] + torch.arange(w)).to(images.device)  # [B, W]
    xp = F.pad(x, (pad, pad, pad, pad))
    b = torch.arange(batch, device=images.device)[:, None, None, None]
    ch = torch.arange(c, device=images.device)[None, :, None, None]
    return xp[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


def sample_patches(images: torch.Tensor, num: int, size: int, seed: int) -> torch.Tensor:
    """``num`` random one-channel ``size x size`` crops [num, 1, size, size] (RandomCrop + RandChannel(1))."""
    n, c, h, w = images.shape
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (num,), generator=gen)
    ch = torch.randint(0, c, (num,), generator=gen)
    oy = torch.randint(0, h - size + 1, (num,), generator=gen)
    ox = torch.randint(0, w - size + 1, (num,), generator=gen)
    ar = torch.arange(size)
    dev = images.device
    rows = (oy[:, None, None] + ar[None, :, None]).to(dev)
    cols = (ox[:, None, None] + ar[None, None, :]).to(dev)
    return images[idx.to(dev)[:, None, None], ch.to(dev)[:, None, None], rows, cols].unsqueeze(1)


# ----------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------
class Measurer:
    """Owns the two proxies, the data and the seeded (init, batch) units; returns 0-dim device tensors.

    ``cfg``: a resolved ``istanas.tenas.job.TenasConfig``.
    """

    def __init__(self, cfg: Any, images: torch.Tensor | None):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.images = prepare_images(images, cfg.input_size, self.device)
        if cfg.ntk_batch > self.images.shape[0]:
            raise ValueError(f"ntk_batch: {cfg.ntk_batch} is larger than the number of images "
                             f"({self.images.shape[0]})")
        ntk, lr = build_proxies(cfg)
        self.ntk_net, self.lr_net = ntk.to(self.device), lr.to(self.device)
        self.ntk_init, self.lr_init = (("kaiming_fanout", "kaiming_fanin") if cfg.init == "intended"
                                       else ("default", "default"))
        self._ntk_key: tuple | None = None
        self._lr_key: tuple | None = None
        self._batches: dict[tuple, torch.Tensor] = {}

    def _data(self, kind: int, key: tuple) -> torch.Tensor:
        full = (kind,) + key
        if full not in self._batches:
            if len(self._batches) > 64:
                self._batches.clear()
            seed = _key_seed(self.cfg.seed, 1, *full)
            if kind == 0:
                self._batches[full] = sample_ntk_batch(self.images, self.cfg.ntk_batch, seed, self.cfg.augment)
            else:
                self._batches[full] = sample_patches(self.images, self.cfg.lr_samples, self.cfg.lr_input_size, seed)
        return self._batches[full]

    def kappa(self, mask: np.ndarray, init_key: tuple, batch_key: tuple) -> torch.Tensor:
        if init_key != self._ntk_key:
            init_weights(self.ntk_net, self.ntk_init, _key_seed(self.cfg.seed, 2, *init_key))
            self._ntk_key = init_key
        self.ntk_net.set_mask(mask)
        return ntk_kappa(self.ntk_net, self._data(0, batch_key), param_filter=self.cfg.param_filter,
                         bn_coupling=self.cfg.bn_coupling, chunk_size=self.cfg.jac_chunk or None,
                         nan_value=self.cfg.nan_value)

    def regions(self, mask: np.ndarray, init_key: tuple, batch_key: tuple) -> torch.Tensor:
        if init_key != self._lr_key:
            init_weights(self.lr_net, self.lr_init, _key_seed(self.cfg.seed, 3, *init_key))
            self._lr_key = init_key
        self.lr_net.set_mask(mask)
        return linear_regions_once(self.lr_net, self._data(1, batch_key), chunk=self.cfg.lr_batch)

    def units(self, rnd: int, r: int, c: int) -> tuple[tuple, tuple, tuple, tuple]:
        """(NTK init key, NTK batch key, LR init key, LR batch key) of candidate ``c`` in repeat ``r``."""
        if self.cfg.init == "intended":
            return (rnd, r), (rnd, r), (rnd, r), (rnd, r)
        return (rnd,), (rnd, r, c), (rnd, c), (rnd, r, c)

    def deltas(self, rnd: int, parent: np.ndarray, children: Sequence[np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Mean over repeats of round((P - C)/P, 3) for kappa and regions; plus the parents' mean values."""
        n, reps = len(children), self.cfg.repeats
        pk: dict[tuple, torch.Tensor] = {}
        pr: dict[tuple, torch.Tensor] = {}
        kp_list, kc_list, rp_list, rc_list = [], [], [], []
        for r in range(reps):
            for c, child in enumerate(children):
                ki, kb, li, lb = self.units(rnd, r, c)
                if (ki, kb) not in pk:
                    pk[(ki, kb)] = self.kappa(parent, ki, kb)
                kp_list.append(pk[(ki, kb)])
                kc_list.append(self.kappa(child, ki, kb))
                if (li, lb) not in pr:
                    pr[(li, lb)] = self.regions(parent, li, lb)
                rp_list.append(pr[(li, lb)])
                rc_list.append(self.regions(child, li, lb))
        # one host transfer per round
        vals = torch.stack([torch.stack(v).double() for v in (kp_list, kc_list, rp_list, rc_list)]).cpu().numpy()
        kp, kc, rp, rc = (v.reshape(reps, n) for v in vals)
        d_k = np.round((kp - kc) / kp, 3).mean(axis=0)
        d_r = np.round((rp - rc) / rp, 3).mean(axis=0)
        return d_k, d_r, float(kp.mean()), float(rp.mean())

    def child_components(self, rnd: int, children: Sequence[np.ndarray], names: Sequence[str]
                         ) -> dict[str, np.ndarray]:
        """The per-child components of ``score: combined`` (all but ``ntk_cond`` / ``linear_regions``, which come
        from the deltas) on the NTK proxy with each child's mask: ``naswot`` and AZ-NAS's ``expressivity`` /
        ``progressivity`` / ``trainability`` (means over repeats, with the NTK init and batch of each repeat),
        ``synflow`` (the NTK init of repeat 0), ``params`` and ``flops`` (the live ops); ``{name: [n]}``."""
        per_repeat = [n for n in names if n == "naswot" or n in AZ_COMPONENTS]
        out: dict[str, list] = {n: [] for n in names if n in ("naswot", "params", "flops", "synflow", *AZ_COMPONENTS)}
        s = self.cfg.input_size
        probe = torch.zeros(1, 3, s, s, device=self.device)
        for c, child in enumerate(children):
            self.ntk_net.set_mask(child)
            vals: dict[str, list] = {n: [] for n in per_repeat}
            for r in range(self.cfg.repeats if per_repeat else int("synflow" in out)):  # synflow: repeat 0 only
                ki, kb, _, _ = self.units(rnd, r, c)
                if ki != self._ntk_key:
                    init_weights(self.ntk_net, self.ntk_init, _key_seed(self.cfg.seed, 2, *ki))
                    self._ntk_key = ki
                if r == 0 and "synflow" in out:
                    out["synflow"].append(synflow_score(self.ntk_net, (3, s, s)))
                if "naswot" in vals:
                    vals["naswot"].append(naswot_score(self.ntk_net, self._data(0, kb)))
                if set(AZ_COMPONENTS) & set(vals):
                    az = aznas_scores(self.ntk_net, self._data(0, kb), seed=_key_seed(self.cfg.seed, 6, *kb))
                    for n in AZ_COMPONENTS:
                        if n in vals:
                            vals[n].append(az[n])
            for n, v in vals.items():
                out[n].append(torch.stack(v).mean())
            if "params" in out:
                out["params"].append(float(live_param_count(self.ntk_net, probe)))
            if "flops" in out:
                out["flops"].append(count_flops(self.ntk_net, (1, 3, s, s)))
        return {n: (torch.stack(v).cpu().numpy() if v and torch.is_tensor(v[0]) else np.array(v))
                for n, v in out.items()}

    def score(self, mask: np.ndarray, key: int = 0) -> tuple[float, float]:
        """Mean (kappa, regions) of one fixed architecture over the repeats (units shared across archs)."""
        ks, rs = [], []
        for r in range(self.cfg.repeats):
            rnd = _SCORE_ROUND + key
            ki, kb, li, lb = self.units(rnd, r, 0)
            if self.cfg.init == "released":  # one default init for all repeats, fresh data per repeat
                ki, li = (rnd,), (rnd,)
            ks.append(self.kappa(mask, ki, kb))
            rs.append(self.regions(mask, li, lb))
        k = torch.stack(ks).double().mean()
        rr = torch.stack(rs).double().mean()
        return float(k), float(rr)


# ----------------------------------------------------------------------------------------------------------
# ranking
# ----------------------------------------------------------------------------------------------------------
def round_sig(x: np.ndarray, digits: int = 3) -> np.ndarray:
    """Round each value to ``digits`` significant digits (the released ``round_to``); 0 stays 0."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    nz = (x != 0) & np.isfinite(x)
    mag = np.floor(np.log10(np.abs(x[nz])))
    scale = 10.0 ** (digits - 1 - mag)
    out[nz] = np.round(x[nz] * scale) / scale
    out[~np.isfinite(x)] = x[~np.isfinite(x)]
    return out


def dense_rank(values: np.ndarray, descending: bool) -> np.ndarray:
    """Dense ranks from 0: equal values share a rank, the next distinct value gets rank + 1."""
    values = np.asarray(values, dtype=np.float64)
    uniq = np.unique(values)
    if descending:
        uniq = uniq[::-1]
    pos = {float(v): i for i, v in enumerate(uniq)}
    return np.array([pos[float(v)] for v in values], dtype=np.int64)


def select_prunes(groups: Sequence[Any], d_kappa: np.ndarray, d_regions: np.ndarray,
                  num_prune: Callable[[Any, int], int], precision: int = 3) -> list[int]:
    """Indices of the candidates to prune.

    Candidate i belongs to group ``groups[i]`` (an edge, or a node in the DARTS edge phase).  Rank ``d_kappa``
    descending and ``d_regions`` ascending (dense, after ``round_sig``), add the ranks; in each group prune the
    ``num_prune(group, size)`` candidates with the lowest sum, ties in the stable order of the kappa-sorted list.
    """
    dk = round_sig(d_kappa, precision)
    dr = round_sig(d_regions, precision)
    score = dense_rank(dk, descending=True) + dense_rank(dr, descending=False)
    korder = np.argsort(-dk, kind="stable")
    pos = np.empty(len(dk), dtype=np.int64)
    pos[korder] = np.arange(len(dk))
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out: list[int] = []
    for g, idx in members.items():
        idx = sorted(idx, key=lambda i: (score[i], pos[i]))
        out.extend(idx[:num_prune(g, len(idx))])
    return sorted(out)


def select_prunes_logrank(groups: Sequence[Any], goodness: Sequence[np.ndarray],
                          num_prune: Callable[[Any, int], int]) -> list[int]:
    """``score: combined``: candidate i's child gets ``sum_m log(rank_m / n)`` over the ``goodness`` columns
    (each higher = better child, ranked over all candidates of the round); in each group prune the
    ``num_prune(group, size)`` candidates whose children score highest (ties: candidate order)."""
    combined = log_rank_combination(list(goodness), [True] * len(goodness))
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out: list[int] = []
    for g, idx in members.items():
        idx = sorted(idx, key=lambda i: (-combined[i], i))
        out.extend(idx[:num_prune(g, len(idx))])
    return sorted(out)


# ----------------------------------------------------------------------------------------------------------
# genotypes
# ----------------------------------------------------------------------------------------------------------
def _edge_name(space: str, e: int) -> str:
    frm, to = (NB201_EDGES[e] if space == "nb201" else (DARTS_EDGES[e][0], DARTS_EDGES[e][1] + 2))
    return f"{to}<-{frm}"


def mask_to_genotype(space: str, mask: np.ndarray, ops: Sequence[str]) -> Any:
    """Single-path mask -> ``NB201Genotype`` (an edge without op is 'none') or DARTS ``Genotype``."""
    def op_of(t: int, e: int) -> str | None:
        live = np.flatnonzero(mask[t, e])
        if len(live) > 1:
            raise ValueError(f"mask: edge {_edge_name(space, e)} still has {len(live)} live ops")
        return ops[int(live[0])] if len(live) else None

    if space == "nb201":
        return NB201Genotype.from_arch_str(make_arch_str([op_of(0, e) or "none" for e in range(len(NB201_EDGES))]))
    cells = []
    for t in range(2):
        pairs = []
        for start, end in DARTS_GROUPS:
            node = [(op_of(t, e), DARTS_EDGES[e][0]) for e in range(start, end) if op_of(t, e) is not None]
            if len(node) != 2:
                raise ValueError(f"mask: node {DARTS_EDGES[start][1] + 2} has {len(node)} inputs, expected 2")
            pairs.extend(node)
        cells.append(tuple(pairs))
    concat = tuple(range(2, 2 + DARTS_STEPS))
    return Genotype(normal=cells[0], normal_concat=concat, reduce=cells[1], reduce_concat=concat)


def genotype_to_mask(genotype: Any) -> tuple[str, np.ndarray]:
    """``NB201Genotype`` / DARTS ``Genotype`` (or an NB201 arch string) -> (space, single-path mask)."""
    if isinstance(genotype, str):
        arch = genotype
        space = "nb201"
    else:
        space = getattr(genotype, "space", None)
        arch = genotype.to_arch_str() if space == "nb201" else None
    if space == "nb201":
        mask = np.zeros((1, len(NB201_EDGES), len(NB201_SEARCH_OPS)), dtype=bool)
        for e, (op, _frm, _to) in enumerate(parse_arch_str(arch)):
            if op != "none":
                mask[0, e, NB201_SEARCH_OPS.index(op)] = True
        return space, mask
    if space != "darts":
        raise ValueError(f"genotype: unknown space {space!r}")
    mask = np.zeros((2, len(DARTS_EDGES), len(DARTS_SEARCH_OPS)), dtype=bool)
    for t, (cell, concat) in enumerate(((genotype.normal, genotype.normal_concat),
                                        (genotype.reduce, genotype.reduce_concat))):
        if tuple(concat) != tuple(range(2, 2 + DARTS_STEPS)):
            raise ValueError(f"genotype: concat {tuple(concat)} is not (2, 3, 4, 5)")
        if len(cell) != 2 * DARTS_STEPS:
            raise ValueError(f"genotype: a cell needs {2 * DARTS_STEPS} (op, input) pairs, got {len(cell)}")
        for k, (op, j) in enumerate(cell):
            node = k // 2
            if not 0 <= j < node + 2:
                raise ValueError(f"genotype: node {node + 2} cannot take input {j}")
            if op == "none":
                continue
            if op not in DARTS_SEARCH_OPS:
                raise ValueError(f"genotype: unknown op {op!r}")
            mask[t, DARTS_GROUPS[node][0] + j, DARTS_SEARCH_OPS.index(op)] = True
    return space, mask


# ----------------------------------------------------------------------------------------------------------
# rounds
# ----------------------------------------------------------------------------------------------------------
def _is_single_path(mask: np.ndarray) -> bool:
    return bool((mask.sum(axis=2) <= 1).all())


def _select(cfg: Any, meas: Measurer, rnd: int, children: Sequence[np.ndarray], groups: Sequence[Any],
            d_k: np.ndarray, d_r: np.ndarray, num_prune: Callable[[Any, int], int]) -> list[int]:
    """The candidates a round prunes under ``cfg.score`` (``"tenas"``: the released rank sum)."""
    if cfg.score == "tenas":
        return select_prunes(groups, d_k, d_r, num_prune, cfg.precision)
    names = tuple(cfg.components) if cfg.components else COMBINED_DEFAULT
    extra = meas.child_components(rnd, children, names)
    # child goodness: a large drop of kappa (dK) and a small loss of regions (-dR) make a good child
    cols = {"ntk_cond": d_k, "linear_regions": -d_r, **extra}
    return select_prunes_logrank(groups, [cols[n] for n in names], num_prune)


def prune(cfg: Any, meas: Measurer, report: Callable[[dict], None] | None = None,
          t0: float | None = None) -> tuple[np.ndarray, list[dict]]:
    """The pruning rounds (module doc) on ``meas``'s proxies -> (final single-path mask, per-round dicts).

    ``report(metrics)`` gets each round's scalars; ``wall_time_s`` of a round counts from ``t0`` (default: now).
    """
    ops = meas.ntk_net.ops
    mask = np.ones((meas.ntk_net.num_cell_types, meas.ntk_net.num_edges, len(ops)), dtype=bool)
    t0 = time.perf_counter() if t0 is None else t0
    cell_names = ("cell",) if cfg.space == "nb201" else ("normal", "reduce")
    rounds: list[dict] = []
    rnd = 0

    def finish_round(phase: str, cands: list[tuple[int, int, int]], d_k: np.ndarray, d_r: np.ndarray,
                     pruned: list[int], kp: float, rp: float, t_start: float) -> None:
        now = time.perf_counter()
        entry = {
            "round": rnd, "phase": phase, "candidates": len(cands), "kappa_parent": kp, "regions_parent": rp,
            "live_ops_after": int(mask.sum()), "round_time_s": now - t_start, "wall_time_s": now - t0,
            "pruned": [{"cell": cell_names[cands[i][0]], "edge": _edge_name(cfg.space, cands[i][1]),
                        "op": ops[cands[i][2]], "d_kappa": float(d_k[i]), "d_regions": float(d_r[i])}
                       for i in pruned],
        }
        rounds.append(entry)
        if report is not None:
            report({k: v for k, v in entry.items() if k != "pruned"})

    # phase 1: prune ops until one per edge
    while not _is_single_path(mask):
        t_start = time.perf_counter()
        live_counts = mask.sum(axis=2)
        cands = [(t, e, int(o)) for t in range(mask.shape[0]) for e in range(mask.shape[1])
                 if live_counts[t, e] > 1 for o in np.flatnonzero(mask[t, e])]
        children = []
        for t, e, o in cands:
            child = mask.copy()
            child[t, e, o] = False
            children.append(child)
        d_k, d_r, kp, rp = meas.deltas(rnd, mask, children)
        pruned = _select(cfg, meas, rnd, children, [(t, e) for t, e, _ in cands], d_k, d_r,
                         lambda g, size: min(cfg.prune_number, size - 1))
        for i in pruned:
            t, e, o = cands[i]
            mask[t, e, o] = False
        finish_round("ops", cands, d_k, d_r, pruned, kp, rp, t_start)
        rnd += 1

    # phase 2 (DARTS): keep two input edges per intermediate node, node by node, normal cell first
    if cfg.space == "darts":
        for t in range(2):
            for start, end in DARTS_GROUPS:
                edges = [e for e in range(start, end) if mask[t, e].any()]
                if len(edges) <= 2:
                    continue
                t_start = time.perf_counter()
                cands = [(t, e, int(np.flatnonzero(mask[t, e])[0])) for e in edges]
                children = []
                for _, e, _ in cands:
                    child = mask.copy()
                    child[t, e, :] = False
                    children.append(child)
                d_k, d_r, kp, rp = meas.deltas(rnd, mask, children)
                pruned = _select(cfg, meas, rnd, children, [0] * len(cands), d_k, d_r, lambda g, size: size - 2)
                for i in pruned:
                    mask[t, cands[i][1], :] = False
                finish_round("edges", cands, d_k, d_r, pruned, kp, rp, t_start)
                rnd += 1

    return mask, rounds
