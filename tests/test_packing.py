"""GPU packing: ``resources_per_trial.gpu`` fractions place that many searches per GPU (a local Ray with a declared
GPU, searches on the CPU), and a search that would not fit its GPU share fails before training
(:mod:`orchestrator.resources`: the estimate against the profiler's measured CPU peak, the heaviest support
against random ones, the error of the config check and of the trial's own check)."""
from __future__ import annotations

import glob
import json
import os
import sys
import threading
import time

import pytest
import torch

from istanas.cell_space import cell_space
from istanas.config import ConfigError
from orchestrator import resources
from orchestrator.resources import check_fits_share, check_trial_fits, estimate_search_memory, heaviest_support
from orchestrator.sweep_config import build_search_config, load_sweep_config
from orchestrator.tune_trial import run_trial

TINY = ["search.C=4", "search.layers=3", "search.data.batch_size=16", "search.device=cpu"]


def _search_cfg(*overrides: str):
    sweep = load_sweep_config(overrides=[*TINY, *overrides], validate=False)
    return sweep, build_search_config(sweep, {}, validate=False)


# ------------------------------------------------------------------------------------------------ the estimate
def _profiled_step_peak(cfg) -> int:
    """Static bytes (weights, buffers, momentum, batch) + the profiler's peak of one training step's allocations
    (gradients included), on the CPU, with the estimate's heaviest support: measured, not estimated."""
    from torch.profiler import ProfilerActivity, profile

    space = cell_space(cfg)
    side = cfg.data.resolved_image_size
    net = space.sparse_supernet(cfg, 10, 1)
    net.train()
    plan = net.plan(heaviest_support(space, cfg.recovery.s))
    coef = torch.ones(plan.shape, requires_grad=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(cfg.data.batch_size, 1, side, side), torch.randint(0, 10, (cfg.data.batch_size,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x, plan, coef), y).backward()
        opt.step()

    step()
    opt.zero_grad(set_to_none=True)
    static = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers(), x])
    static += sum(v["momentum_buffer"].numel() * 4 for v in opt.state.values())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return static + peak


@pytest.mark.parametrize("overrides", [["search.C=8", "search.layers=5", "search.data.batch_size=64"],
                                       ["search.C=4", "search.layers=3", "search.data.batch_size=32",
                                        "search.recovery.s=3"]])
def test_estimate_is_at_or_a_little_above_the_measured_cpu_peak(overrides):
    _, cfg = _search_cfg(*overrides)
    est = estimate_search_memory(cfg, "cpu")
    measured = _profiled_step_peak(cfg)
    assert est.context_bytes == 0 and est.data_bytes == 0            # CPU: no CUDA context, data not "on device"
    assert 1.0 <= est.total_bytes / measured <= 1.3, (est.describe(), measured)


def test_heaviest_support_saves_at_least_as_much_as_random_supports():
    _, cfg = _search_cfg("search.recovery.s=2")
    space = cell_space(cfg)
    net = space.sparse_supernet(cfg, 10, 1)
    net.train()
    x = torch.randn(2, 1, 16, 16)
    exclude = {p.data_ptr() for p in net.parameters()} | {b.data_ptr() for b in net.buffers()}

    def saved(support: torch.Tensor) -> int:
        plan = net.plan(support)
        return sum(resources._saved_storages(lambda: net(x, plan, torch.ones(plan.shape)), exclude).values())

    worst = saved(heaviest_support(space, 2))
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        rows = [torch.randperm(n, generator=g)[:2].tolist() for n in space.node_sizes()]
        sup = torch.tensor([rows, [torch.randperm(n, generator=g)[:2].tolist() for n in space.node_sizes()]])
        assert saved(sup) <= worst


