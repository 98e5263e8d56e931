"""Declarative registry: TOML entries under `registry/`, validated into typed, frozen objects.

Backbones, aggregators, datasets and grids are data, not code (the timm and lm-evaluation-harness
pattern). This module reads them with the standard library only -- no torch, no Ray -- so `harness
list` and leaderboard regeneration stay instant. Every validation error names the file, the field
and the accepted values.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.heads import recipes
from harness.heads.kinds import kinds, resolve_options
from harness.tokens.layers import ACCEPTED as LAYERS_ACCEPTED, DEFAULT_LAYER, layer_label
from harness.data.sources import source_kinds
from harness.models.digests import PUBLISHED_RULE, parse_published
from harness.models.families import families

REGISTRY_DIR = Path(__file__).resolve().parents[2] / "registry"
TOKEN_TAPS = ("norm", "prenorm")
OPTIMIZERS = ("lars", "sgd", "adamw")
PROTOCOLS = ("cached", "online")
ARCH_OVERRIDE_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
TRIAL_SETTINGS = ("protocol", "epochs", "batch_size", "warmup_epochs")  # what a grid may set per dataset


def registry_dir() -> Path:
    """The built-in registry folder: `HARNESS_REGISTRY_DIR` if set (a whole replacement), else the one beside the
    package."""
    return Path(os.environ.get("HARNESS_REGISTRY_DIR", REGISTRY_DIR))


def user_registry_dirs() -> tuple[Path, ...]:
    """Folders whose entries are added to the built-in ones: `HARNESS_USER_REGISTRY`, several separated by
    `os.pathsep`, so a user registers private checkpoints and grids without editing the package."""
    return tuple(Path(p).expanduser() for p in os.environ.get("HARNESS_USER_REGISTRY", "").split(os.pathsep) if p)


def registry_dirs() -> tuple[Path, ...]:
    """Every folder the registry reads, the built-in one first."""
    return (registry_dir(), *user_registry_dirs())


def backbone_label(name: str, random_init: bool) -> str:
    """A backbone's name as every output shows it: random-init variants say so, their numbers mean nothing."""
    return f"{name} (random-init)" if random_init else name


class _Table:
    """Reads one TOML table with typed accessors; every error names the file and the field."""

    def __init__(self, path: Path, table: dict[str, Any], where: str):
        if not isinstance(table, dict):
            raise HarnessError(f"{path}: '{where}' must be a table, got {type(table).__name__}.")
        self.path, self.table, self.where, self.used = path, table, where, set()

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str, accepted: str) -> HarnessError:
        return HarnessError(f"{self.path}: field '{self._name(key)}' {problem}; accepted: {accepted}.")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., accepted: str = "") -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise self.fail(key, "is missing", accepted or _type_name(kind))
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.fail(key, f"is {value!r} ({type(value).__name__})", accepted or _type_name(kind))
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> Any:
        value = self.get(key, str, default, accepted=", ".join(choices))
        if value is not None and value not in choices:
            raise self.fail(key, f"is {value!r}", ", ".join(choices))
        return value

    def positive_int(self, key: str, default: Any = ...) -> int:
        value = self.get(key, int, default, accepted="a positive integer")
        if value <= 0:
            raise self.fail(key, f"is {value}", "a positive integer")
        return value

    def floats(self, key: str, default: Any = ..., length: int | None = None) -> tuple[float, ...]:
        value = self.get(key, list, default, accepted="a list of numbers")
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok or (length is not None and len(value) != length):
            raise self.fail(key, f"is {value!r}", f"a list of {length or 'one or more'} numbers")
        return tuple(float(v) for v in value)

    def names(self, key: str, known: dict[str, Any] | None = None, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, list, default, accepted="a list of names")
        if not value or not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
            raise self.fail(key, f"is {value!r}", "a non-empty list of distinct names")
        for v in value if known is not None else ():
            if v not in known:
                raise self.fail(key, f"names {v!r}, which is not registered", _accepted_names(v, known))
        return tuple(value)

    def finish(self) -> None:
        """Reject unknown fields, so a typo never silently falls back to a default."""
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise HarnessError(
                f"{self.path}: unknown field '{self._name(unknown[0])}'"
                f"{' in ' + repr(self.where) if self.where else ''}; accepted: {', '.join(sorted(self.used))}."
            )


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "a string", int: "an integer", float: "a number", bool: "true/false",
                        list: "a list", dict: "a table", type(None): "nothing"}.get(k, k.__name__) for k in kinds)


