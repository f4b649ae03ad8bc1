"""Atomic checkpoint and result writes, integrity-checked loads, and RNG state capture.

States hold only tensors, numbers, strings, lists, tuples and dicts so that they load with
``torch.load(weights_only=True)`` (no pickle of arbitrary objects).  :func:`save` records the size and SHA-256 of
what it wrote in a sidecar ``<file>.sha256`` (JSON) and, with ``keep_previous``, keeps the last good file as
``<stem>.prev<ext>``; :func:`load` checks the sidecar and turns any unreadable file into a
:class:`CheckpointError` naming the file; :func:`load_with_fallback` then uses the previous good checkpoint.
``save(..., packed=True)`` (training states) first copies every tensor into one flat buffer per (dtype, device)
(:func:`pack`): ``torch.save`` costs ~85 us per tensor, and a DARTS super-net's state holds ~2,900 of them;
:func:`load` unpacks such a file and reads plain ones as before.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import tempfile
from collections import OrderedDict
from typing import Any, Optional

import numpy as np
import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mkstemp(folder: str, suffix: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``folder``, with the mode ``open()`` would give (0666 & ~umask), not 0600."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _mkstemp(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class CheckpointError(ValueError):
    """A checkpoint that is missing its data, truncated, altered or unreadable (the message names the file)."""


MANIFEST_SUFFIX = ".sha256"


def manifest_path(path: str | os.PathLike) -> str:
    """The sidecar ``<path>.sha256`` that :func:`save` writes next to a checkpoint."""
    return os.fspath(path) + MANIFEST_SUFFIX


def previous_path(path: str | os.PathLike) -> str:
    """Where ``save(..., keep_previous=True)`` keeps the last good file: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    stem, ext = os.path.splitext(os.fspath(path))
    return f"{stem}.prev{ext}"


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file."""
    h = hashlib.sha256()
    size = 0
    with open(os.fspath(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _replace_pair(src: str, dest: str) -> None:
    """Move a checkpoint and its sidecar (when there is one) from ``src`` to ``dest``."""
    os.replace(src, dest)
    if os.path.exists(manifest_path(src)):
        os.replace(manifest_path(src), manifest_path(dest))
    elif os.path.exists(manifest_path(dest)):
        os.unlink(manifest_path(dest))


#: The marker of a :func:`pack` ed state, and of a tensor's place in its tree.
PACKED_FORMAT = "istanas.packed/1"
_SLOT = "\x00istanas.tensor"
_WALK = object()   # what a leaf function returns for "not a leaf: walk into it"


def _packable(t: torch.Tensor) -> bool:
    return t.layout == torch.strided and not t.is_quantized and not t.is_meta


def _is_slot(o: Any) -> bool:
    return type(o) is tuple and len(o) == 2 and o[0] == _SLOT


def _map_tree(o: Any, leaf: Any) -> Any:
    """``o`` rebuilt with ``leaf(x)`` for every ``x`` where it is not ``_WALK``; dicts, OrderedDicts, lists and
    plain tuples are walked (other objects are leaves)."""
    r = leaf(o)
    if r is not _WALK:
        return r
    if isinstance(o, OrderedDict):
        return OrderedDict((k, _map_tree(v, leaf)) for k, v in o.items())
    if isinstance(o, dict):
        return {k: _map_tree(v, leaf) for k, v in o.items()}
    if isinstance(o, list):
        return [_map_tree(v, leaf) for v in o]
    if type(o) is tuple:
        return tuple(_map_tree(v, leaf) for v in o)
    return o


def pack(state: Any) -> dict:
    """``state`` with every (strided) tensor replaced by a slot into one flat buffer per (dtype, device).

    Returns ``{"format", "tree", "buffers": [1-D tensors on CPU], "devices": [str], "group", "offset", "ndim",
    "shape"}``: tensor ``i`` is ``buffers[group[i]][offset[i]:offset[i] + prod(shape_i)]`` viewed as ``shape_i`` (its
    dims are the next ``ndim[i]`` entries of ``shape``).  Dicts, OrderedDicts, lists and plain tuples are walked;
    other leaves stay as they are.  Views of one storage become separate tensors (as after ``load_state_dict``), and a
    Parameter becomes a plain tensor.  One device-to-host copy per group, not one per tensor."""
    keys: dict[tuple[torch.dtype, str], int] = {}
    parts: list[list[torch.Tensor]] = []
    sizes: list[int] = []
    group: list[int] = []
    offset: list[int] = []
    ndim: list[int] = []
    shape: list[int] = []

    def leaf(o: Any) -> Any:
        if isinstance(o, torch.Tensor) and _packable(o):
            g = keys.setdefault((o.dtype, str(o.device)), len(keys))
            if g == len(parts):
                parts.append([])
                sizes.append(0)
            t = o.detach().reshape(-1)
            parts[g].append(t)
            group.append(g)
            offset.append(sizes[g])
            sizes[g] += t.numel()
            ndim.append(o.dim())
            shape.extend(o.shape)
            return (_SLOT, len(group) - 1)
        if _is_slot(o):
            raise ValueError(f"pack: the state holds the reserved tuple {o!r}")
        return _WALK

    tree = _map_tree(state, leaf)
    buffers = [torch.cat(p).cpu() for p in parts]
    as_long = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return {"format": PACKED_FORMAT, "tree": tree, "buffers": buffers,
            "devices": [dev for _, dev in keys],           # keys are in group order
            "group": as_long(group), "offset": as_long(offset), "ndim": as_long(ndim), "shape": as_long(shape)}


def is_packed(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == PACKED_FORMAT


def unpack(obj: Any, map_location: Optional[str | torch.device] = None) -> Any:
    """The state :func:`pack` packed (anything else is returned as it is): every tensor its own storage, on
    ``map_location`` (None: the device it was packed from)."""
    if not is_packed(obj):
        return obj
    buffers = [b.to(map_location if map_location is not None else dev)
               for b, dev in zip(obj["buffers"], obj["devices"])]
    group, offset, ndim = obj["group"].tolist(), obj["offset"].tolist(), obj["ndim"].tolist()
    shape = obj["shape"].tolist()
    tensors: list[torch.Tensor] = []
    at = 0
    for g, off, nd in zip(group, offset, ndim):
        dims = shape[at:at + nd]
        at += nd
        tensors.append(buffers[g][off:off + math.prod(dims)].view(dims).clone())

    return _map_tree(obj["tree"], lambda o: tensors[o[1]] if _is_slot(o) else _WALK)


def save(state: dict, path: str | os.PathLike, *, keep_previous: bool = False, packed: bool = False) -> None:
    """``torch.save`` to a temporary file, then ``os.replace``: a crash never leaves a half-written checkpoint.
    The size and SHA-256 go to ``<path>.sha256``; with ``keep_previous`` an existing ``path`` (and its sidecar)
    becomes :func:`previous_path` first.  ``packed``: save :func:`pack` (state) (files only :func:`load` reads as
    the state; user-facing files such as ``model.pt`` stay plain)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _mkstemp(folder, ".pt")
    os.close(fd)
    try:
        torch.save(pack(state) if packed else state, tmp)
        size, sha = file_digest(tmp)
        if keep_previous and os.path.isfile(path):
            _replace_pair(path, previous_path(path))
        os.replace(tmp, path)
        atomic_write_text(manifest_path(path), json.dumps({"file": os.path.basename(path), "size": size,
                                                           "sha256": sha}) + "\n")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def verify(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` when ``path`` is missing or differs from the size / SHA-256 its sidecar
    recorded.  A file without a sidecar (written before sidecars existed, or by another tool) passes; its load
    still fails loudly when it is unreadable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} is missing")
    side = manifest_path(path)
    if not os.path.isfile(side):
        return
    try:
        with open(side, encoding="utf-8") as f:
            want = json.load(f)
        want_size, want_sha = int(want["size"]), str(want["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: its record {side} is unreadable ({type(e).__name__})") from None
    size, sha = file_digest(path)
    if size != want_size:
        raise CheckpointError(f"checkpoint {path} is corrupt: {size} bytes, {want_size} were written (truncated?)")
    if sha != want_sha:
        raise CheckpointError(f"checkpoint {path} is corrupt: its SHA-256 differs from the one recorded at save")


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save` with ``weights_only=True``, after :func:`verify` (a packed one
    unpacked); an unreadable file is a :class:`CheckpointError` naming it (never a raw unpickling traceback)."""
    path = os.fspath(path)
    verify(path)
    try:
        return unpack(torch.load(path, map_location=map_location, weights_only=True), map_location)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None


def load_with_fallback(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                       warn: bool = True) -> tuple[dict, str]:
    """(state, the file it came from): ``path``, else its :func:`previous_path` when ``path`` fails
    :func:`load` (a note on stderr says so); when both fail, the :class:`CheckpointError` names both."""
    path = os.fspath(path)
    try:
        return load(path, map_location), path
    except CheckpointError as first:
        prev = previous_path(path)
        if not os.path.isfile(prev):
            raise
        try:
            state = load(prev, map_location)
        except CheckpointError as second:
            raise CheckpointError(f"{first}; the previous one is bad too: {second}") from None
        if warn:
            print(f"warning: {first}; resuming from the previous good checkpoint {prev}", file=sys.stderr)
        return state, prev


def newest_valid(paths: list[str], map_location: str | torch.device = "cpu") -> Optional[str]:
    """The first of ``paths`` (newest first) that loads (:func:`load`), or None."""
    for p in paths:
        try:
            load(p, map_location)
            return p
        except CheckpointError:
            continue
    return None


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and, when present, CUDA) RNG states as weights-only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
