"""AZ-NAS components (istanas.tenas.aznas) against independent computations: numpy eigen-decompositions, explicit
Jacobians (torch.autograd.functional.jacobian), closed forms on linear blocks, a stage-by-stage forward."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from istanas.tenas.aznas import (aznas_scores, block_trainability, channel_jacobian_norm, feature_blocks,
                                 isotropy_entropy, jacobian_scale)
from istanas.tenas.indicators import init_weights
from spaces.networks import build_network


def _np_entropy(f: np.ndarray) -> float:
    x = np.moveaxis(f, 1, 0).reshape(f.shape[1], -1)
    cov = np.cov(x, bias=True)
    lam = np.clip(np.linalg.eigvalsh(cov), 0, None)
    p = lam / lam.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_isotropy_entropy_matches_numpy_and_its_extremes():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(8, 5, 4, 3, generator=g) * torch.tensor([3.0, 1.0, 0.5, 0.1, 2.0])[None, :, None, None]
    assert float(isotropy_entropy(f)) == pytest.approx(_np_entropy(f.numpy()), rel=1e-10)
    iso = torch.randn(20000, 6, generator=g)
    assert float(isotropy_entropy(iso)) == pytest.approx(math.log(6), abs=2e-3)  # isotropic: log C
    rank1 = torch.randn(50, 1, generator=g) * torch.randn(1, 6, generator=g)
    assert float(isotropy_entropy(rank1)) == pytest.approx(0.0, abs=1e-6)  # one direction: 0
    assert float(isotropy_entropy(torch.ones(4, 3, 2, 2))) == 0.0  # constant map: 0, not NaN


def _explicit_jacobian(fn, inp):
    j = torch.autograd.functional.jacobian(fn, inp)
    return j.reshape(fn(inp).numel(), inp.numel()).double()


def test_jacobian_scale_is_the_probe_estimate_of_the_explicit_jacobian():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Tanh())  # d_in 3*6*6 > d_out 4*3*3
    inp = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = block(inp)
    J = _explicit_jacobian(block, inp.detach())
    d_in, d_out = inp.numel(), out.numel()
    g = torch.Generator().manual_seed(1)
    v = (torch.randint(0, 2, out.shape, generator=g) * 2 - 1).float()
    want = math.sqrt(float((J.T @ v.double().flatten()).pow(2).sum() / v.numel()) * d_out / min(d_in, d_out))
    assert float(jacobian_scale(out, inp, v)) == pytest.approx(want, rel=1e-5)
    # the estimator's mean over probes: the mean squared singular value ||J||_F^2 / min(d_in, d_out)
    sq = [float(jacobian_scale(out, inp, (torch.randint(0, 2, out.shape, generator=g) * 2 - 1).float())) ** 2
          for _ in range(400)]
    exact = float(torch.linalg.svdvals(J).pow(2).sum()) / min(d_in, d_out)
    assert np.mean(sq) == pytest.approx(exact, rel=0.05)


class _Scale(nn.Module):
    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x):
        return self.a * x


class _Chain(nn.Module):
    def __init__(self, scales, head_relu: bool = False, collapse_last: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1, bias=False)
        blocks = [_Scale(a) for a in scales]
        if collapse_last:
            blocks[-1] = nn.Conv2d(4, 4, 1, bias=False)
            with torch.no_grad():
                blocks[-1].weight.zero_()
                blocks[-1].weight[:, 0] = 1.0  # every output channel = input channel 0: rank 1
        self.cells = nn.ModuleList(blocks)
        self.head = nn.ReLU(inplace=True) if head_relu else nn.Identity()

    def forward(self, x):
        h = self.stem(x)
        for c in self.cells:
            h = c(h)
        return self.head(h)


def test_scores_in_closed_form_on_linear_blocks():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 5, 5)
    net = _Chain([2.0, 1.0, 0.5])
    s = aznas_scores(net, x, estimator="frobenius")
    e0 = float(isotropy_entropy(net.stem(x)))
    # scaling keeps the covariance's shape: every block has the stem's entropy, steps are 0
    assert float(s["expressivity"]) == pytest.approx(4 * e0, rel=1e-9)
    assert float(s["progressivity"]) == pytest.approx(0.0, abs=1e-9)
    # J = a I: sigma = |a| exactly whatever the probe; -(a + 1/a - 2) = -0.5, 0, -0.5
    assert float(s["trainability"]) == pytest.approx(-1.0 / 3.0, rel=1e-9)
    # released estimator: the a = 1 block is an identity (g == v exactly): -inf
    assert aznas_scores(net, x)["trainability"] == -math.inf
    assert math.isfinite(float(aznas_scores(_Chain([2.0, 0.5]), x)["trainability"]))
    col = _Chain([1.0, 1.0], collapse_last=True)
    c = aznas_scores(col, x)
    assert float(c["progressivity"]) == pytest.approx(-float(isotropy_entropy(col.stem(x))), rel=1e-6)  # the rank-1 block loses all entropy
    for est in ("released", "frobenius"):
        z = aznas_scores(_Chain([1.5, 0.0]), x, estimator=est)
        assert z["trainability"] == -math.inf  # a block whose output ignores its input
    with pytest.raises(ValueError, match="estimator"):
        aznas_scores(net, x, estimator="spectral")


def _np_channel_norm(g: np.ndarray, v: np.ndarray) -> float:
    """The released estimator by explicit loops: g [B, Ci, Hi, Wi] unshuffled by r to v's [Ho, Wo]."""
    B, ci, hi, wi = g.shape
    _, co, ho, wo = v.shape
    r = -(-hi // ho)
    gu = np.zeros((B, ci * r * r, ho, wo))
    for c in range(ci):
        for di in range(r):
            for dj in range(r):
                for i in range(ho):
                    for j in range(wo):
                        if i * r + di < hi and j * r + dj < wi:
                            gu[:, c * r * r + di * r + dj, i, j] = g[:, c, i * r + di, j * r + dj]
    m = np.einsum("bchw,bdhw->cd", gu, v) / (B * ho * wo)
    return float(np.linalg.svd(m, compute_uv=False).max())


@pytest.mark.parametrize("size", [8, 5])  # 8 -> 4: exact unshuffle; 5 -> 3: zero-padded to 6
def test_released_estimator_matches_explicit_loops_and_recovers_a_strided_1x1_conv(size):
    torch.manual_seed(0)
    conv3 = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)  # every input position gets a gradient
    x = torch.randn(2, 3, size, size, requires_grad=True)
    out = conv3(x)
    v = (torch.randint(0, 2, out.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1).float()
    J = _explicit_jacobian(conv3, x.detach())
    g = (J.T @ v.double().flatten()).reshape(x.shape)
    sigma, ident = channel_jacobian_norm(g, v.double())
    assert not bool(ident)
    assert float(sigma) == pytest.approx(_np_channel_norm(g.numpy(), v.double().numpy()), rel=1e-10)
    # many positions: M -> W^T on the stride's (0, 0) sub-channels, so sigma -> ||W||_2
    conv = nn.Conv2d(3, 4, 1, stride=2, bias=False)
    big = torch.randn(64, 3, 2 * size, 2 * size, requires_grad=True)
    o = conv(big)
    vb = (torch.randint(0, 2, o.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1).float()
    w2 = float(torch.linalg.matrix_norm(conv.weight.detach().reshape(4, 3).double(), ord=2))
    st = float(block_trainability(o, big, vb))
    sig = float(channel_jacobian_norm(torch.autograd.grad(o, big, vb, retain_graph=True)[0], vb)[0])
    assert sig == pytest.approx(w2, rel=0.05)
    assert st == pytest.approx(-(sig + 1 / sig - 2), rel=1e-9)


def test_an_inplace_op_after_a_block_does_not_change_its_recorded_features():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 5, 5)
    a, b = _Chain([1.5, 0.7], head_relu=True), _Chain([1.5, 0.7])
    b.load_state_dict(a.state_dict())
    sa, sb = aznas_scores(a, x), aznas_scores(b, x)
    for k in sa:
        assert float(sa[k]) == pytest.approx(float(sb[k]), rel=1e-12), k


def test_nb201_network_scores_match_a_stage_by_stage_forward():
    net = build_network("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|",
                        C=8, N=1)
    init_weights(net, "default", 3)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))  # J of cell 1: [3072, 3072]
    blocks = feature_blocks(net)
    assert blocks[0] is net.stem and len(blocks) == 1 + len(net.cells) == 6
    s = aznas_scores(net, x, seed=5)
    net.train()
    with torch.no_grad():
        feats = [net.stem(x)]
        for c in net.cells:
            feats.append(c(feats[-1]))
    ent = [_np_entropy(f.numpy().astype(np.float64)) for f in feats]
    assert float(s["expressivity"]) == pytest.approx(sum(ent), rel=1e-5)
    assert float(s["progressivity"]) == pytest.approx(min(np.diff(ent)), rel=1e-4, abs=1e-6)
    # trainability of the first cell alone, from its explicit batch Jacobian and the same first probe
    J = _explicit_jacobian(net.cells[0], feats[0])
    v = (torch.randint(0, 2, feats[1].shape, generator=torch.Generator().manual_seed(5)) * 2 - 1).double()
    g = (J.T @ v.flatten()).reshape(feats[0].shape).numpy()
    sig = _np_channel_norm(g, v.numpy())
    first = -(sig + 1 / sig - 2)
    sig_f = math.sqrt(float((J.T @ v.flatten()).pow(2).sum() / v.numel()))
    first_f = -(sig_f + 1 / sig_f - 2)
    rest = aznas_scores(net, x, seed=5, blocks=blocks)["trainability"]
    assert float(rest) == float(s["trainability"])  # the probes are seeded
    assert first <= 0 and math.isfinite(first)
    one = aznas_scores(net, x, seed=5, blocks=blocks[:2])  # stem + first cell only
    assert float(one["trainability"]) == pytest.approx(first, rel=1e-4)
    one_f = aznas_scores(net, x, seed=5, blocks=blocks[:2], estimator="frobenius")
    assert float(one_f["trainability"]) == pytest.approx(first_f, rel=1e-4)
    assert all(p.grad is None for p in net.parameters())


def test_model_without_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="stem"):
        feature_blocks(nn.Linear(3, 3))
