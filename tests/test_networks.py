"""Evaluation networks: sizes against the papers and against a closed-form count, forward shapes, cell wiring,
drop-path, BN after parameter-free ops, profiling.  Big networks are only constructed (for counting); forward
passes use small widths / depths."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spaces.genotype import Genotype, NB201Genotype
from spaces.networks import NB201Network, NetworkCIFAR, NetworkImageNet, build_network, drop_path, output_bn
from spaces.profile import count_flops, count_parameters
from spaces.registry import get_genotype

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ closed-form sizes
def closed_form(genotype: Genotype, C: int, layers: int, K: int, H: int, imagenet: bool,
                bn_after_param_free: bool = False) -> tuple[int, int]:
    """(parameters, conv+linear multiply-adds) of a DARTS-space network written out op by op (no modules)."""
    params = macs = 0
    if imagenet:
        h = H // 8
        params += 3 * (C // 2) * 9 + 2 * (C // 2) + (C // 2) * C * 9 + 2 * C + C * C * 9 + 2 * C
        macs += (H // 2) ** 2 * (C // 2) * 27 + (H // 4) ** 2 * C * (C // 2) * 9 + h * h * C * C * 9
        C_pp = C_p = C
        reduction_prev = True
    else:
        h = H
        params += 3 * 3 * C * 9 + 2 * 3 * C
        macs += H * H * 3 * C * 3 * 9
        C_pp = C_p = 3 * C
        reduction_prev = False
    C_curr = C
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        c = C_curr
        # preprocessing: FactorizedReduce (two 1x1 convs C_pp -> c/2 at stride 2) or ReLU-conv1x1-BN, both + BN(c)
        params += C_pp * c + 2 * c + C_p * c + 2 * c
        macs += h * h * C_pp * c + h * h * C_p * c
        h_out = h // 2 if reduction else h
        pairs, concat = genotype.cell("reduce" if reduction else "normal")
        for op, idx in pairs:
            stride2 = reduction and idx < 2
            if op.startswith("sep_conv"):
                k = int(op[-1])
                params += 2 * (c * k * k + c * c + 2 * c)
                macs += 2 * h_out * h_out * (c * k * k + c * c)
            elif op.startswith("dil_conv"):
                k = int(op[-1])
                params += c * k * k + c * c + 2 * c
                macs += h_out * h_out * (c * k * k + c * c)
            elif op == "skip_connect" and stride2:  # FactorizedReduce(c, c)
                params += c * c + 2 * c
                macs += h_out * h_out * c * c
            elif bn_after_param_free:  # pools and the identity skip: + affine BN(c)
                params += 2 * c
        C_pp, C_p = C_p, len(concat) * c
        h = h_out
        reduction_prev = reduction
    assert reduction_prev in (True, False)
    params += C_p * K + K
    macs += C_p * K
    return params, macs


@pytest.mark.parametrize("name,bn", [("DARTS_V2", False), ("ISTA_onestage", True), ("PC_DARTS", False)])
def test_sizes_equal_the_closed_form_count(name, bn):
    g = get_genotype(name)
    m = build_network(g, "cifar10", bn_after_param_free=bn, auxiliary=True)
    p, f = closed_form(g, 36, 20, 10, 32, imagenet=False, bn_after_param_free=bn)
    assert count_parameters(m) * 1e6 == pytest.approx(p, abs=0.5)
    assert count_flops(m, (1, 3, 32, 32)) * 1e6 == pytest.approx(f, abs=0.5)
    mi = build_network(g, "imagenet", bn_after_param_free=bn)
    p, f = closed_form(g, 48, 14, 1000, 224, imagenet=True, bn_after_param_free=bn)
    assert count_parameters(mi) * 1e6 == pytest.approx(p, abs=0.5)
    assert count_flops(mi, (1, 3, 224, 224)) * 1e6 == pytest.approx(f, abs=0.5)


# Published sizes (parameters without the auxiliary head).  Measured here: DARTS_V2 3.349 M, ISTA_twostage
# 3.317 M, ISTA_onestage (BN after parameter-free ops) 3.372 M (3.364 M without those BNs), PC_DARTS 3.635 M;
# ImageNet DARTS_V2 4.719 M, ISTA_onestage 4.791 M (with BNs), ISTA_ImageNet 5.651 M.
PUBLISHED_PARAMS = [
    ("DARTS_V2", "cifar10", False, 3.3),
    ("ISTA_twostage", "cifar10", False, 3.32),
    ("ISTA_onestage", "cifar10", True, 3.37),
    ("PC_DARTS", "cifar10", False, 3.6),
    ("DARTS_V2", "imagenet", False, 4.7),
    ("ISTA_onestage", "imagenet", True, 4.78),
    ("ISTA_ImageNet", "imagenet", False, 5.65),
]


@pytest.mark.parametrize("name,dataset,bn,published", PUBLISHED_PARAMS)
def test_parameter_counts_match_the_papers(name, dataset, bn, published):
    m = build_network(name, dataset, auxiliary=True, bn_after_param_free=bn)  # CIFAR 36/20, ImageNet 48/14
    assert count_parameters(m, exclude_aux=True) == pytest.approx(published, rel=0.02)


# FLOPs (multiply-adds of conv + linear layers, 224x224, 1000 classes).  Published: DARTS_V2 574 M, ISTA_onestage
# 550 M, ISTA_ImageNet 638 M.  Measured here (the closed form above agrees to the op): 529.9 M, 535.1 M, 621.1 M,
# i.e. -7.7 %, -2.7 %, -2.7 %.  The DARTS gap is a known one and not a property of this network: the DARTS
# authors never released their counter, and others counting the public DARTS_V2 ImageNet model get 523 M (conv
# + fc only) or 544.6 M (flops-counter.pytorch, which adds BN / ReLU / pooling), never 574 M (quark0/darts
# issue #46).  Counting BN, ReLU and pooling elements here adds 11 M (bn 4.1 + relu 5.8 + pool 1.3), still not
# 574.  So the counter keeps the papers' stated definition (multiply-adds of conv and FC layers) and the test
# pins the measured gaps.
PUBLISHED_FLOPS = [("DARTS_V2", False, 574.0, -0.077), ("ISTA_onestage", True, 550.0, -0.027),
                   ("ISTA_ImageNet", False, 638.0, -0.027)]


@pytest.mark.parametrize("name,bn,published,gap", PUBLISHED_FLOPS)
def test_imagenet_flops_against_the_papers(name, bn, published, gap):
    m = build_network(name, "imagenet", bn_after_param_free=bn)
    flops = count_flops(m, (1, 3, 224, 224))
    assert (flops - published) / published == pytest.approx(gap, abs=0.005)


# ------------------------------------------------------------------------------------------------ forward
def test_cifar_forward_shapes_with_auxiliary_head():
    m = build_network("DARTS_V2", "cifar10", C=8, layers=5, auxiliary=True)
    assert isinstance(m, NetworkCIFAR) and [c.reduction for c in m.cells] == [False, True, False, True, False]
    x = torch.randn(2, 3, 32, 32)
    m.train()
    logits, aux = m(x)
    assert logits.shape == (2, 10) and aux is not None and aux.shape == (2, 10)
    m.eval()
    logits, aux = m(x)
    assert logits.shape == (2, 10) and aux is None
    # small grey images (digits 16x16, 1 channel): the auxiliary head sees 4x4 maps and still works
    m1 = build_network("DARTS_V2", "digits", C=8, layers=5, auxiliary=True, in_channels=1).train()
    logits, aux = m1(torch.randn(3, 1, 16, 16))
    assert logits.shape == (3, 10) and aux.shape == (3, 10)
    m2 = build_network("ISTA_onestage", "cifar100", C=6, layers=4, bn_after_param_free=True)
    assert m2(torch.randn(2, 3, 32, 32))[0].shape == (2, 100)


def test_imagenet_forward_shape():
    m = build_network("ISTA_ImageNet", "imagenet", C=8, layers=3, num_classes=7, auxiliary=True)
    assert isinstance(m, NetworkImageNet)
    m.train()
    logits, aux = m(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    m.eval()
    logits, aux = m(torch.randn(1, 3, 96, 96))  # not 224: global pooling adapts
    assert logits.shape == (1, 7) and aux is None


def test_nb201_network_forward_and_size():
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    m = build_network(arch, "cifar10")
    assert isinstance(m, NB201Network) and len(m.cells) == 3 * 5 + 2
    # closed form, C=16, N=5: stem, 15 cells of 6 ReLU-conv3x3-BN, 2 residual blocks, BN, FC
    C, total = 16, 3 * 16 * 9 + 2 * 16
    for s in range(3):
        c = C * 2 ** s
        total += 5 * 6 * (9 * c * c + 2 * c)
        if s:
            total += 9 * (c // 2) * c + 2 * c + 9 * c * c + 2 * c + (c // 2) * c  # conv_a, conv_b, 1x1 shortcut
    total += 2 * 64 + 64 * 10 + 10
    assert count_parameters(m) * 1e6 == total
    # the largest NAS-Bench-201 CIFAR-10 network is usually quoted as 1.53 MB of parameters
    assert count_parameters(m) == pytest.approx(1.53, abs=0.005)
    small = build_network(NB201Genotype.from_arch_str(arch.replace("nor_conv_3x3~2", "none~2")),
                          "cifar100", C=8, N=1)
    logits, aux = small(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100) and aux is None


def test_nb201_cell_wiring():
    # node1 = skip(x); node2 = avg(x) + conv1x1(node1); node3 = none(x) + skip(node1) + conv3x3(node2)
    g = NB201Genotype.from_arch_str(
        "|skip_connect~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|skip_connect~1|nor_conv_3x3~2|")
    m = build_network(g, "cifar10", C=4, N=1).eval()
    cell = m.cells[0]
    assert cell.edges == ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)) and cell.indices == (0, 0, 1, 0, 1, 2)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        n1 = x
        n2 = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) + cell.ops[2](n1)
        n3 = n1 + cell.ops[5](n2)
        assert torch.allclose(cell(x), n3, atol=1e-6)


def test_darts_cell_wiring_against_a_hand_written_cell():
    normal = [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 2), ("skip_connect", 0),
              ("avg_pool_3x3", 3), ("skip_connect", 1), ("max_pool_3x3", 4), ("skip_connect", 2)]
    g = Genotype(normal=normal, normal_concat=(2, 3, 4, 5), reduce=get_genotype("DARTS_V2").reduce,
                 reduce_concat=(3, 5))
    m = build_network(g, "cifar10", C=4, layers=3).eval()  # cells: reduce, normal... (reductions at 1 and 2)
    cell = m.cells[0]
    assert not cell.reduction and cell.op_names == tuple(o for o, _ in normal)
    assert cell.indices == (0, 1, 2, 0, 3, 1, 4, 2)
    s0, s1 = torch.randn(2, 12, 8, 8), torch.randn(2, 12, 8, 8)
    with torch.no_grad():
        p0, p1 = cell.preprocess0(s0), cell.preprocess1(s1)
        n2 = p0 + p1
        n3 = n2 + p0
        n4 = F.avg_pool2d(n3, 3, 1, 1, count_include_pad=False) + p1
        n5 = F.max_pool2d(n4, 3, 1, 1) + n2
        assert torch.allclose(cell(s0, s1), torch.cat([n2, n3, n4, n5], 1), atol=1e-6)
    # the reduction cells concatenate 2 nodes: channel bookkeeping follows the concat length
    assert m.cells[1].reduction and m.cells[1].multiplier == 2
    assert m(torch.randn(1, 3, 16, 16))[0].shape == (1, 10)
    assert m.classifier.in_features == 2 * 16  # last cell is a reduction cell with 4 * C channels per node


def test_darts_cell_with_3_and_1_ops_per_node_against_hand_written_cells():
    """An s-op genotype (an ISTA-NAS search with support size s) builds a cell that sums s ops per node."""
    normal3 = [("skip_connect", 0), ("skip_connect", 1), ("avg_pool_3x3", 1),     # node 2
               ("skip_connect", 2), ("max_pool_3x3", 0), ("skip_connect", 0),     # node 3: input 0 twice
               ("avg_pool_3x3", 3), ("skip_connect", 1), ("skip_connect", 2),     # node 4
               ("max_pool_3x3", 4), ("skip_connect", 2), ("skip_connect", 3)]     # node 5
    red3 = [(op, min(i, 1)) for op, i in normal3[:6]]
    g = Genotype(normal=normal3, normal_concat=(2, 3, 4, 5), reduce=red3, reduce_concat=(2, 3), ops_per_node=3)
    m = build_network(g, "cifar10", C=4, layers=3).eval()
    cell = m.cells[0]
    assert cell.ops_per_node == 3 and cell.steps == 4 and len(cell.ops) == 12
    avg = lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)  # noqa: E731
    mx = lambda x: F.max_pool2d(x, 3, 1, 1)  # noqa: E731
    s0, s1 = torch.randn(2, 12, 8, 8), torch.randn(2, 12, 8, 8)
    with torch.no_grad():
        p0, p1 = cell.preprocess0(s0), cell.preprocess1(s1)
        n2 = p0 + p1 + avg(p1)
        n3 = n2 + mx(p0) + p0
        n4 = avg(n3) + p1 + n2
        n5 = mx(n4) + n2 + n3
        assert torch.allclose(cell(s0, s1), torch.cat([n2, n3, n4, n5], 1), atol=1e-6)
    assert m.cells[1].reduction and m.cells[1].steps == 2 and m.cells[1].multiplier == 2
    assert m(torch.randn(1, 3, 16, 16))[0].shape == (1, 10)
    # one op per node
    normal1 = [("skip_connect", 1), ("avg_pool_3x3", 2), ("skip_connect", 0), ("max_pool_3x3", 4)]
    g1 = Genotype(normal=normal1, normal_concat=(2, 3, 4, 5), reduce=[("max_pool_3x3", 0)] * 4,
                  reduce_concat=(2, 3, 4, 5), ops_per_node=1)
    cell = build_network(g1, "cifar10", C=4, layers=3).eval().cells[0]
    with torch.no_grad():
        p0, p1 = cell.preprocess0(s0), cell.preprocess1(s1)
        n2 = p1
        n3 = avg(n2)
        n4 = p0
        n5 = mx(n4)
        assert torch.allclose(cell(s0, s1), torch.cat([n2, n3, n4, n5], 1), atol=1e-6)


def test_sizes_of_a_3_op_genotype_equal_the_closed_form_count():
    g2 = get_genotype("ISTA_twostage")
    extra = {"normal": [("sep_conv_3x3", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 0), ("skip_connect", 4)],
             "reduce": [("skip_connect", 0), ("sep_conv_5x5", 2), ("avg_pool_3x3", 1), ("dil_conv_3x3", 0)]}
    cells = {c: tuple(p for i in range(4) for p in (*getattr(g2, c)[2 * i:2 * i + 2], extra[c][i]))
             for c in ("normal", "reduce")}
    g3 = Genotype(normal=cells["normal"], normal_concat=(2, 3, 4, 5), reduce=cells["reduce"],
                  reduce_concat=(2, 3, 4, 5), ops_per_node=3)
    for bn in (False, True):
        m = build_network(g3, "cifar10", C=8, layers=5, bn_after_param_free=bn)
        p, f = closed_form(g3, 8, 5, 10, 32, imagenet=False, bn_after_param_free=bn)
        assert count_parameters(m) * 1e6 == pytest.approx(p, abs=0.5)
        assert count_flops(m, (1, 3, 32, 32)) * 1e6 == pytest.approx(f, abs=0.5)
    p2, _ = closed_form(g2, 8, 5, 10, 32, imagenet=False)
    assert count_parameters(build_network(g3, "cifar10", C=8, layers=5)) * 1e6 > p2 + 1000   # the third op counts


# ----------------------------------------------------------------------------------------------- drop-path
def test_drop_path_changes_training_outputs_only():
    m = build_network("DARTS_V2", "cifar10", C=4, layers=3, drop_path=0.0)
    x = torch.randn(4, 3, 16, 16)

    def run(p: float, train: bool, seed: int = 0) -> torch.Tensor:
        m.drop_path_prob = p
        m.train(train)
        torch.manual_seed(seed)
        with torch.no_grad():
            return m(x)[0]

    assert torch.equal(run(0.0, True), run(0.0, True))
    assert not torch.allclose(run(0.0, True), run(0.5, True))
    assert not torch.allclose(run(0.5, True, seed=0), run(0.5, True, seed=1))
    assert torch.equal(run(0.0, False), run(0.5, False))
    assert build_network("DARTS_V2", C=4, layers=3, drop_path=0.3).drop_path_prob == 0.3


def test_drop_path_is_an_unbiased_per_sample_mask():
    torch.manual_seed(0)
    x = torch.ones(20000, 2, 1, 1)
    y = drop_path(x, 0.3)
    dropped = (y[:, 0] == 0).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.015)
    assert torch.equal(y[:, 0], y[:, 1])  # whole samples
    assert y.mean().item() == pytest.approx(1.0, abs=0.03)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))


# --------------------------------------------------------------------------------------- BN after param-free
def _param_free_ops(g: Genotype, layers: int, C: int) -> list[int]:
    """Channel width of every pool / stride-1 skip op of the network, from the genotype alone."""
    out, c = [], C
    for i in range(layers):
        red = i in (layers // 3, 2 * layers // 3)
        c = 2 * c if red else c
        for op, idx in g.cell("reduce" if red else "normal")[0]:
            if op in ("max_pool_3x3", "avg_pool_3x3") or (op == "skip_connect" and not (red and idx < 2)):
                out.append(c)
    return out


def test_bn_after_param_free_adds_bn_after_param_free_ops_only():
    g = get_genotype("ISTA_onestage")
    plain = build_network(g, "cifar10", C=6, layers=5)
    with_bn = build_network(g, "cifar10", C=6, layers=5, bn_after_param_free=True)
    widths = _param_free_ops(g, 5, 6)
    n_bn = lambda m: sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert n_bn(with_bn) - n_bn(plain) == len(widths) > 0
    assert (count_parameters(with_bn) - count_parameters(plain)) * 1e6 == pytest.approx(2 * sum(widths))
    for cp, cb in zip(plain.cells, with_bn.cells):
        for j, (op_p, op_b) in enumerate(zip(cp.ops, cb.ops)):
            bn = output_bn(op_b)
            assert isinstance(bn, nn.BatchNorm2d) and bn.affine  # every op ends with a BN (Eq. 12 absorption)
            name = cb.op_names[j]
            param_free = name in ("max_pool_3x3", "avg_pool_3x3") or (name == "skip_connect" and not (
                cb.reduction and cb.indices[j] < 2))
            assert (output_bn(op_p) is None) == param_free
            if not param_free:  # conv ops and the stride-2 skip are unchanged
                assert [k for k, _ in op_p.state_dict().items()] == [k for k, _ in op_b.state_dict().items()]
    # same parameter names outside the wrapped ops
    extra = set(with_bn.state_dict()) - set(plain.state_dict())
    assert extra and all(".ops." in k and ".1." in k for k in extra)
    with_bn.eval()
    assert with_bn(torch.randn(1, 3, 16, 16))[0].shape == (1, 10)


# -------------------------------------------------------------------------------------------- profile / api
def test_count_parameters_excludes_the_auxiliary_head():
    m = build_network("DARTS_V2", "cifar10", C=8, layers=5, auxiliary=True)
    without = build_network("DARTS_V2", "cifar10", C=8, layers=5, auxiliary=False)
    assert count_parameters(m) == count_parameters(without)
    C_aux = 4 * 32  # output of the cell at 2*layers//3 = 3 (second reduction, 4 nodes x 4C)
    head = C_aux * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 10 + 10
    assert (count_parameters(m, exclude_aux=False) - count_parameters(m)) * 1e6 == pytest.approx(head)


def test_count_flops_by_hand_and_per_image():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
                      nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    expected = 8 * 8 * 4 * 3 * 9 + 4 * 4 * 4 * 2 * 9 + 64 * 5
    m.train()
    assert count_flops(m, (1, 3, 8, 8)) * 1e6 == pytest.approx(expected)
    assert count_flops(m, (3, 3, 8, 8)) * 1e6 == pytest.approx(expected)  # per image
    assert m.training  # mode restored
    with pytest.raises(ValueError, match="^input_size"):
        count_flops(m, (3, 8, 8))


def test_build_network_rejects_bad_arguments():
    cases = [
        (dict(C=7), "^C: must be even"),
        (dict(C=0), "^C: expected an int"),
        (dict(layers=0), "^layers:"),
        (dict(drop_path=1.0), "^drop_path:"),
        (dict(num_classes=0), "^num_classes:"),
        (dict(dataset="svhn"), "^num_classes: required"),
        (dict(N=3), "^N: only for NAS-Bench-201"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            build_network("DARTS_V2", **kwargs)
    arch = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|"
    for kwargs, msg in [(dict(auxiliary=True), "^auxiliary:"), (dict(drop_path=0.1), "^drop_path:"),
                        (dict(bn_after_param_free=True), "^bn_after_param_free:")]:
        with pytest.raises(ValueError, match=msg):
            build_network(arch, **kwargs)
    with pytest.raises(ValueError, match="^genotype:"):
        build_network("NOT_A_GENOTYPE")
    # a registry name, JSON text and a genotype object build the same network
    g = get_genotype("PC_DARTS")
    sizes = {count_parameters(build_network(x, C=4, layers=3)) for x in ("PC_DARTS", g.to_json(), g)}
    assert len(sizes) == 1
    assert build_network(arch, layers=2).cells.__len__() == 3 * 2 + 2  # `layers` read as N for NB201


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_forward_on_cuda():
    dev = torch.device("cuda")
    m = build_network("ISTA_onestage", C=8, layers=5, auxiliary=True, drop_path=0.2,
                      bn_after_param_free=True).to(dev).train()
    logits, aux = m(torch.randn(2, 3, 32, 32, device=dev))
    assert logits.device.type == "cuda" and aux.shape == (2, 10)
    assert count_flops(m.eval(), (1, 3, 32, 32)) > 0
    nb = build_network("NB201_ResNet", C=8, N=1).to(dev)
    assert nb(torch.randn(2, 3, 32, 32, device=dev))[0].shape == (2, 10)
