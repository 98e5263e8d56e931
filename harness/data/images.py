"""The images a dataset source loads, before any transform: in-memory tensors, generated patches, files on disk.

The sources themselves (which of these a registry entry reads, and from where) are the modules of
harness/data/sources; this module holds what they build, with torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.errors import HarnessError

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


# -------------------------------------------------------------------------------------------- on disk


def labels_of(dataset: Dataset) -> np.ndarray:
    """Labels of a torchvision dataset without decoding an image (they keep them under one of three names)."""
    for attr in ("targets", "labels", "_labels"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    raise TypeError(f"{type(dataset).__name__} exposes no targets/labels/_labels attribute")


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