def _accepted_names(name: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3)
    listed = ", ".join(sorted(known))
    return f"{listed}" + (f" (did you mean {', '.join(close)}?)" if close else "")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise HarnessError(f"{path}: not valid TOML ({e}); fix the syntax of this registry file.") from None
    except UnicodeDecodeError as e:
        raise HarnessError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); accepted: a TOML file saved as "
                           "UTF-8.") from None
    except OSError as e:
        raise HarnessError(f"{path}: cannot be read ({e.strerror}).") from None


# --------------------------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class BackboneEntry:
    """One released checkpoint (or a random-init demo variant of one) and how to read it."""

    name: str
    family: str
    arch: str  # timm architecture, built with pretrained=False
    img_size: int
    patch_size: int
    class_token: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    checkpoint_key: str | None  # sub-network to evaluate (teacher, target_encoder, ...); None = whole file
    url: str | None = None
    filename: str | None = None  # name in the local weights folder and download cache
    sha256: str | None = None
    published_digest: str | None = None  # the publisher's "<algorithm>:<hex prefix>" of this entry's own file
    manual_download: str | None = None  # why and where, when the file cannot be fetched by script
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    random_init: bool = False  # demo/pipeline-check variants: no weights, no scientific meaning
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    images_per_s: float | None = None  # registered extraction throughput on one GPU, for --dry-run
    published: dict[str, float] = field(default_factory=dict)  # "dataset/aggregator" -> test top-1
    published_protocol: str = "online"  # the protocol the published numbers were measured under
    published_source: str = ""  # where they come from (paper table, README), shown beside them
    description: str = ""
    licence: str = ""  # of the released weights, as their repository states it
    paper: str = ""  # the paper's address
    origin: str = ""  # the repository that released the weights
    defined_in: str = ""  # the registry file that defines the entry
    register_tokens: int = 0  # `timm` family: prefix tokens besides [cls], from the model timm builds
    warning: str = ""  # what a user must know before trusting the numbers (shown by `harness list`, at load)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens ([cls], registers), as the entry's family declares them."""
        return families()[self.family].prefix_tokens(self)

    @property
    def label(self) -> str:
        return backbone_label(self.name, self.random_init)


@dataclass(frozen=True)
class AggregatorEntry:
    """A readout head: how tokens are pooled, which tokens it reads, and its module options."""

    name: str
    kind: str
    tap: str  # "norm": after the final LayerNorm; "prenorm": last block output before it
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    defined_in: str = ""  # the registry file that defines the entry


@dataclass(frozen=True)
class DatasetEntry:
    """A labelled image dataset and the seeded, stratified validation hold-out carved from its train split."""

    name: str
    source: str
    num_classes: int
    val_fraction: float = 0.1
    split_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    defined_in: str = ""  # the registry file that defines the entry (`source` is the kind of source)


@dataclass(frozen=True)
class HeadGroup:
    """One aggregator's part of a grid: its optimizer, its own learning-rate and weight-decay grids, the layers it
    reads (each a head of its own, swept like the lrs), and the named training recipe (harness/heads/recipes.py)
    when it has one."""

    aggregator: str
    optimizer: str
    lrs: tuple[float, ...]
    wds: tuple[float, ...]
    options: dict[str, Any] = field(default_factory=dict)  # overrides of the aggregator entry's options
    recipe: str | None = None
    recipe_options: dict[str, Any] = field(default_factory=dict)  # the recipe's named departures (recipes.OPTIONS)
    layers: tuple[str, ...] = (DEFAULT_LAYER,)  # harness.tokens.layers labels


