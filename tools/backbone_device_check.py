"""Device check for the backbone loaders: fixture parity on CUDA and forward_taps throughput per registered arch.

Run on a GPU machine from the repository root:
    python tools/backbone_device_check.py [--fixtures DIR] [--batch 64]
Parity runs with TF32 off (its error is far above the 1e-5 tolerance). Throughput builds each registered
architecture with random weights (speed does not depend on them) and times `forward_taps(["norm", "prenorm"])` in
float32 with torch's default matmul precision, as token extraction runs; it excludes data loading, so it is an
upper bound for extraction. These numbers are the registry's `images_per_s`.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness  # noqa: E402
from harness.models.backbones import Backbone, build_model  # noqa: E402
from harness.registry import ARCH_OVERRIDE_KEYS, load_registry  # noqa: E402

FAMILY_ENTRY = {"mae": "mae-vit-b16", "simmim": "simmim-vit-b16", "dino": "dino-vit-b16", "ibot": "ibot-vit-b16",
                "ijepa": "ijepa-vit-h14-in1k"}


def parity(root: Path) -> float:
    """Worst max-abs error over every check of every backbone manifest under `root`, on CUDA."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    worst = 0.0
    for path in sorted(root.rglob("manifest.json")):
        manifest = json.loads(path.read_text())
        if manifest.get("kind") != "backbone":
            continue
        ref = torch.load(path.parent / "reference.pt", weights_only=True)
        overrides = {k: v for k, v in manifest["arch"].items() if k in ARCH_OVERRIDE_KEYS}
        for check in manifest["checks"]:
            key = None if check["is_family_default"] else check["checkpoint_key"]
            bb = harness.load_backbone(FAMILY_ENTRY[manifest["family"]], path.parent / check["file"], device="cuda",
                                       checkpoint_key=key, **overrides)
            out = bb.forward_taps(ref["x"].cuda(), ["norm", "prenorm"])
            err = max((out["norm"].cpu() - ref[check["expect_tokens"]]).abs().max().item(),
                      (out["prenorm"].cpu() - ref[check["expect_tokens_prenorm"]]).abs().max().item())
            worst = max(worst, err)
            print(f"parity {manifest['family']:6s} {check['file']:42s} key={key}: max abs err {err:.2e}", flush=True)
    torch.backends.cudnn.allow_tf32 = True  # torch's default again; matmul TF32 stays off, as in extraction
    return worst


def throughput(batch: int, iters: int = 8) -> None:
    for name, entry in sorted(load_registry().backbones.items()):
        if entry.random_init:
            continue
        bb = Backbone(build_model(entry), entry, "random-init").cuda()
        x = torch.randn(batch, 3, entry.img_size, entry.img_size, device="cuda")
        with torch.inference_mode():
            for _ in range(3):
                bb.forward_taps(x, ["norm", "prenorm"])
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(iters):
                bb.forward_taps(x, ["norm", "prenorm"])
            torch.cuda.synchronize()
        rate = iters * batch / (time.perf_counter() - start)
        print(f"throughput {name:24s} {entry.arch:28s} {entry.img_size}px batch {batch}: {rate:8.1f} images/s float32",
              flush=True)
        del bb, x
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    beside = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
    parser.add_argument("--fixtures", type=Path, default=Path(os.environ.get("HARNESS_FIXTURES_DIR", beside)))
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print("torch", torch.__version__, "timm", timm.__version__, torch.cuda.get_device_name(), flush=True)
    worst = parity(args.fixtures)
    print(f"parity worst {worst:.2e} (tolerance 1e-5): {'PASS' if worst <= 1e-5 else 'FAIL'}", flush=True)
    throughput(args.batch)


if __name__ == "__main__":
    main()
