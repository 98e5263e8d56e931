"""The head bank: every readout head of a trial trained together from the same tokens.

The DINOv2 linear-evaluation pattern, generalised to attention heads: heads live side by side, each with
its own optimizer, schedule, seed-determined initialisation and metrics; their losses are summed into
one backward, which keeps their gradients separate because they share no parameters. Nothing global
couples them (no total-norm clipping, no shared scaler, no NaN check on the summed loss): a head whose
loss or weights turn non-finite is stopped and flagged, and every other head continues bit for bit as if
it had never been there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from harness.aggregators import NotApplicable, build_head
from harness.registry import AggregatorEntry


@dataclass(frozen=True)
class HeadSpec:
    """One head of the bank: an aggregator with its optimizer settings and seed."""

    head_id: str
    config_hash: str
    aggregator: AggregatorEntry
    options: dict
    optimizer: str
    lr: float
    wd: float
    seed: int


@dataclass
class HeadOutcome:
    """What one head produced; `status` is ok, diverged or not-applicable."""

    status: str = "ok"
    error: str = ""
    diverged_step: int | None = None
    train_loss: float | None = None
    val_top1: float | None = None
    val_top5: float | None = None
    test_top1: float | None = None
    test_top5: float | None = None
    curves: list[dict] = field(default_factory=list)


def lr_at(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base lr: linear warmup, then half-cosine to zero (the MAE linear-probe schedule)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(name: str, params: Sequence[nn.Parameter], lr: float, wd: float) -> torch.optim.Optimizer:
    """The published probe optimizers: SGD with momentum (DINOv2 linear), AdamW (V-JEPA attentive probe)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"optimizer {name!r} is not implemented")


class HeadBank:
    """Trains a list of heads on shared token batches; heads never share parameters or state."""

    def __init__(self, specs: Sequence[HeadSpec], *, embed_dim: int, num_heads: int, num_prefix_tokens: int,
                 num_classes: int, total_steps: int, warmup_steps: int, device: torch.device | str = "cpu"):
        self.specs = list(specs)
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.outcomes = [HeadOutcome() for _ in self.specs]
        self.heads: list[nn.Module | None] = []
        self.optimizers: list[torch.optim.Optimizer | None] = []
        self.steps = [0] * len(self.specs)
        self._loss_sum = [0.0] * len(self.specs)
        self._loss_count = [0] * len(self.specs)
        for spec, outcome in zip(self.specs, self.outcomes):
            torch.manual_seed(spec.seed)
            try:
                head = build_head(spec.aggregator, embed_dim=embed_dim, num_heads=num_heads,
                                  num_prefix_tokens=num_prefix_tokens, num_classes=num_classes,
                                  options=spec.options).to(device)
            except NotApplicable as e:
                outcome.status, outcome.error = "not-applicable", str(e)
                self.heads.append(None)
                self.optimizers.append(None)
                continue
            self.heads.append(head)
            self.optimizers.append(make_optimizer(spec.optimizer, list(head.parameters()), spec.lr, spec.wd))

    @property
    def taps(self) -> list[str]:
        """The token taps the live heads read, in a fixed order."""
        return sorted({h.tap for h in self.heads if h is not None})

    def live(self, indices: Iterable[int] | None = None) -> list[int]:
        """Indices of heads still training (not diverged, applicable), optionally within `indices`."""
        pool = range(len(self.specs)) if indices is None else indices
        return [i for i in pool if self.heads[i] is not None and self.outcomes[i].status == "ok"]

    def step(self, tokens: Mapping[str, torch.Tensor], labels: torch.Tensor, heads: Iterable[int] | None = None) -> None:
        """One optimisation step of the given heads (default: all live ones) on one batch."""
        active = self.live(heads)
        losses = []
        for i in active:
            head = self.heads[i]
            head.train()
            losses.append(nn.functional.cross_entropy(head(tokens[head.tap].float()), labels))
        if not losses:
            return
        for opt in (self.optimizers[i] for i in active):
            opt.zero_grad(set_to_none=True)
        torch.autograd.backward(losses)
        for i, loss in zip(active, losses):
            value = loss.item()
            if not math.isfinite(value):
                self._diverge(i, f"non-finite training loss ({value})")
                continue
            for group in self.optimizers[i].param_groups:
                group["lr"] = self.specs[i].lr * lr_at(self.steps[i], self.total_steps, self.warmup_steps)
            self.optimizers[i].step()
            self.steps[i] += 1
            if not all(torch.isfinite(p).all() for p in self.heads[i].parameters()):
                self._diverge(i, "non-finite weights after the optimizer step")
                continue
            self._loss_sum[i] += value
            self._loss_count[i] += 1

    def _diverge(self, i: int, why: str) -> None:
        outcome = self.outcomes[i]
        outcome.status, outcome.error, outcome.diverged_step = "diverged", why, self.steps[i]
        self.optimizers[i] = None  # frees its state; the head is never stepped again

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[Mapping[str, torch.Tensor], torch.Tensor]]) -> list[tuple[float, float] | None]:
        """Top-1 and top-5 accuracy (percent) of every live head; None for the others."""
        active = self.live()
        correct1 = dict.fromkeys(active, 0)
        correct5 = dict.fromkeys(active, 0)
        total = 0
        for tokens, labels in batches:
            total += len(labels)
            for i in active:
                head = self.heads[i]
                head.eval()
                logits = head(tokens[head.tap].float())
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                hits = top == labels[:, None]
                correct1[i] += int(hits[:, 0].sum())
                correct5[i] += int(hits.any(dim=1).sum())
        out: list[tuple[float, float] | None] = [None] * len(self.specs)
        for i in active:
            out[i] = (100.0 * correct1[i] / max(total, 1), 100.0 * correct5[i] / max(total, 1))
        return out

    def end_epoch(self, epoch: int, val: list[tuple[float, float] | None]) -> None:
        """Record each live head's epoch curve point and reset its running loss."""
        for i in self.live():
            loss = self._loss_sum[i] / max(self._loss_count[i], 1)
            self.outcomes[i].train_loss = loss
            self.outcomes[i].curves.append({
                "epoch": epoch,
                "lr": self.specs[i].lr * lr_at(max(self.steps[i] - 1, 0), self.total_steps, self.warmup_steps),
                "train_loss": loss,
                "val_top1": val[i][0] if val[i] else None,
            })
            self._loss_sum[i], self._loss_count[i] = 0.0, 0

    def finish(self, val: list[tuple[float, float] | None], test: list[tuple[float, float] | None]) -> list[HeadOutcome]:
        """Store the final validation and test metrics of the live heads and return every outcome."""
        for i in self.live():
            o = self.outcomes[i]
            o.val_top1, o.val_top5 = val[i]
            o.test_top1, o.test_top5 = test[i]
        return self.outcomes
