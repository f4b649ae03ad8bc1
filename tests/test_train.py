"""Distributed one-stage ISTA-NAS on Ray Train (orchestrator/train_onestage.py, orchestrator/dist_hooks.py),
launch/imagenet_search.py and cluster.yaml.

The end-to-end test runs 2 CPU workers (gloo) on a small ImageFolder of real Imagenette JPEGs through the
search-to-train switch, kills one worker mid-run (:class:`KillOnce`, a test hook: ``os._exit`` before its report of
epoch 3) and checks that the run resumed from the last checkpoint and finished, that both ranks had the same support
at every step and the same final genotype, and that the stand-alone model was exported into the run's storage.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import sys
import time
import zipfile

import pytest
import torch
import yaml

from istanas import cli
from istanas.checkpoint import atomic_write_text, rng_state, seed_everything
from istanas.config import ConfigError
from istanas.data import DataConfig, get_loaders
from istanas.ista.absorb import load_exported
from istanas.ista.onestage import DistHooks, OneStageConfig, OneStageTask
from orchestrator.dist_hooks import TorchDistHooks, shard_eval_loader
from orchestrator.train_onestage import (RECORD_PREFIX, STATE_FILE, DistSearchConfig, JobConfigError,
                                         build_search_config, check_run, gather_rng_states, load_resume_state,
                                         rank_seed, resume_for_rank, run_distributed_search, run_exists, seeded_wrap,
                                         worker_config)
from tests.test_reliability import flip_byte
from spaces.registry import load_genotype

N_CLASSES, N_TRAIN, N_VAL = 4, 8, 2


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory, shared_data) -> str:
    """``root/train/<wnid>/*.JPEG`` (8 per class) and ``root/val/<wnid>/*.JPEG`` (2 per class): 4 classes of real
    Imagenette JPEGs copied out of the shared zip."""
    src = os.path.join(shared_data, "imagenette-val-jpg.zip")
    if not os.path.isfile(src):
        pytest.skip("imagenette-val-jpg.zip not in the shared data folder")
    root = tmp_path_factory.mktemp("imagenet")
    with zipfile.ZipFile(src) as zf:
        by_class: dict[str, list[str]] = {}
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) == 4 and parts[3].lower().endswith(".jpeg"):
                by_class.setdefault(parts[2], []).append(name)
        for wnid in sorted(by_class)[:N_CLASSES]:
            names = by_class[wnid][:N_TRAIN + N_VAL]
            for i, name in enumerate(names):
                split = "train" if i < N_TRAIN else "val"
                dest = root / split / wnid / os.path.basename(name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(name))
    return str(root)


def _job(root: str, tmp: str, **kw):
    search = {
        "data": {"root": root, "image_size": 32, "batch_size": 4, "eval_batch_size": 8, "num_workers": 0},
        "C": 4, "layers": 3, "epochs": 4, "search_epochs": 2, "train_epochs": 2, "epsilon": 1.5e-3,
        "auxiliary": False, "eval_every": 1, "lr": 0.05,
    }
    base = dict(name="e2e", storage_path=os.path.join(tmp, "storage"), search_preset="imagenet", search=search,
                num_workers=2, cpus_per_worker=1, max_failures=2, keep_checkpoints=2, dashboard=False,
                verbose=True)
    base.update(kw)
    return DistSearchConfig(**base)


class KillOnce:
    """Test hook (``before_report``): rank ``rank`` exits abruptly (``os._exit``) once, before its report of
    ``epoch``; ``marker`` records that it happened.  It first waits ``delay_s`` so that Ray Train's controller
    (polling every 2 s) has collected the previous epoch's report, and the run resumes from that checkpoint."""

    def __init__(self, epoch: int, rank: int, marker: str, delay_s: float = 3.0):
        self.epoch, self.rank, self.marker, self.delay_s = epoch, rank, marker, delay_s

    def __call__(self, rank: int, epoch: int, metrics: dict) -> None:
        if rank != self.rank or epoch != self.epoch or os.path.exists(self.marker):
            return
        atomic_write_text(self.marker, f"rank {rank} exited at epoch {epoch}\n")
        time.sleep(self.delay_s)
        print(f"[test] rank {rank} exits abruptly before reporting epoch {epoch}", flush=True)
        os._exit(1)


@pytest.fixture
def ray_local():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)
    # the test hook above lives in this module: ship it to the workers by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_two_workers_end_to_end_with_a_killed_worker(imagefolder, ray_local, tmp_path):
    marker = str(tmp_path / "killed")
    record = str(tmp_path / "record")
    cfg = _job(imagefolder, str(tmp_path), record_dir=record)
    # a deterministic error only the workers see (validate=False skips the driver's data check; a root that is no
    # ImageFolder): the run stops on the first attempt (FailFastOnConfigError; without it Ray Train would retry
    # max_failures=2 times and raise a WorkerGroupError) with the message, and leaves the folder to the corrected
    # command: the fresh run below reuses it without --resume
    with pytest.raises(JobConfigError, match="data.root: .*no train/, test/ or val/") as bad:
        run_distributed_search(_job(os.path.join(imagefolder, "val"), str(tmp_path)), validate=False)
    assert "retrying cannot fix it" in str(bad.value) and "\n" not in str(bad.value)
    assert os.path.isdir(cfg.run_path) and not run_exists(cfg)
    out = run_distributed_search(cfg, before_report=KillOnce(epoch=3, rank=1, marker=marker))

    # one worker was killed mid-run (before its report of epoch 3); the run resumed from the last checkpoint Ray
    # Train had registered (epoch 2, after the search-to-train switch; epoch 1 if the controller had not yet
    # collected epoch 2's report) and finished
    assert os.path.isfile(marker)
    m = out.metrics
    k = m["resumed_from_epoch"]
    assert m["search_done"] == 1 and m["epoch"] == 4 and k in (1, 2)
    assert m["switch_epoch"] == 2                     # search_epochs=2: the search ended, then 2 training epochs
    assert m["support_mismatches"] == 0               # every rank's own recovery agreed with rank 0's support
    # the stand-alone model (Eq. 12) and genotype in the run's storage
    files = set(os.listdir(out.export_path))
    assert {"genotype.json", "model.pt", "model.safetensors", "model.onnx", "export.json"} <= files
    with open(os.path.join(out.export_path, "genotype.json")) as f:
        exported = json.load(f)
    assert load_genotype(json.dumps(exported)).digest() == out.genotype_digest
    net = load_exported(out.export_path)
    assert net(torch.zeros(2, 3, 32, 32))[0].shape == (2, N_CLASSES)
    assert out.checkpoint_path is not None and os.path.isfile(os.path.join(out.checkpoint_path, "result.json"))

    # both ranks: the same host support at every step of every session, and the same final genotype
    recs = {}
    for path in glob.glob(os.path.join(record, f"{RECORD_PREFIX}_start*_rank*.pt")):
        rec = torch.load(path, weights_only=True)
        recs[(rec["start_epoch"], rec["rank"])] = rec
    steps = 4                                         # 16 images per rank, batch 4
    assert {s for s, _ in recs} == {0, k}
    first = recs[(0, 0)]["supports"], recs[(0, 1)]["supports"]
    assert len(first[0]) == len(first[1]) == 3 * steps  # both ranks ran epochs 1-3 before the kill
    assert torch.equal(first[0], first[1])
    assert any(not torch.equal(first[0][i], first[0][i + 1]) for i in range(2 * steps - 1))  # S moved while searching
    second = recs[(k, 0)]["supports"], recs[(k, 1)]["supports"]
    assert len(second[0]) == len(second[1]) == (4 - k) * steps and torch.equal(second[0], second[1])
    assert torch.equal(second[0][0], first[0][k * steps])   # the resumed run starts from the checkpoint's support
    assert torch.equal(recs[(k, 0)]["b"], recs[(k, 1)]["b"])  # b identical on both ranks
    assert recs[(k, 0)]["genotype"] == recs[(k, 1)]["genotype"]
    assert load_genotype(recs[(k, 0)]["genotype"]).digest() == out.genotype_digest
    with open(os.path.join(out.checkpoint_path, "result.json")) as f:
        reports = json.load(f)["reports"]
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4]          # epochs 1..k carried over from the checkpoint
    assert all(r["images_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in reports)
    # the epsilon rule stopped some nodes after epoch 1 (rank 0's decision; DDP re-wrapped for the released BNs),
    # search_epochs=2 stopped the rest: the switch
    assert 1 <= reports[0]["nodes_stopped"] < 8 and reports[1]["nodes_stopped"] == 8

    # rerunning the same run name and storage resumes it (here: nothing left to train); a flipped byte in the
    # latest (final) checkpoint is detected (SHA-256 record) and the previous good one, epoch_00004, is used
    flip_byte(os.path.join(out.checkpoint_path, STATE_FILE))
    again = run_distributed_search(_job(imagefolder, str(tmp_path), record_dir=None), resume=True)
    assert again.metrics["resume_checkpoint"] == "epoch_00004"
    assert again.metrics["resumed_from_epoch"] == 4 and again.genotype_digest == out.genotype_digest
    with pytest.raises(ConfigError, match="exists"):
        run_distributed_search(_job(imagefolder, str(tmp_path)))
    # every checkpoint damaged: one error naming them, on the first attempt (no retries)
    for path in glob.glob(os.path.join(cfg.run_path, "*", STATE_FILE)):
        flip_byte(path)
    with pytest.raises(JobConfigError, match="corrupt.*no good checkpoint to fall back on"):
        run_distributed_search(_job(imagefolder, str(tmp_path), record_dir=None), resume=True)


# ---------------------------------------------------------------------------------------------------- config
def test_config_validation_names_the_field(imagefolder, tmp_path):
    bad = [
        (dict(num_workers=0), "num_workers"),
        (dict(global_batch_size=7), "global_batch_size"),
        (dict(max_failures=-2), "max_failures"),
        (dict(name="a b"), "name"),
        (dict(cpus_per_worker=0), "cpus_per_worker"),
        (dict(search={"lr": -1.0}), "search.lr"),
        (dict(search={"data": {"root": str(tmp_path / "missing")}}), "search.data.root"),
        (dict(search={"no_such_key": 1}), "no_such_key"),
    ]
    for kw, field in bad:
        cfg = _job(imagefolder, str(tmp_path), **kw)
        if "search" in kw:
            cfg.search = {**_job(imagefolder, str(tmp_path)).search, **kw["search"]}
        with pytest.raises(ConfigError, match=field.split(".")[-1]):
            cfg.validate()
    cfg = _job(imagefolder, str(tmp_path), global_batch_size=16)
    cfg.validate()
    assert build_search_config(cfg, "cpu").data.batch_size == 8


def test_driver_checks_the_data_listing(imagefolder, tmp_path):
    """The file list of a local root decides the layout, the split and a batch per rank before Ray starts."""
    import shutil

    single = str(tmp_path / "single")
    shutil.copytree(os.path.join(imagefolder, "train"), os.path.join(single, "train"))
    cfg = _job(single, str(tmp_path))
    cfg.search = {**cfg.search, "data": {**cfg.search["data"], "root": single}}
    with pytest.raises(ConfigError, match="search.data.root: .*has only train/.*holdout_fraction"):
        cfg.validate()
    cfg.search["data"]["holdout_fraction"] = 0.25
    cfg.validate()
    cfg.search["data"]["root"] = os.path.join(imagefolder, "val")            # no split folders at all
    with pytest.raises(ConfigError, match="search.data.root: .*no train/, test/ or val/"):
        cfg.validate()
    cfg = _job(imagefolder, str(tmp_path), num_workers=2)
    cfg.search = {**cfg.search, "data": {**cfg.search["data"], "batch_size": 17, "drop_last": True}}
    with pytest.raises(ConfigError, match="batch_size: 17 per worker.*16 of the 32"):
        cfg.validate()
    cfg.search["data"]["batch_size"] = 16
    cfg.validate()


def test_corrupt_job_checkpoint_falls_back_to_the_previous_good_one(tmp_path, capsys):
    """load_resume_state: a flipped byte in Ray Train's latest checkpoint is named and the newest good epoch_*
    folder before it is used (its reports too); none good: a JobConfigError naming every file tried."""
    pytest.importorskip("ray")
    from ray.train import Checkpoint

    from istanas import checkpoint as ckpt

    run = tmp_path / "run"
    for e in (1, 2, 3):
        ckpt.save({"epoch": e, "w": torch.full((64,), float(e)), "reports": [{"epoch": k} for k in range(1, e + 1)]},
                  str(run / f"epoch_{e:05d}" / STATE_FILE))
    latest = Checkpoint(str(run / "epoch_00003"))
    state, used = load_resume_state(latest, str(run))
    assert state["epoch"] == 3 and used == latest.path
    flip_byte(str(run / "epoch_00003" / STATE_FILE))
    state, used = load_resume_state(latest, str(run))
    assert state["epoch"] == 2 and used.endswith("epoch_00002") and torch.equal(state["w"], torch.full((64,), 2.0))
    assert [r["epoch"] for r in state["reports"]] == [1, 2]
    err = capsys.readouterr().err
    assert "epoch_00003/state.pt is corrupt" in err and "epoch_00002" in err
    flip_byte(str(run / "epoch_00002" / STATE_FILE), offset=10)
    assert load_resume_state(latest, str(run))[0]["epoch"] == 1
    flip_byte(str(run / "epoch_00001" / STATE_FILE))
    with pytest.raises(JobConfigError, match="epoch_00003.*no good checkpoint.*epoch_00002.*epoch_00001"):
        load_resume_state(latest, str(run))


def test_cluster_data_root_is_checked_on_the_workers(imagefolder, tmp_path):
    """Joining a cluster, a data root that is not visible from the driver is left to the workers."""
    cfg = _job(imagefolder, str(tmp_path), address="auto")
    cfg.search = {**cfg.search, "data": {**cfg.search["data"], "root": "/data/imagenet-not-here"}}
    cfg.validate()
    cfg.address = None
    with pytest.raises(ConfigError, match="root"):
        cfg.validate()


def test_run_folder_fresh_or_resume(imagefolder, tmp_path):
    cfg = _job(imagefolder, str(tmp_path))
    check_run(cfg, resume=False)
    with pytest.raises(ConfigError, match="--resume"):
        check_run(cfg, resume=True)
    os.makedirs(cfg.run_path)
    open(os.path.join(cfg.run_path, ".validate_storage_marker"), "w").close()   # a run stopped before any report
    check_run(cfg, resume=False)
    open(os.path.join(cfg.run_path, "x"), "w").close()
    with pytest.raises(ConfigError, match="exists"):
        check_run(cfg, resume=False)
    check_run(cfg, resume=True)


# ------------------------------------------------------------------------------------------------------- CLI
def _cli(argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location("imagenet_search", os.path.join(cli.repo_root(), "launch",
                                                                                  "imagenet_search.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def test_cli_rejects_bad_input_before_ray_starts(imagefolder, tmp_path, capsys):
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    store = str(tmp_path / "s")
    cases = [
        ["--data", str(tmp_path / "missing"), "--storage-path", store],
        ["--data", imagefolder, "--num-workers", "0", "--storage-path", store],
        ["--data", imagefolder, "--num-workers", "3", "--global-batch-size", "8", "--storage-path", store],
        ["--data", imagefolder, "--set", "lr=-1", "--storage-path", store],
        ["--data", imagefolder, "--set", "nonsense=1", "--storage-path", store],
        ["--data", imagefolder, "--storage-path", store, "--resume"],          # nothing to resume
        ["--data", os.path.join(imagefolder, "val"), "--storage-path", store],   # no split folders
    ]
    if not torch.cuda.is_available():
        cases.append(["--data", imagefolder, "--use-gpu", "--storage-path", store])
    for argv in cases:
        assert _cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: "), (argv, err)
    assert not ray.is_initialized()
    assert not os.path.exists(store)
    with pytest.raises(SystemExit) as e:
        _cli(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("--num-workers", "--use-gpu", "--address", "--storage-path", "ray up", "--resume"):
        assert word in text


def test_cli_print_config(imagefolder, tmp_path, capsys):
    rc = _cli(["--data", imagefolder, "--num-workers", "2", "--global-batch-size", "16", "--epochs", "3", "--search-epochs", "2",
               "--storage-path", str(tmp_path / "s"), "--print-config"])
    assert rc == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["job"]["num_workers"] == 2 and cfg["search"]["data"]["batch_size"] == 8
    assert cfg["search"]["epochs"] == 3 and cfg["search"]["data"]["root"] == imagefolder


# -------------------------------------------------------------------------------------------------- cluster
def test_cluster_yaml_validates_against_rays_schema(repo_root):
    """cluster.yaml against Ray's cluster-config JSON schema (as written, and after Ray fills its defaults, as
    `ray up` does before launching anything); no network."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(repo_root, "cluster.yaml")) as f:
        cfg = yaml.safe_load(f)
    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        schema = json.load(f)
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(copy.deepcopy(cfg)))

    # what the issue asks of it
    assert cfg["provider"]["type"] == "aws"
    types_ = cfg["available_node_types"]
    head = types_[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    gpu = [t for n, t in types_.items() if n != cfg["head_node_type"]]
    assert gpu and all(t["node_config"]["InstanceType"] in ("p3.16xlarge", "p4d.24xlarge", "g5.48xlarge",
                                                            "p5.48xlarge", "g6.48xlarge") for t in gpu)
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in gpu)
    assert any("pip install" in c and "-e ." in c for c in cfg["setup_commands"])
    assert cfg["file_mounts"]
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in json.dumps(cfg)

    # and the schema does reject a broken config
    broken = copy.deepcopy(cfg)
    broken["available_node_types"][cfg["head_node_type"]]["max_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


# ----------------------------------------------------------------------------------------------------- hooks
def _hooks_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        hooks = TorchDistHooks(torch.device("cpu"), rank, world)
        space = torch.nn.Module()
        space.register_buffer("z", torch.full((2, 4, 35), 0.25 + rank, dtype=torch.float64))
        space.z[0, 0, 0] = 1e-300 * (1 + rank)             # bit-exact transport of the float64 code
        hooks.bind(space)
        same = torch.arange(16, dtype=torch.int64).view(2, 4, 2)
        got_same = hooks.broadcast_support(same.clone())
        mine = same + rank                       # rank 1 disagrees: it must get rank 0's support anyway
        got = hooks.broadcast_support(mine)
        flags = torch.tensor([[rank == 0, False], [True, rank == 1]])
        agreed = hooks.all_agree(flags)
        mean = hooks.all_reduce_mean({"acc": 1.0 if rank == 0 else 0.0, "loss": 2.0}, 3 if rank == 0 else 1)
        rngs = gather_rng_states(hooks, {"rank": torch.tensor([rank])})
        torch.save({"same": got_same, "got": got, "agreed": agreed, "mismatches": hooks.support_mismatches,
                    "broadcasts": hooks.support_broadcasts, "acc": mean["acc"], "loss": mean["loss"],
                    "z": space.z.clone(), "z_mismatches": hooks.z_mismatches,
                    "rngs": [int(r["rank"]) for r in rngs] if rngs is not None else None},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_dist_hooks_broadcast_rank0_support_and_stop_decision(tmp_path):
    """Two gloo processes: every rank ends up with rank 0's support and rank 0's stop flags; a rank whose own
    recovery disagreed counts it; evaluation means are all-reduced weighted by images."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_hooks_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    base = torch.arange(16, dtype=torch.int64).view(2, 4, 2)
    for r in (r0, r1):
        assert torch.equal(r["same"], base) and torch.equal(r["got"], base)
        assert torch.equal(r["agreed"], torch.tensor([[True, False], [True, False]]))
        assert r["broadcasts"] == 2
        assert r["acc"] == pytest.approx(0.75) and r["loss"] == pytest.approx(2.0)   # weighted by images
    assert r0["mismatches"] == 0 and r1["mismatches"] == 1
    # z travels with the support: rank 1 ends with rank 0's code, bit for bit (corrected once, then in agreement)
    z0 = torch.full((2, 4, 35), 0.25, dtype=torch.float64)
    z0[0, 0, 0] = 1e-300
    assert torch.equal(r0["z"], z0) and torch.equal(r1["z"], z0)
    assert r0["z_mismatches"] == 0 and r1["z_mismatches"] == 1
    # every rank's RNG state reaches rank 0 (checkpointed as rng_ranks)
    assert r0["rngs"] == [0, 1] and r1["rngs"] is None


def test_ranks_draw_distinct_masks_from_identical_architecture_rngs():
    """After the task is built (seeded_wrap, seed + rank) two ranks draw different drop-path masks and augmented
    batches, while A, b, z, the support and the initial weights are the same on both."""
    from spaces.networks import drop_path

    cfg = OneStageConfig.preset("small", C=4, layers=3, device="cpu", auxiliary=False,
                                data={"limit_train": 32, "limit_test": 16})
    draws = []
    for rank in (0, 1):
        seed_everything(cfg.seed)                           # what run_search does on every rank
        task = OneStageTask(cfg, dist=DistHooks(wrap=seeded_wrap(lambda m: m, cfg.seed, rank, 2)))
        mask = drop_path(torch.ones(512, 1, 1, 1), 0.5)
        x = next(iter(task.loaders.train))[0]
        draws.append((task, mask, x))
    (t0, m0, x0), (t1, m1, x1) = draws
    assert not torch.equal(m0, m1)
    assert not torch.equal(x0, x1) or t0.loaders.train.augment is None
    for name in ("A", "E", "b", "z"):
        assert torch.equal(getattr(t0.space, name), getattr(t1.space, name)), name
    assert torch.equal(t0.support_host, t1.support_host)
    assert all(torch.equal(a, b) for a, b in zip(t0.net.state_dict().values(), t1.net.state_dict().values()))
    # rank 0 with one rank, or the identity seeding (the old behaviour), draws the same masks on both ranks
    seed_everything(cfg.seed)
    OneStageTask(cfg, dist=DistHooks(wrap=seeded_wrap(lambda m: m, cfg.seed, 1, 1)))
    single = drop_path(torch.ones(512, 1, 1, 1), 0.5)
    seed_everything(cfg.seed)
    OneStageTask(cfg, dist=DistHooks(wrap=seeded_wrap(lambda m: m, cfg.seed, 0, 1)))
    assert torch.equal(single, drop_path(torch.ones(512, 1, 1, 1), 0.5))
    assert rank_seed(cfg.seed, 0) == cfg.seed and rank_seed(cfg.seed, 3) == cfg.seed + 3


def test_resume_gives_every_rank_its_own_rng_state():
    seed_everything(1)
    a = rng_state()
    seed_everything(2)
    b = rng_state()
    resume = {"epoch": 3, "rng": a, "rng_ranks": [a, b], "task": {}}
    assert resume_for_rank(resume, 0, 2, 0)["rng"] is a and resume_for_rank(resume, 1, 2, 0)["rng"] is b
    assert resume_for_rank(resume, 1, 1, 0) is resume
    old = {"epoch": 3, "rng": a, "task": {}}                 # no rng_ranks (or another world size)
    r1, r2 = resume_for_rank(old, 1, 2, 0)["rng"], resume_for_rank(old, 2, 3, 0)["rng"]
    assert resume_for_rank(old, 0, 2, 0)["rng"] is a
    assert not torch.equal(r1["torch"], a["torch"]) and not torch.equal(r1["torch"], r2["torch"])
    assert torch.equal(resume_for_rank(old, 1, 2, 0)["rng"]["torch"], r1["torch"])      # reproducible


def test_wrap_keeps_outputs_and_parameters_and_records_training_supports():
    """``wrap`` with one rank is the net itself (same parameters: the optimiser still holds them; the same logits);
    with ``record`` it logs the support of every training-mode forward (one per step), not of evaluations."""
    cfg = OneStageConfig.preset("small", C=4, layers=3, device="cpu", auxiliary=False,
                                data={"limit_train": 32, "limit_test": 16})
    task = OneStageTask(cfg)
    net = task.net.eval()
    x = next(iter(task.loaders.valid))[0][:4]
    with torch.no_grad():
        ref = net(x)
    ids = [id(p) for p in net.parameters()]
    hooks = TorchDistHooks(torch.device("cpu"), 0, 1, record=True)
    assert hooks.wrap(net) is net and hooks.wrap(net) is net       # idempotent
    assert [id(p) for p in net.parameters()] == ids and hooks.net is net
    with torch.no_grad():
        out = net(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4) and hooks.support_log == []
    net.train()
    with torch.no_grad():
        net(x)
        net(x)
    assert len(hooks.support_log) == 2 and torch.equal(hooks.support_log[0], net.support_host)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="channels_last is a CUDA setting")
def test_channels_last_keeps_outputs_and_parameters_on_cuda():
    """The engine's channels_last (``OneStageConfig.channels_last``, CUDA): channels-last conv weights, the
    compressed space's A left alone, the same logits as the default layout."""
    def logits(channels_last: bool):
        cfg = OneStageConfig.preset("small", C=4, layers=3, device="cuda", auxiliary=False, channels_last=channels_last,
                                    data={"limit_train": 32, "limit_test": 16})
        torch.manual_seed(0)
        task = OneStageTask(cfg)
        net = task.net.eval()
        x = next(iter(task.loaders.valid))[0][:4].to("cuda")
        with torch.no_grad():
            return net, net(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

    net, out = logits(True)
    convs = [m.weight for m in net.supernet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[-1] > 1)
    assert net.space.A.is_contiguous()
    _, ref = logits(False)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-3)


def test_worker_config_makes_local_paths_absolute(imagefolder, tmp_path, monkeypatch):
    """Ray Train workers run in another folder: relative storage / data / debug paths reach them absolute."""
    monkeypatch.chdir(os.path.dirname(imagefolder))
    cfg = _job(os.path.basename(imagefolder), str(tmp_path), storage_path="runs/rel", record_dir="rec")
    cfg.validate()
    wc = worker_config(cfg)
    assert wc["job"]["storage_path"] == os.path.abspath("runs/rel")
    assert wc["search"]["data"]["root"] == imagefolder
    assert wc["job"]["record_dir"] == os.path.abspath("rec")
    s3 = worker_config(_job(imagefolder, str(tmp_path), storage_path="s3://bucket/runs/"))
    assert s3["job"]["storage_path"] == "s3://bucket/runs"


def test_cli_config_file(imagefolder, tmp_path, capsys, repo_root):
    """configs/imagenet_search.yaml loads (job keys + search mapping); flags override it."""
    rc = _cli(["--config", os.path.join(repo_root, "configs", "imagenet_search.yaml"), "--data", imagefolder,
               "--num-workers", "2", "--global-batch-size", "64", "--storage-path", str(tmp_path / "s"),
               "--print-config"] + (["--set", "use_gpu=false"] if not torch.cuda.is_available() else []))
    assert rc == 0, capsys.readouterr().err
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["job"]["num_workers"] == 2 and cfg["job"]["max_failures"] == 3
    assert cfg["search"]["data"]["batch_size"] == 32 and cfg["search"]["lr"] == 0.5
    assert cfg["search"]["data"]["num_workers"] == 6 and cfg["search"]["data"]["root"] == imagefolder


def test_shard_eval_loader_splits_the_test_set(imagefolder):
    """Each rank evaluates a disjoint share of the test set; together all of it (streamed and in-memory)."""
    cfg = DataConfig(dataset="imagenet", root=imagefolder, image_size=16, eval_batch_size=3)
    valid = get_loaders(cfg, "train").valid
    ys = [torch.cat([y for _, y in shard_eval_loader(valid, r, 2)]) for r in (0, 1)]
    full = torch.cat([y for _, y in valid])
    assert len(ys[0]) == len(ys[1]) == len(full) // 2
    assert sorted(torch.cat(ys).tolist()) == sorted(full.tolist())
    digits = get_loaders(DataConfig(dataset="digits", limit_test=21, eval_batch_size=4), "train").valid
    xs = [torch.cat([x for x, _ in shard_eval_loader(digits, r, 2)]) for r in (0, 1)]
    whole = torch.cat([x for x, _ in digits])
    assert len(xs[0]) == len(xs[1]) == 10
    assert torch.equal(xs[0], whole[0:20:2]) and torch.equal(xs[1], whole[1:20:2])
    assert shard_eval_loader(valid, 0, 1) is valid


def test_fail_fast_callback_stops_only_on_config_errors():
    """The controller-side callback raises (Ray Train V2: a non-retryable ControllerError) on a JobConfigError of
    any worker, and lets every other worker error go to FailureConfig's retries; the driver finds the message."""
    pytest.importorskip("ray")
    from ray.train import ControllerError, WorkerGroupError

    from orchestrator.train_onestage import DETERMINISTIC_ERRORS, _fail_fast_callback, config_error_of

    cb = _fail_fast_callback()
    cb.after_exception(None, {0: RuntimeError("gloo: connection reset"), 1: OSError("node lost")})   # retried
    bad = JobConfigError("search.data.root: /x has only val/")
    with pytest.raises(JobConfigError, match="has only val/"):
        cb.after_exception(None, {0: RuntimeError("peer died"), 1: bad})
    assert str(config_error_of(ControllerError(bad))) == str(bad)
    assert config_error_of(WorkerGroupError("retries used up", {1: bad})) is None     # not the fail-fast path
    assert config_error_of(ControllerError(RuntimeError("x"))) is None
    assert issubclass(JobConfigError, ConfigError) and ConfigError in DETERMINISTIC_ERRORS
