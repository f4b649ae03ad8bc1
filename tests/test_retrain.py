"""Retraining: it learns, resumes exactly, follows the published schedules, and rejects bad input early."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from istanas import cli
from istanas.checkpoint import load
from istanas.config import ConfigError, from_dict, read_yaml
from istanas.engine import Progress, train_epoch
from istanas.retrain import RetrainConfig, RetrainTask, lr_at, preset_dict, retrain
from istanas.search import check_runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "launch"))
import retrain as launch_retrain  # noqa: E402  (launch/retrain.py)

TINY = ["--preset", "quick", "--device", "cpu", "--no-progress", "--set", "C=4", "--set", "layers=3",
        "--set", "data.limit_train=192", "--set", "data.limit_test=64"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_quick_retrain_learns_digits():
    """3 epochs of a small DARTS_V2 network (C=8, 5 cells) on the real digits: far above chance (0.1)."""
    cfg = RetrainConfig.preset("quick", epochs=3, device="cpu")
    r = retrain(cfg, progress=False)
    assert r["test_acc"] > 0.5, r["history"]
    assert r["best_test_acc"] >= r["test_acc"] and 1 <= r["best_epoch"] <= 3
    assert r["epochs"] == 3 and len(r["history"]) == 3
    from spaces.registry import load_genotype

    g = load_genotype("DARTS_V2")
    assert r["genotype_digest"] == g.digest() and r["genotype"] == g.to_dict()
    assert 0 < r["params_m"] < 1 and r["wall_time_s"] > 0
    # the lr follows the cosine schedule epoch by epoch
    assert [h["lr"] for h in r["history"]] == pytest.approx(
        [0.5 * cfg.lr * (1 + math.cos(math.pi * e / 3)) for e in range(3)])


def test_lr_schedules_match_references():
    # cosine: the same values as torch's CosineAnnealingLR stepped once per epoch (an independent implementation)
    cfg = from_dict(RetrainConfig, {"epochs": 7, "lr": 0.025, "lr_min": 0.001})
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.025)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7, eta_min=0.001)
    ref = []
    for _ in range(7):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [lr_at(cfg, e) for e in range(7)] == pytest.approx(ref, rel=1e-12)
    # linear (PC-DARTS ImageNet), E = 10: hand-computed
    lin = from_dict(RetrainConfig, {"epochs": 10, "lr": 0.5, "lr_schedule": "linear"})
    assert [lr_at(lin, e) for e in (0, 4, 5, 9)] == pytest.approx([0.5, 0.1, 0.1, 0.02])
    # warm-up ramps up to lr
    warm = from_dict(RetrainConfig, {"epochs": 10, "lr": 0.5, "lr_schedule": "linear", "warmup_epochs": 5})
    assert [lr_at(warm, e) for e in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_train_step_uses_auxiliary_weight_and_ramps_drop_path():
    """One-batch epoch: the reported loss equals CE(logits) + 0.4 CE(aux) of the pre-step network."""
    cfg = RetrainConfig.preset("quick", epochs=4, device="cpu", C=4, layers=3, auxiliary=True, drop_path=0.2,
                               data={"limit_train": 32, "batch_size": 32, "limit_test": 32})
    cfg.validate()
    torch.manual_seed(0)
    task = RetrainTask(cfg)
    before = copy.deepcopy(task.model)
    state = torch.get_rng_state()
    x, y = next(iter(task.loaders.train))
    torch.set_rng_state(state)
    m = train_epoch(task, 0, Progress(1, enabled=False))
    before.train()
    logits, aux = before(x)
    ce = nn.CrossEntropyLoss()
    assert aux is not None and aux.shape == logits.shape == (32, 10)
    assert m["train_loss"] == pytest.approx((ce(logits, y) + 0.4 * ce(aux, y)).item(), rel=1e-5)
    assert m["drop_path"] == 0.0
    train_epoch(task, 2, Progress(1, enabled=False))
    assert task.model.drop_path_prob == pytest.approx(0.2 * 2 / 4)


def _run_cli(argv):
    return launch_retrain.main(argv)


def test_cli_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, capsys):
    straight, broken = str(tmp_path / "a"), str(tmp_path / "b")
    assert _run_cli(TINY + ["--epochs", "2", "--out", straight]) == 0

    real_logger = cli.metrics_logger

    def interrupting_logger(out, **kw):
        log = real_logger(out, **kw)

        def report(m):
            log(m)
            if m["epoch"] == 1:
                raise KeyboardInterrupt

        return report

    monkeypatch.setattr(cli, "metrics_logger", interrupting_logger)
    assert _run_cli(TINY + ["--epochs", "2", "--out", broken]) == 130
    assert "--resume" in capsys.readouterr().err
    assert load(os.path.join(broken, "checkpoint.pt"))["epoch"] == 1
    monkeypatch.setattr(cli, "metrics_logger", real_logger)
    # without --resume the existing run is not overwritten
    assert _run_cli(TINY + ["--epochs", "2", "--out", broken]) == 2
    assert "--resume" in capsys.readouterr().err
    # resume with only --out: the config comes from the run's run_info.json
    assert _run_cli(["--out", broken, "--resume", "--no-progress"]) == 0

    a, b = load(os.path.join(straight, "model.pt")), load(os.path.join(broken, "model.pt"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.load(open(os.path.join(straight, "result.json")))
    rb = json.load(open(os.path.join(broken, "result.json")))
    assert ra["test_acc"] == rb["test_acc"] and rb["epochs"] == 2
    rows = [json.loads(line) for line in open(os.path.join(broken, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1, 2]
    info = json.load(open(os.path.join(straight, "run_info.json")))
    assert info["config"]["C"] == 4 and info["seed"] == 0 and "torch" in info["versions"]


def test_function_resume_from_checkpoint_hook_state():
    cfg = RetrainConfig.preset("quick", epochs=2, device="cpu", C=4, layers=3, auxiliary=True, drop_path=0.1,
                               data={"limit_train": 128, "limit_test": 32, "cutout": 4})
    states: list = []
    tasks: list = []
    retrain(cfg, on_epoch_end=lambda m, s: states.append(copy.deepcopy(s)), progress=False, task_out=tasks)
    torch.manual_seed(999)  # disturb the global RNG: resume must restore it
    resumed: list = []
    retrain(cfg, resume=states[0], progress=False, task_out=resumed)
    a, b = tasks[0].model.state_dict(), resumed[0].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_retrain_configs_are_rejected():
    base = RetrainConfig.preset("quick", device="cpu")
    base.validate()
    for change, match in [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"lr_schedule": "step"}, "lr_schedule"),
                          ({"genotype": "NO_SUCH_NET"}, "genotype"), ({"drop_path": 1.5}, "drop_path"),
                          ({"layers": 2}, "layers"), ({"label_smoothing": 1.0}, "label_smoothing")]:
        cfg = copy.deepcopy(base)
        for k, v in change.items():
            setattr(cfg, k, v)
        with pytest.raises(ConfigError, match=match):
            cfg.validate()
    cfg = copy.deepcopy(base)
    cfg.data.cutout = 20
    with pytest.raises(ConfigError, match="cutout"):
        cfg.validate()
    if not torch.cuda.is_available():
        cfg = copy.deepcopy(base)
        cfg.device = "cuda"
        with pytest.raises(ConfigError, match="cuda"):
            check_runtime(cfg)                              # the machine probe (validate() checks the schema)


def test_cli_rejects_bad_values_before_training(tmp_path, capsys):
    out = str(tmp_path / "x")
    for argv, match in [(["--epochs", "0"], "epochs"), (["--set", "lrr=0.1"], "did you mean 'lr'"),
                        (["--genotype", "NOPE"], "genotype"), (["--set", "data.batch_size=0"], "batch_size"),
                        (["--resume"], "no checkpoint"), (["--config", str(tmp_path / "none.yaml")], "not found")]:
        assert _run_cli(TINY + argv + ["--out", out]) == 2
        assert match in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "checkpoint.pt"))


def test_cli_help_teaches_and_runs_without_installation():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "launch/retrain.py", "--help"], cwd=REPO, capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "examples:" in r.stdout and "--resume" in r.stdout and "--genotype" in r.stdout


def test_presets_and_yaml_configs():
    assert preset_dict("cifar10")["data"]["cutout"] == 16 and preset_dict("imagenet")["label_smoothing"] == 0.1
    img = RetrainConfig.preset("imagenet")
    assert (img.C, img.layers, img.epochs, img.lr_schedule, img.weight_decay) == (48, 14, 250, "linear", 3e-5)
    with pytest.raises(ConfigError, match="root"):
        img.validate()
    for name in ("retrain_cifar10.yaml", "retrain_imagenet.yaml"):
        cfg = from_dict(RetrainConfig, read_yaml(os.path.join(REPO, "configs", name)))
        ref = RetrainConfig.preset("cifar10" if "cifar" in name else "imagenet")
        for field in ("epochs", "lr", "lr_schedule", "C", "layers", "weight_decay", "label_smoothing", "drop_path",
                      "auxiliary_weight", "grad_clip"):
            assert getattr(cfg, field) == getattr(ref, field), (name, field)
        assert cfg.data.batch_size == ref.data.batch_size and cfg.data.cutout == ref.data.cutout


@pytest.mark.parametrize("s", [3, 1])
def test_retrain_trains_the_s_op_genotype_a_search_wrote(tmp_path, s):
    """A version-2 genotype file (s ops per node, as an s != 2 search writes it) is retrained as is: the network has
    s ops per node and its parameter count is that of the s-op cells (more / fewer than the 2-op network)."""
    from spaces.genotype import Genotype
    from spaces.networks import build_network
    from spaces.profile import count_parameters
    from spaces.registry import get_genotype

    base = get_genotype("ISTA_twostage")
    cells = {c: tuple(p for i in range(4) for p in ((getattr(base, c)[2 * i:2 * i + 2] + (("sep_conv_5x5", 0),))[:s]))
             for c in ("normal", "reduce")}
    g = Genotype(normal=cells["normal"], normal_concat=(2, 3, 4, 5), reduce=cells["reduce"],
                 reduce_concat=(2, 3, 4, 5), ops_per_node=s)
    path = tmp_path / "genotype.json"
    path.write_text(g.to_json(indent=2))
    cfg = RetrainConfig.preset("quick", epochs=1, device="cpu", genotype=str(path), C=4, layers=3,
                               data={"limit_train": 64, "limit_test": 32})
    tasks: list = []
    r = retrain(cfg, progress=False, task_out=tasks)
    assert r["genotype_digest"] == g.digest() and r["genotype"] == g.to_dict() and r["genotype"]["version"] == 2
    assert [c.ops_per_node for c in tasks[0].model.cells] == [s] * 3
    assert [len(c.ops) for c in tasks[0].model.cells] == [4 * s] * 3
    two = count_parameters(build_network(base, "digits", C=4, layers=3, in_channels=1))
    assert (r["params_m"] > two) if s == 3 else (r["params_m"] < two)
