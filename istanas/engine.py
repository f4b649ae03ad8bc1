"""The one training engine shared by retraining, two-stage search, one-stage search and the Ray Train worker.

A job is a :class:`Task` (model, optimisers and per-step logic); :func:`run` owns the epoch loop, resume, RNG
state, the report callback, the checkpoint hook and the progress bar.  Per-step metrics are accumulated on the
device (:class:`Meter`), so a step has no host-device synchronisation; the host reads them once per progress
refresh and once per epoch, which is also where a non-finite loss is detected.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Callable, Iterator, Optional, Protocol

import torch

from .checkpoint import rng_state, set_rng_state

Report = Callable[[dict], None]
CheckpointHook = Callable[[dict], None]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message says where."""


class Meter:
    """Running sums of loss and correct predictions kept on the device: ``update`` never synchronises.

    ``update(loss [], logits [N, C], target [N])`` adds ``loss * N`` and the top-1 hits.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self._sum = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: Optional[torch.Tensor] = None,
               target: Optional[torch.Tensor] = None, n: Optional[int] = None) -> None:
        n = int(n if n is not None else (target.shape[0] if target is not None else 1))
        correct = (logits.argmax(-1) == target).sum() if logits is not None and target is not None else 0
        self._sum += torch.stack([loss.detach().double() * n, torch.as_tensor(correct, dtype=torch.float64,
                                  device=self.device), torch.tensor(float(n), dtype=torch.float64,
                                                                    device=self.device)])

    def compute(self) -> dict[str, float]:
        """One host read: ``{"loss": mean loss, "acc": top-1 accuracy in [0, 1], "n": samples}``."""
        loss_sum, correct, n = self._sum.tolist()
        if n == 0:
            return {"loss": float("nan"), "acc": float("nan"), "n": 0}
        return {"loss": loss_sum / n, "acc": correct / n, "n": int(n)}


class Progress:
    """A thin tqdm wrapper that can be switched off; ``refresh`` shows the meter every ``every`` steps."""

    def __init__(self, total: int, desc: str = "", enabled: bool = True, every: int = 10):
        self.enabled = enabled
        self.every = max(1, every)
        self.step = 0
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)

    def update(self, meter: Optional[Meter] = None, **extra: float) -> None:
        self.step += 1
        if self._bar is None:
            return
        self._bar.update(1)
        if meter is not None and self.step % self.every == 0:
            m = meter.compute()
            self._bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['acc']:.3f}", **extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Task(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def train_epoch(self, epoch: int, progress: Progress) -> dict[str, float]: ...

    def evaluate(self, epoch: int) -> dict[str, float]: ...

    def end_epoch(self, epoch: int, metrics: dict) -> bool: ...

    def steps_per_epoch(self) -> int: ...


def check_finite(metrics: dict, where: str) -> None:
    """Raise :class:`NonFiniteLossError` if any ``*loss*`` entry of ``metrics`` is NaN or infinite."""
    for k, v in metrics.items():
        if "loss" in k and isinstance(v, float) and not math.isfinite(v):
            raise NonFiniteLossError(f"{k} became {v} in {where}; lower the learning rate or check the data")


def run(task: Task, *, epochs: int, report: Optional[Report] = None, checkpoint: Optional[CheckpointHook] = None,
        resume: Optional[dict] = None, progress: bool = True, desc: str = "") -> list[dict]:
    """Train ``task`` for ``epochs`` epochs (or until ``task.end_epoch`` returns True).

    After every epoch: ``checkpoint(state)`` with ``state = {"epoch", "task", "rng", "history", "done"}`` and then
    ``report(metrics)``.  ``resume`` is such a state: training continues at ``state["epoch"]`` with the same RNG
    state, so an interrupted-and-resumed run equals an uninterrupted one.  Returns the per-epoch metrics.
    """
    start, history = 0, []
    if resume is not None:
        task.load_state_dict(resume["task"])
        set_rng_state(resume["rng"])
        start = int(resume["epoch"])
        history = list(resume.get("history", []))
        if resume.get("done"):
            return history
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        bar = Progress(task.steps_per_epoch(), desc=f"{desc} epoch {epoch + 1}/{epochs}".strip(), enabled=progress)
        try:
            metrics = {"epoch": epoch + 1}
            metrics.update(task.train_epoch(epoch, bar))
        finally:
            bar.close()
        check_finite(metrics, f"epoch {epoch + 1}")
        metrics.update(task.evaluate(epoch))
        metrics["epoch_time_s"] = time.perf_counter() - t0
        done = bool(task.end_epoch(epoch, metrics)) or epoch + 1 >= epochs
        history.append(metrics)
        if checkpoint is not None:
            checkpoint({"epoch": epoch + 1, "task": task.state_dict(), "rng": rng_state(), "history": history,
                        "done": done})
        if report is not None:
            report(dict(metrics))
        if done:
            break
    return history


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    return dev


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device,
              channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    x = x.to(device, non_blocking=True)
    if channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def cycle(loader) -> Iterator:
    """Iterate a loader forever (a fresh epoch of it each time it runs out)."""
    while True:
        yield from loader


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - non-POSIX
        return float("nan")
