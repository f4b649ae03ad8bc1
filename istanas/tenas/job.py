"""TE-NAS search job: settings (:class:`TenasConfig`, :class:`TenasJobConfig`, presets), the search, scoring.

:func:`tenas_search` runs the pruning of :mod:`istanas.tenas.pruning` on the proxies of
:mod:`istanas.tenas.proxies` and, with a NAS-Bench-201 table, looks the found cell up; :func:`score_genotype`
gives both indicators of one architecture (kappa_N, Eq. 4; R_N, Eq. 5); :func:`correlation_study` correlates
them with the table's accuracies; :func:`run_job` is what ``launch/search.py --method tenas`` runs.
``None`` settings take the released code's value for the space and dataset (:meth:`TenasConfig.resolved`).
Images are real training images ``[N, 3, H, W]`` normalised as for training.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from istanas.config import ConfigError
from istanas.data import DataConfig, image_batch
from istanas.tenas.indicators import BN_COUPLINGS, rank_combination
from istanas.tenas.proxies import DARTS_SEARCH_OPS, NB201_SEARCH_OPS
from istanas.tenas.pruning import Measurer, genotype_to_mask, mask_to_genotype, prune
from spaces.nb201 import TABLE_DATASETS, load_nb201_table

DATASET_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "ImageNet16-120": 120, "imagenet": 1000}


# ----------------------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TenasConfig:
    """TE-NAS search / scoring settings.  ``None`` = the released code's value for ``space`` and ``dataset``."""

    space: str = "nb201"                 # "nb201" | "darts"
    ops: list[str] | None = None         # candidate ops (a subset of the space's, no 'none'); None = all
    dataset: str = "cifar10"             # cifar10 | cifar100 | ImageNet16-120 | imagenet (classes, defaults)
    num_classes: int | None = None       # 10 / 100 / 120 / 1000 from dataset
    input_size: int = 32                 # NTK image side (images are resized to it; ImageNet: 32 as released)
    ntk_batch: int | None = None         # 72 (nb201), 14 (darts, cifar), 24 (darts, imagenet)
    ntk_width: int | None = None         # C of the NTK proxy: 3 (nb201), 1 (darts)
    augment: bool = True                 # flip + padded random crop of the NTK batch
    lr_samples: int = 3000               # patches per linear-region measurement (3 x 1000)
    lr_batch: int = 1000                 # BN batch of the linear-region forward
    lr_input_size: int = 3               # side of the one-channel patches
    lr_width: int = 1                    # C of the linear-region proxy
    repeats: int = 3
    seed: int = 0
    prune_number: int | None = None      # ops pruned per edge per round: 1 (nb201), 3 (darts cifar), 2 (imagenet)
    init: str = "intended"               # "intended" (fresh Kaiming per repeat) | "released" (default init)
    param_filter: str = "weight"         # NTK parameters: "weight" (names containing 'weight') | "all"
    precision: int = 3                   # significant digits compared when ranking
    nan_value: float = 1e5               # kappa of a NaN / singular NTK
    bn_coupling: str = "batch"           # NTK: "batch" (paper: gradients through BN batch stats) | "frozen" (fast)
    jac_chunk: int | None = None         # vmap chunk_size: None = auto (8 on CPU if coupled, else whole), 0 = whole
    table_path: str | None = None        # zc_nasbench201.json: accuracy lookup (+ correlations)
    correlation_archs: int = 0           # > 0: also run correlation_study on that many table archs
    device: str = "cpu"

    def validate(self) -> "TenasConfig":
        """Raise ``ConfigError`` (a ``ValueError``) naming the bad field; returns ``self``."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.space in ("nb201", "darts"), f"space: {self.space!r} is not 'nb201' or 'darts'")
        if self.ops is not None:
            allowed = NB201_SEARCH_OPS if self.space == "nb201" else DARTS_SEARCH_OPS
            need(len(self.ops) >= 1 and len(set(self.ops)) == len(self.ops) and set(self.ops) <= set(allowed),
                 f"ops: {self.ops!r} must be distinct candidate ops of space {self.space!r}: {list(allowed)}")
        need(self.dataset in DATASET_CLASSES, f"dataset: {self.dataset!r} is not one of {list(DATASET_CLASSES)}")
        need(self.num_classes is None or self.num_classes >= 1, f"num_classes: must be >= 1, got {self.num_classes}")
        need(self.input_size >= 4, f"input_size: must be >= 4, got {self.input_size}")
        need(self.ntk_batch is None or self.ntk_batch >= 2, f"ntk_batch: must be >= 2, got {self.ntk_batch}")
        need(self.ntk_width is None or self.ntk_width >= 1, f"ntk_width: must be >= 1, got {self.ntk_width}")
        need(self.lr_samples >= 2, f"lr_samples: must be >= 2, got {self.lr_samples}")
        need(self.lr_batch >= 2, f"lr_batch: must be >= 2, got {self.lr_batch}")
        need(1 <= self.lr_input_size <= self.input_size,
             f"lr_input_size: must be in 1..input_size ({self.input_size}), got {self.lr_input_size}")
        need(self.lr_width == 1, f"lr_width: the linear-region proxy takes one-channel patches, must be 1, "
                                 f"got {self.lr_width}")
        need(self.repeats >= 1, f"repeats: must be >= 1, got {self.repeats}")
        need(self.prune_number is None or self.prune_number >= 1,
             f"prune_number: must be >= 1, got {self.prune_number}")
        need(self.init in ("intended", "released"), f"init: {self.init!r} is not 'intended' or 'released'")
        need(self.param_filter in ("weight", "all"), f"param_filter: {self.param_filter!r} is not 'weight' or 'all'")
        need(1 <= self.precision <= 12, f"precision: must be in 1..12, got {self.precision}")
        need(math.isfinite(self.nan_value) and self.nan_value > 0, f"nan_value: must be > 0, got {self.nan_value}")
        need(self.bn_coupling in BN_COUPLINGS,
             f"bn_coupling: {self.bn_coupling!r} is not one of {list(BN_COUPLINGS)}")
        need(self.jac_chunk is None or self.jac_chunk >= 0, f"jac_chunk: must be >= 0, got {self.jac_chunk}")
        need(self.correlation_archs >= 0, f"correlation_archs: must be >= 0, got {self.correlation_archs}")
        if self.table_path is not None:
            need(self.space == "nb201", "table_path: the NAS-Bench-201 table applies to space 'nb201' only")
            need(self.dataset in TABLE_DATASETS, f"dataset: {self.dataset!r} has no column in the NAS-Bench-201 "
                                                 f"table (one of {list(TABLE_DATASETS)})")
            need(os.path.isfile(self.table_path), f"table_path: file not found: {self.table_path}")
        need(self.correlation_archs == 0 or self.table_path is not None,
             "correlation_archs: needs table_path (the accuracy table)")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"device: {self.device!r} is not a torch device") from None
        need(dev.type != "cuda" or torch.cuda.is_available(), f"device: {self.device!r} but CUDA is not available")
        return self

    def resolved(self) -> "TenasConfig":
        """A validated copy with every ``None`` default filled in from ``space`` and ``dataset``."""
        self.validate()
        imagenet = self.dataset == "imagenet"
        nb = self.space == "nb201"
        return dataclasses.replace(
            self,
            num_classes=self.num_classes or DATASET_CLASSES[self.dataset],
            ntk_batch=self.ntk_batch or (72 if nb else (24 if imagenet else 14)),
            ntk_width=self.ntk_width or (3 if nb else 1),
            prune_number=self.prune_number or (1 if nb else (2 if imagenet else 3)),
            # on CPU the vmapped VJP over all B coupled cotangents is memory-bound; chunks of 8 run fastest there
            jac_chunk=(self.jac_chunk if self.jac_chunk is not None
                       else (8 if torch.device(self.device).type == "cpu" and self.bn_coupling == "batch" else 0)),
        )


# ----------------------------------------------------------------------------------------------------------
# search
# ----------------------------------------------------------------------------------------------------------
def tenas_search(cfg: TenasConfig, images: torch.Tensor | None = None,
                 report: Callable[[dict], None] | None = None) -> dict:
    """Run the TE-NAS pruning search; seeded and repeatable.

    ``images``: real training images [N, 3, H, W] (normalised); None -> ``istanas.data``'s default set (digits).
    ``report(metrics)`` is called after every round with scalars (round, phase, candidates, kappa_parent,
    regions_parent, round_time_s, wall_time_s).

    Returns ``{"genotype": NB201Genotype | Genotype, "arch": str (arch string / genotype JSON),
    "rounds": [per-round dicts], "wall_time_s": search time (first round to end, setup excluded),
    "setup_time_s", "config": dict}`` plus, with ``cfg.table_path`` (NB201), ``"accuracy"`` (the table's
    validation accuracy of the found cell, or None when the 725-arch table does not hold it) and ``"in_table"``;
    with ``cfg.correlation_archs > 0`` also ``"correlations"`` (see :func:`correlation_study`).
    """
    cfg = cfg.resolved()
    t_setup = time.perf_counter()
    meas = Measurer(cfg, images)
    t0 = time.perf_counter()
    setup_s = t0 - t_setup
    mask, rounds = prune(cfg, meas, report, t0)
    wall = time.perf_counter() - t0
    genotype = mask_to_genotype(cfg.space, mask, meas.ntk_net.ops)
    result: dict[str, Any] = {
        "genotype": genotype,
        "arch": genotype.to_arch_str() if cfg.space == "nb201" else genotype.to_json(),
        "rounds": rounds, "wall_time_s": wall, "setup_time_s": setup_s,
        "config": dataclasses.asdict(cfg),
    }
    if cfg.table_path is not None:
        table = load_nb201_table(cfg.table_path, cfg.dataset)
        rec = table.get(result["arch"])
        result["in_table"] = rec is not None
        result["accuracy"] = rec["val_accuracy"] if rec is not None else None
        if cfg.correlation_archs > 0:
            result["correlations"] = correlation_study(cfg.table_path, images, cfg,
                                                       num_archs=cfg.correlation_archs, seed=cfg.seed)
    return result


def score_genotype(genotype: Any, images: torch.Tensor | None, cfg: TenasConfig) -> dict[str, float]:
    """Both indicators of one architecture: ``{"ntk_cond": mean kappa_N, "linear_regions": mean R_N}``.

    ``genotype``: an ``NB201Genotype``, a DARTS ``Genotype`` or an NB201 arch string; it is scored on the
    space's proxy networks with only its ops live ('none' edges dropped).  Averages over ``cfg.repeats``; the
    init / data units depend only on ``cfg.seed`` and the repeat, so scores of different genotypes are
    comparable (common random numbers).
    """
    space, mask = genotype_to_mask(genotype)
    cfg = dataclasses.replace(cfg, space=space, ops=None, table_path=None, correlation_archs=0).resolved()
    meas = Measurer(cfg, images)
    k, r = meas.score(mask)
    return {"ntk_cond": k, "linear_regions": r}


def correlation_study(table_path: str, images: torch.Tensor | None, cfg: TenasConfig, num_archs: int = 50,
                      seed: int = 0) -> dict:
    """Kendall tau / Spearman rho of each indicator against the table's validation accuracy (NB201).

    Samples ``num_archs`` architectures of ``table_path`` (``zc_nasbench201.json``) for ``cfg.dataset`` with
    ``seed``, scores each with :func:`score_genotype` settings (``cfg.repeats``, ``cfg.seed``), and correlates
    ``ntk_cond`` (expected negative), ``linear_regions`` (expected positive), the TE-NAS rank combination
    (``-(rank of kappa ascending + rank of R descending)``) and, as a baseline, the table's ``params``.
    """
    from scipy.stats import kendalltau, spearmanr

    cfg = dataclasses.replace(cfg, space="nb201", ops=None, table_path=None, correlation_archs=0).resolved()
    dataset = cfg.dataset
    if dataset not in TABLE_DATASETS:
        raise ValueError(f"dataset: {dataset!r} has no column in the table (one of {list(TABLE_DATASETS)})")
    table = load_nb201_table(table_path, dataset)
    archs = sorted(table)
    if not 2 <= num_archs <= len(archs):
        raise ValueError(f"num_archs: must be in 2..{len(archs)}, got {num_archs}")
    pick = np.random.default_rng(seed).choice(len(archs), size=num_archs, replace=False)
    meas = Measurer(cfg, images)
    t0 = time.perf_counter()
    rows = []
    for i in sorted(pick):
        arch = archs[i]
        _, mask = genotype_to_mask(arch)
        k, r = meas.score(mask)
        rows.append({"arch": arch, "val_accuracy": table[arch]["val_accuracy"], "ntk_cond": k,
                     "linear_regions": r, "params": table[arch]["params"]})
    acc = np.array([row["val_accuracy"] for row in rows])
    kap = np.array([row["ntk_cond"] for row in rows])
    reg = np.array([row["linear_regions"] for row in rows])
    combined = rank_combination(kap, reg)
    indicators = {"ntk_cond": kap, "linear_regions": reg, "tenas_rank": combined,
                  "params": np.array([row["params"] for row in rows])}
    tau = {k: float(kendalltau(v, acc)[0]) for k, v in indicators.items()}
    rho = {k: float(spearmanr(v, acc)[0]) for k, v in indicators.items()}
    return {"dataset": dataset, "num_archs": num_archs, "kendall_tau": tau, "spearman_rho": rho,
            "time_s": time.perf_counter() - t0, "archs": rows}


# ----------------------------------------------------------------------------------------------------------
# job (what `launch/search.py --method tenas` runs)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TenasJobConfig:
    """A TE-NAS search job: the search settings, where its (label-free) images come from, and where it writes.

    ``data``: images for the indicators (default: scikit-learn's digits, offline); ``num_images`` of its training
    split are drawn (seeded by ``data.split_seed``).  ``tenas.dataset`` only fixes the class count and the
    released code's per-dataset defaults; it is set from ``data.dataset`` when left at its default.
    """

    tenas: TenasConfig = dataclasses.field(default_factory=TenasConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    num_images: int = 256
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/search-tenas"

    def validate(self) -> None:
        if self.num_images < 2:
            raise ConfigError(f"num_images: must be >= 2, got {self.num_images}")
        self.data.validate()
        self.tenas = dataclasses.replace(self.tenas, seed=self.seed, device=self.device)
        try:
            need = self.tenas.resolved().ntk_batch
        except ConfigError as e:
            raise ConfigError(f"tenas.{e}") from None
        if self.num_images < need:
            raise ConfigError(f"num_images: {self.num_images} is fewer than the NTK batch tenas.ntk_batch = {need}")


def job_images(cfg: TenasJobConfig) -> torch.Tensor:
    """``cfg.num_images`` normalised training images ``[N, C, H, W]`` (float32, CPU) of ``cfg.data``."""
    return image_batch(cfg.data, cfg.num_images, seed=cfg.seed)


def run_job(cfg: TenasJobConfig, report: Callable[[dict], None] | None = None) -> dict:
    """Validate, load the images, run :func:`tenas_search`; returns its result dict."""
    cfg.validate()
    return tenas_search(cfg.tenas, job_images(cfg), report=report)


#: Whole setups for :class:`TenasJobConfig` (the CLI's ``--preset``): ``small`` (default: CPU minutes, fewer
#: samples and one repeat, smaller proxies' inputs) and ``reference`` (the paper / released code's settings).
TENAS_PRESETS: dict[str, dict[str, Any]] = {
    "small": {"num_images": 64, "tenas": {"input_size": 16, "ntk_batch": 16, "lr_samples": 500, "lr_batch": 250,
                                          "repeats": 1}},
    "reference": {"num_images": 256, "tenas": {}},
}
