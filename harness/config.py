"""User settings: where weights, data, the token cache and results live.

Each setting is read, first to last, from its environment variable, the `[paths]` table of the config
file (`HARNESS_CONFIG`, else `./harness.toml` when present), then a default. No torch, no Ray.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from harness.errors import HarnessError

_SETTINGS = {
    # key: (environment variable, default)
    "weights_dir": ("HARNESS_WEIGHTS_DIR", None),
    "download_dir": ("HARNESS_DOWNLOAD_DIR", "~/.cache/harness/weights"),
    "data_root": ("HARNESS_DATA_ROOT", "~/.cache/harness/data"),
    "cache_dir": ("HARNESS_CACHE_DIR", "~/.cache/harness/tokens"),
    "results_dir": ("HARNESS_RESULTS_DIR", "results"),
    "weights_lock": ("HARNESS_WEIGHTS_LOCK", "~/.cache/harness/weights.lock.json"),
    "timm_configs": ("HARNESS_TIMM_CONFIGS", "~/.cache/harness/timm-configs"),  # timm entries' configuration cache
}


def _config_file() -> Path | None:
    explicit = os.environ.get("HARNESS_CONFIG")
    if explicit:
        if not Path(explicit).is_file():
            raise HarnessError(f"HARNESS_CONFIG points to {explicit}, which is not a file; "
                               "accepted: a TOML file with a [paths] table.")
        return Path(explicit)
    local = Path("harness.toml")
    return local if local.is_file() else None


def _file_settings() -> dict[str, str]:
    path = _config_file()
    if path is None:
        return {}
    try:
        paths = tomllib.loads(path.read_bytes().decode("utf-8")).get("paths", {})
    except tomllib.TOMLDecodeError as e:
        raise HarnessError(f"{path}: not valid TOML ({e}).") from None
    except UnicodeDecodeError as e:
        raise HarnessError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); accepted: a TOML file saved as "
                           "UTF-8.") from None
    if not isinstance(paths, dict):
        raise HarnessError(f"{path}: field 'paths' is {paths!r}; accepted: a table [paths] with keys "
                           f"{', '.join(_SETTINGS)} and string values.")
    unknown = sorted(set(paths) - set(_SETTINGS))
    if unknown or not all(isinstance(v, str) for v in paths.values()):
        raise HarnessError(f"{path}: [paths] has {unknown or paths}; accepted keys: {', '.join(_SETTINGS)} "
                           "with string values.")
    return paths


def setting(key: str) -> Path | None:
    """The configured path for `key` (one of the keys of `_SETTINGS`), with `~` expanded."""
    env, default = _SETTINGS[key]
    value = os.environ.get(env) or _file_settings().get(key) or default
    return Path(value).expanduser() if value else None


_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_name(name: str) -> str:
    """A file-name-safe form of a registry or grid name (names may come from arbitrary file stems or the CLI)."""
    return _UNSAFE.sub("_", name).lstrip(".") or "_"