@dataclass(frozen=True)
class Grid:
    """A sweep: backbones x datasets x head groups x seeds, with the trial resources Ray is asked for."""

    name: str
    description: str
    backbones: tuple[str, ...]
    datasets: tuple[str, ...]
    heads: tuple[HeadGroup, ...]
    seeds: tuple[int, ...]
    protocol: str = "cached"
    epochs: int = 10
    batch_size: int = 256
    warmup_epochs: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_retries: int = 1
    claim_margin: float = 0.5  # equivalence margin of the mean-vs-cls test, in top-1 points
    limit_train: int | None = None  # train on the first N training images per class (smoke tests; never in a file)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset -> some of TRIAL_SETTINGS
    defined_in: str = ""  # the registry file that defines the entry

    def settings(self, dataset: str | None) -> dict[str, Any]:
        """Protocol, epochs, batch size and warmup for one dataset: the grid's, with its [overrides.<dataset>]."""
        return {**{key: getattr(self, key) for key in TRIAL_SETTINGS}, **self.overrides.get(dataset, {})}

    @property
    def num_heads(self) -> int:
        """Heads per (backbone, dataset), as `harness.run.plan.expand` makes them."""
        from harness.run.plan import group_heads  # plan owns the expansion; it imports no torch

        return sum(len(group_heads(self, h)) for h in self.heads)


# -------------------------------------------------------------------------------------------- parsing


def _resolve_extends(name: str, raw: dict[str, tuple[Path, dict[str, Any]]], seen: tuple[str, ...] = ()) -> dict:
    path, table = raw[name]
    if not isinstance(table, dict):
        raise HarnessError(f"{path}: '{name}' must be a table of fields, got {type(table).__name__}.")
    base = table.get("extends")
    if base is None:
        return dict(table)
    if base not in raw:
        raise HarnessError(f"{path}: field '{name}.extends' names {base!r}, which is not registered; "
                           f"accepted: {_accepted_names(base, raw)}.")
    if base in seen:
        raise HarnessError(f"{path}: field '{name}.extends' makes a cycle: {' -> '.join(seen + (name, base))}.")
    merged = _resolve_extends(base, raw, seen + (name,))
    merged.pop("extends", None)
    for key, value in table.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = {**merged[key], **value}
        merged[key] = value
    return merged


# What a `timm`-family entry takes from timm's pretrained configuration rather than from its TOML.
TIMM_FIELDS = ("img_size", "patch_size", "class_token", "mean", "std", "crop_pct", "interpolation")
TIMM_IJEPA_WARNING = ("timm's I-JEPA weights are the checkpoint's context encoder (`encoder`), not the target "
                      "encoder the I-JEPA paper evaluates; the `ijepa` family's entries load the target encoder")


def _timm_fields(t: _Table) -> dict[str, Any]:
    """The transform and architecture of a `timm` entry from timm's configuration of its tag; none may be set."""
    from harness.registry.timm_configs import VIT_CLASSES, pretrained_config

    for key in TIMM_FIELDS + ("url", "filename", "checkpoint_key"):
        if key in t.table:
            raise t.fail(key, "is set, but a timm entry takes it from timm's pretrained configuration",
                         f"an entry without {', '.join(TIMM_FIELDS)}, url, filename or checkpoint_key")
    tag = t.get("arch", str, accepted="a timm pretrained tag '<model>.<tag>'")
    cfg = pretrained_config(tag)
    if cfg["model_class"] not in VIT_CLASSES:
        raise t.fail("arch", f"names {tag!r}, a timm {cfg['model_class']}", f"a timm ViT ({', '.join(VIT_CLASSES)})")
    fields = {key: cfg[key] for key in TIMM_FIELDS}
    if not cfg["hf_hub_id"]:  # weights only at the tag's URL: fetched through the harness's download cache
        if not cfg["url"]:
            raise t.fail("arch", f"names {tag!r}, whose timm configuration has neither a hub repository nor a URL",
                         "a tag with weights on the Hugging Face hub or at a URL")
        fields["url"], fields["filename"] = cfg["url"], f"timm-{tag}-{cfg['url'].rstrip('/').rsplit('/', 1)[-1]}"
    if cfg["license"] and "licence" not in t.table:
        fields["licence"] = cfg["license"]
    return {**fields, "register_tokens": cfg["num_prefix_tokens"] - int(cfg["class_token"]),
            "warning": TIMM_IJEPA_WARNING if "ijepa" in tag else ""}


