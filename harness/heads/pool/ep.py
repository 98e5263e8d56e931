"""Efficient probing, the `ep` kind (billpsomas/efficient-probing)."""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import HarnessError
from harness.heads.kinds import Dims
from harness.heads.pool.kernels import Params, StackedPool, pool_shared, rows_shared


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
        pooled = pool_shared(rows_shared(queries * self.scale, x).softmax(dim=-1), x)  # (N, B, Q, D)
        out = torch.einsum("nbqd,nqcd->nbqc", pooled, p["v.weight"].view(n, n_q, -1, dim))
        if "v.bias" in p:
            out = out + p["v.bias"].view(n, 1, n_q, -1)
        return out.flatten(2)


def build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    pooler = EfficientProbePool(dims.embed_dim, dims.skip(opts), num_queries=opts["num_queries"],
                                d_out=opts["d_out"], qkv_bias=opts["qkv_bias"])
    return pooler, dims.embed_dim // opts["d_out"]
