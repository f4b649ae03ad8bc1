"""Genotypes of the DARTS and NAS-Bench-201 cell spaces: immutable values, a canonical JSON form, validation.

DARTS cell (:class:`Genotype`): states 0 and 1 are the outputs of the two previous cells (c_{k-2}, c_{k-1});
intermediate node ``k = 2 + i`` (i = 0, 1, ...) sums two ops, each applied to one earlier state ``0..k-1``; the
pairs are stored node-major, two per node (8 pairs for the usual 4 nodes).  The cell output concatenates the
states listed in ``*_concat`` (usually ``(2, 3, 4, 5)``).  'none' is not allowed in a DARTS genotype (a derived
architecture never keeps the zero op).

NAS-Bench-201 cell (:class:`NB201Genotype`): 4 nodes; node j (1..3) sums one op applied to every earlier node
0..j-1; 'none' is allowed.  Its text form is NAS-Bench-201's arch string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (parsed and written by :mod:`spaces.nb201`).  Names of published
genotypes and ``load_genotype`` (name, file, JSON or arch string) live in :mod:`spaces.registry`.

JSON forms (canonical: sorted keys, no spaces; :meth:`digest` hashes exactly that text)::

    {"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5], "reduce": [...],
     "reduce_concat": [2, 3, 4, 5], "space": "darts"}
    {"arch": "|nor_conv_3x3~0|+|...|", "space": "nb201"}

Every malformed value raises ``ValueError`` whose message starts with the offending field, e.g.
``normal[3]: unknown op 'sep_conv_9x9'``.  Nothing here evaluates or unpickles text.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence, Union

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
def _check_pairs(field: str, value: Any) -> tuple[Pair, ...]:
    """Validate a DARTS cell's (op, input) list -> tuple of (str, int) pairs."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{field}: expected a list of [op, input] pairs, got {_type_name(value)}")
    n = len(value)
    if n == 0 or n % 2 != 0:
        raise ValueError(f"{field}: {n} (op, input) pairs; expected 2 per intermediate node "
                         f"(a positive even number, 8 for 4 nodes)")
    out = []
    for j, pair in enumerate(value):
        where = f"{field}[{j}]"
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
        node = 2 + j // 2
        if not 0 <= idx < node:
            raise ValueError(f"{where}: input index {idx} out of range; node {node} may take inputs 0..{node - 1}")
        out.append((op, int(idx)))
    return tuple(out)


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


@dataclass(frozen=True)
class Genotype(_JsonForm):
    """A DARTS-space architecture: per cell type, 2 (op, input) pairs per intermediate node, node-major.

    Lists are accepted and stored as tuples; the constructor validates (``ValueError`` naming the field).
    """

    normal: tuple[Pair, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Pair, ...]
    reduce_concat: tuple[int, ...]
    space: ClassVar[str] = "darts"

    def __post_init__(self) -> None:
        for cell in ("normal", "reduce"):
            pairs = _check_pairs(cell, getattr(self, cell))
            concat = _check_concat(f"{cell}_concat", getattr(self, f"{cell}_concat"), len(pairs) // 2)
            object.__setattr__(self, cell, pairs)
            object.__setattr__(self, f"{cell}_concat", concat)

    # -------------------------------------------------------------------------------------------------- views
    def cell(self, name: str) -> tuple[tuple[Pair, ...], tuple[int, ...]]:
        """``(pairs, concat)`` of cell ``name`` ("normal" or "reduce")."""
        if name not in ("normal", "reduce"):
            raise ValueError(f"cell: expected 'normal' or 'reduce', got {name!r}")
        return getattr(self, name), getattr(self, f"{name}_concat")

    def steps(self, cell: str = "normal") -> int:
        """Number of intermediate nodes of ``cell``."""
        return len(self.cell(cell)[0]) // 2

    # ----------------------------------------------------------------------------------------------- JSON form
    def to_dict(self) -> dict:
        return {"space": self.space,
                "normal": [[op, i] for op, i in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [[op, i] for op, i in self.reduce], "reduce_concat": list(self.reduce_concat)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Genotype":
        d = _as_mapping(d)
        _check_keys(d, ("normal", "normal_concat", "reduce", "reduce_concat"))
        _check_space(d, cls.space)
        return cls(normal=d["normal"], normal_concat=d["normal_concat"], reduce=d["reduce"],
                   reduce_concat=d["reduce_concat"])

    def __str__(self) -> str:
        lines = ["Genotype (darts)"]
        for cell in ("normal", "reduce"):
            pairs, concat = self.cell(cell)
            lines.append(f"  {cell} cell, output = concat{list(concat)}:")
            for k in range(len(pairs) // 2):
                (o1, i1), (o2, i2) = pairs[2 * k], pairs[2 * k + 1]
                lines.append(f"    node {k + 2} = {o1}({_state_name(i1)}) + {o2}({_state_name(i2)})")
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
           "DARTS_GENOTYPE_OPS", "NB201_GENOTYPE_OPS", "SPACES"]
