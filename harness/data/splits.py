"""Datasets, their train / val / test splits, and the backbone's preprocessing.

Every choice (learning rate, weight decay, head) is selected on `val`, a fixed, seeded, stratified hold-out
carved from the training pool and recorded by its seed and size; the reported number is `test` (ImageNet's
official validation set). Datasets that ship an official val split (Flowers-102, DTD, FGVC-Aircraft) fold it
into the training pool and carve the same kind of hold-out from train+val, so one rule holds for every
dataset and the scarce per-class images of those sets all serve either training or selection.

Sources (where the images come from) are the modules of harness/data/sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.errors import HarnessError
from harness.registry import BackboneEntry, DatasetEntry
from harness.data.images import Source, stratified_split
from harness.data.sources import load_source, option, source_kinds


@dataclass(frozen=True)
class Splits:
    """The three splits of one dataset, transformed for one backbone."""

    train: Dataset  # items: (image float tensor (3, H, W) normalised for the backbone, label int)
    augmented: Dataset  # the train split under the online protocol's augmentation (random crop and flip)
    val: Dataset  # seeded, stratified hold-out carved from the training pool
    test: Dataset  # the reported split
    num_classes: int
    split_seed: int

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class LabelledView(Dataset):
    """Items `indices` of `base`, each image passed through `transform`; labels are known without decoding."""

    def __init__(self, base: Dataset, indices: np.ndarray, labels: np.ndarray, transform: Callable, *,
                 augment: bool = False):
        self.base, self.indices, self.labels, self.transform = base, indices, labels, transform
        self.augment = augment  # random crops and flips: never cached

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[int(self.indices[i])]
        return self.transform(image), int(label)

    def __getitems__(self, items: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A loader's batch in one transform call where the base hands its images over as one tensor (in-memory
        sources: per image, the transform pipeline cost the demo backbones three times their forward); the same
        values. Augmented views go image by image, so every image gets its own crop and flip."""
        batch = getattr(self.base, "batch", None)
        if batch is None or self.augment:
            return [self[i] for i in items]
        images, labels = batch(self.indices[items])
        return list(zip(self.transform(images), labels.tolist()))


# ------------------------------------------------------------------------------------------- transforms


def _crop_pct(dataset: DatasetEntry, backbone: BackboneEntry) -> float:
    """Tensor sources (digits, synthetic) are resized whole: their images have no border to crop away."""
    return 1.0 if source_kinds()[dataset.source].whole_images else backbone.crop_pct


def transform_key(dataset: DatasetEntry, backbone: BackboneEntry) -> str:
    """The eval transform as a string: part of the token cache key, so a preprocessing change never hits."""
    crop_pct = _crop_pct(dataset, backbone)
    return (f"resize={math.floor(backbone.img_size / crop_pct)},crop={backbone.img_size},"
            f"interp={backbone.interpolation},mean={list(backbone.mean)},std={list(backbone.std)}")


def build_transform(dataset: DatasetEntry, backbone: BackboneEntry, *, augment: bool) -> Callable:
    """Eval: resize the short side to img_size / crop_pct, centre-crop img_size (timm's eval convention).

    Augment (online protocol, train split only): RandomResizedCrop(img_size) + horizontal flip, as in the MAE
    and Beyond-[cls] linear-probe recipes. Both end in the backbone's mean/std normalisation. (torchvision is
    imported here, so reading a token cache does not pay for it.)
    """
    from torchvision.transforms import InterpolationMode, v2

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


def _check_counts(dataset: DatasetEntry, source: Source) -> None:
    """Labels exactly 0..num_classes-1 in the training pool (fewer classes would give every head outputs no image
    has), and the official image counts (`options.num_images`) when the entry records them."""
    found = int(max(source.pool_labels.max(), source.test_labels.max())) + 1
    if found > dataset.num_classes or min(source.pool_labels.min(), source.test_labels.min()) < 0 or \
            len(np.unique(source.pool_labels)) != dataset.num_classes:
        raise HarnessError(f"{dataset.defined_in}: dataset '{dataset.name}' read from {source.location} has labels "
                           f"in 0..{found - 1} ({len(np.unique(source.pool_labels))} classes in its training pool), "
                           f"but its field 'num_classes' is {dataset.num_classes}; accepted: the number of classes, "
                           "each with training images.")
    expected = option(dataset, "num_images", dict, {})
    got = {"pool": len(source.pool_labels), "test": len(source.test_labels)}
    for split, n in expected.items():
        if split not in got or got[split] != n:
            raise HarnessError(f"dataset '{dataset.name}': {source.location} holds {got} images, but the entry "
                               f"({dataset.defined_in}) records options.num_images = {expected}; the files there "
                               "are incomplete or another version: remove them and download or place them again.")


def first_per_class(indices: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The first `n` of `indices` (in their order) of each class of `labels` (their labels)."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c in np.unique(labels)])
    return indices[np.sort(keep)]


def load_splits(dataset: DatasetEntry, backbone: BackboneEntry, *, augment: bool = False, download: bool = False,
                root: Path | None = None, limit_train: int | None = None) -> Splits:
    """The train / val / test splits of `dataset`, preprocessed for `backbone` (see the module docstring);
    `augment` makes `train` the augmented view too; `limit_train` keeps the first N training images per class (val
    and test stay whole)."""
    source = load_source(dataset, backbone, download=download, root=root)
    pool_labels, test_labels = source.pool_labels, source.test_labels
    _check_counts(dataset, source)
    train_idx, val_idx = stratified_split(pool_labels, dataset.val_fraction, dataset.split_seed,
                                          what=f"dataset '{dataset.name}' (val_fraction)")
    if limit_train:
        train_idx = first_per_class(train_idx, pool_labels[train_idx], limit_train)
    eval_tf = build_transform(dataset, backbone, augment=False)
    augmented = LabelledView(source.pool, train_idx, pool_labels[train_idx],
                             build_transform(dataset, backbone, augment=True), augment=True)
    return Splits(
        train=augmented if augment else LabelledView(source.pool, train_idx, pool_labels[train_idx], eval_tf),
        augmented=augmented,
        val=LabelledView(source.pool, val_idx, pool_labels[val_idx], eval_tf),
        test=LabelledView(source.test, np.arange(len(source.test)), test_labels, eval_tf),
        num_classes=dataset.num_classes,
        split_seed=dataset.split_seed,
    )

