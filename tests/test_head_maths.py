"""Independent checks of the bank's hand-written maths: a one-head linear group (its cross-entropy gradient is
written out by hand) equals nn.Linear + F.cross_entropy + torch.optim.SGD / AdamW step for step, and the
schedules equal tables of values worked out by hand. Data, sizes and tolerances come from the dinov2_linear
recipe fixture's manifest (tests/fixtures/recipes, or HARNESS_FIXTURES_DIR)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from harness.heads.bank import HeadBank, HeadSpec
from harness.heads.recipes import harness_default, lr_factor, resolve, wd_at
from harness.registry import AggregatorEntry
from conftest import manifests
from single_thread import one_thread  # noqa: F401 (autouse fixture)

MIN_STEPS = 20


def _fixture() -> tuple[dict, dict]:
    path = next(p for p in manifests("recipe") if json.loads(p.read_text())["recipe"] == "dinov2_linear")
    return json.loads(path.read_text()), torch.load(path.parent / "data.pt", weights_only=True)


def _one_head_bank(spec: HeadSpec, m: dict, steps: int, warmup: int) -> HeadBank:
    s = m["sizes"]
    return HeadBank([spec], embed_dim=s["D"], num_heads=1, num_prefix_tokens=s["T"] - s["n_patch_tokens"],
                    num_classes=s["C"], batch_size=s["B"], total_steps=steps, warmup_steps=warmup)


def _compare(bank: HeadBank, reference: nn.Module, optimizer: torch.optim.Optimizer, scheduler, m: dict,
             data: dict, steps: int) -> None:
    """Train both on the fixture's batches (cycled to `steps`); the loss and parameters agree after every step."""
    tol = m["tolerance"]
    state = bank.head_state(0)
    with torch.no_grad():
        reference.linear.weight.copy_(state["linear.weight"])
        reference.linear.bias.copy_(state["linear.bias"])
    order = data["batch_order"]
    for step in range(steps):
        idx = order[step % len(order)]
        tokens, labels = data["train_tokens"][idx], data["train_labels"][idx]
        bank.step({"norm": tokens}, labels)
        loss = F.cross_entropy(reference(tokens[:, 0]), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        assert abs(bank.last_step(0)["losses"][0] - loss.item()) <= tol["loss_atol"], step
        state = bank.head_state(0)
        for name in ("linear.weight", "linear.bias"):
            err = (state[name] - dict(reference.named_parameters())[name]).abs().max().item()
            assert err <= tol["params_atol"], f"{name} after step {step + 1}: {err:.3g}"


class _Reference(nn.Module):
    def __init__(self, dim: int, classes: int, batchnorm: bool):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if batchnorm else nn.Identity()
        self.linear = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_linear_group_equals_torch_sgd(wd: float):
    """dinov2-linear: no normalisation, SGD momentum 0.9 with torch's own CosineAnnealingLR; a gradient that is
    not divided by the batch size (or any other slip in the hand-written backward) fails here."""
    m, data = _fixture()
    steps = max(MIN_STEPS, m["sizes"]["K"])
    lr = m["hyperparameters"]["learning_rates"][-1]
    spec = HeadSpec("cls", "h", AggregatorEntry("cls", "cls", "norm"), {}, "sgd", lr, wd, 0, resolve("dinov2-linear"))
    bank = _one_head_bank(spec, m, steps, warmup=0)
    reference = _Reference(m["sizes"]["D"], m["sizes"]["C"], batchnorm=False)
    sgd = torch.optim.SGD(reference.parameters(), lr=lr * m["sizes"]["B"] / 256, momentum=0.9, weight_decay=wd)
    _compare(bank, reference, sgd, torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=steps), m, data, steps)


def test_linear_group_equals_torch_adamw():
    """A group without a recipe, AdamW: BatchNorm1d(affine=False, eps 1e-6) + Linear against torch's modules and
    AdamW (decoupled decay of every parameter), the harness schedule written out independently."""
    m, data = _fixture()
    steps, warmup, lr, wd = max(MIN_STEPS, m["sizes"]["K"]), 3, 3e-3, 0.05
    spec = HeadSpec("cls", "h", AggregatorEntry("cls", "cls", "norm"), {}, "adamw", lr, wd, 0)
    bank = _one_head_bank(spec, m, steps, warmup)
    reference = _Reference(m["sizes"]["D"], m["sizes"]["C"], batchnorm=True)
    adamw = torch.optim.AdamW(reference.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    _compare(bank, reference, adamw, torch.optim.lr_scheduler.LambdaLR(adamw, schedule), m, data, steps)


# Schedules over 10 steps with 2 of warmup, worked out by hand: cos(pi/8) = 0.9238795325112867,
# cos(pi/4) = 0.7071067811865476, cos(3 pi/8) = 0.3826834323650898; 0.5 * (1 + c) for the cosine entries.
HAND = {
    "mae": [0.0, 0.5, 1.0, 0.9619397662556434, 0.8535533905932738, 0.6913417161825449, 0.5, 0.3086582838174551,
            0.1464466094067262, 0.0380602337443566],
    "harness": [0.5, 1.0, 1.0, 0.9619397662556434, 0.8535533905932738, 0.6913417161825449, 0.5,
                0.3086582838174551, 0.1464466094067262, 0.0380602337443566],
    # V-JEPA at start_lr = lr / 10: step s = i + 1; s = 1 is warmup (0.1 + 0.9 / 2); s = 2 .. 10 cosine over 8
    "vjepa": [0.55, 1.0, 0.9619397662556434, 0.8535533905932738, 0.6913417161825449, 0.5, 0.3086582838174551,
              0.1464466094067262, 0.0380602337443566, 0.0],
}
# DINOv2's CosineAnnealingLR over 8 steps (no warmup): 0.5 * (1 + cos(pi * i / 8)).
HAND_COSINE = [1.0, 0.9619397662556434, 0.8535533905932738, 0.6913417161825449, 0.5, 0.3086582838174551,
               0.1464466094067262, 0.0380602337443566]
# V-JEPA's CosineWDSchedule from 0.1 to 1e-6 over 4 steps, stepped before each forward: s = 1 .. 4.
HAND_WD = [1e-6 + (0.1 - 1e-6) * 0.8535533905932738, 1e-6 + (0.1 - 1e-6) * 0.5,
           1e-6 + (0.1 - 1e-6) * 0.1464466094067262, 1e-6]


@pytest.mark.parametrize("schedule", sorted(HAND))
def test_lr_schedule_equals_the_hand_table(schedule: str):
    recipe = {"mae": resolve("mae-linprobe"), "harness": harness_default("lars"),
              "vjepa": resolve("vjepa-attentive", {"warmup_start": 0.1})}[schedule]
    assert [lr_factor(recipe, i, 10, 2) for i in range(10)] == pytest.approx(HAND[schedule], rel=1e-12, abs=1e-15)


def test_cosine_and_wd_schedules_equal_the_hand_tables():
    dinov2 = resolve("dinov2-linear")
    assert [lr_factor(dinov2, i, 8, 3) for i in range(8)] == pytest.approx(HAND_COSINE, rel=1e-12)  # no warmup
    vjepa = resolve("vjepa-attentive")
    assert [wd_at(vjepa, 0.1, i, 4) for i in range(4)] == pytest.approx(HAND_WD, rel=1e-12)
    assert wd_at(dinov2, 0.1, 3, 4) == 0.1  # a constant wd elsewhere
