"""Mid-trial checkpoints: a long trial's training state, saved as it goes and continued after a failure.

A 90-epoch online ImageNet trial that dies at epoch 89 should not start again from epoch 0. As it trains, a trial
saves the head bank's state (parameters, optimizer state, schedule steps, BatchNorm statistics, divergence
bookkeeping, the curves so far) with its position in the data order (epoch, step); the data order and the
augmentation are functions of that position alone (harness/data/order.py), so a trial continued from a checkpoint
computes what an uninterrupted one computes. The sweep hands the files to Ray Tune's checkpoint mechanism, which
gives them back to a retried trial; a later sweep finds them under the results folder's `checkpoints/`.

A checkpoint is two files: `state.pt`, the tensors (read with `weights_only`), and `state.json`, the rest with the
sha256 of `state.pt` and the key of the trial it belongs to: the trial's heads, weights and code (its source). A checkpoint whose
key or digest does not match is never continued from. Imports no torch until a checkpoint is written or read, so
the driver scans for them at no cost.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import harness
from harness.models.digests import sha256_of
from harness.run.plan import TrialPlan

if TYPE_CHECKING:
    from torch import Tensor

    from harness.heads.bank import HeadBank
    from harness.heads.train import Position

FORMAT = 1
STATE, TENSORS = "state.json", "state.pt"
FOLDER = "checkpoints"  # under the results folder: Ray Tune's storage for the sweep's checkpoints
WRITE_SHARE = 0.05  # epoch-end checkpoints take at most this share of the training time


class CheckpointRefused(ValueError):
    """A checkpoint that is damaged or belongs to another trial: never continued from."""


@dataclass
class TrialState:
    """What a checkpoint restores: the position reached, the bank's state there and the training time spent."""

    position: Position
    bank: dict  # HeadBank.state()'s metadata
    tensors: dict[str, Tensor]
    elapsed_s: float = 0.0  # training wall time of the attempts before this one


def checkpoint_key(plan: TrialPlan) -> str:
    """The identity a checkpoint must carry to be continued: the trial, every head's configuration hash (a bank of
    other heads stacks otherwise), the weights' content and the code that trains them (its source, so an edit
    between two attempts, committed or not, starts the trial afresh)."""
    identity = {"trial": plan.trial_id, "heads": [h.config_hash for h in plan.heads], "weights": plan.weights_sha256,
                "harness": harness.__version__, "source": source_digest()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@functools.cache
def source_digest() -> str:
    """sha256 over the harness package's Python files (paths and bytes), read once per process."""
    root = Path(harness.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def write_state(folder: Path, key: str, state: TrialState) -> None:
    """Write `state` into `folder` as a checkpoint of the trial `key`: tensors first, then the JSON that vouches
    for them, so a folder cut short by a crash is refused on reading, never half-read."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state.tensors, folder / TENSORS)
    meta = {"format": FORMAT, "key": key, "position": asdict(state.position), "bank": state.bank,
            "elapsed_s": state.elapsed_s, "sha256": sha256_of(folder / TENSORS), "written_at": time.time()}
    (folder / STATE).write_text(json.dumps(meta))


def describe(folder: Path) -> dict:
    """A checkpoint's JSON; CheckpointRefused when it is missing or unreadable."""
    try:
        meta = json.loads((folder / STATE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointRefused(f"{folder / STATE} is unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointRefused(f"{folder / STATE} is not a format-{FORMAT} checkpoint")
    return meta


def read_state(folder: Path, key: str) -> TrialState:
    """The checkpoint in `folder`, verified to belong to trial `key` and to be the bytes written; CheckpointRefused
    naming the problem otherwise."""
    import torch

    from harness.heads.train import Position

    meta = describe(folder)
    if meta.get("key") != key:
        raise CheckpointRefused(f"{folder} belongs to another trial (or other heads, weights or code)")
    if not _intact(folder, meta):
        raise CheckpointRefused(f"{folder / TENSORS} is missing or not the file its checkpoint recorded")
    try:
        tensors = torch.load(folder / TENSORS, map_location="cpu", weights_only=True)
        return TrialState(Position(**meta["position"]), meta["bank"], tensors, float(meta["elapsed_s"]))
    except Exception as e:  # a file that hashes right but does not load: written by another version
        raise CheckpointRefused(f"{folder / TENSORS} does not load ({type(e).__name__}: {e})") from None


def _intact(folder: Path, meta: dict) -> bool:
    return (folder / TENSORS).is_file() and sha256_of(folder / TENSORS) == meta.get("sha256")


def found(root: Path) -> Iterator[tuple[Path, dict]]:
    """Every readable checkpoint under `root` (Ray Tune's storage: sweep/trial/checkpoint folders) with its JSON."""
    for state in root.glob(f"*/*/checkpoint_*/{STATE}"):
        try:
            yield state.parent, describe(state.parent)
        except CheckpointRefused:
            continue


def latest(root: Path, key: str) -> Path | None:
    """The intact checkpoint of trial `key` furthest into training, from any earlier sweep (a worker killed while
    its last one was copied may leave that one incomplete); None without one."""
    mine = sorted(((tuple(meta["position"].values()), folder, meta) for folder, meta in found(root)
                   if meta.get("key") == key), key=lambda c: c[0], reverse=True)
    return next((folder for _, folder, meta in mine if _intact(folder, meta)), None)


def discard(root: Path, keys: set[str], own: str) -> None:
    """Delete the checkpoints of the trials `keys` (their rows are stored), then the sweep folders left without any
    among this sweep's (`own`) and those just emptied; another sweep sharing `root` keeps its folder."""
    emptied = {own}
    for folder, meta in list(found(root)):
        if meta.get("key") in keys:
            shutil.rmtree(folder, ignore_errors=True)
            emptied.add(folder.parent.parent.name)
    for name in emptied:
        if not any((root / name).glob(f"*/checkpoint_*/{STATE}")):
            shutil.rmtree(root / name, ignore_errors=True)


class Checkpointing:
    """A trial's checkpoints: `save` takes each state (the sweep: to Ray Tune), `resume` is the state to continue
    from. A checkpoint is due at an epoch's end while writing them has cost at most WRITE_SHARE of the training time
    since the last, and within an epoch once `every_s` passed since the last (long epochs); at every step boundary
    with `every_s` 0."""

    def __init__(self, save: Callable[[TrialState], None], *, every_s: float, resume: TrialState | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.save, self.every_s, self.resume, self.clock = save, every_s, resume, clock
        self.last = self.began = clock()
        self.cost = 0.0  # seconds the last checkpoint took
        self.earlier_s = resume.elapsed_s if resume else 0.0

    def elapsed_s(self) -> float:
        """Training time of this trial, the attempts before this one included."""
        return self.earlier_s + self.clock() - self.began

    def hook(self, bank: HeadBank) -> Callable[[Position, bool], None]:
        """The train loops' checkpoint hook for `bank`."""
        def reached(position: Position, epoch_end: bool) -> None:
            since = self.clock() - self.last
            if since < self.every_s and not (epoch_end and since * WRITE_SHARE >= self.cost):
                return
            began = self.clock()
            meta, tensors = bank.state()
            self.save(TrialState(position, meta, tensors, self.elapsed_s()))
            self.last = self.clock()
            self.cost = self.last - began
        return reached