def _backbone(name: str, raw: dict[str, tuple[Path, dict[str, Any]]]) -> BackboneEntry:
    path = raw[name][0]
    table = _resolve_extends(name, raw)
    t = _Table(path, table, name)
    timm_fields = _timm_fields(t) if table.get("family") == "timm" and not table.get("random_init") else {}
    t.table = {**table, **{k: v for k, v in timm_fields.items() if k in TIMM_FIELDS + ("url", "filename", "licence")}}
    t.get("extends", str, None)
    overrides = t.get("arch_overrides", dict, {})
    for key in overrides:
        if key not in ARCH_OVERRIDE_KEYS:
            raise t.fail("arch_overrides", f"has {key!r}", ", ".join(ARCH_OVERRIDE_KEYS))
    t.get("published", dict, {})
    published = raw[name][1].get("published", {})  # a published number belongs to its own checkpoint: not inherited
    for key, value in published.items():
        if "/" not in key or not isinstance(value, (int, float)):
            raise t.fail("published", f"has {key!r} = {value!r}", "'dataset/aggregator' = top-1 number")
    t.get("published_digest", str, None)
    digest = raw[name][1].get("published_digest")  # like `published`, a digest is of its own file: not inherited
    if digest is not None and parse_published(digest) is None:
        raise t.fail("published_digest", f"is {digest!r}", PUBLISHED_RULE)
    if digest is not None and timm_fields:
        raise t.fail("published_digest", "is set on a timm entry, whose file timm finds from its own configuration",
                     "no published_digest on a timm entry")
    random_init = t.get("random_init", bool, False)
    speed = t.get("images_per_s", float, None)
    entry = BackboneEntry(
        name=name,
        family=t.choice("family", tuple(families())),
        arch=t.get("arch", str),
        img_size=t.positive_int("img_size"),
        patch_size=t.positive_int("patch_size"),
        class_token=t.get("class_token", bool),
        mean=t.floats("mean", length=3),
        std=t.floats("std", length=3),
        checkpoint_key=t.get("checkpoint_key", str, None),
        url=t.get("url", str, None),
        filename=t.get("filename", str, None),
        sha256=t.get("sha256", str, None),
        published_digest=digest,
        manual_download=t.get("manual_download", str, None),
        arch_overrides=dict(overrides),
        random_init=random_init,
        crop_pct=t.get("crop_pct", float, 0.875),
        interpolation=t.choice("interpolation", ("bicubic", "bilinear"), "bicubic"),
        images_per_s=None if random_init else speed,  # a demo's tiny arch runs at another speed than its base's
        published={} if random_init else {k: float(v) for k, v in published.items()},
        published_protocol=t.choice("published_protocol", PROTOCOLS, "online"),
        published_source=t.get("published_source", str, ""),
        description=t.get("description", str, ""),
        licence=(t.get("licence", str, ""), "")[random_init],  # a demo inherits its family's, but has no weights
        paper=t.get("paper", str, ""),
        origin=t.get("origin", str, ""),
        defined_in=str(path),
        register_tokens=timm_fields.get("register_tokens", 0),
        warning=timm_fields.get("warning", ""),
    )
    t.finish()
    if entry.sha256 is not None and (len(entry.sha256) != 64 or not all(c in "0123456789abcdef" for c in entry.sha256)):
        raise t.fail("sha256", f"is {entry.sha256!r}", "64 lowercase hex digits")
    if not entry.random_init and not (entry.url or entry.manual_download or timm_fields):
        raise t.fail("url", "is missing", "a download address, or manual_download saying where to get the file")
    return entry


