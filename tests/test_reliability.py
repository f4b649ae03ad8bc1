"""Reliability of runs on disk: checkpoint integrity (size / SHA-256 record, previous good checkpoint), and
``--resume`` refusing a changed config (``--allow-change`` for the keys that may change)."""
from __future__ import annotations

import json
import os

import pytest
import torch

import launch.retrain as launch_retrain
import launch.search as launch_search
from istanas import checkpoint as ckpt
from istanas import cli

SEARCH = ["--method", "twostage", "--device", "cpu", "--no-progress", "--epochs", "2",
          "--set", "C=4", "--set", "layers=3", "--set", "data.image_size=8", "--set", "data.limit_train=128",
          "--set", "data.batch_size=32"]
RETRAIN = ["--preset", "quick", "--device", "cpu", "--no-progress", "--set", "C=4", "--set", "layers=3",
           "--set", "data.image_size=8", "--set", "data.limit_train=128", "--set", "data.limit_test=64",
           "--set", "data.batch_size=32", "--epochs", "2"]


def flip_byte(path: str, offset: int | None = None) -> None:
    data = bytearray(open(path, "rb").read())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    open(path, "wb").write(bytes(data))


def truncate(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


# ----------------------------------------------------------------------------------------------- unit level
@pytest.mark.parametrize("damage", [flip_byte, truncate])
def test_damaged_checkpoint_is_named_and_previous_one_used(tmp_path, damage, capsys):
    path = str(tmp_path / "checkpoint.pt")
    ckpt.save({"epoch": 1, "w": torch.arange(1000.0)}, path, keep_previous=True)
    ckpt.save({"epoch": 2, "w": torch.arange(1000.0) * 2}, path, keep_previous=True)
    assert ckpt.load(path)["epoch"] == 2 and ckpt.load(ckpt.previous_path(path))["epoch"] == 1
    size, sha = ckpt.file_digest(path)
    assert json.load(open(ckpt.manifest_path(path))) == {"file": "checkpoint.pt", "size": size, "sha256": sha}
    damage(path)
    with pytest.raises(ckpt.CheckpointError, match="checkpoint.pt"):
        ckpt.load(path)
    state, used = ckpt.load_with_fallback(path)
    assert state["epoch"] == 1 and used == ckpt.previous_path(path)
    assert torch.equal(state["w"], torch.arange(1000.0))
    assert "previous good checkpoint" in capsys.readouterr().err
    damage(ckpt.previous_path(path))
    with pytest.raises(ckpt.CheckpointError, match="prev"):
        ckpt.load_with_fallback(path)


def _training_state() -> dict:
    """A real training state: a small super-net's state_dict (OrderedDict, float / int64 buffers), an Adam state
    after a step (int keys, 0-dim step tensors), the RNG ByteTensor, plus views, an empty and a bool tensor."""
    from collections import OrderedDict

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    base = torch.randn(5, 6)
    return {"model": net.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": 3,
            "nested": [(base.t(), base[1:3]), OrderedDict(mask=base > 0, empty=torch.zeros(0, 4))],
            "param": torch.nn.Parameter(torch.ones(2)), "name": "x", "lr": 0.1, "none": None}


def _same(a, b, where="state"):
    assert type(a) is type(b) or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, where


def test_packed_checkpoint_loads_as_torch_load_of_the_plain_one(tmp_path):
    """``save(packed=True)`` + ``load`` gives what ``torch.save`` + ``torch.load`` give, with the tensors in one
    buffer per dtype on disk, and every loaded tensor its own storage."""
    state = _training_state()
    plain, packed = str(tmp_path / "plain.pt"), str(tmp_path / "packed.pt")
    ckpt.save(state, plain)
    ckpt.save(state, packed, packed=True)
    want = torch.load(plain, weights_only=True)        # torch's own serialisation is the reference
    got = ckpt.load(packed)
    _same(want, got)
    _same(want, ckpt.load(plain))                     # plain files still load as before
    raw = torch.load(packed, weights_only=True)
    dtypes = {t.dtype for t in raw["buffers"]}
    assert len(raw["buffers"]) == len(dtypes) == len({torch.float32, torch.int64, torch.uint8, torch.bool})
    views = got["nested"][0]
    views[0].zero_()                                  # the transposed view of `base` no longer shares with [1:3]
    assert torch.equal(views[1], want["nested"][0][1])
    ptrs = [t.untyped_storage().data_ptr() for t in got["model"].values() if t.numel()]
    assert len(set(ptrs)) == len(ptrs)


def test_packed_checkpoint_with_a_bad_index_is_a_checkpoint_error(tmp_path):
    path = str(tmp_path / "state.pt")
    raw = ckpt.pack({"w": torch.arange(10.0)})
    raw["offset"] = raw["offset"] + 5                  # points past the buffer's end
    torch.save(raw, path)                             # no sidecar: the structure itself must be checked
    with pytest.raises(ckpt.CheckpointError, match="state.pt"):
        ckpt.load(path)
    with pytest.raises(ValueError, match="reserved"):
        ckpt.pack({"x": ("\x00istanas.tensor", 0)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_packed_cuda_state_loads_to_the_cpu_or_back_to_its_devices(tmp_path):
    path = str(tmp_path / "state.pt")
    state = {"w": torch.randn(3, 4, device="cuda"), "n": torch.arange(5, device="cuda"), "h": torch.ones(2)}
    ckpt.save(state, path, packed=True)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert len(raw["buffers"]) == 3 and raw["devices"].count("cuda:0") == 2   # (float, cuda) (int64, cuda) (float, cpu)
    on_cpu = ckpt.load(path)
    assert all(t.device.type == "cpu" for t in on_cpu.values())
    back = ckpt.unpack(raw, None)                     # map_location None: the devices they were saved from
    assert back["w"].device.type == back["n"].device.type == "cuda" and back["h"].device.type == "cpu"
    for k in state:
        assert torch.equal(on_cpu[k], state[k].cpu()) and torch.equal(back[k].cpu(), state[k].cpu())


def test_unrecorded_file_still_fails_loudly(tmp_path):
    path = str(tmp_path / "x.pt")
    torch.save({"a": torch.zeros(100)}, path)  # no sidecar (another tool, an old run)
    assert ckpt.load(path)["a"].shape == (100,)
    truncate(path)
    with pytest.raises(ckpt.CheckpointError, match="x.pt.*unreadable"):
        ckpt.load(path)


# ----------------------------------------------------------------------------------------------- launchers
def _rows(out: str) -> list[int]:
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["epoch"] for line in f if line.strip()]


@pytest.mark.parametrize("launcher,args", [(launch_search, SEARCH), (launch_retrain, RETRAIN)],
                         ids=["search", "retrain"])
def test_corrupt_checkpoint_on_resume(tmp_path, capsys, launcher, args):
    out = str(tmp_path / "run")
    assert launcher.main(args + ["--out", out]) == 0
    path = cli.checkpoint_path(out)
    assert ckpt.load(path)["epoch"] == 2 and ckpt.load(ckpt.previous_path(path))["epoch"] == 1
    capsys.readouterr()
    # a flipped byte in the latest checkpoint: resumed from the previous good one (epoch 1), epoch 2 redone
    flip_byte(path)
    assert launcher.main(["--out", out, "--resume", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint.pt is corrupt" in err and "checkpoint.prev.pt" in err
    assert _rows(out) == [1, 2] and ckpt.load(path)["epoch"] == 2
    # both damaged: one line naming the files, exit 2
    truncate(path)
    truncate(ckpt.previous_path(path))
    assert launcher.main(["--out", out, "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt" in err[0] and "checkpoint.prev.pt" in err[0]


def test_resume_with_changed_config_is_refused_unless_allowed(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert launch_search.main(SEARCH + ["--out", out]) == 0
    capsys.readouterr()
    recorded = json.load(open(os.path.join(out, "run_info.json")))["config"]
    # a changed lr (and lambda) is refused, naming the keys; nothing is written
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
    assert launch_search.main(["--out", out, "--resume", "--no-progress", "--set", "lr=0.1",
                               "--set", "recovery.lam=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr" in err[0] and "recovery.lam" in err[0] and "--allow-change lr" in err[0]
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before
    # more epochs: refused without --allow-change, then allowed, and they really train (epoch 3 logged)
    assert launch_search.main(["--out", out, "--resume", "--no-progress", "--epochs", "3"]) == 2
    assert "epochs 2 -> 3" in capsys.readouterr().err
    assert launch_search.main(["--out", out, "--resume", "--no-progress", "--epochs", "3",
                               "--allow-change", "epochs"]) == 0
    assert _rows(out) == [1, 2, 3] and ckpt.load(cli.checkpoint_path(out))["epoch"] == 3
    info = json.load(open(os.path.join(out, "run_info.json")))
    assert info["config"]["epochs"] == 3 and info["resume_changes"] == {"epochs": [2, 3]}
    assert {k: v for k, v in info["config"].items() if k != "epochs"} == \
        {k: v for k, v in recorded.items() if k != "epochs"}
    # a runtime key (device) may change without asking
    assert cli.config_changes(recorded, {**recorded, "device": "cuda"}) == {"device": ("cpu", "cuda")}
    assert "device" in cli.RUNTIME_KEYS


# ------------------------------------------------------------------------------------------ sweep, no Ray run
class _FakeTrial:
    """What :func:`orchestrator.sweep.repair_trial_checkpoint` reads of a restored Tune trial."""

    def __init__(self, trial_dir: str, manager):
        from types import SimpleNamespace

        self.trial_id = "t1"
        self.storage = SimpleNamespace(trial_fs_path=trial_dir, current_checkpoint_index=0)
        self.run_metadata = SimpleNamespace(checkpoint_manager=manager, invalidate_cache=lambda: None)

    @property
    def checkpoint(self):
        r = self.run_metadata.checkpoint_manager.latest_checkpoint_result
        return r.checkpoint if r is not None else None

    def invalidate_json_state(self) -> None:
        pass


def _tune_trial(tmp_path, epochs: int, recorded: int):
    """A trial folder with checkpoint_000000..epochs-1 (search_state.pt of epoch k+1); the experiment snapshot
    (the manager) names checkpoint ``recorded``."""
    pytest.importorskip("ray")
    from ray.train import CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager, _TrainingResult
    from ray.tune import Checkpoint

    from orchestrator.tune_trial import STATE_FILE

    trial_dir = tmp_path / "trial_t1"
    for k in range(epochs):
        ckpt.save({"epoch": k + 1}, str(trial_dir / f"checkpoint_{k:06d}" / STATE_FILE))
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    manager.register_checkpoint(_TrainingResult(
        checkpoint=Checkpoint(str(trial_dir / f"checkpoint_{recorded:06d}")), metrics={"epoch": recorded + 1}))
    return _FakeTrial(str(trial_dir), manager), trial_dir, STATE_FILE


def test_restored_trial_with_deleted_or_damaged_checkpoint_is_repointed(tmp_path):
    import shutil

    from orchestrator.sweep import repair_trial_checkpoint

    # the snapshot names checkpoint_000001, which Tune deleted before the driver died: newest good one is used
    trial, trial_dir, state_file = _tune_trial(tmp_path, epochs=4, recorded=1)
    shutil.rmtree(trial_dir / "checkpoint_000001")
    flip_byte(str(trial_dir / "checkpoint_000003" / state_file))  # the newest is damaged: skipped
    note = repair_trial_checkpoint(trial)
    assert "missing" in note and trial.checkpoint.path.endswith("checkpoint_000002")
    assert ckpt.load(os.path.join(trial.checkpoint.path, state_file))["epoch"] == 3
    assert trial.storage.current_checkpoint_index == 3  # the next checkpoint goes to a fresh folder
    assert repair_trial_checkpoint(trial) is None       # now consistent


def test_restored_trial_without_good_checkpoint_restarts(tmp_path):
    from orchestrator.sweep import repair_trial_checkpoint

    trial, trial_dir, state_file = _tune_trial(tmp_path, epochs=1, recorded=0)
    truncate(str(trial_dir / "checkpoint_000000" / state_file))
    assert "damaged" in repair_trial_checkpoint(trial) and trial.checkpoint is None
    # an intact recorded checkpoint is left alone
    trial, _, _ = _tune_trial(tmp_path / "b", epochs=2, recorded=1)
    assert repair_trial_checkpoint(trial) is None and trial.checkpoint.path.endswith("checkpoint_000001")


def test_sweep_launcher_exit_status_interrupted_and_all_failed(tmp_path, monkeypatch, capsys):
    import launch.sweep as launch_sweep
    from orchestrator.sweep import SweepOutcome

    def outcome(**kw):
        base = dict(experiment_path=str(tmp_path), table_csv="t.csv", table_parquet="t.parquet", report_md=None,
                    report_html=None, best_genotype_path=None, best=None, num_trials=3, num_errors=3,
                    tune_time_s=1.0, wall_time_s=1.0)
        return SweepOutcome(**{**base, **kw})

    args = ["--storage-path", str(tmp_path), "--name", "x", "--no-dashboard"]
    failed = outcome(errors=[("a", "NonFiniteLossError: nan"), ("b", "NonFiniteLossError: nan"), ("c", "OSError: x")])
    monkeypatch.setattr(launch_sweep, "run_sweep", lambda cfg, **kw: failed)
    assert failed.all_failed and launch_sweep.main(args) == 1
    err = capsys.readouterr().err
    assert "all 3 trials failed" in err and "2 trial(s) (a, b): NonFiniteLossError: nan" in err and "OSError" in err
    cut = outcome(num_errors=0, interrupted=True, partial_table="p.csv", num_unfinished=2, num_not_started=1)
    monkeypatch.setattr(launch_sweep, "run_sweep", lambda cfg, **kw: cut)
    assert not cut.all_failed and launch_sweep.main(args) == 130
    err = capsys.readouterr().err
    assert "INTERRUPTED" in err and "p.csv" in err and "--resume" in err
    ok = outcome(num_errors=1)
    monkeypatch.setattr(launch_sweep, "run_sweep", lambda cfg, **kw: ok)
    assert launch_sweep.main(args) == 0


def test_report_md_escapes_user_strings():
    from orchestrator.report import _md_table

    evil = "<img src=x onerror=alert(1)>|`x` *y* [a](javascript:z)\nnext"
    text = _md_table(["trial", "error"], [["t1", evil]])
    row = text.splitlines()[2]
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in row
    assert row.count(" | ") == 1 and "\\|" in row  # the pipe cannot open a new column
    assert "\\`x\\`" in row and "\\*y\\*" in row and "\\[a\\]" in row and "\n" not in row


# ------------------------------------------------------------------------------------------ unplaceable trials
class _PendingTrial:
    def __init__(self, trial_id: str, bundles: list[dict], status: str = "PENDING"):
        from types import SimpleNamespace

        self.trial_id, self.status = trial_id, status
        self.placement_group_factory = SimpleNamespace(bundles=bundles)


def test_unplaceable_watch_counts_only_requests_no_node_can_hold():
    """UnplaceableWatch against a fixed node list and a hand-driven clock: a trial that only waits for others
    (its request fits a node's totals) is never flagged; one whose request fits no node is, after exactly
    timeout_s; a node that appears in time clears it (the autoscaler case)."""
    pytest.importorskip("ray")
    from orchestrator.unplaceable import UnplaceableStopper, UnplaceableWatch, fits, reset, unplaceable_message

    now = [0.0]
    nodes = [{"CPU": 2.0, "GPU": 0.0, "memory": 1e9}]
    watch = UnplaceableWatch("u1", timeout_s=10, clock=lambda: now[0], nodes=lambda: nodes)
    stop = UnplaceableStopper("u1")
    reset("u1")
    waiting = _PendingTrial("a", [{"CPU": 2.0}])              # fits the node: waits for running trials only
    big = _PendingTrial("b", [{"CPU": 1.0, "GPU": 1.0}])      # no node has a GPU
    assert fits(waiting.placement_group_factory.bundles, nodes)
    assert not fits(big.placement_group_factory.bundles, nodes)
    for t in range(0, 10):
        now[0] = float(t)
        watch.on_step_end(0, [waiting, big])
        assert unplaceable_message("u1") is None and not stop.stop_all()
    now[0] = 5.0 + 10                                          # a GPU node joins before b's deadline ...
    nodes.append({"CPU": 8.0, "GPU": 1.0})
    watch.on_step_end(0, [waiting, big])
    nodes.pop()                                                 # ... and leaves: b's clock starts again
    now[0] = 16.0
    watch.on_step_end(0, [waiting, big])
    now[0] = 25.0
    watch.on_step_end(0, [waiting, big])
    assert unplaceable_message("u1") is None
    now[0] = 26.0
    watch.on_step_end(0, [waiting, big])
    msg = unplaceable_message("u1")
    assert msg and "trial b asks for {CPU: 1, GPU: 1}" in msg and "CPU 2, GPU 0" in msg and "trial a" not in msg
    assert stop.stop_all() and not stop("b", {})
    reset("u1")
    assert not stop.stop_all()


@pytest.mark.slow
def test_sweep_with_an_unplaceable_trial_ends_with_its_request_named(tmp_path):
    """A Ray with 1 CPU started before the sweep (so the embedded-Ray preflight, which sizes by this machine's 2
    cores, lets 2 CPUs per trial through): the trial never starts, and after unplaceable_timeout_s the sweep ends
    with UnplaceableTrialError naming it and its request, the partial table written; exit 2 from the launcher."""
    ray = pytest.importorskip("ray")
    import pandas as pd

    from orchestrator.sweep import run_sweep
    from orchestrator.sweep_config import load_sweep_config
    from orchestrator.unplaceable import UnplaceableTrialError

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs a machine with 2 cores, so that the preflight accepts 2 CPUs per trial")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        cfg = load_sweep_config(overrides=[
            f"storage_path={tmp_path}", "name=u", "dashboard=false", "verbose=0", "num_samples=2",
            "max_concurrent=1", "resources_per_trial.cpu=2", "unplaceable_timeout_s=1", "retrain.top_k=0",
            "search.epochs=1", "search.C=4", "search.layers=3", "search.data.limit_train=64",
            "search.data.batch_size=32", "search.device=cpu", "asha.grace_period=1"])
        with pytest.raises(UnplaceableTrialError, match=r"trial \S+ asks for \{CPU: 2\}.*CPU 1, GPU 0.*"
                                                        r"unplaceable_timeout_s=1") as e:
            run_sweep(cfg, echo=False)
        assert "\n" not in str(e.value)
        table = os.path.join(cfg.local_results_dir, "sweep_results.partial.csv")
        assert table in str(e.value)
        rows = pd.read_csv(table)
        assert len(rows) >= 1 and set(rows["status"]) == {"INTERRUPTED"}   # it never ran; nothing retrained
    finally:
        ray.shutdown()
