#!/usr/bin/env python
"""Search a cell: two-stage ISTA-NAS (paper Algorithm 1), the first-order DARTS baseline, or TE-NAS (training-free
pruning by NTK condition number and linear regions, NAS-Bench-201 or DARTS space).

Writes into --out: run_info.json (config, seed, library versions, git commit), metrics.jsonl (one line per epoch:
train / validation loss and accuracy, support churn, per-node ||z_new - z_old||, step time, peak memory),
checkpoint.pt (every epoch: weights, b, A, optimisers, RNG states; --resume continues from it), genotype.json, the
cells as PNG and SVG, and result.json.  Ends by printing the genotype and the path of genotype.json.
TE-NAS (--method tenas) trains nothing: it writes run_info.json, metrics.jsonl (one line per pruning round),
genotype.json and result.json (with the NAS-Bench-201 table's accuracy of the found cell when --table is given).

--space nb201 (twostage, onestage, darts, random, params, tenas): the NAS-Bench-201 cell space; --table PATH
(nasbench201_full.csv or zc_nasbench201.json) is checked before the search, opened only after it, and the found
cell's accuracies and percentiles go into result.json under "benchmark" and into the printed summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run from a checkout without installation
    sys.path.insert(0, _ROOT)

from istanas import cli  # noqa: E402
from istanas.config import deep_merge, preset_data  # noqa: E402
from istanas.data import DATASETS  # noqa: E402
from istanas.methods import METHODS, Method  # noqa: E402
from istanas.search import check_runtime, check_table, run_search, write_outputs  # noqa: E402
from spaces.nb201 import TABLE_DATASETS  # noqa: E402


EPILOG = """\
precedence: preset < --config YAML < the flags above < --set KEY=VALUE.

