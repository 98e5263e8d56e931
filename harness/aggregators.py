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


def resolve_options(entry: AggregatorEntry, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults <- entry options <- grid overrides; an unknown option or a bad value raises HarnessError."""
    spec, overrides = OPTIONS[entry.kind], options or {}
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


class SelfAttention(nn.Module):
    """Single-head self-attention without qkv bias (beyond_cls reuses models_vit.Attention(dim, num_heads=1))."""

    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(F.scaled_dot_product_attention(q, k, v))


class ABMILPPool(nn.Module):
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

    def forward_with_attn(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, D), attention weights (B, N, 1) over the pooled tokens)."""
        x = tokens[:, self.skip:]
        attended = self.self_attn(x) if self.self_attn is not None else x
        scores_in = attended if self.sa_mode in ("map", "both") else x
        if self.cond == "pe":
            pe = sincos_pos_embed_2d(x.shape[-1], x.shape[1] - self.pe_prefix, self.pe_prefix)
            scores_in = scores_in + pe.to(device=x.device, dtype=x.dtype)
        attn = self.attention_predictor(scores_in).softmax(dim=1)
        values = attended if self.sa_mode == "both" else x
        return (attn.transpose(1, 2) @ values).squeeze(1), attn

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attn(tokens)[0]


class QueryPool(nn.Module):
    """V-JEPA's AttentivePooler (facebookresearch/jepa): learned queries, one cross-attention block with MLP.

    As the official forward does: LayerNorm (eps 1e-5) on the tokens only, no output projection after the
    cross-attention (the official `xattn.proj` is never applied, so it is not a parameter here), residual to the
    queries, then `q + MLP(LayerNorm(q))`, then `depth - 1` self-attention blocks over the queries (the official
    init raises for depth > 1, `enumerate(1, blocks)`; this follows its evident intent).
    Pooled features are the queries' outputs concatenated: (B, num_queries * D).

    Efficiency: the per-head key map is folded into the query (W_k^T q, a D-vector per head; the key bias only
    shifts every score equally and cancels in the softmax), and the value map is applied after pooling
    (the weights sum to 1, so A (xW_v^T + b_v) = (A x) W_v^T + b_v). Per token the cost is O(heads * queries * D)
    instead of the 2 D^2 of a key/value projection.
    """

    def __init__(self, dim: int, skip: int, *, num_heads: int, num_queries: int, depth: int, mlp_ratio: float):
        super().__init__()
        if dim % num_heads:
            raise HarnessError(f"query option num_heads={num_heads} does not divide the embedding width {dim}; "
                               "accepted: a divisor of the width.")
        self.skip, self.num_heads = skip, num_heads
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)))
        self.blocks = nn.ModuleList()
        if depth > 1:  # timm only when needed: importing it costs seconds
            from timm.models.vision_transformer import Block

            self.blocks.extend(Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth - 1))
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

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        xn = self.norm1(tokens[:, self.skip:])
        queries = self.query_tokens[0]
        n_q, dim = queries.shape
        h, hd = self.num_heads, dim // self.num_heads
        w_k, w_v = self.kv.weight.view(2, h, hd, dim).unbind(0)
        q = self.q(queries).view(n_q, h, hd) * hd ** -0.5
        q_in_token_space = torch.einsum("qhc,hcd->qhd", q, w_k).reshape(n_q * h, dim)
        attn = (xn @ q_in_token_space.T).transpose(1, 2).softmax(dim=-1)  # (B, Q*H, T)
        pooled = (attn @ xn).view(-1, n_q, h, dim)
        y = torch.einsum("bqhd,hcd->bqhc", pooled, w_v) + self.kv.bias[dim:].view(h, hd)
        out = queries + y.reshape(-1, n_q, dim)
        out = out + self.mlp(self.norm2(out))
        for blk in self.blocks:
            out = blk(out)
        return out.flatten(1)


class EfficientProbePool(nn.Module):
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

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, self.skip:]
        queries = self.queries[0]
        n_q, dim = queries.shape
        attn = (queries * self.scale @ x.transpose(1, 2)).softmax(dim=-1)  # (B, Q, T)
        pooled = attn @ x
        out = torch.einsum("bqd,qcd->bqc", pooled, self.v.weight.view(n_q, -1, dim))
        if self.v.bias is not None:
            out = out + self.v.bias.view(n_q, -1)
        return out.flatten(1)


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
        raise AssertionError(f"unhandled aggregator kind {entry.kind!r}")
    return Head(pooler, pooled_dim, num_classes, tap=entry.tap, batchnorm=batchnorm, linear_std=linear_std).float()
