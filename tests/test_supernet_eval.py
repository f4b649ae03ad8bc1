"""istanas.supernet_eval: cell sampling, BN recalibration and inherited-weight evaluation of NB201 cells, against
independent computations (itertools enumeration; per-batch mean / variance of each BN's input by hand; eval-mode
logits by hand), and ``run_search(task_out=...)`` handing back the trained super-net."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch

from istanas.config import from_dict, preset_data
from istanas.data import Loaders
from istanas.methods import get_method
from istanas.nb201_supernet import NB201_SEARCH_OPS, NB201SparseSuperNet
from istanas.search import run_search
from istanas.supernet_eval import (arch_weighted_forward, batch_norms, evaluate_cells, nb201_cell, recalibrate_bn, sample_nb201_cells,
                                   supernet_of)
from spaces.ops import NB201_PRIMITIVES


def _edges(g) -> tuple:
    return tuple(op for node in g.nodes for op, _ in node)


@pytest.mark.parametrize("ops", [NB201_SEARCH_OPS, NB201_PRIMITIVES])
def test_cell_index_matches_itertools_enumeration(ops):
    every = list(itertools.product(ops, repeat=6))
    for i in (0, 1, 7, len(every) // 3, len(every) - 1):
        assert _edges(nb201_cell(i, ops)) == every[i]


def test_sampled_cells_are_distinct_seeded_and_in_the_pool():
    a = sample_nb201_cells(50, seed=3)
    assert [g.to_arch_str() for g in a] == [g.to_arch_str() for g in sample_nb201_cells(50, seed=3)]
    assert len({g.to_arch_str() for g in a}) == 50
    assert all(op in NB201_SEARCH_OPS for g in a for op in _edges(g))
    assert any("none" in _edges(g) for g in sample_nb201_cells(50, seed=3, pool="all"))
    with pytest.raises(ValueError, match="k:"):
        sample_nb201_cells(4 ** 6 + 1)
    with pytest.raises(ValueError, match="pool:"):
        sample_nb201_cells(5, pool="some")


def _net_and_batches(seed: int = 0):
    torch.manual_seed(seed)
    net = NB201SparseSuperNet(C=4, num_classes=10, N=1).double()
    batches = [(torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))) for _ in range(3)]
    return net, batches


def test_recalibrated_bn_stats_are_the_average_of_per_batch_input_statistics():
    net, batches = _net_and_batches()
    cell = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|nor_conv_3x3~1|skip_connect~2|"
    # by hand: the input of every BN in train-mode forwards of a copy (train-mode BN uses batch statistics only)
    ref = copy.deepcopy(net).train()
    seen: dict[str, list] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: seen.setdefault(name, []).append(inp[0]))
             for name, m in ref.named_modules() if m in batch_norms(ref)]
    with torch.no_grad():
        for x, _ in batches:
            ref.forward_cell(x, cell)
    for h in hooks:
        h.remove()
    for m in batch_norms(net):                     # stale statistics a missing reset would keep
        m.running_mean.fill_(5.0)
        m.running_var.fill_(7.0)
        m.num_batches_tracked.fill_(11)
    assert recalibrate_bn(net, lambda x: net.forward_cell(x, cell), batches, "cpu") == 3
    mods = dict(net.named_modules())
    assert len(seen) >= 8
    for name, inputs in seen.items():
        assert len(inputs) == 3
        mean = torch.stack([a.mean(dim=(0, 2, 3)) for a in inputs]).mean(0)
        var = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in inputs]).mean(0)
        torch.testing.assert_close(mods[name].running_mean, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(mods[name].running_var, var, rtol=1e-10, atol=1e-12)
        assert mods[name].momentum == 0.1           # restored
    assert net.training


def test_evaluate_cells_matches_a_hand_evaluation_and_does_not_depend_on_order():
    net, batches = _net_and_batches(1)
    evals = [(torch.randn(16, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))) for _ in range(2)]
    cells = [g.to_arch_str() for g in sample_nb201_cells(2, seed=0, pool="all")]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = evaluate_cells(net, cells, batches, evals, "cpu")
    rev = evaluate_cells(net, cells[::-1], batches, evals, "cpu")[::-1]
    assert [r["acc"] for r in out] == [r["acc"] for r in rev]
    for k, v in net.state_dict().items():            # the super-net's own buffers are back
        assert torch.equal(v, before[k]), k
    # by hand: recalibrate a copy, eval-mode logits, top-1 hits and mean CE
    for cell, rec in zip(cells, out):
        ref = copy.deepcopy(net)
        recalibrate_bn(ref, lambda x: ref.forward_cell(x, cell), batches, "cpu")
        ref.eval()
        with torch.no_grad():
            logits = torch.cat([ref.forward_cell(x, cell) for x, _ in evals])
        y = torch.cat([y for _, y in evals])
        assert rec["n"] == 32
        assert rec["acc"] == pytest.approx((logits.argmax(-1) == y).double().mean().item(), abs=1e-12)
        assert rec["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)  # evaluate: float32 CE


@pytest.mark.parametrize("method", ["twostage", "onestage", "darts"])
def test_run_search_task_out_gives_the_trained_supernet(method):
    m = get_method(method)
    kw = {"search_epochs": 1} if method == "onestage" else {}
    cfg = from_dict(m.config_cls, preset_data(m.config_cls, "cpu", {"C": 4, "layers": 1, "epochs": 1, "device": "cpu",
                                                                    "data": {"dataset": "digits"}, **kw}))
    g = torch.Generator().manual_seed(0)
    mk = lambda: [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    data = Loaders(train=mk(), valid=mk(), num_classes=10, in_channels=3, image_size=8, name="random")
    seen, tasks = {}, []

    def hook(metrics, state):
        seen.update({k: v.clone() for k, v in state["task"]["net" if method == "onestage" else "model"].items()})

    torch.manual_seed(0)
    r = run_search(method, cfg, data=data, progress=False, on_epoch_end=hook, task_out=tasks)
    assert len(tasks) == 1
    net = supernet_of(tasks[0])
    params = dict(net.named_parameters())
    prefix = "supernet." if method == "onestage" else ""
    assert params and all(torch.equal(p, seen[prefix + k]) for k, p in params.items())   # the post-search weights
    out = evaluate_cells(net, [r.genotype], data.train, data.valid, "cpu")
    assert out[0]["n"] == 32
    # arch weights on the found cell = the search's own sub-network (ISTA-NAS: its support and Eq. 11
    # coefficients; DARTS: softmax(alpha) of the chosen op per edge, other ops 0), eval mode
    task, x = tasks[0], data.valid[0][0]
    arch = arch_weighted_forward(task)
    net.eval()
    with torch.no_grad():
        got = arch(x, r.genotype)
        if method == "twostage":
            ref = net(x, task.support_host, task.space.coefficients(task.support))
        elif method == "onestage":
            task.net.eval()
            ref = task.net(x)
        else:
            w = torch.softmax(net.alphas, -1)
            keep = torch.zeros_like(w)
            ops = [op for node in r.genotype.nodes for op, _ in node]
            for e, op in enumerate(ops):
                keep[0, e, net.primitives.index(op)] = 1.0
            ref = net.forward_dense(x, w * keep)
            assert not torch.allclose(got, net.forward_cell(x, r.genotype), atol=1e-4)   # not the unit weights
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
