"""Builds result and curve rows in the store's schema for tests, with readable overrides."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

from harness.results.store import SCHEMA_VERSION

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def config_hash(**config) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def make_row(**overrides) -> dict:
    """A complete "ok" row; `config_hash` follows the configuration unless given."""
    row = {
        "trial_id": "t0", "grid": "demo", "backbone": "demo-mae-tiny", "family": "mae", "random_init": False,
        "weights_sha256": "", "dataset": "digits", "num_classes": 10, "train_size": 1145, "val_size": 202,
        "test_size": 450, "split_seed": 0, "aggregator": "cls", "aggregator_kind": "cls",
        "aggregator_options": "{}", "token_tap": "norm", "layer": "-1", "swept_options": "{}",
        "protocol": "cached", "optimizer": "lars", "recipe": "",
        "lr": 0.1, "wd": 0.0, "epochs": 2, "batch_size": 64, "warmup_epochs": 0, "seed": 0, "claim_margin": 0.5,
        "status": "ok", "error": "", "diverged_step": None, "val_top1": 50.0, "val_top5": 90.0, "test_top1": 48.0,
        "test_top5": 88.0, "train_loss": 1.0, "wall_s": 1.0, "backbone_passes": 1797, "images_per_s": 100.0,
        "harness_version": "0.1.0", "git_commit": "abc", "torch_version": "2", "timm_version": "1", "ray_version": "2",
        "device": "cpu", "started_at": T0, "ended_at": T0 + timedelta(seconds=1), "schema_version": SCHEMA_VERSION,
    }
    row.update(overrides)
    if "config_hash" not in overrides:
        keys = ("grid", "backbone", "dataset", "aggregator", "protocol", "lr", "wd", "seed")
        row["config_hash"] = config_hash(**{k: row[k] for k in keys})
    if "head_id" not in overrides:
        row["head_id"] = f"{row['aggregator']}/lr={row['lr']}/wd={row['wd']}/seed={row['seed']}"
    return row


def make_curve(hash_: str, epoch: int, **overrides) -> dict:
    curve = {"config_hash": hash_, "epoch": epoch, "lr": 0.1, "train_loss": 1.0 / (epoch + 1), "val_top1": 10.0 * epoch,
             "schema_version": SCHEMA_VERSION}
    curve.update(overrides)
    return curve