NAME_MAX = 100
_SAFE_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._+-]{{0,{NAME_MAX - 1}}}")
NAME_RULE = (f"1 to {NAME_MAX} characters: letters, digits and . _ + -, starting with a letter or digit (names "
             "become file names, Markdown, HTML and terminal text)")


def check_name(path: Path, kind: str, name: str) -> str:
    """`name` if it is in the safe alphabet of NAME_RULE, else the registry's file/field/accepted error."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise HarnessError(f"{path}: {kind} name {name!r} is not accepted; accepted: {NAME_RULE}.")
    return name


def _parse_aggregators(path: Path, data: dict[str, Any]) -> dict[str, AggregatorEntry]:
    out = {}
    for name, table in data.items():
        check_name(path, "aggregator", name)
        t = _Table(path, table, name)
        out[name] = AggregatorEntry(
            name=name,
            kind=t.choice("kind", tuple(kinds())),
            tap=t.choice("tap", TOKEN_TAPS),
            options=dict(t.get("options", dict, {})),
            description=t.get("description", str, ""),
            defined_in=str(path),
        )
        t.finish()
        resolve_options(out[name])
    return out


def _parse_datasets(path: Path, data: dict[str, Any]) -> dict[str, DatasetEntry]:
    out = {}
    for name, table in data.items():
        check_name(path, "dataset", name)
        t = _Table(path, table, name)
        out[name] = DatasetEntry(
            name=name,
            source=t.choice("source", tuple(source_kinds())),
            num_classes=t.positive_int("num_classes"),
            val_fraction=t.get("val_fraction", float, 0.1),
            split_seed=t.get("split_seed", int, 0),
            options=dict(t.get("options", dict, {})),
            description=t.get("description", str, ""),
            defined_in=str(path),
        )
        if not 0.0 < out[name].val_fraction < 1.0:
            raise t.fail("val_fraction", f"is {out[name].val_fraction}", "a fraction strictly between 0 and 1")
        t.finish()
        counted = source_kinds()[out[name].source].num_classes
        known = counted(out[name]) if counted is not None else None
        if known is not None and known[0] != out[name].num_classes:
            raise t.fail("num_classes", f"is {out[name].num_classes}, but {known[1]} has {known[0]} classes",
                         str(known[0]))
    return out


GRID_POINTS_MAX = 1000  # values of one lr or wd range; more is a typo, and would stall the dry run
SEED_LIMIT = 2**32  # numpy's and torch's generators take seeds below this
RETRIES_MAX = 100  # retries of one failing trial; a negative count means forever to Ray Tune


def _lr_grid(t: _Table, key: str, *, positive: bool) -> tuple[float, ...]:
    """A grid is a list of distinct numbers or a log-spaced range `{min, max, num}`; lrs must be positive."""
    value = t.get(key, (list, dict), accepted="a list of numbers or a table {min, max, num} (log-spaced)")
    if isinstance(value, list):
        values = t.floats(key)
    else:
        r = _Table(t.path, value, t._name(key))
        lo, hi, num = r.get("min", float), r.get("max", float), r.positive_int("num")
        r.finish()
        if num > GRID_POINTS_MAX:
            raise r.fail("num", f"is {num}", f"a positive integer, at most {GRID_POINTS_MAX}")
        if not 0 < lo <= hi:
            raise r.fail("min", f"is {lo} with max {hi}", "0 < min <= max")
        values = tuple(lo * (hi / lo) ** (i / max(num - 1, 1)) for i in range(num))
    rounded = tuple(float(f"{v:.6g}") for v in values)
    bad = not values or any((v <= 0 if positive else v < 0) or not math.isfinite(v) for v in values)
    if bad or len(set(rounded)) != len(rounded) or len(rounded) > GRID_POINTS_MAX:
        raise t.fail(key, f"is {value!r}", f"1 to {GRID_POINTS_MAX} distinct, finite, "
                     f"{'positive' if positive else 'non-negative'} numbers")
    return rounded


def _layers(t: _Table) -> tuple[str, ...]:
    """A head group's `layers`: one or more layer choices (harness.tokens.layers), each read by heads of its own."""
    accepted = f"a list of layer choices, each {LAYERS_ACCEPTED}"
    value = t.get("layers", list, [int(DEFAULT_LAYER)], accepted=accepted)
    labels = [layer_label(v) for v in value]
    bad = [v for v, label in zip(value, labels) if label is None]
    if not value or bad:
        raise t.fail("layers", f"has {bad[0]!r}" if bad else "is empty", accepted)
    if len(set(labels)) != len(labels):
        raise t.fail("layers", f"is {value!r}, which names a layer twice", "distinct layer choices")
    return tuple(labels)