examples:
  # the default small search on scikit-learn's digits (minutes on a CPU)
  python launch/search.py --method twostage
  # the reference's schedule: recover once per epoch instead of every step
  python launch/search.py --method twostage --recover-every epoch --out runs/search-epoch
  # the DARTS baseline on the same cells and data
  python launch/search.py --method darts
  # the reference's CIFAR-10 search (50 epochs, batch 256, lr 0.1, arch lr 6e-4, 16 channels, 8 cells)
  python launch/search.py --method twostage --preset reference --data-root ../shared/data/cifar10-jpg.zip
  # any value, e.g. the sparse-coding settings
  python launch/search.py --set recovery.lam=1e-3 --set recovery.s=3 --set epochs=20
  # one-stage ISTA-NAS on digits: search, switch, train, export (model.safetensors / model.pt / model.onnx)
  python launch/search.py --method onestage --epsilon 1e-3
  # the reference's one-stage CIFAR-10 target net (36 channels, 20 cells, batch 96) with its parameter budget
  python launch/search.py --method onestage --preset cifar10 --data-root ../shared/data/cifar10-jpg.zip \
      --set param_budget=3.7e6
  # continue an interrupted run
  python launch/search.py --method twostage --out runs/search-twostage --resume
  # two-stage ISTA-NAS on NAS-Bench-201 at a 2-core CPU fidelity, scored by the benchmark table after the search
  python launch/search.py --method twostage --preset cpu --table ../shared/data/nasbench201_full.csv
  # the same space at NAS-Bench-201's own search settings (GPU), and the DARTS / #params / random baselines
  python launch/search.py --method twostage --preset paper --table ../shared/data/nasbench201_full.csv
  python launch/search.py --method darts --preset cpu --table ../shared/data/nasbench201_full.csv
  python launch/search.py --method params --space nb201 --table ../shared/data/nasbench201_full.csv
  python launch/search.py --method random --space nb201 --table ../shared/data/nasbench201_full.csv
  # any preset on NAS-Bench-201 cells (e.g. the digits smoke run)
  python launch/search.py --method twostage --space nb201
  # TE-NAS on NAS-Bench-201 (no training), the found cell looked up in the NAS-Bench-201 accuracy table
  python launch/search.py --method tenas --space nb201 --table ../shared/data/zc_nasbench201.json
  # TE-NAS on the DARTS space with the paper's measurement settings, on CIFAR-10 images
  python launch/search.py --method tenas --space darts --preset reference --dataset cifar10 \
      --data-root ../shared/data/cifar10-jpg.zip
  # TE-NAS with the NTK's BN statistics held constant (per-sample gradients, ~20x faster on CPU; not the paper's)
  python launch/search.py --method tenas --space nb201 --set tenas.bn_coupling=frozen
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch/search.py", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=sorted(METHODS), default="twostage",
                   help="; ".join(f"{k}: {m.help}" for k, m in METHODS.items()) + " (default: twostage)")
    p.add_argument("--preset", default=None,
                   help="a whole setup (default small: digits, a few CPU minutes; reference: the reference's "
                        "CIFAR-10 search); " + "; ".join(f"{k}: {', '.join(m.presets)}" for k, m in METHODS.items()))
    p.add_argument("--dataset", choices=DATASETS, help="dataset (default: the preset's)")
    p.add_argument("--data-root", metavar="PATH", help="dataset folder or .zip (CIFAR batches, ImageFolder, zip)")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="search epochs (default: the preset's); onestage: the whole run, search + training")
    p.add_argument("--batch-size", type=int, metavar="N", help="batch size (default: the preset's)")
    p.add_argument("--recover-every", choices=["step", "epoch"],
                   help="twostage: recover z every step (the paper, default) or once per epoch (the reference)")
    p.add_argument("--epsilon", type=float, metavar="EPS",
                   help="twostage: stop once every node's ||z_new - z_old|| over an epoch is <= EPS (0 = off); "
                        "onestage: a node stops searching once its change over an epoch is <= EPS (default 1e-3)")
    multi = {k: m.spaces for k, m in METHODS.items() if "space" in m.flags}
    p.add_argument("--space", choices=sorted({s for m in METHODS.values() for s in m.spaces}),
                   help="the cell space, for " + "; ".join(f"{k}: {' or '.join(v)} (default {v[0]})"
                                                           for k, v in multi.items()))
    p.add_argument("--table", metavar="PATH",
                   help="--space nb201, every method: NAS-Bench-201 table (nasbench201_full.csv or "
                        "zc_nasbench201.json); checked before the search, the found cell looked up after it")
    cli.add_common_args(p, default_out="runs/search-<method>")
    return p


def _base_config(args: argparse.Namespace, method: Method) -> dict:
    """The layer under --config: the resumed run's own config, else the named preset (default small)."""
    if args.resume:
        info = os.path.join(args.out, cli.RUN_INFO_NAME)
        if os.path.isfile(info):
            with open(info, encoding="utf-8") as f:
                cfg = json.load(f).get("config")
            if isinstance(cfg, dict):
                return cfg
    name = args.preset or method.default_preset
    if name not in method.presets:
        raise ValueError(f"--preset: {args.method} has presets {list(method.presets)}, got {name!r}")
    data = preset_data(method.config_cls, name, presets=method.presets)
    overlay = getattr(method.config_cls, "NB201_OVERLAY", None)
    if args.space == "nb201" and overlay is not None and data.get("space") != "nb201":
        data = deep_merge(data, overlay)   # a DARTS-space preset on NB201 cells (istanas.cell_space)
    return data


_FLAGS = ("dataset", "data_root", "epochs", "batch_size", "recover_every", "epsilon", "space")


