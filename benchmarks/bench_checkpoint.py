"""Benchmark: save / load time of a real search state, plain ``torch.save`` vs packed (``save(..., packed=True)``).

The state is what a sweep trial checkpoints every epoch and ``--resume`` reads: the engine state of a two-stage
ISTA-NAS search (``--preset``, default the sweep's ``small``) after one epoch on digits (super-net weights, both
optimisers' states, the compressed space, RNG states; ~2,900 tensors in the DARTS space).  Each variant is timed
``--repeats`` times, alternated (plain, packed, plain, ...), through :func:`istanas.checkpoint.save` /
:func:`istanas.checkpoint.load` into a temporary folder (SHA-256 record included); medians, and the loaded
states compared tensor by tensor.  On CUDA (``--device cuda``) the state's tensors are moved to the device first
(plain: one device-to-host copy per tensor; packed: one per dtype).

Usage: ``python benchmarks/bench_checkpoint.py --json out.json [--space darts|nb201] [--repeats 7] [--device cpu]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from istanas import checkpoint as ckpt  # noqa: E402
from istanas.ista.twostage import TwoStageConfig  # noqa: E402
from istanas.search import run_search  # noqa: E402


def search_state(space: str, preset: str) -> dict:
    """The engine state after one epoch of a two-stage search on digits (what a trial checkpoints)."""
    extra = {"recovery": dict(TwoStageConfig.NB201_OVERLAY["recovery"])} if space == "nb201" else {}
    cfg = TwoStageConfig.preset(preset, epochs=1, space=space, **extra)
    got: dict = {}
    run_search("twostage", cfg, on_epoch_end=lambda m, st=None: got.update(state=st) if st else None,
               progress=False)
    return got["state"]


def count_tensors(o) -> int:
    if isinstance(o, torch.Tensor):
        return 1
    if isinstance(o, dict):
        return sum(count_tensors(v) for v in o.values())
    if isinstance(o, (list, tuple)):
        return sum(count_tensors(v) for v in o)
    return 0


def to_device(o, device: torch.device):
    if isinstance(o, torch.Tensor):
        return o.to(device)
    if isinstance(o, dict):
        return type(o)((k, to_device(v, device)) for k, v in o.items())
    if isinstance(o, list):
        return [to_device(v, device) for v in o]
    if isinstance(o, tuple):
        return tuple(to_device(v, device) for v in o)
    return o


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--space", default="darts", choices=["darts", "nb201"])
    ap.add_argument("--preset", default="small", help="TwoStageConfig preset of the search whose state is saved")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    state = to_device(search_state(args.space, args.preset), device)
    times: dict[str, list[float]] = {"save_plain_s": [], "save_packed_s": [], "load_plain_s": [],
                                     "load_packed_s": []}
    sizes: dict[str, int] = {}
    ok = True
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.repeats):
            for kind in ("plain", "packed"):
                path = os.path.join(d, f"{kind}.pt")
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                ckpt.save(state, path, packed=kind == "packed")
                times[f"save_{kind}_s"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                back = ckpt.load(path)
                times[f"load_{kind}_s"].append(time.perf_counter() - t0)
                sizes[f"{kind}_bytes"] = os.path.getsize(path)
                ok = ok and same(state, back)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                       "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
           "space": args.space, "preset": args.preset, "device": str(device), "repeats": args.repeats,
           "tensors": count_tensors(state), **sizes, **med, "all_s": times,
           "save_speedup": med["save_plain_s"] / med["save_packed_s"],
           "load_speedup": med["load_plain_s"] / med["load_packed_s"], "loaded_states_equal": ok}
    ckpt.atomic_write_json(args.json, res)
    print(f"{res['tensors']} tensors, {sizes['plain_bytes'] / 1e6:.1f} MB: save {med['save_plain_s'] * 1e3:.0f} -> "
          f"{med['save_packed_s'] * 1e3:.0f} ms ({res['save_speedup']:.1f}x), load {med['load_plain_s'] * 1e3:.0f}"
          f" -> {med['load_packed_s'] * 1e3:.0f} ms ({res['load_speedup']:.1f}x); states equal: {ok}")
    return res


if __name__ == "__main__":
    main()