def _recipe(h: _Table, kind: str) -> tuple[Any, dict[str, Any]]:
    """A head group's `recipe` and `recipe_options`, checked against harness/heads/recipes.py (torch-free)."""
    name = h.get("recipe", str, None, accepted="the name of a recipe")
    options = dict(h.get("recipe_options", dict, {}))
    if name is None:
        if options:
            raise h.fail("recipe_options", "is set without a recipe", "a recipe field beside it")
        return None, {}
    try:
        recipe = recipes.resolve(name, options)
    except recipes.RecipeError as e:
        raise h.fail("recipe_options" if name in recipes.RECIPES else "recipe", e.problem, e.accepted) from None
    if kind not in recipe.kinds:
        raise h.fail("recipe", f"is {name!r}, which trains {', '.join(recipe.kinds)} heads, not {kind!r}",
                     ", ".join(sorted(n for n, r in recipes.RECIPES.items() if kind in r.kinds)) or "no recipe")
    return recipe, options


_SETTING_DEFAULTS = {"protocol": "cached", "warmup_epochs": 0}  # epochs and batch_size have none


def _trial_setting(t: _Table, key: str, default: Any = ...) -> Any:
    """One of TRIAL_SETTINGS, read the same way at a grid's top level and in its [overrides.<dataset>]."""
    if key == "protocol":
        return t.choice(key, PROTOCOLS, default)
    if key == "warmup_epochs":
        return t.get(key, int, default)
    return t.positive_int(key, default)


def _margin(t: _Table) -> float:
    """The claim's equivalence margin: a finite positive number (a negative one would swap its verdicts)."""
    value = t.get("claim_margin", float, 0.5, accepted="a finite positive number of top-1 points")
    if not (math.isfinite(value) and value > 0):
        raise t.fail("claim_margin", f"is {value}", "a finite positive number of top-1 points, e.g. 0.5")
    return value


