"""Token extraction throughput (images/s) at ViT-S/16, B/16, L/16 and H/14 shapes, and what each speed-up buys.

Random weights, the registered entries' architectures, the harness's own `Backbone.forward_taps`. Three levels:
- `model`: forward of a batch already on the device (the ceiling), with each speed-up switched off or on in turn
  against the default (fused scaled-dot-product attention on; bf16 autocast on CUDA, float32 on a CPU):
  `fp32` (no autocast; CUDA only), `unfused` (timm's explicit softmax attention), `channels_last` (the
  patch-embedding convolution's input layout), `compile` (`torch.compile` of forward_taps, shapes in `--compile`);
- `tensors`: `harness.tokens.cache.extract_tokens` over pre-decoded float images in host memory (loader, pinned
  host-to-device copy, float16 copy-out one batch late);
- `pipeline`: `extract_tokens` over JPEG files decoded by PIL and the harness's ImageNet eval transform (resize,
  centre crop, normalise), with the default loader workers and, for the first shape, with none: the decode
  bottleneck. Plus the host-to-device copy rate from pinned and from pageable memory (CUDA).
- `online`: the online protocol's feeding from JPEG files (RandomResizedCrop + flip) into the backbone, images/s:
  `cpu_path` (PIL decode and torchvision transforms in the loader workers, as on a CPU-only machine) and
  `device_path` (workers read bytes and draw the crops; decode and augmentation batched on the device,
  `harness.data.device_feed`), side by side.
Prints a table and writes bench/out/extract_throughput-<device>.json (or --out). Not a test.

    python bench/extract_throughput.py                                  # CPU, float32, ViT-S/16 and B/16
    python bench/extract_throughput.py --shapes vits16,vitb16,vitl16,vith14 --batch-size 4 --iters 2
    python bench/extract_throughput.py --device cuda --compile vitb16   # the lead's GPU run (bench/gpu_check.sh)
    python bench/extract_throughput.py --smoke                          # seconds: tiny shape, every code path
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from harness.models.backbones import Backbone, build_model
from harness.data.splits import build_transform
from harness.registry import BackboneEntry, load_registry
from harness.tokens.cache import extract_tokens, extraction_precision, loader_workers

SHAPES = {"tiny": "demo-mae-tiny", "vits16": "dino-vit-s16", "vitb16": "mae-vit-b16", "vitl16": "mae-vit-l16",
          "vith14": "mae-vit-h14"}
TAPS = ("norm", "prenorm")  # both, as a grid with every aggregator asks


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn: Callable[[], object], images_per_call: int, warmup: int, iters: int, device: torch.device) -> float:
    """Images per second of `fn` over `iters` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return images_per_call * iters / (time.perf_counter() - t)


class Cycle(Dataset):
    """`length` items drawn cyclically from a small pool, each passed through `load` on every access."""

    def __init__(self, pool: list, length: int, load: Callable[[object], torch.Tensor]):
        self.pool, self.length, self.load = pool, length, load

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.load(self.pool[i % len(self.pool)]), i % 10


