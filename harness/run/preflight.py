"""What the driver checks before Ray starts, so a user error never costs a Ray start, a computed trial or a retry.

Every trial's checkpoint must be here or downloadable (the CLI checks `--weights` files as it reads them), every dataset's files where its source will look (unless
`--download` fetches them), and the results folder a writable folder with room for rows. Each problem is the
one-paragraph HarnessError the worker would have raised later. A sweep then holds the results folder's lock, so a
second sweep into it is told who holds it instead of computing the same heads again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from harness.errors import HarnessError
from harness.registry import load_registry
from harness.run.plan import TrialPlan

RESULTS_FREE_BYTES = 64 * 1024**2  # rows and curves of a trial are kilobytes; less than this is a disk about to fill


def check_writable_folder(folder: Path, what: str, flags: str) -> None:
    """`folder` (created if missing) is one this process can write a file into, with RESULTS_FREE_BYTES free;
    `what` names it and `flags` says where it is set, in the error."""
    accepted = f"accepted: a writable folder with at least {RESULTS_FREE_BYTES // 1024**2} MiB free ({flags})"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".writable-"):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise HarnessError(f"{what} {folder} cannot be written ({e.strerror or e}); {accepted}.") from None
    if free < RESULTS_FREE_BYTES:
        raise HarnessError(f"{what} {folder} has only {free / 1024**2:.1f} MiB free; {accepted}.")


def hold_results_dir(results_dir: Path) -> IO[str]:
    """An exclusive lock on `results_dir/.sweep.lock` for this process's lifetime (keep the returned file open), so
    two sweeps into one results folder never compute the same heads twice; raises when another sweep holds it."""
    lock = open(results_dir / ".sweep.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise HarnessError(f"another sweep holds {results_dir / '.sweep.lock'} ({holder}) and is writing into "
                           f"{results_dir}; accepted: wait for it to finish and rerun (this sweep then runs only what "
                           "it left), or another --results-dir.") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    lock.flush()
    return lock


def preflight(trials: list[TrialPlan], *, results_dir: Path, download: bool, local: bool,
              checkpoint_dir: Path | None = None) -> None:
    """Raise the first user error any trial of the plan would meet; return when there is none. Checkpoints and
    datasets are looked for only for a `local` sweep: a cluster's nodes may see other files than its driver."""
    from harness.data.sources import check_source
    from harness.models.weights import unobtainable

    check_writable_folder(results_dir, "results folder", "--results-dir, HARNESS_RESULTS_DIR or [paths] results_dir")
    if checkpoint_dir is not None:
        check_writable_folder(checkpoint_dir, "checkpoint folder", "--checkpoint-dir")
    if not local:
        return
    registry = load_registry()
    for name in sorted({t.backbone for t in trials if t.weights is None}):
        entry = registry.backbone(name)
        missing = None if entry.random_init else unobtainable(entry)
        if missing is not None:
            raise missing
    for name in sorted({t.dataset for t in trials}):
        check_source(registry.dataset(name), download=download)
