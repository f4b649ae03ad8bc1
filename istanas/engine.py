"""The one training engine: the epoch loop AND the step loop of retraining, two-stage search, DARTS, one-stage
search and the Ray Train worker.

A :class:`Task` gives per-step logic as :class:`Update` objects (``batch -> forward under bf16 autocast -> (loss,
logits) -> zero_grad -> backward -> clip -> optimiser steps``); :func:`run` does the rest: the learning rate per
epoch, device meters (no host sync per step; read once per epoch, where a non-finite loss raises), timing, peak
memory, resume with RNG state and ONE hook, ``on_epoch_end(metrics, state)``.  ``task.cfg.bf16`` /
``task.cfg.channels_last`` are engine settings (CUDA only; no-ops on the CPU).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence

import torch
from torch import nn

from .checkpoint import rng_state, set_rng_state

OnEpochEnd = Callable[[dict, dict], None]


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


@dataclass
class Update:
    """One optimiser update of a training step, run by the engine (in this order):

    ``batch`` (None: the step's training batch; a batch; or a function returning one, called when the update runs,
    e.g. ``lambda: next(valid)``) -> :func:`to_device` -> ``forward(x, y) -> (loss [], logits [N, C])`` under bf16
    autocast -> ``zero_grad`` of every optimiser -> ``loss.backward(inputs=inputs)`` (None: every leaf) ->
    ``clip_grad_norm_(clip, max_norm)`` (``max_norm > 0``) -> ``step()`` of every optimiser in order -> the
    meter ``meter`` (reported as ``{meter}_loss`` / ``{meter}_acc``).
    """

    forward: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    optimizers: Sequence[torch.optim.Optimizer]
    batch: Any = None
    inputs: Optional[Sequence[torch.Tensor]] = None
    clip: Sequence[torch.Tensor] = ()
    max_norm: float = 0.0
    meter: str = "train"


class Task(Protocol):
    """What :func:`run` needs of a job.  ``cfg`` carries ``bf16`` / ``channels_last``; ``model`` is put in train
    mode every epoch; ``optimizer`` (the weight optimiser) gets ``lr_at(epoch)``; ``loaders.train`` gives the
    training batches (``set_epoch`` is called on it when it is a shard of a distributed job)."""

    cfg: Any
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loaders: Any

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def steps_per_epoch(self) -> int: ...

    def lr_at(self, epoch: int) -> float: ...

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        """Per-epoch settings (drop-path, the validation-batch cycle, start-of-epoch snapshots); their metrics."""

    def step(self, batch: Any) -> Iterable[Update]:
        """The updates of one step (a list, or a generator: each update runs before the next is asked for; code
        between them runs outside autocast, e.g. a recovery)."""

    def finish_epoch(self, epoch: int) -> dict[str, float]:
        """After the epoch's last step (inside the timed part): e.g. the final recovery, stop rules; metrics."""

    def evaluate(self, epoch: int) -> dict[str, float]: ...

    def end_epoch(self, epoch: int, metrics: dict) -> bool:
        """True stops the run after this epoch."""


def check_finite(metrics: dict, where: str) -> None:
    """Raise :class:`NonFiniteLossError` if any ``*loss*`` entry of ``metrics`` is NaN or infinite."""
    for k, v in metrics.items():
        if "loss" in k and isinstance(v, float) and not math.isfinite(v):
            raise NonFiniteLossError(f"{k} became {v} in {where}; lower the learning rate or check the data")


def train_epoch(task: Task, epoch: int, progress: Progress) -> dict[str, float]:
    """One epoch of the step loop (see :class:`Update`); returns ``lr``, the task's epoch metrics, every meter's
    ``*_loss`` / ``*_acc``, ``train_time_s``, ``step_time_s`` and ``peak_mem_mb``."""
    dev = task.device
    bf16, channels_last = bool(getattr(task.cfg, "bf16", False)), bool(getattr(task.cfg, "channels_last", False))
    lr = float(task.lr_at(epoch))
    for g in task.optimizer.param_groups:
        g["lr"] = lr
    train = task.loaders.train
    if hasattr(train, "set_epoch") and getattr(train, "world_size", 1) > 1:
        train.set_epoch(epoch)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    out: dict[str, Any] = {"lr": lr, **task.begin_epoch(epoch)}
    task.model.train()
    meters: dict[str, Meter] = {}
    steps = 0
    t0 = time.perf_counter()
    for batch in train:
        for u in task.step(batch):
            b = batch if u.batch is None else (u.batch() if callable(u.batch) else u.batch)
            x, y = to_device(b, dev, channels_last)
            with autocast(dev, bf16):
                loss, logits = u.forward(x, y)
            for opt in u.optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward(inputs=list(u.inputs) if u.inputs is not None else None)
            if u.max_norm > 0:
                nn.utils.clip_grad_norm_(u.clip, u.max_norm)
            for opt in u.optimizers:
                opt.step()
            if u.meter not in meters:
                meters[u.meter] = Meter(dev)
            meters[u.meter].update(loss, logits, y)
        steps += 1
        progress.update(meters.get("train"))
    out.update(task.finish_epoch(epoch))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    train_time = time.perf_counter() - t0
    for name, m in meters.items():
        c = m.compute()
        out[f"{name}_loss"], out[f"{name}_acc"] = c["loss"], c["acc"]
    out.update({"train_time_s": train_time, "step_time_s": train_time / max(1, steps),
                "peak_mem_mb": peak_memory_mb(dev)})
    return out


def run(task: Task, *, epochs: int, on_epoch_end: Optional[OnEpochEnd] = None, resume: Optional[dict] = None,
        progress: bool = True, desc: str = "") -> list[dict]:
    """Train ``task`` for ``epochs`` epochs (or until ``task.end_epoch`` returns True); returns the per-epoch metrics.

    After every epoch: ``on_epoch_end(metrics, state)`` with ``state = {"epoch", "task", "rng", "history",
    "done"}``.  ``resume`` is such a state: training continues at ``state["epoch"]`` with the same RNG state, so an
    interrupted-and-resumed run equals an uninterrupted one.
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
            metrics = {"epoch": epoch + 1, **train_epoch(task, epoch, bar)}
        finally:
            bar.close()
        check_finite(metrics, f"epoch {epoch + 1}")
        metrics.update(task.evaluate(epoch))
        metrics["epoch_time_s"] = time.perf_counter() - t0
        done = bool(task.end_epoch(epoch, metrics)) or epoch + 1 >= epochs
        history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(dict(metrics), {"epoch": epoch + 1, "task": task.state_dict(), "rng": rng_state(),
                                         "history": history, "done": done})
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


def place(module: nn.Module, device: torch.device, channels_last: bool = False) -> nn.Module:
    """``module`` on ``device``, in the channels-last memory format when asked for on CUDA."""
    if channels_last and device.type == "cuda":
        return module.to(device, memory_format=torch.channels_last)
    return module.to(device)


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device,
              channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` on ``device`` (non-blocking); ``x`` channels-last when asked for on CUDA."""
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
    """Peak allocated CUDA memory since the last reset, or the process's peak RSS on the CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - non-POSIX
        return float("nan")
