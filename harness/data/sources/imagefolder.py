"""`imagefolder`: ImageNet-1k or any `train/<class>/*` + `val/<class>/*` folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from harness.data.sources import SourceKind, option, register, root_hint
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.data.images import Source
    from harness.registry import BackboneEntry, DatasetEntry


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _layout(dataset: DatasetEntry, root: Path) -> tuple[Path, Path, Path, str]:
    """(dataset folder, train folder, test folder, what is expected there and what to do when it is not)."""
    base = Path(option(dataset, "path", str)) if "path" in dataset.options else root / option(dataset, "folder", str)
    train_dir = base / option(dataset, "train_dir", str, "train")
    test_dir = base / option(dataset, "test_dir", str, "val")
    how = option(dataset, "manual_download", str, "")
    expected = (f"expected {train_dir}/<class>/<image> and {test_dir}/<class>/<image>, one sub-folder per class "
                f"with the same names in both")
    return base, train_dir, test_dir, f"{expected}. {how + ' ' if how else ''}Place the files there, or {root_hint(base)}"


def check(dataset: DatasetEntry, download: bool, root: Path) -> list[str]:
    """Both folders exist and train has `num_classes` class folders; returns the classes, sorted."""
    _, train_dir, test_dir, fix = _layout(dataset, root)
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise HarnessError(f"dataset '{dataset.name}': {folder} is not a folder; {fix}.")
    classes = _class_folders(train_dir)
    if len(classes) != dataset.num_classes:
        raise HarnessError(f"dataset '{dataset.name}': {train_dir} has {len(classes)} class folders, but the entry "
                           f"says num_classes = {dataset.num_classes}; {fix}.")
    return classes


def load(dataset: DatasetEntry, backbone: BackboneEntry, download: bool, root: Path) -> Source:
    """Classes are train's sub-folders (sorted); test must use the same names, so labels agree across splits."""
    from torchvision.datasets.folder import make_dataset

    from harness.data.images import IMAGE_SUFFIXES, FolderImages, Source

    classes = check(dataset, download, root)
    base, train_dir, test_dir, fix = _layout(dataset, root)
    unknown = sorted(set(_class_folders(test_dir)) - set(classes))
    if unknown:
        raise HarnessError(f"dataset '{dataset.name}': {test_dir} has class folders missing from {train_dir} "
                           f"({', '.join(unknown[:5])}); {fix}.")
    index = {c: i for i, c in enumerate(classes)}
    try:
        pool = make_dataset(str(train_dir), index, extensions=IMAGE_SUFFIXES)
        test = make_dataset(str(test_dir), {c: index[c] for c in _class_folders(test_dir)}, extensions=IMAGE_SUFFIXES)
    except FileNotFoundError as e:
        raise HarnessError(f"dataset '{dataset.name}': {e} (under {base}, image suffixes "
                           f"{', '.join(IMAGE_SUFFIXES)}); {fix}.") from None
    train_images, test_images = FolderImages(pool), FolderImages(test)
    return Source(train_images, train_images.labels, test_images, test_images.labels, str(base))


register(SourceKind(name="imagefolder", load=load, check=check))