def jpeg_pool(count: int, seed: int = 0) -> list[bytes]:
    """JPEGs of ImageNet's typical size (500 x 375), smooth random content (quality 90), encoded once."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((500, 375), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def set_fused_attention(backbone: Backbone, on: bool) -> None:
    for block in backbone.model.blocks:
        block.attn.fused_attn = on


def model_variants(backbone: Backbone, entry: BackboneEntry, args: argparse.Namespace, device: torch.device,
                   compile_it: bool) -> dict[str, float]:
    """images/s of the forward on a resident batch: the default, then each speed-up flipped."""
    batch = torch.randn(args.batch_size, 3, entry.img_size, entry.img_size, device=device)
    bf16 = extraction_precision(device) == "bfloat16"

    def forward(images: torch.Tensor, autocast: bool, fn: Callable | None = None) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16) if autocast \
                    else nullcontext():
                return (fn or backbone.forward_taps)(images, TAPS)
        return call

    out = {"default": rate(forward(batch, bf16), args.batch_size, args.warmup, args.iters, device)}
    if bf16:
        out["fp32"] = rate(forward(batch, False), args.batch_size, args.warmup, args.iters, device)
    set_fused_attention(backbone, False)
    out["unfused"] = rate(forward(batch, bf16), args.batch_size, args.warmup, args.iters, device)
    set_fused_attention(backbone, True)
    out["channels_last"] = rate(forward(batch.contiguous(memory_format=torch.channels_last), bf16),
                                args.batch_size, args.warmup, args.iters, device)
    if compile_it:
        compiled = torch.compile(backbone.forward_taps)
        t = time.perf_counter()
        forward(batch, bf16, compiled)()
        sync(device)
        out["compile_first_call_s"] = time.perf_counter() - t
        out["compile"] = rate(forward(batch, bf16, compiled), args.batch_size, args.warmup, args.iters, device)
    return out


def extraction(backbone: Backbone, dataset: Dataset, args: argparse.Namespace, device: torch.device,
               workers: int) -> float:
    """images/s of one `extract_tokens` call over `dataset`, after a warm-up call on its first two batches."""
    warm = torch.utils.data.Subset(dataset, range(min(len(dataset), 2 * args.batch_size)))
    extract_tokens(backbone, warm, TAPS, batch_size=args.batch_size, device=device, num_workers=workers)
    sync(device)
    t = time.perf_counter()
    extract_tokens(backbone, dataset, TAPS, batch_size=args.batch_size, device=device, num_workers=workers)
    sync(device)
    return len(dataset) / (time.perf_counter() - t)


def copy_rates(device: torch.device, megabytes: int = 256) -> dict[str, float]:
    """Host-to-device GB/s from pinned and from pageable memory."""
    host = torch.empty(megabytes * 2**20, dtype=torch.uint8)
    pinned = host.pin_memory()
    rates = {}
    for name, src in (("pinned", pinned), ("pageable", host)):
        secs = 1.0 / rate(lambda: src.to(device, non_blocking=True), 1, 2, 5, device)
        rates[name] = megabytes / 1024 / secs
    return rates


def measure(shape: str, args: argparse.Namespace, device: torch.device, jpegs: list[bytes], first: bool) -> dict:
    registry = load_registry()
    entry = registry.backbone(SHAPES[shape])
    backbone = Backbone(build_model(entry), entry, "random-init").to(device)
    images = args.batch_size * args.iters
    result = {"backbone": entry.name, "arch": entry.arch, "img_size": entry.img_size,
              "model": model_variants(backbone, entry, args, device, shape in args.compile.split(","))}
    size = entry.img_size
    decoded = [torch.randn(3, size, size) for _ in range(min(2 * args.batch_size, 64))]
    result["tensors"] = extraction(backbone, Cycle(decoded, images, lambda x: x), args, device, workers=0)
    transform = build_transform(registry.dataset("imagenet-1k"), entry, augment=False)

    def decode(data: bytes) -> torch.Tensor:
        return transform(Image.open(io.BytesIO(data)).convert("RGB"))

    workers = args.workers if args.workers is not None else max(loader_workers(device), 1)
    result["pipeline"] = {f"workers={workers}": extraction(backbone, Cycle(jpegs, images, decode), args, device,
                                                            workers)}
    if first and workers > 0:
        serial = args.batch_size * max(2, args.iters // 5)
        result["pipeline"]["workers=0"] = extraction(backbone, Cycle(jpegs, serial, decode), args, device, 0)
    result["online"] = online_rates(backbone, entry, args, device, jpegs, workers)
    return result


def online_rates(backbone: Backbone, entry: BackboneEntry, args: argparse.Namespace, device: torch.device,
                 jpegs: list[bytes], workers: int) -> dict[str, float]:
    """images/s of augmented batches from JPEG files through the backbone: CPU transforms vs the device feed."""
    import tempfile

    from harness.data.device_feed import device_feed
    from harness.data.order import EpochOrderSampler
    from harness.tokens.cache import backbone_autocast

    images = args.batch_size * args.iters
    augment = build_transform(load_registry().dataset("imagenet-1k"), entry, augment=True)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for k, data in enumerate(jpegs):
            paths.append(str(Path(folder) / f"{k}.jpg"))
            Path(paths[-1]).write_bytes(data)
        files = [paths[i % len(paths)] for i in range(images)]
        cpu = torch.utils.data.DataLoader(Cycle(files, images, lambda f: augment(Image.open(f).convert("RGB"))),
                                          batch_size=args.batch_size, num_workers=workers,
                                          pin_memory=device.type == "cuda")
        feed = device_feed(files, [0] * images, augment=True, batch_size=args.batch_size,
                           sampler=EpochOrderSampler(images, 0), num_workers=workers, device=device,
                           size=entry.img_size, resize=entry.img_size, interpolation=entry.interpolation, mean=entry.mean, std=entry.std,
                           drop_last=True)

        def through(batches) -> float:
            t = time.perf_counter()
            with torch.no_grad(), backbone_autocast(device):
                for x, _ in batches:
                    backbone.forward_taps(x.to(device, non_blocking=True), TAPS)
            sync(device)
            return images / (time.perf_counter() - t)

        return {"cpu_path": through(cpu), "device_path": through(feed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)} (default: vits16,vitb16 "
                        "on a CPU, vits16,vitb16,vitl16,vith14 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 on a CPU, 128 on CUDA")
    parser.add_argument("--iters", type=int, default=None, help="timed batches (default 3 on a CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches first (default 1 CPU, 3 CUDA)")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers of the pipeline (default: the extraction default, at least 1)")
    parser.add_argument("--compile", default="", help="comma list of shapes where torch.compile is timed too "
                        "(a minute or more each at large shapes)")
    parser.add_argument("--smoke", action="store_true", help="tiny shape, batch 4, 1 iteration: checks the paths")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.smoke:
        args.shapes, args.batch_size, args.iters, args.warmup = "tiny", 4, 1, 1
    args.shapes = args.shapes or ("vits16,vitb16,vitl16,vith14" if cuda else "vits16,vitb16")
    args.batch_size = args.batch_size or (128 if cuda else 8)
    args.iters = args.iters or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    torch.backends.cudnn.benchmark = True
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": torch.cuda.get_device_name(device) if cuda
        else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "torch": torch.__version__, "cpus": os.cpu_count(), "batch_size": args.batch_size, "iters": args.iters,
        "warmup": args.warmup, "precision": extraction_precision(device), "taps": list(TAPS), "shapes": {},
    }
    if cuda:
        out["h2d_gbps"] = copy_rates(device)
        print(f"host-to-device copy: {out['h2d_gbps']['pinned']:.1f} GB/s pinned, "
              f"{out['h2d_gbps']['pageable']:.1f} GB/s pageable")
    jpegs = jpeg_pool(32)
    print(f"{out['device']}, batch {args.batch_size}, {args.iters} timed batches; images/s "
          f"(default = fused attention, {out['precision']})")
    path = args.out or Path(__file__).resolve().parent / "out" / f"extract_throughput-{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for k, shape in enumerate(args.shapes.split(",")):
        r = measure(shape, args, device, jpegs, first=k == 0)
        out["shapes"][shape] = r
        cells = [f"{name} {v:8.1f}" for name, v in r["model"].items() if not name.endswith("_s")]
        print(f"{shape:7s} model: " + ", ".join(cells))
        print(f"{'':7s} extract_tokens from tensors {r['tensors']:8.1f}; from JPEGs " +
              ", ".join(f"({name}) {v:8.1f}" for name, v in r["pipeline"].items()))
        print(f"{'':7s} online from JPEGs: cpu path {r['online']['cpu_path']:8.1f}, device path "
              f"{r['online']['device_path']:8.1f}")
        path.write_text(json.dumps(out, indent=1))  # after every shape: a run cut short keeps what it measured
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
