#!/usr/bin/env python
"""Distributed one-stage ISTA-NAS (paper Algorithm 2) on ImageNet with Ray Train: N data-parallel workers (DDP;
NCCL on GPUs, gloo on CPUs) search and then train the target network in one run.

Data: an ImageFolder, ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (the usual ImageNet layout with the
validation images sorted into class folders), or a .zip of it.  A folder with a single split (e.g.
../shared/data/imagenette-val-jpg.zip: imagenette/val/<wnid>) needs --holdout-fraction to cut a seeded,
class-stratified test set out of it.  On a cluster the path is read by the workers (e.g. /data/imagenet on every
GPU node, see cluster.yaml); a path the driver cannot see is checked there.

Everything lands in STORAGE/NAME (default runs/train/istanas-imagenet; any URI Ray accepts, e.g. s3://bucket/runs,
which a multi-node cluster needs): a checkpoint every epoch (weights, b, A, optimisers, epoch, search flag,
support, RNG), and at the end export/ with the stand-alone network (the coefficients folded into BatchNorm, paper
Eq. 12): genotype.json, model.safetensors, model.pt, model.onnx, export.json.  Per-epoch metrics (loss, accuracy,
images/s, peak memory, nodes stopped) are kept with each checkpoint (reports.json), exported as Prometheus gauges
istanas_train_* (the Ray dashboard's Metrics view) and printed.  A worker that dies is
replaced and the run resumes from the last checkpoint (--max-failures); a driver that dies: run the same command
again with --resume (same --name and --storage-path).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

import yaml

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run from a checkout without installation
    sys.path.insert(0, _ROOT)

from istanas import cli  # noqa: E402
from istanas.config import ConfigError, deep_merge, from_dict, parse_override, read_yaml, set_path, to_dict  # noqa: E402
from orchestrator.cluster import preflight  # noqa: E402
from orchestrator.train_onestage import (DistSearchConfig, build_search_config, check_run,  # noqa: E402
                                         run_distributed_search)

PRESETS = ("imagenet", "cifar10", "small")

EPILOG = """\
precedence: built-in defaults < --config YAML < the flags above < --set KEY=VALUE.
--set: keys of the job (num_workers, max_failures, resources_per_worker, ...) or, for anything else, of the
one-stage search config (lr, epsilon, search_epochs, data.num_workers, recovery.lam, ...); values are YAML.
--config: a YAML file with job keys and a `search:` mapping of one-stage keys.

examples:
  # one 8-GPU machine: 8 workers, global batch 1024 (128 per GPU), lr scaled with it
  python launch/imagenet_search.py --data /data/imagenet --num-workers 8 --use-gpu \\
      --global-batch-size 1024 --set lr=0.5
  # a Ray cluster started with `ray up cluster.yaml` (run on the head, e.g. through `ray exec cluster.yaml`),
  # 2 nodes x 8 GPUs, results on S3
  python launch/imagenet_search.py --address auto --data /data/imagenet --num-workers 16 --use-gpu \\
      --cpus-per-worker 7 --loader-workers 6 --global-batch-size 2048 --set lr=1.0 \\
      --storage-path s3://my-bucket/istanas
  # the driver died or the cluster was restarted: the same command with --resume continues the run
  python launch/imagenet_search.py --address auto --data /data/imagenet --num-workers 16 --use-gpu \\
      --cpus-per-worker 7 --loader-workers 6 --global-batch-size 2048 --set lr=1.0 \\
      --storage-path s3://my-bucket/istanas --resume
  # a CPU smoke test on the shared Imagenette images (2 workers, gloo, tiny net)
  python launch/imagenet_search.py --data ../shared/data/imagenette-val-jpg.zip --holdout-fraction 0.2 \\
      --num-workers 2 --num-cpus 2 --image-size 32 --global-batch-size 16 --limit-train 64 \\
      --epochs 4 --search-epochs 2 --loader-workers 0 --set C=8 --set layers=5 --name smoke
  # show the resolved configuration and exit
  python launch/imagenet_search.py --data /data/imagenet --num-workers 8 --use-gpu --print-config

