"""Feeding the GPU: JPEG decode and the online protocol's augmentation as batched device operations.

On a GPU the CPU's JPEG decode and per-image transforms cap the online protocol far below the backbone's speed
(ViT-B/16 on an H100: 1,092 images/s from JPEGs with 15 workers against 8,372 for the bf16 forward). Here the
loader workers only read file bytes and draw each image's random crop and flip exactly as torchvision's
`RandomResizedCrop` + `RandomHorizontalFlip` draw them (the same calls on the image's own seeded generator,
harness/data/order.py, in the same order, from the size in the file header); the device decodes the batch
(`torchvision.io.decode_jpeg`) and applies every crop, flip and resize at once as two batched matrix products: resizing is linear and separable, so
each image's output is Wy @ image @ Wx^T with antialiased bicubic weight rows (the same filter, support and
normalisation as torch's `antialias=True` kernel) that are zero outside its crop and reversed for a flip. On a
machine without a GPU the per-image torchvision path stays; the tests run this one on the CPU against it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from harness.data.order import EpochOrderSampler, SeededDraws

SCALE, RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's defaults, as the probe recipes use them


def crop_params(height: int, width: int, scale: tuple[float, float] = SCALE,
                ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop, drawn from torch's global generator with the same calls in the
    same order as torchvision.transforms.v2.RandomResizedCrop, so a seeded worker draws the same crops."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def flip_param(p: float = 0.5) -> bool:
    """Whether to flip, drawn as v2.RandomHorizontalFlip draws it (one torch.rand(1), after the crop's draws)."""
    return bool(torch.rand(1).item() < p)


def _cubic(x: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5, the filter of torch's and PIL's antialiased bicubic."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _linear(x: Tensor) -> Tensor:
    return (1 - x.abs()).clamp_min(0)


def resize_weights(in_size: int, out_size: int, interpolation: str = "bicubic",
                   dtype: torch.dtype = torch.float64) -> Tensor:
    """(out_size, in_size) rows: out = W @ x is an antialiased resize of x along one axis, as torch's
    `interpolate(..., antialias=True, align_corners=False)` computes it (support widened by the scale when
    shrinking, every row normalised to sum 1)."""
    filt, support = (_cubic, 2.0) if interpolation == "bicubic" else (_linear, 1.0)
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    centers = (torch.arange(out_size, dtype=dtype) + 0.5) * scale
    lo = (centers - support * stretch + 0.5).floor().clamp_min(0)  # torch: xmin = max(int(center - support + .5), 0)
    hi = (centers + support * stretch + 0.5).floor().clamp_max(in_size)
    j = torch.arange(in_size, dtype=dtype)
    w = filt((j[None] - centers[:, None] + 0.5) / stretch)
    w = torch.where((j[None] >= lo[:, None]) & (j[None] < hi[:, None]), w, torch.zeros_like(w))
    return w / w.sum(1, keepdim=True)


@dataclass(frozen=True)
class Box:
    """Which part of an image becomes the output, and whether it is mirrored."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def axis_weights(full: int, start: int, length: int, out: int, interpolation: str, reverse: bool = False) -> Tensor:
    """(out, full) weights reading `length` pixels from `start` of an axis of `full` pixels."""
    w = torch.zeros(out, full, dtype=torch.float64)
    w[:, start:start + length] = resize_weights(length, out, interpolation)
    return w.flip(0) if reverse else w


def eval_box(height: int, width: int, resize: int, crop: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The evaluation transform's resized size and crop offset: torchvision's Resize(resize) of the short side
    (the long side truncated), then CenterCrop(crop) (offsets rounded)."""
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(resize * long / short)
    new_h, new_w = (resize, new_long) if height <= width else (new_long, resize)
    return (new_h, new_w), (int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0)))


def batched_resized_crops(images: Sequence[Tensor], weights: Sequence[tuple[Tensor, Tensor]], *,
                          budget: int = 1 << 26) -> Tensor:
    """uint8 (B, 3, S, S): each (3, H_i, W_i) image on the device through its own (Wy_i, Wx_i) (host tensors),
    padded and multiplied in batches of at most `budget` padded pixels (images sorted by size, so a huge one does
    not pad every other; the weights go to the device once per batch), rounded and clamped to uint8 as
    torchvision's uint8 resize does."""
    order = sorted(range(len(images)), key=lambda i: images[i].shape[-2] * images[i].shape[-1])
    out_h, out_w = weights[0][0].shape[0], weights[0][1].shape[0]
    device = images[0].device
    result = torch.empty(len(images), images[0].shape[0], out_h, out_w, dtype=torch.uint8, device=device)
    start = 0
    while start < len(order):
        h = w = 0
        end = start
        while end < len(order):  # grow the chunk while its padded size stays within the budget
            grown_h, grown_w = max(h, images[order[end]].shape[-2]), max(w, images[order[end]].shape[-1])
            if end > start and (end + 1 - start) * grown_h * grown_w > budget:
                break
            h, w, end = grown_h, grown_w, end + 1
        chunk = order[start:end]
        padded = torch.zeros(len(chunk), images[0].shape[0], h, w, dtype=torch.float32, device=device)
        wy = torch.zeros(len(chunk), 1, out_h, h, dtype=torch.float32)
        wx = torch.zeros(len(chunk), 1, out_w, w, dtype=torch.float32)
        for k, i in enumerate(chunk):
            img = images[i]
            padded[k, :, : img.shape[-2], : img.shape[-1]] = img
            wy[k, 0, :, : img.shape[-2]] = weights[i][0]
            wx[k, 0, :, : img.shape[-1]] = weights[i][1]
        out = wy.to(device, non_blocking=True) @ padded @ wx.to(device, non_blocking=True).transpose(-1, -2)
        result[torch.tensor(chunk, device=device)] = out.round_().clamp_(0, 255).to(torch.uint8)
        start = end
    return result


