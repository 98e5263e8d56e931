"""Splits (stratified, seeded, disjoint, recorded sizes), backbone transforms and dataset-root errors."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.tokens.space import planned_split_sizes
from harness.data.splits import load_splits
from harness.errors import HarnessError
from harness.registry import DatasetEntry, load_registry
from harness.data.images import stratified_split
from token_fakes import ENTRY

DEMO = replace(ENTRY, img_size=32, patch_size=8)


@pytest.fixture(scope="module")
def digits_entry():
    return load_registry().dataset("digits")


def test_digits_splits_are_disjoint_stratified_and_sized(digits_entry):
    splits = load_splits(digits_entry, DEMO)
    assert splits.sizes() == {"train": 1144, "val": 203, "test": 450}  # 1797: 25% test, then 15% of the rest
    assert splits.num_classes == 10 and splits.split_seed == 0
    assert len(set(splits.train.indices) & set(splits.val.indices)) == 0
    assert sorted([*splits.train.indices, *splits.val.indices]) == list(range(1347))
    from sklearn.datasets import load_digits

    overall = np.bincount(load_digits().target) / 1797
    for part in (splits.train, splits.val, splits.test):
        expected = overall * len(part)
        assert np.abs(np.bincount(part.labels, minlength=10) - expected).max() <= 1.5  # two rounded hold-outs


def test_test_split_never_overlaps_train_or_val(digits_entry):
    splits = load_splits(digits_entry, DEMO)
    key = lambda t: t.numpy().tobytes()  # noqa: E731 - digits images are distinct up to a handful of duplicates
    test = {key(splits.test[i][0]) for i in range(len(splits.test))}
    seen = {key(splits.train[i][0]) for i in range(len(splits.train))} | {
        key(splits.val[i][0]) for i in range(len(splits.val))}
    assert len(test & seen) <= 5


def test_split_seed_decides_the_hold_out(digits_entry):
    a = load_splits(digits_entry, DEMO)
    b = load_splits(digits_entry, DEMO)
    c = load_splits(replace(digits_entry, split_seed=1), DEMO)
    assert np.array_equal(a.val.indices, b.val.indices)
    assert not np.array_equal(a.val.indices, c.val.indices)
    assert c.split_seed == 1 and c.sizes() == a.sizes()


def test_stratified_split_keeps_class_proportions():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    kept, held = stratified_split(labels, 0.2, 3, what="t")
    assert np.bincount(labels[held]).tolist() == [20, 10, 6, 4]
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == 200


def test_impossible_hold_out_is_a_user_error():
    with pytest.raises(HarnessError, match="t: cannot hold out a stratified 50% of 3 images"):
        stratified_split(np.array([0, 1, 1]), 0.5, 0, what="t")


def test_images_follow_the_backbone(digits_entry):
    splits = load_splits(digits_entry, DEMO)
    image, label = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    # digits are in [0, 1]; normalised with mean 0.5, std 0.25 they span about [-2, 2]
    assert -2.5 < image.min() < -1.5 and 1.0 < image.max() < 2.5
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey -> 3 equal channels


def test_augment_changes_train_only(digits_entry):
    torch.manual_seed(0)
    splits = load_splits(digits_entry, DEMO, augment=True)
    draws = [splits.train[0][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(splits.val[0][0], splits.val[0][0]) and torch.equal(splits.test[3][0], splits.test[3][0])
    plain = load_splits(digits_entry, DEMO)
    assert torch.equal(plain.val[5][0], splits.val[5][0])


def test_wrong_num_classes_names_the_field(digits_entry):
    with pytest.raises(HarnessError, match="'num_classes' is 5"):
        load_splits(replace(digits_entry, num_classes=5), DEMO)


# ----------------------------------------------------------------------------------- on-disk sources


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 10, 3), value, dtype=np.uint8)).save(path)


def _fake_dtd(root: Path, classes=("banded", "dotted", "zigzag"), per_split: int = 5) -> None:
    """torchvision's DTD layout under <root>/dtd: images/<class>/*.jpg and labels/{split}1.txt."""
    base = root / "dtd" / "dtd" / "dtd"
    for split in ("train", "val", "test"):
        lines = []
        for c, cls in enumerate(classes):
            for i in range(per_split):
                _png(base / "images" / cls / f"{split}_{i}.png", 40 * c)
                lines.append(f"{cls}/{split}_{i}.png")
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")


def _dtd_entry(**options):
    entry = load_registry().dataset("dtd")
    return replace(entry, num_classes=3, val_fraction=0.2, options={**entry.options, **options})


def test_torchvision_pool_is_train_plus_official_val(tmp_path):
    _fake_dtd(tmp_path)
    splits = load_splits(_dtd_entry(num_images={"pool": 30, "test": 15}), DEMO, root=tmp_path)
    assert splits.sizes() == {"train": 24, "val": 6, "test": 15}
    assert np.bincount(splits.val.labels).tolist() == [2, 2, 2]
    image, label = splits.val[0]
    assert image.shape == (3, 32, 32) and label == splits.val.labels[0]
    # the image's grey level encodes its class: 0, 40 or 80 -> normalised (v/255 - 0.5) / 0.25
    assert torch.allclose(image, torch.full_like(image, (40 * label / 255 - 0.5) / 0.25), atol=1e-4)


