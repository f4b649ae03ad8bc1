"""Genotypes of the DARTS and NAS-Bench-201 cell spaces: immutable values, a canonical JSON form, validation.

DARTS cell (:class:`Genotype`): states 0 and 1 are the outputs of the two previous cells (c_{k-2}, c_{k-1});
intermediate node ``k = 2 + i`` (i = 0, 1, ...) sums ``s = ops_per_node`` ops (DARTS and the published genotypes:
2; an ISTA-NAS search with support size s: s), each applied to one earlier state ``0..k-1``; the pairs are stored
node-major, s per node (pair j belongs to node ``2 + j // s``; 8 pairs for the usual 4 nodes and s = 2).  Every
node of both cells has the same s.  The cell output concatenates the states listed in ``*_concat`` (usually
``(2, 3, 4, 5)``).  'none' is not allowed in a DARTS genotype (a derived architecture never keeps the zero op).

NAS-Bench-201 cell (:class:`NB201Genotype`): 4 nodes; node j (1..3) sums one op applied to every earlier node
0..j-1; 'none' is allowed.  Its text form is NAS-Bench-201's arch string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (parsed and written by :mod:`spaces.nb201`).  Names of published
genotypes and ``load_genotype`` (name, file, JSON or arch string) live in :mod:`spaces.registry`.

JSON forms (canonical: sorted keys, no spaces; :meth:`digest` hashes exactly that text)::

    version 1 (no "version" key; s = 2, flat pairs, 2 per node: every file written before version 2)
    {"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5], "reduce": [...],
     "reduce_concat": [2, 3, 4, 5], "space": "darts"}
    version 2 (any s: one list of s [op, input] pairs per node)
    {"normal": [[["sep_conv_3x3", 0], ["skip_connect", 1], ["dil_conv_3x3", 0]], ...], "normal_concat": [...],
     "reduce": [[...], ...], "reduce_concat": [...], "space": "darts", "version": 2}
    {"arch": "|nor_conv_3x3~0|+|...|", "space": "nb201"}

A genotype with s = 2 is written in version 1 (so its text and digest are what they were before version 2
existed); any other s in version 2.  Both versions are read; a version-2 file with 2 ops per node reads back to
the same genotype (equal, same digest) as its version-1 form.

Every malformed value raises ``ValueError`` whose message starts with the offending field, e.g.
``normal[3]: unknown op 'sep_conv_9x9'``.  Nothing here evaluates or unpickles text.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, Sequence, Union

from spaces.nb201 import NB201_NODES, make_arch_str, parse_arch_nodes
from spaces.ops import DARTS_PRIMITIVES, NB201_PRIMITIVES

#: Ops a derived DARTS genotype may use (DARTS_PRIMITIVES without 'none').
DARTS_GENOTYPE_OPS: tuple[str, ...] = tuple(o for o in DARTS_PRIMITIVES if o != "none")
#: Ops a NAS-Bench-201 genotype may use (all of them, 'none' included).
NB201_GENOTYPE_OPS: tuple[str, ...] = tuple(NB201_PRIMITIVES)
SPACES: tuple[str, ...] = ("darts", "nb201")

Pair = tuple[str, int]


def _canonical_json(d: Mapping[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _type_name(v: Any) -> str:
    return type(v).__name__


# ------------------------------------------------------------------------------------------------------ DARTS
def _check_pairs(field: str, value: Any, s: int = 2, grouped: bool = False) -> tuple[Pair, ...]:
    """Validate a DARTS cell's flat, node-major (op, input) list, ``s`` pairs per node -> tuple of (str, int)
    pairs.  ``grouped``: name pairs as in the version-2 JSON form (``field[node][slot]``) in error messages."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{field}: expected a list of [op, input] pairs, got {_type_name(value)}")
    n = len(value)
    if n == 0 or n % s != 0:
        what = "a positive even number, 8 for 4 nodes" if s == 2 else f"a positive multiple of {s}"
        raise ValueError(f"{field}: {n} (op, input) pairs; expected {s} per intermediate node ({what})")
    out = []
    for j, pair in enumerate(value):
        where = f"{field}[{j // s}][{j % s}]" if grouped else f"{field}[{j}]"
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)):
            raise ValueError(f"{where}: expected an [op, input] pair, got {_type_name(pair)} {pair!r}")
        if len(pair) != 2:
            raise ValueError(f"{where}: expected an [op, input] pair of 2 items, got {len(pair)}")
        op, idx = pair
        if not isinstance(op, str):
            raise ValueError(f"{where}: op must be a string, got {_type_name(op)} {op!r}")
        if op not in DARTS_GENOTYPE_OPS:
            hint = " ('none' is not allowed in a DARTS genotype)" if op == "none" else ""
            raise ValueError(f"{where}: unknown op {op!r}{hint}; known: {list(DARTS_GENOTYPE_OPS)}")
        if not _is_int(idx):
            raise ValueError(f"{where}: input index must be an int, got {_type_name(idx)} {idx!r}")
        node = 2 + j // s
        if not 0 <= idx < node:
            raise ValueError(f"{where}: input index {idx} out of range; node {node} may take inputs 0..{node - 1}")
        out.append((op, int(idx)))
    return tuple(out)


