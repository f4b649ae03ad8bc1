"""NAS-Bench-201 arch strings, the benchmark tables' keys, and the tables themselves (the one owner of all three).

A cell has 4 nodes; node j (1..3) sums one op on every edge i -> j (i < j).  The arch string lists the six
edges node by node, ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``, i.e. in :data:`NB201_EDGES` order
(1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2).  ``zc_nasbench201.json`` (NASLib) keys a cell as ``"(a, b, c, d, e, f)"``:
op indices in :data:`TABLE_OP_ORDER` for the edges in :data:`TABLE_EDGE_ORDER` (0->1, 0->2, 0->3, 1->2, 1->3,
2->3), a different edge order from the arch string's.  Malformed text raises ``ValueError`` naming the field
(``arch:`` / ``key:``).
"""
from __future__ import annotations

import bisect
import csv
import json
import os
from typing import Any, Sequence

from spaces.ops import NB201_PRIMITIVES

#: Intermediate nodes of a cell (nodes 1..3; node 0 is the cell input).
NB201_NODES = 3
#: Edges (from, to) in the arch string's order |1<-0|+|2<-0|2<-1|+|3<-0|3<-1|3<-2|.
NB201_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))

#: Op order and edge order of the keys of ``zc_nasbench201.json`` (see shared/data/README.md).
TABLE_OP_ORDER: tuple[str, ...] = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
TABLE_EDGE_ORDER: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
TABLE_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "ImageNet16-120")

Pair = tuple[str, int]


def parse_arch_nodes(s: object) -> list[list[Pair]]:
    """Arch string -> ``nodes[j-1] = [(op, i) for i < j]`` (j = 1..3), every entry checked."""
    if not isinstance(s, str):
        raise ValueError(f"arch: expected a NAS-Bench-201 arch string, got {type(s).__name__}")
    s = s.strip()
    parts = s.split("+")
    if len(parts) != NB201_NODES:
        raise ValueError(f"arch: {len(parts)} nodes separated by '+'; expected {NB201_NODES} "
                         f"('|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'), got {s!r}")
    nodes = []
    for j, part in enumerate(parts, start=1):
        if len(part) < 2 or not (part.startswith("|") and part.endswith("|")):
            raise ValueError(f"arch: node {j} {part!r} must be written '|op~i|...|'")
        entries = part[1:-1].split("|")
        if len(entries) != j:
            raise ValueError(f"arch: node {j} {part!r} has {len(entries)} entries; expected {j} "
                             f"(one per earlier node)")
        pairs = []
        for i, entry in enumerate(entries):
            op, sep, idx = entry.partition("~")
            if not sep or not idx.isdigit():
                raise ValueError(f"arch: node {j} entry {entry!r} is not 'op~index'")
            if op not in NB201_PRIMITIVES:
                raise ValueError(f"arch: node {j} entry {entry!r}: unknown op {op!r}; "
                                 f"known: {list(NB201_PRIMITIVES)}")
            if int(idx) != i:
                raise ValueError(f"arch: node {j} entry {entry!r}: input index {int(idx)}, expected {i}")
            pairs.append((op, i))
        nodes.append(pairs)
    return nodes


def parse_arch_str(arch: object) -> list[tuple[str, int, int]]:
    """``"|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"`` -> [(op, from, to)] in :data:`NB201_EDGES` order."""
    return [(op, i, j) for j, node in enumerate(parse_arch_nodes(arch), start=1) for op, i in node]


def make_arch_str(ops: Sequence[str]) -> str:
    """Six op names in :data:`NB201_EDGES` order -> the arch string."""
    if len(ops) != len(NB201_EDGES):
        raise ValueError(f"ops: expected {len(NB201_EDGES)} op names, got {len(ops)}")
    nodes: list[list[str]] = [[] for _ in range(NB201_NODES)]
    for op, (frm, to) in zip(ops, NB201_EDGES):
        nodes[to - 1].append(f"{op}~{frm}")
    return "+".join("|" + "|".join(n) + "|" for n in nodes)


def _parse_table_key(key: str) -> list[int]:
    text = key.strip()
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError(f"key: {key!r} is not a tuple '(a, b, c, d, e, f)'")
    try:
        idx = [int(t) for t in text[1:-1].split(",")]
    except ValueError:
        raise ValueError(f"key: {key!r} is not a tuple of integers") from None
    if len(idx) != 6 or any(not 0 <= i < len(TABLE_OP_ORDER) for i in idx):
        raise ValueError(f"key: {key!r} must hold 6 op indices in 0..{len(TABLE_OP_ORDER) - 1}")
    return idx


