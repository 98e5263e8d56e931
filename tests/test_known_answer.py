"""Known answers on generated tokens: where the label lives decides which aggregator reads it.

Three token worlds (D=32, one [cls] token and 16 patches, 4 classes), each trained through the head bank with a
small lr grid per aggregator, the best lr chosen on val and the test top-1 compared:
- only the [cls] token carries the label: cls >> mean;
- every patch carries it and [cls] is (nearly) their mean: mean ~ cls, each at its own tuned lr;
- it sits in one random patch (flagged by a marker channel) among patches of other classes: the attention
  poolings (abmilp, query, ep) find it, mean pooling drowns it.
"""

from __future__ import annotations

import pytest
import torch

from harness.heads.bank import HeadBank, HeadSpec
from harness.registry import AggregatorEntry
from harness.tokens.cache import TokenSet
from harness.heads.train import total_steps, train_cached
from single_thread import one_thread  # noqa: F401 (autouse fixture)

D, PATCHES, C, BATCH, EPOCHS = 32, 16, 4, 64, 12
CENTRES = torch.randn(C, D, generator=torch.Generator().manual_seed(0)) * 1.5
CENTRES[:, 0] = 0.0  # channel 0 is the marker of the one-patch world
GRIDS = {  # aggregator kind -> (optimizer, lr grid)
    "cls": ("sgd", (0.1, 1.0, 10.0)), "mean": ("sgd", (0.1, 1.0, 10.0)),
    "abmilp": ("adamw", (3e-3, 3e-2)), "query": ("adamw", (3e-3, 3e-2)), "ep": ("adamw", (3e-2, 3e-1)),
}


def world(kind: str, n: int, seed: int) -> TokenSet:
    """`n` token sequences (n, 1 + PATCHES, D) of the named world, float16 as the cache stores them."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    noise = torch.randn(n, 1 + PATCHES, D, generator=g)
    noise[..., 0] = 0.0
    if kind == "cls_only":
        x = noise
        x[:, 0] += CENTRES[labels] * 2
    elif kind == "spread":
        patches = noise[:, 1:] * 12 + CENTRES[labels][:, None]
        x = torch.cat([patches.mean(1, keepdim=True) + 0.1 * noise[:, :1], patches], 1)
    elif kind == "one_patch":
        clutter = CENTRES[torch.randint(0, C, (n, PATCHES), generator=g)]
        where = torch.randint(0, PATCHES, (n,), generator=g)
        clutter[torch.arange(n), where] = CENTRES[labels]
        clutter[torch.arange(n), where, 0] = 8.0
        x = torch.cat([noise[:, :1], clutter + 0.3 * noise[:, 1:]], 1)
    else:
        raise AssertionError(kind)
    x = x.half()
    return TokenSet({"norm": x, "prenorm": x}, labels)


def best_test_top1(kind: str, aggregators: list[str]) -> dict[str, float]:
    """Test top-1 of each aggregator at its val-selected lr."""
    specs = []
    for agg in aggregators:
        optimizer, lrs = GRIDS[agg]
        entry = AggregatorEntry(agg, agg, "norm")
        specs += [HeadSpec(f"{agg}/{lr}", f"{agg}{lr}", entry, {}, optimizer, lr, 0.0, 0) for lr in lrs]
    train, val, test = world(kind, 512, 1), world(kind, 256, 2), world(kind, 256, 3)
    bank = HeadBank(specs, embed_dim=D, num_heads=4, num_prefix_tokens=1, num_classes=C, batch_size=BATCH,
                    total_steps=total_steps(512, BATCH, EPOCHS), warmup_steps=0)
    outcomes = train_cached(bank, train, val, test, epochs=EPOCHS, batch_size=BATCH)
    best: dict[str, tuple[float, float]] = {}
    for s, o in zip(specs, outcomes):
        assert o.status == "ok", (s.head_id, o.error)
        name = s.aggregator.name
        if name not in best or o.val_top1 > best[name][0]:
            best[name] = (o.val_top1, o.test_top1)
    return {name: test for name, (_, test) in best.items()}


def test_label_in_cls_only():
    top1 = best_test_top1("cls_only", ["cls", "mean"])
    assert top1["cls"] >= 90 and top1["mean"] <= 45, top1


def test_label_spread_over_patches():
    top1 = best_test_top1("spread", ["cls", "mean"])
    assert min(top1.values()) >= 80 and abs(top1["cls"] - top1["mean"]) <= 4, top1


@pytest.mark.parametrize("attention", ["abmilp", "query", "ep"])
def test_label_in_one_patch_among_clutter(attention):
    top1 = best_test_top1("one_patch", ["mean", attention])
    assert top1[attention] >= 85 and top1["mean"] <= 55 and top1[attention] - top1["mean"] >= 30, top1