def _check_ops_per_node(value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"ops_per_node: expected an int >= 1, got {value!r}")
    return int(value)


def _flatten_nodes(field: str, value: Any) -> tuple[list, int]:
    """A version-2 cell (one list of [op, input] pairs per node) -> (flat node-major pairs, ops per node)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{field}: expected a list of nodes (version 2: one list of [op, input] pairs per node), "
                         f"got {_type_name(value)}")
    if len(value) == 0:
        raise ValueError(f"{field}: no nodes; expected one list of [op, input] pairs per intermediate node")
    flat: list = []
    s = None
    for i, node in enumerate(value):
        if isinstance(node, (str, bytes)) or not isinstance(node, (list, tuple)) or len(node) == 0:
            raise ValueError(f"{field}[{i}]: expected a non-empty list of [op, input] pairs (node {2 + i}), "
                             f"got {node!r}")
        if isinstance(node[0], str):
            raise ValueError(f"{field}[{i}]: expected a non-empty list of [op, input] pairs (version 2 groups the "
                             f"pairs per node), got the pair {list(node)!r}")
        if s is None:
            s = len(node)
        elif len(node) != s:
            raise ValueError(f"{field}[{i}]: {len(node)} ops, but node 2 has {s}; every node of a genotype has "
                             f"the same number of ops")
        flat.extend(node)
    return flat, int(s)


def _check_concat(field: str, value: Any, steps: int) -> tuple[int, ...]:
    """Validate a concat list (or a ``range``, as DARTS writes it): distinct ints naming nodes 2..steps+1."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, range)):
        raise ValueError(f"{field}: expected a list of node indices, got {_type_name(value)}")
    if len(value) == 0:
        raise ValueError(f"{field}: empty; the cell output needs at least one node")
    out = []
    for j, v in enumerate(value):
        if not _is_int(v):
            raise ValueError(f"{field}[{j}]: node index must be an int, got {_type_name(v)} {v!r}")
        if not 2 <= v < 2 + steps:
            raise ValueError(f"{field}[{j}]: node {v} out of range; intermediate nodes are 2..{steps + 1}")
        if v in out:
            raise ValueError(f"{field}[{j}]: node {v} listed twice")
        out.append(int(v))
    return tuple(out)


def _check_keys(d: Mapping[str, Any], required: Sequence[str], optional: Sequence[str] = ("space",)) -> None:
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{missing[0]}: missing key (required: {list(required)})")
    extra = sorted(str(k) for k in d if k not in required and k not in optional)
    if extra:
        raise ValueError(f"{extra[0]}: unexpected key (allowed: {list(required) + list(optional)})")


def _check_space(d: Mapping[str, Any], expected: str) -> None:
    space = d.get("space", expected)
    if space != expected:
        raise ValueError(f"space: expected {expected!r}, got {space!r}")


def _as_mapping(d: Any) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ValueError(f"genotype: expected a JSON object, got {_type_name(d)}")
    return d


def _parse_json(text: str, what: str = "genotype JSON") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


class _JsonForm:
    """The JSON form shared by both genotype classes; a subclass defines ``to_dict`` and ``from_dict``."""

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON (sorted keys, compact) or, with ``indent``, a readable form of the same object."""
        if indent is None:
            return _canonical_json(self.to_dict())
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(_parse_json(text))

    def digest(self) -> str:
        """First 12 hex characters of the sha256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