def table_key_to_arch_str(key: str) -> str:
    """A ``zc_nasbench201.json`` key -> arch string, e.g. ``"(0, 2, 3, 2, 3, 1)"`` ->
    ``"|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|"``."""
    idx = _parse_table_key(key)
    by_edge = {edge: TABLE_OP_ORDER[i] for edge, i in zip(TABLE_EDGE_ORDER, idx)}
    return make_arch_str([by_edge[e] for e in NB201_EDGES])


def arch_str_to_table_key(arch: str) -> str:
    """Inverse of :func:`table_key_to_arch_str` (the key formatted as in the JSON file, ``"(a, b, ...)"``)."""
    by_edge = {(frm, to): op for op, frm, to in parse_arch_str(arch)}
    return "(" + ", ".join(str(TABLE_OP_ORDER.index(by_edge[e])) for e in TABLE_EDGE_ORDER) + ")"


def load_nb201_table(path: str, dataset: str = "cifar10") -> dict[str, dict[str, float]]:
    """Read ``zc_nasbench201.json`` -> {arch string: {"val_accuracy", "params", "flops"}} for ``dataset``."""
    if not os.path.isfile(path):
        raise ValueError(f"table_path: file not found: {path}")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if dataset not in data:
        raise ValueError(f"dataset: {dataset!r} not in the table (has {sorted(data)})")
    out = {}
    for key, rec in data[dataset].items():
        out[table_key_to_arch_str(key)] = {
            "val_accuracy": float(rec["val_accuracy"]),
            "params": float(rec["params"]["score"]) if isinstance(rec.get("params"), dict) else float("nan"),
            "flops": float(rec["flops"]["score"]) if isinstance(rec.get("flops"), dict) else float("nan"),
        }
    return out


#: Columns of ``nasbench201_full.csv`` (NATS-Bench export): 200-epoch test accuracy per data set, and the arch.
CSV_COLUMNS: dict[str, str] = {"cifar10": "CIFAR10TestAccuracy200Epochs", "cifar100": "CIFAR100TestAccuracy200Epochs",
                               "ImageNet16-120": "ImageNetTestAccuracy200Epochs"}
CSV_ARCH_COLUMN = "ArchitectureString"
_MAX_TABLE_BYTES = 1 << 30


def _table_format(path: object) -> str:
    """``"csv"`` or ``"json"`` from the file's first non-blank byte; every problem a ``ValueError`` naming the file."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"table: expected a file path, got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"table: file not found: {path}")
    size = os.path.getsize(path)
    if size == 0 or size > _MAX_TABLE_BYTES:
        raise ValueError(f"table: {path} is {'empty' if size == 0 else f'{size} bytes (over 1 GiB)'}; expected "
                         f"nasbench201_full.csv or zc_nasbench201.json")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return "json" if head[:1] == b"{" else "csv"


def check_nb201_table(path: object) -> None:
    """Cheap check before a search (no accuracy is read): the file exists and is a benchmark table.

    CSV: the header has the arch column and the three accuracy columns.  JSON: the text starts an object.  Raises
    ``ValueError`` (``table: ...``)."""
    if _table_format(path) == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            try:
                header = next(csv.reader(f), [])
            except (csv.Error, UnicodeDecodeError) as e:
                raise ValueError(f"table: {path} is not a readable CSV ({e})") from None
        missing = [c for c in (CSV_ARCH_COLUMN, *CSV_COLUMNS.values()) if c not in header]
        if missing:
            raise ValueError(f"table: {path} lacks the column(s) {missing} of nasbench201_full.csv "
                             f"(header: {header[:6]})")


class NB201Table:
    """The benchmark's accuracies (percent) of NB201 cells, keyed by arch string, for the three data sets.

    ``acc[d]`` maps arch -> accuracy on data set ``d`` (:data:`TABLE_DATASETS`).  Percentiles are over the cells
    the table holds (all 15,625 for the CSV, 725 for NASLib's JSON, whose accuracy is its ``val_accuracy``; there
    one cell lacks ImageNet16-120, and :meth:`lookup` gives ``None`` for a data set that lacks the cell)."""

    def __init__(self, path: str, acc: dict[str, dict[str, float]]):
        self.path = path
        self.acc = acc
        self._sorted = {d: sorted(v.values()) for d, v in acc.items()}

    def __len__(self) -> int:
        return len(self.acc[TABLE_DATASETS[0]])

    def __contains__(self, arch: object) -> bool:
        return any(arch in v for v in self.acc.values())

    def archs(self) -> list[str]:
        """The cells with a CIFAR-10 accuracy (all of them for the CSV)."""
        return list(self.acc[TABLE_DATASETS[0]])

    def _check(self, arch: str, dataset: str) -> None:
        if dataset not in self.acc:
            raise ValueError(f"dataset: {dataset!r} is not one of {list(TABLE_DATASETS)}")
        if arch not in self.acc[dataset]:
            raise KeyError(f"arch {arch!r} is not in the table {self.path} ({len(self)} cells)")

    def accuracy(self, arch: str, dataset: str = "cifar10") -> float:
        """Test accuracy (percent) of ``arch`` on ``dataset``; ``KeyError`` if the table lacks the cell."""
        self._check(arch, dataset)
        return self.acc[dataset][arch]

    def percentile(self, arch: str, dataset: str = "cifar10") -> float:
        """Percent (0..100) of the table's cells whose accuracy on ``dataset`` is lower than ``arch``'s."""
        self._check(arch, dataset)
        values = self._sorted[dataset]
        return 100.0 * bisect.bisect_left(values, self.acc[dataset][arch]) / len(values)

    def lookup(self, arch: str) -> dict[str, Any]:
        """The record ``result.json`` keeps under ``"benchmark"``: the cell's three accuracies and percentiles."""
        rec: dict[str, Any] = {"table": self.path, "table_cells": len(self), "arch": arch}
        present = [d for d in TABLE_DATASETS if arch in self.acc[d]]
        if not present:
            self._check(arch, TABLE_DATASETS[0])
        rec.update({d: (self.accuracy(arch, d) if d in present else None) for d in TABLE_DATASETS})
        rec["percentile"] = {d: (self.percentile(arch, d) if d in present else None) for d in TABLE_DATASETS}
        return rec


