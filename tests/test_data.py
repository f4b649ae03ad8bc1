"""Data pipeline: real datasets, splits, batched augmentation, resume-exact randomness, sharding, bad configs."""
from __future__ import annotations

import dataclasses
import io
import os
import zipfile

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from istanas.config import ConfigError, load_config
from istanas.data import (Augment, DataConfig, ImageSource, TensorLoader, augment_batch, cutout_batch, get_loaders,
                          image_batch, load_arrays, search_split, shared_data_dir)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _collect(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------------------------------------------- digits
def test_digits_default_needs_no_arguments():
    from sklearn.datasets import load_digits

    L = get_loaders(DataConfig(), "train", seed=0)
    assert (L.name, L.num_classes, L.in_channels, L.image_size) == ("digits", 10, 3, 16)
    assert L.train_size + L.valid_size == 1797
    # class-stratified 20 % holdout: per class the test count is round(0.2 * class count), checked from sklearn
    counts = np.bincount(load_digits().target, minlength=10)
    x, y = _collect(L.valid)
    assert x.shape == (L.valid_size, 3, 16, 16) and x.dtype == torch.float32
    assert np.array_equal(np.bincount(y.numpy(), minlength=10), np.round(0.2 * counts).astype(int))
    # normalised with the training statistics: test set mean ~ 0, std ~ 1, grey images (3 equal channels)
    assert abs(x.mean().item()) < 0.15 and 0.85 < x.std().item() < 1.15
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert len(L.train) == -(-L.train_size // 64)


def test_digits_read_without_sklearn_equal_load_digits():
    """The bundled-file read (no scikit-learn import) gives exactly what ``sklearn.datasets.load_digits`` gives."""
    from sklearn.datasets import load_digits

    from istanas.data import digits_raw

    images, labels = digits_raw()
    ref = load_digits()
    assert images.shape == (1797, 8, 8) and labels.dtype == np.int64
    assert np.array_equal(images, ref.images) and np.array_equal(labels, ref.target)


def test_digits_images_are_the_real_digits_upscaled():
    from sklearn.datasets import load_digits

    a = load_arrays(DataConfig(image_size=8))  # native size: no resampling, exact values
    ref = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    ref_set = {r.tobytes() for r in ref}
    assert all(img[0].tobytes() in ref_set for img in a.x_test[:50])


def test_image_batch_is_seeded_by_its_seed_alone():
    """TE-NAS's label-free images: the same ``seed`` gives the same batch whatever the global torch RNG state,
    and the batch is ``num`` of the normalised training images (checked against the raw arrays)."""
    cfg = DataConfig(image_size=8)
    torch.manual_seed(1)
    a = image_batch(cfg, 40, seed=3)
    torch.manual_seed(2)
    b = image_batch(cfg, 40, seed=3)
    assert torch.equal(a, b) and a.shape == (40, 3, 8, 8) and a.dtype == torch.float32
    assert not torch.equal(a, image_batch(cfg, 40, seed=4))
    L = get_loaders(DataConfig(image_size=8, limit_train=40), "train", seed=0)  # the same images' statistics
    raw = (a * L.train.std.cpu() + L.train.mean.cpu()).mul(255).round().to(torch.uint8).numpy()
    pool = {img.tobytes() for img in load_arrays(cfg).x_train}
    assert all(r.tobytes() in pool for r in raw)


def test_eval_loader_is_deterministic_and_complete():
    L = get_loaders(DataConfig(eval_batch_size=100), "train", seed=0)
    x1, y1 = _collect(L.valid)
    x2, y2 = _collect(L.valid)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and len(y1) == L.valid_size
    assert len(L.valid) == -(-L.valid_size // 100)


def test_search_split_disjoint_halves():
    cfg = DataConfig(augment=False, train_portion=0.5)
    a = load_arrays(cfg)
    n = len(a.y_train)
    tr, va = search_split(n, 0.5, cfg.split_seed)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == n and len(tr) == n // 2
    L = get_loaders(cfg, "search", seed=0)
    assert (L.train_size, L.valid_size) == (len(tr), len(va))
    # the loaders serve exactly those images (compared as raw pixel multisets, via the normalisation inverse)
    for loader, idx in ((L.train, tr), (L.valid, va)):
        x, y = _collect(loader)
        raw = (x * loader.std.cpu() + loader.mean.cpu()).mul(255).round().to(torch.uint8).numpy()
        got = sorted(r.tobytes() + bytes([int(t)]) for r, t in zip(raw, y))
        want = sorted(r.tobytes() + bytes([int(t)]) for r, t in zip(a.x_train[idx], a.y_train[idx]))
        assert got == want


def test_limits_are_seeded_subsets():
    c = DataConfig(limit_train=100, limit_test=30)
    a1, a2 = load_arrays(c), load_arrays(c)
    assert len(a1.y_train) == 100 and len(a1.y_test) == 30
    assert np.array_equal(a1.x_train, a2.x_train)
    a3 = load_arrays(DataConfig(limit_train=100, limit_test=30, split_seed=1))
    assert not np.array_equal(a1.x_train, a3.x_train)


# ----------------------------------------------------------------------------------------- batched augmentation
def test_augment_batch_is_a_shifted_window_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    p = 2
    out = augment_batch(x, Augment(pad=p, flip=True), g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (p, p), (p, p)))
    offsets, flips = set(), 0
    for b in range(len(x)):
        found = None
        for dy in range(2 * p + 1):
            for dx in range(2 * p + 1):
                win = padded[b, :, dy:dy + 8, dx:dx + 8]
                for f in (False, True):
                    cand = win[:, :, ::-1] if f else win
                    if np.array_equal(cand, out[b].numpy()):
                        found = (dy, dx, f)
        assert found is not None, f"sample {b} is no padded crop"
        offsets.add(found[:2])
        flips += found[2]
    assert len(offsets) > 10 and 10 < flips < 54  # offsets and flips vary across the batch


def test_cutout_zeroes_one_clipped_square():
    g = torch.Generator().manual_seed(1)
    x = torch.ones(200, 2, 16, 16)
    out = cutout_batch(x, 6, g)
    full = 0
    for b in range(len(x)):
        z = (out[b, 0] == 0).numpy()
        assert np.array_equal(z, (out[b, 1] == 0).numpy())  # same square on every channel
        rows, cols = np.flatnonzero(z.any(1)), np.flatnonzero(z.any(0))
        assert len(rows) <= 6 and len(cols) <= 6 and z.sum() == len(rows) * len(cols)
        if len(rows):  # a filled rectangle of contiguous rows and columns
            assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
        full += int(z.sum() == 36)
    assert full > 50  # most centres are away from the border


def test_training_pass_repeats_from_the_same_global_rng_state():
    L = get_loaders(DataConfig(cutout=4, limit_train=300), "train", seed=0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    x1, y1 = _collect(L.train)
    x2, _ = _collect(L.train)  # the next pass differs
    torch.set_rng_state(state)
    x3, y3 = _collect(L.train)
    assert torch.equal(x1, x3) and torch.equal(y1, y3)
    assert not torch.equal(x1, x2)


def test_sharded_train_loaders_are_disjoint_and_equal_length():
    cfg = DataConfig(limit_train=301, augment=False)
    shards = [get_loaders(cfg, "train", seed=5, rank=r, world_size=2) for r in range(2)]
    ys, keys = [], []
    for L in shards:
        L.train.set_epoch(3)
        x, y = _collect(L.train)
        ys.append(len(y))
        keys.append({r.numpy().tobytes() for r in x})
    assert ys[0] == ys[1] == 150
    assert not (keys[0] & keys[1])
    assert len(shards[0].train) == len(shards[1].train)
    # the same epoch gives the same shard; another epoch a different one
    shards[0].train.set_epoch(3)
    assert {r.numpy().tobytes() for r in _collect(shards[0].train)[0]} == keys[0]
    shards[0].train.set_epoch(4)
    assert {r.numpy().tobytes() for r in _collect(shards[0].train)[0]} != keys[0]


def test_single_image_tail_batch_is_dropped_in_training():
    x = torch.zeros(65, 3, 4, 4, dtype=torch.uint8)
    loader = TensorLoader(x, torch.zeros(65, dtype=torch.long), batch_size=32, mean=(0, 0, 0), std=(1, 1, 1),
                          shuffle=True)
    assert len(loader) == 2 and [len(b[1]) for b in loader] == [32, 32]
    ev = TensorLoader(x, torch.zeros(65, dtype=torch.long), batch_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    assert [len(b[1]) for b in ev] == [32, 32, 1]


# ------------------------------------------------------------------------------------------------ folders, zips
def _write_imagefolder(root, splits=("train", "test"), classes=("b_cls", "a_cls"), per_class=6, size=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for ci, c in enumerate(classes):
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(os.path.join(root, split, c, f"{i}.png"))


def test_imagefolder_directory_in_memory_and_streaming(tmp_path, monkeypatch):
    monkeypatch.setenv("ISTANAS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    _write_imagefolder(str(root))
    for in_memory in (True, False):
        cfg = DataConfig(dataset="cifar10", root=str(root), batch_size=4, eval_batch_size=5, image_size=12,
                         in_memory=in_memory)
        L = get_loaders(cfg, "train", seed=0)
        assert L.classes == ("a_cls", "b_cls") and (L.train_size, L.valid_size) == (12, 12)
        x, y = _collect(L.valid)
        assert x.shape == (12, 3, 12, 12)
        assert y.tolist() == [0] * 6 + [1] * 6  # sorted class folders -> labels
        xb, yb = next(iter(L.train))
        assert xb.shape == (4, 3, 12, 12)
    # PNG is lossless: the in-memory test images equal the files (undo the normalisation)
    from PIL import Image

    a = load_arrays(DataConfig(dataset="cifar10", root=str(root), image_size=12))
    ref = np.asarray(Image.open(root / "test" / "a_cls" / "0.png")).transpose(2, 0, 1)
    assert np.array_equal(a.x_test[0], ref)


def test_zip_of_imagefolder_and_single_split_holdout(tmp_path, monkeypatch):
    monkeypatch.setenv("ISTANAS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    _write_imagefolder(str(src / "inner"), splits=("val",), per_class=10)
    zpath = tmp_path / "d.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for dirpath, _, files in os.walk(src):
            for f in files:
                full = os.path.join(dirpath, f)
                zf.write(full, os.path.relpath(full, src))
    cfg = DataConfig(dataset="cifar10", root=str(zpath), image_size=12)
    with pytest.raises(ValueError, match="holdout_fraction"):
        get_loaders(cfg, "train")
    cfg.holdout_fraction = 0.3
    L = get_loaders(cfg, "train")
    assert (L.train_size, L.valid_size) == (14, 6)
    _, y = _collect(L.valid)
    assert np.bincount(y.numpy()).tolist() == [3, 3]  # stratified
    assert os.listdir(tmp_path / "cache")  # the cache went to $ISTANAS_CACHE, not the repository


def test_shared_cifar10_zip(shared_file):
    path = shared_file("cifar10-jpg.zip")
    cfg = DataConfig(dataset="cifar10", root=path, limit_train=200, limit_test=100, cutout=16, batch_size=50)
    L = get_loaders(cfg, "train", seed=0)
    assert L.classes == CIFAR10_CLASSES and (L.train_size, L.valid_size) == (200, 100)
    x, y = next(iter(L.train))
    assert x.shape == (50, 3, 32, 32) and int(y.max()) <= 9
    # independent check of decoding and labels: a loaded test image is bit-identical to a PIL decode of some
    # member of the folder its label names
    from PIL import Image

    a = load_arrays(cfg)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        for i in (0, 57, 99):
            cls = CIFAR10_CLASSES[int(a.y_test[i])]
            members = [n for n in names if n.startswith(f"cifar10/test/{cls}/") and n.endswith(".jpg")]
            target = a.x_test[i].transpose(1, 2, 0)
            assert any(np.array_equal(np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")), target)
                       for n in members)
    # search split on the same slice
    S = get_loaders(cfg, "search", seed=0)
    assert (S.train_size, S.valid_size) == (100, 100)


def test_shared_imagenette_zip_streaming(shared_file):
    path = shared_file("imagenette-val-jpg.zip")
    cfg = DataConfig(dataset="imagenet", root=path, holdout_fraction=0.2, limit_train=24, limit_test=12,
                     image_size=32, batch_size=8, eval_batch_size=12)
    L = get_loaders(cfg, "train", seed=0)
    assert L.num_classes == 10 and all(c.startswith("n") for c in L.classes)
    x, y = next(iter(L.train))
    assert x.shape == (8, 3, 32, 32) and len(L.train) == 3
    xv, yv = next(iter(L.valid))
    assert xv.shape == (12, 3, 32, 32)
    xv2, _ = next(iter(L.valid))
    assert torch.equal(xv, xv2)  # eval transforms are deterministic
    assert ImageSource(path).splits.keys() == {"val"}


# --------------------------------------------------------------------------------- decode: gpu (device decode)
def _write_jpegs(root: str, sizes, quality: int = 90) -> None:
    """Smooth RGB JPEGs (plus one greyscale) of the given (h, w) sizes under ``root/val/n0{c}/`` (2 classes)."""
    from PIL import Image

    for k, (h, w) in enumerate(sizes):
        d = os.path.join(root, "val", f"n0{k % 2}")
        os.makedirs(d, exist_ok=True)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([np.sin(xx / 7 + k) * 120 + 128, np.cos(yy / 5 + k) * 120 + 128, (xx * 3 + yy) % 256], -1)
        pil = Image.fromarray(img.astype(np.uint8))
        (pil.convert("L") if k == 1 else pil).save(os.path.join(d, f"{k}.JPEG"), quality=quality)


def test_gpu_decode_path_matches_pil_for_the_eval_transform(tmp_path, monkeypatch):
    """``decode: gpu`` on the CPU: decode_jpeg gives PIL's pixels exactly (both libjpeg-turbo), and after
    Resize(size / 0.875) + CenterCrop(size) + normalise the batch is within 1 grey level of the PIL path's
    (antialiased bilinear in float vs PIL's fixed-point resampler; nvJPEG on CUDA is not bit-exact either)."""
    from PIL import Image

    from istanas.data import DecodeLoader, decode_images

    monkeypatch.setenv("ISTANAS_CACHE", str(tmp_path / "cache"))
    root = str(tmp_path / "imgs")
    _write_jpegs(root, [(97, 130), (64, 64), (150, 83), (40, 201), (120, 120), (33, 47)])
    base = dict(dataset="imagenet", root=root, holdout_fraction=0.5, image_size=24, eval_batch_size=8)
    pil = get_loaders(DataConfig(**base), "train")
    dev = get_loaders(DataConfig(**base, decode="gpu"), "train", device="cpu")
    assert isinstance(dev.valid, DecodeLoader) and isinstance(dev.train, DecodeLoader)
    (x1, y1), (x2, y2) = next(iter(pil.valid)), next(iter(dev.valid))
    assert torch.equal(y1, y2) and x1.shape == x2.shape == (4, 3, 24, 24)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    levels = ((x1 - x2) * std * 255).abs()
    assert levels.max() <= 1.01 and levels.mean() < 0.5
    for f in sorted(os.listdir(os.path.join(root, "val", "n01"))):  # the decode itself is exact (incl. greyscale)
        path = os.path.join(root, "val", "n01", f)
        got = decode_images([torch.frombuffer(bytearray(open(path, "rb").read()), dtype=torch.uint8)], "cpu")[0]
        ref = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(got.numpy(), ref)


def test_gpu_decode_train_batches_are_augmented_and_resume_exact(tmp_path, monkeypatch):
    from istanas.data import DecodeLoader, StreamLoader, collate_encoded

    monkeypatch.setenv("ISTANAS_CACHE", str(tmp_path / "cache"))
    root = str(tmp_path / "imgs")
    _write_jpegs(root, [(60, 80), (72, 50), (64, 64), (90, 45), (50, 70), (80, 80), (66, 99), (45, 45)])
    cfg = DataConfig(dataset="imagenet", root=root, holdout_fraction=0.25, image_size=16, batch_size=3,
                     decode="gpu")
    L = get_loaders(cfg, "train", device="cpu")
    torch.manual_seed(3)
    a = _collect(L.train)
    torch.manual_seed(3)
    b = _collect(L.train)
    c = _collect(L.train)
    assert a[0].shape == (6, 3, 16, 16) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # in a fixed order, a new pass draws new crops, flips and jitter (the same images, other pixels)
    fixed = DecodeLoader(StreamLoader(L.train.dataset, batch_size=3, shuffle=False, num_workers=0, drop_last=False,
                                      collate_fn=collate_encoded), L.train.transform, "cpu")
    p1, p2 = _collect(fixed), _collect(fixed)
    assert torch.equal(p1[1], p2[1]) and not torch.equal(p1[0], p2[0])
    ev = _collect(get_loaders(dataclasses.replace(cfg, augment=False), "train", device="cpu").train)[0]
    assert not torch.allclose(a[0].sort(0).values, ev.sort(0).values)  # augmentation did something


def test_random_resized_crop_boxes_follow_torchvision_rule():
    from istanas.data import random_resized_crop_boxes

    g = torch.Generator().manual_seed(0)
    hw = torch.tensor([[100, 200], [300, 120], [1000, 10], [10, 1000], [64, 64]] * 40)
    t, l, h, w = random_resized_crop_boxes(hw, g).unbind(1)
    H, W = hw.unbind(1)
    assert bool(((t >= 0) & (l >= 0) & (t + h <= H) & (l + w <= W) & (h > 0) & (w > 0)).all())
    normal = (H * W >= 4096) & (H >= 64) & (W >= 64)
    frac = (h * w).double() / (H * W).double()
    assert bool((frac[normal] >= 0.07).all() and (frac[normal] <= 1.0).all())
    r = w.double() / h.double()
    assert bool(((r[normal] > 0.7) & (r[normal] < 1.4)).all())  # 3/4..4/3 up to rounding
    # no attempt can fit a 1000 x 10 image: torchvision's fallback, the centre crop at aspect 3/4
    thin = torch.tensor([T.RandomResizedCrop.get_params(torch.zeros(1, 1000, 10), (0.08, 1.0), (3 / 4, 4 / 3))])
    assert torch.equal(torch.stack([t, l, h, w], 1)[2], thin[0]) and thin[0].tolist() == [493, 0, 13, 10]


@pytest.mark.parametrize("op", [0, 1, 2, 3])
def test_color_jitter_batch_matches_torchvision_per_image(op):
    import torchvision.transforms.functional as TF

    from istanas.data import color_jitter_batch

    x = torch.rand(3, 3, 9, 11, generator=torch.Generator().manual_seed(op))
    f = torch.tensor([[0.7, 0.8, 1.3, -0.15], [1.2, 1.35, 0.6, 0.05], [1.0, 0.65, 1.0, 0.2]])
    got = color_jitter_batch(x, f, [op])
    ref_fn = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)[op]
    ref = torch.stack([ref_fn(x[i], float(f[i, op])) for i in range(3)])
    assert torch.allclose(got, ref, atol=1e-5)


def test_shared_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ISTANAS_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == str(tmp_path)
    monkeypatch.setenv("ISTANAS_SHARED_DATA", str(tmp_path / "missing"))
    found = shared_data_dir()
    assert found is None or os.path.isdir(found)


# ----------------------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "cifar"}, "did you mean 'cifar10'"),
    ({"batch_size": 0}, "batch_size"),
    ({"eval_batch_size": -1}, "eval_batch_size"),
    ({"train_portion": 1.0}, "train_portion"),
    ({"cutout": -2}, "cutout"),
    ({"limit_train": 0}, "limit_train"),
    ({"holdout_fraction": 1.5}, "holdout_fraction"),
    ({"dataset": "imagenet"}, "root is required"),
    ({"dataset": "imagenet", "root": "/", "in_memory": True}, "in_memory"),
    ({"dataset": "cifar10", "root": "/nonexistent/cifar"}, "does not exist"),
    ({"image_size": 2}, "image_size"),
    ({"decode": "nvjpeg"}, "decode must be one of"),
    ({"decode": "gpu"}, "decode: 'gpu' is for the streamed ImageNet"),
])
def test_bad_data_configs_are_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig(**kwargs).validate()


def test_bad_loader_arguments():
    with pytest.raises(ValueError, match="split"):
        get_loaders(DataConfig(), "valid")
    with pytest.raises(ValueError, match="rank"):
        get_loaders(DataConfig(), "train", rank=2, world_size=2)
    with pytest.raises(ValueError, match="train_portion"):
        get_loaders(DataConfig(limit_train=1), "search")


def test_yaml_config_with_unknown_key(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("dataset: digits\nbatch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(DataConfig, p)
    p.write_text("dataset: digits\nbatch_size: 3\n")
    assert load_config(DataConfig, p).batch_size == 3
