"""From a grid to trials: what runs where, and the hash that identifies each head's result.

A trial is one backbone over one dataset: it owns that backbone's pass over the data and trains every
head of the grid (aggregator x lr x wd x seed) from it, so backbone passes never grow with the number of
heads. Each head is identified by a hash of its full configuration; the sweep skips heads whose hash
already has a final result, which is how resume works. No torch, no Ray: `--dry-run` stays instant.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from harness.errors import HarnessError
from harness.heads import recipes
from harness.heads.kinds import kinds, resolve_options
from harness.heads.recipes import Recipe
from harness.heads.spec import HeadSpec
from harness.models.digests import cached_sha256
from harness.results.store import predictions_bytes
from harness.tokens.layers import DEFAULT_LAYER, layer_taps, parse_tap
from harness.tokens.space import (SUMMARY_TOKEN_BYTES, TOKEN_BYTES, planned_split_sizes, predict_cache_bytes,
                                  summary_taps)
from harness.heads.kinds import kinds, resolve_options
from harness.registry import AggregatorEntry, BackboneEntry, DatasetEntry, Grid, HeadGroup, Registry, load_registry


@dataclass(frozen=True)
class TrialPlan:
    """One trial, carrying the frozen registry entries it was hashed over: a worker never re-reads a registry, so
    the configuration hashes describe exactly what it trains."""

    trial_id: str
    grid: str
    backbone: str
    dataset: str
    protocol: str
    epochs: int
    batch_size: int
    warmup_epochs: int
    claim_margin: float
    heads: tuple[HeadSpec, ...]
    backbone_entry: BackboneEntry
    dataset_entry: DatasetEntry
    weights: str | None = None  # explicit weights file for the backbone (--weights)
    weights_sha256: str | None = None  # that file's content when planned; the trial refuses another
    provenance: dict = field(default_factory=dict)  # git commit etc., read once by the driver
    cache_dir: str | None = None  # token cache folder (--cache-dir); None: the worker's HARNESS_CACHE_DIR/config
    download: bool = False  # let torchvision download missing datasets (--download)
    limit_train: int | None = None  # the first N training images per class only (--limit-train)


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _backbone_identity(entry: BackboneEntry, weights_sha256: str | None) -> dict:
    """What makes a backbone's tokens what they are: weights identity (an explicit file by its content, never its
    path), architecture and preprocessing."""
    return {
        "name": entry.name, "arch": entry.arch, "arch_overrides": entry.arch_overrides, "img_size": entry.img_size,
        "random_init": entry.random_init, "checkpoint_key": entry.checkpoint_key, "mean": entry.mean,
        "std": entry.std, "crop_pct": entry.crop_pct, "interpolation": entry.interpolation,
        "weights": weights_sha256 or entry.sha256 or entry.url or entry.filename,
    }


def _dataset_identity(entry: DatasetEntry) -> dict:
    return {"name": entry.name, "source": entry.source, "val_fraction": entry.val_fraction,
            "split_seed": entry.split_seed, "options": entry.options}


def head_id(aggregator: str, lr: float, wd: float, seed: int, layer: str = DEFAULT_LAYER,
            swept: dict | None = None) -> str:
    """`<aggregator>[/layer=<l>]/lr=../wd=../seed=..`; an untrained head names its swept options instead of lr and wd."""
    where = "" if layer == DEFAULT_LAYER else f"/layer={layer}"
    if swept:
        return f"{aggregator}{where}/" + "/".join(f"{k}={v:g}" for k, v in swept.items()) + f"/seed={seed}"
    return f"{aggregator}{where}/lr={lr:g}/wd={wd:g}/seed={seed}"


SWEPT_OPTIONS = ("k", "T")  # options of untrained heads (k-NN) that a list sweeps, one head per combination


def group_heads(grid: Grid, group: HeadGroup, registry: Registry | None = None) -> list[tuple]:
    """(seed, layer, lr, wd, options, swept options) of every head of one head group: trained heads for every seed
    x layer x lr x wd; untrained ones (k-NN, deterministic) for the first seed, one per layer x combination of
    their listed `k` and `T`."""
    agg = (registry or load_registry()).aggregator(group.aggregator)
    if kinds()[agg.kind].trained:
        recipe = recipes.resolve(group.recipe, group.recipe_options) if group.recipe else None
        options = {**agg.options, **(recipe.options_for(agg.kind) if recipe else {}), **group.options}
        return [(seed, layer, lr, wd, options, None) for seed in grid.seeds for layer in group.layers
                for lr in group.lrs for wd in group.wds]
    options = resolve_options(agg, group.options)
    combos: list[dict] = [{}]
    for key in SWEPT_OPTIONS:
        values = options[key] if isinstance(options[key], list) else [options[key]]
        combos = [{**c, key: v} for c in combos for v in values]
    return [(grid.seeds[0], layer, 0.0, 0.0, {**options, **c}, c) for layer in group.layers for c in combos]


def expand(grid: Grid, registry: Registry, *, weights: dict[str, str] | None = None,
           provenance: dict | None = None) -> list[TrialPlan]:
    """All trials of a grid, one per (backbone, dataset), each carrying every head of the grid."""
    weights = weights or {}
    trials = []
    for backbone_name in grid.backbones:
        backbone = registry.backbone(backbone_name)
        sha256 = cached_sha256(weights[backbone_name]) if backbone_name in weights else None
        for dataset_name in grid.datasets:
            dataset = registry.dataset(dataset_name)
            settings = grid.settings(dataset_name)
            shared = {"backbone": _backbone_identity(backbone, sha256),
                      "dataset": _dataset_identity(dataset), **settings,
                  **({"limit_train": grid.limit_train} if grid.limit_train else {})}  # old hashes unchanged
            heads = []
            for group in grid.heads:
                recipe = recipes.resolve(group.recipe, group.recipe_options) if group.recipe else None
                agg = trained_entry(registry.aggregator(group.aggregator), recipe)
                _refuse_unreadable(grid, agg, {**(recipe.options_for(agg.kind) if recipe else {}), **group.options},
                                   backbone)
                # a head without a recipe keeps the hash it had before recipes existed
                training = {"recipe": recipe.describe()} if recipe else {}
                label = recipe_label(group.recipe, group.recipe_options)
                for seed, layer, lr, wd, options, swept in group_heads(grid, group, registry):
                    described = {"name": agg.name, "kind": agg.kind, "tap": agg.tap, "options": options}
                    if layer != DEFAULT_LAYER:  # heads of the last block keep the hashes they had before layers
                        described["layer"] = layer
                    config = {**shared, "aggregator": described, "optimizer": group.optimizer, "lr": lr, "wd": wd,
                              "seed": seed, **training}
                    heads.append(HeadSpec(head_id(agg.name, lr, wd, seed, layer, swept), _digest(config), agg,
                                          options, group.optimizer, lr, wd, seed, recipe, layer, label))
            trials.append(TrialPlan(
                trial_id=_digest(shared)[:16], grid=grid.name, backbone=backbone_name, dataset=dataset_name,
                **settings, claim_margin=grid.claim_margin, heads=tuple(heads), backbone_entry=backbone,
                dataset_entry=dataset,
                weights=weights.get(backbone_name), weights_sha256=sha256, provenance=dict(provenance or {}),
                limit_train=grid.limit_train,
            ))
    return trials


def recipe_label(name: str | None, options: dict) -> str:
    """The results column: the recipe's name and its options (JSON), "" for the harness's own training."""
    if not name:
        return ""
    return name + (f" {json.dumps(options, sort_keys=True)}" if options else "")


def trained_entry(entry: AggregatorEntry, recipe: Recipe | None) -> AggregatorEntry:
    """The aggregator entry as a recipe trains it: MAE's global pool reads the tokens before the final norm."""
    return replace(entry, tap=recipe.tap_for(entry.kind, entry.tap)) if recipe else entry


