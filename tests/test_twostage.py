"""Two-stage ISTA-NAS search (Algorithm 1) and the DARTS baseline: they run on the real digits, give valid
genotypes, resume exactly, follow the recovery schedule, stop on epsilon and reject bad input early."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from istanas.ista.compressed import CompressedSpace, RecoveryConfig, genotype_from_support
from istanas.config import ConfigError, from_dict
from istanas.darts import DartsConfig, darts_genotype
from istanas.supernet import ISTA_PRIMITIVES
from istanas.ista.twostage import TwoStageConfig
from istanas.search import run_search, write_outputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "launch"))
import search as launch_search  # noqa: E402  (launch/search.py)

K = len(ISTA_PRIMITIVES)
TINY = {"C": 4, "layers": 3, "device": "cpu",
        "data": {"image_size": 8, "limit_train": 192, "batch_size": 32, "eval_batch_size": 128}}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _tiny(epochs: int = 1, **kw) -> TwoStageConfig:
    over = {**TINY, "epochs": epochs, **kw}
    return TwoStageConfig.preset("small", **over)


def _check_genotype(g) -> None:
    for cell in ("normal", "reduce"):
        pairs = getattr(g, cell)
        assert len(pairs) == 8, cell                        # 4 nodes x 2 (op, input) pairs
        for j, (op, inp) in enumerate(pairs):
            node = 2 + j // 2
            assert op in ISTA_PRIMITIVES
            assert 0 <= inp < node, (cell, j, inp)          # a valid predecessor of node 2 + j // 2
        assert tuple(getattr(g, f"{cell}_concat")) == (2, 3, 4, 5)


def search(cfg, **kw):
    """A two-stage search through the one runner."""
    return run_search("twostage", cfg, **kw)


@pytest.fixture(scope="module")
def one_epoch():
    torch.set_num_threads(1)
    return search(_tiny(1), progress=False)


def test_one_epoch_search_on_real_digits_cpu(one_epoch):
    r = one_epoch
    _check_genotype(r.genotype)
    h = r.history
    assert len(h) == 1 and r.final["epochs"] == 1
    m = h[0]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "arch_loss", "support_churn", "step_time_s",
                "peak_mem_mb", "recovery_time_s", "dz_max", "epoch_time_s"):
        assert key in m, key
    assert all(f"dz_{c}_{i}" in m for c in ("normal", "reduce") for i in range(4))
    assert 0.0 <= m["val_acc"] <= 1.0 and m["train_loss"] > 0
    assert 0 <= m["support_churn"] <= 16               # 2 cell types x 4 nodes x s = 2 entries
    assert r.genotype_json == r.genotype.to_json() and r.genotype_digest == r.genotype.digest()
    # the history's genotype is the final one and is the top-2 of the final support
    assert json.loads(m["genotype"]) == r.genotype.to_dict()


def test_genotype_matches_the_compressed_space_pairs():
    """genotype_from_support against CompressedSpace.genotype_pairs (an independent conversion of flat ids)."""
    space = CompressedSpace(K, 4, RecoveryConfig(seed=3))
    z = space.recover(warm_start=False)
    sup = space.select_support(z)
    g = genotype_from_support(sup.cpu(), z)
    pairs = space.genotype_pairs(sup)
    for cell in ("normal", "reduce"):
        assert [(ISTA_PRIMITIVES[o], i) for o, i in pairs[cell]] == list(getattr(g, cell))
    _check_genotype(g)
    # s = 1: exactly the support, one pair per node (the searched architecture, nothing added)
    sup1 = sup[..., :1].cpu()
    g1 = genotype_from_support(sup1, z)
    assert g1.ops_per_node == 1
    zabs = z.abs()
    for t, cell in enumerate(("normal", "reduce")):
        for i in range(4):
            first = sorted(range((2 + i) * K), key=lambda k: (-float(zabs[t, i, k]), k))[0]
            assert int(sup1[t, i, 0]) == first
            assert getattr(g1, cell)[i] == (ISTA_PRIMITIVES[first % K], first // K)


def test_interrupted_and_resumed_search_equals_uninterrupted(tmp_path):
    cfg = _tiny(2)
    states_full: list = []
    full = search(cfg, progress=False, on_epoch_end=lambda m, s: states_full.append(s))
    saved: list = []

    class Interrupt(Exception):
        pass

    def hook(metrics, state):
        saved.append(state)
        if state["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        search(cfg, on_epoch_end=hook, progress=False)
    # through a real checkpoint file (weights_only load)
    from istanas.checkpoint import load, save

    path = tmp_path / "ckpt.pt"
    save(saved[-1], path)
    states_res: list = []
    resumed = search(cfg, resume=load(path), progress=False, on_epoch_end=lambda m, s: states_res.append(s))
    assert resumed.genotype == full.genotype
    # the task's state after the last epoch (what the runner's task holds at the end)
    end_res, end_full = states_res[-1]["task"], states_full[-1]["task"]
    assert torch.equal(end_res["space"]["b"], end_full["space"]["b"])
    assert torch.equal(end_res["space"]["z"], end_full["space"]["z"])
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in full.history]
    sd_a, sd_b = end_res["model"], end_full["model"]
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_recovery_schedule_step_vs_epoch():
    step = search(_tiny(2, recover_every="step"), progress=False)
    epoch = search(_tiny(2, recover_every="epoch"), progress=False)
    n_steps = 3                                           # 96 training images / batch 32
    # step: one recovery per step (before each step whose b changed, the last one after the epoch's final step)
    assert [h["recoveries"] for h in step.history] == [n_steps, n_steps]
    # epoch (the reference): once per epoch, after it (plus the initial one before epoch 1)
    assert [h["recoveries"] for h in epoch.history] == [1, 1]
    assert step.final["recoveries"] == 1 + 2 * n_steps and epoch.final["recoveries"] == 3
    _check_genotype(step.genotype)
    _check_genotype(epoch.genotype)


def test_epsilon_stops_the_search_when_z_stops_moving():
    r = search(_tiny(3, epsilon=1e9), progress=False)
    assert len(r.history) == 1 and r.final["converged_epoch"] == 1
    r = search(_tiny(2, epsilon=1e-12, arch_lr=0.05), progress=False)
    assert len(r.history) == 2 and r.final["converged_epoch"] == 0


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match="recover_every"):
        _tiny(1, recover_every="batch").validate()
    with pytest.raises(ConfigError, match="recovery.lam"):
        _tiny(1, recovery={"lam": -1.0}).validate()
    with pytest.raises(ConfigError, match="recovery.m"):
        _tiny(1, recovery={"m": 40}).validate()          # m_0 <= n_0 = 14
    with pytest.raises(ConfigError, match="epsilon"):
        _tiny(1, epsilon=-1.0).validate()
    with pytest.raises(ConfigError, match="layers"):
        _tiny(1, layers=2).validate()
    with pytest.raises(ConfigError, match="arch_betas"):
        _tiny(1, arch_betas=[0.5, 1.5]).validate()
    with pytest.raises(ConfigError, match="preset"):
        TwoStageConfig.preset("huge")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TwoStageConfig, {"recover_evry": "step"})


def test_presets_hold_the_reference_settings():
    ref = TwoStageConfig.preset("reference")
    assert (ref.epochs, ref.data.batch_size, ref.lr, ref.arch_lr, ref.C, ref.layers) == (50, 256, 0.1, 6e-4, 16, 8)
    assert (ref.lr_min, ref.momentum, ref.weight_decay, ref.grad_clip) == (0.001, 0.9, 3e-4, 5.0)
    assert tuple(ref.arch_betas) == (0.5, 0.999) and ref.arch_weight_decay == 1e-3
    assert (ref.recovery.lam, ref.recovery.s, ref.recovery.m) == (1e-5, 2, 7)
    assert ref.recover_every == "step" and ref.data.dataset == "cifar10"
    assert TwoStageConfig.preset("small").data.dataset == "digits"


def test_darts_genotype_rule():
    w = torch.full((2, 14, K), 0.01)
    # normal node 0 (edges 0, 1): edge 1 strongest with op 3, edge 0 with op 6
    w[0, 1, 3], w[0, 0, 6] = 0.9, 0.5
    # normal node 3 (edges 9..13): edges 13 (op 0) and 10 (op 4) win over the others
    w[0, 13, 0], w[0, 10, 4], w[0, 11, 2] = 0.8, 0.7, 0.6
    # reduce node 1 (edges 2..4): edge 4 (op 5), edge 2 (op 1)
    w[1, 4, 5], w[1, 2, 1], w[1, 3, 1] = 0.9, 0.4, 0.3
    g = darts_genotype(w)
    _check_genotype(g)
    P = ISTA_PRIMITIVES
    assert g.normal[0:2] == ((P[3], 1), (P[6], 0))
    assert g.normal[6:8] == ((P[0], 4), (P[4], 1))
    assert g.reduce[2:4] == ((P[5], 2), (P[1], 0))


def test_darts_baseline_runs_one_epoch():
    cfg = DartsConfig.preset("small", epochs=1, **TINY)
    r = run_search("darts", cfg, progress=False)
    _check_genotype(r.genotype)
    m = r.history[0]
    for key in ("train_loss", "val_acc", "step_time_s", "peak_mem_mb", "genotype_churn"):
        assert key in m


def test_write_outputs(tmp_path, one_epoch):
    from spaces.genotype import Genotype

    r = one_epoch
    paths = write_outputs(r, str(tmp_path))
    with open(paths["genotype"], encoding="utf-8") as f:
        assert Genotype.from_json(f.read()) == r.genotype
    with open(paths["result"], encoding="utf-8") as f:
        rec = json.load(f)
    assert rec["genotype"] == r.genotype.to_dict() and rec["final"]["epochs"] == 1
    for cell in ("normal", "reduce"):
        for fmt in ("png", "svg"):
            p = paths[f"plot_{cell}_{fmt}"]
            assert os.path.getsize(p) > 0


def test_cli_search_resume_and_outputs(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["--method", "twostage", "--device", "cpu", "--no-progress", "--out", out, "--epochs", "2",
            "--set", "C=4", "--set", "layers=3", "--set", "data.image_size=8", "--set", "data.limit_train=192",
            "--set", "data.batch_size=32"]

    class Stop(Exception):
        pass

    import istanas.cli as cli

    real_hook = cli.checkpoint_hook

    def stopping_hook(out_dir):
        save = real_hook(out_dir)

        def hook(state):
            if state["epoch"] == 2:   # killed during epoch 2: epoch 1 is checkpointed and logged
                raise Stop
            save(state)
        return hook

    cli.checkpoint_hook = stopping_hook
    try:
        with pytest.raises(Stop):
            launch_search.main(args)
    finally:
        cli.checkpoint_hook = real_hook
    assert launch_search.main(args) == 2                   # refuses to overwrite without --resume
    assert "--resume" in capsys.readouterr().err
    assert launch_search.main(args + ["--resume"]) == 0
    text = capsys.readouterr().out
    assert "genotype" in text and os.path.join(out, "genotype.json") in text
    for name in ("run_info.json", "metrics.jsonl", "checkpoint.pt", "genotype.json", "result.json",
                 "cells_normal.png", "cells_reduce.svg"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert [r["epoch"] for r in rows] == [1, 2]
    with open(os.path.join(out, "run_info.json"), encoding="utf-8") as f:
        info = json.load(f)
    assert info["seed"] == 0 and "torch" in info["versions"] and info["config"]["C"] == 4
    # the same search without interruption gives the same genotype
    out2 = str(tmp_path / "run2")
    assert launch_search.main([a if a != out else out2 for a in args]) == 0
    capsys.readouterr()
    with open(os.path.join(out, "genotype.json")) as f1, open(os.path.join(out2, "genotype.json")) as f2:
        assert json.load(f1) == json.load(f2)
    # errors are one line, exit status 2
    assert launch_search.main(["--method", "darts", "--recover-every", "epoch", "--out", str(tmp_path / "x")]) == 2
    assert "recover-every" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_host_transfer_per_recovery_on_cuda():
    import warnings

    from istanas.ista.compressed import HostRecovery

    space = CompressedSpace(K, 4, RecoveryConfig(seed=1)).cuda()
    rec = HostRecovery(space)
    rec(False)
    with torch.no_grad():
        space.b.add_(1e-3 * torch.randn_like(space.b))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            support, host = rec()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
    assert host.device.type == "cpu" and support.is_cuda and torch.equal(support.cpu(), host)
    # the same support as a recovery solved entirely on the CPU
    cpu = CompressedSpace(K, 4, RecoveryConfig(seed=1))
    cpu.load_state_dict({k: v.cpu() for k, v in space.state_dict().items()})
    cpu.z.copy_(space.z.cpu())
    assert torch.equal(cpu.select_support(cpu.recover()), host)
