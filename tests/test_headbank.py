"""The head bank: a bank of heads equals each head trained alone (bit for bit, divergence included), the optimizer
presets follow their published updates, and cached and online training agree when they see the same batches."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from harness.heads.head import build_head
from harness.heads.optim import effective_lr, new_state, update
from harness.heads.bank import HeadBank, HeadSpec
from harness.heads.recipes import harness_default, lr_factor
from harness.registry import AggregatorEntry
from harness.tokens.cache import TokenSet
from harness.data.order import epoch_order
from harness.heads.train import online_loader, token_batches, train_cached, train_online
from single_thread import one_thread  # noqa: F401 (autouse fixture)

D, T, C, PREFIX, HEADS = 16, 9, 5, 1, 4
AGG = {
    "cls": AggregatorEntry("cls", "cls", "norm"),
    "mean": AggregatorEntry("mean", "mean", "norm"),
    "abmilp": AggregatorEntry("abmilp", "abmilp", "prenorm"),
    "query": AggregatorEntry("query", "query", "norm"),
    "ep": AggregatorEntry("ep", "ep", "prenorm", {"num_queries": 2}),
    "abmilp-sa": AggregatorEntry("abmilp-sa", "abmilp", "norm", {"self_attention": "both", "depth": 2}),
    "query-2": AggregatorEntry("query-2", "query", "prenorm", {"depth": 2, "num_queries": 2}),
}


def spec(agg: str, optimizer: str, lr: float, seed: int = 0, wd: float = 0.0) -> HeadSpec:
    return HeadSpec(f"{agg}/{optimizer}/{lr}/{seed}", f"{agg}{optimizer}{lr}{seed}{wd}", AGG[agg], {}, optimizer,
                    lr, wd, seed)


def tokens(n: int, seed: int) -> TokenSet:
    """float16-exact tokens whose [cls] token and patch mean both carry the label."""
    centres = torch.randn(C, D, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    x = torch.randn(n, T, D, generator=g) + centres[labels][:, None]
    x = x.half()
    return TokenSet({"norm": x, "prenorm": (x * 2).half()}, labels)


def bank(specs: list[HeadSpec], *, steps: int = 12, batch_size: int = 16) -> HeadBank:
    return HeadBank(specs, embed_dim=D, num_heads=HEADS, num_prefix_tokens=PREFIX, num_classes=C,
                    batch_size=batch_size, total_steps=steps, warmup_steps=2)


def train(specs: list[HeadSpec], epochs: int = 3, batch_size: int = 16) -> tuple[HeadBank, list]:
    b = bank(specs, steps=epochs * (64 // batch_size), batch_size=batch_size)
    outcomes = train_cached(b, tokens(64, 1), tokens(40, 2), tokens(40, 3), epochs=epochs, batch_size=batch_size)
    return b, outcomes


BANK = [spec("cls", "sgd", 0.1), spec("cls", "sgd", 1.0), spec("cls", "sgd", 1.0, seed=1),
        spec("mean", "lars", 0.5), spec("mean", "lars", 0.05, wd=0.1), spec("cls", "adamw", 1e-3, wd=0.05),
        spec("mean", "sgd", 0.3), spec("mean", "sgd", math.inf),  # diverges at its first step, in a stack of two
        spec("abmilp", "sgd", 0.1), spec("ep", "adamw", 1e-2, seed=1), spec("query", "lars", 0.1),
        spec("ep", "sgd", 1e37),  # an attention head that diverges, in a stack of two
        spec("ep", "sgd", 0.2), spec("abmilp", "sgd", 0.3), spec("ep", "adamw", 1e-3, seed=1),
        spec("query", "lars", 0.02, wd=0.1), spec("abmilp-sa", "lars", 0.2), spec("abmilp-sa", "lars", 0.05),
        spec("query-2", "adamw", 1e-3), spec("query-2", "adamw", 3e-3)]


LINEAR_KINDS = ("cls", "mean")
# An attention stack runs its heads through batched matmuls (bmm) where a head alone runs plain ones; on CPUs with
# AVX-512 the two kernels block their float32 reductions differently, so a stacked attention head drifts from its
# lone twin by a few float32 ulps per step (6e-10 to 1e-6 after this test's 12 steps). Linear groups use the same
# kernel either way and stay bit for bit.
ATTENTION_TOL = {"rtol": 1e-4, "atol": 1e-5}


def _numbers(outcome) -> list[float]:
    """An outcome's accuracies and losses, its curves' included, flat (NaN for a diverged head's missing ones)."""
    fields = [v for k, v in dataclasses.asdict(outcome).items() if k not in ("status", "error", "diverged_step",
                                                                             "curves", "test_predicted")]
    fields += [v for epoch in outcome.curves for v in epoch.values()]
    return [math.nan if v is None else float(v) for v in fields]


def test_bank_equals_heads_trained_alone_bit_for_bit_where_linear():
    """Linear groups: bit for bit. Attention stacks: within float32 rounding (ATTENTION_TOL), same statuses and
    divergence steps."""
    together, outcomes = train(BANK)
    assert [o.status for o in outcomes].count("diverged") == 2
    for i, s in enumerate(BANK):
        alone, (outcome,) = train([s])
        mine, theirs = together.parameters_of(i), alone.parameters_of(0)
        assert len(mine) == len(theirs)
        if s.aggregator.kind in LINEAR_KINDS:
            assert outcome == outcomes[i], s.head_id
            assert all(torch.equal(a, b) for a, b in zip(mine, theirs)), s.head_id
            continue
        assert _numbers(outcomes[i]) == pytest.approx(_numbers(outcome), rel=ATTENTION_TOL["rtol"],
                                                     abs=ATTENTION_TOL["atol"], nan_ok=True), s.head_id
        assert (outcomes[i].status, outcomes[i].error, outcomes[i].diverged_step) == \
            (outcome.status, outcome.error, outcome.diverged_step), s.head_id
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, **ATTENTION_TOL, msg=s.head_id)


