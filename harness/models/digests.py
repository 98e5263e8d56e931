"""What a weight file is, by content: its sha256, cached by path, size and mtime, and the weights lock.

A file's path says nothing about its bytes (a checkpoint overwritten in place keeps its name), so a backbone's
identity is the sha256 of its file. Hashing a 2.5 GB checkpoint takes seconds, so the digest is cached against the
file's resolved path, size and modification time and recomputed only when one of them changes. Released
checkpoints whose publisher gives no hash are pinned by the weights lock: the sha256 seen at a file's first use is
recorded, later loads must match it, and only a deliberate `harness weights --refresh NAME` accepts another file.
Both live in small JSON files (`setting("weights_lock")` and `sha256-by-path.json` beside it), replaced atomically.
Standard library only: the plan hashes `--weights` files without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from harness.config import setting
from harness.errors import HarnessError


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed, so multi-GB checkpoints do not sit in memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise HarnessError(f"{path}: not a readable JSON file ({e}); delete it to start it afresh.") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: holds {type(data).__name__}, not a JSON object; delete it to start it afresh.")
    return data


def _write_json(path: Path, data: dict) -> None:
    """Replace `path` atomically; concurrent writers may drop each other's additions, never tear the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _digest_cache() -> Path:
    return setting("weights_lock").with_name("sha256-by-path.json")


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def remember_sha256(path: Path | str, digest: str) -> None:
    """Cache `digest` as the file's sha256 (a download hashes while it streams; no need to read it again)."""
    path = Path(path).resolve()
    cache_file = _digest_cache()
    cache = _read_json(cache_file)
    cache[str(path)] = {"stamp": _stamp(path), "sha256": digest}
    try:
        _write_json(cache_file, cache)
    except OSError:
        pass  # a cache that cannot be written costs a re-hash next time, nothing else


def cached_sha256(path: Path | str) -> str:
    """The file's sha256, re-hashed only when its resolved path, size, mtime, ctime or inode differ from the
    cached ones."""
    path = Path(path).resolve()
    known = _read_json(_digest_cache()).get(str(path))
    if isinstance(known, dict) and known.get("stamp") == _stamp(path) and isinstance(known.get("sha256"), str):
        return known["sha256"]
    digest = sha256_of(path)
    remember_sha256(path, digest)
    return digest


def read_lock() -> dict:
    """Backbone name -> {file, sha256, recorded_at} of every checkpoint pinned so far."""
    return _read_json(setting("weights_lock"))


def _pin(lock: dict, name: str, path: Path, sha256: str) -> None:
    lock[name] = {"file": path.name, "sha256": sha256, "recorded_at": datetime.now(timezone.utc).isoformat()}
    _write_json(setting("weights_lock"), lock)


def check_lock(name: str, path: Path, sha256: str) -> None:
    """Record `sha256` as backbone `name`'s file at its first use; refuse a file that differs from the record."""
    lock = read_lock()
    pinned = lock.get(name, {}).get("sha256") if isinstance(lock.get(name), dict) else None
    if pinned is None:
        _pin(lock, name, path, sha256)
    elif pinned != sha256:
        raise HarnessError(f"{path}: sha256 is {sha256}, but the weights lock {setting('weights_lock')} recorded "
                           f"{pinned} for backbone {name!r} at its first use; the file is corrupt, incomplete or "
                           "another release. Delete it to download it again, or, if the new file is the one you "
                           f"mean, accept it with `harness weights --refresh {name}`.")


def refresh_lock(name: str, path: Path) -> str:
    """Accept the file now at `path` as backbone `name`'s: record its sha256 in the weights lock."""
    digest = cached_sha256(path)
    _pin(read_lock(), name, path, digest)
    return digest
