"""The device check (benchmarks/gpu_check.py) runs end to end on the CPU, with Ray, Optuna and CVXPY blocked as
on the accelerator image, so it cannot rot between GPU runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SECTIONS = ("environment", "cuda_tests", "bench_supernet_b64", "bench_supernet_b256", "search_twostage",
            "search_onestage", "recovery_share", "imagenet_loader", "bench_recovery", "bench_onestage",
            "bench_tenas")
BLOCK = "import sys\nfor _m in ('ray', 'optuna', 'cvxpy'):\n    sys.modules[_m] = None\n"


def _env(tmp_path, repo_root: str) -> dict:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(BLOCK)  # every python started with this env sees them missing
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), repo_root]),
                ISTANAS_CACHE=str(tmp_path / "cache"))


def test_gpu_check_imports_without_optional_packages(tmp_path, repo_root):
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import gpu_check, bench_loader\n"
            "for m in ('ray', 'optuna', 'cvxpy'):\n"
            "    try:\n        __import__(m)\n    except ImportError:\n        continue\n"
            "    raise SystemExit(m + ' was importable: the shim failed')\n"
            "assert gpu_check._missing_optional(\"No module named 'ray'\") == 'ray'\n"
            "assert gpu_check._missing_optional('import of cvxpy halted; None in sys.modules') == 'cvxpy'\n"
            "assert gpu_check._missing_optional(\"No module named 'torch'\") is None\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=_env(tmp_path, repo_root),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu_every_section_ok(tmp_path, repo_root):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out),
                        "--budget-s", "1200"], cwd=repo_root, env=_env(tmp_path, repo_root), capture_output=True,
                       text=True, timeout=1500)
    res = json.loads((out / "gpu_check.json").read_text())
    bad = {n: s.get("error") for n, s in res["sections"].items() if s["status"] != "ok"}
    assert set(res["sections"]) == set(SECTIONS) and not bad and res["ok"], (bad, p.stdout[-3000:])
    assert p.returncode == 0 and (out / "gpu_check.log").stat().st_size > 0
    env = res["sections"]["environment"]["optional_packages"]
    assert env == {"ray": False, "optuna": False, "cvxpy": False}
    tests = res["sections"]["cuda_tests"]
    assert tests["counts"]["failed"] == 0 and tests["counts"]["passed"] >= 1  # the CPU decode-path tests run
    assert any("gpu_decode" in t for t in tests["passed"])
    for name in ("search_twostage", "search_onestage"):
        s = res["sections"][name]
        assert s["images_per_s"] > 0 and s["paper_gpu_days"] in (0.05, 2.3)
    two = res["sections"]["search_twostage"]  # the projection is the stated formula
    assert two["projected_search_gpu_hours"] == pytest.approx(50 * 25_000 / two["images_per_s"] / 3600)
    assert res["sections"]["imagenet_loader"]["eval_max_levels"] <= 1.01
