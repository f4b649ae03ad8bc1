"""The NAS-Bench-201 space of the weight-sharing searches, the #params baseline, and the benchmark table as input.

Independent references: a dense forward with explicitly scattered weights (sparse super-net), a brute-force
greedy support (one op per edge), Eq. 11 written out, parameter counts of networks built directly, a csv-module
read of the table, and a record of when the table file is opened.
"""
from __future__ import annotations

import builtins
import csv
import itertools
import os
import random
import warnings

import pytest
import torch

from istanas.cell_space import NB201_RECOVERY, cell_space
from istanas.config import ConfigError, deep_merge, from_dict, preset_data
from istanas.darts import DartsConfig
from istanas.data import Loaders, shared_data_dir
from istanas.ista.compressed import CompressedSpace, RecoveryConfig
from istanas.ista.onestage import OneStageConfig
from istanas.ista.twostage import TwoStageConfig
from istanas.nb201_supernet import (NB201_OFFSETS, NB201SparseSuperNet, nb201_genotype_from_support,
                                    support_of_genotype)
from istanas.params_search import ParamsSearchConfig, nb201_params
from istanas.random_search import RandomSearchConfig, sample_nb201
from istanas.search import run_search
import istanas.search as search_mod
from spaces.genotype import NB201Genotype
from spaces.nb201 import CSV_ARCH_COLUMN, CSV_COLUMNS, make_arch_str
from spaces.ops import NB201_PRIMITIVES

K = 4
SHARED_CSV = os.path.join(shared_data_dir() or os.devnull, "nasbench201_full.csv")  # $ISTANAS_SHARED_DATA too


def _nb201_space(s: int = 3, seed: int = 0) -> CompressedSpace:
    cs = cell_space("nb201")
    cfg = RecoveryConfig(lam=1e-5, m=[2, 4, 6], s=s, support="distinct_edges", seed=seed)
    return CompressedSpace(K, 3, cfg, cell_types=cs.cell_types, init_b_std=1.0, edges_per_node=cs.edges_per_node,
                           ragged_s=True)


