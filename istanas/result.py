"""What a search returns and writes: :class:`SearchResult` and :func:`write_outputs`.

``result.json`` is :meth:`SearchResult.to_record` (per-epoch history, final metrics, config, the method's extras,
the genotype and the list of files written); ``genotype.json`` the genotype's JSON; ``cells_<cell>.png`` /
``.svg`` pictures of both cells (:mod:`spaces.plot`).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from spaces.plot import plot_genotype

from .checkpoint import atomic_write_json, atomic_write_text

#: The standard keys of a search record (``result.json``), in the order of the old record dicts.
RECORD_KEYS = ("method", "genotype_json", "genotype_digest", "history", "final", "wall_time_s", "session_time_s",
               "config", "device")


@dataclass
class SearchResult:
    """What a search found and how it went.

    ``genotype``: a :class:`spaces.genotype.Genotype` (or NB201 cell); ``history``: per-epoch metrics; ``final``:
    the last epoch's val/test/train accuracy and loss, ``epochs`` (+ ``converged_epoch``, ``recoveries``);
    ``wall_time_s``: search time over all sessions; ``extra``: method-specific record entries (``support``,
    ``stop_epochs``, ``params``, ``export``, TE-NAS ``rounds`` / table look-ups, ...); ``paths``: files written by
    :func:`write_outputs`.  ``record_keys``: which standard keys the record carries (TE-NAS: its own record);
    ``pictures``: whether :func:`write_outputs` draws the cells and lists its ``outputs`` in the record.
    """

    method: str
    genotype: Any
    history: list[dict]
    final: dict[str, Any]
    config: dict[str, Any]
    device: str
    wall_time_s: float
    session_time_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    record_keys: tuple[str, ...] = RECORD_KEYS
    pictures: bool = True

    @property
    def genotype_json(self) -> str:
        return self.genotype.to_json()

    @property
    def genotype_digest(self) -> str:
        return self.genotype.digest()

    def to_record(self) -> dict[str, Any]:
        """The ``result.json`` mapping: the standard keys, the extras, the genotype as a dict (+ ``outputs``)."""
        std = {k: getattr(self, k) for k in RECORD_KEYS}
        rec = {k: std[k] for k in self.record_keys}
        rec.update(self.extra)
        rec["genotype"] = self.genotype.to_dict()
        if self.pictures and self.paths:
            rec["outputs"] = dict(self.paths)
        return rec


# ------------------------------------------------------------------------------------------------------ outputs
def write_outputs(result: SearchResult, out_dir: str) -> dict[str, str]:
    """Write ``genotype.json`` (atomic), ``cells_<cell>.png`` / ``.svg`` (both cells, :mod:`spaces.plot`; unless
    ``result.pictures`` is false) and ``result.json`` into ``out_dir``; returns ``{kind: path}`` of what was written
    (also kept in ``result.paths``)."""
    os.makedirs(out_dir, exist_ok=True)
    g = result.genotype
    paths = {"genotype": os.path.join(out_dir, "genotype.json")}
    atomic_write_text(paths["genotype"], g.to_json(indent=2) + "\n")
    if result.pictures:
        try:
            paths.update(plot_cells(g, out_dir))
        except Exception as e:  # a picture is informative only; never lose a search to it
            warnings.warn(f"could not draw the cells: {e}", RuntimeWarning, stacklevel=2)
    paths["result"] = os.path.join(out_dir, "result.json")
    result.paths = dict(paths)
    atomic_write_json(paths["result"], result.to_record())
    return paths


def plot_cells(genotype: Any, out_dir: str, stem: str = "cells") -> dict[str, str]:
    """Pictures of both cells, PNG and SVG (``{stem}_normal.png``, ``{stem}_reduce.svg``, ...) via
    :func:`spaces.plot.plot_genotype`; returns ``{"plot_<cell>_<fmt>": path}``."""
    out: dict[str, str] = {}
    for fmt in ("png", "svg"):
        for path in plot_genotype(genotype, out_dir, stem, fmt=fmt):
            cell = os.path.splitext(os.path.basename(path))[0][len(stem) + 1:]
            out[f"plot_{cell}_{fmt}"] = str(path)
    return out


__all__ = ["SearchResult", "RECORD_KEYS", "write_outputs", "plot_cells"]