def test_missing_torchvision_root_says_where_and_how(tmp_path):
    entry = load_registry().dataset("cifar10")
    with pytest.raises(HarnessError) as e:
        load_splits(entry, DEMO, root=tmp_path)
    message = str(e.value)
    assert str(tmp_path / "cifar10") in message and "--download" in message and "HARNESS_DATA_ROOT" in message


def test_incomplete_download_is_reported_not_used(tmp_path):
    _fake_dtd(tmp_path)
    with pytest.raises(HarnessError, match=r"holds \{'pool': 30, 'test': 15\} images.*num_images.*incomplete"):
        load_splits(_dtd_entry(), DEMO, root=tmp_path)  # the registry's official counts: 3760 / 1880


def _folder(root: Path, train=("cat", "dog"), test=("cat", "dog"), per_class: int = 6) -> Path:
    for split, classes in (("train", train), ("val", test)):
        for c, cls in enumerate(classes):
            for i in range(per_class):
                _png(root / split / cls / f"{i}.png", 100 * (sorted(set(train) | set(test)).index(cls)))
    return root


def _folder_entry(path: Path, val_fraction: float = 0.1) -> DatasetEntry:
    return DatasetEntry(name=path.name, source="imagefolder", num_classes=2, val_fraction=val_fraction,
                        options={"path": str(path)})


def test_imagefolder_reads_class_folders(tmp_path):
    entry = _folder_entry(_folder(tmp_path / "pics", test=("dog",)), val_fraction=0.25)
    splits = load_splits(entry, DEMO)
    assert splits.sizes() == {"train": 9, "val": 3, "test": 6}
    assert splits.test.labels.tolist() == [1] * 6  # "dog" keeps train's index although val lacks "cat"
    image, label = splits.test[0]
    assert label == 1 and torch.allclose(image, torch.full_like(image, (100 / 255 - 0.5) / 0.25), atol=1e-4)


@pytest.mark.parametrize("layout, problem", [
    ("none", "imagenet-1k/train is not a folder"),
    ("wrong_count", "has 2 class folders, but the entry says num_classes = 1000"),
])
def test_imagenet_root_errors_say_where_and_how(tmp_path, layout, problem):
    if layout == "wrong_count":
        _folder(tmp_path / "imagenet-1k")
    with pytest.raises(HarnessError) as e:
        load_splits(load_registry().dataset("imagenet-1k"), DEMO, root=tmp_path)
    message = str(e.value)
    assert problem in message and "train/<class>/<image>" in message and "image-net.org" in message
    assert "HARNESS_DATA_ROOT" in message


def test_imagefolder_test_classes_must_exist_in_train(tmp_path):
    entry = _folder_entry(_folder(tmp_path, test=("cat", "dog", "eel")))
    with pytest.raises(HarnessError, match=r"class folders missing from .*train \(eel\)"):
        load_splits(entry, DEMO)


def test_synthetic_patch_puts_the_object_where_it_says():
    entry = load_registry().dataset("synthetic-patch")
    splits = load_splits(entry, DEMO)
    assert splits.sizes() == {"train": 1800, "val": 200, "test": 800} and splits.num_classes == 8
    base = splits.test.base
    for i in range(5):
        raw, label = base[i]
        row, col = base.object_cell(i)
        assert torch.equal(raw[:, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8], base.objects[label])
        assert torch.equal(raw, base[i][0])  # a pure function of the index
    assert torch.equal(splits.train.base.objects, base.objects)  # train and test share the class objects
    assert np.bincount(base.labels).tolist() == [100] * 8


def test_synthetic_object_must_fit_the_grid():
    entry = load_registry().dataset("synthetic-patch")
    with pytest.raises(HarnessError, match="options.object_patches' is 5"):
        load_splits(replace(entry, options={**entry.options, "object_patches": 5}), DEMO)


@pytest.mark.parametrize("name", ["digits", "synthetic-patch"])
def test_planned_sizes_match_the_splits(name):
    entry = load_registry().dataset(name)
    assert planned_split_sizes(entry) == load_splits(entry, DEMO).sizes()


def test_planned_sizes_of_registered_datasets():
    registry = load_registry()
    assert planned_split_sizes(registry.dataset("imagenet-1k")) == {"train": 1268355, "val": 12812, "test": 50000}
    assert planned_split_sizes(registry.dataset("flowers102")) == {"train": 1632, "val": 408, "test": 6149}
    assert planned_split_sizes(replace(registry.dataset("dtd"), options={})) is None


def test_planned_sizes_match_a_torchvision_pool(tmp_path):
    _fake_dtd(tmp_path)
    entry = _dtd_entry(num_images={"pool": 30, "test": 15})
    assert planned_split_sizes(entry) == load_splits(entry, DEMO, root=tmp_path).sizes()


@pytest.mark.parametrize("options, problem", [
    ({"class": "NoSuchSet"}, "options.class' is 'NoSuchSet'"),
    ({"train": [{"split": "train", "parttion": 1}]}, "rejects options"),
    ({"train": {"split": "train"}}, "options.train' is"),
])
def test_malformed_torchvision_options_name_the_field(tmp_path, options, problem):
    _fake_dtd(tmp_path)
    with pytest.raises(HarnessError, match=problem):
        load_splits(_dtd_entry(**options), DEMO, root=tmp_path)
