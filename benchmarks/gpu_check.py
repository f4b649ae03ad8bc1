"""The device check: everything that needs a GPU, in one command, one JSON and one log (``make gpu-check``).

Sections (each recorded as ``{"status": "ok" | "failed" | "skipped", "seconds", ...}``; a failing section keeps
its error and the check goes on):

* ``environment``: Python, torch, torchvision, the device, which optional packages (Ray, Optuna, CVXPY) exist.
* ``cuda_tests``: pytest on the test files that mention CUDA, ``-k "cuda or gpu_decode"``; tests or test modules that
  need a missing optional package (Ray, Optuna, CVXPY: the accelerator image has none) are reported skipped, not
  failed (this module is also the pytest plugin that does it: ``-p gpu_check``).
* ``bench_supernet_b64`` / ``bench_supernet_b256``: ``bench_supernet.py --devices DEVICE --batch 64 | 256``: step
  time and peak memory of the ISTA-NAS sparse super-net vs the dense DARTS super-net vs the child network, next to
  the paper's 1.9 / 5.5 GB (ISTA-NAS, batch 64 / 256) and 9.1 GB (DARTS first order, batch 64).
* ``bench_recovery``, ``bench_onestage``, ``bench_tenas``: those benchmarks with ``--device(s) DEVICE``
  (subprocesses, their ``--json``; bench_tenas on generated 32x32 images, without its whole-search part unless
  ``--tenas-search``).
* ``search_twostage`` / ``search_onestage``: images/s of real search steps (``istanas.engine.train_epoch`` over
  :class:`TwoStageTask` at the paper's batch 256, C = 16, 8 cells; :class:`OneStageTask` with the ``cifar10``
  preset, batch 96, C = 36, 20 cells) on generated CIFAR-shaped tensors on the device, projected to the whole
  search in GPU-hours (two-stage: 50 epochs x 25,000 training-half images; one-stage: 600 search epochs x 50,000
  images, and the whole 1,200-epoch run at the search step's rate, an upper bound) next to the paper's 0.05 and
  2.3 GPU-days on a GTX 1080Ti.  Evaluation passes are not counted.
* ``recovery_share``: the host recovery's share of a two-stage step on the device, measured as the slowdown of
  ``recover_every: step`` against ``recover_every: epoch`` on the same task (what the recovery adds to the
  critical path, GPU waits included), next to bench_supernet's ``recovery_share_of_step``.  Target <= 1 %.
* ``imagenet_loader``: ``bench_loader`` on generated JPEGs: images/s of the PIL path vs ``decode: gpu`` on DEVICE,
  and the grey-level difference of their eval transforms (nvJPEG vs libjpeg-turbo).

``--tiny`` shrinks every section (small nets, few steps, few images) so that ``--device cpu --tiny`` runs in about
a minute on a CPU; the test suite runs it so the check cannot rot between GPU runs.  ``--budget-s`` (default 480)
bounds the whole check: subprocesses get the time that is left, and sections that no longer fit are skipped.

Usage: ``python benchmarks/gpu_check.py --out gpu-check [--device cuda] [--tiny] [--only SECTION,...]``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from typing import Any, Callable, Optional

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from bench_loader import write_synthetic_jpegs  # noqa: E402
from istanas.checkpoint import atomic_write_json  # noqa: E402
from istanas.data import Loaders, TensorLoader, augment_for, DataConfig  # noqa: E402
from istanas.engine import Progress, train_epoch  # noqa: E402
from istanas.ista.onestage import OneStageConfig, OneStageTask  # noqa: E402
from istanas.ista.twostage import TwoStageConfig, TwoStageTask  # noqa: E402
from istanas.search import deterministic_algorithms  # noqa: E402

OPTIONAL_PACKAGES = ("ray", "optuna", "cvxpy")
PAPER = {"ista_mem_gb_b64": 1.9, "ista_mem_gb_b256": 5.5, "darts_mem_gb_b64": 9.1,
         "twostage_gpu_days": 0.05, "onestage_gpu_days": 2.3, "gpu": "GTX 1080Ti"}
CIFAR_TRAIN = 50_000


# ------------------------------------------------------------------------------------------------ pytest plugin
def _missing_optional(text: str) -> Optional[str]:
    m = re.search(r"No module named '(\w+)|import of (\w+) halted", text)
    name = (m.group(1) or m.group(2)) if m else None
    return name if name in OPTIONAL_PACKAGES else None


def _skip_longrepr(path: str, name: str) -> tuple[str, int, str]:
    return (path, 0, f"Skipped: needs {name}, which is not installed here")


try:
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(collector):  # a test module that imports a missing optional package: skip
        outcome = yield
        rep = outcome.get_result()
        if rep.failed:
            name = _missing_optional(str(rep.longrepr))
            if name:
                rep.outcome, rep.longrepr = "skipped", _skip_longrepr(str(collector.path), name)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):  # a test that imports one at run time: skip
        outcome = yield
        rep = outcome.get_result()
        if rep.failed and call.excinfo is not None and call.excinfo.errisinstance(ImportError):
            name = _missing_optional(str(call.excinfo.value))
            if name:
                rep.outcome, rep.longrepr = "skipped", _skip_longrepr(str(item.path), name)
except ImportError:  # pytest is only needed for the cuda_tests section
    pass


# ------------------------------------------------------------------------------------------------------ helpers
class Check:
    """Runs sections under a wall-clock budget, logs to ``out/gpu_check.log``, writes ``out/gpu_check.json``."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.out = os.path.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.log_path = os.path.join(self.out, "gpu_check.log")
        self.json_path = os.path.join(self.out, "gpu_check.json")
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.t0 = time.perf_counter()
        self.result: dict[str, Any] = {"device": str(self.device), "tiny": bool(args.tiny),
                                       "budget_s": args.budget_s, "sections": {}}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def log(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def section(self, name: str, fn: Callable[[], dict], need_s: float = 5.0) -> None:
        if self.args.only and name not in self.args.only:
            return
        if self.left() < need_s:
            rec = {"status": "skipped", "error": f"out of time ({self.left():.0f} s of the budget left)"}
        else:
            self.log(f"== {name}")
            t = time.perf_counter()
            try:
                rec = {"status": "ok", **fn()}
            except Exception as e:  # one bad section must not lose the others
                rec = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-4000:]}
            rec["seconds"] = round(time.perf_counter() - t, 2)
        self.result["sections"][name] = rec
        self.log(f"   {name}: {rec['status']}" + (f" ({rec['error']})" if rec.get("error") else ""))
        self.write()

    def write(self) -> None:
        self.result["total_s"] = round(time.perf_counter() - self.t0, 2)
        atomic_write_json(self.json_path, self.result)

    def run(self, argv: list[str], *, name: str, timeout: Optional[float] = None) -> subprocess.CompletedProcess:
        """Run ``python argv`` from the repository root; its output goes to the log; raise on a non-zero exit."""
        limit = max(5.0, min(self.left(), timeout or self.left()))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE, os.environ.get("PYTHONPATH", "")]))
        self.log(f"   $ python {' '.join(argv)}  (timeout {limit:.0f} s)")
        try:
            p = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=limit)
        except subprocess.TimeoutExpired as e:
            self._log.write((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                            else (e.stdout or ""))
            raise RuntimeError(f"{name}: timed out after {limit:.0f} s") from None
        self._log.write(p.stdout + p.stderr)
        self._log.flush()
        return p

    def bench(self, script: str, extra: list[str], name: str) -> dict:
        """A benchmark's ``--json`` result (the file is kept under ``out/``)."""
        path = os.path.join(self.out, f"{name}.json")
        p = self.run([os.path.join("benchmarks", script), "--json", path, *extra], name=name)
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{script} exited {p.returncode}: {' | '.join(tail)}")
        with open(path, encoding="utf-8") as f:
            return json.load(f)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------- sections
def environment(chk: Check) -> dict:
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(),
           "optional_packages": {n: importlib.util.find_spec(n) is not None for n in OPTIONAL_PACKAGES}}
    if chk.device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but CUDA is not available")
        props = torch.cuda.get_device_properties(chk.device)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   bf16_supported=torch.cuda.is_bf16_supported())
    return env


