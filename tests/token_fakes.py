"""A tiny deterministic stand-in for a loaded backbone (`forward_taps`, `entry`, `weights_sha256`), counting calls.

Also runnable as a script (`python token_fakes.py CACHE_DIR DELAY SPLIT_PT`) that writes the cache of a saved split
(images, labels) slowly, so a test can SIGKILL it mid-write; it imports neither torchvision nor scikit-learn.
"""

from __future__ import annotations

import sys
import time
import torch

from harness.registry import BackboneEntry

ENTRY = BackboneEntry(name="fake-vit", family="mae", arch="vit_tiny_fake", img_size=8, patch_size=4,
                      class_token=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), checkpoint_key=None,
                      random_init=True)


class FakeBackbone(torch.nn.Module):
    """Patchify + a seeded linear map; `prenorm` is that, `norm` its LayerNorm; [cls] is the patch mean."""

    def __init__(self, entry: BackboneEntry = ENTRY, embed_dim: int = 8, delay_s: float = 0.0):
        super().__init__()
        self.entry, self.weights_sha256, self.delay_s, self.calls = entry, "ab" * 32, delay_s, 0
        p = entry.patch_size
        self.proj = torch.nn.Linear(3 * p * p, embed_dim)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=g))
            self.proj.bias.zero_()

    def forward_taps(self, images: torch.Tensor, taps) -> dict[str, torch.Tensor]:
        self.calls += 1
        p = self.entry.patch_size
        patches = images.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
        x = self.proj(patches)
        x = torch.cat([x.mean(1, keepdim=True), x], dim=1)
        out = {"prenorm": x, "norm": torch.nn.functional.layer_norm(x, x.shape[-1:])}
        time.sleep(self.delay_s)
        return {tap: out[tap] for tap in taps}


def digits_val(entry: BackboneEntry = ENTRY):
    """The digits entry and its val split (203 images), preprocessed for `entry`."""
    from harness.data.splits import load_splits
    from harness.registry import load_registry

    dataset = load_registry().dataset("digits")
    return dataset, load_splits(dataset, entry).val


if __name__ == "__main__":
    from torch.utils.data import TensorDataset

    from harness.registry import load_registry
    from harness.tokens.cache import cached_tokens

    images, labels = torch.load(sys.argv[3])
    cached_tokens(FakeBackbone(delay_s=float(sys.argv[2])), load_registry().dataset("digits"), "val",
                  TensorDataset(images, labels), ["norm", "prenorm"], cache_dir=sys.argv[1], batch_size=8, device="cpu")
