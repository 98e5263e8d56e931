"""The GPU feeding path, run on the CPU: the same random crops and flips as torchvision draws, and the same
pixels as the per-image torchvision transforms within uint8 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms import v2

from harness.data.device_feed import (Box, DeviceFeed, EncodedImages, _collate, crop_params, device_feed,
                                      eval_box, flip_param, resize_weights)
from harness.data.order import epoch_order
from harness.data.splits import build_transform
from harness.registry import load_registry

SIZES = [(375, 500), (500, 333), (64, 64), (40, 900), (900, 40), (224, 224), (97, 131)]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("n_in, n_out", [(500, 224), (100, 224), (37, 16), (224, 224), (333, 256)])
def test_resize_weights_are_torchs_antialiased_kernel(interpolation, n_in, n_out):
    x = torch.rand(2, 3, n_in, 5, dtype=torch.float64)
    ref = F.interpolate(x, size=(n_out, 5), mode=interpolation, antialias=True, align_corners=False)
    mine = torch.einsum("oi,bciw->bcow", resize_weights(n_in, n_out, interpolation), x)
    assert (ref - mine).abs().max() < 1e-12


def test_crop_and_flip_draws_are_torchvisions():
    """Same seed, same calls: the crops and flips torchvision's transforms would draw, fallbacks included."""
    crop, flip = v2.RandomResizedCrop(224), v2.RandomHorizontalFlip()
    for seed in range(20):
        for h, w in SIZES:
            torch.manual_seed(seed)
            p = crop.make_params([torch.zeros(3, h, w, dtype=torch.uint8)])
            flipped = not (torch.rand(1) >= flip.p)
            torch.manual_seed(seed)
            mine = crop_params(h, w)
            assert mine == (p["top"], p["left"], p["height"], p["width"])
            assert flip_param() == flipped


def _jpegs(tmp_path, sizes=SIZES) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate(sizes):
        smooth = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
        img = Image.fromarray(smooth).resize((w, h), Image.BICUBIC)
        path = tmp_path / f"{k}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return paths


def _entries():
    reg = load_registry()
    dataset = next(d for d in reg.datasets.values() if d.source == "imagefolder")
    return dataset, reg.backbone("mae-vit-b16")


@pytest.mark.parametrize("augment", [True, False])
def test_batched_transforms_equal_per_image_torchvision(tmp_path, augment):
    dataset, backbone = _entries()
    paths = _jpegs(tmp_path)
    tf = build_transform(dataset, backbone, augment=augment)
    torch.manual_seed(7)
    reference = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    torch.manual_seed(7)
    items = [EncodedImages(paths, [0] * len(paths), augment=augment)[i] for i in range(len(paths))]
    data, labels, sizes, boxes = _collate(items)
    resize = int(backbone.img_size / backbone.crop_pct)
    feed = DeviceFeed(None, torch.device("cpu"), backbone.img_size, resize, backbone.interpolation, backbone.mean,
                      backbone.std)
    batched = feed.transform(feed.decode(data), sizes, boxes)
    # one uint8 level of the normalised scale: the largest rounding difference allowed
    level = 1 / 255 / min(backbone.std)
    err = (batched - reference).abs().max().item()
    assert err <= level + 1e-6, f"max abs difference {err} (one uint8 level is {level})"
    print(f"augment={augment}: max abs difference {err:.2e} (one uint8 level {level:.2e})")


def test_eval_box_is_torchvisions_resize_and_center_crop():
    for h, w in SIZES:
        img = torch.zeros(1, h, w)
        resized = v2.functional.resize(img, 256)
        (new_h, new_w), (top, left) = eval_box(h, w, 256, 224)
        assert resized.shape[-2:] == (new_h, new_w)
        marker = torch.zeros(1, new_h, new_w)
        marker[0, top, left] = 1
        assert v2.functional.center_crop(marker, 224)[0, 0, 0] == 1


