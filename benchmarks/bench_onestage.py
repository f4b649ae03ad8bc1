"""Benchmark: one training step of the one-stage ISTA-NAS super-net (a) while searching and (b) after the
search-to-train switch, against (c) the stand-alone network that the BN absorption (Eq. 12) exports from it, in one
process, on the same batch.

* (a) search step (Algorithm 2 with ``recover_every="step"``, the default): one batched recovery of z from b on
  the host (``HostRecovery``), the :class:`istanas.ista.onestage.OneStageNet` forward (Eq. 11 coefficients computed
  from b inside the module, support-only ops), CE + 0.4 auxiliary CE, one backward into W and b, Adam step on b,
  gradient-norm clip and SGD step on W.  The support is kept at the genotype's (the recovery runs and is timed,
  but its support is not adopted), so that (a), (b) and (c) run the same ops.
* (b) train step after the switch: constant coefficients (``fix_coefficients``), b frozen; backward into W only;
  clip; SGD step.
* (c) ``istanas.ista.absorb.absorb(net)``: the ``spaces.networks`` network with the folded BNs and the same weights;
  same loss, clip and SGD step.

Genotype: the published one-stage cell (``ISTA_onestage``).  Time: median over ``--repeats`` steps after
``--warmup`` untimed ones, the three interleaved within each repeat (CUDA: synchronised).  Ratios: the super-net's
time divided by the stand-alone network's (``time_ratio_search_vs_standalone``, ``time_ratio_train_vs_standalone``;
1.0 = as fast as the exported network; ``*_min``: the same from the fastest repeats, robust to other load on a
shared machine); also the eval-mode forward ratio and the recovery's share of (a).

Usage: ``python benchmarks/bench_onestage.py --json out.json [--devices cpu,cuda] [--batch 32] [--C 16]
[--layers 8] [--image-size 32] [--repeats 5]``.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, ".."))
sys.path.insert(0, _HERE)

from bench_supernet import genotype_support, run_step_benchmark, step_benchmark_parser, sync  # noqa: E402
from istanas.ista.absorb import absorb  # noqa: E402
from istanas.ista.compressed import CompressedSpace, RecoveryConfig  # noqa: E402
from istanas.ista.onestage import OneStageNet  # noqa: E402
from istanas.supernet import ISTA_PRIMITIVES, SparseSuperNet  # noqa: E402
from istanas.ista.compressed import HostRecovery  # noqa: E402

K = len(ISTA_PRIMITIVES)
AUX_WEIGHT = 0.4


def build(device: torch.device, args, genotype):
    """The one-stage net with the genotype's support, trained BN statistics, released BNs, and its export."""
    torch.manual_seed(0)
    sn = SparseSuperNet(C=args.C, num_classes=10, layers=args.layers, onestage=True, auxiliary=True)
    space = CompressedSpace(K, 4, RecoveryConfig())
    net = OneStageNet(sn, space, "cifar10", args.image_size).to(device)
    with torch.no_grad():
        space.b.normal_()                               # coefficients of order 1 (a trained b), signed
    space.recover(warm_start=False)
    net.set_support(genotype_support(genotype))
    for t in range(2):
        for i in range(4):
            sn.unfreeze_node(t, i)                      # the BNs the training phase trains
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, args.image_size, args.image_size, device=device))
    standalone, _, _ = absorb(net)
    standalone = standalone.to(device).train()
    net.train()
    return net, standalone


def make_steps(net: OneStageNet, standalone, x: torch.Tensor, y: torch.Tensor, clip: float = 5.0):
    sn, space = net.supernet, net.space
    rec = HostRecovery(space)
    w_opt = torch.optim.SGD(sn.parameters(), lr=1e-3, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam([space.b], lr=1e-5, betas=(0.5, 0.999), weight_decay=1e-3)
    s_opt = torch.optim.SGD(standalone.parameters(), lr=1e-3, momentum=0.9, weight_decay=3e-4)
    plan = net.plan
    recovery_ms: list[float] = []

    def loss_of(out):
        logits, aux = out
        return F.cross_entropy(logits, y) + AUX_WEIGHT * F.cross_entropy(aux, y)

    def step_search() -> None:
        sync(x.device)
        t0 = time.perf_counter()
        rec()                                        # lines 2-3 (support kept at the genotype's, see the doc)
        sync(x.device)
        recovery_ms.append(1e3 * (time.perf_counter() - t0))
        net.fixed_coef = None
        space.b.requires_grad_(True)
        loss = loss_of(net(x, plan))
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        a_opt.step()
        torch.nn.utils.clip_grad_norm_([p for p in sn.parameters() if p.requires_grad], clip)
        w_opt.step()

    def step_train() -> None:
        space.b.requires_grad_(False)
        net.fix_coefficients()
        loss = loss_of(net(x, plan))
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in sn.parameters() if p.requires_grad], clip)
        w_opt.step()

    def step_standalone() -> None:
        loss = loss_of(standalone(x))
        s_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(standalone.parameters(), clip)
        s_opt.step()

    return {"search": step_search, "train": step_train, "standalone": step_standalone}, recovery_ms


