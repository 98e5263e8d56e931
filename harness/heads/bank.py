"""The head bank: every readout head of a trial trained together from the same tokens.

The DINOv2 linear-evaluation pattern, generalised to attention heads: heads live side by side, each with its own
training recipe (harness/heads/recipes.py: optimizer, decay groups, lr and wd schedules, clipping, accumulation),
lr, wd, seed-determined initialisation and metrics, and they share no parameters. Nothing global couples them
(a recipe's clipping is of each head's own gradient norm; no shared scaler, no check on a summed loss).

Heads that step together (the same aggregator, options, recipe and data order: the same seed, or any seed with
`shared_order`, as in the online protocol) are kept in groups with their parameters stacked on a leading head axis:
- linear groups: heads whose pooling has no parameters ([cls], mean). Their pooling and BatchNorm (affine=False,
  so a function of the batch alone: every head of the group would compute the same numbers and the same running
  statistics) run once per batch, then one batched matmul gives every head's logits, and one optimizer update
  moves all heads with per-head lr and wd tensors.
- attention groups (abmilp, query, ep): the pooler pools the shared tokens for every head of the stack in batched
  kernels (`StackedPool.stacked`), then per-head BatchNorm and linear layers; one autograd pass, one update.
A head's products are matrices of their own, of the same shapes whatever its stack, so in one CPU thread a head
computes bit for bit what it computes alone (the tests); with several threads or on a GPU a kernel may split a
reduction differently for another stack size, a rounding-level difference (bench/head_bank.py reports it).
Divergence is tracked on the device without a sync per step: a head whose loss or weights turn non-finite is
marked with the step where it happened; at the next evaluation (every epoch) it is recorded as diverged and
removed from its stack. Until then its non-finite numbers stay in its own slice (every operation is per head),
so every other head's results are the same as without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from harness.heads import recipes
from harness.heads.head import Head, build_head
from harness.heads.kinds import NotApplicable
from harness.heads.pool.kernels import StackedPool, stat_buffers
from harness.heads.optim import clip_per_head, new_state, update
from harness.heads.spec import HeadSpec
from harness.tokens.layers import layer_blocks, layer_taps


def head_input(tokens: Mapping[str, Tensor], taps: Sequence[str]) -> Tensor:
    """A head's input: its taps' tokens, concatenated along the channels when it reads several blocks."""
    return tokens[taps[0]] if len(taps) == 1 else torch.cat([tokens[t] for t in taps], dim=-1)


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
    test_top5: float | None = None  # None also where the dataset has 5 classes or fewer (top-5 would be 100)
    curves: list[dict] = field(default_factory=list)
    # (N,) top-1 class of every test image, in test-split order (compared by the tests, not by ==)
    test_predicted: Tensor | None = field(default=None, compare=False)


_WHY = ("non-finite training loss", "non-finite weights after the optimizer step")


class _Group:
    """Heads that step together: one data order, one recipe, parameters stacked on a head axis."""

    def __init__(self, members: list[int], specs: Sequence[HeadSpec], heads: list[Head], taps: tuple[str, ...],
                 batch_size: int, device: torch.device):
        self.members, self.taps = members, taps
        first = specs[members[0]]
        self.seeds = {specs[i].seed for i in members}
        self.recipe = first.training
        self.optimizer = self.recipe.optimizer
        self.base_lr = torch.tensor([recipes.effective_lr(self.recipe, specs[i].lr, batch_size) for i in members],
                                    dtype=torch.float64, device=device)
        self.ref_wd = [specs[i].wd for i in members]
        wd = torch.tensor(self.ref_wd, dtype=torch.float32, device=device)
        # None: no decay pass at all (exact when every head's wd is 0 at every step)
        self.wd = wd if any(self.ref_wd) or self.recipe.final_wd else None
        self.decayed = [recipes.decayed(self.recipe, name, p.dim() - 1)
                        for name, p in zip(self.names(), self.stacked())]
        self.step = 0
        self.forwards = 0  # training forwards: the BatchNorm's num_batches_tracked
        self.last: tuple[Tensor, Tensor | None, list[Tensor]] | None = None  # lr, wd and losses of the last step
        self.bad_step = torch.full((len(members),), -1, dtype=torch.int64, device=device)
        self.bad_why = torch.zeros(len(members), dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros(len(members), dtype=torch.float64, device=device)
        self.loss_count = 0
        self.state = new_state(self.optimizer, self.stacked())

    def stacked(self) -> list[Tensor]:
        """The parameters as (N, ...) tensors that share storage with the trained ones."""
        raise NotImplementedError

    def statistics(self) -> dict[str, Tensor]:
        """Running statistics inside the poolings by name in the pooler, (N, ...) each (aim, cbam, dolg)."""
        return {}

    def names(self) -> list[str]:
        """The parameters' names in a head module (`pooler.*`, `linear.weight`, `linear.bias`), as `stacked()`."""
        raise NotImplementedError

    def head_state(self, slot: int) -> dict[str, Tensor]:
        """One head's parameters and BatchNorm statistics as views under its module's names (linear weight
        (C, D)); writing into them sets the head."""
        state = {name: p[slot] for name, p in zip(self.names(), self.stacked())}
        state["linear.weight"] = state["linear.weight"].T
        state |= {f"pooler.{name}": v[slot] for name, v in self.statistics().items()}
        running = self.running_stats()
        if running is not None:
            state |= {"norm.running_mean": running[0][slot], "norm.running_var": running[1][slot],
                      "norm.num_batches_tracked": torch.tensor(self.forwards)}
        return state

    def running_stats(self) -> tuple[Tensor, Tensor] | None:
        """(N, D') running mean and variance of the heads' BatchNorm, None without one."""
        raise NotImplementedError

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor training changes, by name (parameters, statistics, optimizer state, bookkeeping): what a
        checkpoint saves, and restores by copying into these."""
        out = {f"param.{k}": p for k, p in enumerate(self.stacked())}
        out |= {f"stat.{name}": v for name, v in self.statistics().items()}
        out |= {f"opt.{k}.{key}": v for k, s in enumerate(self.state) for key, v in s.items()}
        return out | {"bad_step": self.bad_step, "bad_why": self.bad_why, "loss_sum": self.loss_sum}

    def logits(self, tokens: Tensor, train: bool) -> Tensor:
        """(N, B, num_classes) logits of every head of the group."""
        raise NotImplementedError

    def loss_and_grads(self, tokens: Tensor, labels: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(N,) mean cross-entropy of each head on the batch, and the gradients as `stacked()` lays them out."""
        raise NotImplementedError

    def keep(self, slots: list[int]) -> None:
        """Drop every head but `slots` (positions within the group)."""
        index = torch.tensor(slots, dtype=torch.long, device=self.bad_step.device)
        self.members = [self.members[s] for s in slots]
        self.base_lr, self.wd = self.base_lr[index], None if self.wd is None else self.wd[index]
        self.ref_wd = [self.ref_wd[s] for s in slots]
        self.bad_step, self.bad_why, self.loss_sum = self.bad_step[index], self.bad_why[index], self.loss_sum[index]
        self.state = [{k: v[index] for k, v in s.items()} for s in self.state]

    def _accumulated(self, tokens: Tensor, labels: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Each micro-batch's (N,) losses and the gradients of their mean: the recipe's `accum_iter` forwards, each
        with its own BatchNorm statistics, as the scripts divide each loss by accum_iter before backward."""
        accum = self.recipe.accum_iter
        losses, total = [], None
        for part_tokens, part_labels in zip(tokens.tensor_split(accum), labels.tensor_split(accum)):
            loss, grads = self.loss_and_grads(part_tokens, part_labels)
            self.forwards += 1
            losses.append(loss)
            if accum == 1:
                return losses, grads
            total = [g / accum for g in grads] if total is None else [t.add_(g, alpha=1 / accum)
                                                                      for t, g in zip(total, grads)]
        return losses, total

    def train_step(self, tokens: Tensor, labels: Tensor, total_steps: int, warmup_steps: int) -> None:
        """Loss, gradients, clipping and the optimizer step of every head at the recipe's lr and wd of this step,
        then the per-head non-finite bookkeeping."""
        losses, grads = self._accumulated(tokens, labels)
        with torch.no_grad():
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean(0)
            if self.recipe.clip is not None:
                clip_per_head(grads, self.recipe.clip)
            lr = self.base_lr * recipes.lr_factor(self.recipe, self.step, total_steps, warmup_steps)  # float64
            wd = self.wd
            if wd is not None and self.recipe.final_wd is not None:
                wd = torch.tensor([recipes.wd_at(self.recipe, w, self.step, total_steps) for w in self.ref_wd],
                                  dtype=torch.float64, device=lr.device)
            self.last = (lr, wd, losses)
            params = self.stacked()
            update(self.optimizer, params, grads, self.state, lr=lr.float(), wd=None if wd is None else wd.float(),
                   step=self.step, decayed=self.decayed)
            loss_bad = ~torch.isfinite(loss)
            weights_bad = torch.zeros_like(loss_bad)
            for p in params:  # a head's sum is non-finite iff one of its weights is (or they overflow)
                weights_bad |= ~torch.isfinite(p.sum(dim=tuple(range(1, p.dim()))))
            new = (self.bad_step < 0) & (loss_bad | weights_bad)
            self.bad_step = torch.where(new, self.step, self.bad_step)
            self.bad_why = torch.where(new, (~loss_bad).long(), self.bad_why)
            self.loss_sum += loss.double()
        self.loss_count += 1
        self.step += 1


def _stacked_linear(heads: list[Head], device: torch.device) -> tuple[Tensor, Tensor]:
    """The heads' linear layers as a (N, D, C) weight (transposed, for baddbmm) and a (N, C) bias."""
    weight = torch.stack([h.linear.weight.detach().T for h in heads]).to(device).contiguous()
    return weight, torch.stack([h.linear.bias.detach() for h in heads]).to(device)


class _LinearGroup(_Group):
    """Heads with a parameter-free pooling: pool and BatchNorm once, then every head's linear layer in one batched
    matmul, with the cross-entropy gradient written out by hand into buffers kept across steps (no autograd
    graph, no per-step allocation). Weights are stacked as (N, D, C), so each head's products are their own
    matrices in the batch, computed the same whatever the stack size."""

    def __init__(self, members: list[int], specs: Sequence[HeadSpec], heads: list[Head], taps: tuple[str, ...],
                 batch_size: int, device: torch.device):
        self.pool, self.norm = heads[0].to(device).pool, heads[0].norm
        self.weight, self.bias = _stacked_linear(heads, device)
        self.grads = [torch.empty_like(self.weight), torch.empty_like(self.bias)]
        super().__init__(members, specs, heads, taps, batch_size, device)

    def stacked(self) -> list[Tensor]:
        return [self.weight, self.bias]

    def names(self) -> list[str]:
        return ["linear.weight", "linear.bias"]

    def running_stats(self) -> tuple[Tensor, Tensor] | None:
        """The one BatchNorm every head of the group shares (a function of the batch alone), per head."""
        if not isinstance(self.norm, nn.BatchNorm1d):
            return None
        n = len(self.members)
        return self.norm.running_mean.expand(n, -1), self.norm.running_var.expand(n, -1)

    def tensors(self) -> dict[str, Tensor]:
        return super().tensors() | {f"norm.{name}": b for name, b in self.norm.named_buffers()}

    def _features(self, tokens: Tensor, train: bool) -> Tensor:
        self.norm.train(train)
        return self.norm(self.pool(tokens)).expand(len(self.members), -1, -1)

    @torch.no_grad()
    def logits(self, tokens: Tensor, train: bool) -> Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), self._features(tokens, train), self.weight)

    @torch.no_grad()
    def loss_and_grads(self, tokens: Tensor, labels: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats = self._features(tokens, train=True)
        logp = torch.baddbmm(self.bias.unsqueeze(1), feats, self.weight).log_softmax(-1)
        target = labels.view(1, -1, 1).expand(len(self.members), -1, 1)
        loss = -logp.gather(-1, target).squeeze(-1).mean(1)
        dlogits = logp.exp_().scatter_add_(-1, target, torch.full_like(target, -1, dtype=logp.dtype))
        dlogits.div_(len(labels))  # d(mean cross-entropy) / d logits = (softmax - one-hot) / B
        torch.bmm(feats.transpose(1, 2), dlogits, out=self.grads[0])
        torch.sum(dlogits, dim=1, out=self.grads[1])
        return loss, self.grads

    def keep(self, slots: list[int]) -> None:
        index = torch.tensor(slots, dtype=torch.long, device=self.weight.device)
        self.weight, self.bias = self.weight[index], self.bias[index]
        self.grads = [torch.empty_like(self.weight), torch.empty_like(self.bias)]
        super().keep(slots)


class _AttentionGroup(_Group):
    """Heads whose pooling has parameters (abmilp, query, ep, ...): each parameter stacked on a head axis, the
    pooler's `stacked` pools the shared tokens for every head in batched kernels, then BatchNorm (per head and
    channel, as one BatchNorm over N * D' channels) and the linear layers as in _LinearGroup. A pooling's own
    running statistics (aim, cbam, dolg hold a BatchNorm) are stacked the same way, each head's its own. Gradients
    by autograd of the heads' summed losses: heads share nothing, so each head's gradient is that of its own loss."""

    def __init__(self, members: list[int], specs: Sequence[HeadSpec], heads: list[Head], taps: tuple[str, ...],
                 batch_size: int, device: torch.device):
        self.pooler = heads[0].pooler.to(device)  # its structure and options; its own weights are not read
        self.names_in_pooler = [name for name, _ in self.pooler.named_parameters()]
        own = [dict(h.pooler.named_parameters()) for h in heads]
        stacks = [torch.stack([o[name].detach() for o in own]).to(device).contiguous()
                  for name in self.names_in_pooler]
        self.params = [p.requires_grad_() for p in (*stacks, *_stacked_linear(heads, device))]
        buffers = [dict(stat_buffers(h.pooler)) for h in heads]
        self.stats = {name: torch.stack([b[name] for b in buffers]).to(device).contiguous() for name in buffers[0]}
        self.norm, self.running = heads[0].norm, None  # its eps and momentum
        if isinstance(self.norm, nn.BatchNorm1d):
            self.running = [torch.stack([getattr(h.norm, k) for h in heads]).to(device).contiguous()
                            for k in ("running_mean", "running_var")]
        super().__init__(members, specs, heads, taps, batch_size, device)

    def stacked(self) -> list[Tensor]:
        return [p.detach() for p in self.params]

    def statistics(self) -> dict[str, Tensor]:
        return self.stats

    def names(self) -> list[str]:
        return [f"pooler.{name}" for name in self.names_in_pooler] + ["linear.weight", "linear.bias"]

    def running_stats(self) -> tuple[Tensor, Tensor] | None:
        return None if self.running is None else (self.running[0], self.running[1])

    def tensors(self) -> dict[str, Tensor]:
        return super().tensors() | {f"running.{k}": r for k, r in enumerate(self.running or [])}

    def logits(self, tokens: Tensor, train: bool) -> Tensor:
        *pool, weight, bias = self.params
        self.pooler.train(train)  # an inner BatchNorm: batch statistics (moving `stats`) or the running ones
        feats = self.pooler.stacked({**dict(zip(self.names_in_pooler, pool)), **self.stats}, tokens)  # (N, B, D')
        if self.running is not None:
            n, b, d = feats.shape
            flat = F.batch_norm(feats.transpose(0, 1).reshape(b, n * d), self.running[0].view(-1),
                                self.running[1].view(-1), training=train, momentum=self.norm.momentum,
                                eps=self.norm.eps)
            feats = flat.view(b, n, d).transpose(0, 1)
        return torch.baddbmm(bias.unsqueeze(1), feats, weight)

    def loss_and_grads(self, tokens: Tensor, labels: Tensor) -> tuple[Tensor, list[Tensor]]:
        with torch.enable_grad():
            logp = self.logits(tokens, train=True).log_softmax(-1)
            loss = -logp.gather(-1, labels.view(1, -1, 1).expand(len(self.members), -1, 1)).squeeze(-1).mean(1)
            grads = torch.autograd.grad(loss.sum(), self.params, allow_unused=True)
        # a parameter the stacked kernel never reads (cait's key bias: it moves every score equally, so it cancels
        # in the softmax) has a zero gradient, as in the official module up to rounding
        return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]

    def keep(self, slots: list[int]) -> None:
        index = torch.tensor(slots, dtype=torch.long, device=self.params[0].device)
        self.params = [p.detach()[index].requires_grad_() for p in self.params]
        self.stats = {k: v[index] for k, v in self.stats.items()}
        if self.running is not None:
            self.running = [r[index] for r in self.running]
        super().keep(slots)