def _parse_grid(path: Path, data: dict[str, Any], reg: Registry) -> Grid:
    check_name(path, "grid", path.stem)
    t = _Table(path, data, "")
    heads_table = t.get("heads", dict, accepted="a table [heads.<aggregator>] per aggregator")
    heads = []
    for agg, table in heads_table.items():
        h = _Table(path, table, f"heads.{agg}")
        if agg not in reg.aggregators:
            raise t.fail(f"heads.{agg}", "is not a registered aggregator", _accepted_names(agg, reg.aggregators))
        kind = reg.aggregators[agg].kind
        if not kinds()[kind].trained:  # k-NN: no optimizer, lr, wd or recipe
            heads.append(HeadGroup(aggregator=agg, optimizer="none", lrs=(0.0,), wds=(0.0,),
                                   options=dict(h.get("options", dict, {})), layers=_layers(h)))
            h.finish()
            continue
        recipe, recipe_options = _recipe(h, kind)
        heads.append(HeadGroup(
            aggregator=agg,
            optimizer=h.choice("optimizer", OPTIMIZERS, recipe.optimizer if recipe else ...),
            lrs=_lr_grid(h, "lr", positive=True),
            wds=_lr_grid(h, "wd", positive=False) if "wd" in h.table else (0.0,),
            options=dict(h.get("options", dict, {})),
            recipe=recipe.name if recipe else None,
            recipe_options=recipe_options,
            layers=_layers(h),
        ))
        try:
            resolve_options(reg.aggregators[agg], heads[-1].options)
        except HarnessError as e:
            raise HarnessError(f"{path}: field 'heads.{agg}.options': {e}") from None
        if recipe and heads[-1].optimizer != recipe.optimizer:
            raise h.fail("optimizer", f"is {heads[-1].optimizer!r}, but recipe {recipe.name!r} trains with "
                         f"{recipe.optimizer!r}", f"{recipe.optimizer!r} or no optimizer field")
        h.used.add("wd")
        h.finish()
    if not heads:
        raise t.fail("heads", "is empty", "at least one [heads.<aggregator>] table")
    seeds = t.get("seeds", list, accepted="a non-empty list of integers")
    integers = all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not seeds or not integers or len(set(seeds)) != len(seeds) or not all(0 <= s < SEED_LIMIT for s in seeds):
        raise t.fail("seeds", f"is {seeds!r}", "a non-empty list of distinct integers, 0 <= seed < 2**32")
    resources = _Table(path, t.get("resources", dict, {}), "resources")
    overrides = {}
    for dataset, table in t.get("overrides", dict, {}).items():
        if dataset not in reg.datasets:
            raise t.fail(f"overrides.{dataset}", "is not a registered dataset", _accepted_names(dataset, reg.datasets))
        o = _Table(path, table, f"overrides.{dataset}")
        overrides[dataset] = {key: _trial_setting(o, key) for key in TRIAL_SETTINGS if key in table}
        o.finish()
    grid = Grid(
        name=path.stem,
        description=t.get("description", str, ""),
        backbones=t.names("backbones", reg.backbones),
        datasets=t.names("datasets", reg.datasets),
        heads=tuple(heads),
        seeds=tuple(seeds),
        **{key: _trial_setting(t, key, _SETTING_DEFAULTS.get(key, ...)) for key in TRIAL_SETTINGS},
        cpus_per_trial=resources.get("cpus", float, 1.0),
        gpus_per_trial=resources.get("gpus", float, 0.0),
        max_retries=t.get("max_retries", int, 1, accepted=f"an integer from 0 to {RETRIES_MAX}"),
        claim_margin=_margin(t),
        overrides=overrides,
        defined_in=str(path),
    )
    resources.finish()
    t.finish()
    if grid.cpus_per_trial <= 0 or grid.gpus_per_trial < 0:
        raise resources.fail("cpus", f"is {grid.cpus_per_trial} (gpus {grid.gpus_per_trial})", "cpus > 0 and gpus >= 0")
    if not 0 <= grid.max_retries <= RETRIES_MAX:
        raise t.fail("max_retries", f"is {grid.max_retries}", f"an integer from 0 to {RETRIES_MAX}")
    for dataset in (None, *overrides):
        s = grid.settings(dataset)
        if not 0 <= s["warmup_epochs"] < s["epochs"]:
            where = f"overrides.{dataset}.warmup_epochs" if dataset else "warmup_epochs"
            raise t.fail(where, f"is {s['warmup_epochs']}", f"0 <= warmup_epochs < epochs ({s['epochs']})")
    return grid