def test_estimate_counts_the_in_memory_data_and_context_on_cuda():
    _, cfg = _search_cfg("search.data.limit_train=1000")
    cpu, cuda = estimate_search_memory(cfg, "cpu"), estimate_search_memory(cfg, "cuda")
    assert cuda.data_bytes == 1000 * 1 * 16 * 16                     # digits: 1 channel, 16 x 16 uint8
    assert cuda.total_bytes - cpu.total_bytes == cuda.data_bytes + resources.CUDA_CONTEXT_BYTES
    _, big = _search_cfg("search.data.batch_size=32")
    assert estimate_search_memory(big, "cpu").activation_bytes == pytest.approx(2 * cpu.activation_bytes, rel=1e-3)


# --------------------------------------------------------------------------------------------- fits its share
def test_share_check_passes_at_the_estimate_and_fails_just_below():
    _, cfg = _search_cfg()
    need = estimate_search_memory(cfg, "cuda").total_bytes
    assert check_fits_share(cfg, 0.25, 4 * need + 4) is not None
    with pytest.raises(ConfigError) as e:
        check_fits_share(cfg, 0.25, 4 * need - 400)
    msg = str(e.value)
    assert msg.startswith("resources_per_trial.gpu = 0.25") and "at most 3 such searches fit one GPU" in msg


def test_sweep_config_rejects_a_search_too_large_for_its_share_before_ray():
    ok = load_sweep_config(overrides=["resources_per_trial.gpu=0.25", "resources_per_trial.gpu_memory_gb=80"])
    assert ok.resources_per_trial.gpu_memory_gb == 80
    with pytest.raises(ConfigError, match=r"resources_per_trial.gpu = 0.25: a trial's share of a 2 GiB GPU"):
        load_sweep_config(overrides=["resources_per_trial.gpu=0.25", "resources_per_trial.gpu_memory_gb=2",
                                     "search.data.batch_size=256"])
    with pytest.raises(ConfigError, match="gpu_memory_gb must be > 0"):
        load_sweep_config(overrides=["resources_per_trial.gpu_memory_gb=0"])


def test_trial_on_a_too_small_gpu_share_fails_before_its_search(monkeypatch):
    sweep, _ = _search_cfg("resources_per_trial.gpu=0.5")
    monkeypatch.setattr(resources, "resolve_device", lambda dev: torch.device("cuda", 0))
    monkeypatch.setattr(resources, "device_memory", lambda dev: (2**28, "a fake 256 MiB GPU"))
    called = []

    def search_fn(cfg, **kw):
        called.append(1)
        return {"genotype": None, "history": [], "final": {}}

    with pytest.raises(ConfigError, match="a trial's share of a fake 256 MiB GPU"):
        run_trial({"lam": 1e-3, "s": 2, "m": 5, "epsilon": 0.0}, sweep.to_dict(), search_fn)
    assert not called
    monkeypatch.setattr(resources, "device_memory", lambda dev: None)       # a CPU device: nothing to check
    assert check_trial_fits(build_search_config(sweep, {}, validate=False), 0.5) is None


# ---------------------------------------------------------------------------------------- packing on one GPU
def packing_search(cfg, *, data=None, on_epoch_end=None, resume=None, progress=False):
    """Writes its start time and GPU ids, holds its GPU share until the test writes ``release``, writes its end."""
    import ray

    d = cfg.out
    me = f"{os.getpid()}-{time.time_ns()}"
    with open(os.path.join(d, f"start-{me}.json"), "w") as f:
        json.dump({"t": time.time(), "gpus": [str(g) for g in ray.get_gpu_ids()]}, f)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(d, "release")) and time.time() < deadline:
        time.sleep(0.02)
    with open(os.path.join(d, f"end-{me}.json"), "w") as f:
        json.dump({"t": time.time()}, f)
    m = {"epoch": 1, "val_acc": 0.5, "val_loss": 0.5}
    if on_epoch_end:
        on_epoch_end(dict(m), {"epoch": 1, "task": {}, "history": [m], "done": True})
    g = {"space": "darts", "normal": [["skip_connect", i % 2] for i in range(8)], "normal_concat": [2, 3, 4, 5],
         "reduce": [["max_pool_3x3", i % 2] for i in range(8)], "reduce_concat": [2, 3, 4, 5]}
    return {"genotype": g, "history": [m], "final": {}}


