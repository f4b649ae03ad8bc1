"""Retraining a searched (or published) genotype from scratch: the evaluation stage of ISTA-NAS / DARTS.

:class:`RetrainTask` is an :mod:`istanas.engine` task: SGD with momentum, a per-epoch learning-rate schedule
(cosine to ``lr_min`` as in DARTS / ISTA-NAS CIFAR-10; the PC-DARTS "linear" decay for ImageNet; optional linear
warm-up), drop-path ramped linearly ``drop_path * epoch / epochs``, the auxiliary head's loss weighted by
``auxiliary_weight``, gradient-norm clipping, bf16 autocast and channels-last on CUDA, and label smoothing.
:func:`retrain` is the plain function the CLI (``launch/retrain.py``) and the orchestrator's retraining actor
call; it returns the result record (final and best test accuracy, parameters without the auxiliary head, FLOPs,
wall time, genotype JSON and digest).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from spaces.networks import build_network
from spaces.registry import load_genotype
from .checkpoint import seed_everything
from .config import ConfigError, check, preset, preset_data, to_dict
from .data import DataConfig, Loaders
from .engine import OnEpochEnd, Update, place, run
from .training import LR_SCHEDULES, evaluate, model_profile, scheduled_lr, task_data


@dataclass
class RetrainConfig:
    """Retraining hyper-parameters; the bare defaults are the CIFAR-10 evaluation of DARTS / ISTA-NAS
    (600 epochs, batch 96, SGD 0.025 cosine to 0, momentum 0.9, wd 3e-4, auxiliary 0.4, drop-path 0.2, clip 5,
    36 channels, 20 cells).  Use :meth:`preset` for whole setups ("cifar10", "imagenet", "quick")."""

    genotype: str = "DARTS_V2"           # registry name, a genotype .json file, or JSON text
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 600
    lr: float = 0.025
    lr_min: float = 0.0
    lr_schedule: str = "cosine"          # cosine | linear (PC-DARTS ImageNet decay) | constant
    warmup_epochs: int = 0               # linear warm-up lr * (e + 1) / warmup_epochs
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2               # final drop-path probability, ramped linearly from 0
    grad_clip: float = 5.0               # max gradient norm; 0 = off
    C: int = 36                          # initial channels
    layers: int = 20                     # cells
    bn_after_param_free: bool = False    # ISTA-NAS one-stage networks: BN after pooling / skip ops
    label_smoothing: float = 0.0
    eval_every: int = 1                  # evaluate on the test set every N epochs (and after the last)
    device: str = "auto"
    bf16: bool = True                    # bf16 autocast (CUDA only)
    channels_last: bool = True           # channels-last memory format (CUDA only)
    seed: int = 0
    out: str = "runs/retrain"

    def validate(self, *, genotype: bool = True) -> None:
        """Check every value (and, with ``genotype``, that the genotype loads) before any data is read;
        ``genotype=False`` (the sweep, before its searches have found one) skips the genotype look-up.  The
        device is probed by ``istanas.search.check_runtime``, not here."""
        check(isinstance(self.genotype, str) and self.genotype.strip() != "",
              "genotype: give a registry name (e.g. DARTS_V2), a genotype .json file or JSON text")
        if not isinstance(self.data, DataConfig):
            raise ConfigError("data: expected a DataConfig mapping")
        self.data.validate()
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}")
        check(0 <= self.lr_min <= self.lr, f"lr_min must be in [0, lr={self.lr}], got {self.lr_min}")
        check(self.lr_schedule in LR_SCHEDULES,
              f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        check(0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
              f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.auxiliary_weight >= 0, f"auxiliary_weight must be >= 0, got {self.auxiliary_weight}")
        check(0 <= self.drop_path < 1, f"drop_path must be in [0, 1), got {self.drop_path}")
        check(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        check(self.C >= 1, f"C (initial channels) must be >= 1, got {self.C}")
        check(self.layers >= 3, f"layers must be >= 3 (two reduction cells at layers/3 and 2*layers/3), "
                                f"got {self.layers}")
        check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
              f"device must be auto, cpu or cuda, got {self.device!r}")
        check(self.data.cutout <= self.data.resolved_image_size,
              f"data.cutout={self.data.cutout} is larger than the image ({self.data.resolved_image_size} px)")
        if not genotype:
            return
        try:
            load_genotype_str(self.genotype)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise ConfigError(f"genotype: {e}") from None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "RetrainConfig":
        """A whole setup: ``"cifar10"`` (the papers' CIFAR-10 evaluation), ``"imagenet"`` (250 epochs, lr 0.1
        linear decay, label smoothing 0.1, 48 channels, 14 cells, wd 3e-5), ``"quick"`` (digits, a tiny net, a few
        epochs: a CPU smoke run).  ``overrides`` are top-level fields (``data`` may be a partial mapping)."""
        return preset(cls, name, **overrides)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}


RetrainConfig.PRESETS = {
    "cifar10": {
        "data": {"dataset": "cifar10", "batch_size": 96, "eval_batch_size": 256, "cutout": 16},
        "epochs": 600, "lr": 0.025, "lr_min": 0.0, "lr_schedule": "cosine", "momentum": 0.9,
        "weight_decay": 3e-4, "auxiliary": True, "auxiliary_weight": 0.4, "drop_path": 0.2, "grad_clip": 5.0,
        "C": 36, "layers": 20, "label_smoothing": 0.0,
    },
    "imagenet": {
        "data": {"dataset": "imagenet", "batch_size": 128, "eval_batch_size": 256, "cutout": 0, "num_workers": 8,
                 "image_size": 224},
        "epochs": 250, "lr": 0.1, "lr_min": 0.0, "lr_schedule": "linear", "warmup_epochs": 0, "momentum": 0.9,
        "weight_decay": 3e-5, "auxiliary": True, "auxiliary_weight": 0.4, "drop_path": 0.0, "grad_clip": 5.0,
        "C": 48, "layers": 14, "label_smoothing": 0.1,
    },
    "quick": {
        "data": {"dataset": "digits", "batch_size": 32, "eval_batch_size": 256, "cutout": 0},
        "epochs": 5, "lr": 0.1, "lr_min": 0.0, "lr_schedule": "cosine", "momentum": 0.9, "weight_decay": 3e-4,
        "auxiliary": False, "auxiliary_weight": 0.4, "drop_path": 0.0, "grad_clip": 5.0, "C": 8, "layers": 5,
        "label_smoothing": 0.0,
    },
}


#: The presets by name (the same dict as ``RetrainConfig.PRESETS``).
RETRAIN_PRESETS: dict[str, dict[str, Any]] = RetrainConfig.PRESETS


def preset_dict(name: str) -> dict[str, Any]:
    """A deep copy of a preset's values, with the remaining fields at their defaults (:func:`config.preset_data`)."""
    return preset_data(RetrainConfig, name)


