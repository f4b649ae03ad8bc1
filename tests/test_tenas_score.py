"""TE-NAS score components, the combined score, the pruning's delta signs, the benchmark table, bad input.

Each component is checked against an independent computation (explicit Hamming distances, a hand-written
forward with batch statistics, a direct CSV read, parameter counts of the live modules).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from istanas.config import ConfigError
from istanas.data import DataConfig, image_batch
from istanas.methods import get_method
from istanas.tenas import job as tenas_job
from istanas.tenas.indicators import (linear_regions_once, live_param_count, log_rank_combination, naswot_kernel,
                                      naswot_score)
from istanas.tenas.job import TENAS_PRESETS, TenasConfig, TenasJobConfig, check_table_cells, tenas_search
from istanas.tenas.proxies import NB201_SEARCH_OPS, NB201SuperNet
from istanas.tenas.pruning import Measurer, genotype_to_mask
from istanas.tenas.score import CellScorer, prefilter
from spaces.networks import build_network
from spaces.profile import count_parameters

ALL_CONV = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def _tiny(**kw) -> TenasConfig:
    base = dict(space="nb201", input_size=8, ntk_batch=8, lr_samples=200, lr_batch=100, repeats=1, seed=0,
                num_classes=10, naswot_batch=16, naswot_width=4, naswot_cells=1)
    base.update(kw)
    return TenasConfig(**base)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return image_batch(DataConfig(image_size=8), 64)


# ------------------------------------------------------------------------------------------------ NASWOT
def _two_relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))


def test_naswot_kernel_is_units_minus_hamming() -> None:
    torch.manual_seed(1)
    codes = torch.rand(7, 11) > 0.5
    k = naswot_kernel(codes)
    for i in range(7):
        for j in range(7):
            ham = int((codes[i] != codes[j]).sum())
            assert k[i, j].item() == 11 - ham


def test_naswot_score_matches_explicit_codes_of_all_relus() -> None:
    net = _two_relu_mlp()
    x = torch.randn(12, 3)
    with torch.no_grad():  # hand-written forward: the codes of both ReLUs
        h1 = torch.relu(net[0](x))
        h2 = torch.relu(net[2](h1))
    c = torch.cat([h1 > 0, h2 > 0], dim=1).double()
    ham = (c[:, None, :] != c[None, :, :]).sum(-1).double()
    expect = torch.linalg.slogdet(c.shape[1] - ham)
    got = naswot_score(net, x)
    if expect[0] > 0:
        assert got.item() == pytest.approx(expect[1].item(), rel=1e-9)
    else:
        assert got.item() == -math.inf


def test_synflow_is_layers_times_path_sum_without_bn() -> None:
    """A bias-free ReLU MLP with positive weights and input is linear and 1-homogeneous in each layer's weights, so
    each layer contributes sum |theta dR/dtheta| = R (Euler): S = 3 R with R = 1^T |W3| |W2| |W1| 1 (numpy); the
    BN in the middle is dropped (with it R would differ); the model itself is left untouched."""
    from istanas.tenas.indicators import synflow_score

    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5, bias=False),
                        nn.ReLU(), nn.Linear(5, 3, bias=False))
    with torch.no_grad():
        net[1].weight.uniform_(2.0, 3.0)
    before = [p.clone() for p in net.parameters()]
    w = [np.abs(net[i].weight.detach().double().numpy()) for i in (0, 3, 5)]
    r = float(np.ones(3) @ w[2] @ w[1] @ w[0] @ np.ones(4))
    got = synflow_score(net, (4,))
    assert got.dtype == torch.float64 and got.item() == pytest.approx(3 * r, rel=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


# ------------------------------------------------------------------------------------- linear regions
def test_regions_count_every_relu_not_only_the_last() -> None:
    net = _two_relu_mlp()
    x = torch.randn(400, 3)
    with torch.no_grad():
        h1 = torch.relu(net[0](x))
        h2 = torch.relu(net[2](h1))
    both = torch.unique(torch.cat([h1 > 0, h2 > 0], dim=1).to(torch.uint8), dim=0).shape[0]
    last = torch.unique((h2 > 0).to(torch.uint8), dim=0).shape[0]
    assert both != last  # the example tells the two apart
    assert int(linear_regions_once(net, x, chunk=None)) == both


def test_regions_use_batch_statistics_of_bn() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 2))
    net[1].running_mean.fill_(3.0)
    net[1].running_var.fill_(0.01)
    x = torch.randn(300, 1, 3, 3)
    with torch.no_grad():
        z = net[0](x)
        zt = (z - z.mean((0, 2, 3), keepdim=True)) / torch.sqrt(z.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
        ze = (z - 3.0) / math.sqrt(0.01 + 1e-5)
    train = torch.unique((zt > 0).reshape(300, -1).to(torch.uint8), dim=0).shape[0]
    evald = torch.unique((ze > 0).reshape(300, -1).to(torch.uint8), dim=0).shape[0]
    assert train != evald
    assert int(linear_regions_once(net, x, chunk=None)) == train
    assert float(net[1].running_mean[0]) == 3.0  # the running buffers are left alone


# --------------------------------------------------------------------------------- log-rank, params
def test_log_rank_combination_by_hand() -> None:
    a = [3.0, 1.0, 2.0]          # higher better: ranks 3, 1, 2
    b = [10.0, 30.0, 20.0]       # lower better: ranks 3, 1, 2
    got = log_rank_combination([a, b], [True, False])
    expect = [2 * math.log(3 / 3), 2 * math.log(1 / 3), 2 * math.log(2 / 3)]
    assert np.allclose(got, expect)
    # ties share the average rank; NaN counts as worst
    got = log_rank_combination([[1.0, 1.0, float("nan")]], [True])
    assert np.allclose(got, [math.log(2.5 / 3)] * 2 + [math.log(1 / 3)])


def test_live_param_count_counts_only_live_ops() -> None:
    net = NB201SuperNet(C=3, num_classes=10, stages=3)
    _, mask = genotype_to_mask(ALL_CONV)
    mask[0, 0] = True  # edge 1<-0: all four ops live
    net.set_mask(mask)
    expect = 0
    for layer in net.layers:
        if hasattr(layer, "edges"):
            for e, edge in enumerate(layer.edges):
                for i, op in enumerate(edge.ops):
                    if mask[0, e, i]:
                        expect += sum(p.numel() for p in op.parameters())
        else:
            expect += sum(p.numel() for p in layer.parameters())
    expect += sum(p.numel() for m in (net.stem, net.lastact, net.classifier) for p in m.parameters())
    assert live_param_count(net, torch.zeros(1, 3, 8, 8)) == expect
    assert count_parameters(net) * 1e6 > expect  # the dead ops exist but are not counted


def test_prefilter_by_params_keeps_the_largest_cells(images: torch.Tensor) -> None:
    cells = [ALL_CONV, "|skip_connect~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|",
             "|nor_conv_1x1~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
             "|nor_conv_1x1~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|none~2|"]
    cfg = _tiny(score="combined", components=["params"]).resolved()
    sizes = [count_parameters(build_network(c, C=4, N=1, num_classes=10)) for c in cells]
    want = [cells[i] for i in np.argsort(sizes)[::-1][:2]]
    assert prefilter(cells, images, cfg, 2) == want
    with pytest.raises(ValueError, match="k:"):
        prefilter(cells, images, cfg, 0)


def test_cell_scorer_components_agree_with_direct_calls(images: torch.Tensor) -> None:
    cfg = _tiny().resolved()
    sc = CellScorer(cfg, images)
    got = sc.score(ALL_CONV)
    net = build_network(ALL_CONV, C=4, N=1, num_classes=10)
    assert got["params"] == pytest.approx(count_parameters(net))
    k, r = Measurer(cfg, images).score(genotype_to_mask(ALL_CONV)[1])
    assert (got["ntk_cond"], got["linear_regions"]) == (k, r)
    assert math.isfinite(got["naswot"]) and got["flops"] > 0


# ------------------------------------------------------------------------------ pruning delta signs
@pytest.mark.parametrize("init", ["released", "intended"])
def test_pruning_deltas_are_parent_minus_child_over_parent(images: torch.Tensor, init: str) -> None:
    cfg = _tiny(init=init, repeats=2, bn_coupling="frozen").resolved()
    meas = Measurer(cfg, images)
    parent = np.ones((1, 6, len(NB201_SEARCH_OPS)), dtype=bool)
    children = []
    for o in range(len(NB201_SEARCH_OPS)):
        c = parent.copy()
        c[0, 0, o] = False
        children.append(c)
    d_k, d_r, _, _ = meas.deltas(0, parent, children)
    fresh = Measurer(cfg, images)  # the same seeded units, measured one by one here
    ek, er = np.zeros((2, 4)), np.zeros((2, 4))
    for r in range(2):
        for c, child in enumerate(children):
            ki, kb, li, lb = fresh.units(0, r, c)
            kp, kc = float(fresh.kappa(parent, ki, kb)), float(fresh.kappa(child, ki, kb))
            rp, rc = float(fresh.regions(parent, li, lb)), float(fresh.regions(child, li, lb))
            ek[r, c], er[r, c] = round((kp - kc) / kp, 3), round((rp - rc) / rp, 3)
    assert np.allclose(d_k, ek.mean(0)) and np.allclose(d_r, er.mean(0))
    assert np.abs(d_k).max() > 0 and np.abs(d_r).max() > 0


def test_child_components_of_every_kind_match_direct_calls_on_the_masked_proxy(images: torch.Tensor) -> None:
    """Every per-child component of the pruning (not only naswot / params / flops) on a fresh proxy with the
    child's mask, the same seeded init and batch; and a combined search over all of them runs to one cell."""
    import copy

    from istanas.tenas.aznas import AZ_COMPONENTS, aznas_scores
    from istanas.tenas.indicators import init_weights, synflow_score
    from istanas.tenas.pruning import _key_seed

    cfg = _tiny(repeats=2, bn_coupling="frozen").resolved()
    meas = Measurer(cfg, images)
    parent = np.ones((1, 6, len(NB201_SEARCH_OPS)), dtype=bool)
    child = parent.copy()
    child[0, 2, 1] = False
    names = ["naswot", "synflow", *AZ_COMPONENTS]
    got = meas.child_components(0, [parent, child], names)
    fresh = Measurer(cfg, images)
    net = copy.deepcopy(fresh.ntk_net)
    for c, m in enumerate([parent, child]):
        net.set_mask(m)
        want: dict[str, list] = {n: [] for n in names}
        for r in range(2):
            ki, kb, _, _ = fresh.units(0, r, c)
            init_weights(net, fresh.ntk_init, _key_seed(cfg.seed, 2, *ki))
            x = fresh._data(0, kb)
            if r == 0:
                want["synflow"].append(float(synflow_score(net, (3, 8, 8))))
            want["naswot"].append(float(naswot_score(net, x)))
            az = aznas_scores(net, x, seed=_key_seed(cfg.seed, 6, *kb))
            for n in AZ_COMPONENTS:
                want[n].append(float(az[n]))
        for n in names:
            assert got[n][c] == pytest.approx(np.mean(want[n]), rel=1e-5), (n, c)
    assert all(got[n][0] != got[n][1] for n in names)  # the mask reaches every component
    out = tenas_search(_tiny(score="combined", components=["ntk_cond", "linear_regions", "naswot", "synflow",
                                                           "flops", *AZ_COMPONENTS]), images)
    assert out["arch"].count("~") == 6 and "none" not in out["arch"].split("+")[0]


