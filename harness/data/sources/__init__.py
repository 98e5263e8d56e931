"""Dataset sources: each kind of source is one module that declares it in one `register(SourceKind(...))` call.

The registry validator (source names), the split loader (images and labels), the transform (whole images or the
backbone's centre crop) and the planner (image counts known before reading a file) read that declaration. Loaders
import torch and friends inside their bodies, so declaring a source (and `harness list`) imports none of them.
Built-in sources are the modules of this package named in BUILTIN; another module registers one the same way.

SourceKind fields:
- `load`: `(dataset, backbone, download, root) -> harness.data.images.Source` (the training pool and the test
  split with their labels), a callable or a "module:attr" reference; a missing or malformed root raises a
  HarnessError naming the path read, what was expected there and how to get it.
- `whole_images`: images are tensors resized whole (no border to crop away), not the backbone's centre crop.
- `planned_counts`: entry -> {"pool", "test"} image counts known before reading any file, or None; by default
  the entry's `options.num_images`.
- `check`: `(dataset, download, root) -> None`, the driver's preflight before Ray starts: a cheap look at the files
  (folders there, class count) that raises the HarnessError `load` would raise later in a worker; None: nothing
  to check (embedded or generated data).
- `num_classes`: entry -> (class count, what says so) when the source knows it without any file (a torchvision
  class, scikit-learn's digits), else None; the registry refuses an entry whose `num_classes` differs. None: only
  the files know it (image folders: their `check`), or the entry's `num_classes` defines it (generated data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import setting
from harness.errors import HarnessError
from harness.plugins import Plugins, resolve

if TYPE_CHECKING:
    from harness.data.images import Source
    from harness.registry import BackboneEntry, DatasetEntry


def registered_counts(dataset: DatasetEntry) -> Any:
    """The entry's `options.num_images` ({pool, test}), the counts a source of files records."""
    return dataset.options.get("num_images")


@dataclass(frozen=True)
class SourceKind:
    name: str
    load: str | Callable[[DatasetEntry, BackboneEntry, bool, Path], Source]
    whole_images: bool = False
    planned_counts: Callable[[DatasetEntry], Any] = registered_counts
    check: Callable[[DatasetEntry, bool, Path], None] | None = None
    num_classes: Callable[[DatasetEntry], tuple[int, str] | None] | None = None


# in the order listings and error messages show them
BUILTIN = ("sklearn_digits", "torchvision", "imagefolder", "synthetic")
_SOURCES: Plugins[SourceKind] = Plugins("dataset source", __name__, BUILTIN)
register, source_kinds = _SOURCES.register, _SOURCES.all


def option(dataset: DatasetEntry, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """One field of the entry's `options` table, type-checked; errors name the registry file and field."""
    value = dataset.options.get(key, default)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is ... or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise HarnessError(f"{dataset.defined_in}: field '{dataset.name}.options.{key}' is "
                           f"{'missing' if value is ... else repr(value)}; accepted: "
                           f"{' or '.join(k.__name__ for k in kinds)}.")
    return value


def root_hint(folder: Path) -> str:
    return (f"set HARNESS_DATA_ROOT (or data_root under [paths] in harness.toml) to the folder that holds "
            f"'{folder.name}/'")


def data_root(root: Path | None) -> Path:
    return Path(root).expanduser() if root is not None else setting("data_root")




def check_source(dataset: DatasetEntry, *, download: bool, root: Path | None = None) -> None:
    """The source's preflight (`SourceKind.check`): its files are where `load` will look, or a HarnessError."""
    check = source_kinds()[dataset.source].check
    if check is not None:
        check(dataset, download, data_root(root))


def load_source(dataset: DatasetEntry, backbone: BackboneEntry, *, download: bool, root: Path | None) -> Source:
    return resolve(source_kinds()[dataset.source].load)(dataset, backbone, download, data_root(root))
