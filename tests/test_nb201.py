"""spaces.nb201: arch strings <-> edges <-> table keys, checked against the benchmark's own files when present."""
from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest

from spaces.genotype import NB201Genotype
from spaces.nb201 import (CSV_COLUMNS, NB201_EDGES, TABLE_DATASETS, TABLE_OP_ORDER, arch_str_to_table_key,
                          check_nb201_table, load_nb201_table, make_arch_str, open_nb201_table, parse_arch_nodes,
                          parse_arch_str, table_key_to_arch_str)
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


# ------------------------------------------------------------------------------------------ the benchmark table

_HEADER = ",".join([*CSV_COLUMNS.values(), "ArchitectureString", "UniqueString"])


def test_table_lookup_agrees_with_an_independent_csv_read(shared_file) -> None:
    path = shared_file("nasbench201_full.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    col = {name: header.index(name) for name in header}
    table = open_nb201_table(path)
    assert len(table) == len(rows) == 15625
    rng = np.random.default_rng(0)
    for r in rng.choice(len(rows), 40, replace=False):
        row = rows[r]
        arch = row[col["ArchitectureString"]]
        rec = table.lookup(arch)
        for d, name in zip(TABLE_DATASETS, ("CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs",
                                            "ImageNetTestAccuracy200Epochs")):
            acc = float(row[col[name]])
            assert rec[d] == acc
            lower = sum(float(other[col[name]]) < acc for other in rows)
            assert rec["percentile"][d] == pytest.approx(100.0 * lower / len(rows), abs=1e-12)
    c10 = sorted(float(row[col["CIFAR10TestAccuracy200Epochs"]]) for row in rows)
    best = max(rows, key=lambda row: float(row[col["CIFAR10TestAccuracy200Epochs"]]))
    ties = c10.count(c10[-1])
    assert table.percentile(best[col["ArchitectureString"]]) == pytest.approx(100.0 * (len(rows) - ties) / len(rows))
    assert table.lookup(ARCH)["table_cells"] == 15625


def test_table_json_form_agrees_with_load_nb201_table(shared_file) -> None:
    path = shared_file("zc_nasbench201.json")
    old = load_nb201_table(path, "cifar100")
    table = open_nb201_table(path)
    assert len(table) == 725
    for arch, rec in list(old.items())[:50]:
        assert table.accuracy(arch, "cifar100") == rec["val_accuracy"]


def _write(tmp_path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


@pytest.mark.parametrize("name,text,match", [
    ("empty.csv", "", "is empty"),
    ("cols.csv", "a,b,c\n1,2,3\n", "lacks the column"),
    ("arch.csv", _HEADER + "\n90,70,40,|nope~0|+|none~0|none~1|+|none~0|none~1|none~2|,x\n", "line 2: arch:"),
    ("num.csv", _HEADER + f"\nabc,70,40,{ARCH},x\n", "line 2:"),
    ("pct.csv", _HEADER + f"\n930,70,40,{ARCH},x\n", "not a percentage"),
    ("shape.json", '{"cifar10": {}}', "must map each of"),
    ("key.json", '{"cifar10": {"(9, 9)": {"val_accuracy": 1}}, "cifar100": {}, "ImageNet16-120": {}}', "key:"),
    ("bad.json", '{"cifar10": ', "not valid JSON"),
])
def test_bad_tables_are_one_clear_error(tmp_path, name, text, match) -> None:
    with pytest.raises(ValueError, match="^table: .*" + match):
        open_nb201_table(_write(tmp_path, name, text))


def test_table_check_reads_the_header_only(tmp_path) -> None:
    """check_nb201_table (before a search) refuses a wrong header and a missing file, and reads no accuracy."""
    with pytest.raises(ValueError, match="^table: file not found"):
        check_nb201_table(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="lacks the column"):
        check_nb201_table(_write(tmp_path, "cols.csv", "a,b\n"))
    # a right header over rows that open_nb201_table refuses: the check does not look at them
    path = _write(tmp_path, "rows.csv", _HEADER + "\nabc,70,40,x,y\n")
    check_nb201_table(path)
    with pytest.raises(ValueError, match="line 2"):
        open_nb201_table(path)
    with pytest.raises(KeyError):
        open_nb201_table(_write(tmp_path, "one.csv", _HEADER + f"\n90,70,40,{ARCH},x\n")).accuracy(
            ARCH.replace("nor_conv_3x3~0|+", "none~0|+"))
