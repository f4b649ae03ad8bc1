"""TE-NAS indicators and pruning search: checks against independent computations, small CPU sizes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from istanas.data import DataConfig, image_batch
from istanas.tenas.indicators import (count_distinct_rows, init_weights, linear_regions, ntk_condition_number,
                                      ntk_jacobian, ntk_jacobian_loop, ntk_kappa, rank_combination, tenas_objective)
from istanas.tenas.job import TenasConfig, correlation_study, score_genotype, tenas_search
from istanas.tenas.proxies import DARTS_EDGES, DARTS_GROUPS, NB201_SEARCH_OPS
from istanas.tenas.pruning import dense_rank, genotype_to_mask, round_sig, select_prunes
from spaces.nb201 import arch_str_to_table_key, parse_arch_str, table_key_to_arch_str



@pytest.fixture
def table(shared_file) -> str:
    """Path of zc_nasbench201.json in the shared data folder (the test is skipped where it is absent)."""
    return shared_file("zc_nasbench201.json")


# ------------------------------------------------------------------------------------------------ NTK
def _explicit_kappa(model: nn.Module, x: torch.Tensor) -> float:
    """Independent reference: train-mode forward of the whole batch, one autograd.grad per sample of the summed
    logits w.r.t. every parameter named '*weight*', Gram matrix and eigenvalues in float64 numpy."""
    model.train()
    params = [p for n, p in model.named_parameters() if "weight" in n]
    out = model(x).sum(dim=1)
    rows = []
    for i in range(x.shape[0]):
        g = torch.autograd.grad(out[i], params, retain_graph=True)
        rows.append(torch.cat([t.reshape(-1) for t in g]).double().numpy())
    jac = np.stack(rows)
    eig = np.linalg.eigvalsh(jac @ jac.T)
    return float(eig[-1] / eig[0])


def _mlp(bn: bool) -> nn.Module:
    layers = [nn.Linear(5, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("bn", [False, True])
def test_kappa_matches_explicit_jacobian(bn: bool) -> None:
    torch.manual_seed(0)
    model = _mlp(bn)
    x = torch.randn(6, 5)
    ref = _explicit_kappa(model, x)
    if bn:  # BN batch statistics make the per-sample gradients depend on the whole batch
        model.train()
        running = model[1].running_mean.clone()
    got = ntk_condition_number(model, x, repeats=1, init="none")
    assert got == pytest.approx(ref, rel=1e-4)
    if bn:
        assert torch.equal(model[1].running_mean, running), "running stats must not be updated"


def test_kappa_mean_over_fresh_inits() -> None:
    torch.manual_seed(1)
    model = _mlp(True)
    x = torch.randn(8, 5)
    refs = []
    for r in range(3):
        init_weights(model, "kaiming_fanout", seed=7 + r)
        refs.append(_explicit_kappa(model, x))
    assert len({round(v, 6) for v in refs}) == 3, "fresh initialisations must differ"
    got = ntk_condition_number(model, x, repeats=3, init="kaiming_fanout", seed=7)
    assert got == pytest.approx(float(np.mean(refs)), rel=1e-4)


def test_kaiming_fanout_init_statistics() -> None:
    conv = nn.Conv2d(8, 64, 3, bias=True)
    init_weights(conv, "kaiming_fanout", seed=0)
    fan_out = 64 * 9
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0


def test_ntk_jacobian_conv_bn_matches_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    x = torch.randn(5, 3, 6, 6)
    model.train()
    params = [p for n, p in model.named_parameters() if "weight" in n]
    out = model(x).sum(dim=1)
    ref = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[i], params, retain_graph=True)])
                       for i in range(5)])
    for chunk in (None, 2):
        got = ntk_jacobian(model, x, chunk_size=chunk)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)


def _conv_bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, affine=False,
                                                                                   track_running_stats=False),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def _frozen_reference_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Independent reference for ``bn_coupling="frozen"``: hand-written forward of ``_conv_bn_net`` in which each
    BN normalises with the batch's mean / biased variance computed here, as constants (detached); one
    autograd.grad per *single sample* of its summed logits w.r.t. conv1, bn1 gamma, conv2 and linear weights."""
    conv1, bn1, _, conv2, bn2, _, _, _, lin = model
    with torch.no_grad():
        z1 = conv1(x)
        m1, v1 = z1.mean((0, 2, 3)), z1.var((0, 2, 3), unbiased=False)
        z2 = conv2(torch.relu((z1 - m1[:, None, None]) / torch.sqrt(v1[:, None, None] + bn1.eps)
                              * bn1.weight[:, None, None] + bn1.bias[:, None, None]))
        m2, v2 = z2.mean((0, 2, 3)), z2.var((0, 2, 3), unbiased=False)
    params = [conv1.weight, bn1.weight, conv2.weight, lin.weight]
    rows = []
    for i in range(x.shape[0]):
        a = conv1(x[i:i + 1])
        a = torch.relu((a - m1[:, None, None]) / torch.sqrt(v1[:, None, None] + bn1.eps) * bn1.weight[:, None, None]
                       + bn1.bias[:, None, None])
        a = conv2(a)
        a = torch.relu((a - m2[:, None, None]) / torch.sqrt(v2[:, None, None] + bn2.eps))
        out = lin(a.mean((2, 3))).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)]))
    return torch.stack(rows)


