"""NAS-Bench-201 arch strings, the benchmark tables' keys, and table loading (the one owner of all three).

A cell has 4 nodes; node j (1..3) sums one op on every edge i -> j (i < j).  The arch string lists the six
edges node by node, ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``, i.e. in :data:`NB201_EDGES` order
(1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2).  ``zc_nasbench201.json`` (NASLib) keys a cell as ``"(a, b, c, d, e, f)"``:
op indices in :data:`TABLE_OP_ORDER` for the edges in :data:`TABLE_EDGE_ORDER` (0->1, 0->2, 0->3, 1->2, 1->3,
2->3), a different edge order from the arch string's.  Malformed text raises ``ValueError`` naming the field
(``arch:`` / ``key:``).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

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


__all__ = ["NB201_NODES", "NB201_EDGES", "TABLE_OP_ORDER", "TABLE_EDGE_ORDER", "TABLE_DATASETS", "parse_arch_nodes",
           "parse_arch_str", "make_arch_str", "table_key_to_arch_str", "arch_str_to_table_key", "load_nb201_table"]