def _run(args: argparse.Namespace) -> int:
    method = METHODS[args.method]
    if args.out == "runs/search-<method>":
        args.out = f"runs/search-{args.method}"
        args._out_default = args.out
    for flag in ("epochs", "batch_size"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    for flag in _FLAGS:
        if getattr(args, flag) is not None and flag not in method.flags:
            why = " (it trains nothing)" if flag in ("epochs", "batch_size") and not method.checkpoints else ""
            raise ValueError(f"--{flag.replace('_', '-')}: not an option of --method {args.method}{why}")
    extra: dict[str, Any] = {key: getattr(args, flag) for flag, key in method.flags.items()}
    if args.method == "tenas" and args.dataset in ("cifar10", "cifar100", "imagenet"):
        extra["tenas.dataset"] = args.dataset
    if method.checkpoints:
        extra["out"] = args.out if args.resume else None
    cfg = cli.build_config(method.config_cls, args, extra, base=_base_config(args, method))
    check_runtime(cfg)
    check_table(cfg, args.table)
    out = cfg.out
    if method.checkpoints:
        state = cli.load_resume(out, args.resume, cfg=cfg, args=args)
    else:
        if args.resume:
            raise ValueError(f"--resume: a {method.display_name} search has no checkpoint; rerun it (same seed, same "
                             f"result)")
        if os.path.exists(os.path.join(out, "result.json")):
            raise ValueError(f"{out} holds a finished {method.display_name} search; choose another --out or delete it")
        os.makedirs(out, exist_ok=True)
        state = None
    if state is None:
        cli.write_run_info(out, cfg, cfg.seed)
    done = int(state["epoch"]) if state is not None else 0
    describe = method.describe or (lambda c: _describe(args.method, c))
    print(describe(cfg) + f", out={out}" + (f" (resuming after epoch {done})" if state is not None
                                                          else ""), flush=True)
    kwargs = method.launch_kwargs(cfg) if method.launch_kwargs is not None else {}
    hooks = cli.run_hooks(out, resume_epoch=done if method.checkpoints else None, checkpoint=method.checkpoints)
    result = run_search(args.method, cfg, on_epoch_end=hooks, resume=state, progress=not args.no_progress,
                        table=args.table, **kwargs)
    paths = write_outputs(result, out)
    for line in (method.summary or (lambda c, r: _summary(args.method, c, r)))(cfg, result):
        print(line, flush=True)
    if "benchmark" in result.extra:
        print(benchmark_line(result.extra["benchmark"]), flush=True)
    print(f"genotype {result.genotype_digest} -> {paths['genotype']}", flush=True)
    return 0


def _describe(name: str, cfg: Any) -> str:
    """The one-line description of an engine search, printed before it starts."""
    desc = f"{name} search on {cfg.data.dataset}: {cfg.epochs} epochs, C={cfg.C}, layers={cfg.layers}, " \
           f"batch {cfg.data.batch_size}, device={cfg.device}"
    if hasattr(cfg, "recovery"):
        desc += f", recover every {cfg.recover_every}, lambda={cfg.recovery.lam}, s={cfg.recovery.s}, " \
                f"m={cfg.recovery.m}"
    return desc


def _summary(name: str, cfg: Any, result: Any) -> list[str]:
    """What an engine search found, printed at its end (before the genotype's digest and file)."""
    final, extra = result.final, result.extra
    acc_key = "val_acc" if "val_acc" in final else "test_acc"
    lines = [f"done: {final.get('epochs')} epochs, {acc_key} {final.get(acc_key, float('nan')):.4f}, "
             f"{result.wall_time_s:.1f} s search time"]
    if "stop_epochs" in extra:
        lines.append(f"nodes stopped searching after epochs {extra['stop_epochs']}; search ended after epoch "
                     f"{extra['switch_epoch'] or '- (still searching)'}")
    if "export" in extra:
        lines.append(f"exported stand-alone model (Eq. 12) -> {extra['export']['export']}")
    return lines + [str(result.genotype)]


def benchmark_line(rec: dict) -> str:
    """The summary line of a table look-up: accuracy and percentile on each data set."""
    if not rec.get("in_table", True):
        return f"NAS-Bench-201 table: {rec['arch']} is not among its {rec['table_cells']} cells"
    parts = [f"{d} {rec[d]:.2f} % (percentile {rec['percentile'][d]:.1f})" for d in TABLE_DATASETS
             if rec.get(d) is not None]
    return f"NAS-Bench-201 table ({rec['table_cells']} cells): " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    return cli.launch(build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
