"""Benchmark: what a fresh process pays before its first search step (trial workers, retraining tasks, CLI starts).

Each figure is timed in its own fresh interpreter (``sys.executable -c``), the variants alternated over
``--repeats`` rounds so that a drift of the machine's speed favours neither; medians:

* ``digits_load_digits_s`` / ``digits_raw_s``: after ``import istanas.data`` (torch and numpy loaded, as in a trial
  worker), the digits arrays through ``sklearn.datasets.load_digits`` (imports scikit-learn) against
  :func:`istanas.data.digits_raw` (reads the ``digits.csv.gz`` scikit-learn ships, without importing it).
* ``import_tune_trial_s``: ``import orchestrator.tune_trial`` (what a sweep's trial worker imports first).
* ``first_optimizer_s``: the first ``torch.optim.SGD`` of a process (torch imports ``torch._dynamo`` there).

Usage: ``python benchmarks/bench_startup.py --json out.json [--repeats 5]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

from istanas.checkpoint import atomic_write_json  # noqa: E402

_PRE = f"import sys, time; sys.path.insert(0, {REPO!r}); "
#: name -> code printing one number (seconds) as its last line
SNIPPETS = {
    "digits_load_digits_s": _PRE + "import istanas.data; t = time.perf_counter(); "
                            "from sklearn.datasets import load_digits; load_digits(); print(time.perf_counter() - t)",
    "digits_raw_s": _PRE + "import istanas.data as D; t = time.perf_counter(); D.digits_raw(); "
                    "print(time.perf_counter() - t)",
    "import_tune_trial_s": _PRE + "t = time.perf_counter(); import orchestrator.tune_trial; "
                           "print(time.perf_counter() - t)",
    "first_optimizer_s": _PRE + "import torch; p = [torch.nn.Parameter(torch.zeros(2))]; t = time.perf_counter(); "
                         "torch.optim.SGD(p, lr=0.1); print(time.perf_counter() - t)",
}


def time_snippet(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"snippet failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of fresh processes (>= 1)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    names = list(SNIPPETS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.repeats):
        for n in (names if rep % 2 == 0 else names[::-1]):
            times[n].append(time_snippet(SNIPPETS[n]))
    med = {n: statistics.median(v) for n, v in times.items()}
    res = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
           "repeats": args.repeats, **med, "all_s": times,
           "digits_speedup": med["digits_load_digits_s"] / max(med["digits_raw_s"], 1e-9)}
    atomic_write_json(args.json, res)
    print(", ".join(f"{n} {v:.3f} s" for n, v in med.items()) + f"; digits {res['digits_speedup']:.0f}x")
    return res


if __name__ == "__main__":
    main()
