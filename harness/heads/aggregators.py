"""Readout heads: how a frozen backbone's tokens become class logits.

Every head is `pool -> (BatchNorm1d(affine=False) | nothing) -> Linear`, built by `build_head` from a registry
entry plus grid overrides. All heads take the same input, the backbone's tokens `(B, T, D)` with its
`num_prefix_tokens` [cls] tokens first, so a head bank can feed one backbone pass to every head.
Each pooler reproduces its official module (see `/work/shared/fixtures/aggregators`), but applies linear maps that
commute with the attention-weighted sum after pooling, on one vector per query, not on every token.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import HarnessError
from harness.registry import AggregatorEntry

BN_EPS = 1e-6  # MAE main_linprobe, beyond_cls and efficient-probing all use BatchNorm1d(affine=False, eps=1e-6)
LINEAR_STD = 0.01  # MAE main_linprobe (after MoCo v3): head weight ~ trunc_normal(std=0.01), bias 0


class NotApplicable(Exception):
    """The aggregator cannot read this backbone (e.g. `cls` without a [cls] token); recorded, never replaced."""


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class _Option:
    default: Any
    accepted: str
    valid: Callable[[Any], bool]


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _choice(*values: str) -> _Option:
    return _Option(values[0], " or ".join(repr(v) for v in values), lambda v: v in values)


_CONTENT = _choice("patch", "all")  # "patch": prefix tokens dropped before pooling; "all": pooled with the patches
OPTIONS: dict[str, dict[str, _Option]] = {
    "cls": {},
    "mean": {},
    "abmilp": {
        "depth": _Option(1, "a positive integer (Linear layers of the score predictor)", _positive_int),
        "activation": _choice("relu", "tanh"),
        "self_attention": _choice("none", "map", "both"),
        "cond": _choice("none", "pe"),
        "content": _CONTENT,
    },
    "query": {
        "num_queries": _Option(1, "a positive integer", _positive_int),
        "depth": _Option(1, "a positive integer (1 cross-attention block, then depth-1 blocks on the queries)",
                         _positive_int),
        "mlp_ratio": _Option(4.0, "a positive number", _positive_number),
        "num_heads": _Option(None, "a positive integer dividing the embedding width (default: the backbone's)",
                             lambda v: v is None or _positive_int(v)),
        "content": _CONTENT,
    },
    "ep": {
        "num_queries": _Option(4, "a positive integer dividing embed_dim / d_out", _positive_int),
        "d_out": _Option(1, "a positive integer dividing the embedding width", _positive_int),
        "qkv_bias": _Option(False, "true or false", lambda v: isinstance(v, bool)),
        "content": _CONTENT,
    },
}


def _options(kind: str) -> dict[str, _Option]:
    from harness.heads.poolings import poolings

    return OPTIONS[kind] if kind in OPTIONS else poolings()[kind].options


def resolve_options(entry: AggregatorEntry, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults <- entry options <- grid overrides; an unknown option or a bad value raises HarnessError."""
    spec, overrides = _options(entry.kind), options or {}
    merged = {**entry.options, **overrides}
    for key, value in merged.items():
        where = f"aggregator {entry.name!r} ({'grid options' if key in overrides else entry.source or 'entry'})"
        if key not in spec:
            accepted = ", ".join(sorted(spec)) or "none (this aggregator has no options)"
            raise HarnessError(f"{where}: unknown option {key!r}; accepted: {accepted}.")
        if not spec[key].valid(value):
            raise HarnessError(f"{where}: option {key!r} is {value!r}; accepted: {spec[key].accepted}.")
    return {key: merged.get(key, opt.default) for key, opt in spec.items()}


# ------------------------------------------------------------------------------------------------ poolers


