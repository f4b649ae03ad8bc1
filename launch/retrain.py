#!/usr/bin/env python
"""Retrain a genotype from scratch and report its test accuracy, size and FLOPs.

Writes into --out: run_info.json (config, versions, git commit), metrics.jsonl (one line per epoch),
checkpoint.pt (every epoch; --resume continues from it), model.pt (final weights) and result.json.
"""
from __future__ import annotations

import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run from a checkout without installation
    sys.path.insert(0, _ROOT)

from istanas import cli  # noqa: E402
from istanas.checkpoint import atomic_write_json, save  # noqa: E402
from istanas.config import read_yaml  # noqa: E402
from istanas.data import DATASETS  # noqa: E402
from istanas.retrain import RETRAIN_PRESETS, RetrainConfig, preset_dict, preset_for_dataset, retrain  # noqa: E402
from istanas.search import check_runtime  # noqa: E402

DEFAULT_OUT = "runs/retrain"

EPILOG = """\
precedence: preset < --config YAML < the flags above < --set KEY=VALUE.
Without --preset the dataset picks one: cifar10/cifar100 -> cifar10, imagenet -> imagenet, digits/mnist -> quick.

examples:
  # a CPU smoke run on scikit-learn's digits (ships with scikit-learn, nothing to download)
  python launch/retrain.py --genotype DARTS_V2 --dataset digits --epochs 3 --out runs/digits
  # the papers' CIFAR-10 evaluation (600 epochs, 36 channels, 20 cells, cutout, auxiliary head, drop-path)
  python launch/retrain.py --genotype ISTA_twostage --dataset cifar10 --data-root ~/data/cifar10 --out runs/ista2
  # a genotype found by launch/search.py, shorter
  python launch/retrain.py --genotype runs/search/genotype.json --dataset cifar10 --epochs 100
  # the shared JPEG copy of CIFAR-10, a small slice, any value changed with --set
  python launch/retrain.py --dataset cifar10 --data-root ../shared/data/cifar10-jpg.zip \\
      --set data.limit_train=5000 --set C=16 --set layers=8 --epochs 10
  # continue an interrupted run (config and seed come from its run_info.json)
  python launch/retrain.py --out runs/ista2 --resume
  # ImageNet mobile setting (250 epochs, 48 channels, 14 cells, label smoothing 0.1)
  python launch/retrain.py --genotype ISTA_ImageNet --preset imagenet --data-root /data/imagenet
  # a YAML config
  python launch/retrain.py --config configs/retrain_cifar10.yaml --genotype PC_DARTS
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch/retrain.py", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genotype", metavar="NAME_OR_JSON",
                   help="a published genotype name (see --list-genotypes), a genotype .json file, or JSON text "
                        "(default: the config's, DARTS_V2)")
    p.add_argument("--dataset", choices=DATASETS, help="dataset (default: the config's, else digits)")
    p.add_argument("--data-root", metavar="PATH",
                   help="dataset folder or .zip: CIFAR python batches, an ImageFolder with train/ and test/ (val/), "
                        "or a .zip of it")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data-root")
    p.add_argument("--epochs", type=int, metavar="N", help="training epochs (default: the preset's)")
    p.add_argument("--preset", choices=sorted(RETRAIN_PRESETS),
                   help="a whole setup: cifar10 (paper CIFAR-10), imagenet (paper ImageNet), quick (CPU smoke run)")
    p.add_argument("--list-genotypes", action="store_true", help="print the published genotype names and exit")
    cli.add_common_args(p, default_out=DEFAULT_OUT)
    return p


def _base_config(args: argparse.Namespace) -> dict:
    """The layer under --config: the resumed run's own config, else the named or implied preset."""
    if args.resume:
        info_path = os.path.join(args.out, cli.RUN_INFO_NAME)
        if os.path.isfile(info_path):
            import json

            with open(info_path, encoding="utf-8") as f:
                cfg = json.load(f).get("config")
            if isinstance(cfg, dict):
                return cfg
    if args.preset:
        return preset_dict(args.preset)
    dataset = args.dataset
    if dataset is None and args.config:
        data = read_yaml(args.config).get("data")
        dataset = data.get("dataset") if isinstance(data, dict) else None
    return preset_dict(preset_for_dataset(dataset or "digits"))


def _run(args: argparse.Namespace) -> int:
    if args.list_genotypes:
        from spaces.registry import list_genotypes

        print("\n".join(list_genotypes()))
        return 0
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    extra = {"genotype": args.genotype, "data.dataset": args.dataset, "data.root": args.data_root,
             "epochs": args.epochs, "data.download": True if args.download else None,
             "out": args.out if args.resume else None}
    cfg = cli.build_config(RetrainConfig, args, extra, base=_base_config(args))
    check_runtime(cfg)
    out = cfg.out
    state = cli.load_resume(out, args.resume, cfg=cfg, args=args)
    if state is None:
        cli.write_run_info(out, cfg, cfg.seed)
    done = int(state["epoch"]) if state is not None else 0
    print(f"retrain {cfg.genotype} on {cfg.data.dataset}: {cfg.epochs} epochs, C={cfg.C}, layers={cfg.layers}, "
          f"device={cfg.device}, out={out}" + (f" (resuming after epoch {done})" if state is not None else ""),
          flush=True)
    tasks: list = []
    result = retrain(cfg, on_epoch_end=cli.run_hooks(out, resume_epoch=done), resume=state,
                     progress=not args.no_progress, task_out=tasks)
    save(tasks[0].model.state_dict(), os.path.join(out, "model.pt"))
    atomic_write_json(os.path.join(out, "result.json"), result)
    print(f"done: test_acc {result['test_acc']:.4f} (best {result['best_test_acc']:.4f} at epoch "
          f"{result['best_epoch']}), {result['params_m']:.3f} M params, {result['flops_m']:.1f} M FLOPs, "
          f"{result['wall_time_s']:.1f} s -> {os.path.join(out, 'result.json')}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.launch(build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
