"""spaces.nb201: arch strings <-> edges <-> table keys, checked against the benchmark's own files when present."""
from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest

from spaces.genotype import NB201Genotype
from spaces.nb201 import (NB201_EDGES, TABLE_OP_ORDER, arch_str_to_table_key, load_nb201_table, make_arch_str,
                          parse_arch_nodes, parse_arch_str, table_key_to_arch_str)
from spaces.ops import NB201_PRIMITIVES

ARCH = "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def _full_table(shared_file) -> dict[str, float]:
    """{arch string: CIFAR-10 200-epoch test accuracy} of nasbench201_full.csv (skipped when absent)."""
    with open(shared_file("nasbench201_full.csv"), newline="", encoding="utf-8") as f:
        return {row["ArchitectureString"]: float(row["CIFAR10TestAccuracy200Epochs"]) for row in csv.DictReader(f)}


def test_parse_and_make_by_hand() -> None:
    assert parse_arch_str(ARCH) == [("nor_conv_3x3", 0, 1), ("none", 0, 2), ("avg_pool_3x3", 1, 2),
                                    ("skip_connect", 0, 3), ("nor_conv_1x1", 1, 3), ("nor_conv_3x3", 2, 3)]
    assert [(i, j) for _, i, j in parse_arch_str(ARCH)] == list(NB201_EDGES)
    assert parse_arch_nodes(ARCH)[1] == [("none", 0), ("avg_pool_3x3", 1)]
    assert make_arch_str([op for op, _, _ in parse_arch_str(ARCH)]) == ARCH
    # key order (0->1, 0->2, 0->3, 1->2, 1->3, 2->3) with ops (skip, none, 3x3, 1x1, pool), written by hand
    assert arch_str_to_table_key(ARCH) == "(2, 1, 0, 4, 3, 2)"
    assert table_key_to_arch_str("(2, 1, 0, 4, 3, 2)") == ARCH
    with pytest.raises(ValueError, match="^arch: 2 nodes"):
        parse_arch_str("|nor_conv_3x3~0|+|none~0|none~1|")
    with pytest.raises(ValueError, match="^ops:"):
        make_arch_str(["none"] * 5)
    with pytest.raises(ValueError, match="^key:"):
        table_key_to_arch_str("(0, 1, 2)")


def test_all_cells_round_trip() -> None:
    """All 5^6 cells: arch string -> edges -> arch string, -> table key -> arch string, -> NB201Genotype."""
    seen_keys = set()
    for ops in itertools.product(NB201_PRIMITIVES, repeat=len(NB201_EDGES)):
        arch = make_arch_str(ops)
        assert [op for op, _, _ in parse_arch_str(arch)] == list(ops)
        key = arch_str_to_table_key(arch)
        assert table_key_to_arch_str(key) == arch
        seen_keys.add(key)
    assert len(seen_keys) == len(TABLE_OP_ORDER) ** 6
    assert NB201Genotype.from_arch_str(ARCH).to_arch_str() == ARCH


def test_round_trips_against_the_full_table(shared_file) -> None:
    full = _full_table(shared_file)
    assert len(full) == 15625
    for arch in full:
        assert make_arch_str([op for op, _, _ in parse_arch_str(arch)]) == arch
        assert NB201Genotype.from_arch_str(arch).to_arch_str() == arch
        assert table_key_to_arch_str(arch_str_to_table_key(arch)) == arch


def test_zero_cost_table_keys_map_onto_the_full_table(shared_file) -> None:
    """Physical check of the key mapping: the 725 zc_nasbench201.json cells, read through load_nb201_table, are
    cells of the full table and their validation accuracies rank like the full table's test accuracies."""
    full = _full_table(shared_file)
    zc = load_nb201_table(shared_file("zc_nasbench201.json"), "cifar10")
    with open(shared_file("zc_nasbench201.json"), encoding="utf-8") as f:
        assert len(zc) == len(json.load(f)["cifar10"]) == 725
    assert set(zc) <= set(full)
    archs = sorted(zc)
    a = np.argsort(np.argsort([zc[x]["val_accuracy"] for x in archs]))
    b = np.argsort(np.argsort([full[x] for x in archs]))
    assert np.corrcoef(a, b)[0, 1] > 0.9