dashboard: the embedded local Ray serves it on http://127.0.0.1:8265 (token auth is on: `ray get-auth-token`);
on a cluster, `ray dashboard cluster.yaml` forwards it to your machine through SSH.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch/imagenet_search.py", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="PATH", help="ImageFolder root with train/ and val/ class folders, or a .zip "
                                                   "of it (required unless --config sets search.data.root)")
    d.add_argument("--holdout-fraction", type=float, metavar="F",
                   help="for a single-split folder: the class-stratified fraction held out as the test set")
    d.add_argument("--image-size", type=int, metavar="PX", help="training crop size (default 224)")
    d.add_argument("--limit-train", type=int, metavar="N", help="use a seeded subset of N training images")
    d.add_argument("--loader-workers", type=int, metavar="N",
                   help="DataLoader processes per worker (default 8; keep it below --cpus-per-worker)")
    s = p.add_argument_group("search")
    s.add_argument("--preset", choices=PRESETS, help="one-stage setup (default imagenet: 14 cells, 48 channels)")
    s.add_argument("--epochs", type=int, metavar="N", help="hard cap on epochs (search + training)")
    s.add_argument("--search-epochs", type=int, metavar="N", help="cap on the search phase")
    s.add_argument("--train-epochs", type=int, metavar="N", help="training epochs after the search-to-train switch")
    s.add_argument("--global-batch-size", type=int, metavar="N",
                   help="batch over all workers, split evenly (default: the preset's 128 per worker)")
    s.add_argument("--seed", type=int, metavar="N", help="seed of weights, A, b and data order")
    w = p.add_argument_group("scaling")
    w.add_argument("--num-workers", type=int, metavar="N", help="data-parallel workers (ranks); default 2")
    w.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL (default: CPU workers, gloo)")
    w.add_argument("--cpus-per-worker", type=float, metavar="N",
                   help="CPUs reserved per worker (default 8 with --use-gpu, else 1)")
    w.add_argument("--gpus-per-worker", type=float, metavar="N", help="GPUs per worker with --use-gpu (default 1)")
    w.add_argument("--max-failures", type=int, metavar="N",
                   help="worker failures to survive, each resumed from the last checkpoint (default 3; -1 = "
                        "unlimited)")
    r = p.add_argument_group("run and cluster")
    r.add_argument("--name", help="run name (default istanas-imagenet)")
    r.add_argument("--storage-path", metavar="PATH_OR_URI",
                   help="where runs live: a local folder (default runs/train) or a URI (s3://, gs://, ...); on a "
                        "multi-node cluster it must be storage every node reaches")
    r.add_argument("--resume", action="store_true",
                   help="continue the run NAME in STORAGE from its last checkpoint")
    r.add_argument("--address", help="a running Ray cluster ('auto' on a node of it, host:port); default: "
                                     "RAY_ADDRESS, else an embedded local Ray")
    r.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of the embedded local Ray (default: all)")
    r.add_argument("--no-dashboard", action="store_true", help="no Ray dashboard (embedded local Ray)")
    r.add_argument("--dashboard-host", metavar="HOST",
                   help="interface the dashboard binds (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    r.add_argument("--config", metavar="PATH", help="YAML file of job keys with a `search:` mapping")
    r.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="override one value (see below); repeatable, applied last")
    r.add_argument("--print-config", action="store_true", help="print the resolved configuration as YAML and exit")
    return p