def test_combined_pruning_by_params_keeps_conv3x3(images: torch.Tensor) -> None:
    out = tenas_search(_tiny(score="combined", components=["params"]), images)
    assert out["arch"] == ALL_CONV
    assert [r["candidates"] for r in out["rounds"]] == [24, 18, 12]


# ------------------------------------------------------------------------------------ defaults
def test_defaults_are_the_released_settings() -> None:
    cfg = TenasConfig().resolved()
    assert (cfg.bn_coupling, cfg.init, cfg.ntk_batch, cfg.lr_samples, cfg.repeats, cfg.augment) == \
           ("batch", "released", 72, 3000, 3, True)
    m = get_method("tenas")
    assert m.default_preset == "paper"
    paper = TENAS_PRESETS["paper"]
    assert paper["num_images"] is None and paper["data"]["dataset"] == "cifar10" and paper["tenas"] == {}


def test_paper_preset_falls_back_to_digits_with_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(tenas_job, "default_root", lambda dataset: None)
    cfg = TenasJobConfig(data=DataConfig(dataset="cifar10"), num_images=None, data_fallback=True)
    cfg.validate()
    err = capsys.readouterr().err.strip().splitlines()
    assert cfg.data.dataset == "digits" and len(err) == 1 and "smoke run" in err[0]