def _wait(cond, what: str, timeout: float = 600.0):  # a deadline, not a timing: Ray's workers start slowly on a busy machine
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _placement_groups() -> dict[str, int]:
    """How many of Ray's placement groups (one per Tune trial) are in each state (removed ones left out)."""
    from ray.util import placement_group_table

    out: dict[str, int] = {}
    for pg in placement_group_table().values():
        if pg["state"] != "REMOVED":
            out[pg["state"]] = out.get(pg["state"], 0) + 1
    return out


def _peak_concurrency(starts: list[float], ends: list[float]) -> int:
    """Most intervals open at once (an end at the same instant as a start closes first)."""
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends], key=lambda x: (x[0], x[1]))
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


@pytest.mark.slow
def test_four_quarter_gpu_trials_share_one_gpu_and_a_fifth_waits(tmp_path):
    ray = pytest.importorskip("ray")
    from orchestrator.sweep import run_sweep

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=6, num_gpus=1, include_dashboard=False, log_to_driver=False,
             namespace="istanas")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marks = tmp_path / "marks"
    marks.mkdir()
    cfg = load_sweep_config(overrides=[f"storage_path={tmp_path}", "name=pack", "num_samples=5", "max_concurrent=auto",
                                       "num_cpus=6", "num_gpus=1",
                                       "asha.enabled=false", "retrain.top_k=0", "dashboard=false", "verbose=0",
                                       "resources_per_trial.gpu=0.25", "resources_per_trial.cpu=1",
                                       "search.epochs=1", "search.device=cpu", f"search.out={marks}"])
    out: dict = {}
    th = threading.Thread(target=lambda: out.update(r=run_sweep(cfg, search_fn=packing_search, echo=False)))
    try:
        th.start()
        def started(at_least: int) -> bool:
            n = len(glob.glob(str(marks / "start-*.json")))
            assert n <= 4, f"{n} trials of gpu 0.25 ran at once on one GPU"
            return n >= at_least

        _wait(lambda: started(4), "4 trials to start")
        # the four hold all of the one GPU (4 x 0.25), and the fifth trial's placement group waits for a share
        _wait(lambda: started(4) and ray.available_resources().get("GPU", 0.0) < 1e-6
              and _placement_groups() == {"CREATED": 4, "PENDING": 1}, "4 placed trials and a fifth one waiting")
        assert started(4) and ray.cluster_resources().get("GPU") == 1
        (marks / "release").write_text("go")
        th.join(timeout=600)
        assert not th.is_alive() and out["r"].num_trials == 5 and out["r"].num_errors == 0
        # auto: twice the 4 trials the 6 CPUs / 1 GPU hold at gpu 0.25, cpu 1 (so the fifth was suggested and waited)
        assert out["r"].max_concurrent == 8
    finally:
        (marks / "release").write_text("go")
        th.join(timeout=600)  # never shut Ray down under a running sweep (its threads would outlive this test)
        ray.shutdown()
    s = sorted(json.loads(open(p).read())["t"] for p in glob.glob(str(marks / "start-*.json")))
    e = sorted(json.loads(open(p).read())["t"] for p in glob.glob(str(marks / "end-*.json")))
    gpus = {tuple(json.loads(open(p).read())["gpus"]) for p in glob.glob(str(marks / "start-*.json"))}
    assert len(s) == 5 and len(e) == 5 and gpus == {("0",)}             # all on GPU 0
    assert _peak_concurrency(s, e) == 4
    assert max(s[:4]) < min(e)                                           # the first four ran at once
    assert s[4] >= min(e)                                                # the fifth started after one ended


def test_saved_tensors_without_plain_storage_count_at_their_dense_size():
    # torch.sparse.mm saves the sparse operand for the backward: it has no untyped storage, so it counts as
    # numel * element_size (a conservative stand-in; before, it was silently left out)
    sp = torch.eye(6, dtype=torch.float64).to_sparse()
    d = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    seen = resources._saved_storages(lambda: torch.sparse.mm(sp, d), set())
    assert sorted(seen.values()) == [6 * 6 * 8]