def cuda_test_files() -> list[str]:
    folder = os.path.join(REPO, "tests")
    out = []
    for f in sorted(os.listdir(folder)):
        if f.startswith("test_") and f.endswith(".py") and f != "test_gpu_check.py":
            with open(os.path.join(folder, f), encoding="utf-8") as fh:
                text = fh.read()
                if "cuda" in text or "gpu_decode" in text:
                    out.append(os.path.join("tests", f))
    return out


def cuda_tests(chk: Check) -> dict:
    xml = os.path.join(chk.out, "cuda_tests.xml")
    files = cuda_test_files()
    p = chk.run(["-m", "pytest", "-q", "-ra", "-p", "gpu_check", "-k", "cuda or gpu_decode", f"--junitxml={xml}",
                 "-o", "cache_dir=" + os.path.join(chk.out, ".pytest_cache"), *files], name="cuda_tests")
    cases: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    if os.path.isfile(xml):
        for tc in ET.parse(xml).getroot().iter("testcase"):
            test = f"{tc.get('classname')}::{tc.get('name')}"
            kind = ("failed" if tc.find("failure") is not None or tc.find("error") is not None
                    else "skipped" if tc.find("skipped") is not None else "passed")
            cases[kind].append(test)
    summary = (p.stdout.strip().splitlines() or [""])[-1]
    res = {"files": files, "summary": summary, "returncode": p.returncode, **cases,
           "counts": {k: len(v) for k, v in cases.items()}}
    if p.returncode not in (0, 5):  # 5: nothing selected
        raise RuntimeError(f"pytest exited {p.returncode}: {summary}; failed: {cases['failed'][:8]}")
    return res