class ClsPool(nn.Module):
    """The first prefix token ([cls])."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


class MeanPool(nn.Module):
    """Mean of the patch tokens (prefix tokens excluded)."""

    def __init__(self, skip: int):
        super().__init__()
        self.skip = skip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.skip:].mean(dim=1)


@lru_cache(maxsize=16)
def sincos_pos_embed_2d(dim: int, num_patches: int, num_prefix: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table (1, num_prefix + num_patches, dim), zero rows for the prefix tokens.

    As MAE's util/pos_embed.py: the first half of the channels encodes the column index, the second half the row
    index (row-major token order); each half is [sin | cos].
    """
    side = math.isqrt(num_patches)
    if side * side != num_patches or dim % 4:
        raise HarnessError(f"abmilp option cond='pe' needs a square patch grid and a width divisible by 4; got "
                           f"{num_patches} patch tokens of width {dim}; accepted: cond='none' for this backbone.")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for pos in (cols.reshape(-1), rows.reshape(-1)):
        angle = pos[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    table = torch.cat([torch.zeros(num_prefix, dim, dtype=torch.float64), torch.cat(parts, dim=1)])
    return table.float().unsqueeze(0)


# Attention poolings run as stacks: `stacked(params, tokens)` pools the same tokens with N heads' parameter sets at
# once, each parameter given with a leading head axis (N, ...) under its module name; `forward` is a stack of one.
# Each head's products are matrices of their own, of the same shapes whatever the stack's size, so a head computes
# the same numbers alone or stacked; the shared tokens are never copied per head (a broadcast batch operand), and
# maps that commute with the attention-weighted sum are applied after it.
Params = dict[str, torch.Tensor]


def _each(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per-head linear map of per-head inputs: x (N, ..., in), w (N, out, in), b (N, out) -> (N, ..., out)."""
    n, out, d = w.shape
    y = torch.bmm(x.reshape(n, -1, d), w.transpose(1, 2)).view(*x.shape[:-1], out)
    return y if b is None else y + b.view(n, *[1] * (x.dim() - 2), out)


def _shared(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per-head linear map of inputs every head shares: x (..., in) -> (N, ..., out)."""
    n, out, d = w.shape
    y = torch.bmm(x.reshape(1, -1, d).expand(n, -1, -1), w.transpose(1, 2)).view(n, *x.shape[:-1], out)
    return y if b is None else y + b.view(n, *[1] * (x.dim() - 1), out)


def _rows_shared(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each head's row vectors against shared tokens: q (N, R, D), x (B, T, D) -> scores (N, B, R, T)."""
    n, r, d = q.shape
    scores = torch.bmm(q, x.reshape(-1, d).T.unsqueeze(0).expand(n, -1, -1))  # (N, R, B*T)
    return scores.view(n, r, x.shape[0], -1).transpose(1, 2)


def _pool_shared(attn: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Attention-weighted sums of shared tokens: attn (N, B, R, T), x (B, T, D) -> (N, B, R, D)."""
    return torch.stack([torch.bmm(a, x) for a in attn])


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm of per-head inputs x (N, ..., D) with each head's affine w, b (N, D)."""
    shape = (w.shape[0], *[1] * (x.dim() - 2), w.shape[1])
    return F.layer_norm(x, x.shape[-1:], eps=eps) * w.view(shape) + b.view(shape)


def _mlp(p: Params, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return _each(F.gelu(_each(x, p[prefix + "fc1.weight"], p[prefix + "fc1.bias"])), p[prefix + "fc2.weight"],
                 p[prefix + "fc2.bias"])


def _mlp_module(dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))


def stat_buffers(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A pooling's running statistics (an inner BatchNorm's mean and variance, a constant LayerNorm shift), named as
    in its state_dict; a BatchNorm's step counter is left out (its momentum is fixed)."""
    return [(k, v) for k, v in module.named_buffers() if not k.endswith("num_batches_tracked")]


class StackedPool(nn.Module):
    """A pooling with parameters of its own; subclasses define `stacked`."""

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, B, D') of N heads' parameters `p` on the same tokens (B, T, D)."""
        raise NotImplementedError

    def own_stack(self) -> Params:
        """This module's own parameters and running statistics as a stack of one head (views: a train-mode pass
        updates the module's own statistics)."""
        return {k: v.unsqueeze(0) for k, v in (*self.named_parameters(), *stat_buffers(self))}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.stacked(self.own_stack(), tokens)[0]

    def forward_with_attn(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One head: (pooled, attention weights in the official module's layout), for poolings that expose them
        through `stacked_with_attn`."""
        pooled, attn = self.stacked_with_attn(self.own_stack(), tokens)
        return pooled[0], attn[0]


class SelfAttention(nn.Module):
    """Single-head self-attention without qkv bias (beyond_cls reuses models_vit.Attention(dim, num_heads=1));
    parameters only, run by ABMILPPool."""

    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)


class ABMILPPool(StackedPool):
    """Attention-based MIL pooling (gmum/beyond_cls ABMILPHead): softmax-weighted sum of the tokens.

    Options as in the official code: `depth` Linear layers (with `activation` between) predict one score per token;
    `self_attention` "map" feeds the self-attended tokens to the predictor, "both" also pools them; `cond` "pe" adds
    the fixed 2-D sin-cos table to the predictor input. The first `skip` tokens are dropped (content "patch").
    """

    def __init__(self, dim: int, skip: int, num_prefix_tokens: int, *, depth: int, activation: str,
                 self_attention: str, cond: str):
        super().__init__()
        self.skip, self.cond, self.sa_mode = skip, cond, self_attention
        self.pe_prefix = num_prefix_tokens - skip
        self.self_attn = SelfAttention(dim) if self_attention != "none" else None
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.Linear(dim, dim), nn.Tanh() if activation == "tanh" else nn.ReLU()]
        self.attention_predictor = nn.Sequential(*layers, nn.Linear(dim, 1))

    def _scores(self, p: Params, h: torch.Tensor, shared: bool) -> torch.Tensor:
        """(N, B, T) token scores of the predictor on `h`: shared (B, T, D) or per head (N, B, T, D)."""
        n = p["attention_predictor.0.weight"].shape[0]
        *hidden, last = [i for i, m in enumerate(self.attention_predictor) if isinstance(m, nn.Linear)]
        for i in hidden:
            h = (_shared if shared else _each)(h, p[f"attention_predictor.{i}.weight"],
                                                p[f"attention_predictor.{i}.bias"])
            h, shared = self.attention_predictor[i + 1](h), False
        w, b = p[f"attention_predictor.{last}.weight"], p[f"attention_predictor.{last}.bias"]  # (N, 1, D), (N, 1)
        if shared:
            scores = _rows_shared(w, h)[:, :, 0]
        else:
            scores = torch.bmm(w, h.reshape(n, -1, h.shape[-1]).transpose(1, 2)).view(h.shape[:-1])
        return scores + b.view(n, 1, 1)

    def stacked_with_attn(self, p: Params, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (N, B, D), attention weights (N, B, T) over the pooled tokens)."""
        x = tokens[:, self.skip:]
        attended = None
        if self.self_attn is not None:
            q, k, v = _shared(x, p["self_attn.qkv.weight"], None).chunk(3, dim=-1)
            attended = _each(F.scaled_dot_product_attention(q, k, v), p["self_attn.proj.weight"],
                             p["self_attn.proj.bias"])
        per_head_in = self.sa_mode in ("map", "both")
        scores_in = attended if per_head_in else x
        if self.cond == "pe":
            pe = sincos_pos_embed_2d(x.shape[-1], x.shape[1] - self.pe_prefix, self.pe_prefix)
            scores_in = scores_in + pe.to(device=x.device, dtype=x.dtype)
        attn = self._scores(p, scores_in, shared=not per_head_in).softmax(dim=-1)
        if self.sa_mode == "both":
            n, b, t = attn.shape
            pooled = torch.bmm(attn.reshape(n * b, 1, t), attended.reshape(n * b, t, -1)).view(n, b, -1)
        else:
            pooled = _pool_shared(attn.unsqueeze(2), x)[:, :, 0]
        return pooled, attn

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        return self.stacked_with_attn(p, tokens)[0]

    def forward_with_attn(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One head: (pooled (B, D), attention weights (B, T, 1)), as the official module returns them."""
        pooled, attn = self.stacked_with_attn(self.own_stack(), tokens)
        return pooled[0], attn[0].unsqueeze(-1)


class QueryBlock(nn.Module):
    """Parameters of a pre-norm transformer block over the queries, named as timm's and V-JEPA's `Block`."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.ModuleDict(dict(qkv=nn.Linear(dim, 3 * dim), proj=nn.Linear(dim, dim)))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp_module(dim, int(dim * mlp_ratio))


def _query_block(p: Params, prefix: str, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """A QueryBlock of every head on its own queries x (N, B, Q, D)."""
    n, b, q, d = x.shape
    qkv = _each(_layer_norm(x, p[prefix + "norm1.weight"], p[prefix + "norm1.bias"], 1e-5),
                p[prefix + "attn.qkv.weight"], p[prefix + "attn.qkv.bias"])
    attended = F.scaled_dot_product_attention(*qkv.view(n, b, q, 3, num_heads, -1).permute(3, 0, 1, 4, 2, 5))
    x = x + _each(attended.transpose(2, 3).reshape(n, b, q, d), p[prefix + "attn.proj.weight"],
                  p[prefix + "attn.proj.bias"])
    return x + _mlp(p, prefix + "mlp.", _layer_norm(x, p[prefix + "norm2.weight"], p[prefix + "norm2.bias"], 1e-5))


class QueryPool(StackedPool):
    """V-JEPA's AttentivePooler (facebookresearch/jepa): learned queries, one cross-attention block with MLP.

    As the official forward does: LayerNorm (eps 1e-5) on the tokens only, no output projection after the
    cross-attention (the official `xattn.proj` is never applied, so it is not a parameter here), residual to the
    queries, then `q + MLP(LayerNorm(q))`, then `depth - 1` self-attention blocks over the queries (the official
    init raises for depth > 1, `enumerate(1, blocks)`; this follows its evident intent).
    Pooled features are the queries' outputs concatenated: (B, num_queries * D).

    Efficiency: the tokens are normalised once for every head; each head's LayerNorm gain and key map are folded
    into its query (g * W_k^T q, a D-vector per attention head; the LayerNorm shift and the key bias move every
    score equally and cancel in the softmax), and its gain, shift and value map are applied after pooling (the
    weights sum to 1, so A (x W^T + b) = (A x) W^T + b). Per token the cost is O(heads * queries * D) instead of the
    2 D^2 of a key/value projection.
    """

    def __init__(self, dim: int, skip: int, *, num_heads: int, num_queries: int, depth: int, mlp_ratio: float,
                 out_proj: bool = False):
        super().__init__()
        if dim % num_heads:
            raise HarnessError(f"query option num_heads={num_heads} does not divide the embedding width {dim}; "
                               "accepted: a divisor of the width.")
        self.skip, self.num_heads = skip, num_heads
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        if out_proj:  # efficient probing's copy (jepa @ 787b04a) applies xattn.proj; the later upstream code does not
            self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp_module(dim, int(dim * mlp_ratio))
        self.blocks = nn.ModuleList(QueryBlock(dim, mlp_ratio) for _ in range(depth - 1))
        self._init_official()

    def _init_official(self) -> None:
        """The official init: trunc_normal(0.02) queries and Linear weights, zero biases, fc2 rescaled by 1/sqrt(2)."""
        nn.init.trunc_normal_(self.query_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.mlp.fc2.weight.div_(math.sqrt(2.0))
            for i, blk in enumerate(self.blocks, start=2):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, self.skip:]
        normed = F.layer_norm(x, x.shape[-1:], eps=1e-5)  # each head's gain and shift are folded in below
        gain, shift = p["norm1.weight"][:, None, None], p["norm1.bias"][:, None, None]
        queries = p["query_tokens"][:, 0]
        n, n_q, dim = queries.shape
        h, hd = self.num_heads, dim // self.num_heads
        w_k, w_v = p["kv.weight"].view(n, 2, h, hd, dim).unbind(1)
        q = _each(queries, p["q.weight"], p["q.bias"]).view(n, n_q, h, hd) * hd ** -0.5
        q_in_token_space = torch.einsum("nqhc,nhcd->nqhd", q, w_k).reshape(n, n_q * h, dim) * gain[:, 0]
        attn = _rows_shared(q_in_token_space, normed).softmax(dim=-1)  # (N, B, Q*H, T)
        pooled = (_pool_shared(attn, normed) * gain + shift).view(n, -1, n_q, h, dim)
        y = torch.einsum("nbqhd,nhcd->nbqhc", pooled, w_v) + p["kv.bias"][:, dim:].view(n, 1, 1, h, hd)
        y = y.reshape(n, -1, n_q, dim)
        if "proj.weight" in p:
            y = _each(y, p["proj.weight"], p["proj.bias"])
        out = queries[:, None] + y
        out = out + _mlp(p, "mlp.", _layer_norm(out, p["norm2.weight"], p["norm2.bias"], 1e-5))
        for i in range(len(self.blocks)):
            out = _query_block(p, f"blocks.{i}.", out, h)
        return out.flatten(2)


class EfficientProbePool(StackedPool):
    """Efficient probing (billpsomas/efficient-probing EfficientProbing), single head as in its code.

    Learned queries attend over the RAW tokens (no key projection, scale D^-0.5); query j reads only the j-th
    slice of D/(d_out * num_queries) value channels; outputs are concatenated to (B, D / d_out).
    Efficiency: the value map is applied after pooling, per query on its own slice (weights sum to 1, so the
    bias commutes too): O(num_queries * D) per token instead of the D^2 / d_out of projecting every token.
    """

    def __init__(self, dim: int, skip: int, *, num_queries: int, d_out: int, qkv_bias: bool):
        super().__init__()
        if dim % d_out or (dim // d_out) % num_queries:
            raise HarnessError(f"ep options d_out={d_out}, num_queries={num_queries} do not divide the embedding "
                               f"width {dim}; accepted: d_out dividing {dim} and num_queries dividing {dim}/d_out.")
        self.skip, self.scale = skip, dim ** -0.5
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.v = nn.Linear(dim, dim // d_out, bias=qkv_bias)

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, self.skip:]
        queries = p["queries"][:, 0]
        n, n_q, dim = queries.shape
        pooled = _pool_shared(_rows_shared(queries * self.scale, x).softmax(dim=-1), x)  # (N, B, Q, D)
        out = torch.einsum("nbqd,nqcd->nbqc", pooled, p["v.weight"].view(n, n_q, -1, dim))
        if "v.bias" in p:
            out = out + p["v.bias"].view(n, 1, n_q, -1)
        return out.flatten(2)


# --------------------------------------------------------------------------------------------------- head


class Head(nn.Module):
    """pool -> BatchNorm1d(affine=False, eps 1e-6) or nothing -> Linear; `tap` names the tokens it reads."""

    def __init__(self, pooler: nn.Module, pooled_dim: int, num_classes: int, *, tap: str, batchnorm: bool,
                 linear_std: float | None):
        super().__init__()
        self.tap = tap
        self.pooler = pooler
        self.norm = nn.BatchNorm1d(pooled_dim, affine=False, eps=BN_EPS) if batchnorm else nn.Identity()
        self.linear = nn.Linear(pooled_dim, num_classes)
        if linear_std is not None:
            nn.init.trunc_normal_(self.linear.weight, std=linear_std)
            nn.init.zeros_(self.linear.bias)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D') before the BatchNorm and the linear layer."""
        return self.pooler(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(self.pool(tokens)))


def build_head(entry: AggregatorEntry, *, embed_dim: int, num_heads: int, num_prefix_tokens: int,
               num_classes: int, options: dict[str, Any] | None = None) -> Head:
    """The head for `entry` on a backbone of that width, heads and prefix tokens; float32.

    `options` (from a grid) override `entry.options`. Raises NotApplicable for `cls` without a [cls] token.
    """
    opts = resolve_options(entry, options)
    skip = num_prefix_tokens if opts.get("content", "patch") == "patch" else 0
    dim, pooled_dim, batchnorm, linear_std = embed_dim, embed_dim, True, LINEAR_STD
    if entry.kind == "cls":
        if num_prefix_tokens == 0:
            raise NotApplicable(f"aggregator {entry.name!r} reads the [cls] token, and this backbone has none")
        pooler: nn.Module = ClsPool()
    elif entry.kind == "mean":
        pooler = MeanPool(num_prefix_tokens)
    elif entry.kind == "abmilp":
        pooler = ABMILPPool(dim, skip, num_prefix_tokens, depth=opts["depth"], activation=opts["activation"],
                            self_attention=opts["self_attention"], cond=opts["cond"])
    elif entry.kind == "query":
        # V-JEPA's AttentiveClassifier: no BatchNorm, the linear layer keeps PyTorch's default init.
        heads = opts["num_heads"] or num_heads
        pooler = QueryPool(dim, skip, num_heads=heads, num_queries=opts["num_queries"], depth=opts["depth"],
                           mlp_ratio=opts["mlp_ratio"])
        pooled_dim, batchnorm, linear_std = dim * opts["num_queries"], False, None
    elif entry.kind == "ep":
        pooler = EfficientProbePool(dim, skip, num_queries=opts["num_queries"], d_out=opts["d_out"],
                                    qkv_bias=opts["qkv_bias"])
        pooled_dim = dim // opts["d_out"]
    else:
        from harness.heads.poolings import poolings

        pooler, pooled_dim = poolings()[entry.kind].build(dim, skip, opts)
    return Head(pooler, pooled_dim, num_classes, tap=entry.tap, batchnorm=batchnorm, linear_std=linear_std).float()
