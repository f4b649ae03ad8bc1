"""Benchmark: images/s of the ImageNet training loader, PIL decode vs batched device decode (``data.decode``).

Both paths build the real loaders (``istanas.data.get_loaders``, dataset ``imagenet``, split ``train``) on the same
JPEGs and serve the training transform (RandomResizedCrop(``--image-size``) + flip + ColorJitter + normalise):

* ``pil``: ``--workers`` DataLoader worker processes decode with PIL and run the torchvision transforms per image;
  the batch is then moved to ``--device`` (as the engine does).
* ``gpu``: the workers read file bytes only; the main process decodes each batch with one
  ``torchvision.io.decode_jpeg(list, device=--device)`` call (nvJPEG on CUDA, libjpeg-turbo on the CPU) and
  augments it on the device (:class:`istanas.data.DecodeLoader`).

``images_per_s``: images of one timed pass over ``--images`` training images (after one untimed warm-up pass that
also fills the OS file cache), CUDA synchronised at the end; the median over ``--repeats`` passes.
``decode_only_images_per_s``: ``decode_images`` alone on the same bytes, batch by batch (no file reads, no
transforms).  ``eval_max_levels`` / ``eval_mean_levels``: the largest / mean difference, in 8-bit grey levels, of
the deterministic eval transform (Resize + CenterCrop) between the two paths on the same images (nvJPEG is not
bit-exact with libjpeg-turbo).

Data: ``--data`` (an ImageFolder or ``.zip``; default the shared ``imagenette-val-jpg.zip``, extracted once to the
cache by ``istanas.data``), or ``--synthetic N`` generated JPEGs (``--synthetic-size`` pixels) in a temporary folder.

Usage: ``python benchmarks/bench_loader.py --json out.json [--device cpu|cuda] [--images 512] [--workers 2]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from istanas.checkpoint import atomic_write_json  # noqa: E402
from istanas.data import DataConfig, decode_images, get_loaders, shared_data_dir  # noqa: E402

MEAN_STD_IMAGENET = (0.229, 0.224, 0.225)


def write_synthetic_jpegs(root: str, n: int, size: tuple[int, int] = (375, 500), classes: int = 4,
                          seed: int = 0, quality: int = 90) -> str:
    """Write ``n`` JPEGs of ``size`` (h, w) as ``root/val/c<k>/<i>.JPEG`` (smooth colour fields plus noise, so
    the files are about as large as ImageNet's); returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        d = os.path.join(root, "val", f"c{i % classes}")
        os.makedirs(d, exist_ok=True)
        fx, fy, ph = rng.uniform(0.01, 0.08, 3)
        img = np.stack([np.sin(xx * fx + ph * 9), np.cos(yy * fy + ph * 5), np.sin((xx + yy) * fx * fy * 20)], -1)
        img = img * 100 + 128 + rng.normal(0, 12, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(d, f"{i}.JPEG"), quality=quality)
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cfg(root: str, args, decode: str, augment: bool = True) -> DataConfig:
    return DataConfig(dataset="imagenet", root=root, holdout_fraction=0.2, limit_train=args.images,
                      limit_test=min(args.images, 64), image_size=args.image_size, batch_size=args.batch,
                      eval_batch_size=64, num_workers=args.workers, decode=decode, augment=augment)


def _pass(loader, device: torch.device) -> tuple[int, float]:
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        n += x.shape[0]
    _sync(device)
    return n, time.perf_counter() - t0


def measure_path(root: str, args, decode: str, device: torch.device) -> dict:
    """images/s of the training loader of one ``decode`` path (warm-up pass, then ``args.repeats`` timed)."""
    loaders = get_loaders(_cfg(root, args, decode), "train", seed=0, device=device if decode == "gpu" else None)
    _pass(loaders.train, device)
    runs = [_pass(loaders.train, device) for _ in range(args.repeats)]
    ips = [n / t for n, t in runs]
    return {"images": runs[0][0], "images_per_s": statistics.median(ips), "images_per_s_all": ips,
            "pass_s": [t for _, t in runs]}


def decode_only(root: str, args, device: torch.device) -> dict:
    """``decode_images`` alone, batch by batch, on the bytes of the training images (already in memory)."""
    loaders = get_loaders(_cfg(root, args, "gpu"), "train", seed=0, device=device)
    batches = [data for data, _ in loaders.train.stream]
    decode_images(batches[0], device)                       # warm-up (nvJPEG handles, CUDA context)
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for data in batches:
        n += len(decode_images(data, device))
    _sync(device)
    return {"images": n, "decode_only_images_per_s": n / (time.perf_counter() - t0)}


def eval_agreement(root: str, args, device: torch.device) -> dict:
    """Grey-level difference of the eval transform's output between the PIL and the device-decode path."""
    pil = get_loaders(_cfg(root, args, "pil", augment=False), "train", seed=0).valid
    dev = get_loaders(_cfg(root, args, "gpu", augment=False), "train", seed=0, device=device).valid
    std = torch.tensor(MEAN_STD_IMAGENET).view(1, 3, 1, 1)
    worst, total, count = 0.0, 0.0, 0
    for (x1, y1), (x2, y2) in zip(pil, dev):
        if not torch.equal(y1, y2.cpu()):
            raise RuntimeError("the two paths served different images")
        lv = ((x1 - x2.float().cpu()) * std * 255).abs()
        worst, total, count = max(worst, float(lv.max())), total + float(lv.sum()), count + lv.numel()
    return {"eval_max_levels": worst, "eval_mean_levels": total / max(1, count)}


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    res: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                             "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                             "loadavg_start": os.getloadavg()},
                 "settings": {k: v for k, v in vars(args).items() if k != "json"}}
    if device.type == "cuda":
        res["machine"]["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        if args.synthetic:
            root = write_synthetic_jpegs(tmp, args.synthetic, tuple(args.synthetic_size))
            res["data"] = f"{args.synthetic} synthetic JPEGs {args.synthetic_size[0]}x{args.synthetic_size[1]}"
        else:
            root = args.data or os.path.join(shared_data_dir() or "../shared/data", "imagenette-val-jpg.zip")
            if not os.path.exists(root):
                res["skipped"] = f"no data at {root}; pass --data or --synthetic N"
                return res
            res["data"] = root
        res["pil"] = measure_path(root, args, "pil", device)
        res["gpu"] = {**measure_path(root, args, "gpu", device), **decode_only(root, args, device)}
        res.update(eval_agreement(root, args, device))
    res["device"] = str(device)
    res["decode_speedup_vs_pil"] = res["gpu"]["images_per_s"] / res["pil"]["images_per_s"]
    res["machine"]["loadavg_end"] = os.getloadavg()
    return res


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--device", default="cpu", help="where the decode path decodes and augments (cpu or cuda)")
    ap.add_argument("--data", default=None, help="ImageFolder or .zip (default: the shared Imagenette zip)")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N", help="use N generated JPEGs instead")
    ap.add_argument("--synthetic-size", type=int, nargs=2, default=[375, 500], metavar=("H", "W"))
    ap.add_argument("--images", type=int, default=512, help="training images per pass (a seeded subset)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (both paths)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    return ap


def main(argv: Optional[list[str]] = None) -> dict:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    if "skipped" in res:
        print(res["skipped"], flush=True)
    else:
        print(f"[{res['device']}] {res['data']}: PIL {res['pil']['images_per_s']:.1f} images/s, decode path "
              f"{res['gpu']['images_per_s']:.1f} images/s ({res['decode_speedup_vs_pil']:.2f}x; decode alone "
              f"{res['gpu']['decode_only_images_per_s']:.1f} images/s); eval transform differs by <= "
              f"{res['eval_max_levels']:.2f} grey levels (mean {res['eval_mean_levels']:.3f})", flush=True)
    atomic_write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
