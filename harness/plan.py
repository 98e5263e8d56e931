"""From a grid to trials: what runs where, and the hash that identifies each head's result.

A trial is one backbone over one dataset: it owns that backbone's pass over the data and trains every
head of the grid (aggregator x lr x wd x seed) from it, so backbone passes never grow with the number of
heads. Each head is identified by a hash of its full configuration; the sweep skips heads whose hash
already has a final result, which is how resume works. No torch, no Ray: `--dry-run` stays instant.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from harness.registry import BackboneEntry, DatasetEntry, Grid, Registry


@dataclass(frozen=True)
class HeadPlan:
    head_id: str
    config_hash: str
    aggregator: str
    options: dict
    optimizer: str
    lr: float
    wd: float
    seed: int


@dataclass(frozen=True)
class TrialPlan:
    trial_id: str
    grid: str
    backbone: str
    dataset: str
    protocol: str
    epochs: int
    batch_size: int
    warmup_epochs: int
    claim_margin: float
    heads: tuple[HeadPlan, ...]
    weights: str | None = None  # explicit weights file for the backbone (--weights)
    provenance: dict = field(default_factory=dict)  # git commit etc., read once by the driver

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrialPlan:
        return cls(**{**d, "heads": tuple(HeadPlan(**h) for h in d["heads"])})


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _backbone_identity(entry: BackboneEntry, weights: str | None) -> dict:
    """What makes a backbone's tokens what they are: weights identity, architecture and preprocessing."""
    return {
        "name": entry.name, "arch": entry.arch, "arch_overrides": entry.arch_overrides, "img_size": entry.img_size,
        "random_init": entry.random_init, "checkpoint_key": entry.checkpoint_key, "mean": entry.mean,
        "std": entry.std, "crop_pct": entry.crop_pct, "interpolation": entry.interpolation,
        "weights": weights or entry.sha256 or entry.url or entry.filename,
    }


def _dataset_identity(entry: DatasetEntry) -> dict:
    return {"name": entry.name, "source": entry.source, "val_fraction": entry.val_fraction,
            "split_seed": entry.split_seed, "options": entry.options}


def head_id(aggregator: str, lr: float, wd: float, seed: int) -> str:
    return f"{aggregator}/lr={lr:g}/wd={wd:g}/seed={seed}"


def expand(grid: Grid, registry: Registry, *, weights: dict[str, str] | None = None,
           provenance: dict | None = None) -> list[TrialPlan]:
    """All trials of a grid, one per (backbone, dataset), each carrying every head of the grid."""
    weights = weights or {}
    trials = []
    for backbone_name in grid.backbones:
        backbone = registry.backbone(backbone_name)
        for dataset_name in grid.datasets:
            dataset = registry.dataset(dataset_name)
            shared = {
                "backbone": _backbone_identity(backbone, weights.get(backbone_name)),
                "dataset": _dataset_identity(dataset), "protocol": grid.protocol, "epochs": grid.epochs,
                "batch_size": grid.batch_size, "warmup_epochs": grid.warmup_epochs,
            }
            heads = []
            for group in grid.heads:
                agg = registry.aggregator(group.aggregator)
                options = {**agg.options, **group.options}
                for seed in grid.seeds:
                    for lr in group.lrs:
                        for wd in group.wds:
                            config = {**shared, "aggregator": {"name": agg.name, "kind": agg.kind, "tap": agg.tap,
                                                               "options": options},
                                      "optimizer": group.optimizer, "lr": lr, "wd": wd, "seed": seed}
                            heads.append(HeadPlan(head_id(agg.name, lr, wd, seed), _digest(config), agg.name,
                                                  options, group.optimizer, lr, wd, seed))
            trials.append(TrialPlan(
                trial_id=_digest(shared)[:16], grid=grid.name, backbone=backbone_name, dataset=dataset_name,
                protocol=grid.protocol, epochs=grid.epochs, batch_size=grid.batch_size,
                warmup_epochs=grid.warmup_epochs, claim_margin=grid.claim_margin, heads=tuple(heads),
                weights=weights.get(backbone_name), provenance=dict(provenance or {}),
            ))
    return trials


def without_done(trials: list[TrialPlan], done: set[str]) -> list[TrialPlan]:
    """The trials that still have heads without a final result, each keeping only those heads."""
    remaining = []
    for trial in trials:
        heads = tuple(h for h in trial.heads if h.config_hash not in done)
        if heads:
            remaining.append(replace(trial, heads=heads))
    return remaining