def test_frozen_bn_jacobian_matches_per_sample_reference() -> None:
    torch.manual_seed(3)
    model = _conv_bn_net()
    x = torch.randn(6, 3, 6, 6)
    model.train()
    with torch.no_grad():
        train_out = model(x)
        model[1].running_mean.fill_(0.3)  # must be ignored, then restored
    ref = _frozen_reference_jacobian(model, x)
    for chunk in (None, 4):
        got = ntk_jacobian(model, x, bn_coupling="frozen", chunk_size=chunk)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)
    loop = ntk_jacobian_loop(model, x, bn_coupling="frozen")
    assert torch.allclose(loop, ref, atol=1e-5, rtol=1e-4)
    # state restored: train mode, the untouched running buffers, no buffer on the stat-less BN
    assert model.training and all(m.training for m in model.modules())
    assert torch.all(model[1].running_mean == 0.3) and model[4].running_mean is None
    with torch.no_grad():
        assert torch.allclose(model(x), train_out, atol=1e-6)  # (this forward updates the running stats)
    # the frozen kernel really is a different one: the coupled kappa differs from it
    coupled = float(ntk_kappa(model, x))
    frozen = float(ntk_kappa(model, x, bn_coupling="frozen"))
    assert abs(coupled - frozen) > 1e-3 * coupled