def _read_csv_table(path: str) -> dict[str, dict[str, float]]:
    check_nb201_table(path)
    acc: dict[str, dict[str, float]] = {d: {} for d in TABLE_DATASETS}
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            arch = row.get(CSV_ARCH_COLUMN)
            try:
                parse_arch_str(arch)
                values = {d: float(row[c]) for d, c in CSV_COLUMNS.items()}
            except (ValueError, TypeError) as e:
                raise ValueError(f"table: {path} line {line}: {e}") from None
            for d, v in values.items():
                if not 0.0 <= v <= 100.0:
                    raise ValueError(f"table: {path} line {line}: {d} accuracy {v} is not a percentage")
                acc[d][arch] = v
    return acc


def _read_json_table(path: str) -> dict[str, dict[str, float]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"table: {path} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict) or any(d not in data for d in TABLE_DATASETS):
        raise ValueError(f"table: {path} must map each of {list(TABLE_DATASETS)} to cells (NASLib's "
                         f"zc_nasbench201.json form); has {sorted(data)[:6] if isinstance(data, dict) else type(data).__name__}")
    acc: dict[str, dict[str, float]] = {}
    for d in TABLE_DATASETS:
        cells = data[d]
        if not isinstance(cells, dict) or not cells:
            raise ValueError(f"table: {path}: {d!r} is not a non-empty object of cells")
        acc[d] = {}
        for key, rec in cells.items():
            try:
                arch = table_key_to_arch_str(key)
                v = rec["val_accuracy"]
                v = float(v["score"] if isinstance(v, dict) else v)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"table: {path}: {d} cell {key!r}: {e}") from None
            acc[d][arch] = v
    return acc


def open_nb201_table(path: str) -> NB201Table:
    """Read the full table (``nasbench201_full.csv``) or NASLib's ``zc_nasbench201.json`` into an :class:`NB201Table`.

    Every problem (missing file, wrong columns, a key that is not an NB201 cell, a non-number) is a ``ValueError``
    naming the file.  Call it only after a search finished: a search never reads the table."""
    acc = _read_csv_table(path) if _table_format(path) == "csv" else _read_json_table(path)
    if not acc[TABLE_DATASETS[0]]:
        raise ValueError(f"table: {path} holds no cells")
    return NB201Table(path, acc)


__all__ = ["NB201_NODES", "NB201_EDGES", "TABLE_OP_ORDER", "TABLE_EDGE_ORDER", "TABLE_DATASETS", "parse_arch_nodes",
           "parse_arch_str", "make_arch_str", "table_key_to_arch_str", "arch_str_to_table_key", "load_nb201_table",
           "CSV_COLUMNS", "NB201Table", "check_nb201_table", "open_nb201_table"]
