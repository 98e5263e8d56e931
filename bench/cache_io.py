"""Token cache throughput and size: tokens/s written and read back, and bytes per image.

Measured here on a tiny random-init ViT (`demo-mae-tiny`, 32px, patch 8: 17 tokens x 64) over generated images,
then computed for ViT-B/16 on ImageNet-1k (197 tokens x 768, float16, per tap; or the 2 that a grid of [cls] and
mean heads keeps) with the same formula the sweep's disk check uses. Timings (best of --repeats) cover: in-memory
extraction (the backbone alone), the cache writer alone (`cached_tokens` fed precomputed tokens: memory-mapped
write, fsync, rename), a hit (open and verify: the entry's files hashed against its meta.json), the verification
alone (sha256 of the entry's files, from disk and from the page cache), one full read of the cached tokens in
training-sized batches after asking the kernel to drop the files from its page cache, and training a bank of
[cls] and mean heads (8 lrs each, the claim grid's shape) for --epochs from those tokens; the verification is
then given as a fraction of that training, here and extrapolated to ViT-B/16 on ImageNet-1k at the measured
hashing speed. Prints the figures and writes them to bench/out/cache_io.json. Not a test.

    python bench/cache_io.py                   # 4096 generated images (3,686 after the val hold-out), both taps
    python bench/cache_io.py --images 512      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import harness
from harness.models.backbones import Backbone
from harness.tokens.space import SUMMARY_TOKEN_BYTES, TOKEN_BYTES, human_bytes, predict_cache_bytes
from harness.data.splits import load_splits
from harness.registry import load_registry
from harness.heads.bank import HeadBank, HeadSpec
from harness.heads.train import total_steps, train_cached
from harness.models.digests import sha256_of
from harness.tokens.cache import cached_tokens, extract_tokens

OUT = Path(__file__).resolve().parent / "out"
IMAGENET = {"train": 1_268_355, "val": 12_812, "test": 50_000}  # pool 1,281,167 minus the seeded 1% hold-out
VIT_B16 = {"num_tokens": 197, "embed_dim": 768}


def _drop_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the cached files' pages (clean after fsync), so the read pass goes to disk."""
    for f in folder.rglob("*.npy"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Replay:
    """Stands in for the backbone when timing the writer: its "images" are indices into tokens already computed."""

    def __init__(self, backbone: Backbone, tokens: dict[str, torch.Tensor]):
        self.entry, self.weights_sha256, self.tokens = backbone.entry, backbone.weights_sha256, tokens

    def forward_taps(self, index: torch.Tensor, taps: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return {tap: self.tokens[tap][index] for tap in taps}


def _best_of(repeats: int, run) -> tuple[float, object]:
    """The fastest of `repeats` runs (the machine is shared) and the last run's result."""
    times, out = [], None
    for i in range(repeats):
        t = time.perf_counter()
        out = run(i)
        times.append(time.perf_counter() - t)
    return min(times), out


LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def train_heads_s(backbone: Backbone, tokens, num_classes: int, epochs: int, batch_size: int) -> float:
    """Seconds to train [cls] and mean heads at LRS (one seed) for `epochs` from `tokens` (train = val = test here:
    only the time counts)."""
    registry = load_registry()
    specs = [HeadSpec(f"{agg}/{lr:g}", f"{agg}-{lr:g}", registry.aggregator(agg), {}, "sgd", lr, 0.0, 0)
             for agg in ("cls", "mean") for lr in LRS]
    n = len(tokens.labels)
    bank = HeadBank(specs, embed_dim=backbone.embed_dim, num_heads=backbone.num_heads,
                    num_prefix_tokens=backbone.num_prefix_tokens, num_classes=num_classes, batch_size=batch_size,
                    shared_order=False, total_steps=total_steps(n, batch_size, epochs), warmup_steps=0,
                    device=torch.device("cpu"))
    t = time.perf_counter()
    train_cached(bank, tokens, tokens, tokens, epochs=epochs, batch_size=batch_size, device="cpu")
    return time.perf_counter() - t


def measure(num_images: int, batch_size: int, taps: tuple[str, ...], cache_dir: Path, repeats: int,
            device: str, epochs: int) -> dict:
    registry = load_registry()
    backbone = harness.load_backbone("demo-mae-tiny", device=device)
    base = registry.dataset("synthetic-patch")
    entry = replace(base, options={**base.options, "num_train": num_images, "num_test": base.num_classes})
    generated = load_splits(entry, backbone.entry).train
    images = torch.stack([generated[i][0] for i in range(len(generated))])  # decoded once: time the backbone + IO
    labels = torch.as_tensor(generated.labels)
    extract_s, (reference, n) = _best_of(repeats, lambda _: extract_tokens(
        backbone, TensorDataset(images, labels), taps, batch_size=batch_size, device=device))
    replay, indices = Replay(backbone, reference.tokens), TensorDataset(torch.arange(n), labels)
    write_s, (_, passes) = _best_of(repeats, lambda i: cached_tokens(
        replay, entry, "train", indices, taps, cache_dir=cache_dir / str(i), batch_size=batch_size, device="cpu"))
    hit_s, (hit, hit_passes) = _best_of(repeats, lambda _: cached_tokens(
        replay, entry, "train", indices, taps, cache_dir=cache_dir / "0", batch_size=batch_size, device="cpu"))

    def read(_: int) -> float:
        _drop_page_cache(cache_dir / "0")
        return sum(hit.tokens[tap][s:s + batch_size].float().sum().item() for s in range(0, n, batch_size)
                   for tap in taps)

    read_s, checksum = _best_of(repeats, read)
    files = [f for f in (cache_dir / "0").rglob("*.npy")]

    def verify(cold: bool) -> None:
        if cold:
            _drop_page_cache(cache_dir / "0")
        for f in files:
            sha256_of(f)

    verify_cold_s, _ = _best_of(repeats, lambda _: verify(True))
    verify_warm_s, _ = _best_of(repeats, lambda _: verify(False))
    train_s = train_heads_s(backbone, hit, entry.num_classes, epochs, batch_size)
    assert passes == n and hit_passes == 0
    assert all(torch.equal(hit.tokens[tap], reference.tokens[tap]) for tap in taps)
    _, num_tokens, dim = reference.tokens[taps[0]].shape
    tokens = n * num_tokens * len(taps)
    written = sum(f.stat().st_size for f in (cache_dir / "0").rglob("*") if f.is_file())
    return {
        "backbone": backbone.entry.label, "images": n, "num_tokens": num_tokens, "embed_dim": dim, "taps": list(taps),
        "batch_size": batch_size, "repeats": repeats, "device": device, "extract_in_memory_s": extract_s,
        "write_s": write_s,
        "hit_open_s": hit_s, "read_back_s": read_s, "tokens_per_s_extract": tokens / extract_s,
        "tokens_per_s_write": tokens / write_s, "tokens_per_s_read_back": tokens / read_s,
        "write_mb_per_s": written / 1e6 / write_s, "read_mb_per_s": written / 1e6 / read_s,
        "bytes_written": written, "bytes_per_image": written / n,
        "bytes_predicted": predict_cache_bytes(n, num_tokens, dim, taps), "read_checksum": checksum,
        "verify_from_disk_s": verify_cold_s, "verify_from_page_cache_s": verify_warm_s,
        "verify_mb_per_s": sum(f.stat().st_size for f in files) / 1e6 / verify_cold_s,
        "verify_mb_per_s_page_cache": sum(f.stat().st_size for f in files) / 1e6 / verify_warm_s,
        "heads_trained": 2 * len(LRS), "train_epochs": epochs, "train_heads_s": train_s,
        "verify_fraction_of_training": verify_cold_s / train_s,
    }


def vit_b16_imagenet(taps: tuple[str, ...], summary: bool = False) -> dict:
    """Every token, or (`summary`: a grid of [cls] and mean heads only, like the claim grid) [cls] + patch mean."""
    shape = {**VIT_B16, "num_tokens": 2} if summary else VIT_B16
    token_bytes = SUMMARY_TOKEN_BYTES if summary else TOKEN_BYTES  # the summary is stored in float32
    per_split = {split: predict_cache_bytes(n, taps=taps, token_bytes=token_bytes, **shape)
                 for split, n in IMAGENET.items()}
    return {"backbone": "ViT-B/16", "dataset": "imagenet-1k", **shape, "taps": list(taps),
            "kept": "[cls] + patch mean (float32)" if summary else "all tokens (float16)",
            "token_bytes_per_image_per_tap": shape["num_tokens"] * shape["embed_dim"] * token_bytes,
            "bytes_per_split": per_split, "bytes_total": sum(per_split.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="each timing is the best of this many runs")
    parser.add_argument("--device", default="cpu", help="where the backbone runs for the extraction timing")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the head bank the verification is set against")
    args = parser.parse_args()
    torch.manual_seed(0)
    taps = ("norm", "prenorm")
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        tiny = measure(args.images, args.batch_size, taps, Path(tmp), args.repeats, args.device, args.epochs)
    report = {"measured": tiny, "computed": [vit_b16_imagenet(("norm",)), vit_b16_imagenet(taps),
                                             vit_b16_imagenet(("norm",), summary=True)],
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads()}}
    OUT.mkdir(exist_ok=True)
    (OUT / "cache_io.json").write_text(json.dumps(report, indent=2))
    m = tiny
    print(f"{m['backbone']} on {m['device']}: {m['images']} images x {m['num_tokens']} tokens x {m['embed_dim']} "
          f"x {len(taps)} taps")
    print(f"  extract in memory   {m['extract_in_memory_s']:.3f} s  {m['tokens_per_s_extract']:,.0f} tokens/s")
    print(f"  cache write         {m['write_s']:.3f} s  {m['tokens_per_s_write']:,.0f} tokens/s "
          f"({m['write_mb_per_s']:.0f} MB/s, temp folder + fsync + rename)")
    print(f"  cache hit (open)    {m['hit_open_s']:.4f} s")
    print(f"  read back           {m['read_back_s']:.3f} s  {m['tokens_per_s_read_back']:,.0f} tokens/s "
          f"({m['read_mb_per_s']:.0f} MB/s)")
    print(f"  verify on read      {m['verify_from_disk_s']:.4f} s from disk ({m['verify_mb_per_s']:.0f} MB/s), "
          f"{m['verify_from_page_cache_s']:.4f} s from the page cache ({m['verify_mb_per_s_page_cache']:.0f} MB/s)")
    print(f"  train {m['heads_trained']} heads     {m['train_heads_s']:.2f} s for {m['train_epochs']} epochs: verifying "
          f"is {100 * m['verify_fraction_of_training']:.2f}% of it")
    print(f"  on disk             {m['bytes_per_image']:,.1f} bytes/image ({human_bytes(m['bytes_written'])}; "
          f"predicted {human_bytes(m['bytes_predicted'])})")
    for c in report["computed"]:
        splits = ", ".join(f"{s} {human_bytes(b)}" for s, b in c["bytes_per_split"].items())
        print(f"ViT-B/16 on ImageNet-1k, {c['kept']}, taps {'+'.join(c['taps'])}: "
              f"{c['token_bytes_per_image_per_tap']:,} token "
              f"bytes/image/tap; {splits}; total {human_bytes(c['bytes_total'])} ({c['bytes_total']:,} bytes); "
              f"verified at {m['verify_mb_per_s']:.0f} MB/s in {c['bytes_total'] / 1e6 / m['verify_mb_per_s']:,.0f} s "
              f"per sweep that reads it (once per trial, not per epoch)")
    print(f"wrote {OUT / 'cache_io.json'}")


if __name__ == "__main__":
    main()
