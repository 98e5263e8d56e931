"""`torchvision`: a torchvision.datasets class, downloadable with `--download` into the data root."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.data.sources import SourceKind, option, register, root_hint
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.data.images import Source
    from harness.registry import BackboneEntry, DatasetEntry

# Classes of a torchvision.datasets class, known without its files (torchvision's documentation and sources), so
# the registry refuses a wrong `num_classes` where it is typed. Where a keyword picks the labels, KEYWORD_COUNTS
# holds (keyword, torchvision's default, count per value).
CLASS_COUNTS = {"CIFAR10": 10, "CIFAR100": 100, "STL10": 10, "Flowers102": 102, "DTD": 47, "Food101": 101,
                "MNIST": 10, "FashionMNIST": 10, "KMNIST": 10, "QMNIST": 10, "SVHN": 10, "EuroSAT": 10, "GTSRB": 43,
                "StanfordCars": 196, "Country211": 211, "SUN397": 397}
KEYWORD_COUNTS = {
    "FGVCAircraft": ("annotation_level", "variant", {"variant": 100, "family": 70, "manufacturer": 30}),
    "OxfordIIITPet": ("target_types", "category", {"category": 37, "binary-category": 2}),
}


def load(dataset: DatasetEntry, backbone: BackboneEntry, download: bool, root: Path) -> Source:
    """`options.class` built once per `options.train` table (concatenated into the pool) and once for `test`."""
    import numpy as np
    import torchvision.datasets
    from torch.utils.data import ConcatDataset

    from harness.data.images import Source, labels_of

    name = option(dataset, "class", str)
    cls = getattr(torchvision.datasets, name, None)
    if not isinstance(cls, type):
        raise HarnessError(f"{dataset.defined_in}: field '{dataset.name}.options.class' is {name!r}; accepted: a "
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
                f"{root_hint(folder)}.") from None
        except (ValueError, TypeError) as e:  # a split name or keyword the class does not take
            raise HarnessError(f"{dataset.defined_in}: dataset '{dataset.name}': torchvision's {name} rejects "
                               f"options {kwargs} ({e}).") from None
        except OSError as e:
            raise HarnessError(f"dataset '{dataset.name}': reading or downloading {name} into {folder} failed "
                               f"({e}); check the network and the folder, or place the files there by hand.") from None

    train = option(dataset, "train", list)
    if not train or not all(isinstance(kwargs, dict) for kwargs in train):
        raise HarnessError(f"{dataset.defined_in}: field '{dataset.name}.options.train' is {train!r}; accepted: a "
                           "non-empty list of tables of keyword arguments, one per official split in the pool.")
    parts = [build(kwargs) for kwargs in train]
    test = build(option(dataset, "test", dict))
    pool = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    return Source(pool, np.concatenate([labels_of(p) for p in parts]), test, labels_of(test), str(folder))


def check(dataset: DatasetEntry, download: bool, root: Path) -> None:
    """Without --download the files must already be in their folder (torchvision reads them only in a worker)."""
    folder = root / option(dataset, "folder", str, dataset.name)
    if not download and not folder.is_dir():
        raise HarnessError(f"dataset '{dataset.name}': {folder} is not a folder; expected the files torchvision's "
                           f"{option(dataset, 'class', str)} downloads there; run with --download to fetch them into "
                           f"{folder}, or {root_hint(folder)}.")


def num_classes(dataset: DatasetEntry) -> tuple[int, str] | None:
    """The classes `options.class` has with the entry's keywords (every split's the same), None when not known."""
    name = option(dataset, "class", str)
    if name in CLASS_COUNTS:
        return CLASS_COUNTS[name], f"torchvision's {name}"
    if name not in KEYWORD_COUNTS:
        return None
    keyword, default, counts = KEYWORD_COUNTS[name]
    common = option(dataset, "kwargs", dict, {})
    train = dataset.options.get("train")
    splits = [*(train if isinstance(train, list) else []), dataset.options.get("test")]
    splits = [split for split in splits if isinstance(split, dict)]
    values = {str(split.get(keyword, common.get(keyword, default))) for split in splits}
    if len(values) != 1 or (value := values.pop()) not in counts:  # malformed or unusual: `load` reports it
        return None
    return counts[value], f"torchvision's {name} with {keyword} = {value!r}"


register(SourceKind(name="torchvision", load=load, check=check, num_classes=num_classes))