# ------------------------------------------------------------------------------------------------ super-net
def test_sparse_forward_equals_dense_reference_float64():
    torch.manual_seed(0)
    net = NB201SparseSuperNet(C=4, N=1, num_classes=5).double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    sup = torch.tensor([[[2, -1, -1], [5, 1, -1], [11, 3, 6]]])
    coef = torch.randn(1, 3, 3, dtype=torch.float64) * (sup >= 0)
    W = torch.zeros(1, 6, K, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            k = int(sup[0, i, j])
            if k >= 0:
                W[0, NB201_OFFSETS[i] + k // K, k % K] += coef[0, i, j]
    torch.testing.assert_close(net(x, sup, coef), net.forward_dense(x, W), rtol=0, atol=1e-12)
    # forward_cell = the support of the cell with unit coefficients
    g = nb201_genotype_from_support(sup)
    one = (support_of_genotype(g) >= 0).double()
    torch.testing.assert_close(net.forward_cell(x, g), net(x, support_of_genotype(g), one), rtol=0, atol=0)
    assert g.to_arch_str() == ("|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+"
                               "|avg_pool_3x3~0|nor_conv_3x3~1|avg_pool_3x3~2|")


def test_genotype_round_trip_and_two_ops_on_one_edge_refused():
    g = NB201Genotype.from_arch_str("|none~0|+|skip_connect~0|none~1|+|nor_conv_3x3~0|avg_pool_3x3~1|none~2|")
    assert nb201_genotype_from_support(support_of_genotype(g)) == g
    with pytest.raises(ValueError, match="two ops on edge"):
        nb201_genotype_from_support(torch.tensor([[[0, -1, -1], [0, 1, -1], [0, 4, 8]]]))


# ------------------------------------------------------------------------------------------- compressed space
@pytest.mark.parametrize("s", [1, 2, 3])
def test_support_is_greedy_one_op_per_edge(s):
    space = _nb201_space(s=s, seed=s)
    z = space.recover(warm_start=False)
    sup = space.select_support(z).tolist()[0]
    for i, row in enumerate(sup):
        edges = i + 1
        mag = z[0, i, :edges * K].abs().tolist()
        taken, expect = set(), []
        for _ in range(min(s, edges)):             # brute force: the largest |z| on a not yet used edge
            k = max((k for k in range(edges * K) if k // K not in taken), key=lambda k: (mag[k], -k))
            taken.add(k // K)
            expect.append(k)
        assert row[:len(expect)] == expect
        assert row[len(expect):] == [-1] * (s - len(expect))
    g = nb201_genotype_from_support(torch.tensor([sup]))
    assert sum(op != "none" for _, _, op in g.edges) == sum(min(s, j) for j in (1, 2, 3))


def test_ragged_coefficients_are_eq11_on_the_valid_slots():
    space = _nb201_space(s=3).double()
    z = space.recover(warm_start=False)
    sup = space.select_support(z)
    c = space.coefficients(sup)
    b = space.effective_b()
    for i in range(3):
        ids = [k for k in sup[0, i].tolist() if k >= 0]
        A = space.A[0, i, :space.m_per_node[i]][:, ids]
        zs = z[0, i, ids]
        ref = zs + A.T @ (b[0, i, :space.m_per_node[i]] - A @ zs)          # c = z_S + A_S^T (b - A_S z_S)
        torch.testing.assert_close(c[0, i, :len(ids)], ref, rtol=0, atol=1e-12)
        assert torch.all(c[0, i, len(ids):] == 0)


def test_underfilled_node_is_filled_by_largest_atb_with_a_warning():
    space = CompressedSpace(7, 4, RecoveryConfig(s=2, m=7), init_b_std=1.0)
    z = torch.zeros_like(space.z)
    z[:, :, 3] = 1.0                                  # one non-zero per node, s = 2
    atb = (space.effective_b().detach().double().unsqueeze(-2) @ space.A).squeeze(-2).abs()
    with pytest.warns(RuntimeWarning, match="fewer non-zeros"):
        sup = space.select_support(z)
    for t in range(2):
        for i in range(4):
            n = (2 + i) * 7
            rest = [k for k in range(n) if k != 3]
            want = max(rest, key=lambda k: (float(atb[t, i, k]), -k))
            assert sup[t, i].tolist() == [3, want]
    assert space.underfilled == 1


def test_init_b_std_zero_is_rejected():
    with pytest.raises(ValueError, match="init_b_std"):
        CompressedSpace(7, 4, RecoveryConfig(), init_b_std=0.0)
    for cls in (TwoStageConfig, OneStageConfig):
        cfg = from_dict(cls, preset_data(cls, "small", {"init_b_std": 0.0}))
        with pytest.raises(ConfigError, match="init_b_std"):
            cfg.validate()


def test_nb201_config_errors_name_the_field():
    base = preset_data(TwoStageConfig, "small", {"space": "nb201"})
    with pytest.raises(ConfigError, match="recovery.m"):          # m = 7 > n_1 = 4
        from_dict(TwoStageConfig, base).validate()
    bad = deep_merge(base, {"recovery": {**NB201_RECOVERY, "support": "topk"}})
    with pytest.raises(ConfigError, match="recovery.support"):
        from_dict(TwoStageConfig, bad).validate()
    with pytest.raises(ConfigError, match="space"):
        from_dict(ParamsSearchConfig, {"space": "darts"}).validate()


# ------------------------------------------------------------------------------------- Algorithm 1's halves
def _loaders(n: int = 16, seed: int = 0, batches: int = 1) -> Loaders:
    g = torch.Generator().manual_seed(seed)
    mk = lambda: [(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))
                  for _ in range(batches)]
    return Loaders(train=mk(), valid=mk(), num_classes=10, in_channels=3, image_size=8, name="random")


def _tiny(cls, **kw):
    # the data are passed in (random tensors): the preset's CIFAR-10 is not needed, so no shared data folder either
    d = preset_data(cls, "cpu", {"C": 4, "layers": 1, "epochs": 1, "device": "cpu", "data": {"dataset": "digits"},
                                 **kw})
    return from_dict(cls, d)


def test_twostage_b_update_uses_the_validation_batch():
    """The gradient b's Adam step sees equals an independent gradient on the VALIDATION batch (trained W, the
    starting b, z and S) and differs from the one on the training batch (Algorithm 1, line 5)."""
    from istanas import engine
    from istanas.ista.twostage import TwoStageTask
    torch.manual_seed(0)
    cfg = _tiny(TwoStageConfig, init_b_std=0.5)
    loaders = _loaders()
    task = TwoStageTask(cfg, loaders=loaders)
    b0, z0, sup0 = task.space.b.detach().clone(), task.space.z.clone(), task.support.clone()
    seen = []
    step = task.a_opt.step
    task.a_opt.step = lambda *a, **kw: (seen.append(task.space.b.grad.clone()), step(*a, **kw))[1]
    engine.run(task, epochs=1, progress=False)
    assert len(seen) == 1

    def grad_on(batch):
        x, y = batch
        with torch.no_grad():
            task.space.b.copy_(b0)
        task.model.train()
        coef = task.space.coefficients(sup0, z=z0)
        loss = torch.nn.functional.cross_entropy(task.model(x, task.model.plan(sup0.cpu()), coef), y)
        return torch.autograd.grad(loss, [task.space.b])[0]

    g_valid, g_train = grad_on(loaders.valid[0]), grad_on(loaders.train[0])
    torch.testing.assert_close(seen[0], g_valid, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(seen[0], g_train, rtol=1e-2, atol=1e-6)


# --------------------------------------------------------------------------------- every method on nb201
@pytest.mark.parametrize("method,cls", [("twostage", TwoStageConfig), ("onestage", OneStageConfig),
                                        ("darts", DartsConfig)])
def test_engine_methods_end_with_a_valid_nb201_cell(method, cls):
    torch.manual_seed(0)
    kw = {"search_epochs": 1} if cls is OneStageConfig else {}
    r = run_search(method, _tiny(cls, **kw), data=_loaders(batches=2), progress=False)
    assert isinstance(r.genotype, NB201Genotype)
    assert NB201Genotype.from_arch_str(r.genotype.to_arch_str()) == r.genotype
    if method != "darts":
        assert r.extra["support"] and len(r.extra["support"][0]) == 3


def test_params_picks_the_cell_with_most_parameters():
    cfg = ParamsSearchConfig(C=8, layers=1)
    r = run_search("params", cfg, progress=False)
    assert r.genotype.to_arch_str() == make_arch_str(["nor_conv_3x3"] * 6)
    best = nb201_params(r.genotype, cfg)
    assert r.final["params_m"] * 1e6 == best
    rng = random.Random(0)
    for _ in range(15):                                 # counted directly from each network
        g = sample_nb201(rng)
        if g != r.genotype:
            assert nb201_params(g, cfg) < best


# ------------------------------------------------------------------------------------------ the table
@pytest.fixture(scope="module")
def synthetic_csv(tmp_path_factory):
    """All 15,625 cells with made-up accuracies, in nasbench201_full.csv's columns."""
    path = tmp_path_factory.mktemp("table") / "nb201.csv"
    cols = list(CSV_COLUMNS.values()) + [CSV_ARCH_COLUMN]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for n, ops in enumerate(itertools.product(NB201_PRIMITIVES, repeat=6)):
            w.writerow([(n * 7) % 100, (n * 13) % 100 + 0.5, (n * 3) % 97, make_arch_str(list(ops))])
    return str(path)


def _csv_read(path: str, arch: str) -> dict:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for d, col in CSV_COLUMNS.items():
        vals = [float(r[col]) for r in rows]
        mine = next(float(r[col]) for r in rows if r[CSV_ARCH_COLUMN] == arch)
        out[d] = (mine, 100.0 * sum(v < mine for v in vals) / len(vals))
    return out


@pytest.mark.parametrize("which", ["synthetic", "shared"])
def test_lookup_agrees_with_a_csv_module_read(which, synthetic_csv):
    path = synthetic_csv if which == "synthetic" else SHARED_CSV
    if not os.path.isfile(path):
        pytest.skip("no shared nasbench201_full.csv")
    r = run_search("params", ParamsSearchConfig(C=4, layers=1), table=path, progress=False)
    rec = r.extra["benchmark"]
    ref = _csv_read(path, r.genotype.to_arch_str())
    assert rec["table_cells"] == 15625 and rec["in_table"]
    for d, (acc, pct) in ref.items():
        assert rec[d] == pytest.approx(acc, abs=1e-9)
        assert rec["percentile"][d] == pytest.approx(pct, abs=1e-9)


def test_table_is_opened_only_after_the_search(synthetic_csv, monkeypatch):
    events: list[str] = []
    real_open, real_table = builtins.open, search_mod.open_nb201_table

    def spy_open(file, *a, **kw):
        if os.path.abspath(str(file)) == os.path.abspath(synthetic_csv):
            events.append("open")
        return real_open(file, *a, **kw)

    def spy_table(path):
        events.append("open_nb201_table")
        return real_table(path)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(search_mod, "open_nb201_table", spy_table)
    torch.manual_seed(0)
    r = run_search("twostage", _tiny(TwoStageConfig, epochs=2), data=_loaders(), table=synthetic_csv,
                   on_epoch_end=lambda m, s: events.append(f"epoch {m['epoch']}"), progress=False)
    first = events.index("open_nb201_table")
    before = events[:first]
    assert before[-2:] == ["epoch 1", "epoch 2"]               # the whole search ran before the table was opened
    assert set(before[:-2]) == {"open"}                        # only the header check touched the file before
    assert r.extra["benchmark"]["arch"] == r.genotype.to_arch_str()


def test_table_needs_the_nb201_space(synthetic_csv):
    with pytest.raises(ConfigError, match="table"):
        run_search("random", RandomSearchConfig(space="darts", samples=1), table=synthetic_csv, progress=False)
