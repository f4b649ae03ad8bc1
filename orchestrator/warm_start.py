"""The first wave's gate: every trial slot's worker starts before any trial runs.

With ``reuse_actors`` Tune hands a finished trial's actor to a trial still waiting for its own actor, and removes
the actor being started for it (``TuneController._maybe_reuse_cached_actor``).  Where a worker's start (importing
Tune and torch: ~4.5 CPU-s) outlasts a trial, the first actors to start then run every trial and the other slots
stay empty for the whole sweep: 7 of 16 slots on 8 simulated nodes with 2-s trials (benchmarks/README.md).

:class:`WarmGate` is a named async actor (no CPU) that holds each worker's first trial until ``expected`` workers
(the trials the cluster holds at once, at most ``num_samples``) have arrived, or ``timeout_s`` has passed (a node
that never comes, an autoscaler's node still booting).  Once open it lets every later worker (a restarted
trial, a node that joined) through at once; it lives until the sweep ends (killed as soon as it opened, the
replies to the workers it had held could be lost in flight).  This module imports nothing heavy.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from .claim import NAMESPACE

PREFIX = "istanas-warm-"
MIN_SLOTS = 2


def gate_name(sweep_name: str) -> str:
    return PREFIX + sweep_name


class WarmGate:
    """Opens when ``expected`` callers of :meth:`arrive` are waiting, or ``timeout_s`` after it was created."""

    def __init__(self, expected: int, timeout_s: float):
        self.expected = int(expected)
        self.deadline = time.monotonic() + float(timeout_s)
        self.count = 0
        self.opened = asyncio.Event()

    async def arrive(self) -> int:
        """Count this worker in and wait for the gate to open; returns the workers that arrived before it opened
        (or by now)."""
        self.count += 1
        if self.count >= self.expected:
            self.opened.set()
        await self.wait()
        return self.count

    async def arrived(self) -> int:
        """The workers counted in so far."""
        return self.count

    async def wait(self) -> int:
        """Wait for the gate to open (the driver's call); returns the workers that arrived."""
        left = self.deadline - time.monotonic()
        if left > 0 and not self.opened.is_set():
            try:
                await asyncio.wait_for(self.opened.wait(), timeout=left)
            except asyncio.TimeoutError:
                pass
        self.opened.set()
        return self.count


def open_gate(sweep_name: str, expected: int, timeout_s: float) -> Optional[Any]:
    """Create the gate of ``sweep_name`` (Ray must be up; the driver kills it with :func:`close_gate` when the
    sweep ends); None when ``timeout_s`` <= 0 or ``expected`` <= :data:`MIN_SLOTS` (2 workers start side by side, and the
    gate's own worker would cost the sweep more than it saves)."""
    import ray

    if expected <= MIN_SLOTS or timeout_s <= 0:
        return None
    name = gate_name(sweep_name)
    try:  # a gate left by a driver of this name that died within the last moments
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    except ValueError:
        pass
    return ray.remote(WarmGate).options(name=name, namespace=NAMESPACE, num_cpus=0, max_restarts=0,
                                        max_concurrency=max(1000, 4 * expected)).remote(expected, timeout_s)


def close_gate(gate: Optional[Any]) -> None:
    """Kill the gate if it is still there (the driver's ``finally``)."""
    if gate is None:
        return
    import ray

    try:
        ray.kill(gate)
    except Exception:
        pass


_ARRIVED = False


def pass_gate(sweep_name: str) -> Optional[int]:
    """In a trial worker: wait at the gate of ``sweep_name`` the first time this process runs a trial; the workers
    counted in when it opened, or None when no gate was there (or this process has passed it already)."""
    global _ARRIVED
    if _ARRIVED:
        return None
    _ARRIVED = True
    import ray

    if not ray.is_initialized():
        return None
    try:
        gate = ray.get_actor(gate_name(sweep_name), namespace=NAMESPACE)
        return int(ray.get(gate.arrive.remote()))
    except Exception:  # no gate (opened and closed already, or never made): run at once
        return None


__all__ = ["WarmGate", "open_gate", "close_gate", "pass_gate", "gate_name"]
