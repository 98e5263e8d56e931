"""Training loops that feed a head bank: from cached tokens, or online from the backbone on augmented images.

`cached`: tokens are extracted once, so a batch costs a gather, not a backbone pass, and the heads of each seed
see their own data order (heads sharing a seed share a batch). `online` (the published ImageNet protocol): the
backbone runs on augmented batches every epoch, one forward per batch for the whole bank, so all heads share one
data order, set by the bank's smallest seed; there the seeds set only the initialisation.
Both protocols draw an epoch's order from `epoch_order`, so with augmentation off they train identical heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from harness.data.order import EpochOrderSampler, SeededDraws, epoch_order
from harness.heads.bank import HeadBank, HeadOutcome
from harness.tokens.cache import TokenSet, backbone_autocast

EpochHook = Callable[[int, int, int, float | None], None]  # (epochs done, of, heads alive, best val top-1 so far)


@dataclass(frozen=True)
class Position:
    """Where training stands: `epoch` epochs done and `step` steps of the next; `passes`: training images the
    backbone has seen so far (online). A checkpoint records it; a restored trial continues from it."""

    epoch: int = 0
    step: int = 0
    passes: int = 0


CheckpointHook = Callable[[Position, bool], None]  # (position reached, whether at an epoch's end)


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Full batches only (BatchNorm needs more than one sample), at least one."""
    return max(num_train // batch_size, 1)


def total_steps(num_train: int, batch_size: int, epochs: int) -> int:
    return steps_per_epoch(num_train, batch_size) * epochs


def warmup_steps(num_train: int, batch_size: int, warmup_epochs: int) -> int:
    return steps_per_epoch(num_train, batch_size) * warmup_epochs


def online_loader(dataset: Dataset, *, batch_size: int, seed: int, num_workers: int = 0,
                  pin_memory: bool = False) -> DataLoader:
    """The online protocol's train loader: full batches in the seeded epoch order, each image's augmentation drawn
    from its own (seed, epoch, index) generator (harness/data/order.py), so a restored trial draws the same."""
    return DataLoader(SeededDraws(dataset), batch_size=batch_size, sampler=EpochOrderSampler(len(dataset), seed),
                      drop_last=len(dataset) >= batch_size, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


def token_batches(tokens: TokenSet, taps: list[str], batch_size: int,
                  device: torch.device | str) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Evaluation batches in stored order."""
    for start in range(0, len(tokens.labels), batch_size):
        sl = slice(start, start + batch_size)
        yield ({tap: tokens.tokens[tap][sl].to(device).float() for tap in taps},
               tokens.labels[sl].to(device))


def _evaluate_and_finish(bank: HeadBank, val: TokenSet, test: TokenSet, batch_size: int,
                         device: torch.device | str) -> list[HeadOutcome]:
    taps, eval_batch, predicted = bank.taps, max(batch_size, 256), []
    val_metrics = bank.evaluate(token_batches(val, taps, eval_batch, device))
    test_metrics = bank.evaluate(token_batches(test, taps, eval_batch, device), predictions=predicted)
    return bank.finish(val_metrics, test_metrics, predicted)


def _end_epoch(bank: HeadBank, epoch: int, epochs: int, val: TokenSet, batch_size: int, device: torch.device | str,
               on_epoch: EpochHook | None) -> None:
    scores = bank.evaluate(token_batches(val, bank.taps, max(batch_size, 256), device))
    bank.end_epoch(epoch, scores)
    if on_epoch is not None:
        tops = [s[0] for s in scores if s is not None]
        on_epoch(epoch + 1, epochs, len(bank.live()), max(tops) if tops else None)


def train_cached(bank: HeadBank, train: TokenSet, val: TokenSet, test: TokenSet, *, epochs: int, batch_size: int,
                 device: torch.device | str = "cpu", on_epoch: EpochHook | None = None, start: Position = Position(),
                 checkpoint: CheckpointHook | None = None) -> list[HeadOutcome]:
    """Train every head for `epochs` over the cached train tokens, from `start` (a restored bank's position); report
    val and test metrics per head, each epoch's progress to `on_epoch`, and every step boundary to `checkpoint`."""
    n = len(train.labels)
    steps = steps_per_epoch(n, batch_size)
    for epoch in range(start.epoch, epochs):
        seeds = bank.seeds
        orders = {seed: epoch_order(n, seed, epoch) for seed in seeds}
        for k in range(start.step if epoch == start.epoch else 0, steps):
            for seed in seeds:
                idx = orders[seed][k * batch_size:(k + 1) * batch_size]
                batch = {tap: train.tokens[tap][idx].to(device).float() for tap in bank.taps}
                bank.step(batch, train.labels[idx].to(device), seed=seed)
            if checkpoint is not None and k + 1 < steps:
                checkpoint(Position(epoch, k + 1), False)
        _end_epoch(bank, epoch, epochs, val, batch_size, device, on_epoch)
        if checkpoint is not None and epoch + 1 < epochs:
            checkpoint(Position(epoch + 1), True)
    return _evaluate_and_finish(bank, val, test, batch_size, device)


def _tokens(backbone: Any, images: torch.Tensor, taps: list[str], chunk: int,
            device: torch.device) -> dict[str, torch.Tensor]:
    """Float32 tokens of a batch, the backbone run on at most `chunk` images at a time (bf16 autocast on CUDA),
    so a large protocol batch (MAE's 16384) never holds more than one chunk's activations."""
    parts: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
    with torch.no_grad(), backbone_autocast(device):
        for piece in images.split(chunk):
            for tap, x in backbone.forward_taps(piece.to(device, non_blocking=True), taps).items():
                parts[tap].append(x.float())
    return {tap: torch.cat(xs) for tap, xs in parts.items()}


def train_online(bank: HeadBank, backbone: Any, train_loader: DataLoader, val: TokenSet, test: TokenSet, *,
                 epochs: int, device: torch.device | str = "cpu", forward_chunk: int = 1024,
                 on_epoch: EpochHook | None = None, start: Position = Position(),
                 checkpoint: CheckpointHook | None = None) -> tuple[list[HeadOutcome], int]:
    """Train every head for `epochs` on backbone tokens of `train_loader`'s (augmented) batches, from `start`: one
    backbone pass per batch for the whole bank, in chunks of `forward_chunk` images. `val` and `test` are tokens
    extracted once (un-augmented). The loader's `EpochOrderSampler` is set to each epoch (and to the restored step),
    so the batches are those of an uninterrupted run. Returns the outcomes and the images passed through the
    backbone in training (the restored position's included)."""
    device = torch.device(device)
    sampler, batch_size = train_loader.sampler, train_loader.batch_size
    steps, passes = steps_per_epoch(sampler.n, batch_size), start.passes
    for epoch in range(start.epoch, epochs):
        if not bank.live():  # every head diverged: no reason to run the backbone again
            break
        first = start.step if epoch == start.epoch else 0
        sampler.start(epoch, skip=first * batch_size)
        for k, (images, labels) in enumerate(train_loader, start=first):
            bank.step(_tokens(backbone, images, bank.taps, forward_chunk, device), labels.to(device, non_blocking=True))
            passes += len(labels)
            if checkpoint is not None and k + 1 < steps:
                checkpoint(Position(epoch, k + 1, passes), False)
        _end_epoch(bank, epoch, epochs, val, batch_size, device, on_epoch)
        if checkpoint is not None and epoch + 1 < epochs:
            checkpoint(Position(epoch + 1, 0, passes), True)
    return _evaluate_and_finish(bank, val, test, batch_size, device), passes
