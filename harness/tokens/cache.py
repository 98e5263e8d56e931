"""Backbone tokens: extracted in one frozen pass per split, optionally kept in a crash-safe on-disk cache.

The backbone is the expensive part, so every tap a grid asks for comes out of ONE forward per batch, and the
`cached` protocol writes them once (float16, memory-mapped for training; the two-token [cls] + patch-mean summary in
float32, see `summary_tokens`) so a later sweep over the same
backbone and dataset reruns nothing. A cache entry is one (backbone, weights checksum, dataset, split,
transform, tap, and every token or only the [cls]/mean summary); its meta.json records that key and the sha256
of its files, and every read verifies both, so a damaged entry or another one's files are rebuilt, never trained
on. It is written in a temporary folder, fsynced, and renamed into place as the last step, so an interrupted writer leaves only a temporary folder that is never
read, and two writers of the same key cannot mix their files (the second rename fails and that writer reads the
first one's entry).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from harness.tokens.space import SUMMARY_TOKEN_BYTES, TOKEN_BYTES, ensure_cache_space, predict_cache_bytes
from harness.config import safe_name, setting
from harness.data.splits import transform_key
from harness.errors import HarnessError
from harness.models.digests import sha256_of
from harness.registry import BackboneEntry, DatasetEntry

CACHE_FORMAT = 1
_TMP_PREFIX = ".tmp-"
_DATA_FILES = ("tokens.npy", "labels.npy")  # hashed into meta.json when written, verified on every read
log = logging.getLogger(__name__)


class TokenBackbone(Protocol):
    """What extraction needs of a backbone (`harness.models.backbones.Backbone` is one; tests use small fakes)."""

    entry: BackboneEntry
    weights_sha256: str

    def forward_taps(self, images: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]: ...


@dataclass
class TokenSet:
    """Tokens of one split: tap -> (N, T, D) float16 (float32 for the summary; memory-mapped when cached), and the
    (N,) int64 labels."""

    tokens: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


Allocate = Callable[[str, tuple[int, ...], torch.dtype], torch.Tensor]


def _in_memory(tap: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def store_dtype(summary_prefix: int | None) -> torch.dtype:
    """float16 for every token; float32 for the summary (2 tokens an image, so it costs little): once BatchNorm
    standardises a channel with a large mean, float16's rounding of it (spacing 0.5 at 1000) would be noise."""
    return torch.float16 if summary_prefix is None else torch.float32


def extraction_precision(device: torch.device) -> str:
    """bfloat16 autocast on CUDA (the backbone pass is a sweep's cost floor; train_online runs it so too), float32
    elsewhere. Part of the cache key: tokens computed in another precision are other tokens."""
    return "bfloat16" if device.type == "cuda" else "float32"