class HeadBank:
    """Trains a list of heads on shared token batches; heads never share parameters or optimizer state."""

    def __init__(self, specs: Sequence[HeadSpec], *, embed_dim: int, num_heads: int, num_prefix_tokens: int,
                 num_classes: int, batch_size: int, total_steps: int, warmup_steps: int, shared_order: bool = False,
                 device: torch.device | str = "cpu", depth: int = 1, num_registers: int = 0):
        """`shared_order`: every head will see the same batches (online protocol), so heads of different seeds may
        share a stack; otherwise (cached) each seed keeps its own data order and stacks. `depth` (the backbone's
        blocks) resolves the heads' layers to taps; `num_registers` of the prefix tokens are registers."""
        self.specs = list(specs)
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.outcomes = [HeadOutcome() for _ in self.specs]
        device = torch.device(device)
        stacks: dict[str, tuple[list[int], list[Head], tuple[str, ...]]] = {}
        for i, spec in enumerate(self.specs):
            blocks = layer_blocks(spec.layer, depth, f"head {spec.head_id}")
            torch.manual_seed(spec.seed)  # the seed sets the initialisation
            try:
                head = build_head(spec.aggregator, embed_dim=embed_dim, num_heads=num_heads,
                                  num_prefix_tokens=num_prefix_tokens, num_classes=num_classes, options=spec.options,
                                  recipe=spec.recipe, num_registers=num_registers, num_blocks=len(blocks))
            except NotApplicable as e:
                self.outcomes[i].status, self.outcomes[i].error = "not-applicable", str(e)
                continue
            order = None if shared_order else spec.seed
            taps = layer_taps(spec.layer, head.tap, depth, f"head {spec.head_id}")  # the recipe's tap, if any
            key = json.dumps([spec.aggregator.name, spec.options, spec.training.describe(), order, taps],
                             sort_keys=True)
            members, heads, _ = stacks.setdefault(key, ([], [], taps))
            members.append(i)
            heads.append(head)
        self.groups: list[_Group] = [
            (_AttentionGroup if isinstance(heads[0].pooler, StackedPool) else _LinearGroup)(
                members, self.specs, heads, taps, batch_size, device) for members, heads, taps in stacks.values()]

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        """Everything training has changed, as JSON-able metadata (outcomes so far, each stack's members and step
        counts) and CPU copies of the tensors: what a mid-trial checkpoint holds (harness/run/checkpoints.py)."""
        meta = {"outcomes": [{k: v for k, v in vars(o).items() if k != "test_predicted"} for o in self.outcomes],
                "groups": [{"members": g.members, "step": g.step, "forwards": g.forwards, "loss_count": g.loss_count}
                           for g in self.groups]}
        tensors = {f"{k}.{name}": t.detach().to("cpu", copy=True) for k, g in enumerate(self.groups)
                   for name, t in g.tensors().items()}
        return meta, tensors

    @torch.no_grad()
    def restore(self, meta: dict, tensors: Mapping[str, Tensor]) -> None:
        """Continue from `state()` of a bank built from the same specs: drop the stacks and heads it had retired,
        then copy every saved tensor into place. A state of another bank is refused (ValueError)."""
        fresh, self.groups = self.groups, []
        for k, saved in enumerate(meta["groups"]):
            g = next((g for g in fresh if saved["members"][0] in g.members), None)
            if g is None or not set(saved["members"]) <= set(g.members):
                raise ValueError(f"saved stack {k} holds heads {saved['members']}, which no stack of this bank holds")
            if saved["members"] != g.members:
                g.keep([g.members.index(i) for i in saved["members"]])
            g.step, g.forwards, g.loss_count = saved["step"], saved["forwards"], saved["loss_count"]
            own = g.tensors()
            if set(own) != {name.split(".", 1)[1] for name in tensors if name.split(".", 1)[0] == str(k)}:
                raise ValueError(f"saved stack {k} holds other tensors than this bank's")
            for name, t in own.items():
                t.copy_(tensors[f"{k}.{name}"])
            self.groups.append(g)
        if len(meta["outcomes"]) != len(self.outcomes):
            raise ValueError(f"the state holds {len(meta['outcomes'])} heads, this bank {len(self.outcomes)}")
        for outcome, saved in zip(self.outcomes, meta["outcomes"]):
            vars(outcome).update(saved)

    @property
    def taps(self) -> list[str]:
        """The token taps the live heads read, in a fixed order."""
        return sorted({tap for g in self.groups for tap in g.taps})

    @property
    def reads(self) -> list[tuple[str, str]]:
        """(aggregator kind, tap) of every block a live head reads."""
        return [(self.specs[g.members[0]].aggregator.kind, tap) for g in self.groups for tap in g.taps]

    @property
    def seeds(self) -> list[int]:
        """Seeds of the live heads: each is one data order in the cached protocol."""
        return sorted({seed for g in self.groups for seed in g.seeds})

    def parameters_of(self, i: int) -> list[Tensor]:
        """Head `i`'s current parameters (its slices of the stacks, linear weights as (D, C)), then its poolings'
        running statistics; empty when it is not training."""
        found = self._slot(i)
        if not found:
            return []
        g, slot = found
        return [p[slot].detach() for p in (*g.stacked(), *g.statistics().values())]

    def _slot(self, i: int) -> tuple[_Group, int] | None:
        for g in self.groups:
            if i in g.members:
                return g, g.members.index(i)
        return None

    def head_state(self, i: int) -> dict[str, Tensor]:
        """Head `i`'s parameters and BatchNorm statistics under its module's names (`pooler.*`, `norm.*`,
        `linear.*`), as views: writing into them sets the head. Empty when it is not training."""
        found = self._slot(i)
        return found[0].head_state(found[1]) if found else {}

    def last_step(self, i: int) -> dict | None:
        """The lr, weight decay and loss of each forward of head `i`'s last optimizer step (floats; a sync)."""
        found = self._slot(i)
        if found is None or found[0].last is None:
            return None
        (g, slot), (lr, wd, losses) = found, found[0].last
        return {"lr": lr[slot].item(), "wd": 0.0 if wd is None else wd[slot].item(),
                "losses": [loss[slot].item() for loss in losses]}

    @torch.no_grad()
    def logits(self, i: int, tokens: Mapping[str, Tensor]) -> Tensor:
        """Head `i`'s evaluation-mode logits (B, num_classes) on a batch (BatchNorm on its running statistics)."""
        g, slot = self._slot(i)
        return g.logits(head_input(tokens, g.taps), train=False)[slot]

    def live(self) -> list[int]:
        """Indices of the heads still training (applicable, not recorded as diverged)."""
        return sorted(i for g in self.groups for i in g.members)

    def step(self, tokens: Mapping[str, Tensor], labels: Tensor, seed: int | None = None) -> None:
        """One optimisation step, on one batch, of every head (or of the heads of `seed`, without shared order)."""
        for g in self.groups:
            if seed is None or g.seeds == {seed}:
                g.train_step(head_input(tokens, g.taps), labels, self.total_steps, self.warmup_steps)

    def _retire_diverged(self) -> None:
        """Record the heads marked non-finite since the last call and drop them from their stacks (one sync)."""
        for g in list(self.groups):
            steps, whys = g.bad_step.tolist(), g.bad_why.tolist()
            for i, step, why in zip(g.members, steps, whys):
                if step >= 0:
                    o = self.outcomes[i]
                    o.status, o.error, o.diverged_step = "diverged", f"{_WHY[why]} at step {step}", step
            slots = [s for s, step in enumerate(steps) if step < 0]
            if not slots:
                self.groups.remove(g)
            elif len(slots) < len(steps):
                g.keep(slots)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[Mapping[str, Tensor], Tensor]], predictions: list | None = None
                 ) -> list[tuple[float, float | None] | None]:
        """Top-1 and top-5 accuracy (percent; top-5 None with 5 classes or fewer) of every live head; None for the
        others. With `predictions` (a list), it receives each head's (N,) predicted classes (None if not live)."""
        self._retire_diverged()
        hits1 = [0] * len(self.groups)
        hits5 = [0] * len(self.groups)
        picked: list[list[Tensor]] = [[] for _ in self.groups]
        total, classes = 0, 0
        for tokens, labels in batches:
            total += len(labels)
            for k, g in enumerate(self.groups):
                logits = g.logits(head_input(tokens, g.taps), train=False)
                classes = logits.shape[-1]
                top = logits.topk(min(5, classes), dim=-1).indices
                hits = top == labels[None, :, None]
                hits1[k] += hits[..., 0].sum(1)
                hits5[k] += hits.any(-1).sum(1)
                if predictions is not None:
                    picked[k].append(top[..., 0].cpu())
        out: list[tuple[float, float | None] | None] = [None] * len(self.specs)
        if predictions is not None:
            predictions[:] = [None] * len(self.specs)
        for k, g in enumerate(self.groups):
            if total == 0:
                continue
            for slot, (i, c1, c5) in enumerate(zip(g.members, hits1[k].tolist(), hits5[k].tolist())):
                out[i] = (100.0 * c1 / total, 100.0 * c5 / total if classes > 5 else None)
                if predictions is not None:
                    predictions[i] = torch.cat([p[slot] for p in picked[k]])
        return out

    def end_epoch(self, epoch: int, val: list[tuple[float, float] | None]) -> None:
        """Record each live head's curve point (effective lr of its last step, mean train loss, val top-1)."""
        for g in self.groups:
            losses = (g.loss_sum / max(g.loss_count, 1)).tolist()
            factor = recipes.lr_factor(g.recipe, max(g.step - 1, 0), self.total_steps, self.warmup_steps)
            lrs = (g.base_lr * factor).tolist()
            for i, loss, lr in zip(g.members, losses, lrs):
                self.outcomes[i].train_loss = loss
                self.outcomes[i].curves.append({"epoch": epoch, "lr": lr, "train_loss": loss,
                                                "val_top1": val[i][0] if val[i] else None})
            g.loss_sum.zero_()
            g.loss_count = 0

    def finish(self, val: list[tuple[float, float | None] | None], test: list[tuple[float, float | None] | None],
               test_predicted: list[Tensor | None] | None = None) -> list[HeadOutcome]:
        """Store the final validation and test metrics (and test predictions) of the live heads; every outcome."""
        for i in self.live():
            o = self.outcomes[i]
            o.val_top1, o.val_top5 = val[i]
            o.test_top1, o.test_top5 = test[i]
            o.test_predicted = test_predicted[i] if test_predicted is not None else None
        return self.outcomes
