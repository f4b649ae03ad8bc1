"""TE-NAS search job: settings (:class:`TenasConfig`, :class:`TenasJobConfig`, presets), the search, scoring.

:func:`tenas_search` runs the pruning of :mod:`istanas.tenas.pruning` on the proxies of
:mod:`istanas.tenas.proxies` and, with a NAS-Bench-201 table, looks the found cell up; :func:`score_genotype`
gives both indicators of one architecture (kappa_N, Eq. 4; R_N, Eq. 5); :func:`correlation_study` correlates
them with the table's accuracies; :func:`run_job` is what ``launch/search.py --method tenas`` runs.
``None`` settings take the released code's value for the space and dataset (:meth:`TenasConfig.resolved`).
Images are real training images ``[N, 3, H, W]`` normalised as for training.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from istanas.config import ConfigError
from istanas.data import DataConfig, default_root, image_batch
from istanas.tenas.indicators import BN_COUPLINGS
from istanas.tenas.proxies import DARTS_SEARCH_OPS, NB201_SEARCH_OPS
from istanas.tenas.pruning import Measurer, genotype_to_mask, mask_to_genotype, prune
from istanas.tenas.score import COMPONENTS, SCORES, oriented_scores, rank_correlations, score_cells
from spaces.nb201 import (CSV_ARCH_COLUMN, TABLE_DATASETS, check_nb201_table, open_nb201_table, parse_arch_str,
                          table_key_to_arch_str)

DATASET_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "ImageNet16-120": 120, "imagenet": 1000}


# ----------------------------------------------------------------------------------------------------------
# the benchmark table: checked before a search, opened after it
# ----------------------------------------------------------------------------------------------------------
def check_table_cells(path: str) -> None:
    """Before a search: ``spaces.nb201.check_nb201_table`` plus every key of the table is an NB201 cell
    (CSV ``ArchitectureString`` / NASLib JSON keys); no accuracy is read.  ``ValueError`` naming the first bad one."""
    check_nb201_table(path)
    with open(path, "rb") as f:
        is_json = f.read(4096).lstrip()[:1] == b"{"
    n = 0
    if is_json:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({type(e).__name__})") from None
        if not isinstance(data, dict) or any(not isinstance(data.get(d), dict) for d in TABLE_DATASETS):
            raise ValueError(f"{path} must map each of {list(TABLE_DATASETS)} to an object of NB201 cells")
        for d in TABLE_DATASETS:
            for key in data[d]:
                table_key_to_arch_str(key)
                n += 1
    else:
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    parse_arch_str(row.get(CSV_ARCH_COLUMN))
                except ValueError as e:
                    raise ValueError(f"{path} line {line}: {e}") from None
                n += 1
    if n == 0:
        raise ValueError(f"{path} holds no cells")


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
    augment: bool = True                 # flip + padded random crop of the NTK batch (as released)
    lr_samples: int = 3000               # patches per linear-region measurement (3 x 1000)
    lr_batch: int = 1000                 # BN batch of the linear-region forward
    lr_input_size: int = 3               # side of the one-channel patches
    lr_width: int = 1                    # C of the linear-region proxy
    repeats: int = 3
    seed: int = 0
    prune_number: int | None = None      # ops pruned per edge per round: 1 (nb201), 3 (darts cifar), 2 (imagenet)
    init: str = "released"               # "released" (default init, as run) | "intended" (fresh Kaiming per repeat)
    param_filter: str = "weight"         # NTK parameters: "weight" (names containing 'weight') | "all"
    precision: int = 3                   # significant digits compared when ranking
    nan_value: float = 1e5               # kappa of a NaN / singular NTK
    bn_coupling: str = "batch"           # NTK: "batch" (paper: gradients through BN batch stats) | "frozen" (fast)
    jac_chunk: int | None = None         # vmap chunk_size: None = auto (8 on CPU if coupled, else whole), 0 = whole
    score: str = "tenas"                 # "tenas" (the paper's rank sum of kappa, R) | "combined" (log-rank sum)
    components: list[str] | None = None  # score "combined": indicators combined; None = score.COMBINED_DEFAULT
    naswot_batch: int = 128              # NASWOT kernel batch (Mellor et al.: 128)
    naswot_width: int = 16               # C of the evaluation network NASWOT / params / FLOPs are taken on
    naswot_cells: int | None = None      # cells per stage (NB201: 5) / layers (DARTS: 8) of that network
    table_path: str | None = None        # nasbench201_full.csv or zc_nasbench201.json: lookup after the search
    correlation_archs: int = 0           # > 0: also run correlation_study on that many table archs
    reference_cells: int = 32            # one cell's rank objective (score.reference_objective): sample size
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
        need(self.reference_cells >= 1, f"reference_cells: must be >= 1, got {self.reference_cells}")
        need(self.score in SCORES, f"score: {self.score!r} is not one of {list(SCORES)}")
        if self.components is not None:
            need(len(self.components) >= 1 and set(self.components) <= set(COMPONENTS)
                 and len(set(self.components)) == len(self.components),
                 f"components: {self.components!r} must be distinct names of {list(COMPONENTS)}")
        need(self.naswot_batch >= 2, f"naswot_batch: must be >= 2, got {self.naswot_batch}")
        need(self.naswot_width >= 1, f"naswot_width: must be >= 1, got {self.naswot_width}")
        need(self.naswot_cells is None or self.naswot_cells >= 1,
             f"naswot_cells: must be >= 1, got {self.naswot_cells}")
        if self.table_path is not None:
            need(self.space == "nb201", "table_path: the NAS-Bench-201 table applies to space 'nb201' only")
            need(self.dataset in TABLE_DATASETS, f"dataset: {self.dataset!r} has no column in the NAS-Bench-201 "
                                                 f"table (one of {list(TABLE_DATASETS)})")
            need(os.path.isfile(self.table_path), f"table_path: file not found: {self.table_path}")
            try:
                check_table_cells(self.table_path)
            except ValueError as e:
                raise ConfigError(f"table_path: {e}") from None
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
    "setup_time_s", "config": dict}`` plus, with ``cfg.table_path`` (NB201; opened only after the search),
    ``"benchmark"`` (``NB201Table.lookup``: the three accuracies and percentiles, None when the table lacks the
    cell), ``"accuracy"`` (its ``cfg.dataset`` accuracy or None) and ``"in_table"``; with
    ``cfg.correlation_archs > 0`` also ``"correlations"`` (see :func:`correlation_study`).
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
        table = open_nb201_table(cfg.table_path)
        arch = result["arch"]
        result["in_table"] = arch in table
        result["benchmark"] = table.lookup(arch) if result["in_table"] else None
        result["accuracy"] = result["benchmark"][cfg.dataset] if result["in_table"] else None
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
                      seed: int = 0, components: list[str] | None = None) -> dict:
    """Kendall tau / Spearman rho of each indicator and score against the table's accuracy (NB201).

    Samples ``num_archs`` cells of ``table_path`` (``nasbench201_full.csv`` or ``zc_nasbench201.json``) with
    ``seed``, scores each (:func:`istanas.tenas.score.score_cells`, ``cfg``'s units; ``components`` default: all,
    #params and FLOPs computed from the cell's network) and correlates every component (``ntk_cond`` negated,
    so a positive tau means "ranks like accuracy"), the TE-NAS rank combination ``tenas_rank``, the sweep's
    ``log R - log kappa`` (``tenas_log_ratio``) and ``combined`` with ``cfg.dataset``'s accuracy.
    """
    cfg = dataclasses.replace(cfg, space="nb201", ops=None, table_path=None, correlation_archs=0).resolved()
    dataset = cfg.dataset
    if dataset not in TABLE_DATASETS:
        raise ValueError(f"dataset: {dataset!r} has no column in the table (one of {list(TABLE_DATASETS)})")
    table = open_nb201_table(table_path)
    archs = sorted(table.archs())
    if not 2 <= num_archs <= len(archs):
        raise ValueError(f"num_archs: must be in 2..{len(archs)}, got {num_archs}")
    pick = sorted(np.random.default_rng(seed).choice(len(archs), size=num_archs, replace=False))
    sample = [archs[i] for i in pick]
    cols = score_cells(sample, images, cfg, components)
    acc = [table.accuracy(a, dataset) for a in sample]
    corr = rank_correlations(oriented_scores(cols), acc)
    ind = {k: v for k, v in cols.items() if k in COMPONENTS}
    rows = [{"arch": a, "accuracy": acc[i], **{k: float(v[i]) for k, v in ind.items()}} for i, a in enumerate(sample)]
    return {"dataset": dataset, "num_archs": num_archs,
            "kendall_tau": {k: v["kendall_tau"] for k, v in corr.items()},
            "spearman_rho": {k: v["spearman_rho"] for k, v in corr.items()},
            "time_per_cell_s": cols["time_per_cell_s"], "archs": rows}


# ----------------------------------------------------------------------------------------------------------
# job (what `launch/search.py --method tenas` runs)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TenasJobConfig:
    """A TE-NAS search job: the search settings, where its (label-free) images come from, and where it writes.

    ``data``: the image pool for the indicators, un-augmented training images (TE-NAS then draws a fresh NTK batch
    and fresh patches from the pool for every repeat); ``num_images``: how many of the training split to hold
    (seeded by ``data.split_seed``; None = all of it, as released).  ``data_fallback``: when ``data`` names
    CIFAR-10/100 with no root and no local copy is found, use scikit-learn's digits instead and say so (a smoke
    run, not TE-NAS).  ``tenas.dataset`` only fixes the class count and the released code's per-dataset defaults;
    it is set from ``data.dataset`` when left at its default.
    """

    tenas: TenasConfig = dataclasses.field(default_factory=TenasConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    num_images: int | None = 256
    data_fallback: bool = False
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/search-tenas"

    def validate(self) -> None:
        if self.num_images is not None and self.num_images < 2:
            raise ConfigError(f"num_images: must be >= 2 or null (the whole training set), got {self.num_images}")
        if (self.data_fallback and self.data.root is None and not self.data.download
                and self.data.dataset in ("cifar10", "cifar100") and default_root(self.data.dataset) is None):
            print(f"tenas: no local {self.data.dataset} found (pass --data-root); searching on scikit-learn digits "
                  f"instead: a smoke run, not TE-NAS's result", file=sys.stderr)
            self.data = dataclasses.replace(self.data, dataset="digits")
            self.data_fallback = False
        self.data.validate()
        self.tenas = dataclasses.replace(self.tenas, seed=self.seed, device=self.device)
        try:
            need = self.tenas.resolved().ntk_batch
        except ConfigError as e:
            raise ConfigError(f"tenas.{e}") from None
        if self.num_images is not None and self.num_images < need:
            raise ConfigError(f"num_images: {self.num_images} is fewer than the NTK batch tenas.ntk_batch = {need}")


#: ``num_images`` stand-in for "the whole training split" (``image_batch`` keeps all when asked for more).
_ALL_IMAGES = 1 << 40


def job_images(cfg: TenasJobConfig) -> torch.Tensor:
    """``cfg.num_images`` (None: all) normalised, un-augmented training images ``[N, C, H, W]`` (float32, CPU)."""
    return image_batch(cfg.data, cfg.num_images or _ALL_IMAGES, seed=cfg.seed)


def run_job(cfg: TenasJobConfig, report: Callable[[dict], None] | None = None) -> dict:
    """Validate, load the images, run :func:`tenas_search`; returns its result dict."""
    cfg.validate()
    return tenas_search(cfg.tenas, job_images(cfg), report=report)


#: Whole setups for :class:`TenasJobConfig` (the CLI's ``--preset``): ``paper`` (the default: the released
#: code's settings on the whole CIFAR-10 training set, digits with a warning when no CIFAR-10 is found),
#: ``small`` (tests, CPU minutes: fewer samples, one repeat, 16x16 inputs) and ``reference`` (the released
#: settings on 256 images of ``data``).
TENAS_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"num_images": None, "data_fallback": True, "data": {"dataset": "cifar10"}, "tenas": {}},
    "small": {"num_images": 64, "tenas": {"input_size": 16, "ntk_batch": 16, "lr_samples": 500, "lr_batch": 250,
                                          "repeats": 1}},
    "reference": {"num_images": 256, "tenas": {}},
}
