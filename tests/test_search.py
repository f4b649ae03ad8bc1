"""The search runner and the method registry: lookup with "did you mean", config class and runtime checks before
any work, the result record (``result.json``) keys, and a method added to the registry runs through the runner."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import pytest
import torch

from istanas import cli, methods
from istanas.config import ConfigError, preset_data
from istanas.ista.onestage import OneStageConfig
from istanas.ista.twostage import TwoStageConfig
from istanas.methods import METHODS, Method, get_method, sweepable
from istanas.result import RECORD_KEYS, SearchResult
from istanas.search import check_runtime, run_search, write_outputs
from spaces.registry import get_genotype


def test_registry_lists_every_method_with_its_spaces_and_presets():
    assert set(METHODS) == {"twostage", "darts", "onestage", "tenas", "random", "params"}
    assert all(m.name == k for k, m in METHODS.items())
    assert METHODS["tenas"].spaces == ("nb201", "darts") and METHODS["twostage"].spaces == ("darts", "nb201")
    assert sorted(METHODS["onestage"].presets) == ["cifar10", "cpu", "imagenet", "paper", "small"]
    assert sweepable() == ["twostage"]
    assert get_method("twostage").sweep_params["lam"] == "recovery.lam"
    with pytest.raises(ConfigError, match="did you mean 'onestage'"):
        get_method("onestag")


def test_runner_checks_the_config_before_any_work():
    with pytest.raises(ConfigError, match="expected a DartsConfig"):
        run_search("darts", TwoStageConfig())
    with pytest.raises(ConfigError, match="recover_every"):
        run_search("twostage", TwoStageConfig(recover_every="batch"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^device"):
            check_runtime(TwoStageConfig(device="cuda"))
        with pytest.raises(ConfigError, match="^recovery.device"):
            check_runtime(TwoStageConfig.preset("small", recovery={"device": "cuda"}))
    check_runtime(TwoStageConfig(device="cpu"))


def _result(**kw) -> SearchResult:
    return SearchResult(method="x", genotype=get_genotype("DARTS_V2"), history=[{"epoch": 1, "val_acc": 0.5}],
                        final={"epochs": 1}, config={"a": 1}, device="cpu", wall_time_s=1.0, session_time_s=2.0, **kw)


def test_record_has_exactly_the_result_json_keys(tmp_path):
    r = _result(extra={"support": [[1, 2]]})
    rec = r.to_record()
    assert set(rec) == set(RECORD_KEYS) | {"support", "genotype"}
    assert rec["genotype"] == get_genotype("DARTS_V2").to_dict() and rec["genotype_digest"] == r.genotype.digest()
    paths = write_outputs(r, str(tmp_path))
    on_disk = json.load(open(paths["result"]))
    assert set(on_disk) == set(rec) | {"outputs"} and on_disk["outputs"] == paths == r.paths
    assert {"genotype", "result", "plot_normal_png", "plot_reduce_svg"} <= set(paths)
    # a method with its own record (TE-NAS): only the keys it names, no pictures, no outputs
    own = _result(extra={"arch": "a", "rounds": []}, record_keys=("wall_time_s", "config"), pictures=False)
    paths = write_outputs(own, str(tmp_path / "own"))
    assert set(json.load(open(paths["result"]))) == {"wall_time_s", "config", "arch", "rounds", "genotype"}
    assert set(paths) == {"genotype", "result"} and not os.path.exists(tmp_path / "own" / "cells_normal.png")


@dataclass
class _ToyConfig:
    n: int = 3
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n: must be >= 1, got {self.n}")


def _toy_run(cfg, *, data=None, on_epoch_end=None, resume=None, progress=True, tag=""):
    g = get_genotype("DARTS_V1")
    hist = []
    for i in range(cfg.n):
        hist.append({"epoch": i + 1})
        if on_epoch_end is not None:
            on_epoch_end(hist[-1], {})
    return SearchResult(method="toy", genotype=g, history=hist, final={"tag": tag}, config={"n": cfg.n},
                        device="cpu", wall_time_s=0.0, session_time_s=0.0)


def test_a_new_registry_entry_runs_through_the_runner(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", Method("toy", "a toy", _ToyConfig, ("darts",), run=_toy_run))
    seen = []
    r = run_search("toy", _ToyConfig(n=2), on_epoch_end=lambda m, s: seen.append(m["epoch"]), tag="t")
    assert seen == [1, 2] and r.final == {"tag": "t"} and r.genotype == get_genotype("DARTS_V1")
    with pytest.raises(ConfigError, match="^n:"):
        run_search("toy", _ToyConfig(n=0))
    with pytest.raises(TypeError, match="exactly one of task"):
        Method("bad", "neither", _ToyConfig, ("darts",))
    assert methods.get_method("toy").presets == {}


def test_a_presets_none_survives_the_merge():
    """The one-stage ``small`` preset sets ``train_epochs: null`` (train until ``epochs``); the class default is 600.
    The merge must keep the preset's None (it once fell back to 600, which changed the post-switch LR schedule)."""
    p = argparse.ArgumentParser()
    cli.add_common_args(p, default_out="runs/x")
    args = p.parse_args([])
    base = preset_data(OneStageConfig, "small")
    assert base["train_epochs"] is None and OneStageConfig().train_epochs == 600
    cfg = cli.build_config(OneStageConfig, args, {}, base=base)
    assert cfg.train_epochs is None
    args = p.parse_args(["--set", "train_epochs=3"])
    assert cli.build_config(OneStageConfig, args, {}, base=base).train_epochs == 3
