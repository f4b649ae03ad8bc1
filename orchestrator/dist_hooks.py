"""The one-stage search's distributed hooks on ``torch.distributed`` (:class:`TorchDistHooks`, the engine's
:class:`istanas.ista.onestage.DistHooks` for a Ray Train worker) and the rank share of the test set
(:func:`shard_eval_loader`).

Support tensors are CPU ``LongTensor [T, steps, s]`` (cell types, intermediate nodes, support size); stop flags CPU
``BoolTensor [T, steps]``.  They travel over a gloo group, so host tensors never touch the GPU under NCCL.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

from istanas.data import StreamLoader, TensorLoader
from istanas.ista.onestage import DistHooks


class TorchDistHooks:
    """The engine's distributed hooks on ``torch.distributed`` (see :class:`istanas.ista.onestage.DistHooks`).

    ``wrap``: ``ray.train.torch.prepare_model`` (DDP with ``find_unused_parameters=True``; identity with one rank).
    ``broadcast_support``: rank 0's host support to every rank, over a gloo group (the main group when the backend
    is gloo, a gloo side group under NCCL), so host tensors never touch the GPU; counts local disagreements.  Rank
    0's recovered code z (the bound space's ``z``, see :meth:`bind`; ``wrap`` binds ``module.space``) travels with
    it: a CPU z in the same gloo message (its float64 bits packed after the support), a CUDA z by a device
    broadcast on the main (NCCL) group, no host sync.  So every rank continues (warm start, stop rule, Eq. 11)
    from rank 0's z explicitly, not only because DDP happens to broadcast buffers.
    ``all_agree``: rank 0's flags to every rank (the epsilon stop decided once).  ``record``: keep the support of
    every training step (``support_log``) and the wrapped net (``net``), for ``record_dir``.  (bf16 and
    channels_last are the engine's settings, ``OneStageConfig.bf16`` / ``.channels_last``.)
    """

    def __init__(self, device: torch.device, rank: int, world_size: int, record: bool = False):
        self.device, self.rank, self.world_size = device, int(rank), int(world_size)
        self.is_main = self.rank == 0
        self.group = None
        self.support_broadcasts = 0
        self.support_mismatches = 0
        self.z_mismatches = 0                     # CPU z only (counting a CUDA z would need a host sync)
        self.space: Optional[torch.nn.Module] = None
        self.record = bool(record)
        self.support_log: list[torch.Tensor] = []
        self.net: Optional[torch.nn.Module] = None
        if self.world_size > 1:
            if not dist.is_initialized():
                raise RuntimeError("TorchDistHooks: torch.distributed is not initialised (run under Ray Train)")
            if dist.get_backend() != "gloo":
                self.group = dist.new_group(backend="gloo")    # collective: every rank creates it

    def _log_support(self, module: torch.nn.Module, args: tuple) -> None:
        if module.training:
            self.support_log.append(module.support_host)

    def bind(self, space: Optional[torch.nn.Module]) -> None:
        """The compressed space whose ``z`` :meth:`broadcast_support` sends along (rank 0's) / overwrites."""
        self.space = space

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        self.bind(getattr(module, "space", self.space))
        if self.record and self.net is not module:
            self.net = module
            module.register_forward_pre_hook(self._log_support)
        if self.world_size == 1:
            return module
        from ray.train.torch import prepare_model

        return prepare_model(module, move_to_device=self.device,
                             parallel_strategy_kwargs={"find_unused_parameters": True})

    def broadcast_support(self, support_host: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return support_host
        local = support_host.detach().to("cpu", torch.int64).contiguous()
        z = None if self.space is None else self.space.z
        if z is not None and z.device.type == "cpu":
            zl = z.detach().to(torch.float64).contiguous()
            msg = torch.cat([local.reshape(-1), zl.reshape(-1).view(torch.int64)])   # one gloo message
            dist.broadcast(msg, src=0, group=self.group)
            out = msg[:local.numel()].view_as(local).clone()
            z0 = msg[local.numel():].view(torch.float64).view_as(zl)
            if not torch.equal(z0, zl):
                self.z_mismatches += 1
                z.copy_(z0)
        else:
            out = local.clone()
            dist.broadcast(out, src=0, group=self.group)
            if z is not None:                      # CUDA z: on the device, over the main group, no host sync
                dist.broadcast(z, src=0)
        self.support_broadcasts += 1
        if not torch.equal(out, local):
            self.support_mismatches += 1
        return out

    def all_agree(self, flags: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return flags
        t = flags.detach().to("cpu", torch.uint8).contiguous().clone()
        dist.broadcast(t, src=0, group=self.group)
        return t.bool()

    def all_reduce_mean(self, values: dict[str, float], n: int) -> dict[str, float]:
        """Means over all ranks of per-rank means ``values`` over ``n`` samples each (one gloo all-reduce)."""
        if self.world_size == 1:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) * n if n > 0 else 0.0 for k in keys] + [float(n)], dtype=torch.float64)
        dist.all_reduce(t, group=self.group)
        total = float(t[-1])
        return {k: float(t[i]) / total if total > 0 else float("nan") for i, k in enumerate(keys)}

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.group)

    def as_engine_hooks(self):
        """The :class:`istanas.ista.onestage.DistHooks` of these methods."""
        return DistHooks(wrap=self.wrap, broadcast_support=self.broadcast_support,
                                     all_agree=self.all_agree, is_main=self.is_main)


def shard_eval_loader(loader: Any, rank: int, world_size: int) -> Any:
    """Rank ``rank``'s share of an unshuffled evaluation loader (``StreamLoader`` via ``DistributedSampler``,
    ``TensorLoader`` by index stride; each rank ``floor(N / world_size)`` images); other loaders are returned as
    they are (every rank then evaluates all of it).  (``ray.train.torch.prepare_data_loader`` would pad the test
    set with repeated images to an equal share, and the in-memory loader is no torch ``DataLoader``.)"""
    if world_size == 1:
        return loader
    if isinstance(loader, StreamLoader) and loader.world_size == 1:
        dl = loader.loader
        return StreamLoader(loader.dataset, batch_size=dl.batch_size, shuffle=False, num_workers=dl.num_workers,
                            drop_last=False, rank=rank, world_size=world_size)
    if isinstance(loader, TensorLoader) and loader.world_size == 1 and not loader.shuffle \
            and loader.augment is None:
        return TensorLoader(loader.x, loader.y, batch_size=loader.batch_size, mean=loader.mean.flatten().tolist(),
                            std=loader.std.flatten().tolist(), shuffle=False, augment=None, drop_last=False,
                            rank=rank, world_size=world_size, seed=loader.seed)
    return loader


__all__ = ["TorchDistHooks", "shard_eval_loader"]
