"""A loader's batch of an in-memory source is transformed in one call: the same images, bit for bit, as one image
at a time; augmented views still crop and flip each image on its own."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from harness.data.splits import load_splits
from harness.registry import load_registry


def _per_image(view, items) -> torch.Tensor:
    return torch.stack([view[i][0] for i in items])


def test_loader_batches_equal_the_per_image_transform():
    registry = load_registry()
    splits = load_splits(registry.dataset("digits"), registry.backbone("demo-mae-tiny"))
    for view in (splits.train, splits.val, splits.test):
        images, labels = next(iter(DataLoader(view, batch_size=50, shuffle=False)))
        assert torch.equal(images, _per_image(view, range(50)))
        assert labels.tolist() == [view[i][1] for i in range(50)] == view.labels[:50].tolist()
    calls = []
    transform = splits.val.transform
    splits.val.transform = lambda x: calls.append(len(x)) or transform(x)
    next(iter(DataLoader(splits.val, batch_size=50)))
    assert calls == [50]  # one call for the batch, not fifty


def test_augmented_views_transform_image_by_image():
    registry = load_registry()
    view = load_splits(registry.dataset("digits"), registry.backbone("demo-mae-tiny"), augment=True).train
    items = [3, 3, 3, 3, 3, 3, 3, 3]
    torch.manual_seed(0)
    batch = torch.stack([x for x, _ in view.__getitems__(items)])
    torch.manual_seed(0)
    assert torch.equal(batch, _per_image(view, items))
    assert len({x.sum().item() for x in batch}) > 1  # one image, eight random crops: not one crop for the batch
