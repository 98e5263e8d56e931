"""Splits (stratified, seeded, disjoint, recorded sizes), backbone transforms and dataset-root errors."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from harness.data import load_splits, stratified_split
from harness.errors import HarnessError
from harness.registry import load_registry
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