def _refuse_unreadable(grid: Grid, agg: AggregatorEntry, options: dict, backbone: BackboneEntry) -> None:
    """A pooling whose official module cannot read this backbone (clip's position table, esimpool's 12-way width
    split, a square grid for cbam and dolg) is a user error before anything runs, not a failed trial."""
    refuse = kinds()[agg.kind].refuse
    if refuse is None:
        return
    tokens, width = token_shape(backbone)
    why = refuse(resolve_options(agg, options), tokens - backbone.num_prefix_tokens, width)
    if why:
        raise HarnessError(f"grid {grid.name!r} ({grid.defined_in}): aggregator {agg.name!r} on backbone "
                           f"{backbone.name!r}: {why}; accepted: backbones it can read, or the grid without "
                           f"[heads.{agg.name}].")


def without_done(trials: list[TrialPlan], done: set[str]) -> list[TrialPlan]:
    """The trials that still have heads without a final result, each keeping only those heads."""
    remaining = []
    for trial in trials:
        heads = tuple(h for h in trial.heads if h.config_hash not in done)
        if heads:
            remaining.append(replace(trial, heads=heads))
    return remaining


# ------------------------------------------------------------------------------------------------ cost

# timm's widths by size name (vit_base_..., beit_base_..., vit_huge_..._gap_...), for entries without embed_dim
_WIDTHS = {"tiny": 192, "small": 384, "base": 768, "large": 1024, "huge": 1280, "giant": 1408}
_DEPTHS = {"tiny": 12, "small": 12, "base": 12, "large": 24, "huge": 32, "giant": 40}