def supernet(chk: Check, batch: int) -> dict:
    a = chk.args
    extra = ["--devices", str(chk.device), "--batch", str(batch // 32 if a.tiny else batch)]
    extra += (["--C", "4", "--layers", "3", "--image-size", "16", "--repeats", "1", "--warmup", "0"] if a.tiny
              else ["--repeats", "5"])
    r = chk.bench("bench_supernet.py", extra, f"bench_supernet_b{batch}")
    d = r["devices"][chk.device.type]
    out = {k: d[k] for k in ("time_ratio_vs_darts", "memory_ratio_vs_darts", "time_ratio_vs_child",
                             "recovery_ms_median", "recovery_share_of_step")}
    for net in ("ista_sparse", "darts_dense", "child"):
        out[net] = {"step_ms_median": d[net]["step_ms_median"], "peak_mb": d[net]["peak_mb"]}
    if "syncs_per_algorithm1_step" in d:
        out["syncs_per_algorithm1_step"] = d["syncs_per_algorithm1_step"]
    paper = PAPER.get(f"ista_mem_gb_b{batch}")
    if paper is not None and not a.tiny:
        out["paper_ista_mem_gb"] = paper
        out["ista_peak_gb"] = d["ista_sparse"]["peak_mb"] / 1024
        out["ista_mem_le_paper"] = out["ista_peak_gb"] <= paper
    if batch == 64 and not a.tiny:
        out["paper_darts_mem_gb"] = PAPER["darts_mem_gb_b64"]
    return out


def bench_recovery(chk: Check) -> dict:
    extra = ["--device", str(chk.device)] + (["--trials", "2", "--reps", "2", "--cvxpy-reps", "1"]
                                             if chk.args.tiny else ["--trials", "10"])
    r = chk.bench("bench_recovery.py", extra, "bench_recovery")
    keep = ("batched_ms", "warm_ms", "speedup_vs_cvxpy", "support_agreement", "cvxpy_solver")
    return {k: r[k] for k in keep if k in r} | {"keys": sorted(r)}


def bench_onestage(chk: Check) -> dict:
    extra = ["--devices", str(chk.device)] + (["--C", "4", "--layers", "3", "--batch", "4", "--repeats", "1",
                                               "--warmup", "0"] if chk.args.tiny else [])
    r = chk.bench("bench_onestage.py", extra, "bench_onestage")
    d = r.get("devices", {}).get(chk.device.type, r)
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


def bench_tenas(chk: Check) -> dict:
    npy = os.path.join(chk.out, "tenas_images.npy")
    rng = np.random.default_rng(0)  # 32x32 RGB stand-ins: the timing does not depend on the pictures
    np.save(npy, rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8), allow_pickle=False)
    extra = ["--device", str(chk.device), "--images-npy", npy, "--data-dir", chk.out]
    if chk.args.tiny:
        extra += ["--couplings", "frozen", "--reps", "1", "--ntk-batch", "8", "--skip-agreement", "--skip-search"]
    elif not chk.args.tenas_search:
        extra += ["--skip-search"]
    r = chk.bench("bench_tenas.py", extra, "bench_tenas")
    out = {k: r[k] for k in ("ntk_speedup_vs_loop", "ntk_speedup_vs_loop_frozen") if k in r}
    out["ntk"] = {sp: {c: {k: v for k, v in d.items() if k in ("vectorised_s", "loop_s", "speedup", "batch")}
                       for c, d in by.items()} for sp, by in r.get("ntk", {}).items()}
    if "search" in r:
        out["search_s"] = {c: (s.get("wall_time_s") or {}).get("mean") for c, s in r["search"].items()}
    return out


def _cifar_loaders(device: torch.device, batch: int, steps: int, cfg_data: DataConfig) -> Loaders:
    """Generated CIFAR-shaped uint8 images on ``device`` served like the real in-memory CIFAR-10 loaders."""
    g = torch.Generator().manual_seed(0)
    n = batch * steps
    mk = lambda: TensorLoader(  # noqa: E731
        torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).to(device),
        torch.randint(0, 10, (n,), generator=g).to(device), batch_size=batch, mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26), shuffle=True, augment=augment_for(cfg_data))
    return Loaders(mk(), mk(), 10, 3, 32, "cifar10", tuple(str(i) for i in range(10)), n, n)


