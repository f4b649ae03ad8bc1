"""The found architecture is the searched architecture (DARTS space): a two-stage search with support size s writes
a genotype with exactly s ops per node, and the stand-alone network of that genotype (``spaces.networks``, the
super-net's weights copied in, the Eq. 11 coefficients folded into the BNs) computes the super-net's forward on
that support (float64, BN on running statistics)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from istanas.ista.absorb import network_kwargs, support_network
from istanas.ista.twostage import TwoStageConfig, TwoStageTask
from istanas.result import write_outputs
from istanas.search import run_search
from istanas.supernet import ISTA_PRIMITIVES
from spaces.networks import build_network
from spaces.registry import load_genotype

K = len(ISTA_PRIMITIVES)
TINY = {"C": 4, "layers": 3, "device": "cpu", "epochs": 1,
        "data": {"image_size": 8, "limit_train": 64, "batch_size": 32, "eval_batch_size": 64}}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.mark.parametrize("s", [3, 1])
def test_searched_genotype_is_the_support_and_its_network_is_the_supernet(tmp_path, s):
    cfg = TwoStageConfig.preset("small", **TINY, recovery={"s": s})
    states = []
    result = run_search("twostage", cfg, progress=False, on_epoch_end=lambda m, st: states.append(st))
    paths = write_outputs(result, str(tmp_path))
    g = load_genotype(paths["genotype"])
    assert json.load(open(paths["genotype"]))["version"] == 2 and os.path.isfile(paths["result"])
    assert g == result.genotype and g.ops_per_node == s
    assert len(g.normal) == len(g.reduce) == 4 * s
    # the super-net as the search left it
    task = TwoStageTask(cfg)
    task.load_state_dict(states[-1]["task"])
    host = task.support_host
    assert torch.equal(host, torch.tensor(result.extra["support"]))
    for t, cell in enumerate(("normal", "reduce")):       # every support entry is in the genotype, nothing else
        for i, node in enumerate(g.nodes(cell)):
            assert sorted(ISTA_PRIMITIVES.index(op) + K * inp for op, inp in node) == sorted(host[t, i].tolist())
    sn = task.model.double().eval()
    coef = task.space.coefficients(task.support, dtype=torch.float64).detach()
    model, g_net = support_network(sn, host, coef)
    assert g_net == g
    # the stand-alone network is build_network of the written genotype: same modules, same state-dict keys
    ref_net = build_network(paths["genotype"], **network_kwargs(sn)).double()
    assert list(ref_net.state_dict()) == list(model.state_dict())
    ref_net.load_state_dict(model.state_dict())
    ref_net.eval()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
    with torch.no_grad():
        want = sn(x, host, coef)
        got = ref_net(x)[0]
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # retraining builds exactly this genotype
    assert [c.ops_per_node for c in build_network(g, "digits", C=4, layers=3, in_channels=1).cells] == [s] * 3
