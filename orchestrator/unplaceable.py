"""Trials the running cluster can never place: a deadline instead of waiting forever.

What the config and the embedded local Ray decide is rejected before Ray starts (:func:`orchestrator.cluster.
preflight`).  What only a running cluster knows (an autoscaler may add nodes; a joined Ray may lack a resource)
is watched here: :class:`UnplaceableWatch` (a Tune ``Callback``, ``on_step_end``) looks at the PENDING trials and
notes, per trial, since when none of the alive nodes' *total* resources could hold one of its bundles (a trial
that only waits for others to finish is not unplaceable).  Once one stays so for ``unplaceable_timeout_s``, the
watch records a message naming the trial and its request, and :class:`UnplaceableStopper` (``RunConfig.stop``)
ends the experiment through Tune's ``stop_all``: the trials so far keep their results, the sweep driver writes
the partial table and raises :class:`UnplaceableTrialError`.  Both hold only the sweep name and the timeout (Tune
pickles them with the experiment); the message lives in this driver, :func:`unplaceable_message`.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from istanas.config import ConfigError
from ray.tune import Callback
from ray.tune.stopper import Stopper

#: sweep name -> the message of the trial that stayed unplaceable (this driver)
_FOUND: dict[str, str] = {}


class UnplaceableTrialError(ConfigError):
    """A trial asked for resources no node of the running cluster offered within ``unplaceable_timeout_s``."""


def unplaceable_message(name: str) -> Optional[str]:
    """The message :class:`UnplaceableWatch` recorded for sweep ``name`` in this driver, or None."""
    return _FOUND.get(name)


def reset(name: str) -> None:
    """Forget sweep ``name``'s message (a new run of it starts)."""
    _FOUND.pop(name, None)


def node_totals() -> list[dict[str, float]]:
    """Total resources of every alive node of the connected Ray."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def fits(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> bool:
    """Whether every bundle fits, whole, in some node's totals (a resource a node lacks counts 0)."""
    return all(any(all(node.get(k, 0.0) >= v for k, v in b.items() if v > 0) for node in nodes) for b in bundles)


def _request_text(bundles: list[dict[str, float]]) -> str:
    return " + ".join("{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(b.items()) if v > 0) + "}" for b in bundles)


def _nodes_text(nodes: list[dict[str, float]]) -> str:
    keep = ("CPU", "GPU")
    return "; ".join(", ".join(f"{k} {n.get(k, 0):g}" for k in keep) + "".join(
        f", {k} {v:g}" for k, v in sorted(n.items()) if k not in keep and not k.startswith(("node:", "memory",
                                                                                              "object_store")))
        for n in nodes) or "none"


class UnplaceableWatch(Callback):
    """Tune callback: ends the sweep (through :class:`UnplaceableStopper`) when a PENDING trial's request fits no
    alive node for ``timeout_s`` seconds.  ``clock`` (tests) and ``nodes`` (tests: a fixed node list) default to
    ``time.monotonic`` and :func:`node_totals`; the nodes are asked at most once a second."""

    def __init__(self, name: str, timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 nodes: Optional[Callable[[], list[dict[str, float]]]] = None):
        self.name, self.timeout_s = name, float(timeout_s)
        self._clock, self._nodes = clock, nodes or node_totals
        self._since: dict[str, float] = {}
        self._checked = float("-inf")

    def __getstate__(self) -> dict:
        return {"name": self.name, "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], state["timeout_s"])

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = self._clock()
        if self.name in _FOUND or now - self._checked < min(1.0, self.timeout_s / 4):
            return
        self._checked = now
        pending = [t for t in trials if t.status == "PENDING"]
        if not pending:
            self._since.clear()
            return
        nodes = self._nodes()
        for t in pending:
            bundles = [dict(b) for b in t.placement_group_factory.bundles]
            if fits(bundles, nodes):
                self._since.pop(t.trial_id, None)
                continue
            first = self._since.setdefault(t.trial_id, now)
            if now - first >= self.timeout_s:
                _FOUND[self.name] = (
                    f"trial {t.trial_id} asks for {_request_text(bundles)}, which no node of the running cluster "
                    f"has (nodes: {_nodes_text(nodes)}); it stayed unplaceable for {now - first:.0f} s "
                    f"(unplaceable_timeout_s={self.timeout_s:g}). Lower resources_per_trial, or add such nodes")
                return


class UnplaceableStopper(Stopper):
    """``RunConfig.stop``: stops the whole experiment once :class:`UnplaceableWatch` recorded an unplaceable
    trial of sweep ``name``; never stops a single trial."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.name in _FOUND


__all__ = ["UnplaceableWatch", "UnplaceableStopper", "UnplaceableTrialError", "unplaceable_message", "reset",
           "fits", "node_totals"]
