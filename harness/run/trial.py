"""One trial: one backbone over one dataset, every head of the grid trained from that one pass.

Runs anywhere (a Ray worker, a test, a benchmark) and returns result rows and curve rows in the
results-store schema; it never writes them itself, so the driver decides where they land.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from collections.abc import Sequence
from importlib.metadata import version

import torch

import harness
from harness.results import store
from harness.models.backbones import Backbone, load_backbone
from harness.tokens.space import summary_taps
from harness.data.splits import Splits, load_splits
from harness.data.device_feed import on_device
from harness.heads.precision import head_matmuls
from harness.heads.bank import HeadBank, HeadOutcome
from harness.heads.spec import HeadSpec
from harness.heads.head import head_dims
from harness.heads.kinds import kinds
from harness.heads.knn import evaluate_knn, knn_taps
from harness.run.plan import SWEPT_OPTIONS, TrialPlan
from harness.registry import BackboneEntry
from harness.tokens.cache import cached_tokens, extract_tokens, loader_workers
from harness.heads.train import (EpochHook, Position, online_loader, total_steps, train_cached, train_online,
                                 warmup_steps)
from harness.run.checkpoints import CheckpointRefused, Checkpointing


EXTRACT_BATCH = 512


def versions() -> dict[str, str]:
    """Library versions of the process that ran the trial (Ray's from its package metadata: a trial imports no Ray)."""
    import timm

    return {"harness_version": harness.__version__, "torch_version": torch.__version__,
            "timm_version": timm.__version__, "ray_version": version("ray")}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def run_trial(plan: TrialPlan, *, device: torch.device | str = "cpu", on_epoch: EpochHook | None = None,
              checkpointing: Checkpointing | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """Extract tokens once per split, train the head bank, and return (result rows, curve rows, prediction
    records: every ok head's top-1 class per test image); `on_epoch` hears each epoch's progress (the sweep's live
    display). With `checkpointing`, the bank's state is saved as training goes, and training continues from its
    `resume` state (CheckpointRefused when that state is not this bank's)."""
    device = torch.device(device)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    backbone = load_backbone(plan.backbone_entry, plan.weights, device=device, expected_sha256=plan.weights_sha256)
    dataset = plan.dataset_entry
    splits = load_splits(dataset, backbone.entry, download=plan.download, limit_train=plan.limit_train)
    sizes = splits.sizes()
    specs = plan.heads
    trained = [i for i, spec in enumerate(specs) if kinds()[spec.aggregator.kind].trained]
    untrained = [i for i in range(len(specs)) if i not in set(trained)]
    bank = make_bank(plan, [specs[i] for i in trained], backbone, splits, device)
    start, resume = Position(), checkpointing.resume if checkpointing else None
    if resume is not None:
        try:
            bank.restore(resume.bank, resume.tensors)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointRefused(f"its state does not fit this trial's heads ({e})") from None
        start = resume.position
    hook = checkpointing.hook(bank) if checkpointing else None
    knn_specs = [specs[i] for i in untrained]
    passes, extracted, extract_s = 0, 0, 0.0
    outcomes, test_labels = [HeadOutcome() for _ in specs], None
    for i, outcome in zip(trained, bank.outcomes):
        outcomes[i] = outcome
    reads = bank.reads + knn_taps(knn_specs, backbone.depth)
    if reads:
        # the protocol's batch size is the heads'; the backbone sees at most EXTRACT_BATCH images at once
        extract_batch = min(plan.batch_size, EXTRACT_BATCH)
        layouts = summary_taps(reads)  # tap -> stored as [cls], registers and the patch mean only
        taps = list(layouts)
        token_sets = {}
        cached = ("train", "val", "test") if plan.protocol == "cached" or knn_specs else ("val", "test")
        for name in cached:
            t = time.perf_counter()
            if plan.protocol == "online" and name == "train":  # un-augmented, for the k-NN heads alone (summaries)
                token_sets[name], n = extract_tokens(backbone, splits.train, sorted({t for _, t in knn_taps(
                    knn_specs, backbone.depth)}), batch_size=extract_batch, device=device,
                    summary_prefix=backbone.num_prefix_tokens)
            elif plan.protocol == "cached":  # written once to the token cache, reused by later sweeps
                split = f"train-first{plan.limit_train}" if name == "train" and plan.limit_train else name
                token_sets[name], n = cached_tokens(backbone, dataset, split, getattr(splits, name), taps,
                                                    cache_dir=plan.cache_dir, batch_size=extract_batch,
                                                    device=device, summary_prefix=backbone.num_prefix_tokens,
                                                    summarise=[t for t, summary in layouts.items() if summary])
            else:
                token_sets[name], n = extract_tokens(backbone, getattr(splits, name), taps,
                                                     batch_size=extract_batch, device=device)
            extract_s += time.perf_counter() - t
            extracted += n
        passes, test_labels = extracted, token_sets["test"].labels.numpy()
        trained_outcomes = bank.outcomes
        if bank.live() and plan.protocol == "online":
            loader = online_loader(splits.augmented, batch_size=plan.batch_size, seed=min(bank.seeds),
                                   num_workers=loader_workers(device), pin_memory=device.type == "cuda")
            if device.type == "cuda":  # JPEG decode and augmentation on the GPU, where the dataset has files
                loader = on_device(loader, splits.augmented, backbone.entry, device) or loader
            with head_matmuls(device):
                trained_outcomes, n = train_online(bank, backbone, loader, token_sets["val"], token_sets["test"],
                                                   epochs=plan.epochs, device=device, forward_chunk=extract_batch,
                                                   on_epoch=on_epoch, start=start, checkpoint=hook)
            passes += n
        elif bank.live():
            with head_matmuls(device):
                trained_outcomes = train_cached(bank, token_sets["train"], token_sets["val"], token_sets["test"],
                                                epochs=plan.epochs, batch_size=plan.batch_size, device=device,
                                                on_epoch=on_epoch, start=start, checkpoint=hook)
        for i, outcome in zip(trained, trained_outcomes):
            outcomes[i] = outcome
        if knn_specs:
            dims = lambda blocks: head_dims(backbone.embed_dim, backbone.num_heads, backbone.num_prefix_tokens,
                                            num_registers=backbone.num_registers, num_blocks=blocks)
            for i, outcome in zip(untrained, evaluate_knn(knn_specs, token_sets["train"], token_sets["val"],
                                                          token_sets["test"], dims=dims, depth=backbone.depth,
                                                          num_classes=splits.num_classes, device=device)):
                outcomes[i] = outcome
    shared = {
        **trial_columns(plan, backbone.entry, started), "weights_sha256": backbone.weights_sha256,
        "num_classes": splits.num_classes, "train_size": sizes["train"], "val_size": sizes["val"],
        "test_size": sizes["test"], "split_seed": splits.split_seed,
        "wall_s": (checkpointing.earlier_s if checkpointing else 0.0) + time.perf_counter() - t0,
        "backbone_passes": passes, "images_per_s": extracted / extract_s if extract_s > 0 else 0.0,
        "device": device_name(device),
    }
    rows = [head_row(shared, head, outcome) for head, outcome in zip(plan.heads, outcomes)]
    curves = [{"config_hash": head.config_hash, **point, "schema_version": store.SCHEMA_VERSION}
              for head, outcome in zip(plan.heads, outcomes) for point in outcome.curves]
    predictions = [store.prediction_record(head.config_hash, outcome.test_predicted.numpy(), test_labels)
                   for head, outcome in zip(plan.heads, outcomes) if outcome.test_predicted is not None]
    return rows, curves, predictions


def make_bank(plan: TrialPlan, specs: Sequence[HeadSpec], backbone: Backbone, splits: Splits,
              device: torch.device) -> HeadBank:
    """The head bank of a trial's trained heads, sized for the backbone's tokens and the train split."""
    n = len(splits.train)
    return HeadBank(specs, embed_dim=backbone.embed_dim, num_heads=backbone.num_heads,
                    num_prefix_tokens=backbone.num_prefix_tokens, num_classes=splits.num_classes,
                    batch_size=plan.batch_size, shared_order=plan.protocol == "online",
                    total_steps=total_steps(n, plan.batch_size, plan.epochs),
                    warmup_steps=warmup_steps(n, plan.batch_size, plan.warmup_epochs), device=device,
                    depth=backbone.depth, num_registers=backbone.num_registers)


def head_row(shared: dict, head: HeadSpec, outcome: HeadOutcome) -> dict:
    """One results-store row: the trial's shared columns plus this head's configuration and outcome."""
    aggregator = head.aggregator
    swept = () if kinds()[aggregator.kind].trained else SWEPT_OPTIONS
    return {
        **shared, "config_hash": head.config_hash, "head_id": head.head_id, "aggregator": aggregator.name,
        "aggregator_kind": aggregator.kind, "token_tap": aggregator.tap, "layer": head.layer,
        # options swept like an lr (k-NN's k and T) stay out of aggregator_options, which selection keeps apart
        "aggregator_options": json.dumps({k: v for k, v in head.options.items() if k not in swept}, sort_keys=True),
        "swept_options": json.dumps({k: v for k, v in head.options.items() if k in swept}, sort_keys=True),
        "optimizer": head.optimizer,
        "recipe": head.recipe_label, "lr": head.lr, "wd": head.wd, "seed": head.seed, "status": outcome.status,
        "error": outcome.error,
        "diverged_step": outcome.diverged_step, "val_top1": outcome.val_top1, "val_top5": outcome.val_top5,
        "test_top1": outcome.test_top1, "test_top5": outcome.test_top5, "train_loss": outcome.train_loss,
    }


def trial_columns(plan: TrialPlan, entry: BackboneEntry, started: datetime) -> dict:
    """The columns every row of a trial shares and that are known before it runs."""
    return {
        "trial_id": plan.trial_id, "grid": plan.grid, "backbone": plan.backbone, "family": entry.family,
        "random_init": entry.random_init, "dataset": plan.dataset, "protocol": plan.protocol,
        "epochs": plan.epochs, "batch_size": plan.batch_size, "warmup_epochs": plan.warmup_epochs,
        "claim_margin": plan.claim_margin,
        "git_commit": plan.provenance.get("git_commit", ""), **versions(), "started_at": started,
        "ended_at": datetime.now(timezone.utc), "schema_version": store.SCHEMA_VERSION,
    }


def failed_rows(plan: TrialPlan, error: str, started: datetime) -> list[dict]:
    """Rows recording a trial that still failed after its retries: every head "failed", with the error."""
    dataset = plan.dataset_entry
    shared = {
        **trial_columns(plan, plan.backbone_entry, started), "weights_sha256": "",
        "num_classes": dataset.num_classes, "train_size": None, "val_size": None, "test_size": None,
        "split_seed": dataset.split_seed, "wall_s": 0.0, "backbone_passes": 0, "images_per_s": 0.0, "device": "",
    }
    outcome = HeadOutcome(status="failed", error=error)
    return [head_row(shared, h, outcome) for h in plan.heads]