def box_weights(height: int, width: int, box: Box, size: int, interpolation: str) -> tuple[Tensor, Tensor]:
    """(Wy, Wx) of a random resized crop `box` of an image, resized to (size, size)."""
    return (axis_weights(height, box.top, box.height, size, interpolation).float(),
            axis_weights(width, box.left, box.width, size, interpolation, reverse=box.flip).float())


def eval_weights(height: int, width: int, resize: int, size: int, interpolation: str) -> tuple[Tensor, Tensor]:
    """(Wy, Wx) of the evaluation transform (Resize(resize) then CenterCrop(size)) as one map per axis."""
    (new_h, new_w), (top, left) = eval_box(height, width, resize, size)
    return (resize_weights(height, new_h, interpolation)[top:top + size].float(),
            resize_weights(width, new_w, interpolation)[left:left + size].float())


class EncodedImages(Dataset):
    """Image files as undecoded bytes with each image's random crop and flip, drawn in the loader worker."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], *, augment: bool):
        self.paths, self.labels, self.augment = list(paths), list(labels), augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[bytes, int, tuple[int, int], Box | None]:
        from PIL import Image

        with Image.open(self.paths[i]) as im:  # the header only: the size the crop is drawn for
            width, height = im.size
        box = Box(*crop_params(height, width), flip=flip_param()) if self.augment else None
        with open(self.paths[i], "rb") as f:  # plain bytes: a batch of small tensors would cost a file handle each
            return f.read(), int(self.labels[i]), (height, width), box


def _collate(items):
    data, labels, sizes, boxes = zip(*items)
    return [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data], torch.tensor(labels), list(sizes), \
        list(boxes)


@dataclass
class DeviceFeed:
    """Batches of normalised float images (B, 3, S, S) decoded and transformed on `device`.

    Iterates like the online protocol's DataLoader (`batch_size`, one pass per epoch, labels on the device)."""

    loader: DataLoader
    device: torch.device
    size: int
    resize: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def decode(self, data: list[Tensor]) -> list[Tensor]:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        jpeg = [bool(d[:2].tolist() == [0xFF, 0xD8]) for d in data]
        out: list[Tensor | None] = [None] * len(data)
        idx = [i for i, j in enumerate(jpeg) if j]
        if idx:
            decoded = decode_jpeg([data[i] for i in idx], mode=ImageReadMode.RGB, device=self.device)
            for i, img in zip(idx, decoded):
                out[i] = img
        for i, j in enumerate(jpeg):
            if not j:  # PNG and the like: decoded on the CPU
                out[i] = decode_image(data[i], mode=ImageReadMode.RGB).to(self.device)
        return out

    def transform(self, images: list[Tensor], sizes, boxes) -> Tensor:
        weights = [box_weights(h, w, box, self.size, self.interpolation) if box is not None
                   else eval_weights(h, w, self.resize, self.size, self.interpolation)
                   for (h, w), box in zip(sizes, boxes)]
        pixels = batched_resized_crops(images, weights)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return (pixels.float() / 255 - mean) / std

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for data, labels, sizes, boxes in self.loader:
            yield self.transform(self.decode(data), sizes, boxes), labels.to(self.device, non_blocking=True)


def device_feed(paths: Sequence[str], labels: Sequence[int], *, augment: bool, batch_size: int,
                sampler: EpochOrderSampler, num_workers: int, device: torch.device, size: int,
                resize: int, interpolation: str, mean, std, drop_last: bool) -> DeviceFeed:
    """A DeviceFeed over image files, batches in `sampler`'s order, each image's crop drawn from its own seed."""
    loader = DataLoader(SeededDraws(EncodedImages(paths, labels, augment=augment)), batch_size=batch_size,
                        sampler=sampler, num_workers=num_workers, collate_fn=_collate, drop_last=drop_last,
                        persistent_workers=num_workers > 0)
    return DeviceFeed(loader, device, size, resize, interpolation, tuple(mean), tuple(std))


def on_device(loader: DataLoader, view, backbone, device: torch.device) -> DeviceFeed | None:
    """The online protocol's `loader` over `view` (an augmented LabelledView for the `backbone` entry) as a
    DeviceFeed: the same sampler (each image's draw seed), batch size and workers, so the workers draw the crops
    the CPU path would draw. None when the view's images are not files (in-memory sources keep the CPU path)."""
    from harness.data.images import FolderImages

    if not isinstance(view.base, FolderImages) or not view.augment:
        return None
    paths = [view.base.samples[int(i)][0] for i in view.indices]
    return device_feed(paths, view.labels.tolist(), augment=True, batch_size=loader.batch_size,
                       sampler=loader.sampler, num_workers=loader.num_workers,
                       device=device, size=backbone.img_size, resize=backbone.img_size,
                       interpolation=backbone.interpolation, mean=backbone.mean, std=backbone.std,
                       drop_last=loader.drop_last)
