"""One driver per sweep name on a cluster: a named, empty Ray actor held for the whole sweep.

:func:`claim_sweep` creates the actor ``istanas-sweep-<name>`` (namespace ``istanas``, no CPU) before the Tuner
starts, so that a second driver of the same sweep fails at once with a clear message; the actor goes away with its
driver's job, or when the driver kills it at the end.  This module imports nothing heavy: the actor's process
loads only it (an actor that imported torch and the post-processing at the sweep's start took CPU from the
trials' own start-up; see benchmarks/README.md).
"""
from __future__ import annotations

import time

NAMESPACE = "istanas"
ACTOR_PREFIX = "istanas-sweep-"


def actor_name(sweep_name: str) -> str:
    return ACTOR_PREFIX + sweep_name


class SweepClaim:
    """The claim actor: holds the name, does nothing."""

    def __init__(self, sweep_name: str):
        self.sweep_name = sweep_name

    def sweep(self) -> str:
        return self.sweep_name


def _taken(sweep_name: str) -> RuntimeError:
    name = actor_name(sweep_name)
    return RuntimeError(f"a sweep named {sweep_name!r} is already running on this cluster (actor {name!r} in "
                        f"namespace {NAMESPACE!r}); wait for it or choose another name")


def claim_sweep(sweep_name: str, wait_s: float = 10.0):
    """The claim actor of ``sweep_name`` (a handle; kill it to release the name).  A live claim of the same name
    (another driver running this sweep) is a ``RuntimeError``; the claim of a driver that has just died is waited
    for (it goes away with its job) for up to ``wait_s`` seconds."""
    import ray

    name = actor_name(sweep_name)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            break
        if time.monotonic() >= deadline:
            raise _taken(sweep_name)
        time.sleep(0.5)
    try:
        return ray.remote(SweepClaim).options(name=name, namespace=NAMESPACE, num_cpus=0, max_restarts=0) \
            .remote(sweep_name)
    except ValueError as e:  # another driver took the name between the look-up and the creation
        raise _taken(sweep_name) from e


__all__ = ["claim_sweep", "actor_name", "SweepClaim", "NAMESPACE", "ACTOR_PREFIX"]