def backbone_autocast(device: torch.device) -> torch.autocast:
    """The autocast context every backbone forward runs under, in `extraction_precision(device)`."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=extraction_precision(device) == "bfloat16")


def loader_workers(device: torch.device) -> int:
    """Decoding processes by default: on a GPU, all of this process's CPU threads but one decode and transform
    while the GPU computes; on a CPU none, since the forward itself uses those threads."""
    return max(torch.get_num_threads() - 1, 0) if device.type == "cuda" else 0


def summary_tokens(tokens: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """(B, num_prefix + 1, D): the prefix tokens, then the mean of the patch tokens (taken in float32 and stored so,
    `store_dtype`). A [cls] head reads token 0 and a mean head (skipping the prefix) averages the one mean token, so
    both compute what they compute on all the tokens."""
    return torch.cat([tokens[:, :num_prefix], tokens[:, num_prefix:].float().mean(1, keepdim=True)], dim=1)


class _Writer:
    """Copies each batch's stored tokens (`store_dtype`) out of the device one batch late, so the host never waits on
    a batch it just launched: the copy into pinned memory and the non-finite check of batch k run while batch k+1
    computes. Taps in `summary` (tap -> prefix-token count) are stored as `summary_tokens` instead of every token."""

    def __init__(self, backbone: TokenBackbone, taps: tuple[str, ...], n: int, allocate: Allocate,
                 summary: dict[str, int]):
        self.backbone, self.taps, self.n, self.allocate = backbone, taps, n, allocate
        self.summary = summary
        self.out: dict[str, torch.Tensor] = {}
        self.pending: tuple | None = None

    def push(self, feats: dict[str, torch.Tensor], start: int) -> None:
        feats = {tap: summary_tokens(feats[tap], self.summary[tap]) if tap in self.summary else feats[tap]
                 for tap in self.taps}
        halves = {tap: feats[tap].to(store_dtype(self.summary.get(tap))) for tap in self.taps}
        finite = torch.stack([torch.isfinite(h).all() for h in halves.values()])
        amax = torch.stack([feats[tap].detach().abs().amax().float() for tap in self.taps])
        device = finite.device
        if device.type == "cuda":
            halves = {tap: h.to("cpu", non_blocking=True) for tap, h in halves.items()}  # lands in pinned memory
            finite, amax = finite.to("cpu", non_blocking=True), amax.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            event = None
        self.flush()
        self.pending = (start, halves, finite, amax, event)

    def flush(self) -> None:
        if self.pending is None:
            return
        start, halves, finite, amax, event = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        for tap, ok, biggest in zip(self.taps, finite.tolist(), amax.tolist()):
            if not ok:
                kind = str(store_dtype(self.summary.get(tap))).removeprefix("torch.")
                raise HarnessError(f"tap '{tap}' of backbone {self.backbone.entry.name!r} has values that are not "
                                   f"finite in {kind} (max |x| = {biggest:.4g}); accepted: tokens within {kind} "
                                   "range (float16: |x| < 65504).")
        for tap, half in halves.items():
            if tap not in self.out:
                self.out[tap] = self.allocate(tap, (self.n, *half.shape[1:]), half.dtype)
            self.out[tap][start:start + len(half)].copy_(half)


def _run_backbone(backbone: TokenBackbone, dataset: Dataset, taps: tuple[str, ...], *, batch_size: int,
                  device: torch.device, num_workers: int | None, allocate: Allocate,
                  channels_last: bool = False, summary: dict[str, int] | None = None) -> tuple[TokenSet, int]:
    """One forward per batch for all taps; each tap's stored tokens land in the tensor `allocate` returns.

    Fast where it runs: bf16 autocast and pinned, asynchronous host-to-device copies on CUDA, loader workers
    (`loader_workers` when None), device-to-host copies one batch behind; `channels_last` for the patch
    embedding's convolution.
    """
    n = len(dataset)
    if n == 0 or not taps:
        raise ValueError(f"nothing to extract: {n} images, taps {taps}")
    workers = loader_workers(device) if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    autocast = backbone_autocast(device)
    writer = _Writer(backbone, taps, n, allocate, summary or {})
    labels = torch.empty(n, dtype=torch.int64)
    done, report_every = 0, max(1, len(loader) // 10)
    with torch.inference_mode():
        for images, y in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                feats = backbone.forward_taps(images, taps)
            writer.push(feats, done)
            labels[done:done + len(y)] = y
            done += len(y)
            if done == n or (done // batch_size) % report_every == 0:
                log.info("%s: %d / %d images through the backbone", backbone.entry.name, done, n)
        writer.flush()
    return TokenSet(writer.out, labels), done


def extract_tokens(backbone: TokenBackbone, dataset: Dataset, taps: Sequence[str], *, batch_size: int,
                   device: torch.device | str, num_workers: int | None = None,
                   channels_last: bool = False, summary_prefix: int | None = None) -> tuple[TokenSet, int]:
    """Tokens of every image of `dataset` for each tap, in memory, and the number of images passed; with
    `summary_prefix` (the prefix-token count) only each tap's `summary_tokens`."""
    taps = tuple(dict.fromkeys(taps))
    return _run_backbone(backbone, dataset, taps, batch_size=batch_size, device=torch.device(device),
                         num_workers=num_workers, allocate=_in_memory, channels_last=channels_last,
                         summary=None if summary_prefix is None else {t: summary_prefix for t in taps})