def _epochs(task: Any, repeats: int, device: torch.device) -> list[dict]:
    out = []
    for e in range(repeats):
        _sync(device)
        out.append(train_epoch(task, e, Progress(task.steps_per_epoch(), enabled=False)))
    return out


def search_twostage(chk: Check) -> dict:
    a = chk.args
    batch, steps, rep = (8, 2, 2) if a.tiny else (256, 20, 3)
    over = {"C": 4, "layers": 3} if a.tiny else {}
    with tempfile.TemporaryDirectory() as root:
        cfg = TwoStageConfig.preset("reference", device=str(chk.device), data={"root": root, "batch_size": batch},
                                    **over)
        loaders = _cifar_loaders(chk.device, batch, steps, cfg.data)
        with deterministic_algorithms(cfg.deterministic):
            task = TwoStageTask(cfg, loaders=loaders, device=chk.device)
            train_epoch(task, 0, Progress(steps, enabled=False))                # warm-up (cuDNN, allocator)
            times: dict[str, list[float]] = {"step": [], "epoch": []}
            rec_s, recs, peak = 0.0, 0, 0.0
            for _ in range(rep):  # alternate the two schedules, so drift hits both
                for mode in ("step", "epoch"):
                    task.cfg.recover_every = mode
                    r0, n0 = task.recovery_time, task.recoveries
                    m = _epochs(task, 1, chk.device)[0]
                    times[mode].append(m["train_time_s"])
                    peak = max(peak, float(m.get("peak_mem_mb", 0.0)))
                    if mode == "step":
                        rec_s, recs = rec_s + task.recovery_time - r0, recs + task.recoveries - n0
            task.cfg.recover_every = "step"
    t_step, t_epoch = statistics.median(times["step"]), statistics.median(times["epoch"])
    ips = batch * steps / t_step
    epochs, half = cfg.epochs, CIFAR_TRAIN * cfg.data.train_portion
    hours = epochs * half / ips / 3600
    return {"batch": batch, "steps": steps, "C": cfg.C, "layers": cfg.layers, "bf16": cfg.bf16,
            "deterministic": cfg.deterministic, "images_per_s": ips, "step_ms": 1e3 * t_step / steps,
            "step_ms_recover_every_epoch": 1e3 * t_epoch / steps, "peak_mem_mb": peak,
            "host_recovery_ms_per_step": 1e3 * rec_s / max(1, recs), "epoch_times_s": times,
            "projected_search_gpu_hours": hours, "projected_search_gpu_days": hours / 24,
            "projection": f"{epochs} epochs x {half:.0f} training-half images (each step also a b step on a "
                          "validation batch), evaluation not counted",
            "paper_gpu_days": PAPER["twostage_gpu_days"], "paper_gpu": PAPER["gpu"]}