# ------------------------------------------------------------------------------ table and bad input
def test_search_result_benchmark_matches_direct_csv_read(shared_file, images: torch.Tensor) -> None:
    path = shared_file("nasbench201_full.csv")
    out = tenas_search(_tiny(table_path=path, prune_number=3), images)
    with open(path, newline="") as f:
        rows = {r["ArchitectureString"]: r for r in csv.DictReader(f)}
    row = rows[out["arch"]]
    b = out["benchmark"]
    assert b["cifar10"] == pytest.approx(float(row["CIFAR10TestAccuracy200Epochs"]))
    assert b["cifar100"] == pytest.approx(float(row["CIFAR100TestAccuracy200Epochs"]))
    assert b["ImageNet16-120"] == pytest.approx(float(row["ImageNetTestAccuracy200Epochs"]))
    below = sum(float(r["CIFAR10TestAccuracy200Epochs"]) < b["cifar10"] for r in rows.values())
    assert b["percentile"]["cifar10"] == pytest.approx(100.0 * below / len(rows))
    assert out["accuracy"] == b["cifar10"] and b["table_cells"] == 15625


def test_bad_input_one_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="score"):
        TenasConfig(score="azsum").validate()
    with pytest.raises(ConfigError, match="components"):
        TenasConfig(score="combined", components=["zico"]).validate()
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("acc,arch\n93.1,x\n")
    with pytest.raises(ConfigError, match="table_path"):
        TenasConfig(table_path=str(bad_csv)).validate()
    bad_rows = tmp_path / "rows.csv"
    bad_rows.write_text("CIFAR10TestAccuracy200Epochs,CIFAR100TestAccuracy200Epochs,ImageNetTestAccuracy200Epochs,"
                        "ArchitectureString\n93.1,70.0,40.0,|conv~0|+|x~0|y~1|+|a~0|b~1|c~2|\n")
    with pytest.raises(ConfigError, match="table_path.*line 2"):
        TenasConfig(table_path=str(bad_rows)).validate()
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({d: {"(9, 9, 9, 9, 9, 9)": {"val_accuracy": 90.0}}
                                    for d in ("cifar10", "cifar100", "ImageNet16-120")}))
    with pytest.raises(ValueError, match="key"):
        check_table_cells(str(bad_json))
    shape_json = tmp_path / "shape.json"
    shape_json.write_text(json.dumps({"cifar10": [1, 2]}))
    with pytest.raises(ConfigError, match="table_path"):
        TenasConfig(table_path=str(shape_json)).validate()


