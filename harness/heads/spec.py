"""What one head of a trial is: the plan hashes it, the bank trains it, the trial's rows record it (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import AggregatorEntry


@dataclass(frozen=True)
class HeadSpec:
    """One head: its resolved aggregator entry with the grid's options, its optimizer settings and seed; the
    config hash covers all of it and the trial's backbone and dataset."""

    head_id: str
    config_hash: str
    aggregator: AggregatorEntry
    options: dict
    optimizer: str
    lr: float
    wd: float
    seed: int