@pytest.mark.parametrize("agg", ["abmilp", "abmilp-sa", "query", "query-2", "ep"])
def test_an_attention_stack_computes_what_each_head_module_computes(agg: str):
    """The stacked pooling, BatchNorm and linear layer equal the heads' own modules, in training and evaluation."""
    specs = [spec(agg, "sgd", lr) for lr in (0.1, 0.2, 0.3)]
    b = bank(specs)
    (group,) = b.groups
    modules = []
    for s in specs:
        torch.manual_seed(s.seed)
        modules.append(build_head(s.aggregator, embed_dim=D, num_heads=HEADS, num_prefix_tokens=PREFIX,
                                  num_classes=C))
    x = tokens(16, 4).tokens[specs[0].aggregator.tap].float()
    with torch.no_grad():
        for p in (*group.params, *(q for m in modules for q in m.parameters())):
            p.add_(0.1)  # every head differs from its initialisation the same way
        for train in (True, False):
            want = torch.stack([m.train(train)(x) for m in modules])
            torch.testing.assert_close(group.logits(x, train=train), want, rtol=1e-5, atol=1e-5)


def test_divergence_is_recorded_with_its_step_and_stops_only_that_head():
    b, outcomes = train([spec("mean", "sgd", math.inf), spec("mean", "sgd", 0.5)])
    bad, good = outcomes
    assert bad.status == "diverged" and bad.diverged_step == 0
    assert "non-finite" in bad.error and bad.val_top1 is None and b.parameters_of(0) == []
    assert good.status == "ok" and good.val_top1 > 100 / C and len(good.curves) == 3
    assert b.live() == [1]


def test_not_applicable_head_is_recorded_and_the_rest_train():
    b = HeadBank([spec("cls", "sgd", 0.1), spec("mean", "sgd", 0.1)], embed_dim=D, num_heads=HEADS,
                 num_prefix_tokens=0, num_classes=C, batch_size=16, total_steps=4, warmup_steps=0)
    assert b.outcomes[0].status == "not-applicable" and b.live() == [1]


def test_curves_record_the_effective_lr_of_each_epoch():
    _, (sgd, adamw) = train([spec("cls", "sgd", 0.4), spec("cls", "adamw", 0.4)], epochs=2)
    steps_per_epoch, total = 4, 8
    assert sgd.curves[0]["lr"] == pytest.approx(0.4 * 16 / 256 * lr_factor(harness_default("sgd"), steps_per_epoch - 1, total, 2))
    assert adamw.curves[1]["lr"] == pytest.approx(0.4 * lr_factor(harness_default("adamw"), total - 1, total, 2))
    assert effective_lr("lars", 0.1, 1024) == pytest.approx(0.4)


