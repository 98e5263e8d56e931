"""What a training epoch feeds the heads, as pure functions of (seed, epoch, position).

An epoch's order is a seeded permutation, and under the online protocol every image's random crop and flip comes
from a generator seeded by (seed, epoch, image index) alone, not by what a loader worker drew before it. So a trial
restored at epoch e, step s (harness/run/checkpoints.py) draws exactly the batches an uninterrupted run draws from
there, with any number of loader workers, persistent or not.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler

_EPOCH_STRIDE = 1_000_003  # seeds and epochs map to distinct generator seeds for fewer than this many epochs


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of one epoch: a permutation of range(n) fixed by (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * _EPOCH_STRIDE + epoch))


def draw_seed(n: int, seed: int, epoch: int, index: int) -> int:
    """The generator seed of image `index`'s augmentation in `epoch`. Torch's CPU generator keeps 32 bits of a seed;
    these differ for every (epoch, index) of a trial while epochs * n < 2**32 (ImageNet: 3,350 epochs)."""
    return ((seed * _EPOCH_STRIDE + epoch) * n + index) % 2**32


class EpochOrderSampler(Sampler[tuple[int, int]]):
    """(index, draw seed) pairs in `epoch_order(n, seed, epoch)` for epoch 0, 1, ... on successive passes, as the
    cached loop orders them. `start(epoch, skip)` makes the next pass epoch `epoch` without its first `skip` items."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.skip = n, seed, 0, 0

    def __len__(self) -> int:
        return self.n - self.skip

    def start(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.n, self.seed, self.epoch)[self.skip:].tolist()
        epoch, self.epoch, self.skip = self.epoch, self.epoch + 1, 0
        return iter([(i, draw_seed(self.n, self.seed, epoch, i)) for i in order])


class SeededDraws(Dataset):
    """`dataset[index]` computed under torch's CPU generator seeded with the item's draw seed (then put back), so
    its random transforms are a function of the item alone. Items are `EpochOrderSampler`'s (index, seed) pairs."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]
