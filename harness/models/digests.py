"""What a weight file is, by content: its digests, cached by path, size and mtime, the publisher's digest, and the
weights lock.

A file's path says nothing about its bytes (a checkpoint overwritten in place keeps its name), so a backbone's
identity is the sha256 of its file. Hashing a 2.5 GB checkpoint takes seconds, so each digest (sha256, and the
algorithm a publisher uses, e.g. MAE's md5) is cached against the file's resolved path, size and modification time
and recomputed only when one of them changes. Where the publisher gives a digest or a prefix of one (an entry's
`published_digest`), a file must begin with it. Every released checkpoint is also pinned by the weights lock: the
sha256 seen at a file's first use is recorded, later loads must match it, and only a deliberate
`harness weights --refresh NAME` accepts another file. Both live in small JSON files (`setting("weights_lock")` and
`sha256-by-path.json` beside it), replaced atomically. Standard library only: the plan hashes `--weights` files and
the registry validates `published_digest` without importing torch.
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


ALGORITHMS = {"md5": 32, "sha256": 64}  # hashlib name -> hex digits of the whole digest
PREFIX_MIN = 6  # MAE's README gives 6 hex digits of each file's md5
PUBLISHED_RULE = ("'<algorithm>:<hex prefix>' as the publisher gives it, algorithm md5 or sha256, then "
                  f"{PREFIX_MIN} to 32 (md5) or 64 (sha256) lowercase hex digits, e.g. 'md5:8cad7c'")


def parse_published(value: str) -> tuple[str, str] | None:
    """(algorithm, hex prefix) of a `published_digest` of PUBLISHED_RULE's form, else None."""
    algorithm, _, prefix = value.partition(":")
    length = ALGORITHMS.get(algorithm, 0)
    if not PREFIX_MIN <= len(prefix) <= length or prefix.strip("0123456789abcdef"):
        return None
    return algorithm, prefix


def digest_of(path: Path, algorithm: str) -> str:
    """Hex digest of a file, streamed, so multi-GB checkpoints do not sit in memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def sha256_of(path: Path) -> str:
    return digest_of(path, "sha256")


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


def _cached(path: Path) -> dict:
    """The digests cached for the file as it is now (an empty record when it changed since)."""
    known = _read_json(_digest_cache()).get(str(path))
    return known if isinstance(known, dict) and known.get("stamp") == _stamp(path) else {}


def remember_digests(path: Path | str, found: dict[str, str]) -> None:
    """Cache `found` (algorithm -> hex) as the file's digests (a download hashes while it streams; no need to read
    it again)."""
    path = Path(path).resolve()
    cache_file = _digest_cache()
    cache = _read_json(cache_file)
    cache[str(path)] = {**_cached(path), **found, "stamp": _stamp(path)}
    try:
        _write_json(cache_file, cache)
    except OSError:
        pass  # a cache that cannot be written costs a re-hash next time, nothing else


def cached_digest(path: Path | str, algorithm: str = "sha256") -> str:
    """The file's digest, re-hashed only when its resolved path, size, mtime, ctime or inode differ from the
    cached ones."""
    path = Path(path).resolve()
    known = _cached(path).get(algorithm)
    if isinstance(known, str):
        return known
    digest = digest_of(path, algorithm)
    remember_digests(path, {algorithm: digest})
    return digest


def cached_sha256(path: Path | str) -> str:
    return cached_digest(path, "sha256")


def check_published(path: Path, published: str, what: str) -> None:
    """Refuse a file whose digest does not begin with the publisher's `published` one (PUBLISHED_RULE)."""
    algorithm, prefix = parse_published(published)
    found = cached_digest(path, algorithm)
    if not found.startswith(prefix):
        raise HarnessError(f"{path}: {algorithm} is {found}, but {what} registers the publisher's {algorithm} "
                           f"{prefix} (published_digest = {published!r}); the file is corrupt, incomplete or another "
                           "release. Delete it and download it again (a file you trust that is not the published "
                           "one: pass its path with --weights).")


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
