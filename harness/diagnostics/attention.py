"""Where the tokens look: the attention statistics "Beyond [cls]" uses to explain why MIM [cls] probes fail.

The fused attention kernel never exposes its probabilities, so during one frozen pass every call to
`F.scaled_dot_product_attention` (how timm's ViT, BEiT and the harness's own blocks attend) is computed explicitly:
softmax(q k^T * scale + mask), then the probabilities times v, so the tokens stay what the backbone computes. Each
block's probabilities are reduced at once to a few numbers per image and head (`block_metrics`) and summed; full
maps are never kept, so memory does not grow with the number of images.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from datetime import datetime, timezone

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from harness.errors import HarnessError
from harness.results.attention import METRICS, NEEDS_CLS, NEEDS_REGISTERS

TOP_FRACTION = 0.1


def top_count(num_patches: int) -> int:
    """How many patches are "the top 10%": 10% rounded to whole tokens, at least one."""
    return max(1, round(TOP_FRACTION * num_patches))


def _entropy(p: Tensor) -> Tensor:
    """Normalised entropy over the last axis of distributions `p` (1 = uniform)."""
    return -torch.xlogy(p, p).sum(-1) / math.log(p.shape[-1]) if p.shape[-1] > 1 else torch.zeros(p.shape[:-1])


def _renormed(p: Tensor) -> Tensor:
    return p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)


def patch_distances(grid: tuple[int, int], device: torch.device) -> Tensor:
    """(P, P) Euclidean distances between patch positions in a row-major grid, in patches."""
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                indexing="ij")
    pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).float()
    return torch.cdist(pos, pos)


def block_metrics(probs: Tensor, num_prefix: int, has_cls: bool, distances: Tensor) -> dict[str, Tensor]:
    """Per image and head (B, H) values of every applicable metric, from one block's probabilities (B, H, N, N)
    whose first `num_prefix` tokens are [cls] (if `has_cls`) and registers, then the patches."""
    p = probs.float()
    patch_q = p[:, :, num_prefix:]  # (B, H, P, N): patch queries
    num_patches = patch_q.shape[2]
    k = top_count(num_patches)
    pp = _renormed(patch_q[..., num_prefix:])  # patch queries over patch keys
    out = {
        "patch_self": torch.diagonal(patch_q[..., num_prefix:], dim1=-2, dim2=-1).mean(-1),
        "patch_entropy": _entropy(pp).mean(-1),
        "patch_top10": pp.topk(k, dim=-1).values.sum(-1).mean(-1),
        "attention_distance": (pp * distances).sum(-1).mean(-1),
    }
    if has_cls:
        cls_patches = _renormed(p[:, :, 0, num_prefix:])
        out |= {
            "cls_self": p[:, :, 0, 0],
            "cls_patch_entropy": _entropy(cls_patches),
            "cls_patch_top10": cls_patches.topk(k, dim=-1).values.sum(-1),
            "patch_to_cls": patch_q[..., 0].mean(-1),
        }
    if num_prefix > int(has_cls):
        out["patch_to_registers"] = patch_q[..., int(has_cls):num_prefix].sum(-1).mean(-1)
    return out


class _Accumulator:
    """Running sums of each block's per-image metrics (per head and the head mean), in float64."""

    def __init__(self, num_prefix: int, has_cls: bool, grid: tuple[int, int]):
        self.num_prefix, self.has_cls, self.grid = num_prefix, has_cls, grid
        self.sums: dict[tuple[int, str], Tensor] = {}
        self.images = 0
        self.block = 0
        self._distances: Tensor | None = None

    def __call__(self, probs: Tensor) -> None:
        if self._distances is None:
            self._distances = patch_distances(self.grid, probs.device)
        if probs.shape[-1] != self.num_prefix + self.grid[0] * self.grid[1]:
            raise HarnessError(f"attention over {probs.shape[-1]} tokens, but the backbone has {self.num_prefix} "
                               f"prefix tokens and a {self.grid[0]}x{self.grid[1]} patch grid; the diagnostic "
                               "reads plain ViT attention only.")
        for name, values in block_metrics(probs, self.num_prefix, self.has_cls, self._distances).items():
            per_image = torch.cat([values, values.mean(1, keepdim=True)], dim=1).double()  # heads..., mean
            stats = torch.stack([per_image.sum(0), (per_image ** 2).sum(0)])
            key = (self.block, name)
            self.sums[key] = self.sums[key] + stats.cpu() if key in self.sums else stats.cpu()
        self.block += 1

    def end_batch(self, batch_size: int) -> None:
        self.images += batch_size
        self.block = 0