# ------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Registry:
    backbones: dict[str, BackboneEntry]
    aggregators: dict[str, AggregatorEntry]
    datasets: dict[str, DatasetEntry]
    grid_files: dict[str, Path]

    def backbone(self, name: str) -> BackboneEntry:
        return _lookup("backbone", name, self.backbones)

    def aggregator(self, name: str) -> AggregatorEntry:
        return _lookup("aggregator", name, self.aggregators)

    def dataset(self, name: str) -> DatasetEntry:
        return _lookup("dataset", name, self.datasets)

    def grid(self, name: str) -> Grid:
        path = Path(name)
        if path.suffix == ".toml" and path.exists():
            return _parse_grid(path, _read_toml(path), self)
        return _parse_grid(_lookup("grid", name, self.grid_files), _read_toml(self.grid_files[name]), self)


def _lookup(kind: str, name: str, known: dict[str, Any]) -> Any:
    if name not in known:
        raise HarnessError(f"unknown {kind} {name!r}; accepted: {_accepted_names(name, known)} "
                           f"(registered under {', '.join(map(str, registry_dirs()))}).")
    return known[name]


def _merge(kind: str, into: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    for name in new:
        if name in into:
            raise HarnessError(f"{path}: {kind} {name!r} is already registered in {into[name].defined_in}; "
                               "names must be unique across registry files.")
    into.update(new)


@cache
def _load(roots: tuple[Path, ...]) -> Registry:
    """The entries of every folder in `roots` (the first the built-in registry, the others added to it): each
    folder may hold backbones/*.toml, aggregators*.toml or aggregators/*.toml, datasets*.toml or datasets/*.toml
    and grids/*.toml; a name registered twice is an error naming both files, and `extends` reaches across folders."""
    if not roots[0].is_dir():
        raise HarnessError(f"registry folder {roots[0]} does not exist; set HARNESS_REGISTRY_DIR to a folder with "
                           "backbones/, aggregators.toml, datasets.toml and grids/.")
    for root in roots[1:]:
        if not root.is_dir():
            raise HarnessError(f"user registry folder {root} (from HARNESS_USER_REGISTRY) does not exist; accepted: "
                               "folders holding any of backbones/*.toml, aggregators*.toml, datasets*.toml and "
                               f"grids/*.toml, separated by {os.pathsep!r}.")
    raw: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in [p for root in roots for p in sorted((root / "backbones").glob("*.toml"))]:
        for name, table in _read_toml(path).items():
            check_name(path, "backbone", name)
            if name in raw:
                raise HarnessError(f"{path}: backbone {name!r} is already registered in {raw[name][0]}; "
                                   "names must be unique across registry files.")
            raw[name] = (path, table)
    # entries without `extends` first, so an error in an inherited field names the file that holds it
    backbones = {name: _backbone(name, raw) for name in sorted(raw, key=lambda n: "extends" in raw[n][1])}
    aggregators: dict[str, AggregatorEntry] = {}
    datasets: dict[str, DatasetEntry] = {}
    grids: dict[str, Path] = {}
    for root in roots:
        for path in sorted(root.glob("aggregators*.toml")) + sorted((root / "aggregators").glob("*.toml")):
            _merge("aggregator", aggregators, _parse_aggregators(path, _read_toml(path)), path)
        for path in sorted(root.glob("datasets*.toml")) + sorted((root / "datasets").glob("*.toml")):
            _merge("dataset", datasets, _parse_datasets(path, _read_toml(path)), path)
        for path in sorted((root / "grids").glob("*.toml")):
            if path.stem in grids:
                raise HarnessError(f"{path}: grid {path.stem!r} is already registered in {grids[path.stem]}; "
                                   "names must be unique across registry folders.")
            grids[path.stem] = path
    return Registry(backbones, aggregators, datasets, grids)


def load_registry(root: Path | str | None = None) -> Registry:
    """The registry at `root` alone, else the built-in one with the user folders (`registry_dirs()`), read once per
    process."""
    return _load((Path(root),) if root is not None else registry_dirs())