def build_job(args: argparse.Namespace) -> DistSearchConfig:
    """The validated :class:`orchestrator.train_onestage.DistSearchConfig` of the command line: built-in defaults
    < ``--config`` YAML < flags < ``--set`` (:func:`istanas.config.deep_merge`; ``--set`` keys that are not job
    fields go to the one-stage ``search`` mapping)."""
    for flag in ("num_workers", "global_batch_size", "epochs", "search_epochs", "train_epochs", "image_size",
                 "limit_train"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    data: dict[str, Any] = read_yaml(args.config) if args.config else {}
    if not isinstance(data.get("search", {}), dict):
        raise ConfigError("--config: `search` must be a mapping of one-stage keys")
    flags: dict[str, Any] = {"name": args.name, "storage_path": args.storage_path, "num_workers": args.num_workers,
                             "cpus_per_worker": args.cpus_per_worker, "gpus_per_worker": args.gpus_per_worker,
                             "global_batch_size": args.global_batch_size, "max_failures": args.max_failures,
                             "address": args.address, "num_cpus": args.num_cpus,
                             "dashboard_host": args.dashboard_host, "search_preset": args.preset}
    if args.use_gpu:
        flags["use_gpu"] = True
        if args.cpus_per_worker is None and "cpus_per_worker" not in data:
            flags["cpus_per_worker"] = 8
    if args.no_dashboard:
        flags["dashboard"] = False
    flags["search"] = {"data.root": args.data, "data.holdout_fraction": args.holdout_fraction,
                       "data.image_size": args.image_size, "data.limit_train": args.limit_train,
                       "data.num_workers": args.loader_workers, "epochs": args.epochs,
                       "search_epochs": args.search_epochs, "train_epochs": args.train_epochs, "seed": args.seed}
    data = deep_merge(data, flags)
    job_keys = {f.name for f in dataclasses.fields(DistSearchConfig)}
    for text in args.set:
        path, value = parse_override(text)
        set_path(data, path if path[0] in job_keys else ["search", *path], value)
    if not (data["search"].get("data") or {}).get("root"):
        raise ConfigError("--data: give the ImageFolder root (train/ and val/ class folders) or a .zip of it")
    cfg = from_dict(DistSearchConfig, data)
    cfg.validate()
    check_image_folder(cfg)
    return cfg


def preflight_job(cfg) -> None:
    """What the embedded local Ray (or the storage path, the seed) makes impossible, before Ray starts."""
    n = int(cfg.num_workers)
    preflight(cfg, {"num_workers x cpus_per_worker / gpus_per_worker": (
        n * float(cfg.cpus_per_worker), n * float(cfg.gpus_per_worker) if cfg.use_gpu else 0.0)},
        storage_path=cfg.storage_path, seed=cfg.search.get("seed"))


def check_image_folder(cfg) -> None:
    """A cheap look at a local data root: a zip, or a folder with train/ + val/ (or test/) within two levels, or one
    split folder with a holdout fraction.  Roots the driver cannot see (a cluster's) are checked by the workers."""
    sdata = cfg.search.get("data", {})
    root = os.path.expanduser(str(sdata.get("root")))
    if not os.path.isdir(root):
        return                       # a zip (listed by the workers) or a cluster path
    found: set[str] = set()
    frontier = [root]
    for _ in range(3):
        nxt = []
        for folder in frontier:
            try:
                entries = [e for e in os.scandir(folder) if e.is_dir()]
            except OSError:
                continue
            for e in entries:
                if e.name in ("train", "val", "test"):
                    found.add(e.name)
                elif len(entries) <= 4:
                    nxt.append(e.path)
        if found:
            break
        frontier = nxt
    if not found:
        raise ConfigError(f"--data: {root} has no train/ or val/ folder; expected ROOT/train/<class>/*.JPEG and "
                          f"ROOT/val/<class>/*.JPEG (an ImageFolder) or a .zip of it")
    if not ({"train"} <= found and found & {"val", "test"}) and sdata.get("holdout_fraction") is None:
        raise ConfigError(f"--data: {root} has only {sorted(found)}; pass --holdout-fraction (e.g. 0.2) to hold out "
                          f"a test set from it, or add the missing split")


def _run(args: argparse.Namespace) -> int:
    cfg = build_job(args)
    if args.print_config:
        job = to_dict(cfg)
        job.pop("search")
        print(yaml.safe_dump({"job": job, "search": to_dict(build_search_config(cfg, device="cpu"))},
                             sort_keys=False), end="")
        return 0
    preflight_job(cfg)   # after --print-config: a cluster's config prints anywhere
    check_run(cfg, args.resume)
    out = run_distributed_search(cfg, resume=args.resume, validate=False)
    m = out.metrics
    print(f"done: {int(m.get('epoch', 0))} epochs (search ended after epoch {int(m.get('switch_epoch', 0))}), "
          f"test_acc {float(m.get('test_acc', float('nan'))):.4f}, {out.wall_time_s:.1f} s", flush=True)
    print(f"genotype {out.genotype_digest}: {out.genotype}")
    print(f"stand-alone model (Eq. 12), genotype.json and model.onnx -> {out.export_path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.launch(build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
