"""Memory of one search on its device, estimated from its config, and the check that a trial fits its GPU share.

A sweep packs several searches per GPU with ``resources_per_trial.gpu`` fractions (``0.25``: four trials on one
GPU).  Ray only counts the fractions; it does not stop a trial from taking more than its share of the GPU's memory,
so a search that needs more fails mid-training with a CUDA out-of-memory error, or makes its neighbours fail.
:func:`estimate_search_memory` estimates a search's peak from its config, and :func:`check_fits_share` compares it
with ``fraction x`` the GPU's memory before any data is read or any step is taken (one clear ``ConfigError``).

The estimate (bytes) of one training step of the super-net is

    total = context + 3 P_bytes + buffers + data + batch + max(k_act * B * a, eval)

* ``P_bytes``: the parameters (every candidate op's weights: the sparse super-net keeps them all), counted 3 times:
  weights, gradients, SGD momentum;  ``buffers``: BN statistics, the compressed space (A, E, b, z);
* ``a``: activation bytes per sample that autograd saves for the backward, measured by running one training-mode
  forward of the super-net at batch 2 on the CPU with ``torch.autograd.graph.saved_tensors_hooks`` (each storage
  counted once, parameters excluded), with the *heaviest* support the search can recover (every node's ``s``
  support slots on its costliest candidate ops), so that a support change during the search cannot exceed it;
  ``B`` the training batch; ``k_act`` (:data:`ACTIVATION_FACTOR`, per cell space) covers the backward's transient
  gradient buffers, calibrated against the profiler's measured peak of a CPU step (benchmarks/README.md);
* ``eval``: the no-grad evaluation pass at ``eval_batch_size`` (a few live feature maps);
* ``data``: in-memory images the loaders keep on the device (uint8, ``limit_train`` / ``limit_test`` applied);
* ``context``: :data:`CUDA_CONTEXT_BYTES` per process on a CUDA device (CUDA context, cuBLAS / cuDNN workspaces;
  a stated allowance, not measured here), 0 on the CPU.

Only the support ops run, so the activations do not grow with the number of candidates (the dense DARTS
super-net's do).  Two-stage steps run the weight pass and the architecture pass one after the other, so the peak
is one pass's.  Methods whose config has no super-net (TE-NAS, random search) get ``None``: nothing is checked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import torch

from istanas.cell_space import cell_space
from istanas.config import ConfigError
from istanas.data import DEFAULT_IMAGE_SIZE, FIXED_CLASSES
from istanas.engine import resolve_device
from istanas.supernet import build_candidate

#: Step peak / saved activations per cell space: the backward's transient buffers (activation gradients) on top of
#: what autograd saves; the CPU profiler measured 1.13-1.14 (DARTS, 3 configs) and 1.01-1.46 (NB201, 2 configs).
ACTIVATION_FACTOR = {"darts": 1.2, "nb201": 1.5}
#: Per-process allowance on a CUDA device (context, cuBLAS / cuDNN workspaces); not calibrated on a GPU here.
CUDA_CONTEXT_BYTES = 512 * 2**20
#: Images per split of the built-in data sets (train, test), for the in-memory data on the device.
DATASET_SIZES = {"digits": (1797, 0), "mnist": (60000, 10000), "cifar10": (50000, 10000),
                 "cifar100": (50000, 10000)}
_IN_CHANNELS = {"digits": 1, "mnist": 1, "cifar10": 3, "cifar100": 3, "imagenet": 3}
_PROBE_BATCH = 2
GiB = float(2**30)


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of a search's estimated peak (bytes; see the module docstring)."""

    params: int
    param_bytes: int
    buffer_bytes: int
    activation_bytes_per_sample: int
    batch_size: int
    activation_bytes: int
    eval_bytes: int
    data_bytes: int
    batch_bytes: int
    context_bytes: int

    @property
    def total_bytes(self) -> int:
        return (self.context_bytes + 3 * self.param_bytes + self.buffer_bytes + self.data_bytes + self.batch_bytes
                + max(self.activation_bytes, self.eval_bytes))

    def describe(self) -> str:
        return (f"about {self.total_bytes / GiB:.2f} GiB: {self.params / 1e6:.2f} M parameters x 3 (weights, "
                f"gradients, momentum) = {3 * self.param_bytes / GiB:.2f} GiB, activations "
                f"{self.activation_bytes / GiB:.2f} GiB at batch {self.batch_size} "
                f"({self.activation_bytes_per_sample / 2**20:.2f} MiB a sample), in-memory data "
                f"{self.data_bytes / GiB:.2f} GiB, CUDA context {self.context_bytes / GiB:.2f} GiB")