def backbone_depth(entry: BackboneEntry) -> int | None:
    """Blocks of a backbone's architecture, from its overrides or timm's size name; None when neither says."""
    return entry.arch_overrides.get("depth") or next((d for size, d in _DEPTHS.items() if f"_{size}_" in entry.arch),
                                                     None)


def head_taps(trial: TrialPlan, depth: int) -> list[tuple[str, str]]:
    """(aggregator kind, tap) of every block every head of a trial reads."""
    out = []
    for h in trial.heads:
        out += [(h.aggregator.kind, tap) for tap in layer_taps(h.layer, h.aggregator.tap, depth, f"head {h.head_id}")]
    return out


@dataclass(frozen=True)
class TrialCost:
    """What one trial costs before it runs; None where neither the registry nor earlier results say."""

    images: int | None  # images of all splits
    passes: int | None  # images through the backbone: each split once (cached), every train epoch (online)
    cache_bytes: int | None  # token cache of a cached-protocol trial, every split and tap
    cache_by_tap: dict[str, int] | None  # the same per tap (one block's tokens, stored once), in tap order
    knn_gflop: float | None  # the k-NN heads' similarity products (val + test against train), 0 without k-NN
    hours: float | None  # passes / throughput
    throughput: str  # where the images/s came from
    predictions_bytes: int | None = None  # every head's stored test predictions (results store)


def token_shape(entry: BackboneEntry) -> tuple[int, int | None]:
    """(tokens per image, width) of a backbone's output; width None when the arch name does not say."""
    img = entry.arch_overrides.get("img_size", entry.img_size)
    patch = entry.arch_overrides.get("patch_size", entry.patch_size)
    width = entry.arch_overrides.get("embed_dim") or next(
        (w for size, w in _WIDTHS.items() if f"_{size}_" in entry.arch), None)
    return (img // patch) ** 2 + entry.num_prefix_tokens, width


def trial_cost(trial: TrialPlan, *, measured_speed: dict[str, float], measured_images: dict[str, int]) -> TrialCost:
    """Cost of one trial from registered sizes and throughput, else from what earlier results measured."""
    backbone, dataset = trial.backbone_entry, trial.dataset_entry
    sizes = planned_split_sizes(dataset)
    images = sum(sizes.values()) if sizes else measured_images.get(trial.dataset)
    passes = cache = by_tap = knn = None
    untrained = [h for h in trial.heads if not kinds()[h.aggregator.kind].trained]
    if images is not None:
        passes = images
        if trial.protocol == "online":  # every epoch's augmented train split, and once more unaugmented for k-NN
            passes = images + (trial.epochs - (0 if untrained else 1)) * (sizes["train"] if sizes else images)
        tokens, width = token_shape(backbone)
        depth = backbone_depth(backbone)
        if trial.protocol == "cached" and width is not None and depth is not None:
            by_tap = {}
            layouts = summary_taps(head_taps(trial, depth))
            for tap in sorted(layouts, key=lambda t: parse_tap(t, depth)):  # block order, each without then with norm
                summary = layouts[tap]
                stored = backbone.num_prefix_tokens + 1 if summary else tokens  # the prefix tokens and the patch mean
                by_tap[tap] = sum(predict_cache_bytes(n, stored, width, [tap],
                                                      SUMMARY_TOKEN_BYTES if summary else TOKEN_BYTES)
                                  for n in (sizes.values() if sizes else [images]))
            cache = sum(by_tap.values())
        if sizes and width is not None and depth is not None:
            searches = {(h.layer, h.options.get("source")) for h in untrained}  # one per layer x source
            dims = sum(len(layer_taps(layer, "norm", depth)) + (source == "cls_mean") for layer, source in searches)
            knn = 2 * sizes["train"] * (sizes["val"] + sizes["test"]) * width * dims / 1e9
    speed, source = backbone.images_per_s, "registered 1-GPU"
    if speed is None and trial.backbone in measured_speed:
        speed, source = measured_speed[trial.backbone], "measured (earlier results)"
    hours = passes / speed / 3600 if passes is not None and speed else None
    predictions = predictions_bytes(len(trial.heads), sizes["test"]) if sizes else None
    return TrialCost(images, passes, cache, by_tap, knn, hours, source if speed else "unknown", predictions)
