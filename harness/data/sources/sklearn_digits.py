"""`sklearn_digits`: scikit-learn's embedded 8x8 digits, offline (the demo)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.data.sources import SourceKind, option, register

if TYPE_CHECKING:
    from harness.data.images import Source
    from harness.registry import BackboneEntry, DatasetEntry


def load(dataset: DatasetEntry, backbone: BackboneEntry, download: bool, root: Path) -> Source:
    """scikit-learn's embedded 8x8 digits: grey 0..16 -> 3 channels in [0, 1]; test = seeded stratified hold-out."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from harness.data.images import Source, TensorImages, stratified_split

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None].expand(-1, 3, -1, -1).contiguous()
    fraction = float(option(dataset, "test_fraction", (float, int)))
    pool, test = stratified_split(labels, fraction, dataset.split_seed,
                                  what=f"dataset '{dataset.name}' (options.test_fraction)")
    return Source(TensorImages(images[pool], labels[pool]), labels[pool], TensorImages(images[test], labels[test]),
                  labels[test], "scikit-learn's embedded digits")


register(SourceKind(name="sklearn_digits", load=load, whole_images=True,
                    num_classes=lambda dataset: (10, "scikit-learn's digits (0 to 9)")))
