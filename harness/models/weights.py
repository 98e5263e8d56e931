"""Weight files: where a backbone's file is found, how it is downloaded and verified, and how it is unpickled safely.

Resolution order: an explicit path (the CLI's `--weights`), the local weights folder
(`setting("weights_dir")`) holding the entry's file name, the download cache (`setting("download_dir")`),
then a download from the entry's URL into the cache. A file found by name is checked before it is unpickled
against the publisher's digest or prefix when the entry registers one (`published_digest`, e.g. MAE's md5
prefixes; a download is checked before it is kept), then against the entry's sha256, else the weights lock
(`digests.check_lock`: the sha256 recorded at the file's first use); an explicit path is the user's own file and is
only hashed (by content, cached by path, size and mtime), so its hash is what the plan and the results record.
Unpickling uses `weights_only=True`: a pickle that would import code is refused.
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
from harness.models.digests import cached_sha256, check_lock, check_published, parse_published, remember_digests
from harness.errors import HarnessError, TransientError
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
    raise HarnessError(f"{entry.defined_in}: backbone {entry.name!r} has neither 'filename' nor 'url'; "
                       "accepted: a file name for the weights folder, or a download address.")


def local_file(entry: BackboneEntry) -> Path | None:
    """The entry's file in the local weights folder, else in the download cache; None when in neither."""
    for folder in (setting("weights_dir"), setting("download_dir")):
        if folder is not None and (folder / file_name(entry)).is_file():
            return folder / file_name(entry)
    return None


def unobtainable(entry: BackboneEntry) -> HarnessError | None:
    """The error for a file that is neither here nor downloadable by script (the driver's preflight asks too)."""
    if local_file(entry) is not None or (entry.url and not entry.manual_download):
        return None
    name = file_name(entry)
    target = (setting("weights_dir") or setting("download_dir")) / name
    return HarnessError(f"backbone {entry.name!r} ({entry.defined_in}): the file {name} cannot be downloaded by script. "
                        f"{entry.manual_download or ''} Then put it at {target} (or set HARNESS_WEIGHTS_DIR / [paths] "
                        "weights_dir to its folder, or pass its path with --weights).")


def _what(entry: BackboneEntry) -> str:
    return f"backbone {entry.name!r} ({entry.defined_in})"


def verify_sha256(path: Path, entry: BackboneEntry) -> str:
    """The file's sha256; raises when the file does not begin with the publisher's digest, or its sha256 differs
    from the entry's registered one, else from the weights lock."""
    if entry.published_digest is not None:
        check_published(path, entry.published_digest, _what(entry))
    actual = cached_sha256(path)
    if entry.sha256 is None:
        check_lock(entry.name, path, actual)
    elif actual != entry.sha256:
        raise HarnessError(f"{path}: sha256 is {actual}, but backbone {entry.name!r} ({entry.defined_in}) registers "
                           f"{entry.sha256}; the file is corrupt, incomplete or a different release. Delete it and "
                           "download it again.")
    return actual


def resolve_weights(entry: BackboneEntry, weights: str | Path | None = None,
                    expected_sha256: str | None = None) -> tuple[Path, str]:
    """The weight file for `entry` and its sha256, found or downloaded in the documented order; an explicit file
    must still hash to `expected_sha256` when given (what the plan saw)."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise HarnessError(f"weights file {path} (given for backbone {entry.name!r}) does not exist or is not "
                               "a file; accepted: the path of a checkpoint file.")
        actual = cached_sha256(path)
        if expected_sha256 is not None and actual != expected_sha256:
            raise HarnessError(f"weights file {path} (given for backbone {entry.name!r}) changed since the sweep "
                               f"was planned: sha256 {actual}, planned {expected_sha256}; accepted: a file left "
                               "alone while its sweep runs (rerun the sweep to use the new file).")
        return path, actual
    local = local_file(entry)
    if local is not None:
        return local, verify_sha256(local, entry)
    missing = unobtainable(entry)
    if missing is not None:
        raise missing
    expected = [("sha256", entry.sha256)] if entry.sha256 else []
    if entry.published_digest is not None:
        expected.append(parse_published(entry.published_digest))
    path, found = download(entry.url, setting("download_dir") / file_name(entry), expected, _what(entry))
    remember_digests(path, found)
    if entry.sha256 is None:
        check_lock(entry.name, path, found["sha256"])
    return path, found["sha256"]


def download(url: str, target: Path, expected: list[tuple[str, str]], what: str) -> tuple[Path, dict[str, str]]:
    """Stream `url` to a temp file beside `target` with a progress bar, hashing it with sha256 and each algorithm of
    `expected`; rename it in only when every digest begins with its expected hex (a whole one or a publisher's
    prefix). Returns the file and its digests."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    hashes = {algorithm: hashlib.new(algorithm) for algorithm in {"sha256", *(a for a, _ in expected)}}
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(f"downloading {target.name}", total=total)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    progress.advance(task, len(chunk))
        found = {algorithm: h.hexdigest() for algorithm, h in hashes.items()}
        for algorithm, hexdigest in expected:
            if not found[algorithm].startswith(hexdigest):
                raise TransientError(f"{url}: downloaded file has {algorithm} {found[algorithm]}, but {what} registers "
                                     f"{hexdigest}; nothing was kept. Retry, or download it by hand and pass it with "
                                     "--weights.")
        os.replace(tmp, target)
        return target, found
    except (urllib.error.URLError, OSError) as e:
        raise TransientError(f"{what}: downloading {url} failed ({getattr(e, 'reason', None) or e}); download it by "
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