@contextlib.contextmanager
def explicit_attention(model: torch.nn.Module, sink) -> Iterator[None]:
    """Within the block, every scaled-dot-product attention hands its probabilities (B, H, N, N) to `sink`.

    timm modules take the fused path (`fused_attn`), which calls `F.scaled_dot_product_attention`; it is replaced
    for the duration by the same computation done explicitly, so the outputs are the backbone's own.
    """
    original = F.scaled_dot_product_attention
    fused = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}

    def explicit(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if is_causal or kwargs.get("enable_gqa"):
            raise HarnessError("the attention diagnostic reads bidirectional single-group attention only.")
        logits = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else logits + attn_mask
        probs = logits.float().softmax(-1)
        sink(probs)
        return probs.to(v.dtype) @ v

    for m in fused:
        m.fused_attn = True
    F.scaled_dot_product_attention = explicit
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        for m, value in fused.items():
            m.fused_attn = value


def patch_grid(backbone) -> tuple[int, int]:
    grid = getattr(getattr(backbone.model, "patch_embed", None), "grid_size", None)
    if grid is None:
        side = backbone.entry.img_size // backbone.entry.patch_size
        grid = (side, side)
    return int(grid[0]), int(grid[1])


def measure(backbone, dataset, *, images: int, seed: int, batch_size: int = 64,
            device: torch.device | str = "cpu") -> tuple[dict[tuple[int, str], Tensor], int]:
    """Sums and squared sums per (block, metric) over `images` seeded images of `dataset` (all if fewer)."""
    n = min(images, len(dataset))
    if n < 1:
        raise HarnessError("the attention diagnostic needs at least one image; accepted: --images >= 1.")
    chosen = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
    loader = DataLoader(Subset(dataset, chosen.tolist()), batch_size=batch_size, shuffle=False)
    acc = accumulator(backbone)
    with torch.inference_mode():
        for batch, _ in loader:
            measure_batch(backbone, acc, batch.to(device))
    return acc.sums, acc.images


def accumulator(backbone) -> _Accumulator:
    """An empty accumulator for `backbone`'s token layout."""
    return _Accumulator(backbone.num_prefix_tokens, backbone.entry.class_token, patch_grid(backbone))


def measure_batch(backbone, acc: _Accumulator, images: Tensor) -> None:
    """One frozen pass over `images` with every block's attention reduced into `acc`."""
    with explicit_attention(backbone.model, acc):
        backbone.forward_tokens(images)
    acc.end_batch(len(images))


def attention_rows(backbone, dataset_name: str, dataset, *, images: int, seed: int, split: str = "val",
                   device: torch.device | str = "cpu") -> list[dict]:
    """The diagnostic's table rows for one backbone over one dataset split (see `harness.results.attention`)."""
    import harness

    sums, count = measure(backbone, dataset, images=images, seed=seed, device=device)
    entry = backbone.entry
    num_heads, depth = backbone.num_heads, backbone.depth
    seen = len({block for block, _ in sums})
    if seen != depth:
        raise HarnessError(f"backbone {entry.name!r} attended {seen} times per pass but has {depth} blocks; the "
                           "diagnostic needs one scaled-dot-product attention per block.")
    shared = dict(backbone=entry.name, family=entry.family, random_init=entry.random_init,
                  weights_sha256=backbone.weights_sha256, dataset=dataset_name, split=split, images=count,
                  image_seed=seed, harness_version=harness.__version__,
                  created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    has_registers = backbone.num_prefix_tokens > int(entry.class_token)
    rows = []
    for block in range(depth):
        for metric in METRICS:
            applicable = (metric not in NEEDS_CLS or entry.class_token) and \
                (metric not in NEEDS_REGISTERS or has_registers)
            for h in range(num_heads + 1):
                value = spread = None
                if applicable:
                    total, squares = sums[(block, metric)][:, h].tolist()
                    value = total / count
                    spread = math.sqrt(max(squares / count - value ** 2, 0.0) * count / max(count - 1, 1))
                rows.append(dict(shared, block=block, head="mean" if h == num_heads else str(h), metric=metric,
                                 value=value, spread=spread, applicable=applicable))
    return rows


def diagnose(backbones: tuple[str, ...], datasets: tuple[str, ...], *, results_dir, images: int, seed: int,
             weights: dict[str, str] | None = None, download: bool = False, device: str | None = None,
             on_done=None) -> list[dict]:
    """One frozen pass per backbone x dataset over `images` seeded validation images; each table is written as
    soon as it is computed (`on_done(path, rows)` is told), so an interruption keeps the finished ones."""
    from harness.data.splits import load_splits
    from harness.models.backbones import load_backbone
    from harness.registry import load_registry
    from harness.results.attention import write_attention

    reg = load_registry()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    entries = [reg.dataset(d) for d in datasets]
    all_rows = []
    for name in backbones:
        backbone = load_backbone(name, (weights or {}).get(name), device=device)
        for entry in entries:
            splits = load_splits(entry, backbone.entry, download=download)
            rows = attention_rows(backbone, entry.name, splits.val, images=images, seed=seed, device=device)
            path = write_attention(results_dir, rows)
            if on_done is not None:
                on_done(path, rows)
            all_rows += rows
    return all_rows