def search_onestage(chk: Check) -> dict:
    a = chk.args
    batch, steps, rep = (4, 2, 1) if a.tiny else (96, 20, 3)
    over = {"C": 4, "layers": 3, "auxiliary": False} if a.tiny else {}
    with tempfile.TemporaryDirectory() as root:
        cfg = OneStageConfig.preset("cifar10", device=str(chk.device), data={"root": root, "batch_size": batch},
                                    **over)
        loaders = _cifar_loaders(chk.device, batch, steps, cfg.data)
        with deterministic_algorithms(cfg.deterministic):
            task = OneStageTask(cfg, loaders=loaders, device=chk.device)
            train_epoch(task, 0, Progress(steps, enabled=False))
            ms = _epochs(task, rep, chk.device)
    t = statistics.median(m["train_time_s"] for m in ms)
    ips = batch * steps / t
    search_h = (cfg.search_epochs or cfg.epochs) * CIFAR_TRAIN / ips / 3600
    whole_h = cfg.epochs * CIFAR_TRAIN / ips / 3600
    return {"batch": batch, "steps": steps, "C": cfg.C, "layers": cfg.layers, "bf16": cfg.bf16,
            "channels_last": cfg.channels_last, "deterministic": cfg.deterministic, "images_per_s": ips,
            "step_ms": 1e3 * t / steps, "peak_mem_mb": max(float(m.get("peak_mem_mb", 0.0)) for m in ms),
            "projected_search_phase_gpu_hours": search_h, "projected_whole_run_gpu_hours_upper": whole_h,
            "projected_whole_run_gpu_days_upper": whole_h / 24,
            "projection": f"search phase: {cfg.search_epochs} epochs x {CIFAR_TRAIN} images at the search step's "
                          f"rate; whole run: {cfg.epochs} epochs at that rate (training steps after the switch "
                          "are cheaper, so an upper bound); evaluation not counted",
            "paper_gpu_days": PAPER["onestage_gpu_days"], "paper_gpu": PAPER["gpu"]}


def recovery_share(chk: Check) -> dict:
    secs = chk.result["sections"]
    two = secs.get("search_twostage", {})
    if two.get("status") != "ok":
        raise RuntimeError("needs the search_twostage section")
    t_step, t_epoch = two["step_ms"], two["step_ms_recover_every_epoch"]
    share = max(0.0, (t_step - t_epoch) / t_step)
    out = {"share_of_twostage_step": share, "step_ms": t_step, "step_ms_recover_every_epoch": t_epoch,
           "host_recovery_ms_per_step": two["host_recovery_ms_per_step"], "target": 0.01,
           "target_met": share <= 0.01,
           "method": "slowdown of recover_every=step vs recover_every=epoch on the same two-stage task"}
    for b in (64, 256):
        s = secs.get(f"bench_supernet_b{b}", {})
        if s.get("status") == "ok":
            out[f"bench_supernet_b{b}_share"] = s["recovery_share_of_step"]
    return out