def test_feed_iterates_in_sampler_order_with_each_images_own_crops(tmp_path):
    """Batches follow the sampler; an image's crop depends on its draw seed alone, not on what was drawn before."""
    from harness.data.order import EpochOrderSampler

    paths = _jpegs(tmp_path)
    labels = list(range(len(paths)))

    def run(skip: int) -> tuple[torch.Tensor, torch.Tensor]:
        sampler = EpochOrderSampler(len(paths), seed=3)
        sampler.start(0, skip=skip)
        torch.manual_seed(skip)  # the global generator's state plays no part
        feed = device_feed(paths, labels, augment=True, batch_size=3, sampler=sampler, num_workers=0,
                           device=torch.device("cpu"), size=32, resize=36, interpolation="bicubic",
                           mean=(0.5,) * 3, std=(0.25,) * 3, drop_last=True)
        batches = list(feed)
        assert feed.batch_size == 3 and len(batches) == (len(paths) - skip) // 3
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    (a, la), (b, lb) = run(0), run(3)
    order = epoch_order(len(paths), 3, 0).tolist()[:len(la)]  # full batches only
    assert la.tolist() == order and lb.tolist() == order[3:] and a.shape == (6, 3, 32, 32)
    assert torch.equal(a[3:], b)


def test_online_loader_of_an_image_folder_becomes_a_device_feed(tmp_path):
    """The trial's hook: an augmented image-folder view keeps its loader's sampler, batch size and generator; an
    in-memory source (digits) keeps the CPU loader."""
    from harness.data.device_feed import on_device
    from harness.data.splits import load_splits
    from harness.heads.train import online_loader

    reg = load_registry()
    backbone = reg.backbone("demo-mae-tiny")
    digits = load_splits(reg.dataset("digits"), backbone, augment=True).train
    loader = online_loader(digits, batch_size=16, seed=0)
    assert on_device(loader, digits, backbone, torch.device("cpu")) is None
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        (tmp_path / "val" / c).mkdir(parents=True)
    for k, p in enumerate(_jpegs(tmp_path, SIZES * 2)):
        cls = "ab"[k % 2]
        for split in ("train", "val"):
            Image.open(p).save(tmp_path / split / cls / f"{k}.jpg")
    import dataclasses
    folder = dataclasses.replace(_entries()[0], num_classes=2, val_fraction=0.25,
                                 options={"path": str(tmp_path)})
    view = load_splits(folder, backbone, augment=True).train
    loader = online_loader(view, batch_size=4, seed=0)
    feed = on_device(loader, view, backbone, torch.device("cpu"))
    assert feed is not None and feed.loader.sampler is loader.sampler and feed.batch_size == 4
    images, labels = next(iter(feed))
    assert images.shape == (4, 3, backbone.img_size, backbone.img_size) and labels.dtype == torch.int64


def test_head_matmuls_are_float32_on_the_cpu_and_restore_the_setting():
    from harness.heads.precision import head_matmuls, resolve

    before = torch.get_float32_matmul_precision()
    with head_matmuls("cpu", "tf32") as mode:
        assert mode == "fp32" and torch.get_float32_matmul_precision() == "highest"
    assert torch.get_float32_matmul_precision() == before
    assert resolve("auto", torch.device("cuda")) == "tf32" and resolve("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(ValueError, match="accepted: auto, fp32, tf32"):
        resolve("bf16", torch.device("cpu"))


def test_a_small_budget_splits_the_batch_without_changing_a_pixel():
    """Chunking by padded size is an implementation detail: one image per chunk gives the same output."""
    from harness.data.device_feed import batched_resized_crops, box_weights

    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8) for h, w in SIZES]
    weights = [box_weights(h, w, Box(0, 0, h, w, flip=k % 2 == 1), 32, "bicubic") for k, (h, w) in enumerate(SIZES)]
    whole = batched_resized_crops(images, weights)
    assert torch.equal(whole, batched_resized_crops(images, weights, budget=1))