def test_no_coupling_uses_exact_per_sample_path() -> None:
    """Without BN (or with eval-mode BN) the per-sample path is exact: compare with an explicit loop."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(5, 3, 5, 5)
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.eval()
    params = [p for n, p in model.named_parameters() if "weight" in n]
    ref = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(model(x[i:i + 1]).sum(), params)])
                       for i in range(5)])
    got = ntk_jacobian(model, x, train_mode=False)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="bn_coupling"):
        ntk_jacobian(model, x, bn_coupling="none")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("coupling", ["batch", "frozen"])
def test_ntk_jacobian_cuda_matches_cpu(coupling: str) -> None:
    torch.manual_seed(5)
    model = _conv_bn_net()
    x = torch.randn(6, 3, 6, 6)
    ref = _frozen_reference_jacobian(model, x) if coupling == "frozen" else ntk_jacobian_loop(model, x)
    got = ntk_jacobian(model.cuda(), x.cuda(), bn_coupling=coupling)
    assert got.is_cuda
    assert torch.allclose(got.cpu(), ref, atol=1e-4, rtol=1e-3)


# ------------------------------------------------------------------------------------------------ regions
def test_linear_regions_one_hidden_layer_1d_analytic() -> None:
    rng = np.random.default_rng(0)
    hidden = 12
    w = rng.choice([-1.0, 1.0], hidden) * rng.uniform(0.5, 2.0, hidden)
    knots = np.concatenate([rng.uniform(-0.9, 0.9, hidden - 3), [1.7, -2.5, 3.0]])  # last 3 outside [-1, 1]
    b = -w * knots  # unit j switches at x = knots[j]
    model = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(w[:, None]))
        model[0].bias.copy_(torch.tensor(b))
    xs = torch.linspace(-1.0, 1.0, 20001)[:, None]
    # analytic: in 1-D every knot inside the sampled interval splits it once -> (#knots inside) + 1 regions
    expected = int(np.sum(np.abs(knots) < 1.0)) + 1
    assert linear_regions(model, xs, repeats=1, init="none", chunk=None) == expected
    # sparse samples: only the intervals that contain a sample count
    few = torch.tensor([[-0.95], [-0.2], [-0.19], [0.5]])
    occupied = len(np.unique(np.searchsorted(np.sort(knots), few.numpy()[:, 0])))
    assert linear_regions(model, few, repeats=1, init="none", chunk=None) == occupied


def test_count_distinct_rows_matches_hamming_formula() -> None:
    rng = np.random.default_rng(3)
    codes = rng.random((300, 6)) < 0.3
    a = codes.astype(np.float64)
    ham = a @ (1 - a).T + (1 - a) @ a.T  # released formula: pairwise Hamming distances
    expected = float(np.sum(1.0 / (ham == 0).sum(axis=1)))
    assert int(count_distinct_rows(torch.from_numpy(codes))) == round(expected)


# ------------------------------------------------------------------------------------------------ combined score
def test_tenas_objective_and_rank_combination() -> None:
    assert tenas_objective(4.0, 100.0) == pytest.approx(math.log(100.0) - math.log(4.0))
    assert tenas_objective(0.0, 0.0) == 0.0  # both floored at 1e-12
    assert tenas_objective(2.0, 50.0) > tenas_objective(20.0, 50.0) > tenas_objective(20.0, 5.0)
    # kappa ascending ranks (3, 1, 2), regions descending ranks (3, 1, 2): the second architecture is best
    assert rank_combination([3.0, 1.0, 2.0], [10.0, 30.0, 20.0]).tolist() == [-6.0, -2.0, -4.0]
    # ties share the average rank
    assert rank_combination([1.0, 1.0], [5.0, 7.0]).tolist() == [-3.5, -2.5]


# ------------------------------------------------------------------------------------------------ table mapping
def test_table_key_mapping_examples() -> None:
    assert table_key_to_arch_str("(0, 2, 3, 2, 3, 1)") == (
        "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|")
    assert table_key_to_arch_str("(4, 0, 4, 1, 2, 0)") == (
        "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_3x3~1|skip_connect~2|")
    for key in ("(0, 2, 3, 2, 3, 1)", "(4, 0, 4, 1, 2, 0)", "(1, 1, 1, 1, 1, 1)"):
        assert arch_str_to_table_key(table_key_to_arch_str(key)) == key
    with pytest.raises(ValueError, match="key"):
        table_key_to_arch_str("(0, 9, 0, 0, 0, 0)")
    with pytest.raises(ValueError, match="arch"):
        parse_arch_str("|nor_conv_3x3~0|+|nor_conv_3x3~1|")


def _output_reachable(arch: str) -> bool:
    reach = {0}
    for op, frm, to in parse_arch_str(arch):  # edges are listed by destination node
        if op != "none" and frm in reach:
            reach.add(to)
    return 3 in reach


def test_table_mapping_against_accuracy_and_params(table: str) -> None:
    """Physical checks of the documented key order: a cell whose output is cut off from its input trains to
    chance (10 % on CIFAR-10) and every connected cell does better; #params depends only on the numbers of
    3x3 and 1x1 convolutions, 3x3 costing more."""
    with open(table, encoding="utf-8") as f:
        data = json.load(f)["cifar10"]
    params: dict[tuple[int, int], set] = {}
    for key, rec in data.items():
        arch = table_key_to_arch_str(key)
        acc = rec["val_accuracy"]
        assert (acc <= 10.5) == (not _output_reachable(arch)), (key, arch, acc)
        ops = [op for op, _, _ in parse_arch_str(arch)]
        params.setdefault((ops.count("nor_conv_3x3"), ops.count("nor_conv_1x1")), set()).add(
            round(rec["params"]["score"], 6))
    assert all(len(v) == 1 for v in params.values())
    p = {k: next(iter(v)) for k, v in params.items()}
    assert p[(1, 0)] - p[(0, 0)] > p[(0, 1)] - p[(0, 0)] > 0


# ------------------------------------------------------------------------------------------------ ranking
def test_round_sig_and_dense_rank() -> None:
    np.testing.assert_allclose(round_sig(np.array([0.012345, -123.456, 0.0, 9.9996])), [0.0123, -123.0, 0.0, 10.0])
    assert dense_rank(np.array([0.3, 0.1, 0.3, 0.2]), descending=True).tolist() == [0, 2, 0, 1]
    assert dense_rank(np.array([0.3, 0.1, 0.3, 0.2]), descending=False).tolist() == [2, 0, 2, 1]


def test_select_prunes_by_hand() -> None:
    # edge A: ops 0, 1, 2; edge B: ops 3, 4
    groups = ["A", "A", "A", "B", "B"]
    d_kappa = np.array([0.30, -0.10, 0.05, 0.20, 0.20])   # desc ranks: 0, 3, 2, 1, 1
    d_regions = np.array([0.50, 0.00, 0.10, 0.02, 0.01])  # asc ranks:  4, 0, 2, 3, 1
    # sums: 4, 3, 4, 4, 2 -> A prunes index 1 (sum 3); B prunes index 4 (sum 2)
    assert select_prunes(groups, d_kappa, d_regions, lambda g, n: 1) == [1, 4]
    # two per edge on A: index 1, then the tie 0/2 (sum 4) goes to the earlier one in the kappa-sorted list (0)
    assert select_prunes(groups, d_kappa, d_regions, lambda g, n: n - 1) == [0, 1, 4]


# ------------------------------------------------------------------------------------------------ search
def _tiny_cfg(**kw) -> TenasConfig:
    base = dict(space="nb201", input_size=8, ntk_batch=8, lr_samples=200, lr_batch=100, repeats=1, seed=0,
                num_classes=10)
    base.update(kw)
    return TenasConfig(**base)


@pytest.fixture(scope="module")
def small_images() -> torch.Tensor:
    return image_batch(DataConfig(image_size=8), 64)


@pytest.mark.parametrize("coupling", ["batch", "frozen"])
def test_nb201_pruning_one_op_per_edge_and_deterministic(small_images: torch.Tensor, coupling: str) -> None:
    seen = []
    out1 = tenas_search(_tiny_cfg(bn_coupling=coupling), small_images, report=seen.append)
    out2 = tenas_search(_tiny_cfg(bn_coupling=coupling), small_images)
    edges = parse_arch_str(out1["arch"])
    assert len(edges) == 6 and all(op in NB201_SEARCH_OPS for op, _, _ in edges)
    assert [r["candidates"] for r in out1["rounds"]] == [24, 18, 12]
    assert all(len(r["pruned"]) == 6 for r in out1["rounds"])
    assert len(seen) == 3 and "pruned" not in seen[0]
    assert out1["arch"] == out2["arch"]
    assert [[p["d_kappa"] for p in r["pruned"]] for r in out1["rounds"]] == \
           [[p["d_kappa"] for p in r["pruned"]] for r in out2["rounds"]]
    assert out1["genotype"].to_arch_str() == out1["arch"]
    assert out1["config"]["bn_coupling"] == coupling


def test_nb201_pruning_released_init_mode_with_table(table: str, small_images: torch.Tensor) -> None:
    out = tenas_search(_tiny_cfg(init="released", prune_number=3, table_path=table, correlation_archs=4),
                       small_images)
    assert [r["candidates"] for r in out["rounds"]] == [24]
    assert all(op in NB201_SEARCH_OPS for op, _, _ in parse_arch_str(out["arch"]))
    with open(table, encoding="utf-8") as f:
        raw = json.load(f)["cifar10"]
    rec = raw.get(arch_str_to_table_key(out["arch"]))
    assert out["in_table"] == (rec is not None)
    assert out["accuracy"] == (rec["val_accuracy"] if rec is not None else None)
    assert out["correlations"]["num_archs"] == 4


def test_darts_pruning_two_inputs_per_node(small_images: torch.Tensor) -> None:
    # two candidate ops keep the CPU cost small: one op round (56 candidates), then the edge phase
    cfg = _tiny_cfg(space="darts", ntk_batch=6, lr_samples=100, ops=["skip_connect", "sep_conv_3x3"])
    out = tenas_search(cfg, small_images)
    assert [r["candidates"] for r in out["rounds"]] == [56, 3, 4, 5, 3, 4, 5]
    g = out["genotype"]
    for cell in (g.normal, g.reduce):
        assert len(cell) == 8
        for node in range(4):
            (op_a, in_a), (op_b, in_b) = cell[2 * node], cell[2 * node + 1]
            assert in_a != in_b and 0 <= min(in_a, in_b) and max(in_a, in_b) < node + 2
            assert {op_a, op_b} <= {"skip_connect", "sep_conv_3x3"}
    phases = [r["phase"] for r in out["rounds"]]
    assert phases == ["ops"] + ["edges"] * 6  # nodes 3, 4, 5 of both cells


def test_genotype_mask_mapping() -> None:
    space, mask = genotype_to_mask("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|"
                                   "nor_conv_3x3~2|")
    assert space == "nb201"
    expect = [["nor_conv_3x3"], [], ["skip_connect"], ["avg_pool_3x3"], ["nor_conv_1x1"], ["nor_conv_3x3"]]
    assert [[NB201_SEARCH_OPS[i] for i in np.flatnonzero(mask[0, e])] for e in range(6)] == expect
    assert DARTS_GROUPS == ((0, 2), (2, 5), (5, 9), (9, 14)) and DARTS_EDGES[5] == (0, 2)


def test_score_genotype_repeatable(small_images: torch.Tensor) -> None:
    cfg = _tiny_cfg(repeats=2)
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"
    a = score_genotype(arch, small_images, cfg)
    b = score_genotype(arch, small_images, cfg)
    assert a == b and set(a) == {"ntk_cond", "linear_regions"}
    assert a["ntk_cond"] > 1.0 and 1.0 <= a["linear_regions"] <= cfg.lr_samples


def test_correlation_study_small(table: str, small_images: torch.Tensor) -> None:
    out = correlation_study(table, small_images, _tiny_cfg(), num_archs=6, seed=0)
    assert out["num_archs"] == 6 and len(out["archs"]) == 6
    for stats in (out["kendall_tau"], out["spearman_rho"]):
        assert {"ntk_cond", "linear_regions", "tenas_rank", "tenas_log_ratio", "params", "flops", "combined"} <= set(stats)
        assert all(np.isnan(v) or -1.0 <= v <= 1.0 for v in stats.values())


def test_config_validation_names_field(tmp_path) -> None:
    with pytest.raises(ValueError, match="space"):
        TenasConfig(space="resnet").validate()
    with pytest.raises(ValueError, match="ntk_batch"):
        TenasConfig(ntk_batch=1).validate()
    with pytest.raises(ValueError, match="table_path"):
        TenasConfig(table_path=str(tmp_path / "missing.json")).validate()
    with pytest.raises(ValueError, match="init"):
        TenasConfig(init="xavier").validate()
    with pytest.raises(ValueError, match="bn_coupling"):
        TenasConfig(bn_coupling="none").validate()
    assert TenasConfig(bn_coupling="frozen").resolved().jac_chunk == 0
    cfg = TenasConfig(space="darts", dataset="imagenet").resolved()
    assert (cfg.ntk_batch, cfg.prune_number, cfg.num_classes) == (24, 2, 1000)
    with pytest.raises(ValueError, match="images"):
        tenas_search(_tiny_cfg(), torch.zeros(4, 5, 8, 8))


# ------------------------------------------------------------------------------------------------------- CLI
_TINY_SETS = ["--set", "tenas.input_size=8", "--set", "tenas.ntk_batch=8", "--set", "tenas.lr_samples=200",
              "--set", "tenas.lr_batch=100", "--set", "num_images=32"]


def test_cli_tenas_nb201_writes_genotype_and_table_lookup(tmp_path, table: str, repo_root: str) -> None:
    import os
    import subprocess
    import sys

    from spaces.genotype import NB201Genotype

    out = tmp_path / "tn"
    cmd = [sys.executable, os.path.join(repo_root, "launch/search.py"), "--method", "tenas", "--space", "nb201", "--table", table,
           "--out", str(out), "--no-progress", *_TINY_SETS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "result.json").read_text())
    g = NB201Genotype.from_json((out / "genotype.json").read_text())
    assert all(len(node) == i + 1 for i, node in enumerate(g.nodes))      # one op on every edge
    assert res["arch"] == g.to_arch_str()
    # the lookup against the table read independently here
    tab = json.loads(open(table).read())["cifar10"]
    key = arch_str_to_table_key(g.to_arch_str())
    assert res["in_table"] == (key in tab)
    if key in tab:
        assert res["accuracy"] == pytest.approx(tab[key]["val_accuracy"]["score"] if isinstance(
            tab[key]["val_accuracy"], dict) else tab[key]["val_accuracy"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(res["rounds"])
    # a finished search is never overwritten
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r2.returncode == 2 and "finished TE-NAS search" in r2.stderr


@pytest.mark.parametrize("bad, msg", [
    (["--space", "resnet"], "invalid choice"),
    (["--epochs", "3"], "trains nothing"),
    (["--set", "num_images=1"], "num_images"),
    (["--set", "tenas.repeats=0"], "tenas.repeats"),
    (["--table", "/nonexistent.json"], "table_path"),
])
def test_cli_tenas_rejects_bad_input(tmp_path, bad: list, msg: str, repo_root: str) -> None:
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, os.path.join(repo_root, "launch/search.py"), "--method", "tenas", "--out", str(tmp_path / "x"), *bad],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert not (tmp_path / "x" / "result.json").exists()