def imagenet_loader(chk: Check) -> dict:
    a = chk.args
    n, hw, images, batch, size = (24, (96, 128), 16, 8, 32) if a.tiny else (768, (375, 500), 512, 128, 224)
    with tempfile.TemporaryDirectory(prefix="gpu-check-jpeg-") as tmp:
        write_synthetic_jpegs(tmp, n, hw)
        workers = 1 if a.tiny else max(1, min(8, (os.cpu_count() or 2) - 1))
        r = chk.bench("bench_loader.py", ["--device", str(chk.device), "--data", tmp, "--images", str(images),
                                          "--batch", str(batch), "--image-size", str(size),
                                          "--workers", str(workers), "--repeats", "1" if a.tiny else "2"],
                      "bench_loader")
    return {"data": f"{n} generated JPEGs {hw[0]}x{hw[1]}", "workers": workers,
            "pil_images_per_s": r["pil"]["images_per_s"], "gpu_decode_images_per_s": r["gpu"]["images_per_s"],
            "decode_only_images_per_s": r["gpu"]["decode_only_images_per_s"],
            "decode_speedup_vs_pil": r["decode_speedup_vs_pil"], "eval_max_levels": r["eval_max_levels"],
            "eval_mean_levels": r["eval_mean_levels"]}


SECTIONS = ("environment", "cuda_tests", "bench_supernet_b64", "bench_supernet_b256", "search_twostage",
            "search_onestage", "recovery_share", "imagenet_loader", "bench_recovery", "bench_onestage",
            "bench_tenas")


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu-check", help="folder for gpu_check.json, gpu_check.log and the "
                                                       "benchmarks' JSONs")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="shrink every section (a CPU smoke run of the check)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check")
    ap.add_argument("--only", default="", help=f"comma list of sections (default all: {','.join(SECTIONS)})")
    ap.add_argument("--tenas-search", action="store_true", help="also time bench_tenas's whole NB201 searches")
    args = ap.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    bad = sorted(set(args.only) - set(SECTIONS))
    if bad or args.device.split(":")[0] not in ("cpu", "cuda"):
        print(f"error: unknown section(s) {bad}" if bad else f"error: --device must be cpu or cuda, got "
              f"{args.device!r}", file=sys.stderr)
        raise SystemExit(2)
    chk = Check(args)
    chk.log(f"gpu_check on {chk.device} (tiny={args.tiny}, budget {args.budget_s:.0f} s) -> {chk.json_path}")
    chk.section("environment", lambda: environment(chk), 0)
    chk.section("cuda_tests", lambda: cuda_tests(chk), 20)
    chk.section("bench_supernet_b64", lambda: supernet(chk, 64), 20)
    chk.section("bench_supernet_b256", lambda: supernet(chk, 256), 20)
    chk.section("search_twostage", lambda: search_twostage(chk), 10)
    chk.section("search_onestage", lambda: search_onestage(chk), 10)
    chk.section("recovery_share", lambda: recovery_share(chk), 0)
    chk.section("imagenet_loader", lambda: imagenet_loader(chk), 15)
    chk.section("bench_recovery", lambda: bench_recovery(chk), 15)
    chk.section("bench_onestage", lambda: bench_onestage(chk), 15)
    chk.section("bench_tenas", lambda: bench_tenas(chk), 20)
    st = {n: s["status"] for n, s in chk.result["sections"].items()}
    chk.result["ok"] = all(v == "ok" for v in st.values())
    chk.write()
    chk.log(f"done in {chk.result['total_s']:.0f} s: " + ", ".join(f"{n} {v}" for n, v in st.items()))
    return chk.result


if __name__ == "__main__":
    res = main()
    sys.exit(0 if res["ok"] else 1)
