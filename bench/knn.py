"""Weighted k-NN cost: on the demo's token cache, and at ViT-B/16 shapes (100,000 train x 10,000 test features).

Every (k, T) of DINO's grid (k 10, 20, 100, 200 x T 0.07, 0.1, 0.2) comes from one chunked neighbour search, as a
trial runs it. Reports wall time, the process's peak resident memory above its level before the search, and what
the whole similarity matrix would have taken. Writes bench/out/knn.json.

    python bench/knn.py [--device cuda] [--train 100000] [--test 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from harness.heads.kinds.knn import KS, TEMPERATURES
from harness.heads.knn import knn_rankings, pooled_features
from harness.heads.pool.summary import ClsPool

OUT = Path(__file__).resolve().parent / "out"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def demo_cache(device: str) -> dict:
    """The demo-dino-tiny token cache of digits ([cls] summary layout), then k-NN from it, timed without the
    extraction."""
    import harness
    from harness.data.splits import load_splits
    from harness.registry import load_registry
    from harness.tokens.cache import cached_tokens

    backbone = harness.load_backbone("demo-dino-tiny")
    dataset = load_registry().dataset("digits")
    splits = load_splits(dataset, backbone.entry)
    with tempfile.TemporaryDirectory() as cache:
        sets = {name: cached_tokens(backbone, dataset, name, getattr(splits, name), ["norm"], cache_dir=cache,
                                    batch_size=256, device="cpu", summary_prefix=1)[0]
                for name in ("train", "val", "test")}
        t0 = time.perf_counter()
        bank = pooled_features(sets["train"].tokens, ["norm"], ClsPool(), device)
        for name in ("val", "test"):
            queries = pooled_features(sets[name].tokens, ["norm"], ClsPool(), device)
            knn_rankings(bank, sets["train"].labels, queries, 10, KS, TEMPERATURES)
        wall = time.perf_counter() - t0
    return {"train": len(sets["train"]), "queries": len(sets["val"]) + len(sets["test"]), "dim": bank.shape[1],
            "heads": len(KS) * len(TEMPERATURES), "wall_s": wall}


def vitb16(device: str, n_train: int, n_test: int, dim: int = 768, classes: int = 1000) -> dict:
    """Clustered random features of ViT-B/16's width: the search for every (k, T), timed, with the peak memory."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=g)
    train_labels = torch.randint(0, classes, (n_train,), generator=g)
    test_labels = torch.randint(0, classes, (n_test,), generator=g)
    train = F.normalize(centres[train_labels] + 2 * torch.randn(n_train, dim, generator=g), dim=1).to(device)
    test = F.normalize(centres[test_labels] + 2 * torch.randn(n_test, dim, generator=g), dim=1).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    before = peak_rss_mib()
    t0 = time.perf_counter()
    rankings = knn_rankings(train, train_labels, test, classes, KS, TEMPERATURES)
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    top1 = {f"k={k},T={t}": float((r[:, 0] == test_labels.to(r.device)).float().mean() * 100)
            for (k, t), r in rankings.items()}
    out = {"train": n_train, "test": n_test, "dim": dim, "classes": classes, "heads": len(rankings), "wall_s": wall,
           "features_mib": (n_train + n_test) * dim * 4 / 2**20,
           "full_similarity_matrix_mib": n_train * n_test * 4 / 2**20,
           "peak_rss_mib_before": before, "peak_rss_mib_after": peak_rss_mib(),
           "top1_at_k20_T0.07": top1["k=20,T=0.07"]}
    if device == "cuda":
        out["peak_cuda_mib_above_features"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--out", default=str(OUT / "knn.json"))
    args = parser.parse_args()
    result = {"device": args.device, "threads": torch.get_num_threads(), "demo": demo_cache(args.device),
              "vitb16": vitb16(args.device, args.train, args.test)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
