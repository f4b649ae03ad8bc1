#!/usr/bin/env python
"""The real data a device run needs, small enough to travel with the working tree (``make gpu-data``).

The device machine sees the working tree (at most 64 MiB of it) but not ``../shared/data``.  This writes
``OUT/cifar10-jpg.zip`` -- a class-stratified subset of the shared CIFAR-10 zip's training images (``--train``,
default 10,000), the JPEG bytes copied as they are, in the same ``cifar10/train/<class>/*.jpg`` layout (and
``--test`` test images) -- and a copy of ``nasbench201_full.csv``, so that on the device::

    ISTANAS_SHARED_DATA=gpu-data python benchmarks/bench_tenas_quality.py --json $OUT/tq.json --preset paper \\
        --device cuda --couplings batch,frozen --combined-couplings frozen --skip-correlation

reads them as it reads the shared folder here (the TE-NAS pool is then these training images, not all 50,000:
a search draws, per repeat, 72 NTK images and 3,000 region-count patches from it).  The folder is git-ignored; pass it
to the device tool's ``carry``.  Files are written atomically; the total is checked against ``--max-mib``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipfile
from collections import defaultdict

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from istanas.data import shared_data_dir  # noqa: E402

TABLE = "nasbench201_full.csv"
CIFAR_ZIP = "cifar10-jpg.zip"


def stratified_members(names: list[str], split: str, n: int, seed: int) -> list[str]:
    """``n`` image members of ``split`` (``<top>/<split>/<class>/<file>``), as equal a share per class as ``n``
    allows (the first ``n % classes`` classes, in sorted order, get one more), drawn with ``seed``; sorted."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for name in names:
        parts = name.split("/")
        if len(parts) == 4 and parts[1] == split and parts[3] and not name.endswith("/"):
            by_class[parts[2]].append(name)
    classes = sorted(by_class)
    if not classes:
        raise ValueError(f"no {split!r} images in the zip (expected <top>/{split}/<class>/<file>)")
    total = sum(len(v) for v in by_class.values())
    if n > total:
        raise ValueError(f"asked for {n} {split} images, the zip has {total}")
    rng = np.random.default_rng(seed)
    base, extra = divmod(n, len(classes))
    out: list[str] = []
    for i, cls in enumerate(classes):
        files = sorted(by_class[cls])
        k = base + (1 if i < extra else 0)
        if k > len(files):
            raise ValueError(f"class {cls!r} has {len(files)} {split} images, {k} asked")
        out.extend(files[j] for j in sorted(rng.choice(len(files), size=k, replace=False)))
    return sorted(out)


def write_subset(src_zip: str, dst_zip: str, train: int, test: int, seed: int = 0) -> dict:
    """Copy a stratified subset of ``src_zip`` into ``dst_zip`` (atomically); returns the counts and bytes."""
    with zipfile.ZipFile(src_zip) as src:
        names = src.namelist()
        members = stratified_members(names, "train", train, seed) + (
            stratified_members(names, "test", test, seed + 1) if test else [])
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst_zip)), suffix=".zip.tmp")
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as dst:
                for name in members:
                    dst.writestr(src.getinfo(name), src.read(name))
            os.chmod(tmp, 0o644)
            os.replace(tmp, dst_zip)
        except BaseException:
            os.unlink(tmp)
            raise
    return {"train": train, "test": test, "bytes": os.path.getsize(dst_zip)}


def copy_atomic(src: str, dst: str) -> None:
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="example: python benchmarks/gpu_data.py --out gpu-data --train 10000")
    ap.add_argument("--out", default="gpu-data", help="folder to write (git-ignored; default gpu-data)")
    ap.add_argument("--shared", default=None, help="the shared data folder (default: $ISTANAS_SHARED_DATA, "
                                                   "else ../shared/data)")
    ap.add_argument("--train", type=int, default=10000, help="CIFAR-10 training images to keep (default 10000)")
    ap.add_argument("--test", type=int, default=1000,
                    help="CIFAR-10 test images to keep (default 1000; the loader wants both splits)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-mib", type=float, default=48.0,
                    help="refuse a folder larger than this (the device carries 64 MiB with the tree; default 48)")
    args = ap.parse_args(argv)
    shared = args.shared or shared_data_dir()
    src = os.path.join(shared, CIFAR_ZIP) if shared else None
    if not src or not os.path.isfile(src) or not os.path.isfile(os.path.join(shared, TABLE)):
        print(f"gpu_data: need {CIFAR_ZIP} and {TABLE} in the shared data folder (--shared or "
              f"$ISTANAS_SHARED_DATA; looked in {shared!r})", file=sys.stderr)
        return 2
    if args.train < 1 or args.test < 0:
        print(f"gpu_data: --train must be >= 1 and --test >= 0, got {args.train} / {args.test}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    try:
        info = write_subset(src, os.path.join(args.out, CIFAR_ZIP), args.train, args.test, args.seed)
    except ValueError as e:
        print(f"gpu_data: {e}", file=sys.stderr)
        return 2
    copy_atomic(os.path.join(shared, TABLE), os.path.join(args.out, TABLE))
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in (CIFAR_ZIP, TABLE))
    print(f"gpu_data: {args.out}/{CIFAR_ZIP} ({info['train']} train, {info['test']} test images, "
          f"{info['bytes'] / 2**20:.1f} MiB) and {TABLE}: {total / 2**20:.1f} MiB in all")
    if total > args.max_mib * 2**20:
        print(f"gpu_data: {total / 2**20:.1f} MiB is over --max-mib {args.max_mib}; keep fewer images",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
