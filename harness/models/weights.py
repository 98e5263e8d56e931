"""Weight files: where a backbone's file is found, how it is downloaded and verified, and how it is unpickled safely.

Resolution order: an explicit path (the CLI's `--weights`), the local weights folder
(`setting("weights_dir")`) holding the entry's file name, the download cache (`setting("download_dir")`),
then a download from the entry's URL into the cache. A file found by name is checked against the entry's
sha256 before it is unpickled; an explicit path is the user's own file and is only hashed, so its hash is
what the results record. Unpickling uses `weights_only=True`: a pickle that would import code is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import torch

from harness.config import setting
from harness.errors import HarnessError
from harness.registry import BackboneEntry

# Non-tensor types that released checkpoints hold and that run no code: DINO/iBOT store their argparse arguments.
SAFE_GLOBALS = (argparse.Namespace,)
_CHUNK = 1 << 20


def file_name(entry: BackboneEntry) -> str:
    """The entry's file name in the weights folder and the cache: `filename`, else the URL's last part."""
    if entry.filename:
        return entry.filename
    if entry.url:
        return entry.url.rstrip("/").rsplit("/", 1)[-1]
    raise HarnessError(f"{entry.source}: backbone {entry.name!r} has neither 'filename' nor 'url'; "
                       "accepted: a file name for the weights folder, or a download address.")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB checkpoints do not sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None, what: str) -> str:
    """The file's sha256; raises when it differs from `expected` (when one is registered)."""
    actual = sha256_of(path)
    if expected is not None and actual != expected:
        raise HarnessError(f"{path}: sha256 is {actual}, but {what} registers {expected}; the file is corrupt, "
                           "incomplete or a different release. Delete it and download it again.")
    return actual


def resolve_weights(entry: BackboneEntry, weights: str | Path | None = None) -> tuple[Path, str]:
    """The weight file for `entry` and its sha256, found or downloaded in the documented order."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise HarnessError(f"weights file {path} (given for backbone {entry.name!r}) does not exist or is not "
                               "a file; accepted: the path of a checkpoint file.")
        return path, sha256_of(path)
    name = file_name(entry)
    what = f"backbone {entry.name!r} ({entry.source})"
    folders = [d for d in (setting("weights_dir"), setting("download_dir")) if d is not None]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name, verify_sha256(folder / name, entry.sha256, what)
    if entry.manual_download or not entry.url:
        target = folders[0] / name
        raise HarnessError(f"{what}: the file {name} cannot be downloaded by script. {entry.manual_download or ''} "
                           f"Then put it at {target} (or set HARNESS_WEIGHTS_DIR / [paths] weights_dir to its folder, "
                           "or pass its path with --weights).")
    return download(entry.url, setting("download_dir") / name, entry.sha256, what)


def download(url: str, target: Path, expected_sha256: str | None, what: str) -> tuple[Path, str]:
    """Stream `url` to a temp file beside `target` with a progress bar, verify its sha256, then rename it in."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(f"downloading {target.name}", total=total)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.advance(task, len(chunk))
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise HarnessError(f"{url}: downloaded file has sha256 {actual}, but {what} registers {expected_sha256}; "
                               "nothing was kept. Retry, or download it by hand and pass it with --weights.")
        os.replace(tmp, target)
        return target, actual
    except (urllib.error.URLError, OSError) as e:
        raise HarnessError(f"{what}: downloading {url} failed ({getattr(e, 'reason', None) or e}); download it by "
                           f"hand and put it at {target}, or pass its path with --weights.") from None
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> Any:
    """Unpickle a checkpoint on the CPU with `weights_only=True`, allowing only `SAFE_GLOBALS` besides tensors."""
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise HarnessError(f"{path}: refused to load: the pickle asks for {found.group(1)}, which could run code "
                               f"when unpickled; accepted: tensors, plain containers and "
                               f"{', '.join(t.__module__ + '.' + t.__name__ for t in SAFE_GLOBALS)}. "
                               "Nothing in the file was run.") from None
        raise HarnessError(f"{path}: not a readable checkpoint ({_first_line(e)}).") from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise HarnessError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {_first_line(e)}); "
                           "delete it and download it again.") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or ["no detail"])[0]
