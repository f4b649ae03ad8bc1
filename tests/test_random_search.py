"""Random search (the baseline): valid, uniformly drawn cells, deterministic per seed, picks checked against an
independent parameter count, bad settings rejected, and it runs through the one runner and registry."""
from __future__ import annotations

import collections
import json
import os
import random

import pytest

from istanas.config import ConfigError
from istanas.methods import METHODS, get_method
from istanas.random_search import RandomSearchConfig, random_search, sample_darts, sample_nb201
from istanas.search import run_search, write_outputs
from spaces.genotype import Genotype, NB201Genotype
from spaces.networks import build_network
from spaces.ops import DARTS_PRIMITIVES, NB201_PRIMITIVES


def _cfg(**kw) -> RandomSearchConfig:
    cfg = RandomSearchConfig(**{"samples": 12, "C": 4, "layers": 3, **kw})
    cfg.validate()
    return cfg


def test_darts_samples_are_valid_cells():
    rng = random.Random(1)
    for _ in range(50):
        g = sample_darts(rng)
        assert isinstance(g, Genotype)
        for cell in ("normal", "reduce"):
            pairs = getattr(g, cell)
            assert len(pairs) == 8 and tuple(getattr(g, f"{cell}_concat")) == (2, 3, 4, 5)
            for j in range(4):
                (op_a, a), (op_b, b) = pairs[2 * j: 2 * j + 2]
                assert a != b and 0 <= a < 2 + j and 0 <= b < 2 + j         # two distinct earlier states
                assert {op_a, op_b} <= set(DARTS_PRIMITIVES) - {"none"}


def test_samples_are_uniform():
    rng = random.Random(0)
    ops = collections.Counter()
    first_inputs = collections.Counter()
    n = 3000
    for _ in range(n):
        g = sample_darts(rng)
        ops.update(op for op, _ in g.normal)
        first_inputs[tuple(sorted(i for _, i in g.normal[6:8]))] += 1     # node 5: 2 of its 5 inputs
    k = len(DARTS_PRIMITIVES) - 1
    for op, c in ops.items():
        assert abs(c / (8 * n) - 1 / k) < 0.02, op
    assert len(first_inputs) == 10                                         # C(5, 2) pairs, each ~ 1/10
    assert all(abs(c / n - 0.1) < 0.025 for c in first_inputs.values())
    nb = collections.Counter(op for _ in range(n) for _, _, op in sample_nb201(rng).edges)
    assert set(nb) == set(NB201_PRIMITIVES)
    assert all(abs(c / (6 * n) - 1 / len(NB201_PRIMITIVES)) < 0.02 for c in nb.values())


def test_same_seed_same_result_and_other_seeds_differ():
    a, b = random_search(_cfg(seed=3)), random_search(_cfg(seed=3))
    assert a.genotype == b.genotype and a.final == b.final
    assert [h["genotype"] for h in a.history] == [h["genotype"] for h in b.history]
    others = {random_search(_cfg(seed=s)).genotype_digest for s in range(4, 8)}
    assert len(others | {a.genotype_digest}) > 1
    # the pick is one of the samples
    assert a.genotype.to_json() == a.history[a.final["picked"]]["genotype"]


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_param_picks_agree_with_an_independent_count(space):
    fewest = random_search(_cfg(space=space, pick="fewest_params", seed=2))
    most = random_search(_cfg(space=space, pick="most_params", seed=2))
    counts = []
    for h in fewest.history:
        net = build_network(h["genotype"], "cifar10", C=4, layers=3, num_classes=10)
        counts.append(sum(p.numel() for n, p in net.named_parameters() if "auxiliary" not in n) / 1e6)
    assert [h["params_m"] for h in fewest.history] == pytest.approx(counts)
    assert fewest.final["params_m"] == pytest.approx(min(counts))
    assert most.final["params_m"] == pytest.approx(max(counts))
    assert fewest.final["picked"] == counts.index(min(counts)) and most.final["picked"] == counts.index(max(counts))
    assert isinstance(fewest.genotype, Genotype if space == "darts" else NB201Genotype)


@pytest.mark.parametrize("over,field", [({"space": "nasbench"}, "space"), ({"pick": "best"}, "pick"),
                                        ({"samples": 0}, "samples"), ({"layers": 2}, "layers"),
                                        ({"device": "cuda"}, "device"), ({"seed": 1.5}, "seed")])
def test_bad_config_is_rejected(over, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        RandomSearchConfig(**over).validate()


def test_runs_through_the_runner_and_registry(tmp_path):
    assert "random" in METHODS and METHODS["random"].spaces == ("darts", "nb201")
    with pytest.raises(ConfigError, match="did you mean 'random'"):
        get_method("randm")
    seen = []
    r = run_search("random", _cfg(samples=5), on_epoch_end=lambda m, s: seen.append(m["sample"]))
    assert seen == [0, 1, 2, 3, 4] and r.method == "random"
    paths = write_outputs(r, str(tmp_path))
    rec = json.load(open(paths["result"]))
    assert rec["genotype_digest"] == r.genotype_digest and rec["final"]["samples"] == 5
    assert os.path.isfile(paths["plot_normal_png"])
    with pytest.raises(ConfigError, match="expected a RandomSearchConfig"):
        run_search("random", get_method("twostage").config_cls())
