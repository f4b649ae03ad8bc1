"""benchmarks/gpu_data.py: the class-stratified CIFAR-10 subset that travels to the device, read back by the
project's own loader (ImageSource), and its refusals."""
from __future__ import annotations

import importlib
import io
import os
import sys
import zipfile
from collections import Counter

import pytest
from PIL import Image

from istanas.data import ImageSource

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def gpu_data():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module("gpu_data")


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, format="JPEG")
    return buf.getvalue()


def _shared(tmp_path, per_class=(7, 5, 6), test_per_class=3) -> str:
    """A shared folder: cifar10-jpg.zip of 3 classes (unequal sizes) and a stand-in table."""
    shared = tmp_path / "shared"
    shared.mkdir()
    with zipfile.ZipFile(shared / "cifar10-jpg.zip", "w") as z:
        z.writestr("cifar10/", b"")
        for c, n in zip(("cat", "dog", "frog"), per_class):
            for i in range(n):
                z.writestr(f"cifar10/train/{c}/{i:04d}.jpg", _jpeg(10 * i))
            for i in range(test_per_class):
                z.writestr(f"cifar10/test/{c}/{i:04d}.jpg", _jpeg(5 * i))
    (shared / "nasbench201_full.csv").write_text("a,b\n1,2\n")
    return str(shared)


def test_subset_is_stratified_byte_identical_and_readable(tmp_path, gpu_data):
    shared = _shared(tmp_path)
    out = tmp_path / "gd"
    assert gpu_data.main(["--shared", shared, "--out", str(out), "--train", "11", "--test", "3"]) == 0
    src = zipfile.ZipFile(os.path.join(shared, "cifar10-jpg.zip"))
    dst = zipfile.ZipFile(out / "cifar10-jpg.zip")
    names = dst.namelist()
    train = [n for n in names if n.split("/")[1] == "train"]
    # 11 over 3 classes: 4 / 4 / 3 (the first classes in sorted order get the remainder)
    assert Counter(n.split("/")[2] for n in train) == {"cat": 4, "dog": 4, "frog": 3}
    assert Counter(n.split("/")[2] for n in names if n.split("/")[1] == "test") == {"cat": 1, "dog": 1, "frog": 1}
    assert len(set(names)) == len(names) == 14
    for n in names:  # the JPEG bytes are copied, not re-encoded
        assert dst.read(n) == src.read(n)
    source = ImageSource(str(out / "cifar10-jpg.zip"))
    assert source.classes == ["cat", "dog", "frog"]
    assert len(source.splits["train"]) == 11 and len(source.splits["test"]) == 3
    assert (out / "nasbench201_full.csv").read_text() == "a,b\n1,2\n"
    # the same seed draws the same members; another seed others
    assert gpu_data.stratified_members(src.namelist(), "train", 11, 0) == sorted(train)
    assert gpu_data.stratified_members(src.namelist(), "train", 11, 1) != sorted(train)


def test_refusals(tmp_path, gpu_data, capsys):
    shared = _shared(tmp_path)
    out = str(tmp_path / "gd")
    assert gpu_data.main(["--shared", shared, "--out", out, "--train", "19"]) == 2   # only 18 training images
    assert "asked for 19 train images, the zip has 18" in capsys.readouterr().err
    assert gpu_data.main(["--shared", shared, "--out", out, "--train", "17", "--test", "0"]) == 2  # 6 / 6 / 5: dog has 5
    assert "class 'dog' has 5 train images, 6 asked" in capsys.readouterr().err
    assert gpu_data.main(["--shared", str(tmp_path / "none"), "--out", out]) == 2
    assert "need cifar10-jpg.zip and nasbench201_full.csv" in capsys.readouterr().err
    assert gpu_data.main(["--shared", shared, "--out", out, "--train", "3", "--test", "0", "--max-mib",
                          "0.000001"]) == 1
    assert "over --max-mib" in capsys.readouterr().err