def _torch_reference(name: str, p: torch.Tensor, grads: list[torch.Tensor], lr: float, wd: float) -> torch.Tensor:
    p = p.clone().requires_grad_()
    opt = {"sgd": lambda: torch.optim.SGD([p], lr=lr, momentum=0.9, weight_decay=wd),
           "adamw": lambda: torch.optim.AdamW([p], lr=lr, weight_decay=wd)}[name]()
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def _lars_reference(p: torch.Tensor, grads: list[torch.Tensor], lr: float, wd: float) -> torch.Tensor:
    """LARS as the MAE linear probe describes it: wd and trust ratio 0.001 * |p| / |g + wd p| on matrices only."""
    p, mu = p.clone(), torch.zeros_like(p)
    for g in grads:
        d = g + wd * p if p.dim() > 1 else g
        if p.dim() > 1:
            d = d * (0.001 * p.norm() / d.norm())
        mu = 0.9 * mu + d
        p = p - lr * mu
    return p


@pytest.mark.parametrize("name", ["sgd", "lars", "adamw"])
@pytest.mark.parametrize("shape", [(3, 4), (3,)])
def test_presets_follow_the_published_updates(name, shape):
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(shape, generator=g)
    grads = [torch.randn(shape, generator=g) for _ in range(3)]
    lrs, wds = [0.3, 0.01], [0.0, 0.05]
    stacked = torch.stack([p0, p0])
    state = new_state(name, [stacked])
    for step, grad in enumerate(grads):
        update(name, [stacked], [torch.stack([grad, grad])], state, lr=torch.tensor(lrs), wd=torch.tensor(wds),
               step=step)
    for k in range(2):
        ref = (_lars_reference(p0, grads, lrs[k], wds[k]) if name == "lars"
               else _torch_reference(name, p0, grads, lrs[k], wds[k]))
        torch.testing.assert_close(stacked[k], ref, rtol=1e-6, atol=1e-7)


class Fp16Backbone:
    """Tokens as a cached run stores them (float16-exact): [cls] is the mean of 4 pixel patches of 2x2."""

    def forward_taps(self, images: torch.Tensor, taps: list[str]) -> dict[str, torch.Tensor]:
        patches = images.unfold(2, 2, 2).unfold(3, 2, 2).flatten(2, 3).flatten(3).transpose(1, 2).flatten(2)
        x = torch.cat([patches.mean(1, keepdim=True), patches], 1)[..., :D].half().float()
        return {tap: x for tap in taps}


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % C
        self.x = torch.randn(n, 4, 4, 4, generator=g) + self.labels[:, None, None, None] * 0.5

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.x[i], int(self.labels[i])


def _token_set(backbone: Fp16Backbone, data: Images) -> TokenSet:
    taps = backbone.forward_taps(data.x, ["norm", "prenorm"])
    return TokenSet({tap: x.half() for tap, x in taps.items()}, data.labels)


def test_cached_and_online_train_the_same_heads_when_they_see_the_same_batches():
    specs = [spec("cls", "sgd", 0.5, seed=3), spec("mean", "lars", 0.2, seed=3), spec("mean", "sgd", math.inf, seed=3),
             spec("ep", "adamw", 1e-2, seed=3), spec("ep", "adamw", 1e-3, seed=3)]
    backbone, train_images = Fp16Backbone(), Images(48, 1)
    val, test = _token_set(backbone, Images(20, 2)), _token_set(backbone, Images(20, 3))
    cached_bank, online_bank = bank(specs, steps=9), bank(specs, steps=9)
    cached = train_cached(cached_bank, _token_set(backbone, train_images), val, test, epochs=3, batch_size=16)
    loader = online_loader(train_images, batch_size=16, seed=3)
    online, passes = train_online(online_bank, backbone, loader, val, test, epochs=3, forward_chunk=5)
    assert passes == 3 * 48 and online == cached and cached[2].status == "diverged"
    for i in (0, 1, 3, 4):
        assert all(torch.equal(a, b) for a, b in zip(cached_bank.parameters_of(i), online_bank.parameters_of(i)))


def test_epoch_order_depends_on_seed_and_epoch_only():
    assert torch.equal(epoch_order(50, 1, 2), epoch_order(50, 1, 2))
    assert not torch.equal(epoch_order(50, 1, 2), epoch_order(50, 2, 1))
    assert sorted(epoch_order(50, 0, 0).tolist()) == list(range(50))


def test_evaluation_counts_top1_and_top5():
    b = bank([spec("cls", "sgd", 0.1)])
    data = tokens(20, 5)
    predicted = []
    top1, top5 = b.evaluate(token_batches(data, ["norm"], 8, "cpu"), predictions=predicted)[0]
    assert 0 <= top1 <= 100.0 and math.isclose(top1 * 20 / 100, round(top1 * 20 / 100))
    assert C <= 5 and top5 is None  # with 5 classes or fewer top-5 is always 100: reported as missing
    assert 100.0 * float((predicted[0] == data.labels).float().mean()) == pytest.approx(top1)


