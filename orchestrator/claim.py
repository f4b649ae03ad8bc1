"""One driver per sweep: an advisory lock on the sweep's local storage, and a named, empty Ray actor on a cluster.

:func:`lock_sweep` takes an exclusive ``flock`` on ``<storage>/.istanas-sweep-<name>.lock`` before Ray starts: a
second driver of the same sweep on the same storage (a second terminal, a ``--resume`` while the first still runs)
fails at once, and the kernel drops the lock with its process, so a crashed driver leaves none behind.  It is the
only guard of a sweep on an embedded local Ray, whose every driver starts a Ray of its own (an actor there would
guard nothing, and its process takes ~1 % of a core from the trials: an idle Ray worker wakes every 10 ms).
:func:`claim_sweep` (a sweep that joins a cluster) creates the actor ``istanas-sweep-<name>`` (namespace
``istanas``, no CPU) before the Tuner starts, so that a second driver of the same sweep fails at once with a clear message; the actor goes away with its
driver's job, or when the driver kills it at the end.  This module imports nothing heavy: the actor's process
loads only it (an actor that imported torch and the post-processing at the sweep's start took CPU from the
trials' own start-up; see benchmarks/README.md).
"""
from __future__ import annotations

import os
import time
from typing import Optional

try:
    import fcntl
except ImportError:  # no flock (Windows): a local sweep runs unguarded there
    fcntl = None

NAMESPACE = "istanas"
ACTOR_PREFIX = "istanas-sweep-"
LOCK_PREFIX = ".istanas-sweep-"


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


class SweepLock:
    """A held :func:`lock_sweep` lock: ``path``, and :meth:`release` (idempotent)."""

    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_path(storage_dir: str, sweep_name: str) -> str:
    return os.path.join(storage_dir, f"{LOCK_PREFIX}{sweep_name}.lock")


def lock_sweep(storage_dir: str, sweep_name: str) -> Optional[SweepLock]:
    """Lock sweep ``sweep_name`` under the local folder ``storage_dir`` (created if missing) for this process, or
    raise ``RuntimeError`` naming the process that holds it; None where the platform has no ``flock``.  The lock
    file (it holds the owner's pid) stays; only the kernel's lock on it counts."""
    if fcntl is None:
        return None
    os.makedirs(storage_dir, exist_ok=True)
    path = lock_path(storage_dir, sweep_name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RuntimeError(f"a sweep named {sweep_name!r} with storage {storage_dir} is already running (process "
                           f"{owner} holds {path}); wait for it or choose another name") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return SweepLock(path, fd)


__all__ = ["claim_sweep", "lock_sweep", "lock_path", "SweepLock", "actor_name", "SweepClaim", "NAMESPACE",
           "ACTOR_PREFIX", "LOCK_PREFIX"]
