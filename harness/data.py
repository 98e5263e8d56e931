"""Datasets, their train / val / test splits, and the backbone's preprocessing.

Every choice (learning rate, weight decay, head) is selected on `val`, a fixed, seeded, stratified hold-out
carved from the training pool and recorded by its seed and size; the reported number is `test` (ImageNet's
official validation set). Datasets that ship an official val split (Flowers-102, DTD, FGVC-Aircraft) fold it
into the training pool and carve the same kind of hold-out from train+val, so one rule holds for every
dataset and the scarce per-class images of those sets all serve either training or selection.

Sources: `sklearn_digits` (embedded, offline, for the demo), `torchvision` (downloadable sets),
`imagefolder` (ImageNet-1k or any `train/<class>/*`, `val/<class>/*` folder) and `synthetic` (one object
among clutter, for the aggregators' known-answer tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from harness.config import setting
from harness.errors import HarnessError
from harness.registry import BackboneEntry, DatasetEntry

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Splits:
    """The three splits of one dataset, transformed for one backbone."""

    train: Dataset  # items: (image float tensor (3, H, W) normalised for the backbone, label int)
    val: Dataset  # seeded, stratified hold-out carved from the training pool
    test: Dataset  # the reported split
    num_classes: int
    split_seed: int

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class LabelledView(Dataset):
    """Items `indices` of `base`, each image passed through `transform`; labels are known without decoding."""

    def __init__(self, base: Dataset, indices: np.ndarray, labels: np.ndarray, transform: Callable):
        self.base, self.indices, self.labels, self.transform = base, indices, labels, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[int(self.indices[i])]
        if isinstance(image, Image.Image) and image.mode != "RGB":
            image = image.convert("RGB")
        return self.transform(image), int(label)


# ------------------------------------------------------------------------------------------- transforms


def _crop_pct(dataset: DatasetEntry, backbone: BackboneEntry) -> float:
    """Tensor sources (digits, synthetic) are resized whole: their images have no border to crop away."""
    return 1.0 if dataset.source in ("sklearn_digits", "synthetic") else backbone.crop_pct


def transform_key(dataset: DatasetEntry, backbone: BackboneEntry) -> str:
    """The eval transform as a string: part of the token cache key, so a preprocessing change never hits."""
    crop_pct = _crop_pct(dataset, backbone)
    return (f"resize={math.floor(backbone.img_size / crop_pct)},crop={backbone.img_size},"
            f"interp={backbone.interpolation},mean={list(backbone.mean)},std={list(backbone.std)}")


def build_transform(dataset: DatasetEntry, backbone: BackboneEntry, *, augment: bool) -> v2.Compose:
    """Eval: resize the short side to img_size / crop_pct, centre-crop img_size (timm's eval convention).

    Augment (online protocol, train split only): RandomResizedCrop(img_size) + horizontal flip, as in the MAE
    and Beyond-[cls] linear-probe recipes. Both end in the backbone's mean/std normalisation.
    """
    interp = InterpolationMode.BICUBIC if backbone.interpolation == "bicubic" else InterpolationMode.BILINEAR
    size, crop_pct = backbone.img_size, _crop_pct(dataset, backbone)
    if augment:
        geometry = [v2.RandomResizedCrop(size, interpolation=interp, antialias=True), v2.RandomHorizontalFlip()]
    elif crop_pct == 1.0:
        geometry = [v2.Resize((size, size), interpolation=interp, antialias=True)]
    else:
        geometry = [v2.Resize(math.floor(size / crop_pct), interpolation=interp, antialias=True), v2.CenterCrop(size)]
    return v2.Compose([v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(backbone.mean), list(backbone.std)), v2.ToPureTensor()])


# --------------------------------------------------------------------------------------------- splits


def stratified_split(labels: np.ndarray, fraction: float, seed: int, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices: a seeded hold-out of `fraction` with every class in proportion."""
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed,
                                      stratify=labels)
    except ValueError as e:
        raise HarnessError(f"{what}: cannot hold out a stratified {fraction:.0%} of {len(labels)} images ({e}); "
                           "accepted: a fraction that leaves every class at least one image on each side.") from None
    return np.sort(kept), np.sort(held)


def load_splits(dataset: DatasetEntry, backbone: BackboneEntry, *, augment: bool = False, download: bool = False,
                root: Path | None = None) -> Splits:
    """The train / val / test splits of `dataset`, preprocessed for `backbone` (see the module docstring)."""
    pool, pool_labels, test, test_labels = _SOURCES[dataset.source](dataset, backbone, download, root)
    found = int(max(pool_labels.max(), test_labels.max())) + 1
    if found > dataset.num_classes or pool_labels.min() < 0:
        raise HarnessError(f"{dataset.source_file}: dataset '{dataset.name}' has labels in 0..{found - 1}, but its "
                           f"field 'num_classes' is {dataset.num_classes}; accepted: the number of classes.")
    train_idx, val_idx = stratified_split(pool_labels, dataset.val_fraction, dataset.split_seed,
                                          what=f"dataset '{dataset.name}' (val_fraction)")
    eval_tf = build_transform(dataset, backbone, augment=False)
    train_tf = build_transform(dataset, backbone, augment=True) if augment else eval_tf
    return Splits(
        train=LabelledView(pool, train_idx, pool_labels[train_idx], train_tf),
        val=LabelledView(pool, val_idx, pool_labels[val_idx], eval_tf),
        test=LabelledView(test, np.arange(len(test)), test_labels, eval_tf),
        num_classes=dataset.num_classes,
        split_seed=dataset.split_seed,
    )


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool = False, num_workers: int = 0,
                pin_memory: bool = False, drop_last: bool = False, seed: int | None = None) -> DataLoader:
    """A DataLoader for either protocol; `seed` fixes the shuffling order (and workers' augmentation seeds)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=drop_last, generator=generator,
                      persistent_workers=num_workers > 0)


# -------------------------------------------------------------------------------------------- sources

Loaded = tuple[Dataset, np.ndarray, Dataset, np.ndarray]  # (train pool, its labels, test, its labels)


class _TensorImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def _option(dataset: DatasetEntry, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """One field of the entry's `options` table, type-checked; errors name the registry file and field."""
    value = dataset.options.get(key, default)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is ... or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise HarnessError(f"{dataset.source_file}: field '{dataset.name}.options.{key}' is "
                           f"{'missing' if value is ... else repr(value)}; accepted: "
                           f"{' or '.join(k.__name__ for k in kinds)}.")
    return value


def _digits(dataset: DatasetEntry, backbone: BackboneEntry, download: bool, root: Path | None) -> Loaded:
    """scikit-learn's embedded 8x8 digits: grey 0..16 -> 3 channels in [0, 1]; test = seeded stratified hold-out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None].expand(-1, 3, -1, -1).contiguous()
    fraction = float(_option(dataset, "test_fraction", (float, int)))
    pool_idx, test_idx = stratified_split(labels, fraction, dataset.split_seed,
                                          what=f"dataset '{dataset.name}' (options.test_fraction)")
    return (_TensorImages(images[pool_idx], labels[pool_idx]), labels[pool_idx],
            _TensorImages(images[test_idx], labels[test_idx]), labels[test_idx])


_SOURCES: dict[str, Callable[[DatasetEntry, BackboneEntry, bool, Path | None], Loaded]] = {
    "sklearn_digits": _digits,
}

