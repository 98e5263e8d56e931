"""Training loops that feed a head bank: from cached tokens (each head group in its own seeded order).

With tokens already extracted, a batch costs a gather, not a backbone pass, so heads of different seeds
can each see their own data order: heads sharing a seed share a batch.
"""

from __future__ import annotations

from typing import Iterator

import torch

from harness.headbank import HeadBank, HeadOutcome
from harness.tokens import TokenSet


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Full batches only (BatchNorm needs more than one sample), at least one."""
    return max(num_train // batch_size, 1)


def token_batches(tokens: TokenSet, taps: list[str], batch_size: int,
                  device: torch.device | str) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Evaluation batches in stored order."""
    for start in range(0, len(tokens.labels), batch_size):
        sl = slice(start, start + batch_size)
        yield ({tap: tokens.tokens[tap][sl].to(device).float() for tap in taps},
               tokens.labels[sl].to(device))


def train_cached(bank: HeadBank, train: TokenSet, val: TokenSet, test: TokenSet, *, epochs: int, batch_size: int,
                 device: torch.device | str = "cpu") -> list[HeadOutcome]:
    """Train every head for `epochs` over the cached train tokens; report val and test metrics per head."""
    taps = bank.taps
    n = len(train.labels)
    steps = steps_per_epoch(n, batch_size)
    groups: dict[int, list[int]] = {}
    for i, spec in enumerate(bank.specs):
        groups.setdefault(spec.seed, []).append(i)
    orders = {seed: torch.Generator().manual_seed(seed) for seed in groups}
    eval_batch = max(batch_size, 256)
    for epoch in range(epochs):
        perms = {seed: torch.randperm(n, generator=g) for seed, g in orders.items()}
        for k in range(steps):
            for seed, members in groups.items():
                if not bank.live(members):
                    continue
                idx = perms[seed][k * batch_size:(k + 1) * batch_size]
                batch = {tap: train.tokens[tap][idx].to(device).float() for tap in taps}
                bank.step(batch, train.labels[idx].to(device), members)
        bank.end_epoch(epoch, bank.evaluate(token_batches(val, taps, eval_batch, device)))
    return bank.finish(bank.evaluate(token_batches(val, taps, eval_batch, device)),
                       bank.evaluate(token_batches(test, taps, eval_batch, device)))


def total_steps(num_train: int, batch_size: int, epochs: int) -> int:
    return steps_per_epoch(num_train, batch_size) * epochs


def warmup_steps(num_train: int, batch_size: int, warmup_epochs: int) -> int:
    return steps_per_epoch(num_train, batch_size) * warmup_epochs