def _has_supernet(cfg: Any) -> bool:
    return all(hasattr(cfg, k) for k in ("C", "layers", "steps", "recovery", "data"))


def _op_costs(space: Any) -> list[int]:
    """Saved-activation bytes of each candidate op of ``space`` on a small input (ranks the ops)."""
    costs = []
    for name in space.primitives:
        op = build_candidate(name, 4, 1, False, space=space.name)
        x = torch.randn(2, 4, 8, 8, requires_grad=True)
        costs.append(sum(_saved_storages(lambda: op(x), {p.data_ptr() for p in op.parameters()}).values()))
    return costs


def _saved_storages(fn: Any, exclude: set[int]) -> dict[int, int]:
    """{data pointer: bytes} of the distinct storages autograd saves for the backward while ``fn()`` runs
    (``exclude``: data pointers not to count, e.g. the parameters')."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout != torch.strided or t.is_nested:  # no plain storage (sparse, nested): its dense size, once
            seen[-id(t)] = t.numel() * t.element_size()
            return t
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in exclude:
            seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return seen


def heaviest_support(space: Any, s: int) -> torch.Tensor:
    """``[T, steps, s]`` flat candidate ids (edge * K + op): each node's ``s`` slots on its costliest ops (one op
    per edge, ``-1`` for the slots a small node cannot fill, where the space allows at most one op per edge)."""
    costs = _op_costs(space)
    K = len(space.primitives)
    order = sorted(range(K), key=lambda k: -costs[k])
    rows = []
    for edges in space.edges_per_node:
        if space.nb201:  # distinct edges: one (the costliest) op per edge
            row = [e * K + order[0] for e in range(min(s, edges))]
        else:
            row = [e * K + k for k in order for e in range(edges)][:s]
        rows.append(row + [-1] * (s - len(row)))
    return torch.tensor([rows] * len(space.cell_types), dtype=torch.int64)


@lru_cache(maxsize=64)
def _per_sample(space_name: str, steps: int, C: int, layers: int, s: int, num_classes: int, in_channels: int,
                image_size: int) -> tuple[int, int, int, int]:
    """(parameters, parameter bytes, buffer bytes, saved activation bytes per sample, largest activation bytes
    per sample) of the sparse super-net with the heaviest support."""

    class _Cfg:  # the fields sparse_supernet reads
        pass

    cfg = _Cfg()
    cfg.C, cfg.layers, cfg.steps, cfg.space = C, layers, steps, space_name
    space = cell_space(space_name, steps)
    net = space.sparse_supernet(cfg, num_classes, in_channels)
    net.train()
    support = heaviest_support(space, s)
    plan = net.plan(support)
    coef = torch.ones(plan.shape)
    params = sum(p.numel() for p in net.parameters())
    pbytes = sum(p.numel() * p.element_size() for p in net.parameters())
    bbytes = sum(b.numel() * b.element_size() for b in net.buffers())
    x = torch.randn(_PROBE_BATCH, in_channels, image_size, image_size)
    exclude = {p.data_ptr() for p in net.parameters()} | {b.data_ptr() for b in net.buffers()}
    sizes = _saved_storages(lambda: net(x, plan, coef), exclude)
    total = sum(sizes.values())
    largest = max(sizes.values()) if sizes else 0
    return params, pbytes, bbytes, math.ceil(total / _PROBE_BATCH), math.ceil(largest / _PROBE_BATCH)


def _space_buffer_bytes(cfg: Any, space: Any) -> int:
    """A, E, b, z of the compressed space (float32): T x steps x (m x n + n x n + m + n), n the largest node."""
    n = max(space.node_sizes())
    m = max(cfg.recovery.m) if isinstance(cfg.recovery.m, (list, tuple)) else int(cfg.recovery.m)
    return 4 * len(space.cell_types) * space.steps * (m * n + n * n + m + n)


def data_bytes_on_device(data: Any) -> int:
    """Bytes of the uint8 in-memory images the loaders put on the training device (0 when streamed)."""
    if not data.resolved_in_memory or data.dataset not in DATASET_SIZES:
        return 0
    n_train, n_test = DATASET_SIZES[data.dataset]
    if data.limit_train is not None:
        n_train = min(n_train, int(data.limit_train))
    if data.limit_test is not None and n_test:
        n_test = min(n_test, int(data.limit_test))
    side = data.resolved_image_size
    return (n_train + n_test) * _IN_CHANNELS[data.dataset] * side * side


def estimate_search_memory(cfg: Any, device_type: str = "cuda") -> Optional[MemoryEstimate]:
    """The estimated peak memory of the search ``cfg`` (a two-stage / one-stage / DARTS-like config with ``C``,
    ``layers``, ``steps``, ``recovery``, ``data``) on a ``device_type`` device; None for a config without a
    super-net.  Builds the super-net once per shape on the CPU (cached), reads no data."""
    if not _has_supernet(cfg):
        return None
    data = cfg.data
    space = cell_space(cfg)
    side = data.resolved_image_size if data.dataset in DEFAULT_IMAGE_SIZE else int(data.image_size or 32)
    classes = FIXED_CLASSES.get(data.dataset, 1000)
    chans = _IN_CHANNELS.get(data.dataset, 3)
    s = int(cfg.recovery.s)
    params, pbytes, bbytes, per_sample, largest = _per_sample(space.name, space.steps, int(cfg.C), int(cfg.layers),
                                                              s, classes, chans, side)
    B, Be = int(data.batch_size), int(data.eval_batch_size)
    act = int(ACTIVATION_FACTOR.get(space.name, 1.5) * B * per_sample)
    cuda = device_type == "cuda"
    return MemoryEstimate(
        params=params, param_bytes=pbytes, buffer_bytes=bbytes + _space_buffer_bytes(cfg, space),
        activation_bytes_per_sample=per_sample, batch_size=B, activation_bytes=act,
        eval_bytes=3 * Be * largest, data_bytes=data_bytes_on_device(data) if cuda else 0,
        batch_bytes=4 * max(B, Be) * chans * side * side, context_bytes=CUDA_CONTEXT_BYTES if cuda else 0)


def check_fits_share(cfg: Any, fraction: float, device_bytes: int, *, where: str = "resources_per_trial.gpu",
                     device_name: str = "the GPU") -> Optional[MemoryEstimate]:
    """Raise ``ConfigError`` when the search ``cfg`` would not fit ``fraction`` of a GPU with ``device_bytes`` of
    memory (``fraction`` 0 or >= 1: the whole GPU); returns the estimate (None: nothing to check)."""
    est = estimate_search_memory(cfg, "cuda")
    if est is None:
        return None
    share = min(1.0, fraction) if fraction > 0 else 1.0
    budget = share * device_bytes
    if est.total_bytes > budget:
        most = int(device_bytes // est.total_bytes)
        fix = (f"at most {most} such searches fit one GPU: set {where} >= {1.0 / most:.3g}" if most >= 1 else "it does not fit even a whole GPU")
        raise ConfigError(
            f"{where} = {fraction:g}: a trial's share of {device_name} ({device_bytes / GiB:.1f} GiB) is "
            f"{budget / GiB:.2f} GiB, but the search needs {est.describe()}; {fix}; or lower "
            f"search.data.batch_size / search.C / search.layers")
    return est


def device_memory(device: torch.device) -> Optional[tuple[int, str]]:
    """(total bytes, name) of a CUDA device, None for any other device."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device)
    return int(props.total_memory), str(props.name)


def check_trial_fits(cfg: Any, fraction: float, device: Optional[torch.device] = None) -> Optional[MemoryEstimate]:
    """In a trial, before its data is read: on a CUDA device, :func:`check_fits_share` against the device's
    memory; on the CPU nothing is checked (None)."""
    if device is None:
        device = resolve_device(getattr(cfg, "device", "cpu"))
    mem = device_memory(device)
    if mem is None:
        return None
    return check_fits_share(cfg, fraction, mem[0], device_name=mem[1])


__all__ = ["MemoryEstimate", "estimate_search_memory", "check_fits_share", "check_trial_fits", "device_memory",
           "heaviest_support", "data_bytes_on_device", "ACTIVATION_FACTOR", "CUDA_CONTEXT_BYTES"]