def preset_for_dataset(dataset: str) -> str:
    """The preset a dataset implies when none is named: CIFAR -> cifar10, ImageNet -> imagenet, else quick."""
    return {"cifar10": "cifar10", "cifar100": "cifar10", "imagenet": "imagenet"}.get(dataset, "quick")


# ------------------------------------------------------------------------------------------------ learning rate
def lr_at(cfg: RetrainConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``, set at its start: ``cfg.lr_schedule`` with ``cfg.warmup_epochs``
    (:func:`istanas.training.scheduled_lr`)."""
    return scheduled_lr(cfg.lr_schedule, cfg.lr, cfg.lr_min, epoch, cfg.epochs, cfg.warmup_epochs)


# ------------------------------------------------------------------------------------------------ genotype/model
def load_genotype_str(text: str):
    """:func:`spaces.registry.load_genotype` (a registry name, a .json file or JSON text)."""
    return load_genotype(text)


def build_model(cfg: RetrainConfig, genotype, num_classes: int, image_size: int) -> nn.Module:
    """The evaluation network of ``genotype`` (:func:`spaces.networks.build_network`; ImageNet networks are chosen
    by ``cfg.data.dataset``; ``image_size`` is unused: the networks pool globally)."""
    return build_network(genotype, dataset=cfg.data.dataset, C=cfg.C, layers=cfg.layers, num_classes=num_classes,
                         auxiliary=cfg.auxiliary, bn_after_param_free=cfg.bn_after_param_free)


def _split_output(out: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


class RetrainTask:
    """Retraining as an :class:`istanas.engine.Task`.

    A step (one engine update): ``x [B, 3, H, W] -> logits [B, K]`` (and ``aux [B, K]`` in training mode when the
    network has an auxiliary head), loss ``CE(logits) + auxiliary_weight * CE(aux)``, backward, clip, SGD step.
    """

    def __init__(self, cfg: RetrainConfig, loaders: Optional[Loaders] = None,
                 device: Optional[torch.device] = None, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.genotype = load_genotype_str(cfg.genotype)
        self.device, self.loaders = task_data(cfg, "train", loaders, device, rank=rank, world_size=world_size)
        self.model = place(build_model(cfg, self.genotype, self.loaders.num_classes, self.loaders.image_size),
                           self.device, cfg.channels_last)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        self.best_acc = -1.0
        self.best_epoch = 0
        self.last_acc = float("nan")

    # ----- engine protocol
    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "best_acc": float(self.best_acc), "best_epoch": int(self.best_epoch),
                "last_acc": float(self.last_acc)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best_acc = float(state.get("best_acc", -1.0))
        self.best_epoch = int(state.get("best_epoch", 0))
        self.last_acc = float(state.get("last_acc", float("nan")))

    def lr_at(self, epoch: int) -> float:
        return lr_at(self.cfg, epoch)

    def begin_epoch(self, epoch: int) -> dict[str, float]:
        # drop-path ramp 0 -> drop_path over the run (DARTS: drop_path_prob * epoch / epochs)
        self.model.drop_path_prob = self.cfg.drop_path * epoch / self.cfg.epochs
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        return {"drop_path": float(self.model.drop_path_prob)}

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        logits, aux = _split_output(self.model(x))
        loss = self.criterion(logits.float(), y)
        if aux is not None and cfg.auxiliary and cfg.auxiliary_weight > 0:
            loss = loss + cfg.auxiliary_weight * self.criterion(aux.float(), y)
        return loss, logits

    def step(self, batch: Any) -> list[Update]:
        return [Update(self._loss, [self.optimizer], clip=self._params, max_norm=self.cfg.grad_clip)]

    def finish_epoch(self, epoch: int) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        if (epoch + 1) % self.cfg.eval_every != 0 and epoch + 1 != self.cfg.epochs:
            return {}
        m = evaluate(self.model, self.loaders.valid, self.device, self.criterion, bf16=self.cfg.bf16,
                     channels_last=self.cfg.channels_last)
        return {"test_loss": m["loss"], "test_acc": m["acc"]}

    def end_epoch(self, epoch: int, metrics: dict) -> bool:
        acc = metrics.get("test_acc")
        if acc is not None and math.isfinite(acc):
            self.last_acc = float(acc)
            if acc > self.best_acc:
                self.best_acc, self.best_epoch = float(acc), epoch + 1
        return False


# ---------------------------------------------------------------------------------------------------- entry point
def retrain(cfg: RetrainConfig, *, on_epoch_end: Optional[OnEpochEnd] = None, resume: Optional[dict] = None,
            progress: bool = True, loaders: Optional[Loaders] = None, task_out: Optional[list] = None) -> dict:
    """Retrain ``cfg.genotype`` and return the result record.

    ``on_epoch_end(metrics, state)`` / ``resume`` / ``progress`` go to :func:`istanas.engine.run` (``resume`` is
    such a state).  ``loaders`` overrides the data (e.g. Ray Train shards).  If ``task_out`` is a list the
    :class:`RetrainTask` is appended to it (to reach the trained model).  The record: ``test_acc`` (after the
    last epoch), ``best_test_acc`` / ``best_epoch``, ``params_m`` (no auxiliary head), ``flops_m``,
    ``wall_time_s`` (training time over all sessions), ``epochs`` (completed), ``genotype`` (JSON form),
    ``genotype_digest``, ``dataset``, ``device``, ``config`` and ``history`` (per-epoch metrics).
    """
    cfg.validate()
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    task = RetrainTask(cfg, loaders=loaders)
    if task_out is not None:
        task_out.append(task)
    profile = model_profile(task.model, task.loaders.image_size, task.loaders.in_channels)
    history = run(task, epochs=cfg.epochs, on_epoch_end=on_epoch_end, resume=resume, progress=progress,
                  desc="retrain")
    if not math.isfinite(task.last_acc):  # resumed from a finished run, or no evaluation happened
        m = task.evaluate(cfg.epochs - 1)
        task.end_epoch(cfg.epochs - 1, m)
    g = task.genotype
    return {
        "test_acc": task.last_acc,
        "best_test_acc": task.best_acc,
        "best_epoch": task.best_epoch,
        **profile,
        "wall_time_s": float(sum(h.get("epoch_time_s", 0.0) for h in history)),
        "session_time_s": time.perf_counter() - t0,
        "epochs": len(history),
        "genotype": g.to_dict(),
        "genotype_digest": g.digest(),
        "dataset": cfg.data.dataset,
        "device": str(task.device),
        "config": to_dict(cfg),
        "history": history,
    }


__all__ = ["RetrainConfig", "RETRAIN_PRESETS", "preset_dict", "preset_for_dataset", "lr_at", "RetrainTask",
           "retrain", "build_model", "load_genotype_str"]

