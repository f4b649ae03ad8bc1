"""The engine's step loop against hand-written loops: a toy linear task's weights equal those of a plain SGD loop
bit for bit, the gradient clip and the NaN guard act, updates run in order with lazily drawn batches, a resumed
run equals an uninterrupted one, the CLI hook checkpoints before it logs, and (CUDA only) every method trains
under bf16 autocast with channels-last models and inputs."""
from __future__ import annotations

import copy
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from istanas import cli, engine
from istanas.checkpoint import load as ckpt_load
from istanas.config import from_dict
from istanas.engine import NonFiniteLossError, Update
from istanas.training import cosine_lr, evaluate, scheduled_lr


class Batches:
    """A loader over fixed tensors, shuffled with the global torch RNG every epoch (so RNG state matters)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.bs = x, y, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.bs)

    def __iter__(self):
        idx = torch.randperm(len(self.x))
        for i in range(0, len(idx), self.bs):
            j = idx[i:i + self.bs]
            yield self.x[j], self.y[j]


def _data(n: int = 40, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x, y


class ToyTask:
    """A linear classifier on 4 features, 3 classes; SGD with momentum and weight decay, cosine lr, clip."""

    def __init__(self, lr: float = 0.5, clip: float = 0.0, epochs: int = 3, data=None, stop_after: int = 0):
        self.cfg = SimpleNamespace(bf16=False, channels_last=False)
        self.device = torch.device("cpu")
        self.model = nn.Linear(4, 3)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
        x, y = data if data is not None else _data()
        self.loaders = SimpleNamespace(train=Batches(x, y, 8), valid=[(x, y)])
        self.lr, self.clip, self.epochs, self.stop_after = lr, clip, epochs, stop_after
        self.criterion = nn.CrossEntropyLoss()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["opt"])

    def steps_per_epoch(self) -> int:
        return len(self.loaders.train)

    def lr_at(self, epoch: int) -> float:
        return cosine_lr(self.lr, 0.0, epoch, self.epochs)

    def begin_epoch(self, epoch: int) -> dict:
        return {"marker": float(epoch)}

    def _loss(self, x, y):
        logits = self.model(x)
        return self.criterion(logits, y), logits

    def step(self, batch):
        return [Update(self._loss, [self.optimizer], clip=list(self.model.parameters()), max_norm=self.clip)]

    def finish_epoch(self, epoch: int) -> dict:
        return {}

    def evaluate(self, epoch: int) -> dict:
        m = evaluate(self.model, self.loaders.valid, self.device, self.criterion)
        return {"val_loss": m["loss"], "val_acc": m["acc"]}

    def end_epoch(self, epoch: int, metrics: dict) -> bool:
        return bool(self.stop_after) and epoch + 1 >= self.stop_after


def _hand_loop(task: ToyTask, epochs: int) -> list[float]:
    """The plain PyTorch loop the engine must equal; returns the per-epoch mean training loss."""
    losses = []
    params = list(task.model.parameters())
    for epoch in range(epochs):
        for g in task.optimizer.param_groups:
            g["lr"] = cosine_lr(task.lr, 0.0, epoch, task.epochs)
        task.model.train()
        total, n = 0.0, 0
        for x, y in task.loaders.train:
            loss = task.criterion(task.model(x), y)
            task.optimizer.zero_grad()
            loss.backward()
            if task.clip > 0:
                nn.utils.clip_grad_norm_(params, task.clip)
            task.optimizer.step()
            total += float(loss.detach()) * len(y)
            n += len(y)
        losses.append(total / n)
    return losses


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_engine_sgd_equals_a_hand_written_loop_exactly(clip):
    torch.manual_seed(0)
    a = ToyTask(clip=clip)
    b = copy.deepcopy(a)
    torch.manual_seed(123)
    hist = engine.run(a, epochs=3, progress=False)
    torch.manual_seed(123)
    ref = _hand_loop(b, 3)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    assert [h["train_loss"] for h in hist] == pytest.approx(ref, rel=1e-12)
    assert [h["lr"] for h in hist] == [cosine_lr(0.5, 0.0, e, 3) for e in range(3)]
    assert [h["marker"] for h in hist] == [0.0, 1.0, 2.0]      # begin_epoch's metrics reach the epoch's row
    for key in ("train_acc", "val_loss", "val_acc", "train_time_s", "step_time_s", "peak_mem_mb", "epoch_time_s"):
        assert key in hist[-1]


def test_clip_bounds_the_update_to_lr_times_max_norm():
    torch.manual_seed(0)
    task = ToyTask(lr=1.0, clip=1e-3)
    task.optimizer = torch.optim.SGD(task.model.parameters(), lr=1.0)        # plain SGD: update = -lr * g
    x, y = _data(8)
    task.loaders.train = [(x, y)]
    w0 = [p.detach().clone() for p in task.model.parameters()]
    probe = copy.deepcopy(task.model)
    nn.CrossEntropyLoss()(probe(x), y).backward()
    gnorm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in probe.parameters()]))
    assert gnorm > 1e-2                                                       # so the clip is active
    engine.run(task, epochs=1, progress=False)
    step = torch.cat([(p.detach() - q).flatten() for p, q in zip(task.model.parameters(), w0)])
    assert float(torch.linalg.vector_norm(step)) == pytest.approx(1e-3, rel=1e-4)


def test_nan_loss_raises_non_finite_loss_error():
    torch.manual_seed(0)
    x, y = _data(16)
    x[3, 0] = float("nan")
    task = ToyTask(data=(x, y))
    with pytest.raises(NonFiniteLossError, match="train_loss"):
        engine.run(task, epochs=1, progress=False)


def test_updates_run_in_order_and_a_callable_batch_is_drawn_when_its_update_runs():
    """A DARTS-shaped step: update A (its batch drawn lazily, after nothing) then update B on the training batch;
    B's forward sees A's step, and A's batch callable runs after the previous step's B."""
    torch.manual_seed(0)
    task = ToyTask()
    events = []
    a_opt = torch.optim.SGD([task.model.bias], lr=0.1)
    x, y = _data(8, seed=5)

    def draw():
        events.append(("draw", task.model.bias.detach().clone()))
        return x, y

    def loss_b(xb, yb):
        events.append(("b", task.model.bias.detach().clone()))
        return task._loss(xb, yb)

    task.step = lambda batch: [Update(task._loss, [a_opt], batch=draw, inputs=[task.model.bias], meter="arch"),
                               Update(loss_b, [task.optimizer], inputs=[task.model.weight])]
    task.loaders.train = [_data(8, seed=6), _data(8, seed=7)]
    hist = engine.run(task, epochs=1, progress=False)
    kinds = [k for k, _ in events]
    assert kinds == ["draw", "b", "draw", "b"]
    assert not torch.equal(events[0][1], events[1][1])        # A stepped the bias before B's forward
    assert torch.equal(events[1][1], events[2][1])            # B (inputs=[weight]) left the bias alone
    assert "arch_loss" in hist[0] and "train_loss" in hist[0]


def test_resume_equals_uninterrupted_and_hook_gets_metrics_and_state():
    torch.manual_seed(0)
    full = ToyTask(epochs=4)
    part = copy.deepcopy(full)
    seen = []
    torch.manual_seed(7)
    h_full = engine.run(full, epochs=4, progress=False,
                        on_epoch_end=lambda m, s: seen.append((m, copy.deepcopy(s))))
    assert [m["epoch"] for m, _ in seen] == [1, 2, 3, 4]
    assert all(set(s) == {"epoch", "task", "rng", "history", "done"} for _, s in seen)
    assert [s["done"] for _, s in seen] == [False, False, False, True]
    state = seen[1][1]                                          # after epoch 2
    torch.manual_seed(999)                                      # the resume restores the RNG
    h_res = engine.run(part, epochs=4, progress=False, resume=state)
    for pa, pb in zip(full.model.parameters(), part.model.parameters()):
        assert torch.equal(pa, pb)
    strip = [{k: v for k, v in h.items() if "time" not in k and k != "peak_mem_mb"} for h in h_full]
    assert [{k: v for k, v in h.items() if "time" not in k and k != "peak_mem_mb"} for h in h_res] == strip
    assert engine.run(part, epochs=4, progress=False, resume=seen[-1][1]) == seen[-1][1]["history"]


def test_end_epoch_true_stops_the_run():
    torch.manual_seed(0)
    hist = engine.run(ToyTask(stop_after=2), epochs=5, progress=False)
    assert len(hist) == 2


def test_run_hooks_checkpoint_before_the_metrics_line(tmp_path, monkeypatch):
    out = str(tmp_path)
    real = cli.metrics_logger

    def checking_logger(out_dir, **kw):
        log = real(out_dir, **kw)

        def wrapped(metrics):
            assert int(ckpt_load(cli.checkpoint_path(out_dir))["epoch"]) == metrics["epoch"]
            log(metrics)
        return wrapped

    monkeypatch.setattr(cli, "metrics_logger", checking_logger)
    torch.manual_seed(0)
    engine.run(ToyTask(), epochs=3, progress=False, on_epoch_end=cli.run_hooks(out, echo=False))
    rows = [json.loads(ln) for ln in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert ckpt_load(cli.checkpoint_path(out))["done"] is True


def test_scheduled_lr_cosine_is_cosine_lr_and_warmup_comes_first():
    assert [scheduled_lr("cosine", 0.1, 0.01, e, 7) for e in range(7)] == [cosine_lr(0.1, 0.01, e, 7)
                                                                          for e in range(7)]
    assert scheduled_lr("constant", 0.3, 0.0, 4, 9, warmup_epochs=2) == 0.3
    assert scheduled_lr("cosine", 0.4, 0.0, 0, 9, warmup_epochs=2) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="schedule"):
        scheduled_lr("step", 0.1, 0.0, 0, 3)


# ----------------------------------------------------------------------------------------------- CUDA: bf16
TINY_DATA = {"dataset": "digits", "image_size": 16, "limit_train": 64, "limit_test": 64, "batch_size": 32,
             "eval_batch_size": 64, "cutout": 0}


def _cuda_task(method: str):
    from istanas.darts import DartsConfig, DartsTask
    from istanas.ista.onestage import OneStageConfig, OneStageTask
    from istanas.ista.twostage import TwoStageConfig, TwoStageTask
    from istanas.retrain import RetrainConfig, RetrainTask

    common = {"device": "cuda", "bf16": True, "channels_last": True, "data": dict(TINY_DATA), "epochs": 1}
    if method == "twostage":
        return TwoStageTask(from_dict(TwoStageConfig, {**common, "C": 4, "layers": 3}))
    if method == "darts":
        return DartsTask(from_dict(DartsConfig, {**common, "C": 4, "layers": 3}))
    if method == "onestage":
        return OneStageTask(from_dict(OneStageConfig, {**common, "C": 4, "layers": 3, "search_epochs": 1,
                                                       "train_epochs": None}))
    return RetrainTask(from_dict(RetrainConfig, {**common, "C": 4, "layers": 3, "genotype": "DARTS_V2",
                                                 "auxiliary": True}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["twostage", "darts", "onestage", "retrain"])
def test_cuda_step_under_bf16_and_channels_last(method):
    torch.manual_seed(0)
    task = _cuda_task(method)
    convs = [m for m in task.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs
                         if c.weight.dim() == 4 and c.weight.shape[-1] > 1)
    seen = []

    def probe(module, inputs, output):
        if module.training:
            seen.append((torch.is_autocast_enabled("cuda"), inputs[0].is_contiguous(memory_format=torch.channels_last),
                         output.dtype))

    handle = convs[0].register_forward_hook(probe)
    try:
        hist = engine.run(task, epochs=1, progress=False)
    finally:
        handle.remove()
    assert seen and all(a for a, _, _ in seen), "the training forward ran without autocast"
    assert all(cl for _, cl, _ in seen), "the stem saw a non-channels-last input"
    assert all(dt == torch.bfloat16 for _, _, dt in seen)
    m = hist[0]
    assert math.isfinite(m["train_loss"]) and m["train_loss"] > 0
    for k, v in m.items():
        if "loss" in k or "acc" in k:
            assert math.isfinite(v), k
    assert all(torch.isfinite(p).all() for p in task.model.parameters())