def test_online_bank_stacks_seeds_together_and_equals_each_head_trained_alone():
    specs = [spec("cls", "sgd", 0.5, seed=0), spec("cls", "sgd", 0.5, seed=1), spec("mean", "lars", 0.2, seed=2),
             spec("mean", "lars", 0.2, seed=0), spec("cls", "sgd", math.inf, seed=1),
             spec("ep", "adamw", 1e-2, seed=0), spec("ep", "adamw", 3e-3, seed=1), spec("abmilp", "sgd", 0.1, seed=2)]
    backbone, train_images = Fp16Backbone(), Images(32, 1)
    val = _token_set(backbone, Images(20, 2))

    def online(heads: list[HeadSpec]) -> tuple[HeadBank, list]:
        b = HeadBank(heads, embed_dim=D, num_heads=HEADS, num_prefix_tokens=PREFIX, num_classes=C, batch_size=16,
                     total_steps=4, warmup_steps=1, shared_order=True)
        return b, train_online(b, backbone, online_loader(train_images, batch_size=16, seed=7), val, val,
                               epochs=2)[0]

    together, outcomes = online(specs)
    assert len(together.groups) == 4 and outcomes[4].status == "diverged"
    for i, s in enumerate(specs):
        alone, (outcome,) = online([s])
        assert outcome == outcomes[i]
        assert all(torch.equal(a, b) for a, b in zip(together.parameters_of(i), alone.parameters_of(0)))


def test_online_stops_running_the_backbone_once_every_head_diverged():
    backbone, train_images = Fp16Backbone(), Images(32, 1)
    val = _token_set(backbone, Images(20, 2))
    outcomes, passes = train_online(bank([spec("cls", "sgd", math.inf)], steps=6), backbone,
                                    online_loader(train_images, batch_size=16, seed=0), val, val, epochs=3)
    assert passes == 32 and outcomes[0].status == "diverged" and outcomes[0].diverged_step == 0


# Efficient probing's other poolings: a square patch grid (cbam, dolg, clip) and a width every kind divides.
EP_D, EP_SIDE = 48, 4
EP_OPTIONS = {"clip": {"feat_size": EP_SIDE}, "aim": {"num_heads": 16}, "jepa": {"num_heads": 16}}


def ep_tokens(n: int, seed: int) -> TokenSet:
    centres = torch.randn(C, EP_D, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % C
    x = torch.randn(n, 1 + EP_SIDE ** 2, EP_D, generator=torch.Generator().manual_seed(seed)) + centres[labels][:, None]
    return TokenSet({"prenorm": x.half()}, labels)


def ep_train(specs: list[HeadSpec]) -> tuple[HeadBank, list]:
    b = HeadBank(specs, embed_dim=EP_D, num_heads=HEADS, num_prefix_tokens=PREFIX, num_classes=C, batch_size=16,
                 total_steps=8, warmup_steps=2)
    return b, train_cached(b, ep_tokens(32, 1), ep_tokens(24, 2), ep_tokens(24, 3), epochs=2, batch_size=16)


@pytest.mark.parametrize("kind", ["simpool", "esimpool", "clip", "siglip", "aim", "cbam", "coca", "cait", "dinovit",
                                  "jepa", "dolg", "cae"])
def test_efficient_probing_poolings_train_in_a_stack_bit_for_bit_as_alone(kind: str):
    """Heads of one kind differing in lr, wd and seed: the stack (with each head's own inner BatchNorm statistics
    for aim, cbam and dolg) equals each head trained alone, parameters, metrics and curves."""
    agg = AggregatorEntry(kind, kind, "prenorm", EP_OPTIONS.get(kind, {}))
    specs = [HeadSpec(f"{kind}/{i}", f"{kind}{i}", agg, {}, "lars", lr, wd, seed)
             for i, (lr, wd, seed) in enumerate([(0.1, 0.0, 0), (0.4, 0.0, 0), (0.2, 0.05, 0), (0.1, 0.0, 1)])]
    together, outcomes = ep_train(specs)
    assert len(together.groups) == 2  # one stack per seed (cached protocol), three heads in the first
    for i, s in enumerate(specs):
        alone, (outcome,) = ep_train([s])
        assert outcome == outcomes[i] and outcome.status == "ok", s.head_id
        assert all(torch.equal(a, b) for a, b in zip(together.parameters_of(i), alone.parameters_of(0))), s.head_id