def _median_ms(fn, device, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def bench_device(device: torch.device, args, genotype) -> dict:
    net, standalone = build(device, args, genotype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    steps, recovery_ms = make_steps(net, standalone, x, y)
    names = list(steps)
    for _ in range(args.warmup):
        for n in names:
            steps[n]()
    recovery_ms.clear()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for n in names:
            times[n] += _median_ms(steps[n], device, 1)
    # eval-mode forward (inference): the super-net with constant coefficients vs the exported network
    net.eval()
    standalone.eval()
    net.fix_coefficients()
    with torch.no_grad():
        fwd = {"train_eval": [], "standalone_eval": []}
        for _ in range(args.warmup):
            net(x)
            standalone(x)
        for _ in range(args.repeats):
            fwd["train_eval"] += _median_ms(lambda: net(x), device, 1)
            fwd["standalone_eval"] += _median_ms(lambda: standalone(x), device, 1)
    res: dict = {"device": str(device)}
    for n, ts in {**times, **fwd}.items():
        res[n] = {"step_ms_median": statistics.median(ts), "step_ms_min": min(ts), "step_ms_all": ts}
    res["recovery_ms_median"] = statistics.median(recovery_ms)
    sup = res["standalone"]["step_ms_median"]
    res["time_ratio_search_vs_standalone"] = res["search"]["step_ms_median"] / sup
    res["time_ratio_search_without_recovery_vs_standalone"] = \
        (res["search"]["step_ms_median"] - res["recovery_ms_median"]) / sup
    res["time_ratio_train_vs_standalone"] = res["train"]["step_ms_median"] / sup
    res["time_ratio_eval_forward_vs_standalone"] = \
        res["train_eval"]["step_ms_median"] / res["standalone_eval"]["step_ms_median"]
    # the same ratios from the fastest repeat of each (robust to other load on a shared machine)
    res["time_ratio_search_vs_standalone_min"] = res["search"]["step_ms_min"] / res["standalone"]["step_ms_min"]
    res["time_ratio_train_vs_standalone_min"] = res["train"]["step_ms_min"] / res["standalone"]["step_ms_min"]
    res["params_m"] = {"supernet_all_candidates": sum(p.numel() for p in net.supernet.parameters()) / 1e6,
                       "standalone": sum(p.numel() for p in standalone.parameters()) / 1e6}
    return res


def _describe(r: dict) -> str:
    return (f"[{{dev}}] step ms (median): search {r['search']['step_ms_median']:.1f} (recovery "
            f"{r['recovery_ms_median']:.2f}), after switch {r['train']['step_ms_median']:.1f}, stand-alone "
            f"{r['standalone']['step_ms_median']:.1f}; eval forward {r['train_eval']['step_ms_median']:.1f} vs "
            f"{r['standalone_eval']['step_ms_median']:.1f}\n"
            f"[{{dev}}] time_ratio_search_vs_standalone {r['time_ratio_search_vs_standalone']:.3f}, "
            f"time_ratio_train_vs_standalone {r['time_ratio_train_vs_standalone']:.3f}, "
            f"eval forward {r['time_ratio_eval_forward_vs_standalone']:.3f}")


def main(argv=None) -> dict:
    ap = step_benchmark_parser(__doc__, batch=32, genotype="ISTA_onestage",
                               genotype_help="registry name or JSON of the genotype")
    args = ap.parse_args(argv)
    return run_step_benchmark(args, bench_device, _describe,
                              ("time_ratio_search_vs_standalone", "time_ratio_train_vs_standalone",
                               "time_ratio_search_without_recovery_vs_standalone",
                               "time_ratio_eval_forward_vs_standalone", "time_ratio_search_vs_standalone_min",
                               "time_ratio_train_vs_standalone_min"), {"auxiliary_weight": AUX_WEIGHT})


if __name__ == "__main__":
    main()