def test_measurer_regions_use_every_relu_with_batch_stats_on_the_proxy(images: torch.Tensor) -> None:
    """The search's region count (``Measurer.regions``) against a plain train-mode forward of a copy of the
    linear-region proxy with hooks on every ReLU, chunk by chunk (one BN batch each), distinct codes by numpy."""
    import copy

    cfg = _tiny(lr_samples=200, lr_batch=100).resolved()
    meas = Measurer(cfg, images)
    mask = np.ones((1, 6, len(NB201_SEARCH_OPS)), dtype=bool)
    _, _, li, lb = meas.units(0, 0, 0)
    got = int(meas.regions(mask, li, lb))
    net, x = copy.deepcopy(meas.lr_net), meas._data(1, lb)

    def count(train: bool, last_only: bool = False) -> int:
        rows, rec = [], []
        relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
        hs = [m.register_forward_hook(lambda m, i, o: rec.append((o > 0).reshape(o.shape[0], -1).numpy()))
              for m in (relus[-1:] if last_only else relus)]
        net.train(train)
        with torch.no_grad():
            for s in range(0, x.shape[0], cfg.lr_batch):
                rec.clear()
                net(x[s:s + cfg.lr_batch])
                rows.append(np.concatenate(rec, axis=1))
        for h in hs:
            h.remove()
        return len(np.unique(np.concatenate(rows), axis=0))

    expect = count(True)
    assert got == expect
    assert count(False) != expect and count(True, last_only=True) != expect  # the check tells them apart