#: Versions of the DARTS genotype JSON form that :meth:`Genotype.from_dict` reads (see the module doc).
GENOTYPE_VERSIONS: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Genotype(_JsonForm):
    """A DARTS-space architecture: per cell type, ``ops_per_node`` (op, input) pairs per intermediate node,
    node-major (pair j feeds node ``2 + j // ops_per_node``).

    Lists are accepted and stored as tuples; the constructor validates (``ValueError`` naming the field).
    ``ops_per_node`` defaults to 2 (DARTS, the published genotypes, every version-1 file).
    """

    normal: tuple[Pair, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Pair, ...]
    reduce_concat: tuple[int, ...]
    ops_per_node: int = 2
    space: ClassVar[str] = "darts"

    def __post_init__(self) -> None:
        s = _check_ops_per_node(self.ops_per_node)
        object.__setattr__(self, "ops_per_node", s)
        for cell in ("normal", "reduce"):
            pairs = _check_pairs(cell, getattr(self, cell), s)
            concat = _check_concat(f"{cell}_concat", getattr(self, f"{cell}_concat"), len(pairs) // s)
            object.__setattr__(self, cell, pairs)
            object.__setattr__(self, f"{cell}_concat", concat)

    # -------------------------------------------------------------------------------------------------- views
    def cell(self, name: str) -> tuple[tuple[Pair, ...], tuple[int, ...]]:
        """``(pairs, concat)`` of cell ``name`` ("normal" or "reduce"): flat node-major pairs."""
        if name not in ("normal", "reduce"):
            raise ValueError(f"cell: expected 'normal' or 'reduce', got {name!r}")
        return getattr(self, name), getattr(self, f"{name}_concat")

    def nodes(self, cell: str = "normal") -> tuple[tuple[Pair, ...], ...]:
        """The pairs of ``cell`` grouped per intermediate node: ``nodes(cell)[i]`` feeds node ``2 + i``."""
        pairs, s = self.cell(cell)[0], self.ops_per_node
        return tuple(pairs[k:k + s] for k in range(0, len(pairs), s))

    def steps(self, cell: str = "normal") -> int:
        """Number of intermediate nodes of ``cell``."""
        return len(self.cell(cell)[0]) // self.ops_per_node

    # ----------------------------------------------------------------------------------------------- JSON form
    def to_dict(self, version: Optional[int] = None) -> dict:
        """The JSON object: ``version`` 1 (flat pairs; only for 2 ops per node) or 2 (one list per node); None
        = 1 when ``ops_per_node == 2`` (the form, and so the digest, of every genotype before version 2), else 2."""
        s = self.ops_per_node
        version = (1 if s == 2 else 2) if version is None else version
        if version not in GENOTYPE_VERSIONS:
            raise ValueError(f"version: unknown genotype format version {version!r}; known: {list(GENOTYPE_VERSIONS)}")
        if version == 1:
            if s != 2:
                raise ValueError(f"version: version 1 holds 2 ops per node; this genotype has {s} (use version 2)")
            return {"space": self.space,
                    "normal": [[op, i] for op, i in self.normal], "normal_concat": list(self.normal_concat),
                    "reduce": [[op, i] for op, i in self.reduce], "reduce_concat": list(self.reduce_concat)}
        return {"space": self.space, "version": 2,
                "normal": [[[op, i] for op, i in node] for node in self.nodes("normal")],
                "normal_concat": list(self.normal_concat),
                "reduce": [[[op, i] for op, i in node] for node in self.nodes("reduce")],
                "reduce_concat": list(self.reduce_concat)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Genotype":
        d = _as_mapping(d)
        _check_keys(d, ("normal", "normal_concat", "reduce", "reduce_concat"), optional=("space", "version"))
        _check_space(d, cls.space)
        version = d.get("version", 1)
        if not _is_int(version) or version not in GENOTYPE_VERSIONS:
            raise ValueError(f"version: unknown genotype format version {version!r}; known: {list(GENOTYPE_VERSIONS)}")
        if version == 1:
            return cls(normal=d["normal"], normal_concat=d["normal_concat"], reduce=d["reduce"],
                       reduce_concat=d["reduce_concat"])
        normal, s = _flatten_nodes("normal", d["normal"])
        reduce, s_red = _flatten_nodes("reduce", d["reduce"])
        if s_red != s:
            raise ValueError(f"reduce: {s_red} ops per node, but the normal cell has {s}; every node of a genotype "
                             f"has the same number of ops")
        _check_pairs("normal", normal, s, grouped=True)
        _check_pairs("reduce", reduce, s, grouped=True)
        return cls(normal=normal, normal_concat=d["normal_concat"], reduce=reduce,
                   reduce_concat=d["reduce_concat"], ops_per_node=s)

    def __str__(self) -> str:
        head = "Genotype (darts)" if self.ops_per_node == 2 else f"Genotype (darts, {self.ops_per_node} ops per node)"
        lines = [head]
        for cell in ("normal", "reduce"):
            concat = self.cell(cell)[1]
            lines.append(f"  {cell} cell, output = concat{list(concat)}:")
            for k, node in enumerate(self.nodes(cell)):
                lines.append(f"    node {k + 2} = " + " + ".join(f"{o}({_state_name(i)})" for o, i in node))
        return "\n".join(lines)


def _state_name(i: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(i, f"node {i}")


# ----------------------------------------------------------------------------------------------- NAS-Bench-201
def _check_nb201_nodes(value: Any, field: str = "nodes") -> tuple[tuple[Pair, ...], ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{field}: expected a list of nodes, got {_type_name(value)}")
    if len(value) != NB201_NODES:
        raise ValueError(f"{field}: {len(value)} nodes; a NAS-Bench-201 cell has {NB201_NODES}")
    out = []
    for j, node in enumerate(value, start=1):
        where = f"{field}[{j - 1}]"
        if isinstance(node, (str, bytes)) or not isinstance(node, (list, tuple)):
            raise ValueError(f"{where}: expected a list of (op, input) pairs, got {_type_name(node)}")
        if len(node) != j:
            raise ValueError(f"{where}: node {j} needs one op from each of nodes 0..{j - 1} ({j} pairs), "
                             f"got {len(node)}")
        pairs = []
        for i, pair in enumerate(node):
            w = f"{where}[{i}]"
            if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{w}: expected an (op, input) pair, got {pair!r}")
            op, idx = pair
            if not isinstance(op, str) or op not in NB201_GENOTYPE_OPS:
                raise ValueError(f"{w}: unknown op {op!r}; known: {list(NB201_GENOTYPE_OPS)}")
            if not _is_int(idx) or idx != i:
                raise ValueError(f"{w}: input index must be the int {i} (pairs are listed by input node), "
                                 f"got {idx!r}")
            pairs.append((op, int(idx)))
        out.append(tuple(pairs))
    return tuple(out)


@dataclass(frozen=True)
class NB201Genotype(_JsonForm):
    """A NAS-Bench-201 cell: ``nodes[j-1][i] = (op, i)`` is the op on edge i -> j (j = 1..3, i < j)."""

    nodes: tuple[tuple[Pair, ...], ...]
    space: ClassVar[str] = "nb201"

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", _check_nb201_nodes(self.nodes))

    @property
    def edges(self) -> tuple[tuple[int, int, str], ...]:
        """``(from, to, op)`` per edge in arch-string order 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2."""
        return tuple((i, j, op) for j, node in enumerate(self.nodes, start=1) for op, i in node)

    @classmethod
    def from_arch_str(cls, s: str) -> "NB201Genotype":
        return cls(nodes=parse_arch_nodes(s))

    def to_arch_str(self) -> str:
        return make_arch_str([op for _, _, op in self.edges])

    def to_dict(self) -> dict:
        return {"space": self.space, "arch": self.to_arch_str()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NB201Genotype":
        d = _as_mapping(d)
        _check_keys(d, ("arch",))
        _check_space(d, cls.space)
        return cls.from_arch_str(d["arch"])

    def __str__(self) -> str:
        lines = [f"NB201Genotype {self.to_arch_str()}"]
        for j, node in enumerate(self.nodes, start=1):
            lines.append(f"  node {j} = " + " + ".join(f"{op}(node {i})" for op, i in node))
        return "\n".join(lines)


AnyGenotype = Union[Genotype, NB201Genotype]


def genotype_from_dict(d: Any) -> AnyGenotype:
    """Dispatch on ``d["space"]`` (or, without it, on the keys: ``arch`` -> nb201, else darts)."""
    d = _as_mapping(d)
    space = d.get("space", "nb201" if "arch" in d else "darts")
    if space == "darts":
        return Genotype.from_dict(d)
    if space == "nb201":
        return NB201Genotype.from_dict(d)
    raise ValueError(f"space: unknown space {space!r}; known: {list(SPACES)}")


def genotype_from_json(text: str, what: str = "genotype JSON") -> AnyGenotype:
    """Parse JSON text (``what`` names it in errors) and dispatch as :func:`genotype_from_dict`."""
    return genotype_from_dict(_parse_json(text, what=what))


__all__ = ["Genotype", "NB201Genotype", "AnyGenotype", "genotype_from_dict", "genotype_from_json",
           "DARTS_GENOTYPE_OPS", "NB201_GENOTYPE_OPS", "SPACES", "GENOTYPE_VERSIONS"]
