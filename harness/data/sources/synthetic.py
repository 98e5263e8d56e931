"""`synthetic`: one class object among clutter, sized in patches (the aggregators' known-answer tests)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.data.sources import SourceKind, option, register
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.data.images import Source
    from harness.registry import BackboneEntry, DatasetEntry


def load(dataset: DatasetEntry, backbone: BackboneEntry, download: bool, root: Path) -> Source:
    from harness.data.images import Source, SyntheticPatches

    k = option(dataset, "object_patches", int, 1)
    if backbone.img_size % backbone.patch_size or not 0 < k <= backbone.img_size // backbone.patch_size:
        raise HarnessError(f"{dataset.defined_in}: field '{dataset.name}.options.object_patches' is {k} for "
                           f"backbone {backbone.name!r} ({backbone.img_size}px, patch {backbone.patch_size}); "
                           "accepted: 1 to the patches per side, on a backbone whose patches tile the image.")
    common = dict(num_classes=dataset.num_classes, img_size=backbone.img_size, patch_size=backbone.patch_size,
                  object_patches=k, clutter_patterns=option(dataset, "clutter_patterns", int, 16),
                  seed=option(dataset, "seed", int, 0))
    pool = SyntheticPatches(num_images=option(dataset, "num_train", int), stream=1, **common)
    test = SyntheticPatches(num_images=option(dataset, "num_test", int), stream=2, **common)
    return Source(pool, pool.labels, test, test.labels, "generated (synthetic-patch)")


def planned_counts(dataset: DatasetEntry) -> dict:
    """Its `num_train` and `num_test` options are the pool and test sizes."""
    return {"pool": dataset.options.get("num_train"), "test": dataset.options.get("num_test")}


register(SourceKind(name="synthetic", load=load, whole_images=True, planned_counts=planned_counts))
