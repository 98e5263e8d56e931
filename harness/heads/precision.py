"""The heads' matmul precision: TF32 on CUDA devices by default, float32 everywhere else.

The cls+mean bank's two matmuls per step are ~165 GFLOP at ViT-B/16 shapes with 210 heads x 1000 classes; in fp32
they cost 22.4% of the bf16 backbone forward on an H100. TF32 rounds only the matmul inputs to a 10-bit mantissa:
tensors, accumulation, master weights and optimizer state stay float32, and the hand-written gradients of the
linear groups keep their float32 buffers. (bf16 autocast is not offered: those buffers would need bf16 copies.)
CPU runs, and so the recipe-parity tests, are float32 whatever is asked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "tf32")


def resolve(mode: str, device: torch.device) -> str:
    if mode not in PRECISIONS:
        raise ValueError(f"head precision {mode!r}; accepted: {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        return "fp32"
    return "tf32" if mode == "auto" else mode


@contextlib.contextmanager
def head_matmuls(device: torch.device | str, mode: str = "auto") -> Iterator[str]:
    """Within the block, float32 matmuls on `device` run at the resolved precision (yielded)."""
    resolved = resolve(mode, torch.device(device))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if resolved == "tf32" else "highest")
    try:
        yield resolved
    finally:
        torch.set_float32_matmul_precision(previous)