# ------------------------------------------------------------------ the sweep's objective: rank vs a reference
def test_reference_rank_objective_by_hand_and_as_rank_combination() -> None:
    from istanas.tenas.indicators import rank_combination
    from istanas.tenas.score import reference_rank_objective

    got = reference_rank_objective(2.5, 35.0, [1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0])
    # kappa: 1 and 2 are lower -> rank 3; regions: only 40 is higher -> rank 2; 1 - (3 + 2 - 2) / (2 * 4)
    assert got == {"rank_kappa": 3.0, "rank_regions": 2.0, "objective": pytest.approx(0.625)}
    rng = np.random.default_rng(0)
    ref_k, ref_r = rng.integers(1, 9, 20).astype(float), rng.integers(1, 9, 20).astype(float)  # with ties
    cells = [(float(k), float(r)) for k, r in zip(rng.integers(1, 9, 30), rng.integers(1, 9, 30))]
    obj = [reference_rank_objective(k, r, ref_k, ref_r)["objective"] for k, r in cells]
    # independent: the paper's rank sum (scipy average ranks) over the reference plus the cell
    ranks = [-rank_combination(np.append(ref_k, k), np.append(ref_r, r))[-1] for k, r in cells]
    assert np.allclose(obj, [1 - (s - 2) / 40 for s in ranks])
    for i in range(30):  # every pair is ordered as the rank combination orders it
        for j in range(30):
            assert (obj[i] > obj[j]) == (ranks[i] < ranks[j])


def test_reference_objective_of_a_cell_matches_scoring_it_with_the_sample(images: torch.Tensor) -> None:
    from istanas.tenas.indicators import rank_combination
    from istanas.tenas.score import reference_cells, reference_objective, score_cells

    cfg = _tiny(reference_cells=6, seed=3).resolved()
    got = reference_objective(ALL_CONV, images, cfg)
    again = reference_objective(ALL_CONV, images, cfg)  # the cached reference gives the same value
    assert got == again
    cells = reference_cells("nb201", 6, 3)
    assert cells == reference_cells("nb201", 6, 3) and len(set(cells)) > 1
    cols = score_cells(cells + [ALL_CONV], images, cfg, ["ntk_cond", "linear_regions"])
    assert (got["ntk_cond"], got["linear_regions"]) == (cols["ntk_cond"][-1], cols["linear_regions"][-1])
    s = -rank_combination(cols["ntk_cond"], cols["linear_regions"])[-1]
    assert got["objective"] == pytest.approx(1 - (s - 2) / 12)


def test_sweep_tenas_objective_feeds_unaugmented_images(monkeypatch) -> None:
    """Spy on what the sweep's objective scores: a pool of eval-transform images (equal on two calls whatever the
    global RNG, equal to the un-augmented loader's images), NTK batches without augmentation (rows of the pool)."""
    from orchestrator import tune_trial
    from orchestrator.sweep_config import build_search_config, load_sweep_config
    from spaces.registry import get_genotype

    seen = []
    monkeypatch.setattr(tune_trial, "reference_objective",
                        lambda g, x, c: seen.append((x, c)) or {"ntk_cond": 2.0, "linear_regions": 3.0,
                                                                "rank_kappa": 1.0, "rank_regions": 1.0,
                                                                "objective": 1.0})
    cfg = load_sweep_config(overrides=["objective=tenas", "search.data.limit_train=128"])
    scfg = build_search_config(cfg, {"lam": 1e-3, "s": 2, "m": 7, "epsilon": 0.0})
    g = get_genotype("DARTS_V2")
    torch.manual_seed(1)
    out = tune_trial.tenas_score(g, cfg, scfg)
    torch.manual_seed(2)
    tune_trial.tenas_score(g, cfg, scfg)
    (x1, c1), (x2, _) = seen
    assert out["tenas_score"] == 1.0 and torch.equal(x1, x2) and not c1.augment
    plain = image_batch(dataclasses.replace(scfg.data, augment=False), x1.shape[0], seed=int(scfg.seed))
    assert torch.equal(x1, plain)
    meas = Measurer(c1.resolved(), x1)
    batch = meas._data(0, (0, 0, 0))
    assert all(any(torch.equal(b, p) for p in meas.images) for b in batch)
