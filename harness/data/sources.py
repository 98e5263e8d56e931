"""Where a dataset's images come from: its training pool and its test split, before any transform.

One loader per registry `source`: `sklearn_digits` (embedded, offline), `torchvision` (downloadable with
`--download`, into `setting("data_root")`), `imagefolder` (ImageNet-1k or any `train/<class>/*` +
`val/<class>/*` folder) and `synthetic` (one class object among clutter, sized in patches). A missing or
malformed root raises a `HarnessError` naming the path read, what was expected there and how to get it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from harness.config import setting
from harness.errors import HarnessError
from harness.registry import BackboneEntry, DatasetEntry

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Source:
    """A dataset's training pool (val is carved from it later) and its test split, with labels known up front."""

    pool: Dataset
    pool_labels: np.ndarray
    test: Dataset
    test_labels: np.ndarray
    location: str  # the folder read, or where the images come from


def stratified_split(labels: np.ndarray, fraction: float, seed: int, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted indices: a seeded hold-out of `fraction` with every class in proportion."""
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed,
                                      stratify=labels)
    except ValueError as e:
        raise HarnessError(f"{what}: cannot hold out a stratified {fraction:.0%} of {len(labels)} images ({e}); "
                           "accepted: a fraction that leaves every class at least one image on each side.") from None
    return np.sort(kept), np.sort(held)


def option(dataset: DatasetEntry, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """One field of the entry's `options` table, type-checked; errors name the registry file and field."""
    value = dataset.options.get(key, default)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is ... or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise HarnessError(f"{dataset.source_file}: field '{dataset.name}.options.{key}' is "
                           f"{'missing' if value is ... else repr(value)}; accepted: "
                           f"{' or '.join(k.__name__ for k in kinds)}.")
    return value


def _root_hint(folder: Path) -> str:
    return (f"set HARNESS_DATA_ROOT (or data_root under [paths] in harness.toml) to the folder that holds "
            f"'{folder.name}/'")


def data_root(root: Path | None) -> Path:
    return Path(root).expanduser() if root is not None else setting("data_root")


def load_source(dataset: DatasetEntry, backbone: BackboneEntry, *, download: bool, root: Path | None) -> Source:
    return _LOADERS[dataset.source](dataset, backbone, download, data_root(root))


# ------------------------------------------------------------------------------------------ embedded


class TensorImages(Dataset):
    """Images already in memory as float tensors in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Images `indices` as one (N, C, H, W) tensor, and their labels."""
        return self.images[torch.from_numpy(np.asarray(indices, dtype=np.int64))], self.labels[indices]


def _digits(dataset: DatasetEntry, backbone: BackboneEntry, download: bool, root: Path) -> Source:
    """scikit-learn's embedded 8x8 digits: grey 0..16 -> 3 channels in [0, 1]; test = seeded stratified hold-out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None].expand(-1, 3, -1, -1).contiguous()
    fraction = float(option(dataset, "test_fraction", (float, int)))
    pool, test = stratified_split(labels, fraction, dataset.split_seed,
                                  what=f"dataset '{dataset.name}' (options.test_fraction)")
    return Source(TensorImages(images[pool], labels[pool]), labels[pool], TensorImages(images[test], labels[test]),
                  labels[test], "scikit-learn's embedded digits")


class SyntheticPatches(Dataset):
    """One class object (`object_patches` patches square) at a random patch-aligned spot among clutter patches.

    Known answer for the aggregators: the label lives in one place, so a pooling that attends to it beats one
    that averages it away. Every image is a pure function of (seed, stream, index); the class objects and the
    clutter bank depend on `seed` only, so train and test share them.
    """

    def __init__(self, *, num_images: int, num_classes: int, img_size: int, patch_size: int, object_patches: int,
                 clutter_patterns: int, seed: int, stream: int):
        self.grid, self.patch, self.k = img_size // patch_size, patch_size, object_patches
        self.seed, self.stream = seed, stream
        shared = np.random.default_rng([seed, 0])
        side = object_patches * patch_size
        self.objects = torch.from_numpy(shared.random((num_classes, 3, side, side), dtype=np.float32))
        self.clutter = torch.from_numpy(shared.random((clutter_patterns, 3, patch_size, patch_size), dtype=np.float32))
        self.labels = np.random.default_rng([seed, stream]).permutation(np.arange(num_images) % num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    def _layout(self, i: int) -> tuple[np.ndarray, int, int]:
        """Image i's clutter pattern per cell and its object's top-left cell (row, column)."""
        rng = np.random.default_rng([self.seed, self.stream, 1 + i])
        cells = rng.integers(len(self.clutter), size=(self.grid, self.grid))
        row, col = rng.integers(0, self.grid - self.k + 1, size=2)
        return cells, int(row), int(col)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        (cells, row, col), g, p, k = self._layout(i), self.grid, self.patch, self.k
        image = self.clutter[torch.from_numpy(cells)].permute(2, 0, 3, 1, 4).reshape(3, g * p, g * p).clone()
        image[:, row * p:(row + k) * p, col * p:(col + k) * p] = self.objects[self.labels[i]]
        return image, int(self.labels[i])

    def object_cell(self, i: int) -> tuple[int, int]:
        """(row, column) in patches of image i's object's top-left corner: the known answer."""
        return self._layout(i)[1:]


def _synthetic(dataset: DatasetEntry, backbone: BackboneEntry, download: bool, root: Path) -> Source:
    k = option(dataset, "object_patches", int, 1)
    if backbone.img_size % backbone.patch_size or not 0 < k <= backbone.img_size // backbone.patch_size:
        raise HarnessError(f"{dataset.source_file}: field '{dataset.name}.options.object_patches' is {k} for "
                           f"backbone {backbone.name!r} ({backbone.img_size}px, patch {backbone.patch_size}); "
                           "accepted: 1 to the patches per side, on a backbone whose patches tile the image.")
    common = dict(num_classes=dataset.num_classes, img_size=backbone.img_size, patch_size=backbone.patch_size,
                  object_patches=k, clutter_patterns=option(dataset, "clutter_patterns", int, 16),
                  seed=option(dataset, "seed", int, 0))
    pool = SyntheticPatches(num_images=option(dataset, "num_train", int), stream=1, **common)
    test = SyntheticPatches(num_images=option(dataset, "num_test", int), stream=2, **common)
    return Source(pool, pool.labels, test, test.labels, "generated (synthetic-patch)")


# -------------------------------------------------------------------------------------------- on disk


def _labels_of(dataset: Dataset) -> np.ndarray:
    """Labels of a torchvision dataset without decoding an image (they keep them under one of three names)."""
    for attr in ("targets", "labels", "_labels"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    raise TypeError(f"{type(dataset).__name__} exposes no targets/labels/_labels attribute")


def _torchvision(dataset: DatasetEntry, backbone: BackboneEntry, download: bool, root: Path) -> Source:
    """`options.class` built once per `options.train` table (concatenated into the pool) and once for `test`."""
    import torchvision.datasets

    name = option(dataset, "class", str)
    cls = getattr(torchvision.datasets, name, None)
    if not isinstance(cls, type):
        raise HarnessError(f"{dataset.source_file}: field '{dataset.name}.options.class' is {name!r}; accepted: a "
                           "dataset class of torchvision.datasets, e.g. CIFAR10.")
    folder = root / option(dataset, "folder", str, dataset.name)
    common = option(dataset, "kwargs", dict, {})

    def build(kwargs: dict) -> Dataset:
        try:
            return cls(str(folder), **common, **kwargs, download=download)
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted" for a missing root
            raise HarnessError(
                f"dataset '{dataset.name}': torchvision's {name} found no usable files under {folder} ({e}); "
                f"expected the files {name} downloads there; run with --download to fetch them into {folder}, or "
                f"{_root_hint(folder)}.") from None
        except (ValueError, TypeError) as e:  # a split name or keyword the class does not take
            raise HarnessError(f"{dataset.source_file}: dataset '{dataset.name}': torchvision's {name} rejects "
                               f"options {kwargs} ({e}).") from None
        except OSError as e:
            raise HarnessError(f"dataset '{dataset.name}': reading or downloading {name} into {folder} failed "
                               f"({e}); check the network and the folder, or place the files there by hand.") from None

    train = option(dataset, "train", list)
    if not train or not all(isinstance(kwargs, dict) for kwargs in train):
        raise HarnessError(f"{dataset.source_file}: field '{dataset.name}.options.train' is {train!r}; accepted: a "
                           "non-empty list of tables of keyword arguments, one per official split in the pool.")
    parts = [build(kwargs) for kwargs in train]
    test = build(option(dataset, "test", dict))
    pool = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    return Source(pool, np.concatenate([_labels_of(p) for p in parts]), test, _labels_of(test), str(folder))


class FolderImages(Dataset):
    """(path, label) pairs read with PIL as RGB images."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples
        self.labels = np.array([label for _, label in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        return default_loader(path), label


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _imagefolder(dataset: DatasetEntry, backbone: BackboneEntry, download: bool, root: Path) -> Source:
    """Classes are train's sub-folders (sorted); test must use the same names, so labels agree across splits."""
    from torchvision.datasets.folder import make_dataset

    base = Path(option(dataset, "path", str)) if "path" in dataset.options else root / option(dataset, "folder", str)
    train_dir = base / option(dataset, "train_dir", str, "train")
    test_dir = base / option(dataset, "test_dir", str, "val")
    how = option(dataset, "manual_download", str, "")
    expected = (f"expected {train_dir}/<class>/<image> and {test_dir}/<class>/<image>, one sub-folder per class "
                f"with the same names in both")
    fix = f"{how + ' ' if how else ''}Place the files there, or {_root_hint(base)}"
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise HarnessError(f"dataset '{dataset.name}': {folder} is not a folder; {expected}. {fix}.")
    classes = _class_folders(train_dir)
    if len(classes) != dataset.num_classes:
        raise HarnessError(f"dataset '{dataset.name}': {train_dir} has {len(classes)} class folders, but the entry "
                           f"says num_classes = {dataset.num_classes}; {expected}. {fix}.")
    unknown = sorted(set(_class_folders(test_dir)) - set(classes))
    if unknown:
        raise HarnessError(f"dataset '{dataset.name}': {test_dir} has class folders missing from {train_dir} "
                           f"({', '.join(unknown[:5])}); {expected}.")
    index = {c: i for i, c in enumerate(classes)}
    try:
        pool = make_dataset(str(train_dir), index, extensions=IMAGE_SUFFIXES)
        test = make_dataset(str(test_dir), {c: index[c] for c in _class_folders(test_dir)}, extensions=IMAGE_SUFFIXES)
    except FileNotFoundError as e:
        raise HarnessError(f"dataset '{dataset.name}': {e} (under {base}, image suffixes "
                           f"{', '.join(IMAGE_SUFFIXES)}); {expected}. {fix}.") from None
    train_images, test_images = FolderImages(pool), FolderImages(test)
    return Source(train_images, train_images.labels, test_images, test_images.labels, str(base))


def imagefolder_entry(path: Path, *, name: str | None = None, val_fraction: float = 0.1, split_seed: int = 0,
                      train_dir: str = "train", test_dir: str = "val") -> DatasetEntry:
    """A dataset entry for a folder given on the command line (`train/<class>/*`, `val/<class>/*`)."""
    path = Path(path).expanduser().resolve()
    train = path / train_dir
    if not train.is_dir():
        raise HarnessError(f"{train} is not a folder; expected {path} to hold {train_dir}/<class>/<image> and "
                           f"{test_dir}/<class>/<image>, one sub-folder per class.")
    classes = _class_folders(train)
    if not classes:
        raise HarnessError(f"{train} has no class sub-folders; expected one sub-folder of images per class.")
    if not 0.0 < val_fraction < 1.0:
        raise HarnessError(f"val_fraction is {val_fraction}; accepted: a fraction strictly between 0 and 1.")
    return DatasetEntry(name=name or path.name, source="imagefolder", num_classes=len(classes),
                        val_fraction=val_fraction, split_seed=split_seed,
                        options={"path": str(path), "train_dir": train_dir, "test_dir": test_dir},
                        description=f"image folder {path}", source_file="command line")


_LOADERS: dict[str, Callable[[DatasetEntry, BackboneEntry, bool, Path], Source]] = {
    "sklearn_digits": _digits,
    "torchvision": _torchvision,
    "imagefolder": _imagefolder,
    "synthetic": _synthetic,
}
