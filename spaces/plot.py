"""Pictures of a cell (matplotlib's Agg / SVG renderers, no pyplot, no global backend change): inputs on the
left, intermediate nodes in layers by depth, the output on the right, every edge labelled with its op.
Files are written atomically (temporary file + ``os.replace``).

DARTS cells: nodes ``c_{k-2}``, ``c_{k-1}``, ``0..steps-1`` and ``c_{k}`` (the concatenation); every node has
``genotype.ops_per_node`` incoming edges (2 in DARTS, s for an ISTA-NAS genotype of support size s).  NAS-Bench-201 cells:
nodes ``0..3`` (node 0 the cell input, node 3 its output); 'none' edges are not drawn.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Union

from spaces.genotype import Genotype, NB201Genotype
from spaces.registry import load_genotype

FORMATS = {".png": "png", ".svg": "svg"}


def _format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"path: expected a .png or .svg file name, got {path!r}")
    return FORMATS[ext]


def _layered(keys: list, inputs_of: dict, kinds: dict, labels: dict, out_key) -> dict:
    """Layered left-to-right layout: rank(input) = 0, rank(node) = 1 + max rank of its inputs, the output one
    rank after the last; nodes of one rank are stacked vertically, 1.7 apart, centred on y = 0."""
    rank: dict = {}
    for k in keys:
        ins = inputs_of.get(k, [])
        rank[k] = 0 if not ins else 1 + max(rank[i] for i in ins)
    rank[out_key] = 1 + max(rank.values())
    columns: dict[int, list] = {}
    for k in list(keys) + [out_key]:
        columns.setdefault(rank[k], []).append(k)
    pos = {}
    for r, col in columns.items():
        gap = 2.6 if r == 0 else 1.7
        for n, k in enumerate(col):
            pos[k] = (3.0 * r, gap * ((len(col) - 1) / 2 - n), labels[k], kinds[k])
    return pos


def _graph(g: Union[Genotype, NB201Genotype], cell: str):
    """(nodes {key: (x, y, label, kind)}, edges [(src, dst, label)])."""
    if isinstance(g, NB201Genotype):
        live = [(i, j, op) for i, j, op in g.edges if op != "none"]
        inputs_of: dict = {j: [i for i, jj, _ in live if jj == j] for j in (1, 2)}
        inputs_of[1] = inputs_of[1] or [0]  # keep the drawing connected even when a node only sees 'none'
        inputs_of[2] = inputs_of[2] or [0]
        kinds = {0: "input", 1: "node", 2: "node", 3: "output"}
        nodes = _layered([0, 1, 2], inputs_of, kinds, {j: str(j) for j in range(4)}, 3)
        return nodes, live
    pairs, concat = g.cell(cell)
    nodes_of = g.nodes(cell)                       # s = g.ops_per_node pairs per node
    steps, s = len(nodes_of), g.ops_per_node
    key = {0: "in0", 1: "in1"}
    keys = ["in0", "in1"] + [k + 2 for k in range(steps)]
    inputs_of = {k + 2: [key.get(i, i) for _, i in node] for k, node in enumerate(nodes_of)}
    kinds = {k: ("input" if k in ("in0", "in1") else "node") for k in keys}
    kinds["out"] = "output"
    labels = {"in0": "c_{k-2}", "in1": "c_{k-1}", "out": "c_{k}"}
    labels.update({k + 2: str(k) for k in range(steps)})
    nodes = _layered(keys, inputs_of, kinds, labels, "out")
    edges = [(key.get(i, i), 2 + j // s, op) for j, (op, i) in enumerate(pairs)]
    edges += [(k, "out", "") for k in concat]
    return nodes, edges


def _bezier(x0: float, y0: float, x1: float, y1: float, rad: float, t: float) -> tuple[float, float]:
    """Point at ``t`` on matplotlib's ``arc3,rad`` curve: a quadratic Bezier whose control point is the chord
    midpoint + rad * (dy, -dx) (equal axis scales, so data and display coordinates agree up to a factor)."""
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
    return ((1 - t) ** 2 * x0 + 2 * t * (1 - t) * cx + t ** 2 * x1,
            (1 - t) ** 2 * y0 + 2 * t * (1 - t) * cy + t ** 2 * y1)


def _best_rad(x0: float, y0: float, x1: float, y1: float, others: list, parallel: int) -> float:
    """The least-bent arc that keeps 0.55 away from every other node (else the one passing farthest from them);
    the n-th parallel edge is bent 0.3 * n more."""
    best, best_d = 0.0, -1.0
    for rad in (0.0, 0.15, -0.15, 0.3, -0.3, 0.45, -0.45):
        pts = [_bezier(x0, y0, x1, y1, rad, t / 20) for t in range(2, 19)]
        d = min((min(((px - ox) ** 2 + (py - oy) ** 2) ** 0.5 for px, py in pts) for ox, oy in others),
                default=1e9)
        if d >= 0.55:
            best = rad
            break
        if d > best_d:
            best, best_d = rad, d
    return best + (0.3 * parallel if best >= 0 else -0.3 * parallel)


def _draw(g: Union[Genotype, NB201Genotype], cell: str):
    from matplotlib.figure import Figure  # no pyplot: the figure renders through Agg / the SVG backend itself

    nodes, edges = _graph(g, cell)
    seen: dict[tuple, int] = {}
    geometry = []  # (x0, y0, x1, y1, rad, label)
    for src, dst, label in edges:
        (x0, y0), (x1, y1) = nodes[src][:2], nodes[dst][:2]
        n = seen.get((src, dst), 0)  # a node taking the same input twice: the second edge bends away
        seen[(src, dst)] = n + 1
        others = [v[:2] for k, v in nodes.items() if k not in (src, dst)]
        geometry.append((x0, y0, x1, y1, _best_rad(x0, y0, x1, y1, others, n), label))
    xs = [v[0] for v in nodes.values()]
    ys = [v[1] for v in nodes.values()] + [_bezier(*e[:5], t / 10)[1] for e in geometry for t in range(11)]
    fig = Figure(figsize=(1.5 + 1.1 * (max(xs) - min(xs)), 1.8 + 1.1 * (max(ys) - min(ys))))
    ax = fig.add_subplot(111)
    colours = {"input": "#a6cee3", "node": "#ffffb3", "output": "#b2df8a"}
    for x0, y0, x1, y1, rad, label in geometry:
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="0.35", lw=1.2, shrinkA=17, shrinkB=17,
                                    connectionstyle=f"arc3,rad={rad}"))
        if label:  # near the head, so the two labels entering a node sit apart
            mx, my = _bezier(x0, y0, x1, y1, rad, 0.72)
            ax.text(mx, my, label, fontsize=7.5, ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="0.8", alpha=0.9))
    for x, y, label, kind in nodes.values():
        ax.text(x, y, f"${label}$" if "{" in label else label, ha="center", va="center", fontsize=10,
                bbox=dict(boxstyle="circle,pad=0.35" if kind == "node" else "round,pad=0.4", fc=colours[kind],
                          ec="0.2"))
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.set_aspect("equal")
    ax.axis("off")
    title = "NAS-Bench-201 cell" if isinstance(g, NB201Genotype) else f"{cell} cell"
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_cell(genotype: Any, cell: str = "normal", path: str = "cell.png") -> str:
    """Draw ``cell`` ("normal" or "reduce"; ignored for NAS-Bench-201) of ``genotype`` (anything
    :func:`spaces.registry.load_genotype` reads) to ``path`` (.png or .svg); returns ``path``."""
    g = load_genotype(genotype)
    if cell not in ("normal", "reduce"):
        raise ValueError(f"cell: expected 'normal' or 'reduce', got {cell!r}")
    path = os.fspath(path)
    fmt = _format_of(path)
    fig = _draw(g, cell)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="." + fmt, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=130, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def plot_genotype(genotype: Any, out_dir: str, stem: str = "genotype", fmt: str = "png") -> list[str]:
    """Both cells of a DARTS genotype (``{stem}_normal.{fmt}``, ``{stem}_reduce.{fmt}``) or the one
    NAS-Bench-201 cell (``{stem}_cell.{fmt}``) into ``out_dir``; returns the paths written."""
    g = load_genotype(genotype)
    if "." + fmt not in FORMATS:
        raise ValueError(f"fmt: expected 'png' or 'svg', got {fmt!r}")
    if isinstance(g, NB201Genotype):
        return [plot_cell(g, "normal", os.path.join(out_dir, f"{stem}_cell.{fmt}"))]
    return [plot_cell(g, c, os.path.join(out_dir, f"{stem}_{c}.{fmt}")) for c in ("normal", "reduce")]


__all__ = ["plot_cell", "plot_genotype"]
