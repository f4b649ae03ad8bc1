"""Bad input across the four launchers: exit status 2, one line on stderr naming the field, nothing written, Ray
not started (the checks run before any work: config validation, :func:`istanas.cli.check_run_config`,
:func:`orchestrator.cluster.preflight`)."""
from __future__ import annotations

import os

import pytest
import torch

import launch.imagenet_search as launch_imagenet
import launch.retrain as launch_retrain
import launch.search as launch_search
import launch.sweep as launch_sweep

LAUNCHERS = {"sweep": launch_sweep, "search": launch_search, "retrain": launch_retrain, "imagenet": launch_imagenet}
BASE = {
    "sweep": ["--storage-path", "{tmp}/runs", "--name", "bad", "--no-dashboard", "--no-progress"],
    "search": ["--method", "twostage", "--device", "cpu", "--no-progress", "--out", "{tmp}/runs/o"],
    "retrain": ["--preset", "quick", "--device", "cpu", "--no-progress", "--out", "{tmp}/runs/r"],
    "imagenet": ["--data", "{img}", "--storage-path", "{tmp}/runs", "--no-dashboard", "--preset", "small"],
}
NO_GPU = not torch.cuda.is_available()

# (launcher, extra argv, text the one error line must hold)
CASES = [
    # sweep: the embedded local Ray's resources, storage, seed, dashboard host, schema
    ("sweep", ["--set", "resources_per_trial.cpu=64", "--num-cpus", "2"], "resources_per_trial"),
    ("sweep", ["--set", "resources_per_trial.gpu=1", "--set", "num_gpus=0"], "resources_per_trial"),
    ("sweep", ["--set", "retrain.resources.cpu=64", "--num-cpus", "2"], "retrain.resources"),
    ("sweep", ["--storage-path", "{file}"], "storage_path"),
    ("sweep", ["--storage-path", "{file}/below"], "storage_path"),
    ("sweep", ["--seed", "-1"], "seed"),
    ("sweep", ["--seed", "4294967296"], "seed"),
    ("sweep", ["--dashboard-host", "not a host!"], "dashboard_host"),
    ("sweep", ["--dashboard-host", "300.1.2.3"], "dashboard_host"),
    ("sweep", ["--set", "dashboard_port=70000"], "dashboard_port"),
    ("sweep", ["--num-samples", "0"], "num_samples"),
    ("sweep", ["--max-concurrent", "0"], "max_concurrent"),
    ("sweep", ["--set", "keep_checkpoints=0"], "keep_checkpoints"),
    ("sweep", ["--set", "verbose=7"], "verbose"),
    ("sweep", ["--set", "name=../escape"], "name"),
    ("sweep", ["--set", "max_failures=-1"], "max_failures"),
    # search: numbers, seeds, folders, data
    ("search", ["--set", "lr=1e30"], "lr"),
    ("search", ["--set", "lr=.nan"], "lr"),
    ("search", ["--set", "arch_lr=100"], "arch_lr"),
    ("search", ["--set", "lr_min=-1"], "lr_min"),
    ("search", ["--set", "weight_decay=.inf"], "weight_decay"),
    ("search", ["--set", "arch_weight_decay=-1"], "arch_weight_decay"),
    ("search", ["--seed", "-1"], "seed"),
    ("search", ["--seed", "18446744073709551617"], "seed"),
    ("search", ["--out", "{file}"], "out"),
    ("search", ["--out", "{file}/x"], "out"),
    ("search", ["--set", "data.batch_size=4096", "--set", "data.limit_train=128"], "batch_size"),
    ("search", ["--dataset", "cifar10", "--data-root", "{empty}"], "data.root"),
    ("search", ["--epochs", "0"], "epochs"),
    ("search", ["--batch-size", "0"], "batch-size"),
    # retrain
    ("retrain", ["--genotype", "{deep}"], "genotype"),
    ("retrain", ["--genotype", "NOT_A_GENOTYPE"], "genotype"),
    ("retrain", ["--set", "weight_decay=.inf"], "weight_decay"),
    ("retrain", ["--set", "lr=1e30"], "lr"),
    ("retrain", ["--seed", "4294967296"], "seed"),
    ("retrain", ["--out", "{file}/x"], "out"),
    ("retrain", ["--set", "data.batch_size=512", "--set", "data.limit_train=100"], "batch_size"),
    ("retrain", ["--dataset", "cifar10", "--data-root", "{empty}"], "data.root"),
    ("retrain", ["--epochs", "0"], "epochs"),
    # Ray Train job
    ("imagenet", ["--num-workers", "64", "--num-cpus", "2"], "num_workers"),
    ("imagenet", ["--storage-path", "{file}"], "storage_path"),
    ("imagenet", ["--dashboard-host", "bad host"], "dashboard_host"),
    ("imagenet", ["--data", "{empty}"], "--data"),
]
if not NO_GPU:  # a GPU a machine has is no error
    CASES = [c for c in CASES if "resources_per_trial.gpu=1" not in c[1]]


def _ids() -> list[str]:
    return [f"{c[0]}-{'-'.join(a.strip('-{}').replace('=', '_') for a in c[1])}"[:60] for c in CASES]


@pytest.fixture()
def places(tmp_path):
    tmp = tmp_path / "w"
    tmp.mkdir()
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    for split in ("train", "val"):
        (tmp_path / "img" / split / "n01").mkdir(parents=True)
    return {"tmp": str(tmp), "file": str(tmp_path / "afile"), "empty": str(tmp_path / "empty"),
            "deep": str(tmp_path / "deep.json"), "img": str(tmp_path / "img")}


def test_at_least_40_kinds():
    assert len({(c[0], tuple(c[1])) for c in CASES}) >= 40 - (0 if NO_GPU else 1)


@pytest.mark.parametrize("launcher,extra,needle", CASES, ids=_ids())
def test_bad_input_exits_2_before_any_work(launcher, extra, needle, places, capsys):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    argv = [a.format(**places) for a in BASE[launcher] + extra]
    rc = LAUNCHERS[launcher].main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not ray.is_initialized()
    assert os.listdir(places["tmp"]) == []  # nothing written
