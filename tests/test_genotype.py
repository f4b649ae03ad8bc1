"""Genotypes: JSON / arch-string round trips, validation of malformed files, the registry, load_genotype, plots."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re

import pytest

from spaces.genotype import Genotype, NB201Genotype
from spaces.registry import PUBLISHED, get_genotype, list_genotypes, load_genotype, register_genotype

# The DARTS_V2 genotype written out by hand (from the DARTS paper's released genotypes.py, as transcribed in
# the reference notes), independent of spaces.registry.
DARTS_V2_TEXT = {
    "normal": [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
               ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
               ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
}
GOOD = {"space": "darts", "normal": [list(p) for p in DARTS_V2_TEXT["normal"]], "normal_concat": [2, 3, 4, 5],
        "reduce": [list(p) for p in DARTS_V2_TEXT["reduce"]], "reduce_concat": [2, 3, 4, 5]}
NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_json_round_trip_of_every_registered_genotype(name):
    g = get_genotype(name)
    text = g.to_json()
    # canonical form: sorted keys, no whitespace, and the digest is the sha256 of exactly that text
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert g.digest() == hashlib.sha256(text.encode()).hexdigest()[:12]
    back = type(g).from_json(text)
    assert back == g and hash(back) == hash(g) and back.digest() == g.digest()
    assert load_genotype(text) == g and load_genotype(g.to_dict()) == g
    assert json.loads(text) == json.loads(json.dumps(PUBLISHED[name]))  # registry data == its parsed form
    assert load_genotype(g.to_json(indent=2)) == g


def test_registry_values_match_the_published_text():
    g = get_genotype("DARTS_V2")
    assert g.normal == tuple(DARTS_V2_TEXT["normal"]) and g.reduce == tuple(DARTS_V2_TEXT["reduce"])
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    assert get_genotype("DARTS") is get_genotype("DARTS_V2")  # alias
    # ISTA_onestage normal, node 4 = avg_pool_3x3(node 3) + sep_conv_3x3(c_{k-1})  (istanas.md Sec. 5)
    assert get_genotype("ISTA_onestage").normal[4:6] == (("avg_pool_3x3", 3), ("sep_conv_3x3", 1))
    names = list_genotypes()
    for n in ("DARTS", "DARTS_V1", "DARTS_V2", "PC_DARTS", "ISTA_twostage", "ISTA_onestage", "ISTA_ImageNet"):
        assert n in names
    with pytest.raises(KeyError, match="ISTA_twostage"):  # the message lists the known names
        get_genotype("NO_SUCH_NET")


def test_register_genotype(monkeypatch):
    import spaces.registry as reg

    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))  # leave the process-wide registry as it was
    monkeypatch.setattr(reg, "_ALIASES", dict(reg._ALIASES))
    g = Genotype.from_dict({**GOOD, "normal_concat": [2, 3, 5]})
    assert register_genotype("test_custom_concat", g) == g
    assert get_genotype("test_custom_concat") == g and "test_custom_concat" in list_genotypes()
    assert load_genotype("test_custom_concat") == g
    register_genotype("test_custom_concat", g.to_json())  # same genotype again: accepted
    with pytest.raises(ValueError, match="^name: .*already registered"):
        register_genotype("test_custom_concat", "DARTS_V1")
    register_genotype("test_custom_concat", "DARTS_V1", overwrite=True)
    assert get_genotype("test_custom_concat") == get_genotype("DARTS_V1")
    with pytest.raises(ValueError, match="^name:"):
        register_genotype("", g)


def test_nb201_arch_string_round_trip():
    g = NB201Genotype.from_arch_str(NB201_ARCH)
    assert g.to_arch_str() == NB201_ARCH
    assert g.nodes == ((("nor_conv_3x3", 0),), (("nor_conv_3x3", 0), ("avg_pool_3x3", 1)),
                       (("skip_connect", 0), ("nor_conv_1x1", 1), ("none", 2)))
    assert [(i, j) for i, j, _ in g.edges] == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    assert json.loads(g.to_json()) == {"space": "nb201", "arch": NB201_ARCH}
    assert NB201Genotype.from_json(g.to_json()) == g
    assert load_genotype(NB201_ARCH) == g and load_genotype(g.to_json()) == g
    assert load_genotype(f"  {NB201_ARCH}\n") == g
    assert NB201_ARCH in str(g)


def test_darts_str_is_readable():
    s = str(get_genotype("DARTS_V2"))
    assert "node 5 = skip_connect(c_{k-2}) + dil_conv_3x3(node 2)" in s and "reduce cell" in s


def test_load_genotype_from_name_file_and_text(tmp_path):
    ref = Genotype(normal=DARTS_V2_TEXT["normal"], normal_concat=[2, 3, 4, 5], reduce=DARTS_V2_TEXT["reduce"],
                   reduce_concat=(2, 3, 4, 5))
    assert load_genotype("DARTS_V2") == ref
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GOOD, indent=1))
    assert load_genotype(str(path)) == ref and load_genotype(path) == ref
    assert load_genotype(json.dumps(GOOD)) == ref
    no_space = {k: v for k, v in GOOD.items() if k != "space"}  # "space" is optional
    assert load_genotype(json.dumps(no_space)) == ref
    nb = tmp_path / "nb.json"
    nb.write_text(json.dumps({"space": "nb201", "arch": NB201_ARCH}))
    assert load_genotype(str(nb)).to_arch_str() == NB201_ARCH
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*invalid JSON"):
        load_genotype(str(bad))
    with pytest.raises(ValueError, match="^genotype: 'nothing_like_this'"):
        load_genotype("nothing_like_this")


def _set(path: str, value):
    """A copy of GOOD with the item at ``path`` ('normal.3.0', 'space', ...) replaced (or deleted if DELETE)."""
    d = copy.deepcopy(GOOD)
    keys = path.split(".")
    obj = d
    for k in keys[:-1]:
        obj = obj[int(k)] if isinstance(obj, list) else obj[k]
    last = int(keys[-1]) if isinstance(obj, list) else keys[-1]
    if value is DELETE:
        del obj[last]
    else:
        obj[last] = value
    return json.dumps(d)


DELETE = object()

MALFORMED = [
    # (label, JSON text, expected message start)
    ("unknown op", _set("normal.3.0", "sep_conv_9x9"), r"normal[3]: unknown op 'sep_conv_9x9'"),
    ("'none' in a DARTS cell", _set("reduce.0.0", "none"), r"reduce[0]: unknown op 'none'"),
    ("input index too large", _set("normal.1.1", 2), r"normal[1]: input index 2 out of range"),
    ("input index negative", _set("reduce.6.1", -1), r"reduce[6]: input index -1 out of range"),
    ("odd number of pairs", json.dumps({**GOOD, "normal": GOOD["normal"][:7]}), r"normal: 7 (op, input) pairs"),
    ("no pairs", json.dumps({**GOOD, "reduce": []}), r"reduce: 0 (op, input) pairs"),
    ("cell not a list", json.dumps({**GOOD, "normal": "sep_conv_3x3"}), r"normal: expected a list"),
    ("pair of 3 items", _set("reduce.2", ["skip_connect", 2, 0]), r"reduce[2]: expected an [op, input] pair"),
    ("pair not a list", _set("normal.0", "sep_conv_3x3"), r"normal[0]: expected an [op, input] pair"),
    ("float index", _set("reduce.4", ["max_pool_3x3", 0.0]), r"reduce[4]: input index must be an int"),
    ("string index", _set("normal.5", ["skip_connect", "0"]), r"normal[5]: input index must be an int"),
    ("bool index", _set("normal.0", ["sep_conv_3x3", False]), r"normal[0]: input index must be an int"),
    ("op not a string", _set("normal.2", [3, 0]), r"normal[2]: op must be a string"),
    ("missing key", _set("reduce_concat", DELETE), r"reduce_concat: missing key"),
    ("extra key", json.dumps({**GOOD, "genome": 1}), r"genome: unexpected key"),
    ("concat out of range", _set("normal_concat.3", 6), r"normal_concat[3]: node 6 out of range"),
    ("concat names an input", _set("reduce_concat.0", 1), r"reduce_concat[0]: node 1 out of range"),
    ("concat duplicate", json.dumps({**GOOD, "normal_concat": [2, 3, 3]}), r"normal_concat[2]: node 3 listed twice"),
    ("concat empty", json.dumps({**GOOD, "reduce_concat": []}), r"reduce_concat: empty"),
    ("concat not ints", json.dumps({**GOOD, "normal_concat": "2345"}), r"normal_concat: expected a list"),
    ("unknown space", json.dumps({**GOOD, "space": "nasnet"}), r"space: unknown space 'nasnet'"),
    ("invalid JSON", json.dumps(GOOD)[:-5], r"genotype JSON: invalid JSON"),
    ("not an object", json.dumps([GOOD]), r"genotype: expected a JSON object"),
    ("nb201: 2 nodes", json.dumps({"space": "nb201", "arch": "|nor_conv_3x3~0|+|none~0|none~1|"}),
     r"arch: 2 nodes separated by '+'"),
    ("nb201: op~idx malformed", json.dumps({"space": "nb201", "arch": NB201_ARCH.replace("none~2", "none-2")}),
     r"arch: node 3 entry 'none-2' is not 'op~index'"),
    ("nb201: wrong input index", json.dumps({"space": "nb201", "arch": NB201_ARCH.replace("avg_pool_3x3~1",
                                                                                        "avg_pool_3x3~0")}),
     r"arch: node 2 entry 'avg_pool_3x3~0': input index 0, expected 1"),
    ("nb201: unknown op", json.dumps({"space": "nb201", "arch": NB201_ARCH.replace("nor_conv_1x1", "conv_7x7")}),
     r"arch: node 3 entry 'conv_7x7~1': unknown op"),
    ("nb201: entries per node", json.dumps({"space": "nb201", "arch": "|nor_conv_3x3~0|+|none~0|+|a~0|b~1|c~2|"}),
     r"arch: node 2 '|none~0|' has 1 entries"),
    ("nb201: missing arch", json.dumps({"space": "nb201"}), r"arch: missing key"),
    ("nb201: arch not a string", json.dumps({"space": "nb201", "arch": 5}), r"arch: expected a NAS-Bench-201"),
]


@pytest.mark.parametrize("label,text,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_genotype_rejected_naming_the_field(tmp_path, label, text, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        load_genotype(text)
    # the same through a file (the file name is prefixed only for JSON syntax errors)
    path = tmp_path / "g.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message.split(":")[0]) if "JSON" not in label else "invalid JSON"):
        load_genotype(str(path))


def test_constructor_validates_and_normalises():
    g = Genotype(normal=[list(p) for p in DARTS_V2_TEXT["normal"]], normal_concat=[2, 3, 4, 5],
                 reduce=DARTS_V2_TEXT["reduce"], reduce_concat=range(2, 6))
    assert isinstance(g.normal, tuple) and all(isinstance(p, tuple) for p in g.normal)
    assert g.normal_concat == (2, 3, 4, 5) and g.reduce_concat == (2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"^normal\[7\]: input index 5 out of range; node 5 may take inputs 0..4"):
        Genotype(normal=DARTS_V2_TEXT["normal"][:7] + [("sep_conv_3x3", 5)], normal_concat=(2, 3),
                 reduce=DARTS_V2_TEXT["reduce"], reduce_concat=(2, 3))
    with pytest.raises(ValueError, match=r"^nodes: 2 nodes"):
        NB201Genotype(nodes=((("none", 0),), (("none", 0), ("none", 1))))
    # a 3-node DARTS cell is a valid genotype (concat limited to its nodes 2..4)
    small = Genotype(normal=DARTS_V2_TEXT["normal"][:6], normal_concat=(2, 3, 4), reduce=DARTS_V2_TEXT["reduce"],
                     reduce_concat=(2, 3, 4, 5))
    assert small.steps("normal") == 3 and small.steps("reduce") == 4
    with pytest.raises(ValueError, match=r"^normal_concat\[0\]: node 5 out of range"):
        Genotype(normal=DARTS_V2_TEXT["normal"][:6], normal_concat=(5,), reduce=DARTS_V2_TEXT["reduce"],
                 reduce_concat=(2,))


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_cell_writes_the_file_atomically(tmp_path, suffix):
    from spaces.plot import plot_cell, plot_genotype

    path = tmp_path / f"cell{suffix}"
    assert plot_cell("ISTA_onestage", cell="reduce", path=str(path)) == str(path)
    data = path.read_bytes()
    if suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    else:
        text = data.decode()
        assert "<svg" in text
    assert sorted(os.listdir(tmp_path)) == [f"cell{suffix}"]  # no temporary file left behind
    out = plot_genotype(NB201_ARCH, str(tmp_path / "sub"), stem="nb")
    assert [os.path.basename(p) for p in out] == ["nb_cell.png"] and os.path.getsize(out[0]) > 1000
    with pytest.raises(ValueError, match="^path:"):
        plot_cell("DARTS_V2", path=str(tmp_path / "cell.jpg"))
    with pytest.raises(ValueError, match="^cell:"):
        plot_cell("DARTS_V2", cell="both", path=str(path))


def test_import_spaces_does_not_load_matplotlib():
    import subprocess
    import sys

    code = "import sys, spaces; print('matplotlib' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------ s ops per node (version 2)
THREE = {"normal": [[["sep_conv_3x3", 0], ["skip_connect", 1], ["sep_conv_3x3", 1]],
                    [["dil_conv_3x3", 2], ["max_pool_3x3", 0], ["dil_conv_3x3", 2 - 2]],
                    [["sep_conv_5x5", 3], ["avg_pool_3x3", 1], ["skip_connect", 2]],
                    [["dil_conv_5x5", 4], ["sep_conv_3x3", 0], ["skip_connect", 3]]],
         "reduce": [[["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 1]],
                    [["skip_connect", 2], ["avg_pool_3x3", 0], ["sep_conv_5x5", 1]],
                    [["max_pool_3x3", 0], ["skip_connect", 3], ["dil_conv_5x5", 2]],
                    [["skip_connect", 2], ["max_pool_3x3", 1], ["sep_conv_3x3", 4]]],
         "normal_concat": [2, 3, 4, 5], "reduce_concat": [2, 3, 4, 5], "space": "darts", "version": 2}


def test_version_2_holds_s_ops_per_node_and_round_trips(tmp_path):
    g = load_genotype(json.dumps(THREE))
    assert g.ops_per_node == 3 and g.steps("normal") == g.steps("reduce") == 4
    flat = [tuple(p) for node in THREE["normal"] for p in node]
    assert g.normal == tuple(flat) and g.nodes("normal")[3] == tuple(tuple(p) for p in THREE["normal"][3])
    assert json.loads(g.to_json()) == THREE                      # written in version 2, per-node lists
    path = tmp_path / "g3.json"
    path.write_text(g.to_json(indent=2))
    assert load_genotype(str(path)) == g and load_genotype(str(path)).digest() == g.digest()
    assert "node 5 = dil_conv_5x5(node 4) + sep_conv_3x3(c_{k-2}) + skip_connect(node 3)" in str(g)
    # s = 1
    one = {**THREE, "normal": [n[:1] for n in THREE["normal"]], "reduce": [n[:1] for n in THREE["reduce"]]}
    g1 = load_genotype(json.dumps(one))
    assert g1.ops_per_node == 1 and g1.normal == (("sep_conv_3x3", 0), ("dil_conv_3x3", 2), ("sep_conv_5x5", 3),
                                                  ("dil_conv_5x5", 4))
    assert json.loads(g1.to_json()) == one
    # a flat pair list with 3 ops per node goes through the constructor; version 1 cannot hold it
    assert Genotype(normal=flat, normal_concat=(2, 3, 4, 5), reduce=g.reduce, reduce_concat=(2, 3, 4, 5),
                    ops_per_node=3) == g
    with pytest.raises(ValueError, match="^version: version 1 holds 2 ops per node"):
        g.to_dict(version=1)


@pytest.mark.parametrize("name", sorted(n for n, d in PUBLISHED.items() if d["space"] == "darts"))
def test_two_op_files_read_unchanged_and_version_2_reads_back_the_same(name):
    """Every 2-op file (version 1, no version key) reads as before with the same digest; its version-2 form reads
    back to the same genotype; a 2-op genotype is still written in version 1 (digests of s = 2 searches unchanged)."""
    g = get_genotype(name)
    v1 = PUBLISHED[name]
    assert g.ops_per_node == 2 and json.loads(g.to_json()) == v1 and "version" not in json.loads(g.to_json())
    digest_v1 = hashlib.sha256(json.dumps(v1, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    assert g.digest() == digest_v1
    v2 = g.to_dict(version=2)
    assert v2["version"] == 2 and v2["normal"][1] == [list(p) for p in v1["normal"][2:4]]
    back = load_genotype(json.dumps(v2))
    assert back == g and back.digest() == g.digest()
    assert load_genotype(json.dumps({**v1, "version": 1})) == g


MALFORMED_V2 = [
    ("unequal nodes", {**THREE, "normal": THREE["normal"][:3] + [THREE["normal"][3][:2]]},
     "normal[3]: 2 ops, but node 2 has 3"),
    ("cells differ in s", {**THREE, "reduce": [n[:2] for n in THREE["reduce"]]},
     "reduce: 2 ops per node, but the normal cell has 3"),
    ("input out of range", {**THREE, "normal": [THREE["normal"][0], [["skip_connect", 3]] + THREE["normal"][1][1:]]
                                     + THREE["normal"][2:]}, "normal[1][0]: input index 3 out of range; node 3"),
    ("unknown op", {**THREE, "reduce": [[["conv_9x9", 0]] + THREE["reduce"][0][1:]] + THREE["reduce"][1:]},
     "reduce[0][0]: unknown op 'conv_9x9'"),
    ("flat list in version 2", {**THREE, "normal": [p for n in THREE["normal"] for p in n]},
     "normal[0]: expected a non-empty list of [op, input] pairs"),
    ("empty node", {**THREE, "normal": [[]] + THREE["normal"][1:]}, "normal[0]: expected a non-empty list"),
    ("no nodes", {**THREE, "normal": []}, "normal: no nodes"),
    ("unknown version", {**THREE, "version": 3}, "version: unknown genotype format version 3"),
    ("version 1 with nested lists", {**THREE, "version": 1}, "normal[0]: expected an [op, input] pair of 2 items"),
]


@pytest.mark.parametrize("label,d,message", MALFORMED_V2, ids=[m[0] for m in MALFORMED_V2])
def test_malformed_version_2_rejected_naming_the_field(label, d, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        load_genotype(json.dumps(d))


def test_ops_per_node_validated():
    with pytest.raises(ValueError, match=r"^normal: 8 \(op, input\) pairs; expected 3 per intermediate node"):
        Genotype(normal=DARTS_V2_TEXT["normal"], normal_concat=(2, 3), reduce=DARTS_V2_TEXT["reduce"][:6],
                 reduce_concat=(2, 3), ops_per_node=3)
    with pytest.raises(ValueError, match="^ops_per_node: expected an int >= 1"):
        Genotype(normal=DARTS_V2_TEXT["normal"], normal_concat=(2, 3), reduce=DARTS_V2_TEXT["reduce"],
                 reduce_concat=(2, 3), ops_per_node=0)


@pytest.mark.parametrize("s", [1, 3])
def test_plot_draws_every_op_of_an_s_op_genotype(tmp_path, s):
    pytest.importorskip("matplotlib")
    from spaces.plot import _graph

    d = {**THREE, "normal": [n[:s] for n in THREE["normal"]], "reduce": [n[:s] for n in THREE["reduce"]]}
    g = load_genotype(json.dumps(d))
    nodes, edges = _graph(g, "normal")
    op_edges = [e for e in edges if e[1] != "out"]
    assert len(op_edges) == 4 * s
    assert sorted((dst, op) for _, dst, op in op_edges) == sorted((2 + j // s, op) for j, (op, _) in
                                                                   enumerate(g.normal))
    from spaces.plot import plot_genotype

    paths = plot_genotype(g, str(tmp_path), fmt="svg")
    assert all(os.path.getsize(p) > 0 for p in paths)