# ------------------------------------------------------------------------------------------------ cache


def cache_key(backbone: TokenBackbone, dataset_entry: DatasetEntry, split_name: str, num_images: int, tap: str,
              precision: str = "float32", summary_prefix: int | None = None) -> dict:
    """Everything that makes one split's tokens what they are (the forward's `extraction_precision` and whether
    only `summary_tokens` are kept, too); any change gives a different cache entry."""
    entry = backbone.entry
    return {
        "format": CACHE_FORMAT, "backbone": entry.name, "weights_sha256": backbone.weights_sha256,
        "arch": entry.arch, "arch_overrides": entry.arch_overrides, "checkpoint_key": entry.checkpoint_key,
        "geometry": [getattr(backbone, a, None) for a in ("embed_dim", "depth", "num_heads")],  # load-time overrides
        "dataset": dataset_entry.name, "dataset_source": dataset_entry.source, "options": dataset_entry.options,
        "val_fraction": dataset_entry.val_fraction, "split_seed": dataset_entry.split_seed, "split": split_name,
        "num_images": num_images, "transform": transform_key(dataset_entry, entry), "tap": tap,
        "precision": precision,
        "tokens": "all" if summary_prefix is None else f"{summary_prefix} prefix + patch mean, float32",
    }


def _canonical(key: dict) -> dict:
    """The key as JSON reads it back (tuples become lists), so a stored key compares equal to a fresh one."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def cache_entry_dir(cache_dir: Path, key: dict) -> Path:
    """cache_dir/<backbone>/<dataset>/<split>.<tap>.<digest of the whole key>."""
    digest = hashlib.sha256(json.dumps(_canonical(key), sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(cache_dir) / safe_name(key["backbone"]) / safe_name(key["dataset"])
    return folder / f"{key['split']}.{key['tap']}.{digest}"


def _open_entry(path: Path, key: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(tokens, labels) of a complete entry, memory-mapped, after checking that its files hash to what was written
    and that it was computed for `key`; None when there is none. A damaged or foreign entry is deleted (with a
    warning naming it) and None returned, so it is rebuilt and never trained on."""
    if not path.is_dir():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
        problem = "it was computed for another key" if meta.get("key") != _canonical(key) else next(
            (f"{name} does not hash to the sha256 written with it" for name in _DATA_FILES
             if sha256_of(path / name) != meta.get("sha256", {}).get(name)), None)
        tokens = np.load(path / "tokens.npy", mmap_mode="c")
        labels = np.load(path / "labels.npy", mmap_mode="c")
    except (OSError, ValueError, AttributeError) as e:
        problem = f"it cannot be read ({e})"
    if problem is None and (list(tokens.shape) != meta.get("shape") or tokens.shape[0] != len(labels)):
        problem = "its shape differs from the one written with it"
    if problem is None:
        return torch.from_numpy(tokens), torch.from_numpy(labels)
    log.warning("token cache entry %s is damaged (%s); deleting it and extracting again", path, problem)
    doomed = path.parent / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-damaged@{socket.gethostname()}"
    try:
        os.rename(path, doomed)  # out of the way at once; a killed delete leaves only a stale temporary
    except FileNotFoundError:
        return None  # another reader moved it first
    shutil.rmtree(doomed, ignore_errors=True)
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary folders left by killed writers on this host (their process no longer exists)."""
    host = socket.gethostname()
    for tmp in folder.glob(f"{_TMP_PREFIX}*"):
        pid, host_of_tmp = tmp.name[len(_TMP_PREFIX):].split("-", 1)[0], tmp.name.rpartition("@")[2]
        if host_of_tmp != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            continue


def _publish(tmp: Path, final: Path, tokens: np.memmap, labels: torch.Tensor, key: dict) -> None:
    """Make the entry durable in `tmp`, then rename it to `final`; a concurrent writer's entry wins if first."""
    tokens.flush()
    np.save(tmp / "labels.npy", labels.numpy())
    meta = {"key": _canonical(key), "shape": list(tokens.shape), "dtype": str(tokens.dtype),
            "sha256": {name: sha256_of(tmp / name) for name in _DATA_FILES}}
    (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=1))
    for file in ("tokens.npy", "labels.npy", "meta.json"):
        _fsync(tmp / file)
    _fsync(tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another writer published the same key first; keep theirs
    _fsync(final.parent)


def cached_tokens(backbone: TokenBackbone, dataset_entry: DatasetEntry, split_name: str, dataset: Dataset,
                  taps: Sequence[str], *, cache_dir: Path | None, batch_size: int, device: torch.device | str,
                  num_workers: int | None = None, summary_prefix: int | None = None,
                  summarise: Collection[str] | None = None) -> tuple[TokenSet, int]:
    """Tokens of one split from the cache, extracting (once, all missing taps together) what is not there.

    `dataset` must be the un-augmented split (the `cached` protocol); `cache_dir` None means
    `setting("cache_dir")` (HARNESS_CACHE_DIR); `summary_prefix` (the backbone's prefix-token count) keeps only
    `summary_tokens` of the taps in `summarise` (None: of every tap), enough for [cls] and mean heads. Returns the tokens, memory-mapped, and the number of
    images passed through the backbone: 0 when every tap was already cached.
    """
    if getattr(dataset, "augment", False):
        raise ValueError("cached_tokens needs the un-augmented split: load_splits(..., augment=False)")
    cache_dir = Path(cache_dir) if cache_dir is not None else setting("cache_dir")
    taps = tuple(dict.fromkeys(taps))
    precision = extraction_precision(torch.device(device))
    summary = {} if summary_prefix is None else {t: summary_prefix for t in taps if summarise is None or t in summarise}
    keys = {tap: cache_key(backbone, dataset_entry, split_name, len(dataset), tap, precision, summary.get(tap))
            for tap in taps}
    paths = {tap: cache_entry_dir(cache_dir, keys[tap]) for tap in taps}
    found = {tap: _open_entry(paths[tap], keys[tap]) for tap in taps}
    missing = tuple(sorted((tap for tap in taps if found[tap] is None), key=lambda t: t in summary))
    passes = 0
    if missing:
        folder = paths[missing[0]].parent
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(folder)
        tmps = {tap: folder / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{tap}@{socket.gethostname()}"
                for tap in missing}
        arrays: dict[str, np.memmap] = {}

        def allocate(tap: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            kind = np.dtype(str(dtype).removeprefix("torch."))
            if not arrays:  # every missing tap in its layout; the first allocated is a full one if any is
                ensure_cache_space(cache_dir, sum(predict_cache_bytes(
                    shape[0], summary[t] + 1 if t in summary else shape[1], shape[2], [t],
                    SUMMARY_TOKEN_BYTES if t in summary else TOKEN_BYTES) for t in missing))
            tmps[tap].mkdir()
            arrays[tap] = np.lib.format.open_memmap(tmps[tap] / "tokens.npy", mode="w+", dtype=kind, shape=shape)
            return torch.from_numpy(arrays[tap])

        try:
            extracted, passes = _run_backbone(backbone, dataset, missing, batch_size=batch_size,
                                              device=torch.device(device), num_workers=num_workers,
                                              allocate=allocate, summary={t: summary[t] for t in missing
                                                                          if t in summary})
            for tap in missing:
                _publish(tmps[tap], paths[tap], arrays[tap], extracted.labels, keys[tap])
        finally:
            for tmp in tmps.values():
                shutil.rmtree(tmp, ignore_errors=True)
        found.update({tap: _open_entry(paths[tap], keys[tap]) for tap in missing})
    labels = found[taps[0]][1]
    return TokenSet({tap: found[tap][0] for tap in taps}, labels), passes
